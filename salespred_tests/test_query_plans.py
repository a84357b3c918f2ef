"""Every query a check, a view (the dashboard), or the batch path runs, planned at 200,000 opportunities.

The reporting tables are filled as the assets fill them (``writer.write``: COPY on PostgreSQL, then the
statistics the writer refreshes in the same step), with 200,000 opportunities and two scorings of each in
the history. Each statement of ``sql.queries.catalogue`` (the very statements the code runs) is then
planned with ``EXPLAIN (FORMAT JSON)`` on PostgreSQL, and the test fails on:

- a nested loop whose inner side is not a lookup through a unique or primary-key index;
- a sequential scan on the inner side of a loop (a scan per row);

(a loop whose outer side is estimated at one row, such as the latest scoring time joined to every open
opportunity, runs its inner side once and is not a fault);
- an estimated total cost above the query's bound. A query that reads whole tables may cost at most
  ``SCAN_FACTOR`` times one sequential read of each table it reads (PostgreSQL's own formula for it: pages
  + ``cpu_tuple_cost`` per row); a per-batch lookup at most ``LOOKUP_COST`` per opportunity number it
  names. A plan that walks an index once per row, as the one this issue found, costs orders of magnitude
  more than either.

On MariaDB (through pyodbc), the same statements on the same data must run within ``MARIADB_MULTIPLE``
times their PostgreSQL time (both measured here, best of three; times under ``TIME_FLOOR_S`` count as that
floor, so that noise on millisecond lookups decides nothing). Both times go to RELIABILITY.md.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from salespred_assets.core import synthetic
from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.schema import DEFAULT_SCHEMA as S
from salespred_assets.registry import model_versions
from salespred_assets.sql import queries, tables, views, writer
from salespred_assets.sql.resource import make_engine
from salespred_tests import reporting_fixtures as rf
from salespred_tests.helpers import AS_OF

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPPORTUNITIES = 200_000
SCAN_FACTOR = 4.0
LOOKUP_COST = 25.0
MARIADB_MULTIPLE = 10.0
TIME_FLOOR_S = 0.02
LATEST, EARLIER = "v-latest", "v-earlier"


def _frames() -> dict[str, pd.DataFrame]:
    """The four tables' rows for 200,000 synthetic opportunities, predictions drawn at random (no model:
    plans depend on sizes and value distributions, not on what a forest says)."""
    docs = [d for chunk in synthetic.generate(OPPORTUNITIES, seed=5, as_of=AS_OF) for d in chunk]
    fact = validate(records_frame(docs, S), S).frame
    rng = np.random.default_rng(5)
    stage = fact[S.stage]
    outcome = np.where(stage.isin(S.won), "won", np.where(stage.isin(S.lost), "lost", "open"))
    is_open = outcome == "open"
    probability = np.where(is_open, rng.random(len(fact)), np.nan)
    score = pd.array(np.where(is_open, np.clip(np.round(probability * 100), 1, 99), 0).astype("int64"), dtype="Int64")
    score[~is_open] = pd.NA
    grade = np.where(~is_open, None, np.select([probability >= 0.75, probability >= 0.5, probability >= 0.25],
                                               ["A", "B", "C"], "D")).astype(object)
    fact = fact.assign(
        outcome=outcome, probability=probability, predicted_won=np.where(is_open, probability >= 0.5, outcome == "won"),
        score=score, grade=grade, factors_for="[]", factors_against="[]",
        prediction_basis=np.where(is_open, "model", "outcome"), model_version=LATEST,
        scored_at=pd.Timestamp(rf.SCORED_AT))
    latest = fact.rename(columns={S.id: "opportunity_id"})[rf.HISTORY_COLUMNS]
    earlier = latest.assign(model_version=EARLIER, scored_at=pd.Timestamp(rf.SCORED_AT - dt.timedelta(days=1)))
    registry = model_versions.frame([
        {"_id": v, "version": v, "trained_at": (rf.SCORED_AT - dt.timedelta(days=3 - n)).isoformat(),
         "current": v == LATEST, "status": "promoted" if v == LATEST else "retired",
         "history": [{"event": "trained", "at": rf.SCORED_AT}, {"event": "promoted", "at": rf.SCORED_AT}],
         "info": {"params": {"n_estimators": 30}, "rows": 1000, "threshold": 0.5,
                  "metrics": {"roc_auc": 0.8, "accuracy": 0.75, "brier": 0.18}}}
        for n, v in enumerate((EARLIER, LATEST))])
    return {"fact": fact, "earlier": earlier, "latest": latest, "registry": registry}


def _fill(engine: sa.Engine, frames: dict[str, pd.DataFrame]) -> None:
    """As the assets write: the writer's one path, the views as ``reporting_views`` creates them."""
    rf.reset(engine)
    t = tables.all_tables(sa.MetaData(), S)
    writer.write(engine, t[tables.FACT_OPPORTUNITY], frames["fact"])
    writer.write(engine, t[tables.DIM_SELLER], rf.sellers_frame())
    writer.write(engine, t[tables.DIM_MODEL_VERSION], frames["registry"])
    for scoring in ("earlier", "latest"):
        writer.write(engine, t[tables.FACT_PREDICTION_HISTORY], frames[scoring], mode="append")
    for kind, table in tables.CODE_DIMENSIONS.items():  # every code the fact uses, named
        codes = sorted(set(frames["fact"][kind].dropna().astype(str))) if kind in frames["fact"] else ["X"]
        dim = pd.DataFrame({"code": codes, "name_es": codes, "name_en": codes})
        if kind == "territorios":
            dim["region"] = None
        writer.write(engine, t[table], dim)
        writer.refresh_statistics(engine, t[table])  # too small for the write to refresh them; autovacuum would
    assert views.refresh(engine, S) == list(views.NAMES)


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return _frames()


@pytest.fixture(scope="module")
def postgres(postgres_url: str, frames) -> Iterator[sa.Engine]:
    engine = make_engine(postgres_url)
    _fill(engine, frames)
    yield engine
    rf.reset(engine)


def _catalogue(frames: dict[str, pd.DataFrame]) -> dict[str, sa.Executable]:
    ids = frames["fact"][S.id].iloc[:writer.IN_CHUNK].astype(str).tolist()  # one chunk, as the batch path sends
    return queries.catalogue(S, ids, LATEST, rf.SCORED_AT)


def _walk(node: dict[str, Any], parent: str | None = None) -> Iterator[tuple[dict[str, Any], str | None]]:
    yield node, parent
    for child in node.get("Plans", []):
        yield from _walk(child, node["Node Type"])


def _scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The scans under ``node`` (itself included), through Materialize, Memoize and the like."""
    for child, _ in _walk(node):
        if "Relation Name" in child:
            yield child


def _unique_indexes(conn: sa.Connection) -> set[str]:
    rows = conn.execute(sa.text("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                "WHERE i.indisunique OR i.indisprimary"))
    return {r[0] for r in rows}


def _table_scan_cost(conn: sa.Connection, relations: set[str]) -> float:
    """One sequential read of each table, by PostgreSQL's cost formula and its current statistics."""
    cpu_tuple = float(conn.execute(sa.text("SHOW cpu_tuple_cost")).scalar_one())
    seq_page = float(conn.execute(sa.text("SHOW seq_page_cost")).scalar_one())
    rows = conn.execute(sa.text("SELECT relpages, reltuples FROM pg_class WHERE relname = ANY(:names) "
                                "AND relkind = 'r'"), {"names": sorted(relations)})
    return sum(seq_page * pages + cpu_tuple * max(tuples, 0) for pages, tuples in rows)


def plan_faults(plan: dict[str, Any], unique: set[str]) -> list[str]:
    """What is wrong with a plan: nested loops whose inner side is not a unique-index lookup, per-row scans."""
    faults = []
    for node, _ in _walk(plan):
        if node["Node Type"] != "Nested Loop":
            continue
        outer = [c for c in node.get("Plans", []) if c.get("Parent Relationship") == "Outer"]
        if outer and all(c.get("Plan Rows", 2) <= 1 for c in outer):
            continue  # one outer row (a latest-scoring aggregate): the inner side runs once, not per row
        inner = [c for c in node.get("Plans", []) if c.get("Parent Relationship") == "Inner"]
        for side in inner:
            for scan in _scans(side):
                kind, index = scan["Node Type"], scan.get("Index Name")
                if kind in ("Seq Scan", "Parallel Seq Scan"):
                    faults.append(f"a sequential scan of {scan['Relation Name']} per row (inner side of a loop)")
                elif index not in unique:
                    faults.append(f"a nested loop whose inner side is {kind} on {scan['Relation Name']} "
                                  f"through {index or 'no index'}, not a unique or primary-key lookup")
            if not list(_scans(side)):
                faults.append(f"a nested loop whose inner side is {side['Node Type']}, not a key lookup")
    return faults


def _explain(conn: sa.Connection, statement: sa.Executable) -> dict[str, Any]:
    compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    raw = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar_one()
    return (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]


def _best_time(engine: sa.Engine, statement: sa.Executable) -> float:
    best = float("inf")
    for _ in range(3):
        with engine.connect() as conn:  # rolled back: the upsert's delete changes nothing
            started = time.perf_counter()
            result = conn.execute(statement)
            if result.returns_rows:
                result.fetchall()
            best = min(best, time.perf_counter() - started)
            conn.rollback()
    return best


def test_every_query_plan_at_scale_on_postgresql(postgres, frames):
    catalogue = _catalogue(frames)
    bad: dict[str, list[str]] = {}
    costs = {}
    with postgres.connect() as conn:
        unique = _unique_indexes(conn)
        for name, statement in catalogue.items():
            plan = _explain(conn, statement)
            faults = plan_faults(plan, unique)
            relations = {scan["Relation Name"] for scan in _scans(plan)}
            per_batch = name.startswith("batch") or "batch rows" in name
            bound = (LOOKUP_COST * writer.IN_CHUNK if per_batch
                     else SCAN_FACTOR * _table_scan_cost(conn, relations))
            cost = float(plan["Total Cost"])
            costs[name] = (cost, bound)
            if cost > bound:
                faults.append(f"estimated cost {cost:,.0f} above its bound {bound:,.0f}")
            if faults:
                bad[name] = faults
    assert not bad, "\n".join(f"{name}: {'; '.join(f)}" for name, f in bad.items())
    assert len(costs) >= 16  # six views, the checks' statements and the batch path's


def test_a_quadratic_plan_is_caught(postgres):
    """The rule catches the kind of plan this issue found: a loop probing a (model_version, scored_at) index
    that every row of a full refresh shares (forced here: hash and merge joins off)."""
    md = sa.MetaData()
    fact, history = tables.fact_opportunity(md, S), tables.fact_prediction_history(md)
    joined = fact.join(history, sa.and_(history.c.model_version == fact.c.model_version,
                                        history.c.scored_at == fact.c.scored_at))
    with postgres.connect() as conn:
        unique = _unique_indexes(conn)
        conn.exec_driver_sql("CREATE INDEX ix_plans_test_run ON fact_prediction_history (model_version, scored_at)")
        for setting in ("enable_hashjoin", "enable_mergejoin", "enable_material"):
            conn.exec_driver_sql(f"SET LOCAL {setting} = off")
        plan = _explain(conn, sa.select(sa.func.count()).select_from(joined))
        conn.rollback()  # the index goes with the transaction
    faults = plan_faults(plan, unique)
    assert any("not a unique or primary-key lookup" in f or "per row" in f for f in faults), json.dumps(plan)[:2000]


def test_the_same_queries_on_mariadb_within_a_multiple_of_postgresql(postgres, mariadb_url, frames, reliability):
    mariadb = make_engine(mariadb_url)
    _fill(mariadb, frames)
    catalogue = _catalogue(frames)
    times = {name: (_best_time(postgres, statement), _best_time(mariadb, statement))
             for name, statement in catalogue.items()}
    # The views over open rows read MariaDB's narrow index (declared for MariaDB only), not the whole rows.
    uses = {}
    with mariadb.connect() as conn:
        for name in ("rpt_expected_by_region", "rpt_expected_by_close_month", "rpt_seller_stage_matrix"):
            compiled = views.read_statement(name).compile(dialect=conn.dialect)
            keys = {row._mapping["table"]: row._mapping["key"] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}")}
            uses[name] = keys.get(tables.FACT_OPPORTUNITY)
        assert tables.OPEN_ROWS_INDEX not in {i["name"] for i in sa.inspect(postgres).get_indexes(
            tables.FACT_OPPORTUNITY)}
    rf.reset(mariadb)
    assert set(uses.values()) == {tables.OPEN_ROWS_INDEX}, uses
    ratios = {name: maria / max(pg, TIME_FLOOR_S) for name, (pg, maria) in times.items()}
    worst = max(ratios, key=lambda n: ratios[n])
    reliability.record("Load", "Reporting queries at 200,000 opportunities, MariaDB against PostgreSQL",
                       opportunities=OPPORTUNITIES, queries=len(times),
                       postgresql_total_ms=round(1000 * sum(p for p, _ in times.values()), 1),
                       mariadb_total_ms=round(1000 * sum(m for _, m in times.values()), 1),
                       allowed_multiple=MARIADB_MULTIPLE, worst_ratio=round(ratios[worst], 2), worst_query=worst,
                       worst_query_ms=f"{1000 * times[worst][0]:.0f} / {1000 * times[worst][1]:.0f}")
    slow = {name: times[name] for name, ratio in ratios.items() if ratio > MARIADB_MULTIPLE}
    assert not slow, "\n".join(f"{n}: PostgreSQL {p * 1000:.0f} ms, MariaDB {m * 1000:.0f} ms" for n, (p, m) in
                               slow.items())
