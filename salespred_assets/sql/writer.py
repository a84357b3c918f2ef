"""Idempotent, transactional table writes that are fast on every dialect.

A write deletes its window (the whole table, a partition, or the keys it carries) and inserts the new
rows in one transaction: a failure rolls back to the previous rows, and re-running never duplicates.
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

from salespred_assets.errors import SalespredError

BATCH_ROWS = 5_000
IN_CHUNK = 900  # below SQLite's and SQL Server's bound-parameter limits


def ensure_table(engine: Engine, table: sa.Table) -> None:
    """Create the table (and its indexes) if missing; rebuild it if its columns changed."""
    inspector = sa.inspect(engine)
    if inspector.has_table(table.name):
        existing = {c["name"] for c in inspector.get_columns(table.name)}
        if existing == {c.name for c in table.columns}:
            return
        with engine.begin() as conn:
            table.drop(conn)
    table.create(engine, checkfirst=True)


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
            arr = np.array(s.astype("int64").tolist(), dtype=object)
        elif pd.api.types.is_float_dtype(s):
            vals = s.to_numpy(dtype="float64")
            arr = np.array([None if np.isnan(v) else float(v) for v in vals], dtype=object)
        else:
            arr = s.astype(object).where(s.notna(), None).to_numpy()
        out_cols.append(arr)
    return list(zip(*out_cols)) if out_cols else []


def _copy_postgres(conn: Connection, table: sa.Table, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    buf = io.StringIO()
    data = frame[list(columns)].copy()
    for col in columns:
        if pd.api.types.is_datetime64_any_dtype(data[col]):
            data[col] = data[col].map(lambda v: v.isoformat() if pd.notna(v) else None)
    data.to_csv(buf, index=False, header=False, na_rep="\\N", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    cols = ", ".join(conn.dialect.identifier_preparer.quote(c) for c in columns)
    name = conn.dialect.identifier_preparer.format_table(table)
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        with cur.copy(f"COPY {name} ({cols}) FROM STDIN WITH (FORMAT csv, NULL '\\N')") as copy:
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
        conn.execute(stmt, [dict(zip(columns, r)) for r in rows])
    return len(frame)


def replace_rows(engine: Engine, table: sa.Table, frame: pd.DataFrame,
                 where: sa.ColumnElement[bool] | None = None) -> dict[str, int]:
    """Delete the window (``where``, or everything), insert ``frame``; one transaction."""
    with engine.begin() as conn:
        stmt = table.delete() if where is None else table.delete().where(where)
        deleted = conn.execute(stmt).rowcount
        inserted = insert_frame(conn, table, frame)
    return {"deleted": max(int(deleted or 0), 0), "inserted": inserted}


def upsert_rows(engine: Engine, table: sa.Table, frame: pd.DataFrame, key: str) -> dict[str, int]:
    """Replace the rows whose ``key`` the frame carries, leave every other row untouched; one transaction."""
    keys = frame[key].astype(str).tolist()
    with engine.begin() as conn:
        deleted = 0
        for chunk in _chunks(keys, IN_CHUNK):
            deleted += conn.execute(table.delete().where(table.c[key].in_(chunk))).rowcount or 0
        inserted = insert_frame(conn, table, frame)
    return {"deleted": int(deleted), "inserted": inserted}


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
