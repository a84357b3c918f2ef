"""The columnar extract (BSON through Arrow) gives exactly what the per-document decode gives."""

from __future__ import annotations

import datetime as dt

import bson
import pandas as pd
import pytest
from bson import Decimal128, ObjectId

from salespred_assets.core import synthetic
from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.schema import DEFAULT_SCHEMA as S
from salespred_assets.mongo.extract import batch_frame


def _good(n: int) -> list[dict]:
    docs = next(synthetic.generate(n, seed=3, as_of=dt.date(2026, 1, 1)))[:n]
    return [{"_id": ObjectId(), **d} for d in docs]


def _both(docs: list[dict]) -> tuple:
    chunk = b"".join(bson.encode(d) for d in docs)
    return (validate(records_frame(bson.decode_all(chunk), S), S),
            validate(batch_frame(chunk, S), S))


def _assert_same(docs: list[dict]) -> None:
    expected, got = _both(docs)
    pd.testing.assert_frame_equal(got.frame, expected.frame)
    pd.testing.assert_frame_equal(got.quarantine, expected.quarantine)


def test_clean_documents_come_through_typed_and_in_order():
    docs = _good(300)
    expected, got = _both(docs)
    assert len(got.frame) == 300 and got.quarantine.empty
    assert got.frame["_id"].tolist() == [str(d["_id"]) for d in docs]
    pd.testing.assert_frame_equal(got.frame, expected.frame)


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("acv", True, "acv: not a finite number"),                 # Arrow would read it as 1.0
    ("tcv", False, "tcv: not a finite number"),
    ("acv", "45000", "acv: not a finite number"),
    ("acv", Decimal128("12.5"), "acv: not a finite number"),
    ("acv", float("nan"), None),                                # a missing number is kept (NaN)
    ("unidad_negocio", None, None),                             # a missing category is kept
    ("fecha_creacion_oportunidad", None, "fecha_creacion_oportunidad: missing"),
    ("acv", float("inf"), "acv: not a finite number"),
    ("edad_oferta", 12, None),                                  # an integer is a number
    ("cliente", 5, "cliente: not a non-empty text"),
    ("cliente", "   ", "cliente: not a non-empty text"),
    ("etapas", None, "etapas: missing"),
    ("fecha_cierre_oportunidad", dt.datetime(2025, 3, 4), None),  # a BSON date is a date
    ("fecha_cierre_oportunidad", "04/03/2025", "fecha_cierre_oportunidad: not a YYYY-MM-DD date"),
    ("_id", "an-id-that-is-text", None),
])
def test_each_off_type_value_keeps_its_reason_and_its_place(field, value, reason):
    docs = _good(40)
    docs[17] = {**docs[17], field: value}
    expected, got = _both(docs)
    pd.testing.assert_frame_equal(got.frame, expected.frame)
    pd.testing.assert_frame_equal(got.quarantine, expected.quarantine)
    if reason is None:
        assert got.quarantine.empty and got.frame["_id"].iloc[17] == str(docs[17]["_id"])
    else:
        assert got.quarantine["reason"].tolist() == [reason]


def test_missing_fields_duplicates_and_a_mostly_bad_batch():
    docs = _good(60)
    del docs[3]["tcv"]
    docs[9] = {**docs[4], "_id": ObjectId()}  # the same opportunity number twice
    _assert_same(docs)
    mostly_bad = [{"_id": ObjectId(), "numero_opportunidad": f"X{i}"} for i in range(30)] + _good(5)
    expected, got = _both(mostly_bad)
    assert len(got.quarantine) == 30
    pd.testing.assert_frame_equal(got.quarantine, expected.quarantine)


def test_an_empty_batch_is_an_empty_frame():
    frame = batch_frame(b"", S)
    assert frame.empty and list(frame.columns) == ["_id", *S.fields]
