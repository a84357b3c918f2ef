"""A CRM export (CSV) read into the untyped frame :func:`~salespred_assets.core.documents.validate` checks.

Each column is read by its declared type, never guessed: a categorical value is kept as written (``None``,
``NA`` and ``null`` are categories; only an empty cell is missing), a number column treats an empty cell or a
null token as missing and keeps any text it cannot read as a number (``12,5k``) so that validation rejects
that row with its reason. Every row keeps its row number (the header is row 1, as a spreadsheet numbers it).
Nothing here touches a database.
"""

from __future__ import annotations

import csv
import difflib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from salespred_assets.core.documents import QUARANTINE_COLUMNS, SOURCE_ID, Validated, validate
from salespred_assets.core.schema import DatasetSchema
from salespred_assets.errors import SalespredError

# Tokens a number or date column reads as missing (pandas' defaults); a text column reads only "" as missing.
NULL_TOKENS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                         "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
FIRST_ROW = 2  # the header is row 1
EXAMPLES = 5


@dataclass
class ExportCheck:
    """An export validated row by row: what would be written, and what set aside with its reasons."""

    name: str                                  # the file's name, as quarantine documents cite it
    id_field: str
    rows: int
    documents: list[dict[str, Any]]            # valid rows, in the export's own field names and types
    document_rows: list[int]                   # the row number of each document
    quarantine: pd.DataFrame                   # QUARANTINE_COLUMNS + "source" ({"file", "path", "row"})
    hints: list[str] = field(default_factory=list)
    path: str = ""                             # the file's resolved path: which load set a row aside

    @property
    def rejected(self) -> int:
        return len(self.quarantine)

    def reasons(self) -> list[tuple[str, int, list[int]]]:
        """(reason, rows, example row numbers), most frequent first; a row with two reasons counts in both."""
        rows: dict[str, list[int]] = {}
        for reason, source in zip(self.quarantine["reason"], self.quarantine["source"], strict=True):
            for part in str(reason).split(";"):
                rows.setdefault(part.strip(), []).append(int(source["row"]))
        return sorted(((r, len(v), v[:EXAMPLES]) for r, v in rows.items()), key=lambda t: (-t[1], t[0]))

    def set_aside(self, positions: list[int], reason: str) -> None:
        """Move valid documents to the quarantine with ``reason`` (e.g. their number is already loaded)."""
        if not positions:
            return
        moved = pd.DataFrame({
            SOURCE_ID: [None] * len(positions),
            "id": [str(self.documents[i][self.id_field])[:200] for i in positions],
            "reason": reason,
            "document": [self.documents[i] for i in positions],
            "source": [{"file": self.name, "path": self.path, "row": self.document_rows[i]} for i in positions],
        })
        gone = set(positions)
        self.documents = [d for i, d in enumerate(self.documents) if i not in gone]
        self.document_rows = [r for i, r in enumerate(self.document_rows) if i not in gone]
        self.quarantine = pd.concat([self.quarantine, moved], ignore_index=True) if len(self.quarantine) else moved


def read_text(path: Path) -> str:
    """The file as text; a one-line error naming the file, row and column when it is empty or not UTF-8 text."""
    data = path.read_bytes()
    if not data.strip():
        raise SalespredError(f"{path} is empty: a CRM export needs a header row and at least one row of data")
    bad = data.find(b"\x00")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = exc.start if bad < 0 else min(bad, exc.start)
    if bad >= 0:
        prefix = data[:bad].decode("utf-8", errors="replace")
        header = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").lstrip("\ufeff").strip("\r")
        row = prefix.count("\n") + 1
        column_index = prefix.rsplit("\n", 1)[-1].count(",")
        names = next(csv.reader([header]), [])
        column = names[column_index] if column_index < len(names) else f"#{column_index + 1}"
        raise SalespredError(f"{path} is not UTF-8 text: byte 0x{data[bad]:02x} at row {row}, column {column!r} "
                             "(a binary file, or another encoding); save the export as CSV UTF-8")
    return text


def read_export(path: str | Path, schema: DatasetSchema) -> pd.DataFrame:
    """The export's schema fields as an untyped frame (object columns, ``None`` for missing), plus ``_id``."""
    p = Path(path)
    if not p.exists():
        raise SalespredError(f"CSV file {p} does not exist")
    text = read_text(p)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError as exc:
        raise SalespredError(f"{p} is empty: a CRM export needs a header row and at least one row of data") from exc
    except pd.errors.ParserError as exc:
        detail = str(exc).strip().splitlines()[-1]
        raise SalespredError(f"{p} is not a well-formed CSV: {detail} (the header row is line 1; a comma inside "
                             "an unquoted value splits it)") from exc
    absent = [f for f in schema.fields if f not in frame.columns]
    if absent:
        raise SalespredError(f"{p} lacks the fields {absent} that the schema declares; its columns are "
                             f"{list(frame.columns)}. Pass --schema with a schema file for this export.")
    n = len(frame)
    columns: dict[str, np.ndarray] = {SOURCE_ID: np.full(n, None, dtype=object)}
    for col in schema.fields:
        written = frame[col].to_numpy(dtype=object)
        if col in schema.number_fields or col in schema.dates:
            stripped = frame[col].str.strip()
            null = stripped.isin(NULL_TOKENS).to_numpy()
            values = stripped.to_numpy(dtype=object)
            if col in schema.number_fields:
                nums = pd.to_numeric(stripped.where(~stripped.isin(NULL_TOKENS)), errors="coerce").to_numpy()
                # Text that is not a number stays as written: validation rejects the row and says why.
                values = np.where(np.isnan(nums), written, nums).astype(object)
            values[null] = None
        else:
            values = written.copy()
            values[frame[col].str.strip().eq("").to_numpy()] = None  # an empty cell is missing; "None" is not
        columns[col] = values
    return pd.DataFrame(columns, dtype=object, copy=False)


def unknown_stages(raw: pd.DataFrame, schema: DatasetSchema, schema_name: str) -> str | None:
    """A one-paragraph refusal naming each stage value in none of the schema's lists, or None when all are known."""
    stages = raw[schema.stage].dropna()
    counts = Counter(v for v in stages if v not in set(schema.stages))
    if not counts:
        return None
    parts = []
    for value, count in counts.most_common(10):
        close = difflib.get_close_matches(str(value), list(schema.stages), n=1, cutoff=0.8)
        hint = f", close to {close[0]!r} in the schema: a typo in one of them?" if close else ""
        parts.append(f"{value!r} ({count:,} rows{hint})")
    more = f" and {len(counts) - 10} more" if len(counts) > 10 else ""
    return (f"stage values in none of the lists of {schema_name} (won {list(schema.won)}, lost {list(schema.lost)}, "
            f"open {list(schema.open)}): {', '.join(parts)}{more}. Nothing was loaded: add each value to the "
            "schema's won, lost or open list, or correct the export")


def _mistyped(raw: pd.DataFrame, checked: Validated, schema: DatasetSchema, schema_name: str, name: str) -> list[str]:
    """A hint for each number or date column whose present values are mostly unreadable (a declared type wrong)."""
    hints = []
    for col in [*schema.number_fields, *schema.dates]:
        values = raw[col]
        present = values.notna()
        if not present.any():
            continue
        reason = f"{col}: not a finite number" if col in schema.number_fields else f"{col}: not a YYYY-MM-DD date"
        if not len(checked.quarantine) or checked.quarantined_rows is None:
            continue
        bad = checked.quarantine["reason"].str.contains(reason, regex=False).to_numpy(dtype=bool)
        n_bad = int(bad.sum())
        if n_bad and n_bad * 2 >= int(present.sum()):
            first = int(checked.quarantined_rows[bad][0])
            kind = "numeric" if col in schema.number_fields else "a date (YYYY-MM-DD)"
            hints.append(f"{name} row {first + FIRST_ROW}, column {col!r}: {str(values.iloc[first])[:40]!r} is not "
                         f"{'a number' if kind == 'numeric' else 'a YYYY-MM-DD date'}, nor are {n_bad:,} of its "
                         f"{int(present.sum()):,} values; {schema_name} declares it {kind}: declare it categorical "
                         "if it holds text")
    return hints


def check_export(path: str | Path, schema: DatasetSchema, schema_name: str) -> ExportCheck:
    """Read and validate a whole export; raise (nothing to write) when its stage vocabulary does not fit the schema."""
    p = Path(path)
    raw = read_export(p, schema)
    refusal = unknown_stages(raw, schema, schema_name)
    if refusal:
        raise SalespredError(f"{p}: {refusal}")
    checked = validate(raw, schema, dedupe=True)
    assert checked.rows is not None and checked.quarantined_rows is not None  # validate() sets both
    records = raw.drop(columns=[SOURCE_ID]).iloc[checked.rows].to_dict("records")
    documents = [{k: v for k, v in r.items() if v is not None} for r in records]
    quarantine = checked.quarantine[QUARANTINE_COLUMNS].copy()
    path = str(p.resolve())
    quarantine["source"] = [{"file": p.name, "path": path, "row": int(i) + FIRST_ROW} for i in checked.quarantined_rows]
    return ExportCheck(p.name, schema.id, len(raw), documents, [int(i) + FIRST_ROW for i in checked.rows],
                       quarantine, _mistyped(raw, checked, schema, schema_name, p.name), path=path)
