"""The win model: a tuned, calibrated random forest that explains every prediction.

Training (:func:`train`) follows one protocol everywhere (assets, CLI, benchmarks):

1. closed opportunities only (won = 1, lost = 0);
2. the inputs are encoded once; the client's win history is target-encoded out of fold
   (scikit-learn's ``TargetEncoder`` cross-fits in ``fit_transform``), so no row sees its own outcome;
3. hyperparameters by **successive halving on out-of-bag scores**: random candidates (depth, leaf size,
   features per split, class weight, bootstrap sample size, split criterion) each grow a small forest;
   the best third, by out-of-bag ROC AUC, grow three times as many trees; and so on until one remains.
   Growing is incremental (``warm_start``), so a survivor's trees are never refitted, and the number of
   trees is itself searched: the winner keeps growing while the out-of-bag ROC AUC still gains;
4. the out-of-bag probabilities (each row scored only by trees that never saw it) train the calibrator,
   a logistic regression on the logit of the forest's probability (Platt scaling; steadier than isotonic
   regression on a few thousand rows), and choose the decision threshold, so neither ever looks at a
   held-out split.

Out-of-bag scoring makes each candidate cost one forest instead of k cross-validation forests, which
is what keeps the search within a minute on two cores (see BENCHMARKS.md for the comparison with the
original ``GridSearchCV(cv=10)``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import ParameterSampler, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder, TargetEncoder

from salespred_assets.core.encoding import LookupEncoder
from salespred_assets.core.features import CLIENT, FeatureSpec, label
from salespred_assets.core.forest import PathExplainer
from salespred_assets.errors import NotEnoughData

MIN_PER_CLASS = 40
GRADE_BANDS = (("A", 0.75), ("B", 0.50), ("C", 0.25), ("D", 0.0))  # grade: lowest probability in band
TOP_FACTORS = 3
MIN_EFFECT = 0.001  # a factor must move the probability by at least 0.1 point to be named


@dataclass(frozen=True)
class SearchConfig:
    """How hard to search. ``full`` is the production search; ``fast`` is for tests and smoke runs."""

    n_candidates: int = 18
    factor: int = 3
    min_trees: int = 40
    max_trees: int = 600
    tree_step: int = 100          # the winner grows by this many trees while the OOB AUC gains
    min_gain: float = 0.0003      # ... by at least this much
    random_state: int = 42
    n_jobs: int = 2
    # Above this many closed opportunities, learn from a stratified random sample of this size: a
    # forest's accuracy has long levelled off by then, while its cost and size keep growing.
    max_rows: int = 30_000
    param_space: dict[str, list[Any]] = field(default_factory=lambda: {
        "max_depth": [None, 14, 20, 28],
        "min_samples_leaf": [1, 2, 3, 4, 6, 8],
        "max_features": ["sqrt", 0.25, 0.35, 0.5],
        "class_weight": [None, "balanced_subsample"],
        "max_samples": [None, 0.7],
        "criterion": ["gini", "entropy"],
    })

    @classmethod
    def preset(cls, name: str) -> SearchConfig:
        if name == "full":
            return cls()
        if name == "fast":
            return cls(n_candidates=4, factor=2, min_trees=20, max_trees=60, tree_step=20, param_space={
                "max_depth": [12, None],
                "min_samples_leaf": [2, 4],
                "max_features": ["sqrt"],
                "class_weight": [None],
                "max_samples": [None],
                "criterion": ["gini"],
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


def cap_rows(X: pd.DataFrame, y: pd.Series, config: SearchConfig) -> tuple[pd.DataFrame, pd.Series]:
    """At most ``config.max_rows`` rows: a stratified random sample when there are more."""
    if len(y) <= config.max_rows:
        return X, y
    X, _, y, _ = train_test_split(X, y, train_size=config.max_rows, stratify=y, random_state=config.random_state)
    return X, y


def build_preprocessor(spec: FeatureSpec, random_state: int = 42) -> ColumnTransformer:
    parts: list[tuple[str, Any, list[str]]] = []
    if spec.categorical:
        parts.append(("categorical", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                                    encoded_missing_value=-1), list(spec.categorical)))
    if spec.numeric:
        parts.append(("numeric", "passthrough", list(spec.numeric)))
    if spec.client:
        cv = StratifiedKFold(5, shuffle=True, random_state=random_state)
        parts.append(("client", TargetEncoder(target_type="binary", cv=cv), [CLIENT]))
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)


def _forest(params: dict[str, Any], trees: int, config: SearchConfig) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=trees, oob_score=True, bootstrap=True, warm_start=True,
                                  n_jobs=config.n_jobs, random_state=config.random_state, **params)


def _oob_auc(rf: RandomForestClassifier, y: np.ndarray) -> float:
    oob = rf.oob_decision_function_[:, 1]
    seen = ~np.isnan(oob)
    return float(roc_auc_score(y[seen], oob[seen]))


def _grow(rf: RandomForestClassifier, trees: int, Xt: np.ndarray, y: np.ndarray) -> float:
    rf.set_params(n_estimators=trees)
    with warnings.catch_warnings():
        # Same rows at every growth step, so "balanced" class weights stay valid under warm_start.
        warnings.filterwarnings("ignore", message="class_weight presets", category=UserWarning)
        # Small first-rung forests leave a few rows without out-of-bag trees; they are skipped.
        warnings.filterwarnings("ignore", message="Some inputs do not have OOB scores", category=UserWarning)
        rf.fit(Xt, y)
    return _oob_auc(rf, y)


def search(Xt: np.ndarray, y: np.ndarray, config: SearchConfig) -> tuple[dict, RandomForestClassifier, pd.DataFrame]:
    """Successive halving over trees, scored out of bag; returns (params, the grown winner, the trials)."""
    candidates = list(ParameterSampler(config.param_space, n_iter=config.n_candidates,
                                       random_state=config.random_state))
    # Duplicates can come out of the sampler when the space is small; keep the first of each.
    unique: list[dict[str, Any]] = []
    for cand in candidates:
        if cand not in unique:
            unique.append(cand)
    alive = [(cand, _forest(cand, config.min_trees, config)) for cand in unique]
    trials: list[dict[str, Any]] = []
    trees, rung = config.min_trees, 0
    while True:
        scored = []
        for cand, rf in alive:
            started = time.perf_counter()
            auc = _grow(rf, trees, Xt, y)
            trials.append({"rung": rung, "trees": trees, "oob_roc_auc": auc,
                           "seconds": time.perf_counter() - started, **{k: str(v) for k, v in cand.items()}})
            scored.append((auc, cand, rf))
        scored.sort(key=lambda t: -t[0])
        keep = max(1, len(scored) // config.factor)
        alive = [(cand, rf) for _, cand, rf in scored[:keep]]
        if keep == 1:
            break
        trees = min(trees * config.factor, config.max_trees)
        rung += 1
    params, winner = alive[0]
    best = scored[0][0]
    # The number of trees: keep growing while it still pays.
    while winner.n_estimators < config.max_trees:
        nxt = min(winner.n_estimators + config.tree_step, config.max_trees)
        started = time.perf_counter()
        auc = _grow(winner, nxt, Xt, y)
        trials.append({"rung": "trees", "trees": nxt, "oob_roc_auc": auc, "seconds": time.perf_counter() - started,
                       **{k: str(v) for k, v in params.items()}})
        if auc - best < config.min_gain:
            best = max(best, auc)
            break
        best = auc
    winner.set_params(warm_start=False)
    return dict(params), winner, pd.DataFrame(trials)


def logit(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))


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

    def __init__(self, pipeline: Pipeline, calibrator: LogisticRegression, threshold: float,
                 spec: FeatureSpec, info: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.calibrator = calibrator
        self.threshold = float(threshold)
        self.spec = spec
        self.info = info
        self._explainer: PathExplainer | None = None
        self._encoder: LookupEncoder | None = None

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
    def encoder(self) -> LookupEncoder:
        if self._encoder is None:
            self._encoder = LookupEncoder(self.pipeline.named_steps["pre"])
        return self._encoder

    @property
    def feature_names(self) -> list[str]:
        return self.encoder.columns

    def _columns(self, features: pd.DataFrame) -> dict[str, np.ndarray]:
        return {c: features[c].to_numpy() for c in self.feature_names}

    def transform(self, features: pd.DataFrame | dict[str, np.ndarray]) -> np.ndarray:
        """The forest's inputs: the fitted preprocessing, applied as lookups (same numbers, far cheaper)."""
        return self.encoder.transform(features if isinstance(features, dict) else self._columns(features))

    def raw_proba(self, features: pd.DataFrame) -> np.ndarray:
        return self.forest.predict_proba(self.transform(features))[:, 1]

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        # The logistic calibrator's own formula, without its per-call input validation.
        z = logit(np.asarray(raw, dtype=float)) * float(self.calibrator.coef_[0, 0]) + float(self.calibrator.intercept_[0])
        return 1.0 / (1.0 + np.exp(-z))

    def predict(self, features: pd.DataFrame, *, explain: bool = True) -> pd.DataFrame:
        """probability, label, score (1-99), grade, and the top factors for and against each row."""
        return pd.DataFrame(self.predict_columns(self._columns(features), explain=explain), index=features.index)

    def predict_columns(self, columns: dict[str, np.ndarray], *, explain: bool = True) -> dict[str, Any]:
        """:meth:`predict` on feature columns (name -> array), returning prediction columns as arrays."""
        X = self.transform(columns)
        if explain:
            raw, contrib = self.explainer.explain(X)
        else:
            raw, contrib = self.forest.predict_proba(X)[:, 1], None
        prob = self.calibrate(raw)
        out: dict[str, Any] = {
            "probability": prob,
            "predicted_won": prob >= self.threshold,
            "score": score_1_99(prob),
            "grade": grade(prob),
        }
        if contrib is not None:
            out["factors_for"], out["factors_against"] = self._factors(columns, contrib)
        out["model_version"] = np.full(len(prob), self.version, dtype=object)
        return out

    def _factors(self, columns: dict[str, np.ndarray], contrib: np.ndarray) -> tuple[list[str], list[str]]:
        names = self.feature_names
        order = np.argsort(-contrib, axis=1)
        top_for = order[:, :TOP_FACTORS]
        top_against = order[:, ::-1][:, :TOP_FACTORS]
        fors, againsts = [], []
        for i in range(contrib.shape[0]):
            fors.append(json.dumps([_factor(names[j], columns[names[j]][i], contrib[i, j]) for j in top_for[i]
                                    if contrib[i, j] >= MIN_EFFECT], ensure_ascii=False))
            againsts.append(json.dumps([_factor(names[j], columns[names[j]][i], contrib[i, j]) for j in top_against[i]
                                        if contrib[i, j] <= -MIN_EFFECT], ensure_ascii=False))
        return fors, againsts

    def contributions(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float]:
        """(raw forest probability, contributions per feature, bias); bias + sum == raw."""
        raw, contrib = self.explainer.explain(self.transform(features))
        return raw, contrib, self.explainer.bias

    def importances(self) -> pd.Series:
        return pd.Series(self.forest.feature_importances_, index=self.feature_names).sort_values(ascending=False)


def _factor(name: str, value: Any, contribution: float) -> dict[str, Any]:
    if isinstance(value, (float, np.floating)):
        value = round(float(value), 4)
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
    """Encode, search (unless ``params`` fixes the forest), calibrate out of bag, pick the threshold.

    ``params`` are RandomForestClassifier arguments (``n_estimators`` included), e.g. the ``params`` a
    previous training recorded in its ``info``; production refits use them to repeat a search's choice.
    """
    config = config or SearchConfig()
    y = pd.Series(np.asarray(y, dtype="int64"), index=X.index)
    check_enough(y)
    available = len(y)
    X, y = cap_rows(X, y, config)
    y_np = y.to_numpy()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    pre = build_preprocessor(spec, config.random_state)
    Xt = np.asarray(pre.fit_transform(X[spec.columns], y), dtype=np.float32)
    timings["encode_s"] = time.perf_counter() - started
    table = pd.DataFrame()
    started = time.perf_counter()
    if params is None:
        chosen, rf, table = search(Xt, y_np, config)
    else:
        chosen = {k.removeprefix("rf__"): v for k, v in params.items()}
        trees = int(chosen.pop("n_estimators", config.max_trees))
        rf = _forest(chosen, trees, config).set_params(warm_start=False)
        rf.fit(Xt, y_np)
    timings["search_s" if params is None else "fit_s"] = time.perf_counter() - started
    oob = rf.oob_decision_function_[:, 1]
    seen = ~np.isnan(oob)
    calibrator = LogisticRegression(C=1e4).fit(logit(oob[seen])[:, None], y_np[seen])
    threshold = choose_threshold(y_np[seen], calibrator.predict_proba(logit(oob[seen])[:, None])[:, 1])
    recorded = {**chosen, "n_estimators": int(rf.n_estimators)}
    info = {
        "version": new_version(X, y, recorded),
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "params": recorded,
        "n_estimators": int(rf.n_estimators),
        "threshold": threshold,
        "rows": int(len(y)),
        "rows_available": int(available),
        "won": int(y.sum()),
        "lost": int(len(y) - y.sum()),
        "oob_roc_auc": _oob_auc(rf, y_np),
        "oob_accuracy": float(rf.oob_score_),
        "timings": timings,
        "features": spec.columns,
    }
    model = WinModel(Pipeline([("pre", pre), ("rf", rf)]), calibrator, threshold, spec, info)
    return Trained(model=model, search_table=table, oob_raw=oob[seen], oob_y=y_np[seen])
