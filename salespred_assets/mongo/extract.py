"""Raw BSON batches to the untyped frame :func:`~salespred_assets.core.documents.validate` checks.

pymongoarrow decodes a batch straight into Arrow columns in C, skipping the Python dicts that
``bson.decode_all`` builds. Its schema-driven decoding turns a value of an unexpected type into a
null and reads a boolean as a number, so the rows it cannot vouch for are decoded again, one
document at a time, and handed to the same validation: every quarantine reason is kept.
"""

from __future__ import annotations

import struct
from typing import Any

import bson
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from bson import ObjectId
from pymongoarrow.context import PyMongoArrowContext
from pymongoarrow.schema import Schema

from salespred_assets.core.documents import SOURCE_ID, records_frame
from salespred_assets.core.schema import DatasetSchema

_BSON_BOOLEAN = b"\x08"
_TEXT = pd.StringDtype("pyarrow", na_value=np.nan)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _arrow_schema(schema: DatasetSchema) -> Schema:
    types: dict[str, Any] = {SOURCE_ID: ObjectId}
    for col in schema.fields:
        types[col] = pa.float64() if col in schema.number_fields else pa.string()
    return Schema(types)


def _object_id_texts(column: pa.ChunkedArray) -> np.ndarray:
    """ObjectIds (12 bytes each) as 24-character hex strings, vectorised."""
    raw = np.frombuffer(b"".join(c.storage.buffers()[1].to_pybytes()[c.offset * 12:(c.offset + len(c)) * 12]
                                 for c in column.chunks), dtype=np.uint8).reshape(-1, 12)
    digits = np.empty((len(raw), 24), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 0x0F]
    return digits.view("S24").ravel().astype(str).astype(object)


def _documents(chunk: bytes, positions: np.ndarray) -> list[dict[str, Any]]:
    """Decode only the documents at ``positions`` (each BSON document starts with its int32 length)."""
    wanted = set(positions.tolist())
    out: list[dict[str, Any]] = []
    offset, index = 0, 0
    while offset < len(chunk) and len(out) < len(wanted):
        size = struct.unpack_from("<i", chunk, offset)[0]
        if index in wanted:
            out.append(bson.decode(chunk[offset:offset + size]))
        offset += size
        index += 1
    return out


def batch_frame(chunk: bytes, schema: DatasetSchema) -> pd.DataFrame:
    """The frame ``records_frame(bson.decode_all(chunk), schema)`` gives, built through Arrow."""
    # A boolean in a number field would be read as 0/1; such a batch takes the per-document path.
    if any(_BSON_BOOLEAN + col.encode() + b"\x00" in chunk for col in schema.number_fields):
        return records_frame(bson.decode_all(chunk), schema)
    context = PyMongoArrowContext(_arrow_schema(schema), allow_invalid=True)
    context.process_bson_stream(chunk)
    table = context.finish()
    n = table.num_rows
    if n == 0:
        return records_frame([], schema)
    nulls = np.zeros(n, dtype=bool)
    for name in table.column_names:
        if table.column(name).null_count:
            nulls |= pc.is_null(table.column(name)).to_numpy(zero_copy_only=False)
    if nulls.mean() > 0.5:  # mostly off-contract: nothing to gain from the columnar path
        return records_frame(bson.decode_all(chunk), schema)

    columns: dict[str, Any] = {}
    for name in table.column_names:
        column = table.column(name)
        if name == SOURCE_ID:
            columns[name] = np.full(n, None, dtype=object)
            columns[name][~nulls] = _object_id_texts(column.filter(pa.array(~nulls)))
        elif name in schema.number_fields:
            columns[name] = column.to_numpy()
        else:  # Arrow-backed text, no Python strings made
            columns[name] = pd.array(column, dtype=_TEXT)
    if nulls.any():  # put back what Arrow could not hold, exactly as received
        flagged = np.flatnonzero(nulls)
        patch = records_frame(_documents(chunk, flagged), schema)
        for name, values in columns.items():
            values = np.asarray(values, dtype=object)
            values[flagged] = patch[name].to_numpy(dtype=object)
            columns[name] = values
    return pd.DataFrame(columns, columns=[SOURCE_ID, *schema.fields])
