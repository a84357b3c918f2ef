"""The document contract: typed frames, and every malformed document set aside with its reason."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from salespred_assets.core import synthetic
from salespred_assets.core.documents import records_frame, to_documents, validate
from salespred_assets.core.schema import CODE_SETS, DEFAULT_SCHEMA as S


def _good(n: int = 5) -> list[dict]:
    return next(synthetic.generate(n, seed=1, as_of=dt.date(2026, 1, 1)))[:n]


def test_good_documents_become_typed_rows():
    docs = _good(50)
    v = validate(records_frame(docs, S), S)
    assert len(v.frame) == 50 and v.quarantine.empty
    assert pd.api.types.is_float_dtype(v.frame["acv"])
    assert pd.api.types.is_datetime64_any_dtype(v.frame["fecha_cierre_oportunidad"])
    assert pd.api.types.is_string_dtype(v.frame["etapas"])
    # And back to the capture app's shape, unchanged.
    assert to_documents(v.frame, S) == [{k: d[k] for k in S.fields} for d in docs]


def test_each_kind_of_bad_document_is_quarantined_with_its_reason():
    good = _good(8)
    bad = [dict(d) for d in good[:7]]
    del bad[0]["fecha_creacion_oportunidad"]           # a required field missing (id, stage, dates)
    bad[1]["acv"] = "123.5"                            # a number stored as text
    bad[2]["etapas"] = "Maybe"                         # unknown stage
    bad[3]["margen_ganancia"] = 1.7                    # outside [0, 1]
    bad[4]["fecha_cierre_oportunidad"] = "27/11/2026"  # not YYYY-MM-DD
    bad[5]["acv"] = float("inf")                       # not a finite number
    bad[6]["unidad_negocio"] = {"$gt": ""}             # an operator object is not a code
    for i, d in enumerate(bad):
        d["numero_opportunidad"] = f"OP-BAD{i}"
    dup = dict(good[7])                                # same number twice: the first one wins
    docs = [good[7], *bad, dup]
    v = validate(records_frame(docs, S), S)
    assert len(v.frame) == 1 and v.frame["numero_opportunidad"].iloc[0] == good[7]["numero_opportunidad"]
    reasons = dict(zip(v.quarantine["id"], v.quarantine["reason"], strict=True))
    assert reasons["OP-BAD0"] == "fecha_creacion_oportunidad: missing"
    assert reasons["OP-BAD1"] == "acv: not a finite number"
    assert reasons["OP-BAD2"] == "etapas: unknown stage"
    assert reasons["OP-BAD3"] == "margen_ganancia: outside [0, 1]"
    assert reasons["OP-BAD4"] == "fecha_cierre_oportunidad: not a YYYY-MM-DD date"
    assert reasons["OP-BAD5"] == "acv: not a finite number"
    assert reasons["OP-BAD6"] == "unidad_negocio: not a non-empty text"
    assert reasons[good[7]["numero_opportunidad"]] == "numero_opportunidad: duplicate"
    assert len(v.quarantine) == 8
    assert v.quarantine["document"].map(lambda d: isinstance(d, dict)).all()
    assert v.reason_counts["duplicate"] == 1


def test_a_missing_category_or_number_is_kept_for_the_model():
    docs = _good(4)
    del docs[0]["tcv"]                  # absent: NaN for the forest
    docs[1]["acv"] = float("nan")       # NaN is a missing number, kept
    docs[2]["unidad_negocio"] = None    # a missing category is a category of its own
    del docs[3]["cliente"]              # no client: no client history
    v = validate(records_frame(docs, S), S)
    assert v.quarantine.empty and len(v.frame) == 4
    assert np.isnan(v.frame["tcv"].iloc[0]) and np.isnan(v.frame["acv"].iloc[1])
    assert pd.isna(v.frame["unidad_negocio"].iloc[2]) and pd.isna(v.frame["cliente"].iloc[3])
    for field in (S.id, S.stage, *S.dates):
        doc = dict(_good(1)[0])
        del doc[field]
        assert validate(records_frame([doc], S), S).quarantine["reason"].tolist() == [f"{field}: missing"]


def test_synthetic_documents_follow_the_reference_shape():
    docs = [d for chunk in synthetic.generate(12_000, seed=9, as_of=dt.date(2026, 6, 1)) for d in chunk]
    frame = pd.DataFrame(docs)
    assert set(frame.columns) == set(S.fields)
    assert frame["numero_opportunidad"].is_unique
    for field, codes in CODE_SETS.items():
        assert set(frame[field]) <= set(codes)
    shares = frame["etapas"].value_counts(normalize=True)
    assert 0.05 < shares[[s for s in shares.index if s.startswith("S")]].sum() < 0.12
    closed = frame[frame["etapas"].isin(["Won", "Lost"])]
    won = (closed["etapas"] == "Won").mean()
    assert 0.5 < won < 0.8
    quick = closed[closed["edad_oferta"] == 0]
    assert (quick["etapas"] == "Won").mean() > won + 0.1  # same-day deals win far more often
    assert (frame["tcv"] >= frame["acv"]).all() and frame["margen_ganancia"].between(0.05, 0.30).all()
    open_rows = frame[frame["etapas"].str.startswith("S")]
    assert (pd.to_datetime(open_rows["fecha_cierre_oportunidad"]) > pd.Timestamp("2026-06-01")).all()


def test_synthetic_data_is_reproducible_whatever_the_batching():
    a = [d for chunk in synthetic.generate(25_000, seed=4, as_of=dt.date(2026, 1, 1)) for d in chunk]
    b = [d for chunk in synthetic.generate(25_000, seed=4, as_of=dt.date(2026, 1, 1)) for d in chunk]
    tail = [d for chunk in synthetic.generate(5_000, seed=4, as_of=dt.date(2026, 1, 1), start=20_000) for d in chunk]
    other = [d for chunk in synthetic.generate(25_000, seed=5, as_of=dt.date(2026, 1, 1)) for d in chunk]
    assert a == b
    assert tail == a[20_000:]  # generating in pieces gives the same documents
    assert a != other
    assert np.mean([x["acv"] == y["acv"] for x, y in zip(a, other, strict=True)]) < 0.1


def test_validated_rows_name_their_place_in_the_input():
    good = _good(6)
    bad = dict(good[1], acv="12")
    docs = [good[0], bad, good[2], dict(good[0]), good[3]]  # the 4th repeats the 1st number
    v = validate(records_frame(docs, S), S)
    assert v.rows.tolist() == [0, 2, 4] and v.quarantined_rows.tolist() == [1, 3]
    assert v.frame["numero_opportunidad"].tolist() == [docs[i]["numero_opportunidad"] for i in v.rows]
    assert v.quarantine["id"].tolist() == [docs[i]["numero_opportunidad"] for i in v.quarantined_rows]


def test_records_keep_each_value_whole_and_absent_keys_missing():
    doc = dict(_good(1)[0], _id="abc")
    doc["tipos"] = ["TY-00", "TY-01"]  # a list in a field is one (bad) value, not a row or a column
    del doc["regiones"]
    raw = records_frame([doc, dict(_good(2)[1], _id=None)], S)
    assert raw.shape == (2, len(S.fields) + 1) and raw["_id"].tolist() == ["abc", None]
    assert raw["tipos"].iloc[0] == ["TY-00", "TY-01"] and raw["regiones"].iloc[0] is None
    reasons = validate(raw, S).quarantine["reason"].iloc[0]
    assert reasons == "tipos: not a non-empty text"  # an absent category is missing, and kept
