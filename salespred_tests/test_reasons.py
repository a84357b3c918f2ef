"""Reasons: contributions grouped by concept (core/reasons.py) and written as sentences (app/reasons.py)."""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pandas as pd
import pytest

from salespred_assets.app import reasons as said
from salespred_assets.core import reasons, synthetic
from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.features import AGE, feature_columns
from salespred_assets.core.model import SearchConfig
from salespred_assets.core.schema import DEFAULT_SCHEMA as S, DatasetSchema
from salespred_assets.core.scoring import as_of_day, score
from salespred_assets.core.training import fit
from salespred_tests.helpers import AS_OF

SCORED_AT = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
CUSTOM = DatasetSchema.from_dict(
    {
        "id": "deal",
        "stage": {"field": "status", "won": ["W"], "lost": ["L"]},
        "categorical": ["segment"],
        "numeric": ["amount", "discount", "seats"],
        "fractions": ["discount"],
        "dates": {"created": "created", "close": "closed"},
        "amount": "amount",
        "client": "account",
    }
)


def stored(*concepts: tuple) -> str:
    """The stored form, written by hand: (concept, [(feature, value, effect), ...], context?)."""
    out = []
    for concept, members, *context in concepts:
        entry = [concept, round(sum(e for _, _, e in members), 4), [list(m) for m in members]]
        out.append(entry + list(context))
    return json.dumps(out)


def texts(value: str, lang: str, **kw) -> list[str]:
    r = said.render(value, lang, **kw)
    return [x["sentence"] for x in r["reasons_for"] + r["reasons_against"]]


# ---- grouping --------------------------------------------------------------------------------------
def test_every_input_of_the_default_schema_has_a_concept_and_day_numbers_have_none():
    features = [
        "unidad_negocio",
        "tipos",
        "numero_vendedor",
        "acv",
        "tcv",
        "margen_ganancia",
        "age_days",
        "created_month",
        "client_prior_opportunities",
        "client_tenure_days",
        "client_prior_units",
        "amount_vs_client",
        "client_closed_before",
        "client_won_before",
        "client_win_rate",
        "fecha_creacion_oportunidad",
        "fecha_cierre_oportunidad",
        "model_internal_aggregate",
    ]
    got = reasons.concepts(S, features)
    assert got["tipos"] == "category:tipos" and got["numero_vendedor"] == "category:numero_vendedor"
    assert got["acv"] == got["tcv"] == got["amount_vs_client"] == reasons.DEAL_SIZE
    assert got["margen_ganancia"] == "fraction:margen_ganancia"
    assert got["age_days"] == got["created_month"] == reasons.TIMING
    assert {got[f] for f in ("client_prior_opportunities", "client_tenure_days", "client_prior_units")} == {
        reasons.RELATIONSHIP
    }
    assert {got[f] for f in ("client_closed_before", "client_won_before", "client_win_rate")} == {reasons.TRACK_RECORD}
    # Day numbers since an epoch (what old models fed) and inputs the schema does not declare: in no reason.
    assert got["fecha_creacion_oportunidad"] is None and got["fecha_cierre_oportunidad"] is None
    assert got["model_internal_aggregate"] is None
    custom = reasons.concepts(CUSTOM, ["segment", "amount", "discount", "seats"])
    assert custom == {
        "segment": "category:segment",
        "amount": reasons.DEAL_SIZE,
        "discount": "fraction:discount",
        "seats": "number:seats",
    }


def test_a_concept_sums_all_its_inputs_and_beats_a_stronger_single_input():
    features = [
        "tipos",
        "client_closed_before",
        "client_won_before",
        "client_win_rate",
        "fecha_creacion_oportunidad",
        "industrias",
        "regiones",
        "lead_source",
    ]
    grouping = reasons.grouping(S, features)
    # The track record's three small contributions (0.04 each) outweigh tipos' 0.10; the date's 0.5 is
    # left out of every reason; regiones' 0.004 is too small to name.
    contrib = np.array([[0.10, 0.04, 0.04, 0.04, 0.5, -0.02, 0.004, -0.30]])
    columns = {
        f: np.array([v])
        for f, v in zip(features, ["TY-01", 9.0, 7.0, 7 / 9, 9830.0, "IN-03", "RE-01", "LS-02"], strict=True)
    }
    got = json.loads(grouping.encode(columns, contrib)[0])
    assert [c[0] for c in got] == ["track_record", "category:tipos", "category:lead_source", "category:industrias"]
    record = got[0]
    assert record[1] == pytest.approx(0.12) and record[1] == pytest.approx(sum(m[2] for m in record[2]))
    assert [m[0] for m in record[2]] == ["client_closed_before", "client_won_before", "client_win_rate"]
    assert all("fecha" not in m[0] for c in got for m in c[2])
    fors, againsts = reasons.decode(grouping.encode(columns, contrib)[0])
    assert [r.concept for r in fors] == ["track_record", "category:tipos"]
    assert [r.concept for r in againsts] == ["category:lead_source", "category:industrias"]
    assert fors[0].value("client_won_before") == 7.0


def test_at_most_three_reasons_a_side_each_worth_at_least_half_a_point():
    effects = np.array([0.2, 0.1, 0.05, 0.03, 0.004, -0.005, -0.3, -0.2, -0.1, -0.06])
    chosen = reasons.pick(effects)
    assert chosen == [0, 1, 2, 6, 7, 8]
    assert reasons.pick(np.array([0.0051, 0.005, -0.005])) == [0]


@pytest.fixture(scope="module")
def trained():
    docs = [d for chunk in synthetic.generate(3000, seed=23, as_of=AS_OF) for d in chunk]
    frame = validate(records_frame(docs, S), S).frame
    model = fit(frame, S, SearchConfig.preset("fast"), params={"n_estimators": 30, "min_samples_leaf": 3}).model
    return frame, model


def test_stored_reasons_sum_the_contributions_of_every_input_of_their_concept(trained):
    frame, model = trained
    open_rows = frame[~frame[S.stage].isin(S.won + S.lost)].head(40)
    preds = score(model, open_rows, S, context=frame, scored_at=SCORED_AT)
    cols = feature_columns(open_rows, S, at=np.full(len(open_rows), as_of_day(SCORED_AT)), context=frame)
    raw, contrib = model.explainer.explain(model.transform(cols))
    age = np.asarray(cols[AGE], dtype=float)
    contrib = model.shown_contributions(raw, contrib, age)  # in points of the probability shown
    base = model.calibrate(np.full(len(raw), model.explainer.bias), age)
    assert contrib.sum(axis=1) == pytest.approx(preds["probability"].to_numpy() - base, abs=1e-6)
    assert (np.sign(contrib) == np.sign(model.explainer.explain(model.transform(cols))[1])).all()
    concept_of = reasons.concepts(S, model.feature_names)
    named = 0
    for i, value in enumerate(preds["reasons"]):
        entries = json.loads(value)
        assert len([e for e in entries if e[1] > 0]) <= 3 and len([e for e in entries if e[1] < 0]) <= 3
        for concept, effect, members, *_ in entries:
            exact = sum(contrib[i, j] for j, f in enumerate(model.feature_names) if concept_of[f] == concept)
            assert effect == pytest.approx(exact, abs=1e-3)  # every member, not only the top ones
            assert effect == pytest.approx(sum(m[2] for m in members), abs=1e-9)
            assert {m[0] for m in members} == {f for f in model.feature_names if concept_of[f] == concept}
            assert abs(effect) >= reasons.MIN_CONCEPT_EFFECT
            named += 1
    assert named > 40
    assert model.info["won_days"] > 0
    timing = [e for v in preds["reasons"] for e in json.loads(v) if e[0] == reasons.TIMING]
    assert all(e[3] == {"won_days": model.info["won_days"]} for e in timing)


def test_closed_rows_carry_no_reasons_and_the_factors_stay_as_they_were(trained):
    frame, model = trained
    rows = pd.concat([frame[frame[S.stage].isin(S.won)].head(3), frame[~frame[S.stage].isin(S.won + S.lost)].head(3)])
    preds = score(model, rows, S, context=frame, scored_at=SCORED_AT)
    assert list(preds["reasons"][:3]) == ["[]"] * 3
    for fors in preds["factors_for"][3:]:
        assert set(json.loads(fors)[0]) == {"feature", "label", "value", "effect"}


def test_a_model_without_the_typical_duration_still_explains(trained):
    frame, model = trained
    grouping = reasons.grouping(S, model.feature_names, {})
    assert grouping.context == {}
    assert reasons.grouping(S, model.feature_names, {"won_days": 42}).context == {reasons.TIMING: {"won_days": 42}}
    assert reasons.won_days(frame, S) == model.info["won_days"]
    won = frame[frame[S.stage].isin(S.won)]
    days = (won[S.close].to_numpy(dtype="datetime64[D]") - won[S.created].to_numpy(dtype="datetime64[D]")).astype(int)
    assert np.mean(days <= model.info["won_days"]) >= 0.75 > np.mean(days <= model.info["won_days"] - 1)


# ---- sentences -------------------------------------------------------------------------------------
def test_the_track_record_in_both_languages():
    def record(closed: float, won: float) -> str:
        return stored(
            (
                "track_record",
                [
                    ("client_closed_before", closed, 0.05),
                    ("client_won_before", won, 0.03),
                    ("client_win_rate", won / closed if closed else None, 0.01),
                ],
            )
        )

    assert texts(record(9, 7), "es") == ["El cliente ganó 7 de sus 9 oportunidades cerradas."]
    assert texts(record(9, 7), "en") == ["The client won 7 of its 9 closed opportunities."]
    assert texts(record(1, 1), "es") == ["El cliente ganó su única oportunidad cerrada."]
    assert texts(record(1, 0), "en") == ["The client lost its only closed opportunity."]
    assert texts(record(4, 4), "es") == ["El cliente ganó sus 4 oportunidades cerradas."]
    assert texts(record(1200, 0), "es") == ["El cliente perdió sus 1.200 oportunidades cerradas."]
    assert texts(record(1200, 0), "en") == ["The client lost all 1,200 of its closed opportunities."]
    assert texts(record(0, 0), "es") == ["El cliente aún no ha cerrado ninguna oportunidad."]


def test_the_relationship_and_its_plurals():
    def relation(prior: float, tenure: float) -> str:
        return stored(
            (
                "relationship",
                [
                    ("client_prior_opportunities", prior, -0.03),
                    ("client_tenure_days", tenure, -0.01),
                    ("client_prior_units", 1.0, 0.0),
                ],
            )
        )

    assert texts(relation(0, 0), "es") == ["Cliente nuevo: es su primera oportunidad."]
    assert texts(relation(1, 400), "es") == ["Cliente desde hace 1 año, con una oportunidad anterior."]
    assert texts(relation(12, 800), "es") == ["Cliente desde hace 2 años, con 12 oportunidades anteriores."]
    assert texts(relation(1, 400), "en") == ["A client for 1 year, with one earlier opportunity."]
    assert texts(relation(12, 70), "en") == ["A client for 2 months, with 12 earlier opportunities."]


def test_the_deal_size_against_the_clients_usual():
    def deal(ratio: float | None, tcv: float = 3_280_000.0) -> str:
        return stored(("deal_size", [("acv", tcv / 2, 0.01), ("tcv", tcv, 0.02), ("amount_vs_client", ratio, 0.05)]))

    assert texts(deal(3.04), "es") == ["Importe 3 veces mayor que lo habitual para este cliente (3,28\u00a0M USD)."]
    assert texts(deal(2.54), "en") == ["Deal size 2.5 times the client's usual (3.28M USD)."]
    assert texts(deal(0.25), "es") == ["Importe 4 veces menor que lo habitual para este cliente (3,28\u00a0M USD)."]
    assert texts(deal(1.1), "es") == ["Importe parecido a lo habitual para este cliente (3,28\u00a0M USD)."]
    assert texts(deal(None, 9500.0), "es") == ["Importe de 9.500 USD."]


def test_timing_reads_days_open_and_how_long_won_deals_take():
    def timing(age: float, month: float = 11.0, *context: dict) -> str:
        return stored(("timing", [("age_days", age, -0.1), ("created_month", month, 0.01)], *context))

    assert texts(timing(210, 11, {"won_days": 30}), "es") == [
        "Abierta hace 210 días; las ganadas suelen cerrarse en menos de 30 días."
    ]
    assert texts(timing(210, 11, {"won_days": 30}), "en") == [
        "Open for 210 days; won deals usually close within 30 days."
    ]
    assert texts(timing(1, 11, {"won_days": 1}), "es") == [
        "Abierta hace 1 día; las ganadas suelen cerrarse en menos de 1 día."
    ]
    assert texts(timing(1500), "es") == ["Abierta hace 1.500 días."]  # a model without the duration: no clause
    assert texts(timing(0, 11), "es") == ["Creada en noviembre."]
    assert texts(timing(0, 3), "en") == ["Created in March."]


def test_a_field_reads_label_and_name_and_a_code_without_a_name_shows_as_itself():
    value = stored(
        ("category:tipos", [("tipos", "TY-01", 0.04)]),
        ("category:numero_vendedor", [("numero_vendedor", "NV-7", 0.02)]),
        ("fraction:margen_ganancia", [("margen_ganancia", 0.185, -0.02)]),
        ("category:industrias", [("industrias", None, -0.01)]),
    )
    names = {("tipos", "TY-01", "es"): "Renovación", ("numero_vendedor", "NV-7", "es"): "Ana Pérez"}

    def name(kind: str, code: str, lang: str) -> str:
        return names.get((kind, code, lang), code)

    assert texts(value, "es", name=name) == [
        "Tipo de oportunidad: Renovación.",
        "Vendedor: Ana Pérez.",
        "Margen de ganancia: 18\u00a0%.",
        "Industria del cliente: sin dato.",
    ]
    assert texts(value, "en", name=name) == [
        "Opportunity type: TY-01.",
        "Seller: NV-7.",
        "Profit margin: 18%.",
        "Client industry: not given.",
    ]


def test_a_category_an_export_wrote_as_a_number_is_named_as_its_code():
    value = stored(("category:industrias", [("industrias", 1001.0, 0.03)]))
    named = {"1001": "Sanidad"}
    said = texts(value, "es", name=lambda kind, code, lang: named.get(code, code))
    assert said == ["Industria del cliente: Sanidad."]
    assert texts(value, "es") == ["Industria del cliente: 1001."]  # unnamed: the code as written, not "1.001"


def test_a_field_of_a_custom_export_gets_a_generic_sentence():
    value = stored(
        ("number:seats", [("seats", 12500.0, 0.03)]),
        ("category:segment", [("segment", "SMB", -0.02)]),
        ("fraction:discount", [("discount", 0.1, -0.01)]),
    )
    assert texts(value, "es") == ["seats: 12.500.", "segment: SMB.", "discount: 10\u00a0%."]
    assert texts(value, "en") == ["seats: 12,500.", "segment: SMB.", "discount: 10%."]


def test_each_reason_has_its_effect_in_points_and_its_machine_fields():
    value = stored(
        ("category:tipos", [("tipos", "TY-01", 0.124)]),
        ("track_record", [("client_closed_before", 3.0, -0.004), ("client_won_before", 0.0, -0.006)]),
    )
    es, en = said.render(value, "es"), said.render(value, "en")
    first = es["reasons_for"][0]
    assert first["text"] == "Tipo de oportunidad: TY-01 (+12 puntos)." and first["points"] == "+12 puntos"
    assert en["reasons_for"][0]["text"] == "Opportunity type: TY-01 (+12 points)."
    assert first["features"] == [{"feature": "tipos", "value": "TY-01", "effect": 0.124}]
    assert first["concept"] == "category:tipos" and first["effect"] == 0.124
    against = es["reasons_against"][0]
    assert against["text"] == "El cliente perdió sus 3 oportunidades cerradas (\u22121 punto)."
    assert en["reasons_against"][0]["points"] == "\u22121 point"


def test_sentences_never_show_day_numbers_feature_names_or_ungrouped_numbers(trained):
    frame, model = trained
    open_rows = frame[~frame[S.stage].isin(S.won + S.lost)].head(60)
    preds = score(model, open_rows, S, context=frame, scored_at=SCORED_AT)
    seen = set()
    for value in preds["reasons"]:
        for lang in ("es", "en"):
            for sentence in texts(value, lang, name=lambda kind, code, lang: f"Nombre {code[-2:]}"):
                seen.add(sentence.split(" ")[0])
                assert not re.search(r"\b[A-Z]{2}-\d+", sentence), sentence  # no code
                assert not re.search(r"[a-z]+_[a-z_]+", sentence), sentence  # no feature name
                assert not re.search(r"\d{4,}", sentence), sentence  # 1.234, never 1234
                assert not re.search(r"\bnan\b|None", sentence, re.IGNORECASE), sentence
    assert len(seen) >= 4


def test_an_entry_stored_before_reasons_existed_gives_none():
    assert said.render(None, "es") == {"reasons_for": [], "reasons_against": []}
    assert said.render("[]", "en") == {"reasons_for": [], "reasons_against": []}
    answered = said.for_prediction({"probability": 0.5, "reasons": "[]"}, "es")
    assert answered == {"probability": 0.5, "reasons_for": [], "reasons_against": []}


def test_the_fast_lane_cuts_the_stored_reasons_off_and_writes_sentences():
    from salespred_assets.app.fastlane import cached_body

    value = stored(("category:tipos", [("tipos", "TY-01", 0.124)]))
    entry = '{"seller":"NV-1","probability":0.5,"factors_for":[{"feature":"x","label":"x, \\"reasons\\"","value":1}]'
    for raw, expected in ((entry + ',"reasons":' + value + "}", ["Tipo de oportunidad: TY-01 (+12 puntos)."]),
                          (entry + "}", [])):  # an entry cached before reasons existed
        body = json.loads(cached_body("OP-00001", raw.encode(), "es"))
        prediction = body["prediction"]
        assert "reasons" not in prediction and prediction["factors_for"][0]["label"] == 'x, "reasons"'
        assert [r["text"] for r in prediction["reasons_for"]] == expected and prediction["reasons_against"] == []
        assert body["numero_opportunidad"] == "OP-00001" and body["source"] == "cache"
