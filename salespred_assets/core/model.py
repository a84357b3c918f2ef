"""The win model: a tuned, calibrated random forest that explains every prediction.

Training (:func:`train`) follows one protocol everywhere (assets, CLI, benchmarks):

1. closed opportunities only (won = 1, lost = 0);
2. hyperparameters by successive halving (:class:`~sklearn.model_selection.HalvingRandomSearchCV`)
   over trees, depth, leaf size, features per split and class weight, scored by ROC AUC;
3. the chosen forest is fitted with out-of-bag scoring; the out-of-bag probabilities, which no tree
   saw when it was fitted, train an isotonic calibrator and choose the decision threshold, so neither
   ever looks at a held-out split.

The client's win history is target-encoded out of fold (scikit-learn's ``TargetEncoder`` cross-fits
in ``fit_transform``), so no training row sees its own outcome.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import randint
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.experimental import enable_halving_search_cv  # noqa: F401 - enables the import below
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import HalvingRandomSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder, TargetEncoder

from salespred_assets.core.features import CLIENT, FeatureSpec, label
from salespred_assets.core.forest import PathExplainer
from salespred_assets.errors import NotEnoughData

MIN_PER_CLASS = 40
GRADE_BANDS = (("A", 0.75), ("B", 0.50), ("C", 0.25), ("D", 0.0))  # grade: lowest probability in band
TOP_FACTORS = 3


@dataclass(frozen=True)
class SearchConfig:
    """How hard to search. ``full`` is the production search; ``fast`` is for tests and smoke runs."""

    n_candidates: int | str = 40
    factor: int = 3
    cv: int = 4
    min_resources: int | str = 600
    final_trees: int | None = None  # override the chosen number of trees (None: keep it)
    random_state: int = 42
    n_jobs: int = 2
    param_space: dict[str, Any] = field(default_factory=lambda: {
        "rf__n_estimators": [150, 250, 400],
        "rf__max_depth": [None, 12, 16, 22, 30],
        "rf__min_samples_leaf": [1, 2, 3, 5, 8],
        "rf__max_features": ["sqrt", 0.3, 0.5, 0.7],
        "rf__class_weight": [None, "balanced", "balanced_subsample"],
        "rf__max_samples": [None, 0.7],
    })

    @classmethod
    def preset(cls, name: str) -> SearchConfig:
        if name == "full":
            return cls()
        if name == "fast":
            return cls(n_candidates=6, cv=3, param_space={
                "rf__n_estimators": [40, 60],
                "rf__max_depth": [8, 14, None],
                "rf__min_samples_leaf": [2, 5],
                "rf__max_features": ["sqrt", 0.5],
                "rf__class_weight": [None],
                "rf__max_samples": [None],
            })
        raise ValueError(f"unknown search preset {name!r}; use 'full' or 'fast'")


def check_enough(y: pd.Series | np.ndarray) -> None:
    won = int(np.sum(np.asarray(y) == 1))
    lost = int(np.sum(np.asarray(y) == 0))
    if won < MIN_PER_CLASS or lost < MIN_PER_CLASS:
        raise NotEnoughData(
            f"not enough closed opportunities to learn from: {won} won and {lost} lost; "
            f"at least {MIN_PER_CLASS} of each are needed"
        )


def build_pipeline(spec: FeatureSpec, random_state: int = 42, n_jobs: int = 1) -> Pipeline:
    parts: list[tuple[str, Any, list[str]]] = []
    if spec.categorical:
        parts.append(("categorical", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                                    encoded_missing_value=-1), list(spec.categorical)))
    if spec.numeric:
        parts.append(("numeric", "passthrough", list(spec.numeric)))
    if spec.client:
        cv = StratifiedKFold(5, shuffle=True, random_state=random_state)
        parts.append(("client", TargetEncoder(target_type="binary", cv=cv), [CLIENT]))
    pre = ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)
    rf = RandomForestClassifier(n_jobs=n_jobs, random_state=random_state)
    return Pipeline([("pre", pre), ("rf", rf)])


def search(X: pd.DataFrame, y: pd.Series, spec: FeatureSpec, config: SearchConfig) -> tuple[dict, pd.DataFrame, float]:
    """Successive-halving search; returns (best params, the search's table, seconds)."""
    started = time.perf_counter()
    pipe = build_pipeline(spec, config.random_state, n_jobs=1)
    searcher = HalvingRandomSearchCV(
        pipe, config.param_space, n_candidates=config.n_candidates, factor=config.factor,
        resource="n_samples", min_resources=config.min_resources, aggressive_elimination=False,
        cv=StratifiedKFold(config.cv, shuffle=True, random_state=config.random_state), scoring="roc_auc",
        refit=False, random_state=config.random_state, n_jobs=config.n_jobs, error_score="raise",
    )
    searcher.fit(X, y)
    table = pd.DataFrame(searcher.cv_results_)
    keep = ["iter", "n_resources", "mean_test_score", "std_test_score", "mean_fit_time"] + \
        [c for c in table.columns if c.startswith("param_")]
    return dict(searcher.best_params_), table[keep], time.perf_counter() - started


def fit_forest(X: pd.DataFrame, y: pd.Series, spec: FeatureSpec, params: dict, config: SearchConfig) -> Pipeline:
    pipe = build_pipeline(spec, config.random_state, n_jobs=config.n_jobs)
    pipe.set_params(**params)
    if config.final_trees:
        pipe.set_params(rf__n_estimators=config.final_trees)
    pipe.set_params(rf__oob_score=True, rf__bootstrap=True)
    pipe.fit(X, y)
    return pipe


def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability cut that maximises accuracy on the given (training, out-of-bag) predictions."""
    order = np.argsort(-p)
    p_sorted, y_sorted = p[order], y[order]
    # Predict "won" for the top k: correct = positives in top k + negatives below.
    tp = np.cumsum(y_sorted)
    k = np.arange(1, len(p) + 1)
    correct = tp + (len(y) - y.sum()) - (k - tp)
    # Only cut between distinct probabilities.
    distinct = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    best = int(np.argmax(np.where(distinct, correct, -1)))
    if best + 1 < len(p_sorted):
        return float((p_sorted[best] + p_sorted[best + 1]) / 2)
    return float(p_sorted[best] - 1e-9)


def grade(p: np.ndarray) -> np.ndarray:
    out = np.full(p.shape, GRADE_BANDS[-1][0], dtype=object)
    for name, low in reversed(GRADE_BANDS):
        out[p >= low] = name
    return out


def score_1_99(p: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(p * 100), 1, 99).astype("int64")


class WinModel:
    """A fitted forest with its calibrator, threshold and explainer; scores feature frames."""

    def __init__(self, pipeline: Pipeline, calibrator: IsotonicRegression, threshold: float,
                 spec: FeatureSpec, info: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.calibrator = calibrator
        self.threshold = float(threshold)
        self.spec = spec
        self.info = info
        self._explainer: PathExplainer | None = None

    @property
    def version(self) -> str:
        return str(self.info["version"])

    @property
    def forest(self) -> RandomForestClassifier:
        return self.pipeline.named_steps["rf"]

    @property
    def explainer(self) -> PathExplainer:
        if self._explainer is None:
            self._explainer = PathExplainer(self.forest)
        return self._explainer

    @property
    def feature_names(self) -> list[str]:
        return list(self.pipeline.named_steps["pre"].get_feature_names_out())

    def transform(self, features: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.pipeline.named_steps["pre"].transform(features[self.spec.columns]), dtype=np.float64)

    def raw_proba(self, features: pd.DataFrame) -> np.ndarray:
        return self.forest.predict_proba(self.transform(features))[:, 1]

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        return np.clip(self.calibrator.predict(raw), 0.0, 1.0)

    def predict(self, features: pd.DataFrame, *, explain: bool = True) -> pd.DataFrame:
        """probability, label, score (1-99), grade, and the top factors for and against each row."""
        X = self.transform(features)
        if explain:
            raw, contrib = self.explainer.explain(X)
        else:
            raw, contrib = self.forest.predict_proba(X)[:, 1], None
        prob = self.calibrate(raw)
        out = pd.DataFrame({
            "probability": prob,
            "predicted_won": prob >= self.threshold,
            "score": score_1_99(prob),
            "grade": grade(prob),
        }, index=features.index)
        if contrib is not None:
            out["factors_for"], out["factors_against"] = self._factors(features, contrib)
        out["model_version"] = self.version
        return out

    def _factors(self, features: pd.DataFrame, contrib: np.ndarray) -> tuple[list[str], list[str]]:
        names = self.feature_names
        values = features[names].to_numpy(dtype=object)
        order = np.argsort(-contrib, axis=1)
        top_for = order[:, :TOP_FACTORS]
        top_against = order[:, ::-1][:, :TOP_FACTORS]
        fors, againsts = [], []
        for i in range(len(features)):
            fors.append(json.dumps([_factor(names[j], values[i, j], contrib[i, j]) for j in top_for[i]
                                    if contrib[i, j] > 0], ensure_ascii=False))
            againsts.append(json.dumps([_factor(names[j], values[i, j], contrib[i, j]) for j in top_against[i]
                                        if contrib[i, j] < 0], ensure_ascii=False))
        return fors, againsts

    def contributions(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float]:
        """(raw forest probability, contributions per feature, bias); bias + sum == raw."""
        raw, contrib = self.explainer.explain(self.transform(features))
        return raw, contrib, self.explainer.bias

    def importances(self) -> pd.Series:
        return pd.Series(self.forest.feature_importances_, index=self.feature_names).sort_values(ascending=False)


def _factor(name: str, value: Any, contribution: float) -> dict[str, Any]:
    if isinstance(value, float):
        value = round(value, 4)
    return {"feature": name, "label": label(name), "value": value if name != CLIENT else str(value),
            "effect": round(float(contribution), 4)}


def new_version(X: pd.DataFrame, y: pd.Series, params: dict) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    digest = hashlib.sha1()
    digest.update(pd.util.hash_pandas_object(X, index=False).to_numpy().tobytes())
    digest.update(np.asarray(y).tobytes())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    return f"{stamp}-{digest.hexdigest()[:6]}"


@dataclass
class Trained:
    model: WinModel
    search_table: pd.DataFrame
    oob_raw: np.ndarray
    oob_y: np.ndarray


def train(X: pd.DataFrame, y: pd.Series, spec: FeatureSpec, config: SearchConfig | None = None,
          params: dict | None = None) -> Trained:
    """Search (unless ``params`` is given), fit, calibrate on out-of-bag probabilities, pick the threshold."""
    config = config or SearchConfig()
    y = pd.Series(np.asarray(y, dtype="int64"), index=X.index)
    check_enough(y)
    timings: dict[str, float] = {}
    table = pd.DataFrame()
    if params is None:
        params, table, timings["search_s"] = search(X, y, spec, config)
    started = time.perf_counter()
    pipe = fit_forest(X, y, spec, params, config)
    timings["fit_s"] = time.perf_counter() - started
    oob = pipe.named_steps["rf"].oob_decision_function_[:, 1]
    seen = ~np.isnan(oob)
    calibrator = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    calibrator.fit(oob[seen], y.to_numpy()[seen])
    threshold = choose_threshold(y.to_numpy()[seen], np.clip(calibrator.predict(oob[seen]), 0, 1))
    info = {
        "version": new_version(X, y, params),
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "params": {k.removeprefix("rf__"): v for k, v in params.items()},
        "n_estimators": int(pipe.named_steps["rf"].n_estimators),
        "threshold": threshold,
        "rows": int(len(y)),
        "won": int(y.sum()),
        "lost": int(len(y) - y.sum()),
        "oob_accuracy": float(pipe.named_steps["rf"].oob_score_),
        "timings": timings,
        "features": spec.columns,
    }
    model = WinModel(pipe, calibrator, threshold, spec, info)
    return Trained(model=model, search_table=table, oob_raw=oob[seen], oob_y=y.to_numpy()[seen])
