"""Reasons: a prediction's per-feature contributions grouped into concepts a person understands.

A forest explains a prediction feature by feature (``client_won_before`` +0.05, ``client_closed_before``
-0.01, ``created_month`` +0.002...). People read concepts: the client's track record, the relationship,
the deal size, how long it has been open, each field typed at capture. Each model input belongs to one
concept (:func:`concepts`), or to none when it means nothing to a person (a day number, an input the
schema does not declare): such an input still counts in the probability, it is only never named.

A concept's effect is the sum of its inputs' contributions, over *all* inputs (not only the top few); the
strongest concepts for and against are kept (:func:`pick`). What is stored (in the cache, beside the
per-feature ``factors_for``/``factors_against``) is language-free JSON (:func:`encode`): the app writes
the sentences in the reader's language when it answers.

Stored form, one list per prediction, the concepts for (positive effect, strongest first) then those
against (negative, strongest first)::

    [[concept, effect, [[feature, value, effect], ...], {context}], ...]

``context`` holds what a sentence needs beyond the inputs (``won_days``: how long won deals usually take).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from salespred_assets.core.features import AGE, SOURCES
from salespred_assets.core.schema import DatasetSchema

TOP_CONCEPTS = 3           # per side
# A reason must move the probability by at least half a point: it is shown in whole points, and "+0
# points" explains nothing.
MIN_CONCEPT_EFFECT = 0.0051

TRACK_RECORD = "track_record"      # the client's closed opportunities, won and lost
RELATIONSHIP = "relationship"      # how long and how much the client has dealt with us
DEAL_SIZE = "deal_size"            # the amounts, alone and against the client's usual
TIMING = "timing"                  # how long it has been open, the month it was created
FIXED = (TRACK_RECORD, RELATIONSHIP, DEAL_SIZE, TIMING)
# One field, shown as "<label>: <value>": a code (named through the catalogs), a fraction, a number.
CATEGORY, FRACTION, NUMBER = "category", "fraction", "number"

DERIVED = {
    "client_closed_before": TRACK_RECORD, "client_won_before": TRACK_RECORD, "client_win_rate": TRACK_RECORD,
    "client_prior_opportunities": RELATIONSHIP, "client_tenure_days": RELATIONSHIP,
    "client_prior_units": RELATIONSHIP,
    "amount_vs_client": DEAL_SIZE,
    AGE: TIMING, "created_month": TIMING,
}
# Amounts of the capture shape besides the schema's amount (TCV): the annual value is the same concept.
AMOUNT_FIELDS = ("acv",)


def field_concept(kind: str, name: str) -> str:
    """The concept of one field: ``category:tipos``, ``fraction:margen_ganancia``, ``number:discount``."""
    return f"{kind}:{name}"


def split_concept(concept: str) -> tuple[str, str | None]:
    """(kind, field) of a concept: ``("category", "tipos")``, or ``("track_record", None)`` for a fixed one."""
    kind, sep, name = concept.partition(":")
    return (kind, name) if sep else (concept, None)


def concepts(schema: DatasetSchema, features: Sequence[str]) -> dict[str, str | None]:
    """Each model input's concept; None for an input that means nothing to a person (left out of reasons).

    Day numbers (a date field fed as a number, as old models did) and inputs the schema does not declare
    mean nothing to a person; derived client and timing features fold into their concept.
    """
    out: dict[str, str | None] = {}
    categorical = set(schema.categorical) | ({schema.seller} if schema.seller else set())
    for name in features:
        if name in DERIVED and name in SOURCES:
            out[name] = DERIVED[name]
        elif name in schema.dates or name not in schema.fields:
            out[name] = None
        elif name == schema.amount or (name in AMOUNT_FIELDS and name in schema.number_fields):
            out[name] = DEAL_SIZE
        elif name in categorical or name not in schema.number_fields:
            out[name] = field_concept(CATEGORY, name)
        elif name in schema.fractions:
            out[name] = field_concept(FRACTION, name)
        else:
            out[name] = field_concept(NUMBER, name)
    return out


@dataclass
class Grouping:
    """The concepts of a model's inputs, as a membership matrix for many rows at once."""

    features: list[str]
    concept_of: dict[str, str | None]
    context: dict[str, dict[str, Any]] = field(default_factory=dict)   # per concept, e.g. {"timing": {...}}

    def __post_init__(self) -> None:
        self.names = list(dict.fromkeys(c for f in self.features if (c := self.concept_of.get(f))))
        self.matrix = np.zeros((len(self.features), len(self.names)))
        self.members: list[list[int]] = [[] for _ in self.names]
        for i, f in enumerate(self.features):
            c = self.concept_of.get(f)
            if c:
                k = self.names.index(c)
                self.matrix[i, k] = 1.0
                self.members[k].append(i)

    def encode(self, columns: Mapping[str, np.ndarray], contrib: np.ndarray) -> list[str]:
        """The stored reasons (module doc) of every row, as JSON text."""
        rounded = np.round(contrib, 4)
        sums = np.round(rounded @ self.matrix, 4) if self.names else np.zeros((len(contrib), 0))
        out = []
        for i in range(len(contrib)):
            chosen = pick(sums[i])
            out.append(json.dumps([self._concept(k, float(sums[i, k]), columns, rounded, i) for k in chosen],
                                  ensure_ascii=False, separators=(",", ":")))
        return out

    def _concept(self, k: int, effect: float, columns: Mapping[str, np.ndarray], rounded: np.ndarray,
                 row: int) -> list[Any]:
        members = [[self.features[j], plain(columns[self.features[j]][row]), float(rounded[row, j])]
                   for j in self.members[k]]
        entry: list[Any] = [self.names[k], effect, members]
        if self.names[k] in self.context:
            entry.append(self.context[self.names[k]])
        return entry


def pick(effects: np.ndarray, top: int = TOP_CONCEPTS, minimum: float = MIN_CONCEPT_EFFECT) -> list[int]:
    """Indices of the strongest concepts for (largest first), then against (most negative first)."""
    order = np.argsort(-effects, kind="stable")
    fors = [int(k) for k in order[:top] if effects[k] >= minimum]
    againsts = [int(k) for k in order[::-1][:top] if effects[k] <= -minimum]
    return fors + againsts


def plain(value: Any) -> Any:
    """A feature value as JSON keeps it: NaN as null, NumPy scalars as Python ones."""
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else round(float(value), 4)
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class Reason:
    """One stored reason, decoded."""

    concept: str
    effect: float
    features: list[dict[str, Any]]      # [{feature, value, effect}]
    context: dict[str, Any]

    def value(self, feature: str) -> Any:
        return next((f["value"] for f in self.features if f["feature"] == feature), None)


def decode(stored: str | Sequence[Any] | None) -> tuple[list[Reason], list[Reason]]:
    """(reasons for, reasons against) from the stored form (JSON text or already parsed)."""
    items: list[Any] = json.loads(stored) if isinstance(stored, str) else list(stored or [])
    out: list[Reason] = []
    for item in items:
        context = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
        out.append(Reason(str(item[0]), float(item[1]),
                          [{"feature": f, "value": v, "effect": e} for f, v, e in item[2]], context))
    return [r for r in out if r.effect > 0], [r for r in out if r.effect < 0]


def won_days(frame: Any, schema: DatasetSchema, quantile: float = 0.75) -> int | None:
    """How many days won opportunities usually take to close (the ``quantile`` of their durations), or None."""
    if not (schema.created and schema.close) or not len(frame):
        return None
    won = frame[schema.stage].isin(schema.won).to_numpy()
    created = frame[schema.created].to_numpy(dtype="datetime64[D]")[won]
    closed = frame[schema.close].to_numpy(dtype="datetime64[D]")[won]
    known = ~np.isnat(created) & ~np.isnat(closed)
    days = (closed[known] - created[known]).astype("int64")
    days = days[days >= 0]
    return math.ceil(float(np.quantile(days, quantile))) if len(days) else None


def grouping(schema: DatasetSchema, features: Sequence[str], info: Mapping[str, Any] | None = None) -> Grouping:
    """The grouping of a model's inputs under ``schema``; ``info`` (the model's) may say how long won deals
    take (``won_days``, learnt at training; models trained before it was recorded lack it)."""
    days = (info or {}).get("won_days")
    context = {TIMING: {"won_days": int(days)}} if isinstance(days, (int, float)) and days > 0 else {}
    return Grouping(list(features), concepts(schema, features), context)
