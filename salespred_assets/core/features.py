"""One feature pipeline for training, backtests, batch scoring and single-opportunity scoring.

Every input is computed **as of a moment** (``at``, one day per row): the moment a prediction is for.

- a capture is scored as of its creation day (age 0);
- an open opportunity is scored as of the scoring day, at its age then (computed from its creation
  date, never read from a stored field);
- in training, each closed opportunity contributes snapshots at several ages before it closed
  (:func:`snapshots`), each as of its creation day plus that age.

What a row may read (:data:`SOURCES` states it per feature, and :func:`check_honest` enforces it):

- its own fields that are known at capture (never one the schema marks final only at close, never the
  close date, never the stage);
- facts about its client counted over the client's opportunities **created before** it (strictly
  earlier days);
- outcomes of its client's other opportunities **decided before** ``at`` (closed on an earlier day),
  the close date of a closed opportunity being the moment its outcome became known.

So no feature of a row reads a row created after it, or an outcome decided after the moment it is
scored for; a test checks this by perturbing the future.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from salespred_assets.core.schema import DatasetSchema

EPOCH = np.datetime64("2000-01-01", "D")
# Ages (days since creation) at which a closed opportunity is seen in training: at capture, then as it
# ages. An age is used only while the opportunity was still open (age < its final duration).
SNAPSHOT_AGES = (0, 7, 14, 30, 60, 90, 135, 180, 270, 365, 545, 730, 1095, 1460)

AGE = "age_days"
# Readable names for the derived features, used in explanations, plots and the model card.
LABELS = {
    AGE: "days open so far",
    "created_month": "creation month",
    "client_prior_opportunities": "client's earlier opportunities",
    "client_prior_units": "client's business units so far",
    "client_tenure_days": "days since the client's first opportunity",
    "amount_vs_client": "deal size against the client's usual",
    "client_closed_before": "client's closed opportunities",
    "client_won_before": "client's won opportunities",
    "client_win_rate": "client's win rate",
}
# Where each derived feature comes from: "capture" (the row's own fields known at capture),
# "created-before" (the client's rows created on earlier days), "decided-before" (outcomes of the
# client's rows closed before the moment scored). Nothing may read a field final only at close.
SOURCES = {
    AGE: "capture",
    "created_month": "capture",
    "client_prior_opportunities": "created-before",
    "client_prior_units": "created-before",
    "client_tenure_days": "created-before",
    "amount_vs_client": "created-before",
    "client_closed_before": "decided-before",
    "client_won_before": "decided-before",
    "client_win_rate": "decided-before",
}


@dataclass(frozen=True)
class FeatureSpec:
    """Which model inputs a schema gives: names by kind, in a fixed order."""

    categorical: tuple[str, ...]
    numeric: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return [*self.categorical, *self.numeric]


def feature_spec(schema: DatasetSchema) -> FeatureSpec:
    """The model inputs: fields known at capture, the age, and the client's history as of the moment scored."""
    inputs = set(schema.model_fields)
    categorical = [c for c in schema.categorical if c in inputs]
    if schema.seller and schema.seller in inputs and schema.seller not in categorical:
        categorical.append(schema.seller)
    numeric = [c for c in schema.numeric if c in inputs]
    if schema.amount and schema.amount in inputs and schema.amount not in numeric:
        numeric.append(schema.amount)
    if schema.created:
        numeric += [AGE, "created_month"]
        if schema.client:
            numeric += ["client_prior_opportunities", "client_tenure_days"]
            if categorical:
                numeric.append("client_prior_units")
            if schema.amount and schema.amount in inputs:
                numeric.append("amount_vs_client")
            if schema.close:
                numeric += ["client_closed_before", "client_won_before", "client_win_rate"]
    spec = FeatureSpec(tuple(categorical), tuple(numeric))
    check_honest(schema, spec)
    return spec


def check_honest(schema: DatasetSchema, spec: FeatureSpec) -> None:
    """Refuse a feature set with an input that is only final at close (directly, or through a derived feature)."""
    late = set(schema.late_fields)
    direct = sorted(c for c in spec.columns if c in late)
    unknown = sorted(c for c in spec.columns if c not in schema.fields and c not in SOURCES)
    if direct or unknown:
        raise ValueError(f"model inputs {direct or unknown} are {'final only at close' if direct else 'undeclared'}; "
                         "an input must be known when the prediction is read")


def label(feature: str) -> str:
    return LABELS.get(feature, feature)


def _days(values: pd.Series | np.ndarray) -> np.ndarray:
    """Days of datetimes (a column, or an array) as datetime64[D]."""
    return values.astype("datetime64[D]") if isinstance(values, np.ndarray) else values.to_numpy(dtype="datetime64[D]")


def _months(days: np.ndarray) -> np.ndarray:
    """Calendar month (1-12) of an array of datetime64[D]."""
    return (days.astype("datetime64[M]").astype("int64") % 12 + 1).astype("float64")


def build_features(frame: pd.DataFrame, schema: DatasetSchema, at: np.ndarray | None = None,
                   context: pd.DataFrame | None = None) -> pd.DataFrame:
    """Model inputs for every row of ``frame`` as of ``at`` (see :func:`feature_columns`), as a frame."""
    return pd.DataFrame(feature_columns(frame, schema, at, context), index=frame.index)


def feature_columns(frame: pd.DataFrame | Mapping[str, pd.Series], schema: DatasetSchema, at: np.ndarray | None = None,
                    context: pd.DataFrame | Mapping[str, pd.Series] | None = None) -> dict[str, np.ndarray]:
    """Model inputs for every row of ``frame`` (name -> array), each as of its day in ``at``.

    ``at`` defaults to each row's creation day (as at capture). ``context`` is every opportunity known
    (closed and open; default: ``frame``), over which the client's history is counted; only its rows
    created before a row, and its outcomes decided before ``at``, ever reach that row. Everything is
    computed on NumPy arrays, so one row costs a few hundred microseconds and a million rows seconds.
    """
    spec = feature_spec(schema)
    cols: dict[str, np.ndarray] = {}
    for col in spec.categorical:
        cols[col] = frame[col].to_numpy(dtype=object)
    for col in schema.number_fields:
        if col in spec.numeric:
            cols[col] = frame[col].to_numpy(dtype="float64")
    if schema.created:
        created = _days(frame[schema.created])
        at_days = created if at is None else np.maximum(np.asarray(at, dtype="datetime64[D]"), created)
        cols[AGE] = (at_days - created).astype("float64")
        cols["created_month"] = _months(created)
        if schema.client:
            ctx = frame if context is None else context
            cols.update(client_history(frame, ctx, schema, created, at_days))
    return {c: cols[c] for c in spec.columns}


class _Before:
    """Counts (or sums) over context events per group strictly before a query day, by binary search."""

    def __init__(self, groups: np.ndarray, days: np.ndarray, lo: int, span: int) -> None:
        self.lo, self.span = lo, span
        keys = groups.astype(np.int64) * span + (days - lo)
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]

    def _bounds(self, groups: np.ndarray, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        base = groups.astype(np.int64) * self.span
        start = np.searchsorted(self.keys, base, "left")
        end = np.searchsorted(self.keys, base + np.clip(days - self.lo, 0, self.span - 1), "left")
        return start, end

    def count(self, groups: np.ndarray, days: np.ndarray) -> np.ndarray:
        start, end = self._bounds(groups, days)
        return (end - start).astype("float64")

    def total(self, weights: np.ndarray, groups: np.ndarray, days: np.ndarray) -> np.ndarray:
        cum = np.r_[0.0, np.cumsum(weights[self.order], dtype="float64")]
        start, end = self._bounds(groups, days)
        return cum[end] - cum[start]


def day(days: np.ndarray) -> np.ndarray:
    """datetime64[D] as whole days since 1970 (int64)."""
    return days.astype("int64")


def history_fields(schema: DatasetSchema) -> tuple[str, ...]:
    """The fields of the context rows :func:`client_history` reads (all it needs of a client's other rows)."""
    if not (schema.client and schema.created):
        return ()
    inputs = set(schema.model_fields)
    units_field = next((c for c in schema.categorical if c in inputs), None)
    amount = schema.amount if schema.amount and schema.amount in inputs else None
    close = (schema.close, schema.stage) if schema.close else ()
    return tuple(dict.fromkeys(f for f in (schema.client, schema.created, units_field, amount, *close) if f))


def client_history(frame: pd.DataFrame | Mapping[str, pd.Series], ctx: pd.DataFrame | Mapping[str, pd.Series],
                   schema: DatasetSchema, created: np.ndarray, at_days: np.ndarray) -> dict[str, np.ndarray]:
    """The client's facts for each row of ``frame``: its rows in ``ctx`` created before the row, and its
    outcomes decided before ``at_days``."""
    assert schema.client is not None and schema.created is not None
    n = len(created)
    # One factorisation of both sides, as stored (Arrow, in C): the frame's rows first.
    codes = pd.factorize(np.concatenate([frame[schema.client].to_numpy(dtype=object),
                                         ctx[schema.client].to_numpy(dtype=object)]))[0]
    # A row without a client is a client of its own: no history, rather than one shared by all such rows.
    lone = np.flatnonzero(codes < 0)
    codes[lone] = codes.max(initial=-1) + 1 + np.arange(lone.size)
    mine, theirs = codes[:n], codes[n:]
    ctx_created = _days(ctx[schema.created])
    valid = ~np.isnat(ctx_created)
    closed_on = (_days(ctx[schema.close]) if schema.close
                 else np.full(len(ctx_created), np.datetime64("NaT"), "datetime64[D]"))
    # Every day any key is built from (creations, close dates, the moments scored) lies in [lo, lo + span):
    # a day outside it would spill into the next client's key range.
    all_days = np.concatenate([day(ctx_created[valid]), day(closed_on[~np.isnat(closed_on)]), day(created),
                               day(at_days)])
    lo = int(all_days.min(initial=0))
    span = int(all_days.max(initial=0)) - lo + 2
    made = _Before(theirs[valid], day(ctx_created[valid]), lo, span)
    out: dict[str, np.ndarray] = {}
    prior = made.count(mine, day(created))
    out["client_prior_opportunities"] = prior
    first = np.full(int(codes.max(initial=-1)) + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, theirs[valid], day(ctx_created[valid]))
    out["client_tenure_days"] = np.maximum(day(created) - np.minimum(first[mine], day(created)), 0).astype("float64")
    spec_inputs = set(schema.model_fields)
    units_field = next((c for c in schema.categorical if c in spec_inputs), None)
    if units_field:
        # A (client, unit) pair counts from the first day the client had an opportunity in that unit (a
        # missing unit is a unit of its own).
        units = pd.factorize(ctx[units_field].to_numpy(dtype=object), use_na_sentinel=False)[0][valid]
        pair = pd.factorize(theirs[valid].astype(np.int64) * (int(units.max(initial=0)) + 1) + units)[0]
        pair_first = np.full(int(pair.max(initial=-1)) + 1, np.iinfo(np.int64).max)
        np.minimum.at(pair_first, pair, day(ctx_created[valid]))
        pair_client = np.zeros(len(pair_first), dtype=np.int64)
        pair_client[pair] = theirs[valid]
        out["client_prior_units"] = _Before(pair_client, pair_first, lo, span).count(mine, day(created))
    if schema.amount and schema.amount in spec_inputs:
        log_amount = np.log1p(np.maximum(ctx[schema.amount].to_numpy(dtype="float64")[valid], 0))
        usual = made.total(np.nan_to_num(log_amount), mine, day(created))
        with np.errstate(invalid="ignore", divide="ignore"):
            usual = np.where(prior > 0, usual / prior, np.nan)
        amount = np.log1p(np.maximum(frame[schema.amount].to_numpy(dtype="float64"), 0))
        out["amount_vs_client"] = np.exp(amount - usual)
    if schema.close:
        stage = ctx[schema.stage].to_numpy(dtype=object)
        won = np.isin(stage, list(schema.won))
        closed = won | np.isin(stage, list(schema.lost))
        decided = closed & ~np.isnat(closed_on)
        outcomes = _Before(theirs[decided], day(closed_on[decided]), lo, span)
        n_closed = outcomes.count(mine, day(at_days))
        n_won = outcomes.total(won[decided].astype("float64"), mine, day(at_days))
        out["client_closed_before"] = n_closed
        out["client_won_before"] = n_won
        with np.errstate(invalid="ignore", divide="ignore"):
            out["client_win_rate"] = np.where(n_closed > 0, n_won / n_closed, np.nan)
    return out


@dataclass(frozen=True)
class Snapshots:
    """Training rows: ``rows`` index the closed opportunities of a frame, each seen as of ``at``."""

    rows: np.ndarray      # positions in the frame
    at: np.ndarray        # datetime64[D], the moment each snapshot is as of
    y: np.ndarray         # 1 won, 0 lost (the opportunity's final outcome)


def snapshots(frame: pd.DataFrame, schema: DatasetSchema, ages: tuple[int, ...] = SNAPSHOT_AGES,
              before: np.datetime64 | None = None, limit: int | None = None, seed: int = 42) -> Snapshots:
    """Each closed opportunity at capture and at every age in ``ages`` while it was still open.

    The close date decides only *which* ages are used (those before it closed): moving it later, past a
    snapshot's age, changes none of that snapshot's inputs. ``before`` keeps only snapshots as of days
    before it (a backtest's cut). ``limit`` keeps a random sample of that many closed opportunities (a
    million of them would give millions of snapshots, far more than a forest needs).
    """
    closed, y = closed_target(frame, schema)
    pos = np.flatnonzero(closed.to_numpy())
    y_np = y.to_numpy()
    if limit is not None and len(pos) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(pos), size=limit, replace=False))
        pos, y_np = pos[keep], y_np[keep]
    if not schema.created:
        return Snapshots(pos, np.full(len(pos), np.datetime64("NaT"), dtype="datetime64[D]"), y_np)
    created = _days(frame[schema.created])[pos]
    if schema.close:
        duration = (_days(frame[schema.close])[pos] - created).astype("int64")
    else:
        duration = np.zeros(len(pos), dtype=np.int64)
    rows, at, label_ = [], [], []
    for age in ages:
        keep = (duration > age) | (age == 0)
        rows.append(pos[keep])
        at.append(created[keep] + np.timedelta64(age, "D"))
        label_.append(y_np[keep])
    snap = Snapshots(np.concatenate(rows), np.concatenate(at), np.concatenate(label_))
    if before is not None:
        # numpy accepts a datetime64 with a unit; its stubs have no overload for that pair.
        keep = snap.at < np.datetime64(before, "D")  # type: ignore[call-overload]
        snap = Snapshots(snap.rows[keep], snap.at[keep], snap.y[keep])
    return snap


def rewind(part: pd.DataFrame, at: np.ndarray, changes: pd.DataFrame | None, schema: DatasetSchema) -> pd.DataFrame:
    """``part``'s model fields as they stood on each row's day in ``at``, from the change history.

    ``changes`` has one row per changed field (``opportunity``, ``at``, ``field``, ``before``, ``after``,
    ``source``; see :func:`salespred_assets.mongo.history.changes_frame`). A field changed on or after a
    row's day takes the value it had before its first such change. Capture entries (initial values) and
    changes whose previous value is unknown are not rewound. Rows without history are returned as they are.
    """
    if changes is None or not len(changes) or not len(part):
        return part
    usable = changes[(changes["source"] != "capture") & changes["before"].notna()
                     & changes["field"].isin(schema.model_fields)]
    if not len(usable):
        return part
    out = part.copy()
    rows = pd.DataFrame({"opportunity": pd.Series(part[schema.id].to_numpy(dtype=object).astype(str), dtype=object),
                         "day": np.asarray(at, dtype="datetime64[D]").astype("datetime64[ns]"),
                         "row": np.arange(len(part))})
    days = pd.to_datetime(usable["at"], utc=True).dt.tz_localize(None).dt.floor("D").astype("datetime64[ns]")
    usable = usable.assign(day=days.to_numpy())
    for name, field_changes in usable.groupby("field", sort=False):
        right = field_changes[["opportunity", "day", "before"]].astype({"opportunity": object}).sort_values("day")
        matched = pd.merge_asof(rows.sort_values("day"), right, on="day", by="opportunity", direction="forward")
        hit = matched[matched["before"].notna()]
        if not len(hit):
            continue
        column = out.columns.get_loc(name)
        values = hit["before"]
        if name in schema.dates:
            values = pd.to_datetime(values).astype(out[name].dtype)
        elif name in schema.number_fields:
            values = pd.to_numeric(values, errors="coerce")
        out.iloc[hit["row"].to_numpy(), column] = values.to_numpy()
    return out


def closed_target(frame: pd.DataFrame, schema: DatasetSchema) -> tuple[pd.Series, pd.Series]:
    """(mask of closed rows, 1 for won / 0 for lost on those rows)."""
    stage = frame[schema.stage]
    won = stage.isin(schema.won)
    closed = won | stage.isin(schema.lost)
    return closed, won[closed].astype("int64")


def open_mask(frame: pd.DataFrame, schema: DatasetSchema) -> pd.Series:
    closed, _ = closed_target(frame, schema)
    return ~closed
