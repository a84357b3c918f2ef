"""Names instead of codes in the seller app: the capture form, the pages, the header and /api/codes."""

from __future__ import annotations

import re

import pytest

from salespred_assets.core import names
from salespred_assets.core.schema import CODE_SETS
from salespred_assets.mongo import catalogs
from salespred_assets.mongo.resource import OPPORTUNITIES
from salespred_tests.app_fixtures import *  # noqa: F403 - the fixtures app, app_db, client (its __all__)
from salespred_tests.app_fixtures import valid_payload
from salespred_tests.test_app_pages import csrf_of, page_login, submission_of

pytestmark = pytest.mark.integration
CODE = re.compile(r"\b(?:BU|TY|RE|TE|IN|LS)-\d\d\b|\bNV-\d+\b")


def _select(html: str, name: str) -> str:
    return re.search(rf'<select id="{name}".*?</select>', html, re.DOTALL).group(0)


def _visible(html: str) -> str:
    """The page's text as read: tags (and the attributes holding submitted codes) removed."""
    return re.sub(r"<[^>]+>", " ", html)


def test_the_capture_form_offers_names_sorted_and_grouped_and_stores_codes(client, app_db):
    page_login(client, app_db, "luis")
    form = client.get("/opportunities/new").text
    industries = _select(form, "industrias")
    labels = re.findall(r'<option value="IN-\d\d"[^>]*>([^<]+)</option>', industries)
    assert len(labels) == 65 and "Agricultura" in labels and labels.index("Agricultura") < labels.index("Banca")
    assert 'value="IN-23">Sanidad</option>' in industries
    territories = _select(form, "territorios")
    groups = re.findall(r'<optgroup label="([^"]+)">', territories)
    assert groups == ["Andina (Colombia)", "Caribe (Colombia)", "España centro y norte", "España este y sur"]
    andina = territories.split('<optgroup label="Andina (Colombia)">')[1].split("</optgroup>")[0]
    assert re.findall(r">([^<]+)</option>", andina) == ["Bogotá", "Bucaramanga", "Cali", "Medellín"]
    assert not CODE.search(_visible(form)), CODE.search(_visible(form))  # no code where a name exists
    assert "NV-1" not in form  # the seller shows by name, in the header too
    client.get("/lang/en")
    english = _select(client.get("/opportunities/new").text, "industrias")
    assert 'value="IN-23">Healthcare</option>' in english
    client.get("/lang/es")
    saved = client.post("/opportunities/new", data={**valid_payload(), "csrf": csrf_of(form),
                                                    "submission": submission_of(form)}, follow_redirects=False)
    assert saved.status_code == 303, saved.text
    number = saved.headers["location"].split("/")[-1].split("?")[0]
    stored = app_db.mongo.db[OPPORTUNITIES].find_one({"numero_opportunidad": number})
    assert (stored["industrias"], stored["territorios"], stored["lead_source"]) == ("IN-23", "TE-09", "LS-06")
    detail = client.get(saved.headers["location"]).text
    data = detail.split('<dl class="data">')[1].split("</dl>")[0]
    for name in ("Servicios gestionados", "Renovación", "España centro y norte", "Bilbao", "Sanidad",
                 "Correo en frío", "Luis Gómez", "Calificación"):
        assert name in data, name
    assert not CODE.search(_visible(data)), CODE.search(_visible(data))


def test_an_unknown_code_is_refused_without_listing_codes(client, app_db):
    page_login(client, app_db, "luis")
    form = client.get("/opportunities/new").text
    refused = client.post("/opportunities/new", data={**valid_payload(industrias="IN-99"), "csrf": csrf_of(form),
                                                      "submission": submission_of(form)})
    assert refused.status_code == 422
    message = re.search(r'id="industrias-error"[^>]*>([^<]+)<', refused.text).group(1)
    assert message == "Elija una opción de la lista." and not CODE.search(message)


def test_list_and_header_show_seller_names_and_stage_names(client, app_db):
    page_login(client, app_db, "ana")  # a manager: the team's opportunities, several sellers
    listing = client.get("/opportunities").text
    who = re.search(r'<p class="who">(.*?)</p>', listing, re.DOTALL).group(1)
    assert "Ana Martínez" in who and "NV-0" not in who
    items = listing.split('<ul class="items">')[1].split("</ul>")[0]
    assert "Luis Gómez" in items or "Sofía Herrera" in items or "Ana Martínez" in items
    assert not re.search(r"\bNV-\d", items) and not re.search(r"· (S[1-6]|Won|Lost) ·", items)


def test_a_code_without_a_name_still_shows_as_itself(client, app_db):
    doc = app_db.mongo.db[OPPORTUNITIES].find_one({"numero_vendedor": "NV-1", "etapas": "S2"}, {"_id": 0})
    try:
        app_db.mongo.db[catalogs.CATALOGS].delete_one({"kind": "industrias", "code": doc["industrias"]})
        catalogs.forget()
        page_login(client, app_db, "luis")
        page = client.get(f"/opportunities/{doc['numero_opportunidad']}").text
        data = page.split('<dl class="data">')[1].split("</dl>")[0]
        assert f"<dd>{doc['industrias']}</dd>" in data
    finally:
        catalogs.ensure_demo(app_db.mongo)


def test_api_codes_keeps_its_lists_and_adds_names_in_the_asked_language(client):
    spanish = client.get("/api/codes")
    assert spanish.status_code == 200 and spanish.headers["content-language"] == "es"
    body = spanish.json()
    for kind, codes in CODE_SETS.items():
        assert body[kind] == codes  # the existing fields, unchanged
        assert sorted(o["code"] for o in body["names"][kind]) == codes
    assert body["lang"] == "es"
    tipos = {o["code"]: o["name"] for o in body["names"]["tipos"]}
    assert tipos["TY-00"] == "Renovación"
    assert {o["code"]: o["name"] for o in body["names"]["etapas"]}["Won"] == "Ganada"
    bogota = next(o for o in body["names"]["territorios"] if o["code"] == "TE-04")
    assert bogota == {"code": "TE-04", "name": "Bogotá", "group": "Andina (Colombia)"}
    english = client.get("/api/codes", headers={"Accept-Language": "en-GB,en;q=0.9,es;q=0.5"}).json()
    assert english["lang"] == "en" and {o["code"]: o["name"] for o in english["names"]["tipos"]}["TY-00"] == "Renewal"
    assert client.get("/api/codes?lang=en", headers={"Accept-Language": "es"}).json()["lang"] == "en"
    names = [o["name"] for o in english["names"]["industrias"]]
    assert names[0] == "Accounting and auditing"  # sorted by the English name


def test_without_stage_names_in_the_catalog_stages_read_in_the_language_everywhere(client, app_db):
    import pandas as pd

    from salespred_assets.core import names
    from salespred_assets.i18n import stage_name

    # One rule (catalog, else the message catalog, else the code) for the pages, /api/codes and dim_etapa.
    app_db.mongo.db[catalogs.CATALOGS].delete_many({"kind": "etapas"})
    catalogs.forget()
    try:
        stages = {o["code"]: o["name"] for o in client.get("/api/codes?lang=es").json()["names"]["etapas"]}
        assert stages["Won"] == "Ganada" and stages["Lost"] == "Perdida", stages
        english = {o["code"]: o["name"] for o in client.get("/api/codes?lang=en").json()["names"]["etapas"]}
        assert english["Won"] == "Won"
        lookup = catalogs.names(app_db.mongo)
        dim = pd.DataFrame(names.dimension(lookup, "etapas", ["Won", "Raro"],
                                           lambda code, lang: stage_name(lang, code, lookup))).set_index("code")
        assert dim.loc["Won", ["name_es", "name_en"]].tolist() == ["Ganada", "Won"]
        assert dim.loc["Raro", ["name_es", "name_en"]].tolist() == ["Raro", "Raro"]  # unknown: the code itself
        assert stage_name("es", "S1", lookup) == stages["S1"]
        page_login(client, app_db, "ana")
        items = client.get("/opportunities").text.split('<ul class="items">')[1].split("</ul>")[0]
        assert not re.search(r"· (Won|Lost) ·", items)
    finally:
        catalogs.ensure_demo(app_db.mongo)
    # A catalog name wins over the message catalog's.
    app_db.mongo.db[catalogs.CATALOGS].update_one({"kind": "etapas", "code": "Won"}, {"$set": {"es": "Cerrada ganada"}})
    catalogs.forget()
    try:
        stages = {o["code"]: o["name"] for o in client.get("/api/codes?lang=es").json()["names"]["etapas"]}
        assert stages["Won"] == "Cerrada ganada"
    finally:
        app_db.mongo.db[catalogs.CATALOGS].update_one({"kind": "etapas", "code": "Won"}, {"$set": {"es": "Ganada"}})
        catalogs.forget()


def test_long_lists_are_grouped_by_first_letter_in_the_pages_language(client, app_db):
    page_login(client, app_db, "luis")
    form = client.get("/opportunities/new").text
    for name, count in (("industrias", 65), ("lead_source", 36)):
        select = _select(form, name)
        letters = re.findall(r'<optgroup label="([^"]+)">', select)
        assert letters == sorted(letters) and len(letters) == len(set(letters)) > 5, letters
        assert all(len(letter) == 1 and letter.isupper() for letter in letters), letters
        # Every option sits in the group of its name's first letter, accents ignored (Álava under A).
        runs = re.findall(r'<optgroup label="(.)">(.*?)</optgroup>', select, re.DOTALL)
        options = [(letter, label) for letter, run in runs for label in re.findall(r">([^<]+)</option>", run)]
        assert len(options) == count
        assert all(names.initial(label) == letter for letter, label in options), options
    industries = _select(form, "industrias")
    assert re.search(r'<optgroup label="S">(?:(?!</optgroup>).)*?<option value="IN-23">Sanidad</option>', industries,
                     re.DOTALL)
    assert re.search(r'<optgroup label="E">(?:(?!</optgroup>).)*?<option value="IN-\d\d">Educación escolar</option>',
                     industries, re.DOTALL)
    assert "<optgroup" not in _select(form, "tipos")  # a short list stays flat
    territories = re.findall(r'<optgroup label="([^"]+)">', _select(form, "territorios"))
    assert territories[0] == "Andina (Colombia)"  # territories keep their regions
    client.get("/lang/en")
    english = _select(client.get("/opportunities/new").text, "industrias")
    assert re.search(r'<optgroup label="H">(?:(?!</optgroup>).)*?<option value="IN-23">Healthcare</option>', english,
                     re.DOTALL)
    client.get("/lang/es")
    # A refused capture shows the form again with the chosen code still selected in its group, and the error.
    refused = client.post("/opportunities/new", data={**valid_payload(acv="-5"), "csrf": csrf_of(form),
                                                      "submission": submission_of(form)})
    assert refused.status_code == 422
    assert re.search(r'<optgroup label="S">(?:(?!</optgroup>).)*?<option value="IN-23" selected>Sanidad</option>',
                     _select(refused.text, "industrias"), re.DOTALL)
    assert 'id="acv-error"' in refused.text


def test_a_short_list_without_groups_is_never_split_by_letter():
    lookup = names.Names(names.demo_entries())
    assert [g for g, _ in lookup.grouped("tipos", CODE_SETS["tipos"], "es")] == [""]
    assert [g for g, _ in lookup.grouped("industrias", CODE_SETS["industrias"][:20], "es")] == [""]
    assert len(lookup.grouped("industrias", CODE_SETS["industrias"][:21], "es")) > 1
    assert (names.initial("Álava"), names.initial("éxito"), names.initial("3M"), names.initial("¿Qué?")) == \
        ("A", "E", "#", "Q")
