"""The one message catalog (gettext .po/.mo through Babel) and the locale formatting everything people read uses."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from babel import numbers as babel_numbers

from salespred_assets import i18n
from salespred_assets.errors import SalespredError
from salespred_assets.i18n.__main__ import problems

PACKAGE = Path(i18n.__file__).parents[1]
# A literal key handed to the translator: t('detail.title'), translate(lang, "err.missing"), t("dash...").
USES = re.compile(r"""(?:\bt|translate\([^,()]+,|Translator\([^()]*\))\(?\s*["']([a-z_]+(?:\.[a-z0-9_]+)+)["']""")


def test_the_catalog_is_complete_and_consistent():
    assert problems() == []


def test_the_compiled_catalog_is_the_current_one():
    i18n.check()  # what the image's build runs
    for lang in i18n.LANGUAGES:
        i18n.load(lang)
    assert i18n.translate("es", "login.submit") == "Ingresar" and i18n.translate("en", "login.submit") == "Log in"


@pytest.fixture
def locales(tmp_path):
    copy = tmp_path / "locales"
    shutil.copytree(i18n.LOCALES_DIR, copy)
    return copy


def test_a_po_newer_than_its_mo_with_the_same_content_is_accepted(locales):
    # An installed wheel does not keep modification times (the Docker image): content decides.
    po = locales / "es" / "LC_MESSAGES" / "messages.po"
    mo = po.with_suffix(".mo")
    os.utime(mo, (1_000_000, 1_000_000))
    os.utime(po, (2_000_000, 2_000_000))
    assert i18n.load("es", locales).gettext("login.submit") == "Ingresar"


def test_a_po_changed_without_recompiling_or_a_missing_mo_is_refused(locales):
    po = locales / "es" / "LC_MESSAGES" / "messages.po"
    po.write_text(po.read_text(encoding="utf-8").replace('msgstr "Ingresar"', 'msgstr "Entrar"', 1),
                  encoding="utf-8")
    with pytest.raises(SalespredError, match="make locale"):
        i18n.load("es", locales)
    (locales / "en" / "LC_MESSAGES" / "messages.mo").unlink()
    with pytest.raises(SalespredError, match="make locale"):
        i18n.load("en", locales)


def test_loading_a_catalog_is_fast():
    i18n.load("es")  # warm the imports
    start = time.perf_counter()
    for lang in i18n.LANGUAGES:
        i18n.load(lang)
    assert time.perf_counter() - start < 0.5  # a few ms per language; generous for a loaded machine


def test_every_key_the_code_uses_is_translated():
    used: dict[str, str] = {}
    for path in [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.html")]:
        for key in USES.findall(path.read_text(encoding="utf-8")):
            used.setdefault(key, str(path.relative_to(PACKAGE)))
    assert len(used) > 50, "the scan found too few keys: the pattern no longer matches the code"
    missing = {key: where for key, where in used.items()
               if not all(i18n.has(lang, key) for lang in i18n.LANGUAGES)}
    assert missing == {}


def test_placeholders_are_filled_and_unknown_keys_fall_back_to_the_key():
    assert i18n.translate("es", "detail.title", number="OP-1") == "Oportunidad OP-1"
    assert i18n.translate("en", "no.such.key") == "no.such.key"
    assert i18n.Translator("fr")("login.submit") == "Ingresar"  # an unsupported language is the default


@pytest.mark.parametrize(("lang", "expected"), [("es", ["11.187", "73,0\xa0%", "30 nov 2026", "3280\xa0M"]),
                                                ("en", ["11,187", "73.0%", "Nov 30, 2026", "3.28B"])])
def test_numbers_money_percentages_and_dates_follow_the_locale(lang, expected):
    t = i18n.Translator(lang)
    got = [t.number(11187), t.percent(0.73, 1), t.date(dt.date(2026, 11, 30)), t.compact(3.28e9)]
    assert got == expected
    assert t.number(1234.5, 1) == babel_numbers.format_decimal(1234.5, format="#,##0.0", locale=lang)
    assert t.value(48000.0) == babel_numbers.format_decimal(48000, locale=lang) and t.value("CL-1") == "CL-1"
    assert t.number(float("nan")) == t.percent(None) == t.date(None) == i18n.MISSING
    assert t.datetime(dt.datetime(2026, 11, 30, 19, 54, tzinfo=dt.UTC)).startswith(expected[2])


def test_points_are_signed():
    assert i18n.points("es", 0.123) == "+12 puntos" and i18n.points("en", -0.03) == "\u22123 points"


@pytest.mark.parametrize(("query", "header", "expected"), [
    ("en", "es-CO,es;q=0.9", "en"), (None, "en-GB,en;q=0.9,es;q=0.8", "en"), (None, "fr, es;q=0.5", "es"),
    (None, "es;q=0.2, en;q=0.9", "en"), (None, None, "es"), ("xx", "de", "es"), (None, "en;q=0", "es"),
    ("EN", None, "en"), ("en-US", "es", "en"), ("en_GB", None, "en"), (None, "EN-us", "en"),
    (None, "es;level=1;q=0, en;q=0.5", "en"), (None, "en; q=0.4, es;level=1", "es")])
def test_the_api_language_comes_from_the_query_then_accept_language(query, header, expected):
    assert i18n.negotiate(query, header) == expected


def test_set_then_delete_keeps_both_languages_in_step(tmp_path, monkeypatch):
    import shutil

    from salespred_assets.i18n import __main__ as tool

    for lang in i18n.LANGUAGES:  # copies: the real catalog is not touched
        shutil.copy(i18n.catalog_path(lang), tmp_path / f"{lang}.po")
    monkeypatch.setattr(tool, "catalog_path", lambda lang: tmp_path / f"{lang}.po")
    assert tool.main(["set", "zz.test", "--es", "Prueba", "--en", "Test"]) == 0
    assert all("zz.test" in tool.load(lang) for lang in i18n.LANGUAGES)
    assert tool.main(["delete", "zz.test"]) == 0
    assert not any("zz.test" in tool.load(lang) for lang in i18n.LANGUAGES)
    assert tool.main(["delete", "zz.test"]) == 1  # a key that is not there is an error, not silence
    for lang in i18n.LANGUAGES:  # back to the very same file
        assert (tmp_path / f"{lang}.po").read_text() == i18n.catalog_path(lang).read_text()


@pytest.mark.parametrize("lang", sorted(i18n.LANGUAGES))
def test_the_dashboard_translates_every_state_and_period_and_speaks_one_language(lang):
    from salespred_assets.dashboard import render

    t, f = render.texts(lang), render.Fmt(lang)
    # A state or a period the catalog does not know reads as a word of the page's language, never raw English.
    assert render._state(lang, "archived") == i18n.translate(lang, "dash.state.unknown") != "archived"
    pipeline = {"horizons": [{"order": 9, "horizon": "someday", "opportunities": 1, "expected_tcv": 1.0}],
                "opportunities": 1, "tcv": 1.0, "expected_tcv": 1.0, "as_of": None, "period_rule": "r"}
    page = render._pipeline(pipeline, t, f)
    assert "someday" not in page and t["h_unknown"] in page
    if lang == "es":
        assert not re.search(r"backtest|\bNr\b", " ".join(t.values()), re.IGNORECASE)
    # The quality table has no stages: its hint does not speak of them.
    assert t["scroll_hint_quality"] != t["scroll_hint"]
