"""The data contract: which field plays which role in an opportunity export.

The default is the shape that the original capture app wrote into MongoDB (Spanish field names,
typos included). Any other CRM export is described by a YAML or TOML file with the same keys, e.g.::

    id: opportunity_id
    stage:
      field: status
      won: [Closed Won]
      lost: [Closed Lost]
      open: [Prospecting, Negotiation]   # optional
    categorical: [segment, product, country]
    numeric: [amount, discount]
    dates:                                 # optional
      created: created_date
      close: close_date
    amount: amount                         # optional: the value the pipeline is worth
    seller: owner_id                       # optional
    client: account_id                     # optional: enables client-history features
    final_at_close: [closed_value]         # optional: fields whose value is only final once closed
    while_open: [forecast_category]        # optional: fields that change while the opportunity is open

Whatever an export lacks is left out of the features, the reports and the cache.

**When each field is known.** A prediction is read while an opportunity is open, so every model input
must mean at that moment what it meant in training. Each field is one of:

- *known at capture* (the default): typed when the opportunity is created and not changed by closing it;
- *changing while open* (``while_open``): its current value is a fair input for an open opportunity,
  and training rebuilds its past values from the history collection where it has them;
- *final only at close* (``final_at_close``): its value on a closed opportunity is only known once it
  closed (the final duration, a closed value). It is stored, reported and shown, but never reaches the
  model. The close date (``dates.close``) is always final at close (on a closed row it is the actual
  close date); the model uses it only as the moment an outcome became known, never as an input.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from salespred_assets.errors import SalespredError

# Codes the original capture app offered; the synthetic generator and the app's dropdowns use them.
CODE_SETS: dict[str, list[str]] = {
    "unidad_negocio": [f"BU-{i:02d}" for i in range(11)],
    "tipos": [f"TY-{i:02d}" for i in range(6)],
    "regiones": [f"RE-{i:02d}" for i in range(4)],
    "territorios": [f"TE-{i:02d}" for i in range(16)],
    "industrias": [f"IN-{i:02d}" for i in range(65)],
    "lead_source": [f"LS-{i:02d}" for i in range(36)],
}
OPEN_STAGES = ["S1", "S2", "S3", "S4", "S5", "S6"]
# Columns salespred adds beside the input fields (in frames, SQL and the cache); an export's field may
# not take one of these names (compared case-insensitively, as SQL does).
RESERVED = {"_id", "opportunity_id", "outcome", "probability", "predicted_won", "score", "grade",
            "factors_for", "factors_against", "reasons", "model_version", "scored_at"}


@dataclass(frozen=True)
class DatasetSchema:
    id: str
    stage: str
    won: tuple[str, ...]
    lost: tuple[str, ...]
    open: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    created: str | None = None
    close: str | None = None
    amount: str | None = None
    seller: str | None = None
    client: str | None = None
    # Non-negative numeric fields (amounts); fields bounded to [0, 1] (fractions).
    non_negative: tuple[str, ...] = ()
    fractions: tuple[str, ...] = ()
    # When fields are known (see the module doc): final only at close, or changing while open.
    final_at_close: tuple[str, ...] = ()
    while_open: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @cached_property  # read in every loop over fields; the schema is frozen
    def dates(self) -> tuple[str, ...]:
        return tuple(f for f in (self.created, self.close) if f)

    @cached_property
    def stages(self) -> tuple[str, ...]:
        return self.won + self.lost + self.open

    @cached_property
    def fields(self) -> list[str]:
        """Every input field, in a stable order, without duplicates."""
        ordered = [self.id, self.client, self.stage, self.seller, *self.categorical, *self.numeric,
                   self.amount, *self.dates]
        seen: list[str] = []
        for name in ordered:
            if name and name not in seen:
                seen.append(name)
        return seen

    @cached_property
    def late_fields(self) -> tuple[str, ...]:
        """Fields only final at close: the declared ones and the close date."""
        return tuple(dict.fromkeys([*self.final_at_close, *([self.close] if self.close else [])]))

    @cached_property
    def model_fields(self) -> tuple[str, ...]:
        """Fields that may feed the model as they are: known at capture or changing while open."""
        late = set(self.late_fields)
        return tuple(f for f in self.fields if f not in late and f not in (self.id, self.stage, self.client))

    def timing(self, name: str) -> str:
        """'capture', 'while_open' or 'at_close': when ``name``'s value is known."""
        if name in self.late_fields:
            return "at_close"
        if name in self.while_open or name == self.stage:
            return "while_open"
        return "capture"

    @cached_property
    def text_fields(self) -> list[str]:
        return [f for f in self.fields if f not in self.numeric and f != self.amount and f not in self.dates]

    @cached_property
    def number_fields(self) -> list[str]:
        return [f for f in self.fields if f in self.numeric or f == self.amount]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return data

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "schema") -> DatasetSchema:
        def need(key: str) -> Any:
            if key not in raw or raw[key] in (None, "", []):
                raise SalespredError(f"{source}: the key '{key}' is required")
            return raw[key]

        stage = need("stage")
        if isinstance(stage, dict):
            stage_field = stage.get("field")
            won, lost, open_ = stage.get("won"), stage.get("lost"), stage.get("open", [])
        else:  # flat form, as to_dict() writes it
            stage_field, won, lost, open_ = stage, raw.get("won"), raw.get("lost"), raw.get("open", [])
        if not stage_field or not won or not lost:
            raise SalespredError(f"{source}: 'stage' needs a field and at least one won and one lost value")
        dates = raw.get("dates") or {}
        known = {"id", "stage", "won", "lost", "open", "categorical", "numeric", "dates", "created", "close",
                 "amount", "seller", "client", "non_negative", "fractions", "final_at_close", "while_open"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SalespredError(f"{source}: unknown keys {unknown}; allowed: {sorted(known)}")
        schema = cls(
            id=str(need("id")),
            stage=str(stage_field),
            won=tuple(map(str, _as_list(won))),
            lost=tuple(map(str, _as_list(lost))),
            open=tuple(map(str, _as_list(open_))),
            categorical=tuple(map(str, _as_list(raw.get("categorical", [])))),
            numeric=tuple(map(str, _as_list(raw.get("numeric", [])))),
            created=dates.get("created") or raw.get("created"),
            close=dates.get("close") or raw.get("close"),
            amount=raw.get("amount"),
            seller=raw.get("seller"),
            client=raw.get("client"),
            non_negative=tuple(_as_list(raw.get("non_negative", []))),
            fractions=tuple(_as_list(raw.get("fractions", []))),
            final_at_close=tuple(map(str, _as_list(raw.get("final_at_close", [])))),
            while_open=tuple(map(str, _as_list(raw.get("while_open", [])))),
        )
        overlap = set(schema.won) & set(schema.lost) or set(schema.open) & set(schema.won + schema.lost)
        if overlap:
            raise SalespredError(f"{source}: stage values {sorted(overlap)} are listed in more than one group")
        clash = sorted(f for f in schema.fields if f.lower() in RESERVED)
        if clash:
            raise SalespredError(f"{source}: the fields {clash} have names salespred uses for its own columns "
                                 f"({sorted(RESERVED)}); rename them in the export, or leave them out of the schema")
        _check_timing(schema, source)
        if not schema.categorical and not schema.numeric and not schema.dates:
            raise SalespredError(f"{source}: declare at least one categorical, numeric or date feature")
        return schema


def _check_timing(schema: DatasetSchema, source: str) -> None:
    """``final_at_close`` and ``while_open`` name declared fields, apart from those every prediction needs."""
    for key in ("final_at_close", "while_open"):
        listed = getattr(schema, key)
        unknown = sorted(set(listed) - set(schema.fields))
        if unknown:
            raise SalespredError(f"{source}: '{key}' lists {unknown}, which are not fields of the schema; "
                                 f"declare them under categorical, numeric, amount or dates first")
    both = sorted(set(schema.final_at_close) & set(schema.while_open))
    if both:
        raise SalespredError(f"{source}: {both} are listed both as final_at_close and as while_open; pick one")
    needed = {"id": schema.id, "stage": schema.stage, "dates.created": schema.created, "client": schema.client,
              "seller": schema.seller}
    late = sorted(f"{f} ({k})" for k, f in needed.items() if f and f in schema.final_at_close)
    if late:
        raise SalespredError(f"{source}: {late} cannot be final_at_close: every prediction needs them at capture")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


DEFAULT_SCHEMA = DatasetSchema(
    id="numero_opportunidad",
    stage="etapas",
    won=("Won",),
    lost=("Lost",),
    open=tuple(OPEN_STAGES),
    categorical=("unidad_negocio", "tipos", "regiones", "territorios", "industrias", "lead_source"),
    numeric=("acv", "tcv", "margen_ganancia", "edad_oferta"),
    created="fecha_creacion_oportunidad",
    close="fecha_cierre_oportunidad",
    amount="tcv",
    seller="numero_vendedor",
    client="cliente",
    non_negative=("acv", "tcv", "edad_oferta"),
    fractions=("margen_ganancia",),
    # On a closed opportunity edad_oferta is its final duration (close minus creation): known only at close.
    final_at_close=("edad_oferta",),
)


def load_schema(path: str | Path | None) -> DatasetSchema:
    """Read a schema file (YAML or TOML); ``None`` gives the default (the seed's shape)."""
    if path is None:
        return DEFAULT_SCHEMA
    p = Path(path)
    if not p.exists():
        raise SalespredError(f"schema file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text) if p.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if p.suffix == ".toml" else "YAML"
        raise SalespredError(f"schema file {p} is not valid {kind}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SalespredError(f"schema file {p} must hold a mapping of keys")
    return DatasetSchema.from_dict(raw, source=str(p))
