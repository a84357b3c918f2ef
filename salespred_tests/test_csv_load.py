"""`salespred seed --csv`: every row is loaded or set aside with its reason, and a load never half-writes.

Each test runs the real command (a subprocess of ``python -m salespred_assets.cli``) against SecantusDB and
reads MongoDB back; the exports are generated here (synthetic opportunities, made messy on purpose).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from salespred_assets.core import synthetic
from salespred_assets.core.schema import DEFAULT_SCHEMA
from salespred_assets.mongo.resource import OPPORTUNITIES, OPPORTUNITY_HISTORY, QUARANTINE, SELLERS, MongoResource
from salespred_assets.operations import loading
from salespred_tests.conftest import REPO
from salespred_tests.helpers import AS_OF

pytestmark = pytest.mark.integration
ID = DEFAULT_SCHEMA.id


# ---- exports ---------------------------------------------------------------------------------------
def clean_export(n: int, seed: int = 5) -> pd.DataFrame:
    """``n`` synthetic opportunities as a CSV export would hold them: every value as text."""
    docs = [d for batch in synthetic.generate(n, seed=seed, as_of=AS_OF) for d in batch]
    frame = pd.DataFrame(docs)[DEFAULT_SCHEMA.fields]
    return frame.astype(str)


def messy_export(n: int, seed: int = 11) -> tuple[pd.DataFrame, Counter]:
    """A clean export with damage of every kind a real CRM export shows, and the reasons it must give.

    Kept (not rejected): the categories ``None``, ``NA``, ``null`` and ``N/A``, empty categorical cells,
    empty or ``NA`` numbers. Rejected: numbers written ``12,5k`` or ``n/d``, dates in another format, an
    empty id or stage, a repeated number (the first valid row wins).
    """
    frame = clean_export(n, seed)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(n)
    expected: Counter = Counter()
    take = iter(rows)

    def pick(k: int) -> list[int]:
        return [next(take) for _ in range(k)]

    for i, token in zip(pick(40), ["None", "NA", "null", "N/A"] * 10, strict=True):
        frame.loc[i, "tipos" if i % 2 else "lead_source"] = token
    for i in pick(20):
        frame.loc[i, "industrias"] = ""
    for i in pick(20):
        frame.loc[i, "margen_ganancia"] = "" if i % 2 else "NA"
    for i in pick(6):
        frame.loc[i, "acv"] = "12,5k"
        expected["acv: not a finite number"] += 1
    for i in pick(4):
        frame.loc[i, "tcv"] = "n/d"
        expected["tcv: not a finite number"] += 1
    for i in pick(5):
        frame.loc[i, "fecha_creacion_oportunidad"] = "03/04/2021"
        expected["fecha_creacion_oportunidad: not a YYYY-MM-DD date"] += 1
    for i in pick(3):
        frame.loc[i, "etapas"] = ""
        expected["etapas: missing"] += 1
    for i in pick(2):
        frame.loc[i, ID] = ""
        expected[f"{ID}: missing"] += 1
    used = set(np.flatnonzero((frame != "").all(axis=1).to_numpy()))
    for i in pick(4):  # a later, valid row repeats the number of an earlier valid row
        if i in used:
            earlier = min(j for j in used if j != i)
            if earlier < i:
                frame.loc[i, ID] = frame.loc[earlier, ID]
                expected[f"{ID}: duplicate"] += 1
    return frame, expected


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
    return path


def run(mongo: MongoResource, mongo_server, tmp_path: Path, *args: str,
        wrapper: str | None = None) -> subprocess.CompletedProcess:
    """``salespred seed ARGS`` through the console script's ``main`` (exit codes and messages as a user gets them).

    In this process (importing the package again per call would cost seconds), unless ``wrapper`` is given:
    then a real subprocess runs that script, which the kill test uses to SIGKILL the load.
    """
    env = {"SALESPRED_HOME": str(tmp_path / "home"),
           "SALESPRED_MONGO_URI": mongo_server.uri.replace("/?", f"/{mongo.database}?")}
    if wrapper:
        return subprocess.run([sys.executable, "-c", wrapper, "seed", *args], capture_output=True, text=True,
                              env=dict(os.environ, **env), cwd=REPO, timeout=300, check=False)
    from salespred_assets.cli import main

    saved = {k: os.environ.get(k) for k in env}
    out, err, code = io.StringIO(), io.StringIO(), 0
    os.environ.update(env)
    argv, sys.argv = sys.argv, ["salespred", "seed", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(["salespred", "seed", *args], code, out.getvalue(), err.getvalue())


def errors(out: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


def snapshot(mongo: MongoResource) -> dict[str, list]:
    """The data set a load replaces, as comparable lists (without MongoDB's _id)."""
    db = mongo.db
    return {name: sorted(sorted((k, str(v)) for k, v in d.items() if k not in ("_id", "quarantined_at", "run_id"))
                         for d in db[name].find())
            for name in (OPPORTUNITIES, QUARANTINE, OPPORTUNITY_HISTORY, SELLERS)}


# ---- what is kept and what is rejected ----------------------------------------------------------------
def test_none_and_missing_values_are_kept_and_the_pipeline_reads_them(mongo, mongo_server, tmp_path, redis_resource,
                                                                       sqlite_url):
    frame = clean_export(600)
    frame.loc[0:59, "tipos"] = "None"          # "no competitor"-like category, written as text
    frame.loc[60:69, "tipos"] = "NA"
    frame.loc[70:79, "regiones"] = ""           # missing categorical value
    frame.loc[80:89, "cliente"] = ""            # a row without a client is a client of its own
    frame.loc[90:99, "acv"] = ""                # missing numbers stay NaN for the model
    frame.loc[100:109, "margen_ganancia"] = "null"
    frame.loc[110:119, "numero_vendedor"] = ""
    frame.loc[120, "acv"] = "12,5k"             # rejected: set aside, and the graph's reconciliations still hold
    out = run(mongo, mongo_server, tmp_path, "--csv", str(write(frame, tmp_path / "none.csv")))
    assert out.returncode == 0, out.stderr[-2000:]
    assert errors(out) == []
    db = mongo.db[OPPORTUNITIES]
    assert db.count_documents({}) == 599 and mongo.db[QUARANTINE].count_documents({}) == 1
    assert db.count_documents({"tipos": "None"}) == 60 and db.count_documents({"tipos": "NA"}) == 10
    assert db.count_documents({"regiones": {"$exists": False}}) == 10
    assert db.count_documents({"acv": {"$exists": False}}) == 10

    # The MongoDB read path keeps them all; the whole graph (features, training, scoring with explanations,
    # SQL, Redis) takes the missing values.
    checked = mongo.read_opportunities(DEFAULT_SCHEMA)
    assert len(checked.frame) == 599 and checked.quarantine.empty
    assert checked.frame["acv"].isna().sum() == 10 and checked.frame["regiones"].isna().sum() == 10
    from salespred_assets.core.features import build_features
    from salespred_assets.sql import tables, writer
    from salespred_tests.helpers import build_test_resources, materialize_all

    features = build_features(checked.frame, DEFAULT_SCHEMA)
    no_client = checked.frame["cliente"].isna().to_numpy()
    assert (features.loc[no_client, "client_prior_opportunities"] == 0).all()
    run_ = materialize_all(build_test_resources(mongo, redis_resource, sqlite_url, str(tmp_path / "storage")))
    assert run_.success  # with fact_opportunity_reconciles: the export's rejected row was never a document
    assert [e.check_name for e in run_.get_asset_check_evaluations() if not e.passed] == [
        "sellers_cover_opportunities"]  # warns: 10 rows have no seller
    import sqlalchemy as sa

    engine = sa.create_engine(sqlite_url)
    fact = writer.read_table(engine, tables.FACT_OPPORTUNITY)
    engine.dispose()
    assert len(fact) == 599
    assert fact["acv"].isna().sum() == 10 and (fact["tipos"] == "None").sum() == 60
    assert fact["probability"].notna().sum() == (fact["outcome"] == "open").sum()


def test_thirty_rejected_rows_refuse_the_load_then_go_to_quarantine_with_their_reasons(mongo, mongo_server,
                                                                                          tmp_path):
    frame = clean_export(501)
    bad = list(range(3, 501, 17))[:30]
    for k, i in enumerate(bad):
        frame.loc[i, "acv" if k % 3 == 0 else "fecha_cierre_oportunidad" if k % 3 == 1 else "etapas"] = (
            "12,5k" if k % 3 == 0 else "2021-13-45" if k % 3 == 1 else "")
    path = write(frame, tmp_path / "export.csv")
    out = run(mongo, mongo_server, tmp_path, "--csv", str(path))
    assert out.returncode == 2
    lines = errors(out)
    assert len(lines) == 1 and "30 of 501 rows rejected" in lines[0] and "nothing was written" in lines[0]
    assert "--max-rejected" in lines[0]
    assert "acv: not a finite number" in out.stdout and f"{bad[0] + 2}" in out.stdout  # reasons, with row numbers
    assert mongo.db[OPPORTUNITIES].count_documents({}) == 0 and mongo.db[QUARANTINE].count_documents({}) == 0

    out = run(mongo, mongo_server, tmp_path, "--csv", str(path), "--max-rejected", "0.1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert mongo.db[OPPORTUNITIES].count_documents({}) == 471
    stored = list(mongo.db[QUARANTINE].find())
    assert len(stored) == 30
    assert {d["source"]["row"] for d in stored} == {i + 2 for i in bad}
    assert {d["source"]["file"] for d in stored} == {"export.csv"}
    assert Counter(d["reason"] for d in stored) == {"acv: not a finite number": 10,
                                                     "fecha_cierre_oportunidad: not a YYYY-MM-DD date": 10,
                                                     "etapas: missing": 10}
    acv = next(d for d in stored if d["reason"].startswith("acv"))
    assert acv["document"]["acv"] == "12,5k" and set(acv) >= {"_id", "id", "reason", "document", "run_id"}

    # The same file again: nothing doubles, the quarantine is not repeated for rows already loaded.
    again = run(mongo, mongo_server, tmp_path, "--csv", str(path), "--max-rejected", "0.1")
    assert again.returncode == 0 and "471 rows were already loaded" in again.stdout
    assert mongo.db[OPPORTUNITIES].count_documents({}) == 471 and mongo.db[QUARANTINE].count_documents({}) == 30

    # Corrected and loaded again: the fixed rows get in, and leave the quarantine.
    for i in bad[:10]:
        frame.loc[i, ["acv", "fecha_cierre_oportunidad", "etapas"]] = ["1000", "2021-03-04", "Won"]
    fixed = run(mongo, mongo_server, tmp_path, "--csv", str(write(frame, path)), "--max-rejected", "0.1")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert mongo.db[OPPORTUNITIES].count_documents({}) == 481 and mongo.db[QUARANTINE].count_documents({}) == 20


def test_a_typo_in_the_schemas_stage_list_refuses_the_load_and_suggests_the_value(mongo, mongo_server, tmp_path):
    frame = clean_export(300).replace({"etapas": {"Won": "Closed Won", "Lost": "Closed Lost"}})
    schema = tmp_path / "schema.yaml"
    schema.write_text(textwrap.dedent(f"""\
        id: {ID}
        stage: {{field: etapas, won: [Closed Wonn], lost: [Closed Lost], open: [S1, S2, S3, S4, S5, S6]}}
        categorical: [unidad_negocio, tipos]
        numeric: [acv]
        dates: {{created: fecha_creacion_oportunidad, close: fecha_cierre_oportunidad}}
        """))
    out = run(mongo, mongo_server, tmp_path, "--csv", str(write(frame, tmp_path / "e.csv")), "--schema", str(schema))
    assert out.returncode == 2
    (line,) = errors(out)
    won = int((frame["etapas"] == "Closed Won").sum())
    assert f"'Closed Won' ({won:,} rows, close to 'Closed Wonn'" in line and str(schema) in line
    assert mongo.db[OPPORTUNITIES].count_documents({}) == 0


def test_a_duplicate_number_keeps_the_first_valid_row(mongo, mongo_server, tmp_path):
    frame = clean_export(50)
    number = frame.loc[10, ID]
    invalid_first = frame.loc[10].copy()
    invalid_first["fecha_creacion_oportunidad"] = ""     # a required value missing: never gets in
    later = frame.loc[10].copy()
    later["acv"] = "1"                                   # valid, but the number is taken
    frame = pd.concat([frame.iloc[:10], invalid_first.to_frame().T, frame.iloc[10:], later.to_frame().T],
                      ignore_index=True)
    out = run(mongo, mongo_server, tmp_path, "--csv", str(write(frame, tmp_path / "d.csv")), "--max-rejected", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    docs = list(mongo.db[OPPORTUNITIES].find({ID: number}))
    assert len(docs) == 1 and docs[0]["acv"] != 1 and docs[0]["fecha_creacion_oportunidad"]
    reasons = sorted((d["source"]["row"], d["reason"]) for d in mongo.db[QUARANTINE].find({"id": number}))
    assert reasons == [(12, "fecha_creacion_oportunidad: missing"), (len(frame) + 1, f"{ID}: duplicate")]


def test_a_text_column_declared_numeric_names_the_file_row_and_column(mongo, mongo_server, tmp_path):
    frame = clean_export(100)
    schema = tmp_path / "schema.yaml"
    schema.write_text(textwrap.dedent(f"""\
        id: {ID}
        stage: {{field: etapas, won: [Won], lost: [Lost], open: [S1, S2, S3, S4, S5, S6]}}
        categorical: [unidad_negocio]
        numeric: [acv, regiones]
        dates: {{created: fecha_creacion_oportunidad, close: fecha_cierre_oportunidad}}
        """))
    out = run(mongo, mongo_server, tmp_path, "--csv", str(write(frame, tmp_path / "t.csv")), "--schema", str(schema))
    assert out.returncode == 2
    (line,) = errors(out)
    assert "t.csv row 2, column 'regiones'" in line  # the one line names the file, the row and the column
    hint = next(line for line in out.stdout.splitlines() if "hint:" in line)
    assert "t.csv row 2, column 'regiones'" in hint and str(schema) in hint and "categorical" in hint
    assert mongo.db[OPPORTUNITIES].count_documents({}) == 0


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("empty.csv", b"", "is empty"),
    ("blank.csv", b"\n\n", "is empty"),
    ("header.csv", ",".join(DEFAULT_SCHEMA.fields).encode() + b"\n", "has a header but no rows"),
    ("binary.csv", b"numero_opportunidad,cliente\nOP-1,\x00\x01\x02\xff\n", ("is not UTF-8 text: byte 0x00 at row 2, "
                                                                            "column 'cliente'")),
    ("latin1.csv", "numero_opportunidad,cliente\nOP-1,Peñalver\n".encode("latin-1"),
     "is not UTF-8 text: byte 0xf1 at row 2, column 'cliente'"),
])
def test_empty_and_binary_files_get_one_line(mongo, mongo_server, tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    out = run(mongo, mongo_server, tmp_path, "--csv", str(path))
    assert out.returncode == 2
    (line,) = errors(out)
    assert expected in line and name in line


def test_twelve_and_a_half_k_is_a_rejected_row_not_a_traceback(mongo, mongo_server, tmp_path):
    frame = clean_export(200)
    frame.loc[7, "acv"] = "12,5k"
    out = run(mongo, mongo_server, tmp_path, "--csv", str(write(frame, tmp_path / "k.csv")))
    assert out.returncode == 0, out.stderr[-2000:]
    (doc,) = mongo.db[QUARANTINE].find()
    assert doc["reason"] == "acv: not a finite number" and {k: doc["source"][k] for k in ("file", "row")} == \
        {"file": "k.csv", "row": 9}
    assert mongo.db[OPPORTUNITIES].count_documents({}) == 199


# ---- all or nothing -----------------------------------------------------------------------------------
def _sellers(path: Path, bad_fourth: bool = False) -> Path:
    rows = [{"numero_vendedor": nv, "username": u, "password": f"pw-{u}-123", "first_name": f, "last_name": ln,
             "title": t} for nv, u, f, ln, t in synthetic.DEMO_SELLERS]
    if bad_fourth:
        rows[3]["password"] = ""
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_replace_with_a_bad_seller_writes_nothing(mongo, mongo_server, tmp_path):
    old = write(clean_export(120, seed=1), tmp_path / "old.csv")
    assert run(mongo, mongo_server, tmp_path, "--csv", str(old), "--sellers",
               str(_sellers(tmp_path / "s.csv"))).returncode == 0
    before = snapshot(mongo)
    new = write(clean_export(150, seed=2), tmp_path / "new.csv")
    out = run(mongo, mongo_server, tmp_path, "--csv", str(new), "--sellers", str(_sellers(tmp_path / "bad.csv", True)),
              "--replace")
    assert out.returncode == 2
    (line,) = errors(out)
    assert "bad.csv row 5" in line and "no password" in line and "nothing was written" in line
    assert snapshot(mongo) == before


def test_a_load_run_again_after_its_inserts_still_raises_the_counter(mongo, mongo_server, tmp_path):
    """Killed after its inserts, before its counter: run again, every row is already loaded, and the counter
    must still pass them, or the app's next capture would take a number the file holds."""
    path = write(clean_export(80, seed=4), tmp_path / "c.csv")
    assert run(mongo, mongo_server, tmp_path, "--csv", str(path)).returncode == 0
    top = max(int(str(d[ID])[3:]) for d in mongo.db[OPPORTUNITIES].find({}, {ID: 1}))
    mongo.db["counters"].delete_many({})  # as a load killed before its counter left it
    again = run(mongo, mongo_server, tmp_path, "--csv", str(path))
    assert again.returncode == 0, again.stderr[-2000:]
    assert mongo.next_value(loading.OPPORTUNITY_COUNTER) == top + 1


def test_a_seller_whose_username_another_holds_stops_an_append_before_anything(mongo, mongo_server, tmp_path):
    assert run(mongo, mongo_server, tmp_path, "--csv", str(write(clean_export(40, seed=5), tmp_path / "a.csv")),
               "--sellers", str(_sellers(tmp_path / "s.csv"))).returncode == 0
    before = snapshot(mongo)
    clash = pd.read_csv(tmp_path / "s.csv")
    clash.loc[2, "numero_vendedor"] = "NV-99"  # another seller number under a username already stored
    clash.to_csv(tmp_path / "clash.csv", index=False)
    out = run(mongo, mongo_server, tmp_path, "--csv", str(write(clean_export(60, seed=6), tmp_path / "b.csv")),
              "--sellers", str(tmp_path / "clash.csv"))
    assert out.returncode == 2
    (line,) = errors(out)
    assert "already used by seller" in line and "nothing was written" in line
    assert snapshot(mongo) == before


def test_a_file_loaded_again_replaces_only_its_own_quarantine(mongo, mongo_server, tmp_path):
    """Two exports with the same name in two folders: loading one again keeps the other's rejected rows."""
    for folder, seed in (("2024", 7), ("2025", 8)):
        frame = clean_export(40, seed=seed)
        frame[ID] = [f"OP-{folder}{i:04d}" for i in range(len(frame))]  # numbers of each year's own
        frame.loc[3, "acv"] = "12,5k"
        (tmp_path / folder).mkdir()
        assert run(mongo, mongo_server, tmp_path, "--csv", str(write(frame, tmp_path / folder / "opps.csv")),
                   "--max-rejected", "1").returncode == 0
    assert mongo.db[QUARANTINE].count_documents({"source.file": "opps.csv"}) == 2
    assert run(mongo, mongo_server, tmp_path, "--csv", str(tmp_path / "2025" / "opps.csv"),
               "--max-rejected", "1").returncode == 0
    paths = sorted(d["source"]["path"] for d in mongo.db[QUARANTINE].find({"source.file": "opps.csv"}))
    assert paths == [str((tmp_path / f / "opps.csv").resolve()) for f in ("2024", "2025")]


def test_synthetic_replace_swaps_in_a_whole_data_set(mongo, mongo_server, tmp_path):
    old = write(clean_export(120, seed=1), tmp_path / "old.csv")
    old_csv = clean_export(120, seed=1)
    old_csv.loc[3, "acv"] = "12,5k"
    assert run(mongo, mongo_server, tmp_path, "--csv", str(write(old_csv, old)), "--max-rejected", "1").returncode == 0
    out = run(mongo, mongo_server, tmp_path, "--synthetic", "250", "--seed", "4", "--as-of", "2026-11-01",
              "--sellers", str(_sellers(tmp_path / "bad.csv", True)), "--replace")
    assert out.returncode == 2 and mongo.db[OPPORTUNITIES].count_documents({}) == 119  # a bad seller: nothing
    out = run(mongo, mongo_server, tmp_path, "--synthetic", "250", "--seed", "4", "--as-of", "2026-11-01",
              "--sellers", str(_sellers(tmp_path / "s.csv")), "--replace")
    assert out.returncode == 0, out.stderr[-2000:]
    assert mongo.db[OPPORTUNITIES].count_documents({}) == 250 and mongo.db[QUARANTINE].count_documents({}) == 0
    assert mongo.db[SELLERS].count_documents({}) == 5 and "loaded 5 sellers" in out.stdout
    assert not [c for c in mongo.db.list_collection_names() if c.endswith(loading.STAGING)]
    assert {"numero_opportunidad_1", "cliente_1"} <= set(mongo.db[OPPORTUNITIES].index_information())


KILL_POINTS = ["staging-dropped", "opportunities-batch", "opportunities-staged", "staged", "marked",
               f"swapped-{OPPORTUNITIES}", f"swapped-{QUARANTINE}", f"swapped-{OPPORTUNITY_HISTORY}"]
KILLER = textwrap.dedent("""\
    import os, signal, sys
    from salespred_assets.operations import loading
    def checkpoint(name):
        if name == {point!r}:
            os.kill(os.getpid(), signal.SIGKILL)
    loading.checkpoint = checkpoint
    sys.argv = ["salespred", *sys.argv[1:]]
    from salespred_assets.cli import main
    main()
    """)


@pytest.mark.slow
def test_a_replace_killed_at_any_point_leaves_old_or_new_and_converges(mongo, mongo_server, tmp_path, reliability):
    """SIGKILL ``seed --csv --replace`` at each named point; each collection is then wholly old or wholly new,
    and the next ``seed`` finishes (or cleanly restarts) the load."""
    old_csv = write(clean_export(300, seed=1), tmp_path / "old.csv")
    sellers = _sellers(tmp_path / "sellers.csv")
    new_frame = clean_export(7_000, seed=2)  # more than one write batch, so a kill can land between two
    new_frame.loc[5, "acv"] = "12,5k"
    new_csv = write(new_frame, tmp_path / "new.csv")
    survived = []
    for point in KILL_POINTS:
        mongo.client.drop_database(mongo.database)
        assert run(mongo, mongo_server, tmp_path, "--csv", str(old_csv), "--sellers", str(sellers)).returncode == 0
        old = snapshot(mongo)
        out = run(mongo, mongo_server, tmp_path, "--csv", str(new_csv), "--sellers", str(sellers), "--replace",
                  wrapper=KILLER.format(point=point))
        assert out.returncode == -9, f"{point}: {out.returncode} {out.stderr[-1500:]}"
        after_kill = snapshot(mongo)
        assert sorted(d["username"] for d in mongo.db[SELLERS].find()) == sorted(u for _, u, *_ in
                                                                                 synthetic.DEMO_SELLERS)
        n_new = mongo.db[OPPORTUNITIES].count_documents({})
        assert n_new in (300, 6_999), f"{point}: {n_new} opportunities"
        # Before the marker the old set is live; once the swap has begun, the new one (finished by the next run).
        assert n_new == (6_999 if point.startswith("swapped-") else 300), f"{point}: {n_new} opportunities"
        if n_new == 300:
            assert after_kill[OPPORTUNITIES] == old[OPPORTUNITIES]
        assert mongo.db[QUARANTINE].count_documents({}) in (0, 1)
        # Any later seed finishes an interrupted swap; the same command run again gives the new data set.
        again = run(mongo, mongo_server, tmp_path, "--csv", str(new_csv), "--sellers", str(sellers), "--replace")
        assert again.returncode == 0, f"{point}: {again.stderr[-1500:]}"
        assert mongo.db[OPPORTUNITIES].count_documents({}) == 6_999
        assert [d["reason"] for d in mongo.db[QUARANTINE].find()] == ["acv: not a finite number"]
        assert not [c for c in mongo.db.list_collection_names() if c.endswith(loading.STAGING)]
        indexes = set(mongo.db[OPPORTUNITIES].index_information())
        assert {"numero_opportunidad_1", "cliente_1", "numero_vendedor_1"} <= indexes
        survived.append(point)
    reliability.record("Loading exports", "seed --csv --replace killed (SIGKILL) and run again",
                       kill_points=len(KILL_POINTS), survived=len(survived), points=", ".join(survived),
                       rows_new=len(new_frame), rows_old=300)
    assert survived == KILL_POINTS


# ---- figures ------------------------------------------------------------------------------------------
def test_figures_on_a_messy_generated_export(mongo, mongo_server, tmp_path, reliability):
    frame, expected = messy_export(3000)
    out = run(mongo, mongo_server, tmp_path, "--csv", str(write(frame, tmp_path / "messy.csv")),
              "--max-rejected", "0.05")
    assert out.returncode == 0, out.stderr[-2000:]
    got = Counter(d["reason"] for d in mongo.db[QUARANTINE].find())
    assert got == expected
    loaded = mongo.db[OPPORTUNITIES].count_documents({})
    assert loaded + sum(got.values()) == len(frame)
    kept_tokens = mongo.db[OPPORTUNITIES].count_documents({"$or": [{"tipos": {"$in": ["None", "NA", "null", "N/A"]}},
                                                                  {"lead_source": {"$in": ["None", "NA", "null",
                                                                                           "N/A"]}}]})
    assert kept_tokens == 40
    absent = {"missing categories kept": "industrias", "missing numbers kept": "margen_ganancia"}
    missing_kept = {k: mongo.db[OPPORTUNITIES].count_documents({f: {"$exists": False}}) for k, f in absent.items()}
    assert missing_kept == dict.fromkeys(absent, 20)  # rows apart from the rejected ones (messy_export picks each once)
    reliability.record("Loading exports", "a messy generated export (3,000 rows)", rows=len(frame), loaded=loaded,
                       quarantined=sum(got.values()), **{"None/NA/null/N/A categories kept": kept_tokens},
                       **missing_kept,
                       **{f"reason: {k}": v for k, v in sorted(got.items())})


def test_figures_on_the_reference_data(mongo, mongo_server, tmp_path, seed_csv, reliability):
    out = run(mongo, mongo_server, tmp_path, "--csv", str(seed_csv))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = len(pd.read_csv(seed_csv, dtype=str, keep_default_na=False))
    loaded = mongo.db[OPPORTUNITIES].count_documents({})
    reasons = Counter(d["reason"] for d in mongo.db[QUARANTINE].find())
    assert loaded + sum(reasons.values()) == rows
    reliability.record("Loading exports", f"the reference data ({seed_csv.name})", rows=rows, loaded=loaded,
                       quarantined=sum(reasons.values()), **{f"reason: {k}": v for k, v in sorted(reasons.items())})
