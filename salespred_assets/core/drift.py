"""Data drift: how far recent opportunities have moved from the data the current model learned from.

The measure is the population stability index (PSI) of each model input::

    PSI = sum over bins of (actual share - expected share) * ln(actual share / expected share)

*expected* shares come from the training rows, stored with the model version (:func:`reference_profile`
runs inside training and its result lives in the model's ``info["reference"]``); *actual* shares come from
the recent opportunities. Numeric inputs are cut at the training data's deciles (open-ended outer bins, so
a value outside the training range still lands in a bin); categorical inputs compare category shares,
with the categories the model never saw pooled into one "unseen" bin.

Reading the figure (the usual credit-scoring rule of thumb, used by the drift check):

- PSI < 0.10: stable;
- 0.10 <= PSI < 0.25: moderate shift, worth watching;
- PSI >= 0.25: significant shift: retrain (the check warns and the retrain sensor reacts).

Inputs are compared **as at capture**: the recent opportunities' inputs are built as of their creation day
(age 0, the client's history up to then), exactly like the training snapshots at age 0 that the profile
is taken from, so an opportunity's age never reads as drift.

Inputs that index time (the age, the calendar month, a client's running counts and tenure) move with
the calendar by construction: any recent window differs from the whole history, so they are left out
(:data:`TIME_INDEXED`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from salespred_assets.core.features import AGE, FeatureSpec

WATCH = 0.10
ACT = 0.25
BINS = 10
MAX_CATEGORIES = 40      # categories kept by name; the rest are pooled as OTHER
EPSILON = 1e-4           # floor for a share, so an empty bin gives a large but finite PSI
OTHER = "__other__"
UNSEEN = "__unseen__"
TIME_INDEXED = frozenset({AGE, "created_month", "client_prior_opportunities", "client_prior_units",
                          "client_tenure_days", "client_closed_before", "client_won_before"})


def monitored(spec: FeatureSpec) -> tuple[list[str], list[str]]:
    """(categorical, numeric) inputs whose drift is measured."""
    return ([c for c in spec.categorical if c not in TIME_INDEXED], [c for c in spec.numeric if c not in TIME_INDEXED])


def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = EPSILON) -> float:
    """PSI between two share vectors over the same bins (each is renormalised after the floor)."""
    e = np.maximum(np.asarray(expected, dtype=float), epsilon)
    a = np.maximum(np.asarray(actual, dtype=float), epsilon)
    if e.shape != a.shape or e.ndim != 1 or len(e) == 0:
        raise ValueError(f"PSI needs two share vectors of the same length, got {e.shape} and {a.shape}")
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_edges(values: pd.Series | np.ndarray, bins: int = BINS) -> list[float]:
    """Inner cut points: the distinct interior quantiles of the training values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return []
    qs = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(x) for x in np.unique(qs)]


def numeric_shares(values: pd.Series | np.ndarray, edges: Sequence[float]) -> list[float]:
    """Share of values in each of the ``len(edges) + 1`` bins (right-closed); non-finite values are dropped."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return [0.0] * (len(edges) + 1)
    idx = np.searchsorted(np.asarray(edges, dtype=float), v, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    return [float(c) / len(v) for c in counts]


def categorical_shares(values: pd.Series, categories: Sequence[str]) -> list[float]:
    """Shares of ``categories`` (in order), then of any other value (one pooled bin, last)."""
    s = pd.Series(values).astype("str")
    if len(s) == 0:
        return [0.0] * (len(categories) + 1)
    counts = s.value_counts()
    named = [float(counts.get(c, 0)) / len(s) for c in categories]
    return [*named, max(0.0, 1.0 - sum(named))]


def reference_profile(features: pd.DataFrame, spec: FeatureSpec, bins: int = BINS,
                      max_categories: int = MAX_CATEGORIES) -> dict[str, Any]:
    """The training rows' distribution of every monitored input, JSON-safe (stored with the model)."""
    categorical, numeric = monitored(spec)
    left_out = sorted(set(spec.columns) - set(categorical) - set(numeric))
    profile: dict[str, Any] = {"rows": len(features), "bins": bins, "features": {}, "left_out": left_out}
    for col in categorical:
        counts = features[col].astype("str").value_counts()
        kept = [str(c) for c in counts.index[:max_categories]]
        shares = categorical_shares(features[col], kept)
        profile["features"][col] = {"kind": "categorical", "categories": kept, "shares": shares,
                                    "pooled": OTHER if len(counts) > max_categories else UNSEEN}
    for col in numeric:
        edges = numeric_edges(features[col], bins)
        profile["features"][col] = {"kind": "numeric", "edges": edges,
                                    "shares": numeric_shares(features[col], edges)}
    return profile


def compare(profile: Mapping[str, Any], recent: pd.DataFrame, watch: float = WATCH, act: float = ACT) -> pd.DataFrame:
    """One row per monitored input: PSI of ``recent`` against the stored training profile, and its band.

    Columns: feature, kind, psi, band ('stable' | 'watch' | 'act'), bins, largest_shift (the bin whose
    share moved most, and by how much, e.g. ``'RE-02: 0.31 -> 0.55'``).
    """
    rows = []
    for col, ref in profile.get("features", {}).items():
        if col not in recent.columns:
            continue
        if ref["kind"] == "numeric":
            actual = numeric_shares(recent[col], ref["edges"])
            labels = _interval_labels(ref["edges"])
        else:
            actual = categorical_shares(recent[col], ref["categories"])
            labels = [*ref["categories"], ref.get("pooled", OTHER)]
        expected = ref["shares"]
        value = psi(expected, actual)
        moved = int(np.argmax(np.abs(np.asarray(actual) - np.asarray(expected))))
        rows.append({"feature": col, "kind": ref["kind"], "psi": value, "band": band(value, watch, act),
                     "bins": len(expected),
                     "largest_shift": f"{labels[moved]}: {expected[moved]:.2f} -> {actual[moved]:.2f}"})
    frame = pd.DataFrame(rows, columns=["feature", "kind", "psi", "band", "bins", "largest_shift"])
    return frame.sort_values("psi", ascending=False, kind="mergesort").reset_index(drop=True)


def band(value: float, watch: float = WATCH, act: float = ACT) -> str:
    return "act" if value >= act else "watch" if value >= watch else "stable"


def _interval_labels(edges: Sequence[float]) -> list[str]:
    if not edges:
        return ["all"]
    bounds = [f"{e:.4g}" for e in edges]
    return [f"<= {bounds[0]}", *[f"({a}, {b}]" for a, b in itertools.pairwise(bounds)], f"> {bounds[-1]}"]


def recent_rows(created_day: pd.Series | None, is_open: pd.Series, days: int, min_rows: int) -> np.ndarray:
    """Mask of the "recent" opportunities.

    With a creation date: those created in the ``days`` days up to the newest creation date, widened to
    the newest ``min_rows`` when the window holds fewer. Without one: the open opportunities.
    """
    if created_day is None:
        return np.asarray(is_open, dtype=bool)
    day = np.asarray(created_day, dtype=float)
    if len(day) == 0:
        return np.zeros(0, dtype=bool)
    newest = np.nanmax(day)
    mask = day > newest - days
    if mask.sum() < min(min_rows, len(day)):
        cutoff = np.sort(day)[::-1][min(min_rows, len(day)) - 1]
        mask = day >= cutoff
    return mask
