"""Request and response bodies, and the field-level messages for bad input.

Every request model forbids unknown fields, so ``$``-prefixed or dotted keys and operator objects
(``{"acv": {"$gt": 0}}``) never reach MongoDB: they fail validation as unknown fields or wrong types.
The API validates JSON strictly (``"12"`` is not a number); the pages' forms, whose values are all
text, are validated leniently by the same model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.json_schema import JsonDict
from pydantic_core import PydanticCustomError

from salespred_assets.core.schema import CODE_SETS, DEFAULT_SCHEMA
from salespred_assets.i18n import translate

CLIENT_PATTERN = r"^CL-[0-9]{1,12}$"
MAX_AMOUNT = 1e12          # USD; the reference data's largest TCV is 4.9e8
MAX_YEARS = 50
MAX_CLOSE_YEARS = 10       # a close date further out than this is a typo
CODE_FIELDS = tuple(CODE_SETS)


def today() -> dt.date:
    return dt.date.today()


def _code(name: str, label: str) -> Any:
    """A code field: its OpenAPI enum is the catalog the validator checks (``CODE_SETS``), one source."""
    codes = CODE_SETS[name]
    return Field(max_length=8, description=f"{label}, one of {codes[0]} .. {codes[-1]}",
                 json_schema_extra={"enum": list(codes)})


CLOSE_DATE_RULE = (f"Expected close date, YYYY-MM-DD: today (the server's date when the request arrives) or later, "
                   f"and at most {MAX_CLOSE_YEARS} years ahead. JSON Schema cannot say \"today\": the bounds are in "
                   f"`x-earliest` and `x-latest`")
CLOSE_DATE_BOUNDS: JsonDict = {"x-earliest": "today", "x-latest": f"today + {MAX_CLOSE_YEARS} years"}


def check_close_date(value: dt.date) -> dt.date:
    """An expected close date: today or later, and at most MAX_CLOSE_YEARS ahead (further is a typo)."""
    now = today()
    if value < now:
        raise PydanticCustomError("date_past", "must be today ({today}) or later", {"today": now.isoformat()})
    latest = now.replace(year=now.year + MAX_CLOSE_YEARS) if not (now.month == 2 and now.day == 29) \
        else now.replace(year=now.year + MAX_CLOSE_YEARS, day=28)
    if value > latest:
        raise PydanticCustomError("date_too_far", "must be {latest} at the latest", {"latest": latest.isoformat()})
    return value


class OpportunityIn(BaseModel):
    """An opportunity as a seller captures it. The server adds the number, stage, seller and dates."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"example": {
        "cliente": "CL-00042", "unidad_negocio": "BU-04", "tipos": "TY-00", "regiones": "RE-02",
        "territorios": "TE-09", "industrias": "IN-23", "lead_source": "LS-06", "acv": 48000.0,
        "contract_years": 2, "margen_ganancia": 0.18, "fecha_cierre_oportunidad": "2030-06-30"},
        # TCV is required unless contract_years gives it (TCV = ACV x years). That TCV >= ACV is a rule
        # between two fields, which JSON Schema cannot state: the field descriptions say it.
        "anyOf": [{"required": ["tcv"], "properties": {"tcv": {"type": "number"}}},
                  {"required": ["contract_years"], "properties": {"contract_years": {"type": "integer"}}}]})

    cliente: str = Field(max_length=16, pattern=CLIENT_PATTERN,
                         description="Client code: `CL-` and digits; stored zero-padded to 5 digits "
                                     "(CL-42 -> CL-00042)")
    unidad_negocio: str = _code("unidad_negocio", "Business unit")
    tipos: str = _code("tipos", "Opportunity type")
    regiones: str = _code("regiones", "Region")
    territorios: str = _code("territorios", "Territory")
    industrias: str = _code("industrias", "Client industry")
    lead_source: str = _code("lead_source", "Lead source")
    acv: float = Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False, description="Annual contract value, USD")
    contract_years: int | None = Field(
        default=None, ge=1, le=MAX_YEARS,
        description="Contract years (the capture form's 'Años'); only used to compute TCV = ACV x years when "
                    "`tcv` is omitted. Not stored.")
    tcv: float | None = Field(default=None, ge=0, le=MAX_AMOUNT, allow_inf_nan=False, validate_default=True,
                              description="Total contract value, USD; at least ACV. Omit it to use ACV x "
                                          "contract_years")
    margen_ganancia: float = Field(ge=0, le=1, allow_inf_nan=False, description="Profit margin, a fraction in [0, 1]")
    fecha_cierre_oportunidad: dt.date = Field(description=CLOSE_DATE_RULE, json_schema_extra=CLOSE_DATE_BOUNDS)

    @field_validator("contract_years", mode="before")
    @classmethod
    def _whole_years(cls, value: Any) -> Any:
        # JSON Schema's "integer" includes 2.0; strict validation alone would refuse it.
        return int(value) if isinstance(value, float) and value.is_integer() else value

    @field_validator("cliente")
    @classmethod
    def _pad_client(cls, value: str) -> str:
        return f"CL-{int(value[3:]):05d}"

    @field_validator(*CODE_FIELDS)
    @classmethod
    def _known_code(cls, value: str, info: ValidationInfo) -> str:
        codes = CODE_SETS[str(info.field_name)]
        if value not in codes:
            raise PydanticCustomError("code_unknown", "unknown code; choose one of {first} .. {last}",
                                      {"first": codes[0], "last": codes[-1]})
        return value

    @field_validator("tcv")
    @classmethod
    def _tcv(cls, value: float | None, info: ValidationInfo) -> float | None:
        acv, years = info.data.get("acv"), info.data.get("contract_years")
        if value is None:
            if acv is not None and years is not None:
                return float(acv) * years
            if "acv" in info.data and "contract_years" in info.data:  # both valid, years not given
                raise PydanticCustomError("tcv_missing",
                                          "required (or give contract_years to compute it as ACV x years)")
            return None  # the error on acv or contract_years says what to fix
        if acv is not None and value < acv:
            raise PydanticCustomError(
                "tcv_below_acv", "TCV (the whole contract) must be greater than or equal to ACV (one year)")
        return value

    @field_validator("fecha_cierre_oportunidad")
    @classmethod
    def _close_date(cls, value: dt.date) -> dt.date:
        return check_close_date(value)


class OpportunityChange(BaseModel):
    """A change to an open opportunity: only the fields given change (none: nothing changes)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True,
                              json_schema_extra={
                                  "example": {"etapas": "S3", "acv": 52000.0},
                                  # A closing change takes today as its close date: it cannot carry one.
                                  "not": {"required": ["etapas", "fecha_cierre_oportunidad"], "properties": {
                                      "etapas": {"enum": [*DEFAULT_SCHEMA.won, *DEFAULT_SCHEMA.lost]},
                                      "fecha_cierre_oportunidad": {"type": "string"}}}})

    etapas: str | None = Field(default=None, max_length=8,
                               json_schema_extra={"enum": [*DEFAULT_SCHEMA.open, *DEFAULT_SCHEMA.won,
                                                           *DEFAULT_SCHEMA.lost, None]},
                               description="Stage: S1 .. S6 (open), or Won / Lost, which close the opportunity: its "
                                           "close date becomes today and `edad_oferta` its final duration in days")
    acv: float | None = Field(default=None, ge=0, le=MAX_AMOUNT, allow_inf_nan=False,
                              description="Annual contract value, USD")
    tcv: float | None = Field(default=None, ge=0, le=MAX_AMOUNT, allow_inf_nan=False,
                              description="Total contract value, USD; at least ACV (the new one, or the stored one)")
    margen_ganancia: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False,
                                          description="Profit margin, a fraction in [0, 1]")
    fecha_cierre_oportunidad: dt.date | None = Field(
        default=None, json_schema_extra=CLOSE_DATE_BOUNDS,
        description="Expected close date of an open opportunity, YYYY-MM-DD, today or later (see `x-earliest`); "
                    "the date typed at capture stays in `fecha_cierre_planificada`")

    @field_validator("etapas")
    @classmethod
    def _known_stage(cls, value: str | None) -> str | None:
        if value is not None and value not in DEFAULT_SCHEMA.stages:
            raise PydanticCustomError("stage_unknown", "unknown stage; choose one of {stages}",
                                      {"stages": ", ".join(DEFAULT_SCHEMA.open + DEFAULT_SCHEMA.won
                                                           + DEFAULT_SCHEMA.lost)})
        return value

    @field_validator("tcv")
    @classmethod
    def _tcv(cls, value: float | None, info: ValidationInfo) -> float | None:
        acv = info.data.get("acv")  # when only one amount is given, the app checks it against the stored one
        if value is not None and acv is not None and value < acv:
            raise PydanticCustomError(
                "tcv_below_acv", "TCV (the whole contract) must be greater than or equal to ACV (one year)")
        return value

    @field_validator("fecha_cierre_oportunidad")
    @classmethod
    def _close_date(cls, value: dt.date | None, info: ValidationInfo) -> dt.date | None:
        if value is not None and info.data.get("etapas") in DEFAULT_SCHEMA.won + DEFAULT_SCHEMA.lost:
            raise PydanticCustomError("close_date_on_close",
                                      "a closing opportunity's close date is the day it closes (set by the server)")
        return None if value is None else check_close_date(value)

    def given(self) -> dict[str, Any]:
        """The fields to change, as the document stores them (dates as YYYY-MM-DD)."""
        values = self.model_dump(exclude_none=True)
        if "fecha_cierre_oportunidad" in values:
            values["fecha_cierre_oportunidad"] = values["fecha_cierre_oportunidad"].isoformat()
        return {k: float(v) if isinstance(v, (int, float)) else v for k, v in values.items()}


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class SellerOut(BaseModel):
    numero_vendedor: str
    username: str
    first_name: str
    last_name: str
    title: str
    role: str = Field(description="`manager` (sees the team) or `seller` (sees own opportunities)")
    team: list[str] = Field(description="Seller numbers whose opportunities this seller may see")


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the token expires")
    seller: SellerOut


class Factor(BaseModel):
    feature: str
    label: str
    value: Any = None
    effect: float = Field(description="Change in the forest's win probability this feature caused")


class ReasonFeature(BaseModel):
    feature: str = Field(description="A model input, as in `factors_for` (stable for integrations)")
    value: Any = None
    effect: float = Field(description="Its contribution to the forest's win probability")


class Reason(BaseModel):
    concept: str = Field(description="What the reason is about: `track_record`, `relationship`, `deal_size`, "
                                     "`timing`, or one field as `category:<field>`, `fraction:<field>`, "
                                     "`number:<field>` (stable for integrations)")
    effect: float = Field(description="The sum of its inputs' effects: the change in the forest's win probability")
    points: str = Field(description="The effect in points of probability, for the reader (`+12 puntos`)")
    sentence: str = Field(description="The reason in one sentence, in the response's language (`Content-Language`)")
    text: str = Field(description="The sentence with its effect in points")
    features: list[ReasonFeature] = Field(description="The model inputs it groups, each with its own effect")


class Prediction(BaseModel):
    outcome: Literal["open", "won", "lost"] | None = Field(
        None, description="`open`, or the final outcome of a closed opportunity")
    prediction_basis: Literal["model", "outcome"] | None = Field(
        None, description="`model`: an open opportunity, predicted; `outcome`: a closed one, whose fields below hold "
                          "its outcome (`predicted_won` says whether it was won; probability, score and grade are "
                          "null)")
    probability: float | None = Field(description="Calibrated probability of winning, 0..1 (null once closed)")
    predicted_won: bool = Field(description="True: likely won; False: likely lost (the model's threshold); "
                                            "for a closed opportunity, whether it was won")
    score: int | None = Field(description="1..99 (null once closed)")
    grade: str | None = Field(description="A (>= 0.75), B (>= 0.50), C (>= 0.25) or D (null once closed)")
    factors_for: list[Factor] = Field([], description="The 3 inputs that raised the probability most")
    factors_against: list[Factor] = Field([], description="The 3 inputs that lowered it most")
    reasons_for: list[Reason] = Field([], description="Up to 3 reasons for, each a concept (its inputs grouped, "
                                                      "over all inputs), strongest first, as sentences")
    reasons_against: list[Reason] = Field([], description="Up to 3 reasons against, strongest first")
    model_version: str
    scored_at: str | None = None
    seller: str | None = Field(None, description="The seller who owns the opportunity (`numero_vendedor`)")


class PredictionOut(BaseModel):
    numero_opportunidad: str
    source: str = Field(description="`cache` (Redis) or `model` (scored now and written to the cache)")
    prediction: Prediction


_PREDICTION_ERROR = ("Why there is no prediction, in English, stable for integrations: `no model has been trained "
                     "yet`, or the error's type and first line")
_PREDICTION_MESSAGE = ("The same for a person, in the language of `?lang=` or `Accept-Language` (with "
                       "`prediction_error`)")


class CaptureOut(BaseModel):
    numero_opportunidad: str
    opportunity: dict[str, Any] = Field(description="The document as stored in MongoDB (without `_id`)")
    prediction: Prediction | None
    prediction_source: str = Field(description="`model`, or `unavailable` (then see `prediction_error`)")
    prediction_error: str | None = Field(None, description=_PREDICTION_ERROR)
    prediction_message: str | None = Field(None, description=_PREDICTION_MESSAGE)


class ChangeOut(BaseModel):
    numero_opportunidad: str
    opportunity: dict[str, Any] = Field(
        description="The document as stored in MongoDB after the change (without `_id`)")
    changes: dict[str, dict[str, Any]] = Field(
        description="What changed, `{field: {\"from\": old, \"to\": new}}` (empty: nothing did, nothing was written)")
    history_id: str | None = Field(None, description="The entry in the opportunity history (None: nothing changed)")
    prediction: Prediction | None
    prediction_source: str = Field(description="`model` (rescored now and cached), `unavailable` (then see "
                                               "`prediction_error`), or `unchanged` (nothing changed)")
    prediction_error: str | None = Field(None, description=_PREDICTION_ERROR)
    prediction_message: str | None = Field(None, description=_PREDICTION_MESSAGE)


class OpportunityList(BaseModel):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


class ErrorOut(BaseModel):
    detail: str = Field(description="What failed, in English: stable wording for integrations and logs")
    message: str = Field(description="The same news for a person, in the language of `?lang=` or "
                                     "`Accept-Language` (Spanish by default)")
    errors: dict[str, str] | None = Field(default=None, description="A message for each field that failed")


# ---- messages -----------------------------------------------------------------------------------
_TYPES = {
    "missing": "err.missing",
    "string_type": "err.string_type",
    "float_type": "err.float_type", "float_parsing": "err.float_type",
    "int_type": "err.int_type", "int_parsing": "err.int_type", "int_from_float": "err.int_type",
    "finite_number": "err.finite_number",
    "greater_than_equal": "err.ge", "greater_than": "err.ge",
    "less_than_equal": "err.le", "less_than": "err.le",
    "string_too_long": "err.too_long", "string_too_short": "err.missing",
    "date_type": "err.date_type", "date_parsing": "err.date_type", "date_from_datetime_parsing": "err.date_type",
    "date_from_datetime_inexact": "err.date_type",
    "string_pattern_mismatch": "err.client_pattern",
    "code_unknown": "err.code_unknown", "date_past": "err.date_past", "date_too_far": "err.date_too_far",
    "tcv_below_acv": "err.tcv_below_acv", "tcv_missing": "err.tcv_missing",
    "stage_unknown": "err.stage_unknown", "close_date_on_close": "err.close_date_on_close",
    "model_type": "err.body", "model_attributes_type": "err.body", "dict_type": "err.body",
    "json_invalid": "err.json_invalid", "json_type": "err.body",
    "idempotency_key_reused": "err.idempotency_key_reused",
}
_LOCATIONS = ("body", "query", "path", "header", "cookie")


def field_errors(errors: Sequence[Mapping[str, Any]], lang: str = "en") -> dict[str, str]:
    """One message per field (several joined) from pydantic's errors, in ``lang``."""
    out: dict[str, list[str]] = {}
    for err in errors:
        loc = [str(p) for p in err.get("loc") or ()]
        if len(loc) > 1 and loc[0] in _LOCATIONS:
            loc = loc[1:]
        field = ".".join(loc)[:64] or "body"
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            name = loc[-1] if loc else ""
            key = "err.operator_key" if name.startswith("$") or "." in name else "err.extra"
        else:
            key = _TYPES.get(kind, "")
        ctx = {k: _plain(v) for k, v in (err.get("ctx") or {}).items() if isinstance(v, (str, int, float))}
        if key:
            message = translate(lang, key, **ctx)
        else:
            message = str(err.get("msg") or "invalid value") if lang == "en" else translate(lang, "err.other")
        out.setdefault(field, [])
        if message not in out[field]:
            out[field].append(message)
    return {k: " ".join(v) for k, v in out.items()}


def _plain(value: str | float) -> str | int | float:
    """1.0 -> 1 and 1e12 -> 1000000000000 in messages."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
