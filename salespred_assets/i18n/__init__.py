"""What people read, in Spanish (the default: the sellers' language in the original app) or English.

One gettext message catalog (``locales/<lang>/LC_MESSAGES/messages.po``, compiled to ``.mo`` by
``make locale``, which ``make install`` runs) serves the pages, the dashboard, the API's error texts and
the CLI messages that reach sellers. Message ids are stable keys (``detail.title``); both languages
translate every key, so an integration never sees a key. Numbers, money, percentages and dates are
formatted by Babel for the locale.

The pages take the language from the ``lang`` cookie that the language switch sets; the API from
``?lang=``, then ``Accept-Language``.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from pathlib import Path
from typing import Any, Protocol

from babel import Locale, UnknownLocaleError, dates as babel_dates, numbers as babel_numbers
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

from salespred_assets.errors import SalespredError

DEFAULT = "es"
LANGUAGES = {"es": "Español", "en": "English"}
COOKIE = "lang"
DOMAIN = "messages"
MISSING = "\u2013"  # an en dash, shown for a missing value
LOCALES_DIR = Path(__file__).parent / "locales"


def catalog_path(lang: str, suffix: str = ".po") -> Path:
    return LOCALES_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}{suffix}"


def _po_messages(po: Path) -> set[tuple[str, str]]:
    """What ``pybabel compile`` writes to the .mo: the translated, non-fuzzy messages."""
    with po.open("rb") as fp:
        catalog = read_po(fp)
    return {(m.id, m.string) for m in catalog if m.id and m.string and not m.fuzzy
            and isinstance(m.id, str) and isinstance(m.string, str)}


def load(lang: str, locales_dir: Path | None = None) -> NullTranslations:
    """The compiled catalog of ``lang``, refused unless it holds exactly what its ``.po`` says.

    Judged by content, not by modification times: an installed wheel does not keep them, so the ``.po`` can
    look newer than a matching ``.mo`` (the Docker image)."""
    base = LOCALES_DIR if locales_dir is None else locales_dir
    po = base / lang / "LC_MESSAGES" / f"{DOMAIN}.po"
    mo = po.with_suffix(".mo")
    stale = SalespredError(f"the {lang} message catalog {mo} is missing or does not match {po.name}: "
                           "run `make locale` (or `pybabel compile -d salespred_assets/i18n/locales`)")
    if not mo.exists():
        raise stale
    with mo.open("rb") as fp:
        translations = Translations(fp, domain=DOMAIN)
    compiled = {(k, v) for k, v in translations._catalog.items() if k and isinstance(k, str)}
    if compiled != _po_messages(po):
        raise stale
    return translations


@functools.cache
def _translations(lang: str) -> NullTranslations:
    return load(lang)


def check() -> None:
    """Load every language's catalog now (the image's build runs this), so that a stale one fails early."""
    for lang in LANGUAGES:
        _translations(lang)


def pick(value: str | None) -> str:
    """A supported language code, or the default."""
    return value if value in LANGUAGES else DEFAULT


def negotiate(query: str | None = None, accept_language: str | None = None) -> str:
    """The API's language: ``?lang=`` if supported, then the best of ``Accept-Language``, then the default."""
    code = (query or "").strip().lower().replace("_", "-").split("-")[0]
    if code in LANGUAGES:
        return code
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, *params = part.split(";")
        weight = 1.0
        for param in params:  # q may follow other parameters (es;level=1;q=0)
            name, _, given = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(given.strip())
                except ValueError:
                    weight = 0.0
        code = tag.strip().lower().replace("_", "-").split("-")[0]
        if code in LANGUAGES and weight > 0:
            ranked.append((-weight, i, code))
    return min(ranked)[2] if ranked else DEFAULT


def has(lang: str, key: str) -> bool:
    """Whether the catalog of ``lang`` translates ``key``."""
    return key in _translations(pick(lang))._catalog


def translate(lang: str, key: str, **params: Any) -> str:
    """The text for ``key`` in ``lang`` (English, then the key itself, as fallbacks), with ``{name}`` filled."""
    text = _translations(pick(lang)).gettext(key)
    if text == key and lang != "en":
        text = _translations("en").gettext(key)
    if params:
        try:
            return text.format(**params)
        except (KeyError, IndexError, ValueError):
            return text
    return text


class CodeNames(Protocol):
    """What :func:`stage_name` needs of the code catalogs (``core.names.Names`` is one)."""

    def known(self, kind: str, code: Any) -> bool: ...

    def display(self, kind: str, code: Any, lang: str = ...) -> str: ...


def stage_name(lang: str, code: Any, names: CodeNames | None = None) -> str:
    """A stage's name, wherever one is shown (pages, ``/api/codes``, ``dim_etapa``): the code catalog's
    (``etapas``), else this message catalog's ``stage.<code>`` (Ganada / Won), else the code itself."""
    if code is None:
        return ""
    if names is not None and names.known("etapas", code):
        return names.display("etapas", code, lang)
    key = f"stage.{code}"
    return translate(lang, key) if has(lang, key) else str(code)


def _locale(lang: str) -> Locale:
    try:
        return Locale.parse(pick(lang))
    except UnknownLocaleError:  # pragma: no cover - both languages ship with Babel
        return Locale.parse("en")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def number(lang: str, value: Any, digits: int = 0) -> str:
    """A number with the locale's grouping and decimal sign (``11.187`` / ``11,187``); a dash when missing."""
    x = _finite(value)
    if x is None:
        return MISSING
    pattern = "#,##0" + ("." + "0" * digits if digits else "")
    return babel_numbers.format_decimal(x, format=pattern, locale=_locale(lang))


def value(lang: str, item: Any) -> str:
    """Any stored value for display: numbers grouped with up to 4 decimals, dates in the locale, text as is."""
    if isinstance(item, bool) or item is None:
        return MISSING if item is None else str(item)
    if isinstance(item, (dt.date, dt.datetime)):
        return date(lang, item)
    if isinstance(item, (int, float)):
        x = _finite(item)
        if x is None:
            return MISSING
        return babel_numbers.format_decimal(x, format="#,##0.####", locale=_locale(lang))
    return str(item)


def percent(lang: str, fraction: Any, digits: int = 0) -> str:
    """A fraction as a percentage for the locale (``73,0 %`` / ``73.0%``); a dash when missing."""
    x = _finite(fraction)
    if x is None:
        return MISSING
    locale = _locale(lang)
    pattern = locale.percent_formats[None].pattern.split(";")[0]
    if digits:
        pattern = pattern.replace("0", "0." + "0" * digits, 1)
    return babel_numbers.format_percent(x, format=pattern, locale=locale)


def compact(lang: str, value: Any, digits: int = 2) -> str:
    """A large amount in the locale's short form (``3280 M`` / ``3.28B``); small ones in full."""
    x = _finite(value)
    if x is None:
        return MISSING
    if abs(x) < 10_000:
        return number(lang, x)
    return babel_numbers.format_compact_decimal(x, format_type="short", locale=_locale(lang), fraction_digits=digits)


def points(lang: str, effect: Any) -> str:
    """A change of probability in points, signed (``+12 puntos`` / ``-3 points``)."""
    x = _finite(effect)
    if x is None:
        return MISSING
    value = round(x * 100)
    sign = "+" if value > 0 else "\u2212" if value < 0 else "\u00b1"  # plus, minus sign, plus-minus
    return translate(lang, "format.points", sign=sign, n=number(lang, abs(value)))


def date(lang: str, value: Any) -> str:
    """A date in the locale's medium form (``30 nov 2026`` / ``Nov 30, 2026``); a dash when missing."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value[:10])
        except ValueError:
            return value
    if isinstance(value, dt.datetime):
        value = value.date()
    return babel_dates.format_date(value, "medium", locale=_locale(lang))


def datetime(lang: str, value: Any) -> str:
    """A moment in UTC, in the locale's medium form to the minute (``30 nov 2026, 19:54`` / ``Nov 30, 2026,
    7:54 PM``); a dash when missing."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(value, dt.datetime):
        return date(lang, value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    value = value.astimezone(dt.UTC)
    locale = _locale(lang)
    joined = babel_dates.get_datetime_format("medium", locale=locale)
    return str(joined).replace("{1}", date(lang, value)).replace(
        "{0}", babel_dates.format_time(value, "short", tzinfo=dt.UTC, locale=locale))


class Translator:
    """Bound to one language: templates call ``t('key', name=value)`` and its formatters (``t.number(x)``)."""

    def __init__(self, lang: str) -> None:
        self.lang = pick(lang)

    def __call__(self, key: str, **params: Any) -> str:
        return translate(self.lang, key, **params)

    def number(self, value: Any, digits: int = 0) -> str:
        return number(self.lang, value, digits)

    def value(self, item: Any) -> str:
        return value(self.lang, item)

    def percent(self, fraction: Any, digits: int = 0) -> str:
        return percent(self.lang, fraction, digits)

    def compact(self, value: Any, digits: int = 2) -> str:
        return compact(self.lang, value, digits)

    def points(self, effect: Any) -> str:
        return points(self.lang, effect)

    def date(self, value: Any) -> str:
        return date(self.lang, value)

    def datetime(self, value: Any) -> str:
        return datetime(self.lang, value)


def feature_label(lang: str, feature: str, english: str) -> str:
    """A model input's name in ``lang``: a form field's label, a derived feature's, or ``english`` as given."""
    for key in (f"field.{feature}", f"feature.{feature}"):
        if has(lang, key):
            return translate(lang, key)
    return english
