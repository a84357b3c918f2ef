"""The win model: a tuned, calibrated random forest that explains every prediction.

Training (:func:`train`) follows one protocol everywhere (assets, CLI, backtests, benchmarks):

1. the rows are **as-of snapshots** of closed opportunities (:func:`salespred_assets.core.features.snapshots`):
   each opportunity at capture and at several ages while it was still open, labelled with its final
   outcome. At each age, each opportunity still open then counts once (see :meth:`Rows.weights`);
2. the **fifth of the opportunities decided last** (by close date; all snapshots of an opportunity fall
   on the same side) is held out. It is what the search scores candidates on and what the calibrator
   learns from, so the probabilities follow the most recent outcomes (win rates move over time). Chosen
   by close date, not creation date, because among the newest-created opportunities only the quick
   closers have an outcome yet (see :meth:`Rows.holdout`);
3. hyperparameters by **successive halving**: random candidates (depth, leaf size, features per split,
   class weight, bootstrap sample size, split criterion) each grow a small forest on the older rows;
   the best third, by ROC AUC on the held-out rows, grow three times as many trees; and so on
   until one remains. Growing is incremental (``warm_start``), so a survivor's trees are never refitted,
   and the number of trees is itself searched: the winner keeps growing while the held-out ROC AUC gains;
4. the winner's held-out probabilities train the calibrator, a logistic regression on the logit of the
   forest's probability (Platt scaling; steadier than isotonic regression on a few thousand rows), and
   choose the decision threshold.

The model that scores is that forest, trained on the older rows, with that calibrator: refitting it on
every row would leave the calibrator describing a different forest.
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
from sklearn.model_selection import ParameterSampler
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

from salespred_assets.core.encoding import LookupEncoder
from salespred_assets.core.features import AGE, FeatureSpec, label
from salespred_assets.core.forest import PathExplainer
from salespred_assets.core.reasons import Grouping
from salespred_assets.errors import NotEnoughData

MIN_PER_CLASS = 40
GRADE_BANDS = (("A", 0.75), ("B", 0.50), ("C", 0.25), ("D", 0.0))  # grade: lowest probability in band
TOP_FACTORS = 3
MIN_EFFECT = 0.001  # a factor must move the probability by at least 0.1 point to be named


@dataclass(frozen=True)
class SearchConfig:
    """How hard to search. ``full`` is the production search; ``fast`` is for tests and smoke runs."""

    n_candidates: int = 12
    factor: int = 3
    min_trees: int = 40
    max_trees: int = 360
    tree_step: int = 80           # the winner grows by this many trees while the held-out AUC gains
    min_gain: float = 0.0005      # ... by at least this much
    random_state: int = 42
    n_jobs: int = 2
    holdout: float = 0.2          # the share of opportunities decided last, for the search and the calibrator
    # Above this many snapshot rows, learn from a random sample of this size: a forest's accuracy has
    # long levelled off by then, while its cost and size keep growing.
    max_rows: int = 30_000
    param_space: dict[str, list[Any]] = field(default_factory=lambda: {
        "max_depth": [None, 10, 14, 20],
        "min_samples_leaf": [5, 10, 20, 40],
        "max_features": ["sqrt", 0.35, 0.5],
        "class_weight": [None],
        "max_samples": [None, 0.5, 0.7],
        "criterion": ["gini", "entropy"],
    })

    @classmethod
    def preset(cls, name: str) -> SearchConfig:
        if name == "full":
            return cls()
        if name == "fast":
            return cls(n_candidates=4, factor=2, min_trees=20, max_trees=60, tree_step=20, max_rows=8_000, param_space={
                "max_depth": [12, None],
                "min_samples_leaf": [3, 8],
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


@dataclass(frozen=True)
class Rows:
    """Training rows beside their features: the opportunity each snapshot belongs to, and the day its outcome
    was decided (its close date)."""

    groups: np.ndarray     # opportunity id per row
    decided: np.ndarray    # datetime64[D] per row: the day the opportunity's outcome became known

    def weights(self) -> np.ndarray:
        """Every snapshot weighs one: at each age, each opportunity still open then counts once.

        (Sharing one weight among an opportunity's snapshots would favour the quick closers, mostly wins, at
        every age: a deal won in a week has three snapshots, one lost after a year ten.)"""
        return np.ones(len(self.groups))

    def holdout(self, share: float) -> np.ndarray:
        """Mask of the rows of the ``share`` of opportunities decided last (whole days, so whole groups).

        Chosen by the day the outcome became known, not by creation: among the newest-created opportunities
        only the quick closers (mostly wins) have an outcome yet, and a calibrator learning from them would
        promise too much. The opportunities decided in a recent period are the recent mix of outcomes,
        long and short deals alike, each once."""
        if not len(self.decided):
            return np.zeros(0, dtype=bool)
        per_group = pd.Series(self.decided).groupby(pd.factorize(self.groups)[0]).first().to_numpy()
        ordered = np.sort(per_group)
        cut = ordered[min(int(np.floor(len(ordered) * (1 - share))), len(ordered) - 1)]
        return self.decided >= cut


def cap_rows(n: int, config: SearchConfig) -> np.ndarray:
    """Positions of at most ``config.max_rows`` rows: a random sample when there are more (sorted)."""
    if n <= config.max_rows:
        return np.arange(n)
    rng = np.random.default_rng(config.random_state)
    return np.sort(rng.choice(n, size=config.max_rows, replace=False))


def build_preprocessor(spec: FeatureSpec) -> ColumnTransformer:
    parts: list[tuple[str, Any, list[str]]] = []
    if spec.categorical:
        parts.append(("categorical", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                                    encoded_missing_value=-1), list(spec.categorical)))
    if spec.numeric:
        parts.append(("numeric", "passthrough", list(spec.numeric)))
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)


def _forest(params: dict[str, Any], trees: int, config: SearchConfig) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=trees, bootstrap=True, warm_start=True,
                                  n_jobs=config.n_jobs, random_state=config.random_state, **params)


@dataclass
class _Split:
    """The older rows (fit) and the newest (scored), encoded, with their labels and weights."""

    X_fit: np.ndarray
    y_fit: np.ndarray
    w_fit: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    w_val: np.ndarray

    def auc(self, rf: RandomForestClassifier) -> tuple[float, np.ndarray]:
        raw = forest_proba(rf, self.X_val)
        return float(roc_auc_score(self.y_val, raw, sample_weight=self.w_val)), raw


def forest_proba(rf: RandomForestClassifier, X: np.ndarray) -> np.ndarray:
    """The forest's probability of 'won', summed over the trees in a fixed order.

    With several jobs scikit-learn adds the trees' votes in whatever order its threads finish, so the last
    bits change from run to run; the calibrator fitted on them would too, and so would every probability."""
    jobs = rf.n_jobs
    rf.n_jobs = 1
    try:
        return rf.predict_proba(X)[:, 1]
    finally:
        rf.n_jobs = jobs


def _grow(rf: RandomForestClassifier, trees: int, split: _Split) -> tuple[float, np.ndarray]:
    rf.set_params(n_estimators=trees)
    with warnings.catch_warnings():
        # Same rows at every growth step, so "balanced" class weights stay valid under warm_start.
        warnings.filterwarnings("ignore", message="class_weight presets", category=UserWarning)
        rf.fit(split.X_fit, split.y_fit, sample_weight=split.w_fit)
    return split.auc(rf)


def search(split: _Split, config: SearchConfig) -> tuple[dict, RandomForestClassifier, np.ndarray, pd.DataFrame]:
    """Successive halving over trees, scored on the held-out rows (the opportunities decided last).

    Returns (params, the grown winner, its held-out raw probabilities, the trials)."""
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
            auc, raw = _grow(rf, trees, split)
            trials.append({"rung": rung, "trees": trees, "holdout_roc_auc": auc,
                           "seconds": time.perf_counter() - started, **{k: str(v) for k, v in cand.items()}})
            scored.append((auc, cand, rf, raw))
        scored.sort(key=lambda t: -t[0])
        keep = max(1, len(scored) // config.factor)
        alive = [(cand, rf) for _, cand, rf, _ in scored[:keep]]
        if keep == 1:
            break
        trees = min(trees * config.factor, config.max_trees)
        rung += 1
    best, params, winner, best_raw = scored[0]
    # The number of trees: keep growing while it still pays.
    while winner.n_estimators < config.max_trees:
        nxt = min(winner.n_estimators + config.tree_step, config.max_trees)
        started = time.perf_counter()
        auc, raw = _grow(winner, nxt, split)
        trials.append({"rung": "trees", "trees": nxt, "holdout_roc_auc": auc,
                       "seconds": time.perf_counter() - started, **{k: str(v) for k, v in params.items()}})
        gained = auc - best
        best, best_raw = (auc, raw) if auc >= best else (best, best_raw)
        if gained < config.min_gain:
            break
    winner.set_params(warm_start=False)
    return dict(params), winner, best_raw, pd.DataFrame(trials)


def logit(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))


def calibration_inputs(raw: np.ndarray, age: np.ndarray | None) -> np.ndarray:
    """The calibrator's inputs: the logit of the forest's probability, and the log of the age when known.

    The age lets one calibrator serve captures and old opportunities alike: a forest's probabilities are
    not equally sharp at every age, and a single scale would trade one off against the other."""
    columns = [logit(np.asarray(raw, dtype=float))]
    if age is not None:
        columns.append(np.log1p(np.maximum(np.asarray(age, dtype=float), 0)))
    return np.column_stack(columns)


def choose_threshold(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """The probability cut that maximises (weighted) accuracy on the given held-out predictions."""
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=float)
    order = np.argsort(-p)
    p_sorted, y_sorted, w_sorted = p[order], y[order], w[order]
    # Predict "won" for the top k: correct = positives in top k + negatives below.
    tp = np.cumsum(y_sorted * w_sorted)
    taken = np.cumsum(w_sorted)
    negatives = float(np.sum(w * (1 - y)))
    correct = tp + negatives - (taken - tp)
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
        return forest_proba(self.forest, self.transform(features))

    def calibrate(self, raw: np.ndarray, age: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probabilities from the forest's; ``age`` (days open so far) when the model has one."""
        # The logistic calibrator's own formula, without its per-call input validation.
        coef = self.calibrator.coef_[0]
        X = calibration_inputs(raw, age if len(coef) > 1 else None)
        z = np.full(len(X), float(self.calibrator.intercept_[0]))
        for j in range(X.shape[1]):  # element-wise, not a BLAS product: the same bits on every run
            z += X[:, j] * float(coef[j])
        return 1.0 / (1.0 + np.exp(-z))

    def probability(self, features: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities for a feature frame."""
        age = features[AGE].to_numpy(dtype=float) if AGE in features.columns else None
        return self.calibrate(self.raw_proba(features), age)

    def predict(self, features: pd.DataFrame, *, explain: bool = True) -> pd.DataFrame:
        """probability, label, score (1-99), grade, and the top factors for and against each row."""
        return pd.DataFrame(self.predict_columns(self._columns(features), explain=explain), index=features.index)

    def predict_columns(self, columns: dict[str, np.ndarray], *, explain: bool = True,
                        grouping: Grouping | None = None) -> dict[str, Any]:
        """:meth:`predict` on feature columns (name -> array), returning prediction columns as arrays.

        With ``grouping`` (and ``explain``), ``reasons`` holds each row's contributions grouped by concept
        (:mod:`salespred_assets.core.reasons`), over all the inputs."""
        X = self.transform(columns)
        if explain:
            raw, contrib = self.explainer.explain(X)
        else:
            raw, contrib = forest_proba(self.forest, X), None
        age = np.asarray(columns[AGE], dtype=float) if AGE in columns else None
        prob = self.calibrate(raw, age)
        out: dict[str, Any] = {
            "probability": prob,
            "predicted_won": prob >= self.threshold,
            "score": score_1_99(prob),
            "grade": grade(prob),
        }
        if contrib is not None:
            out["factors_for"], out["factors_against"] = self._factors(columns, contrib)
            if grouping is not None:  # in points of the probability people read
                out["reasons"] = grouping.encode(columns, self.shown_contributions(raw, contrib, age))
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

    def shown_contributions(self, raw: np.ndarray, contrib: np.ndarray, age: np.ndarray | None) -> np.ndarray:
        """The forest's contributions rescaled to the calibrated probability that is shown: each row's sum
        becomes (its probability - the calibrated probability of the forest's base rate), so reasons in
        points add up to how far the shown probability is from the base. The calibrator is monotonic, so
        no contribution changes sign."""
        bias = float(self.explainer.bias)
        base = self.calibrate(np.full(len(raw), bias), age)
        moved = np.asarray(raw, dtype=float) - bias
        step = 1e-4  # where the forest's contributions cancel out, the calibrator's slope at the base
        slope = (self.calibrate(np.full(len(raw), bias + step), age) - self.calibrate(
            np.full(len(raw), bias - step), age)) / (2 * step)
        near = np.abs(moved) < 1e-6
        scale = np.where(near, slope, (self.calibrate(raw, age) - base) / np.where(near, 1.0, moved))
        return contrib * scale[:, None]

    def contributions(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float]:
        """(raw forest probability, contributions per feature, bias); bias + sum == raw."""
        raw, contrib = self.explainer.explain(self.transform(features))
        return raw, contrib, self.explainer.bias

    def importances(self) -> pd.Series:
        return pd.Series(self.forest.feature_importances_, index=self.feature_names).sort_values(ascending=False)


def _factor(name: str, value: Any, contribution: float) -> dict[str, Any]:
    if isinstance(value, (float, np.floating)):
        value = None if np.isnan(value) else round(float(value), 4)
    return {"feature": name, "label": label(name), "value": value, "effect": round(float(contribution), 4)}


def new_version(X: pd.DataFrame, y: pd.Series | np.ndarray, params: dict) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    digest = hashlib.sha1()
    digest.update(pd.util.hash_pandas_object(X, index=False).to_numpy().tobytes())
    digest.update(np.asarray(y).tobytes())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    return f"{stamp}-{digest.hexdigest()[:6]}"


@dataclass
class Trained:
    model: WinModel
    search_table: pd.DataFrame
    holdout_raw: np.ndarray      # the forest's probabilities on the held-out newest rows
    holdout_y: np.ndarray
    holdout_w: np.ndarray


def train(X: pd.DataFrame, y: pd.Series | np.ndarray, spec: FeatureSpec, rows: Rows,
          config: SearchConfig | None = None, params: dict | None = None) -> Trained:
    """Encode, search (unless ``params`` fixes the forest) on the older rows, calibrate on the newest.

    ``X`` holds snapshot rows (see the module doc); ``rows`` says which opportunity each belongs to and
    when it was created. ``params`` are RandomForestClassifier arguments (``n_estimators`` included),
    e.g. the ``params`` a previous training recorded in its ``info``, to repeat a search's choice.
    """
    config = config or SearchConfig()
    y_all = np.asarray(y, dtype="int64")
    check_enough(y_all)
    available = len(y_all)
    opportunities = len(pd.unique(np.asarray(rows.groups)))
    keep = cap_rows(len(y_all), config)
    X = X.iloc[keep]
    y_np = y_all[keep]
    rows = Rows(np.asarray(rows.groups)[keep], np.asarray(rows.decided)[keep])
    weights = rows.weights()
    held = rows.holdout(config.holdout)
    check_enough(y_np[~held])
    check_enough(y_np[held])
    timings: dict[str, float] = {}
    started = time.perf_counter()
    pre = build_preprocessor(spec)
    pre.fit(X.loc[~held, spec.columns])
    Xt = np.asarray(pre.transform(X[spec.columns]), dtype=np.float32)
    split = _Split(Xt[~held], y_np[~held], weights[~held], Xt[held], y_np[held], weights[held])
    timings["encode_s"] = time.perf_counter() - started
    table = pd.DataFrame()
    started = time.perf_counter()
    if params is None:
        chosen, rf, raw, table = search(split, config)
    else:
        chosen = {k.removeprefix("rf__"): v for k, v in params.items()}
        trees = int(chosen.pop("n_estimators", config.max_trees))
        rf = _forest(chosen, trees, config)
        _, raw = _grow(rf, trees, split)
        rf.set_params(warm_start=False)
    timings["search_s" if params is None else "fit_s"] = time.perf_counter() - started
    age = X.loc[held, AGE].to_numpy(dtype=float) if AGE in spec.columns else None
    inputs = calibration_inputs(raw, age)
    calibrator = LogisticRegression(C=1e4).fit(inputs, split.y_val, sample_weight=split.w_val)
    calibrated = calibrator.predict_proba(inputs)[:, 1]
    threshold = choose_threshold(split.y_val, calibrated, split.w_val)
    recorded = {**chosen, "n_estimators": int(rf.n_estimators)}
    info = {
        "version": new_version(X, y_np, recorded),
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "params": recorded,
        "n_estimators": int(rf.n_estimators),
        "threshold": threshold,
        "rows": len(y_np),
        "rows_available": int(available),
        "opportunities": opportunities,
        "opportunities_sampled": len(pd.unique(rows.groups)),
        "rows_fit": int((~held).sum()),
        "rows_holdout": int(held.sum()),
        "holdout_from": str(np.min(rows.decided[held])) if held.any() else None,
        "won": int(y_np.sum()),
        "lost": int(len(y_np) - y_np.sum()),
        "holdout_roc_auc": float(roc_auc_score(split.y_val, raw, sample_weight=split.w_val)),
        "timings": timings,
        "features": spec.columns,
    }
    model = WinModel(Pipeline([("pre", pre), ("rf", rf)]), calibrator, threshold, spec, info)
    return Trained(model=model, search_table=table, holdout_raw=raw, holdout_y=split.y_val, holdout_w=split.w_val)
