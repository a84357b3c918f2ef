"""Idempotent, transactional table writes that are fast on every dialect.

A write deletes its window (the whole table, a partition, or the keys it carries) and inserts the new
rows in one transaction: a failure rolls back to the previous rows, and re-running never duplicates.
An append (the prediction history) inserts only the rows whose key the table does not hold yet.
PostgreSQL loads with ``COPY``; the others with batched ``executemany`` through bound parameters.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from salespred_assets.core.schema import DEFAULT_SCHEMA, DatasetSchema
from salespred_assets.errors import SalespredError
from salespred_assets.sql import tables, transaction, views

BATCH_ROWS = 5_000
IN_CHUNK = 900  # below SQLite's and SQL Server's bound-parameter limits


WRITE_MODES = ("replace", "upsert", "append")


def ensure_table(engine: Engine, table: sa.Table, schema: DatasetSchema | None = None) -> dict[str, Any]:
    """Create the table (and its indexes) if missing; rebuild it if its columns changed.

    A rebuild drops the reporting views that read the table first and recreates them afterwards, in
    the same transaction where the dialect allows (views whose columns are gone are left for the
    ``reporting_views`` asset). An append-only table (the history) is never dropped: a change of its
    columns is an error to migrate by hand. ``schema`` is the export's schema the views follow
    (the fact table carries its own).
    """
    inspector = sa.inspect(engine)
    if not inspector.has_table(table.name):
        table.create(engine, checkfirst=True)
        return {"table": "created"}
    columns = inspector.get_columns(table.name)
    existing = {c["name"] for c in columns}
    wanted = {c.name for c in table.columns}
    if existing == wanted:
        # Columns that became nullable (a closed opportunity's empty probability): relaxing NOT NULL loses no
        # row, so it is migrated in place, even on an append-only table.
        relax = [table.c[c["name"]] for c in columns if not c.get("nullable", True) and table.c[c["name"]].nullable
                 and not table.c[c["name"]].primary_key]
        with transaction.begin(engine) as conn:
            if relax:
                _allow_nulls(conn, table, relax)
            for index in table.indexes:  # indexes declared since the table was created
                index.create(conn, checkfirst=True)
            _drop_retired_indexes(conn, table, table.info.get("schema") or schema or DEFAULT_SCHEMA)
        return {"table": "kept", "columns_made_nullable": [c.name for c in relax]}
    if table.info.get("append_only"):
        raise SalespredError(
            f"{table.name} is append-only and its columns changed (database: {sorted(existing)}; expected: "
            f"{sorted(wanted)}); it is never dropped automatically: migrate it with ALTER TABLE or rename it")
    schema = table.info.get("schema") or schema or DEFAULT_SCHEMA
    with transaction.begin(engine) as conn:
        dependent = sorted(views.existing(conn) & set(views.dependents(table.name)))
        views.drop(conn, dependent)
        table.drop(conn)
        table.create(conn)
        skipped = views.create(conn, schema, dependent) if dependent else {}
    return {"table": "rebuilt", "views_recreated": [v for v in dependent if v not in skipped],
            "views_left_out": sorted(skipped)}


def _drop_retired_indexes(conn: Connection, table: sa.Table, schema: DatasetSchema) -> None:
    """Drop the indexes an earlier release created and this one retired (``tables.retired_indexes``); an index
    an operator added under another name (one a Power BI report needs, say) is left alone."""
    declared = {str(index.name) for index in table.indexes}
    retired = tables.retired_indexes(table.name, schema) - declared
    for found in sa.inspect(conn).get_indexes(table.name):
        name = str(found["name"])
        if name in retired:
            # On a stand-in of the table (MariaDB's and SQL Server's DROP INDEX name it), so that the
            # declared table's indexes stay as declared.
            stand_in = sa.Table(table.name, sa.MetaData(), sa.Column(found["column_names"][0] or "_", sa.Integer))
            conn.execute(sa.schema.DropIndex(sa.Index(name, stand_in.c[0])))


def _allow_nulls(conn: Connection, table: sa.Table, columns: list[sa.Column]) -> None:
    """Drop NOT NULL from ``columns`` of an existing table, keeping every row."""
    prep = conn.dialect.identifier_preparer
    name = prep.quote(table.name)
    dialect = conn.dialect.name
    if dialect == "sqlite":  # no ALTER COLUMN: copy into a new table of the declared shape, in this transaction
        old = f"{table.name}__old"
        conn.execute(sa.text(f"ALTER TABLE {name} RENAME TO {prep.quote(old)}"))
        for index in table.indexes:
            conn.execute(sa.text(f"DROP INDEX IF EXISTS {prep.quote(str(index.name))}"))
        table.create(conn)
        cols = ", ".join(prep.quote(c.name) for c in table.columns)
        conn.execute(sa.text(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {prep.quote(old)}"))
        conn.execute(sa.text(f"DROP TABLE {prep.quote(old)}"))
        return
    for column in columns:
        kind = column.type.compile(dialect=conn.dialect)
        if dialect == "postgresql":
            statement = f"ALTER TABLE {name} ALTER COLUMN {prep.quote(column.name)} DROP NOT NULL"
        elif dialect in ("mysql", "mariadb"):
            statement = f"ALTER TABLE {name} MODIFY {prep.quote(column.name)} {kind} NULL"
        else:  # SQL Server and the rest of the standard
            statement = f"ALTER TABLE {name} ALTER COLUMN {prep.quote(column.name)} {kind} NULL"
        conn.execute(sa.text(statement))


def _clean_records(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple]:
    data = frame[list(columns)]
    out_cols = []
    for col in columns:
        s = data[col]
        if pd.api.types.is_datetime64_any_dtype(s):
            arr = s.astype(object).where(s.notna(), None).to_numpy()
            arr = np.array([v.to_pydatetime() if v is not None else None for v in arr], dtype=object)
        elif pd.api.types.is_bool_dtype(s):
            arr = s.astype(object).to_numpy()
            arr = np.array([bool(v) for v in arr], dtype=object)
        elif pd.api.types.is_integer_dtype(s):
            arr = np.array([None if pd.isna(v) else int(v) for v in s.tolist()], dtype=object)
        elif pd.api.types.is_float_dtype(s):
            vals = s.to_numpy(dtype="float64")
            arr = np.array([None if np.isnan(v) else float(v) for v in vals], dtype=object)
        else:
            arr = s.astype(object).where(s.notna(), None).to_numpy()
        out_cols.append(arr)
    return list(zip(*out_cols, strict=True)) if out_cols else []


def _iso_text(values: pd.Series) -> np.ndarray:
    """Datetimes as ISO 8601 text for COPY (UTC offset for tz-aware ones); missing values stay missing."""
    tz = getattr(values.dtype, "tz", None)
    raw = (values.dt.tz_convert("UTC").dt.tz_localize(None) if tz is not None else values).to_numpy("datetime64[us]")
    text = np.datetime_as_string(raw, unit="us").astype(object)
    if tz is not None:
        text = text + "+00:00"
    text[np.isnat(raw)] = None
    return text


def _copy_postgres(conn: Connection, table: sa.Table, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    buf = io.StringIO()
    data = frame[list(columns)]
    dates = [c for c in columns if pd.api.types.is_datetime64_any_dtype(data[c])]
    if dates:
        # ISO text formatted by NumPy in C: pandas formats timestamps (above all tz-aware ones) one by one.
        data = data.assign(**{c: _iso_text(data[c]) for c in dates})
    data.to_csv(buf, index=False, header=False, na_rep="\\N", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    cols = ", ".join(conn.dialect.identifier_preparer.quote(c) for c in columns)
    name = conn.dialect.identifier_preparer.format_table(table)
    raw = conn.connection.driver_connection
    assert raw is not None  # an open connection has its driver's connection
    with raw.cursor() as cur, cur.copy(f"COPY {name} ({cols}) FROM STDIN WITH (FORMAT csv, NULL '\\N')") as copy:
        view = buf.getvalue()
        step = 8 << 20
        for start in range(0, len(view), step):
            copy.write(view[start:start + step])


def insert_frame(conn: Connection, table: sa.Table, frame: pd.DataFrame) -> int:
    if frame.empty:
        return 0
    columns = [c.name for c in table.columns if c.name in frame.columns]
    missing = [c.name for c in table.columns if c.name not in frame.columns and not c.nullable]
    if missing:
        raise SalespredError(f"cannot write {table.name}: the frame lacks required columns {missing}")
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        _copy_postgres(conn, table, frame, columns)
        return len(frame)
    stmt = table.insert()
    for start in range(0, len(frame), BATCH_ROWS):
        rows = _clean_records(frame.iloc[start:start + BATCH_ROWS], columns)
        conn.execute(stmt, [dict(zip(columns, r, strict=True)) for r in rows])
    return len(frame)


def write(engine: Engine, table: sa.Table, frame: pd.DataFrame, mode: str = "replace",
          key: Sequence[str] | str | None = None, where: sa.ColumnElement[bool] | None = None,
          schema: DatasetSchema | None = None) -> dict[str, Any]:
    """The one write path: ensure the table, then replace, upsert or append ``frame`` in one transaction.

    ``key`` defaults to the table's primary key (upsert uses its first column).
    """
    if mode not in WRITE_MODES:
        raise SalespredError(f"unknown write mode {mode!r} for {table.name}; use one of {', '.join(WRITE_MODES)}")
    ddl = ensure_table(engine, table, schema)
    keys = [key] if isinstance(key, str) else list(key or [c.name for c in table.primary_key.columns])
    driver_error = getattr(engine.dialect.dbapi, "Error", sa.exc.SQLAlchemyError)
    try:
        if mode == "upsert":
            result = upsert_rows(engine, table, frame, key=keys[0])
        elif mode == "append":
            result = append_rows(engine, table, frame, key=keys)
        else:
            result = replace_rows(engine, table, frame, where=where)
    except (sa.exc.SQLAlchemyError, driver_error) as exc:  # COPY raises the driver's own errors
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        raise WriteFailed(f"writing {len(frame)} rows to {table.name} ({mode}, {engine.dialect.name}) failed and was "
                          f"rolled back; the table keeps its previous rows: {detail}") from exc
    if result["inserted"] + result["deleted"] >= STATISTICS_ROWS:
        refresh_statistics(engine, table)
        result["statistics_refreshed"] = 1
    return {**result, **ddl}


# A write that changes at least this many rows refreshes the table's planner statistics at once. A table
# filled in bulk has none until autovacuum's analyze gets to it, and meanwhile PostgreSQL plans joins on it
# as if it were tiny: the check that joins the two fact tables walked a whole index once per row.
STATISTICS_ROWS = 10_000


def statistics_statement(dialect_name: str, quoted_table: str) -> str:
    """The statement that refreshes one table's planner statistics on a dialect."""
    statements = {"postgresql": "ANALYZE {}", "mysql": "ANALYZE TABLE {}", "mariadb": "ANALYZE TABLE {}",
                  "mssql": "UPDATE STATISTICS {}", "sqlite": "ANALYZE {}"}
    if dialect_name not in statements:
        raise SalespredError(f"no statistics statement for the {dialect_name} dialect")
    return statements[dialect_name].format(quoted_table)


def refresh_statistics(engine: Engine, table: sa.Table) -> None:
    """Refresh ``table``'s statistics after its write committed (MariaDB's ANALYZE TABLE commits implicitly)."""
    name = engine.dialect.identifier_preparer.quote(table.name)
    with engine.connect() as conn:
        result = conn.exec_driver_sql(statistics_statement(engine.dialect.name, name))
        if result.returns_rows:  # MariaDB answers with a status table; read it so the connection is free
            result.fetchall()
        conn.commit()


class WriteFailed(SalespredError):
    """A table write failed; its transaction rolled back, so the table holds what it held before."""


def replace_rows(engine: Engine, table: sa.Table, frame: pd.DataFrame,
                 where: sa.ColumnElement[bool] | None = None) -> dict[str, int]:
    """Delete the window (``where``, or everything), insert ``frame``; one transaction."""
    with transaction.begin(engine) as conn:
        stmt = table.delete() if where is None else table.delete().where(where)
        deleted = conn.execute(stmt).rowcount
        inserted = insert_frame(conn, table, frame)
    return {"deleted": max(int(deleted or 0), 0), "inserted": inserted}


def upsert_rows(engine: Engine, table: sa.Table, frame: pd.DataFrame, key: str) -> dict[str, int]:
    """Replace the rows whose ``key`` the frame carries, leave every other row untouched; one transaction."""
    keys = frame[key].astype(str).tolist()
    with transaction.begin(engine) as conn:
        deleted = 0
        for chunk in _chunks(keys, IN_CHUNK):
            deleted += conn.execute(upsert_delete_statement(table, key, chunk)).rowcount or 0
        inserted = insert_frame(conn, table, frame)
    return {"deleted": int(deleted), "inserted": inserted}


def upsert_delete_statement(table: sa.Table, key: str, ids: Sequence[str]) -> sa.Delete:
    """The upsert's first half: delete the rows of ``ids`` (a key lookup each)."""
    return table.delete().where(table.c[key].in_(list(ids)))


def append_rows(engine: Engine, table: sa.Table, frame: pd.DataFrame, key: Sequence[str]) -> dict[str, int]:
    """Insert the rows whose ``key`` the table does not hold yet; never update or delete; one transaction.

    The key's first column varies within a batch (the opportunity), the others identify the batch
    (model version, scoring time): existing keys are looked up per batch, in chunks.
    """
    fresh = frame.drop_duplicates(subset=list(key))
    with transaction.begin(engine) as conn:
        held = _held_keys(conn, table, fresh, key)
        if held:
            ids = fresh[key[0]].astype(str)
            batch = (list(zip(*[_key_values(fresh[c]) for c in key[1:]], strict=True)) if len(key) > 1
                     else [()] * len(fresh))
            mask = [(b, i) not in held for b, i in zip(batch, ids, strict=True)]
            fresh = fresh[mask]
        inserted = insert_frame(conn, table, fresh)
    return {"deleted": 0, "inserted": inserted, "skipped": len(frame) - inserted}


def _key_values(series: pd.Series) -> list[Any]:
    if pd.api.types.is_datetime64_any_dtype(series):
        if series.dt.tz is not None:
            series = series.dt.tz_convert("UTC")
        return [v.to_pydatetime() for v in series]
    return series.astype(str).tolist()


def _held_keys(conn: Connection, table: sa.Table, frame: pd.DataFrame, key: Sequence[str]) -> set[tuple]:
    """(batch values, id) pairs of ``frame`` already in ``table``."""
    if frame.empty:
        return set()
    first, rest = key[0], list(key[1:])
    ids = frame[first].astype(str)
    groups: Iterable[tuple[Any, Any]] = [((), frame.index)]
    if rest:
        batches = pd.DataFrame({c: _key_values(frame[c]) for c in rest}, index=frame.index)
        groups = batches.groupby(rest, sort=False).groups.items()
    held: set[tuple] = set()
    for values, index in groups:
        values = values if isinstance(values, tuple) else (values,)
        values = tuple(v.to_pydatetime() if isinstance(v, pd.Timestamp) else v for v in values)
        for chunk in _chunks(ids.loc[index].tolist(), IN_CHUNK):
            stmt = held_keys_statement(table, key, values, chunk)
            held.update((values, str(i)) for i in conn.execute(stmt).scalars())
    return held


def held_keys_statement(table: sa.Table, key: Sequence[str], batch: Sequence[Any], ids: Sequence[str]) -> sa.Select:
    """Which of ``ids`` the table holds for the batch values (``key[1:]`` = ``batch``); bound parameters only."""
    return sa.select(table.c[key[0]]).where(*[table.c[c] == v for c, v in zip(key[1:], batch, strict=True)],
                                            table.c[key[0]].in_(ids))


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def read_table(engine: Engine, name: str) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql_table(name, conn)


def count_rows(engine: Engine, name: str) -> int:
    table = sa.table(name)
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
