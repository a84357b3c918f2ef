"""Catalogs: names for the codes, loaded from CSV or YAML (all or nothing), looked up with the code as fallback."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from salespred_assets.core import names
from salespred_assets.core.names import CatalogError, Entry, Names
from salespred_assets.core.schema import CODE_SETS
from salespred_assets.mongo import catalogs

GOOD_CSV = "kind,code,es,en\nindustrias,IN-00,Agricultura,Agriculture\ntipos,TY-00,Renovación,Renewal\n"
GOOD_YAML = """
industrias:
  IN-00: {es: Agricultura, en: Agriculture}
territorios:
  TE-04: {es: Bogotá, en: Bogotá, group: RE-01}
"""


def _cli(args: list[str], mongo, monkeypatch, capsys) -> tuple[int, str, str]:
    """Runs `salespred ...` in this process against the test's database; (exit code, stdout, stderr)."""
    from salespred_assets.cli import main

    monkeypatch.setenv("SALESPRED_MONGO_URI", mongo.uri.replace("/?", f"/{mongo.database}?"))
    monkeypatch.setattr(sys, "argv", ["salespred", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- the pure lookup ------------------------------------------------------------------------------
def test_a_name_falls_back_to_the_other_language_then_to_the_code():
    lookup = Names([Entry("industrias", "IN-00", "Agricultura", "Agriculture"),
                    Entry("tipos", "TY-00", "", "Renewal")], sellers={"NV-1": "Luis Gómez"})
    assert lookup.display("industrias", "IN-00", "es") == "Agricultura"
    assert lookup.display("industrias", "IN-00", "en") == "Agriculture"
    assert lookup.display("tipos", "TY-00", "es") == "Renewal"  # no Spanish name: the English one
    assert lookup.display("industrias", "IN-99", "es") == "IN-99"  # unknown: the code itself
    assert lookup.display("regiones", "IN-00", "es") == "IN-00"  # a code of another kind is not this one
    assert lookup.display("numero_vendedor", "NV-1", "en") == "Luis Gómez"
    assert lookup.display("numero_vendedor", "NV-9", "en") == "NV-9"
    assert lookup.display("industrias", None, "es") == ""


def test_options_are_sorted_by_name_in_the_language_and_grouped():
    lookup = Names(names.demo_entries())
    options = lookup.options("territorios", CODE_SETS["territorios"], "es")
    # Andina (Colombia) first, its cities by name: Bogotá, Bucaramanga, Cali, Medellín.
    assert [o["code"] for o in options][:4] == ["TE-04", "TE-07", "TE-06", "TE-05"]
    assert {o["group"] for o in options} == {"Andina (Colombia)", "Caribe (Colombia)", "España centro y norte",
                                             "España este y sur"}
    industries = [o["name"] for o in lookup.options("industrias", CODE_SETS["industrias"], "es")]
    assert industries == sorted(industries, key=names.sort_key)
    assert industries.index("Educación escolar") < industries.index("Electrónica")  # accents do not move a name


def test_the_demo_catalog_names_every_synthetic_code_and_stage_in_both_languages():
    lookup = Names(names.demo_entries())
    for kind, codes in CODE_SETS.items():
        for code in codes:
            entry = lookup.entry(kind, code)
            assert entry is not None and entry.es and entry.en, (kind, code)
            assert entry.es != code and entry.en != code
        # Names are distinct within a kind, or a seller could not tell two options apart.
        assert len({lookup.display(kind, c, "es") for c in codes}) == len(codes), kind
    for stage in names.STAGE_CODES:
        assert lookup.display("etapas", stage, "es") != stage
    assert lookup.display("etapas", "Won", "es") == "Ganada"
    # A territory's group is its region, as the generator places it (TE-n in RE-(n // 4)).
    for i, code in enumerate(CODE_SETS["territorios"]):
        assert lookup.entry("territorios", code).group == f"RE-{i // 4:02d}"  # type: ignore[union-attr]


# ---- reading files --------------------------------------------------------------------------------
def test_csv_and_yaml_read_the_same_shape(tmp_path):
    (tmp_path / "c.csv").write_text(GOOD_CSV, encoding="utf-8")
    (tmp_path / "c.yaml").write_text(GOOD_YAML, encoding="utf-8")
    assert names.read_file(tmp_path / "c.csv") == [Entry("industrias", "IN-00", "Agricultura", "Agriculture"),
                                                   Entry("tipos", "TY-00", "Renovación", "Renewal")]
    assert names.read_file(tmp_path / "c.yaml")[1] == Entry("territorios", "TE-04", "Bogotá", "Bogotá", "RE-01")
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + GOOD_CSV.encode())  # as a spreadsheet saves it
    assert len(names.read_file(bom)) == 2


BAD_FILES = [
    ("unknown-kind.csv", b"kind,code,es,en\nindustrias,IN-00,A,A\npaises,CO,Colombia,Colombia\n",
     "row 3: unknown kind 'paises'"),
    ("empty-code.csv", b"kind,code,es,en\nindustrias,,Agricultura,Agriculture\n", "row 2: empty code"),
    ("missing-name.csv", b"kind,code,es,en\nindustrias,IN-00,Agricultura,\n",
     "row 2: industrias IN-00 has no name in 'en'"),
    ("duplicate.csv", b"kind,code,es,en\nindustrias,IN-00,A,A\nindustrias,IN-00,B,B\n",
     "row 3: industrias IN-00 is given twice"),
    ("empty.csv", b"", "the file is empty"),
    ("header-only.csv", b"kind,code,es,en\n", "no entries"),
    ("bad-header.csv", b"kind,code,spanish,english\nindustrias,IN-00,A,A\n",
     "row 1: the header lacks the column(s) es, en"),
    ("latin1.csv", "kind,code,es,en\nindustrias,IN-00,Minería,Mining\n".encode("latin-1"), "not UTF-8"),
    ("empty.yaml", b"", "the file is empty"),
    ("missing-name.yaml", b"industrias:\n  IN-00: {es: Agricultura}\n",
     "industrias.IN-00: industrias IN-00 has no name in 'en'"),
    ("unknown-kind.yaml", b"paises:\n  CO: {es: Colombia, en: Colombia}\n", "unknown kind 'paises'"),
    ("not-a-mapping.yaml", b"- industrias\n", "expected a mapping"),
    ("broken.yaml", b"industrias: {IN-00: {es: A, en: B}\n", "not valid YAML"),
    ("catalog.txt", b"whatever", "a catalog is a .csv"),
]


@pytest.mark.parametrize(("name", "content", "problem"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_refused_whole_with_one_line_naming_it(name, content, problem, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CatalogError) as caught:
        names.read_file(path)
    message = str(caught.value)
    assert problem in message and str(path) in message and "\n" not in message


# ---- MongoDB and the command ----------------------------------------------------------------------
def test_catalog_load_and_show(mongo, tmp_path, monkeypatch, capsys):
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(GOOD_CSV, encoding="utf-8")
    code, out, _ = _cli(["catalog", "load", str(csv_path)], mongo, monkeypatch, capsys)
    assert code == 0 and "loaded 2 names" in out
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(GOOD_YAML.replace("Agricultura", "Agro"), encoding="utf-8")
    assert _cli(["catalog", "load", str(yaml_path)], mongo, monkeypatch, capsys)[0] == 0  # merged: 3 entries
    assert catalogs.name(mongo, "industrias", "IN-00", "es") == "Agro"  # updated, and seen at once here
    assert catalogs.name(mongo, "tipos", "TY-00", "en") == "Renewal"  # kept
    code, out, _ = _cli(["catalog", "show", "--kind", "territorios", "--lang", "es"], mongo, monkeypatch, capsys)
    assert code == 0 and out.splitlines() == ["territorios\tTE-04\tBogotá\tRE-01"]
    code, out, _ = _cli(["catalog", "show"], mongo, monkeypatch, capsys)
    assert len(out.splitlines()) == 3 and "tipos\tTY-00\tRenovación\tRenewal" in out


def test_replace_makes_the_catalog_exactly_the_file(mongo, tmp_path, monkeypatch, capsys):
    catalogs.write(mongo, names.demo_entries())
    path = tmp_path / "c.csv"
    path.write_text(GOOD_CSV, encoding="utf-8")
    code, out, _ = _cli(["catalog", "load", str(path), "--replace"], mongo, monkeypatch, capsys)
    assert code == 0 and "replaced the catalog with 2 names" in out
    assert sorted(d["code"] for d in mongo.db[catalogs.CATALOGS].find()) == ["IN-00", "TY-00"]
    assert catalogs.name(mongo, "industrias", "IN-01", "es") == "IN-01"  # gone: shown as its code
    assert not [n for n in mongo.db.list_collection_names() if n.startswith(catalogs.STAGING)]
    # Still unique per (kind, code) after the swap: the index came with the staging collection.
    assert any(i.get("unique") for i in mongo.db[catalogs.CATALOGS].index_information().values())


@pytest.mark.parametrize("replace", [False, True])
def test_a_refused_file_writes_nothing_and_exits_2(replace, mongo, tmp_path, monkeypatch, capsys):
    catalogs.write(mongo, names.demo_entries())
    before = sorted((d["kind"], d["code"], d["es"]) for d in mongo.db[catalogs.CATALOGS].find())
    path = tmp_path / "bad.csv"
    # Good rows first: a load that wrote as it read would have changed IN-00 before meeting row 3.
    path.write_text("kind,code,es,en\nindustrias,IN-00,Otra,Other\nindustrias,IN-01,,Food\n", encoding="utf-8")
    code, _, err = _cli(["catalog", "load", str(path), *(["--replace"] if replace else [])], mongo, monkeypatch,
                          capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: {path} row 3: industrias IN-01 has no name in 'es'"]
    assert sorted((d["kind"], d["code"], d["es"]) for d in mongo.db[catalogs.CATALOGS].find()) == before


def test_a_missing_file_exits_2(mongo, tmp_path, monkeypatch, capsys):
    code, _, err = _cli(["catalog", "load", str(tmp_path / "nope.csv")], mongo, monkeypatch, capsys)
    assert code == 2 and "nope.csv: no such file" in err


def test_the_reader_sees_a_load_within_its_ttl(mongo, monkeypatch):
    catalogs.write(mongo, [Entry("industrias", "IN-00", "Agricultura", "Agriculture")])
    assert catalogs.name(mongo, "industrias", "IN-00", "es") == "Agricultura"
    # Another process loads a new name (this process's cache is not told).
    mongo.db[catalogs.CATALOGS].update_one({"code": "IN-00"}, {"$set": {"es": "Agro"}})
    assert catalogs.name(mongo, "industrias", "IN-00", "es") == "Agricultura"  # cached: no read per request
    assert catalogs.TTL_S <= 5  # "within seconds"
    monkeypatch.setattr(catalogs._cache, "ttl_s", 0.3)  # the same memo, a shorter wait for the test
    time.sleep(0.4)
    assert catalogs.name(mongo, "industrias", "IN-00", "es") == "Agro"


def test_seeding_synthetic_data_ships_the_demo_catalog_only_into_an_empty_one(mongo):
    from salespred_assets.operations import loading

    loading.seed_synthetic(mongo, 50)
    assert mongo.db[catalogs.CATALOGS].count_documents({}) == len(names.demo_entries())
    assert catalogs.name(mongo, "territorios", "TE-04", "es") == "Bogotá"
    assert catalogs.name(mongo, "numero_vendedor", "NV-1", "es") == "NV-1"  # no sellers yet: the number
    loading.ensure_demo_sellers(mongo)
    catalogs.forget()
    assert catalogs.name(mongo, "numero_vendedor", "NV-1", "es") == "Luis Gómez"


def test_the_demo_catalog_file_is_in_the_package():
    assert names.DEMO_CATALOG.is_file() and names.DEMO_CATALOG.parent == Path(names.__file__).parent


def test_replacing_the_data_with_synthetic_data_ships_the_demo_catalog(mongo):
    from salespred_assets.operations import loading

    loading.replace_synthetic(mongo, 30)
    assert catalogs.name(mongo, "industrias", "IN-23", "en") == "Healthcare"


@pytest.mark.parametrize("how", ["seed", "replace"])
def test_seeding_after_a_deliberate_replace_does_not_bring_the_demo_names_back(how, mongo, tmp_path, monkeypatch,
                                                                             capsys):
    from salespred_assets.operations import loading

    path = tmp_path / "real.csv"
    path.write_text("kind,code,es,en\nindustrias,IN-00,Agro propio,Own agro\n", encoding="utf-8")
    assert _cli(["catalog", "load", str(path), "--replace"], mongo, monkeypatch, capsys)[0] == 0
    if how == "seed":
        loading.seed_synthetic(mongo, 30)
    else:
        loading.replace_synthetic(mongo, 30)
    assert [(d["code"], d["es"]) for d in mongo.db[catalogs.CATALOGS].find()] == [("IN-00", "Agro propio")]
    assert catalogs.name(mongo, "industrias", "IN-23", "en") == "IN-23"  # the real catalog does not name it


def test_concurrent_replacements_leave_exactly_one_whole_catalog(mongo):
    import threading

    # Several files of different sizes replaced at once, again and again: each rename must carry one
    # whole file, never another run's half-filled staging, and no run may fail.
    files = [[Entry("industrias", f"IN-{i:04d}", f"n{k}-{i}", f"n{k}-{i}") for i in range(300 + 150 * k)]
             for k in range(4)]
    wanted = {len(f): {(e.code, e.es) for e in f} for f in files}
    errors: list[BaseException] = []

    def replace(entries):
        try:
            for _ in range(4):
                catalogs.write(mongo, entries, replace=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=replace, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored = {(d["code"], d["es"]) for d in mongo.db[catalogs.CATALOGS].find()}
    assert stored in wanted.values()
    assert not [n for n in mongo.db.list_collection_names() if n.startswith(catalogs.STAGING)]


def test_only_a_dead_replacements_staging_is_cleaned_up(mongo):
    old = catalogs.staging_name(time.time() - 2 * catalogs.STALE_S)
    live = catalogs.staging_name()
    for name in (old, live, catalogs.STAGING, "catalogs_other"):
        mongo.db[name].insert_one({"kind": "industrias", "code": "IN-00", "es": "x", "en": "x"})
    assert len({old, live}) == 2 and old != live
    catalogs.write(mongo, [Entry("industrias", "IN-01", "Alimentos", "Food")], replace=True)
    left = set(mongo.db.list_collection_names())
    assert live in left and "catalogs_other" in left  # a running replacement's, and what is not a staging
    assert old not in left and catalogs.STAGING not in left  # a dead run's, and the earlier releases' one name
    assert [d["code"] for d in mongo.db[catalogs.CATALOGS].find()] == ["IN-01"]


# ---- YAML keeps text as written, sellers never show by login ---------------------------------------------
def test_yaml_codes_and_names_stay_the_text_written(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lead_source:\n  NO: {es: yes, en: 'no'}\n  010: {es: 1.50, en: ~}\n"
                    "  on: {es: 2026-01-01, en: null}\n", encoding="utf-8")
    got = {e.code: (e.es, e.en) for e in names.read_file(path)}
    assert got == {"NO": ("yes", "no"), "010": ("1.50", "~"), "on": ("2026-01-01", "null")}


def test_a_yaml_name_that_is_not_text_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("industrias:\n  IN-00: {es: [a, b], en: Agriculture}\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"c.yaml industrias.IN-00: es must be text, not a list"):
        names.read_file(path)


def test_a_seller_without_names_shows_as_the_number_never_the_login(mongo):
    from salespred_assets.mongo.resource import SELLERS

    mongo.db[SELLERS].insert_many([
        {"numero_vendedor": "NV-1", "username": "lgomez", "first_name": "Luis", "last_name": "Gómez"},
        {"numero_vendedor": "NV-2", "username": "secret.login", "first_name": "", "last_name": None},
        {"numero_vendedor": "NV-3", "username": "other.login"},
        {"numero_vendedor": "NV-4", "username": "x", "first_name": "Ana", "last_name": "  "},
    ])
    catalogs.forget()
    assert catalogs.seller_names(mongo) == {"NV-1": "Luis Gómez", "NV-4": "Ana"}
    assert catalogs.name(mongo, "numero_vendedor", "NV-2", "es") == "NV-2"
    assert catalogs.name(mongo, "numero_vendedor", "NV-3", "en") == "NV-3"


def test_the_dashboard_matrix_rows_carry_the_sellers_name():
    import pandas as pd

    from salespred_assets.dashboard.figures import matrix

    frame = pd.DataFrame({"seller": ["NV-1", "NV-7"], "seller_name": ["Luis Gómez", ""], "stage": ["S1", "S2"],
                          "opportunities": [2, 1], "tcv": [10.0, 5.0], "expected_tcv": [4.0, 1.0]})
    rows = {r["seller"]: r for r in matrix(frame)["rows"]}
    assert rows["NV-1"]["name"] == "Luis Gómez"
    assert rows["NV-7"]["name"] == "NV-7"  # no name in dim_seller: the number, never a blank
