"""A prediction's reasons as sentences, in the reader's language.

The stored reasons (:mod:`salespred_assets.core.reasons`: concepts, their effects and their inputs, no
text) become one sentence each, with the effect in points: "El cliente ganó 7 de sus 9 oportunidades
cerradas (+12 puntos)." Codes are shown by name through ``name(kind, code, lang)`` (the code catalogs;
a code without a name shows as itself). Pure: no web framework, no database.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from babel import Locale, dates as babel_dates

from salespred_assets import i18n
from salespred_assets.core import reasons as core
from salespred_assets.core.features import AGE
from salespred_assets.mongo import catalogs

Namer = Callable[[str, str, str], str]   # (kind, code, lang) -> display name
# A deal this many times the client's usual (or this many times smaller) is "larger" ("smaller").
RATIO_NOTABLE = 1.5


def code_itself(kind: str, code: str, lang: str) -> str:
    """The default namer: a code shows as itself."""
    return code


def render(stored: str | Sequence[Any] | None, lang: str, name: Namer = code_itself) -> dict[str, list[dict[str, Any]]]:
    """``{"reasons_for": [...], "reasons_against": [...]}`` from the stored reasons, each reason
    ``{concept, effect, points, sentence, text, features: [{feature, value, effect}]}``."""
    lang = i18n.pick(lang)
    fors, againsts = core.decode(stored)
    return {"reasons_for": [reason(r, lang, name) for r in fors],
            "reasons_against": [reason(r, lang, name) for r in againsts]}


def reason(r: core.Reason, lang: str, name: Namer = code_itself) -> dict[str, Any]:
    said = sentence(r, lang, name)
    points = points_of(lang, r.effect)
    return {"concept": r.concept, "effect": r.effect, "points": points, "sentence": said,
            "text": i18n.translate(lang, "reason.with_points", sentence=said.rstrip("."), points=points),
            "features": r.features}


def sentence(r: core.Reason, lang: str, name: Namer = code_itself) -> str:
    """One sentence (ending with a period) for a reason."""
    kind, field = core.split_concept(r.concept)
    writer = _WRITERS.get(kind)
    said = writer(r, lang) if writer else None
    if said:
        return said
    if field is None:  # a fixed concept whose inputs are missing: say which inputs, by name
        field = r.features[0]["feature"] if r.features else r.concept
    value = r.value(field) if r.features else None
    return _field(lang, field, value, kind, name)


# ---- the concepts -------------------------------------------------------------------------------
def _track_record(r: core.Reason, lang: str) -> str | None:
    closed, won = _count(r.value("client_closed_before")), _count(r.value("client_won_before"))
    if closed is None or won is None:
        rate = _number(r.value("client_win_rate"))
        return None if rate is None else i18n.translate(lang, "reason.track_record.rate", rate=_percent(lang, rate))
    if closed == 0:
        return i18n.translate(lang, "reason.track_record.none")
    if closed == 1:
        return i18n.translate(lang, "reason.track_record.only_won" if won else "reason.track_record.only_lost")
    if won == closed:
        return i18n.translate(lang, "reason.track_record.all_won", closed=_whole(lang, closed))
    if won == 0:
        return i18n.translate(lang, "reason.track_record.all_lost", closed=_whole(lang, closed))
    return i18n.translate(lang, "reason.track_record.some", won=_whole(lang, won),
                          closed=_whole(lang, closed))


def _relationship(r: core.Reason, lang: str) -> str | None:
    prior = _count(r.value("client_prior_opportunities"))
    if prior is None:
        return None
    if prior == 0:
        return i18n.translate(lang, "reason.relationship.new")
    tenure = _count(r.value("client_tenure_days"))
    key = f"reason.relationship.known.{_plural(lang, prior)}"
    if tenure is None or tenure <= 0:
        key = f"reason.relationship.prior.{_plural(lang, prior)}"
    return i18n.translate(lang, key, n=_whole(lang, prior), tenure=duration(lang, tenure or 0))


def _deal_size(r: core.Reason, lang: str) -> str | None:
    amounts = [v for f in r.features if f["feature"] != "amount_vs_client" and (v := _number(f["value"])) is not None]
    ratio = _number(r.value("amount_vs_client"))
    amount = _compact(lang, max(amounts)) if amounts else None
    suffix = "" if amount is None else ".amount"
    if ratio is None or ratio <= 0:
        return None if amount is None else i18n.translate(lang, "reason.deal_size.plain", amount=amount)
    if ratio >= RATIO_NOTABLE:
        return i18n.translate(lang, "reason.deal_size.larger" + suffix, ratio=times(lang, ratio), amount=amount)
    if ratio <= 1 / RATIO_NOTABLE:
        return i18n.translate(lang, "reason.deal_size.smaller" + suffix, ratio=times(lang, 1 / ratio), amount=amount)
    return i18n.translate(lang, "reason.deal_size.usual" + suffix, amount=amount)


def _timing(r: core.Reason, lang: str) -> str | None:
    age = _count(r.value(AGE))
    if age is None or age == 0:
        month = _count(r.value("created_month"))
        if month is None or not 1 <= month <= 12:
            return None if age is None else i18n.translate(lang, "reason.timing.new")
        return i18n.translate(lang, "reason.timing.month", month=month_name(lang, month))
    opened = i18n.translate(lang, f"reason.timing.open.{_plural(lang, age)}", n=_whole(lang, age))
    typical = _count(r.context.get("won_days"))
    if not typical:
        return i18n.translate(lang, "reason.timing.sentence", open=opened)
    usually = i18n.translate(lang, f"reason.timing.typical.{_plural(lang, typical)}", n=_whole(lang, typical))
    return i18n.translate(lang, "reason.timing.sentence_typical", open=opened, typical=usually)


_WRITERS: dict[str, Callable[[core.Reason, str], str | None]] = {
    core.TRACK_RECORD: _track_record, core.RELATIONSHIP: _relationship, core.DEAL_SIZE: _deal_size,
    core.TIMING: _timing,
}


def _field(lang: str, field: str, value: Any, kind: str, name: Namer) -> str:
    """"<label>: <value>." for one field (a code by its name)."""
    shown = label(lang, field)
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or value == "":
        return i18n.translate(lang, "reason.field_missing", label=shown)
    if isinstance(value, str) or kind == core.CATEGORY:
        # A category is a code even when an export wrote it as a number (industria 1001, read as 1001.0).
        code = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        text = name(field, code, lang)
    elif kind == core.FRACTION:
        text = _percent(lang, value)
    else:
        text = i18n.value(lang, value)
    return i18n.translate(lang, "reason.field", label=shown, value=text)


# ---- words ---------------------------------------------------------------------------------------
def label(lang: str, field: str) -> str:
    """A field's name in a sentence: the reasons' own label, else the form's, else the field as it is."""
    key = f"reason.label.{field}"
    return i18n.translate(lang, key) if i18n.has(lang, key) else i18n.feature_label(lang, field, field)


def points_of(lang: str, effect: float) -> str:
    """An effect in whole points of probability, signed, with the plural the number takes ("+1 punto",
    "-3 puntos", with a minus sign): what :func:`i18n.points` gives, with its plural."""
    n = round(abs(effect) * 100)
    return _points(lang, n if effect > 0 else -n)


@functools.lru_cache(maxsize=1024)  # a few hundred values per language; the fast lane writes six per answer
def _points(lang: str, signed: int) -> str:
    n = abs(signed)
    sign = "+" if signed > 0 else "\u2212" if signed < 0 else "\u00b1"  # plus, minus sign, plus-minus
    return i18n.translate(lang, f"reason.points.{_plural(lang, n)}", sign=sign, n=i18n.number(lang, n))


@functools.lru_cache(maxsize=4096)
def _plural(lang: str, n: int) -> str:
    """The CLDR plural category of ``n`` in ``lang`` ("one" or "other" in Spanish and English)."""
    return "one" if Locale.parse(lang).plural_form(n) == "one" else "other"


@functools.lru_cache(maxsize=8192)
def _whole(lang: str, n: int) -> str:
    """A count in the locale (1.200 / 1,200); counts repeat, so each is formatted once."""
    return i18n.number(lang, n)


@functools.lru_cache(maxsize=8192)
def duration(lang: str, days: int) -> str:
    """A span of days in words, rounded to the largest unit: "3 años", "7 meses", "5 días"."""
    return babel_dates.format_timedelta(dt.timedelta(days=days), granularity="day", threshold=1.0,
                                        locale=Locale.parse(lang))


def times(lang: str, ratio: float) -> str:
    """A ratio with one decimal below 10 ("2,5"), whole above ("12"), and no ",0"."""
    shown = round(ratio, 1) if ratio < 10 and round(ratio, 1) != round(ratio) else float(round(ratio))
    return _times(lang, shown)


# Formatting through Babel costs tens of microseconds a number, more than the rest of an answer: the
# values are rounded as they will be shown, and each is formatted once.
@functools.lru_cache(maxsize=4096)
def _times(lang: str, shown: float) -> str:
    return i18n.number(lang, shown, 0 if shown.is_integer() else 1)


def _compact(lang: str, amount: float) -> str:
    # Five significant digits: the most a compact amount shows ("123,46 M").
    return _compact_of(lang, float(f"{amount:.5g}") if abs(amount) >= 10_000 else float(round(amount)))


@functools.lru_cache(maxsize=8192)
def _compact_of(lang: str, amount: float) -> str:
    return i18n.compact(lang, amount)


def _percent(lang: str, fraction: float) -> str:
    return _percent_of(lang, round(float(fraction), 4))


@functools.lru_cache(maxsize=4096)
def _percent_of(lang: str, fraction: float) -> str:
    return i18n.percent(lang, fraction)


@functools.lru_cache(maxsize=64)
def month_name(lang: str, month: int) -> str:
    return str(babel_dates.get_month_names("wide", locale=Locale.parse(lang))[month])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    x = _number(value)
    return None if x is None else round(x)


def for_prediction(prediction: Mapping[str, Any] | None, lang: str, name: Namer = code_itself) -> dict[str, Any] | None:
    """A prediction as answered: its stored ``reasons`` replaced by sentences (``reasons_for``/``reasons_against``)."""
    if prediction is None:
        return None
    out = {k: v for k, v in prediction.items() if k != "reasons"}
    out.update(render(prediction.get("reasons"), lang, name))
    return out


def namer(ctx: Any, held_only: bool = False) -> Namer | None:
    """The app's namer: the code catalogs' and sellers' names (``name(kind, code, lang)``). The one place
    that wires names into the reasons (pages, API and fast lane call it). The same object while the
    catalogs do not change, so sentences cached by it stay valid.

    ``held_only`` (on the event loop): None when this process does not hold the catalogs fresh, instead of
    reading them. Otherwise (in a worker thread) at most one read per ``catalogs.TTL_S`` seconds, refreshed
    ahead while they are in use; a MongoDB error is raised.
    """
    held = catalogs.cached(ctx.mongo) if held_only else catalogs.names(ctx.mongo)
    return held.display if held is not None else None
