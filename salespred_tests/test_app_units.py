"""The seller app's pure logic: roles and teams, the secret key, validation messages, the document shape."""

from __future__ import annotations

import datetime as dt
import stat

import pytest
from pydantic import ValidationError

from salespred_assets import i18n
from salespred_assets.app import auth
from salespred_assets.app.models import OpportunityIn, field_errors
from salespred_assets.app.opportunities import build_document, format_number
from salespred_assets.core.schema import DEFAULT_SCHEMA
from salespred_assets.core.synthetic import generate
from salespred_assets.errors import SalespredError

SELLERS = [
    {"numero_vendedor": "NV-0", "title": "Sales Manager", "reports_to": None},
    {"numero_vendedor": "NV-1", "title": "Sales Executive", "reports_to": "NV-0"},
    {"numero_vendedor": "NV-2", "title": "EVP Sales", "reports_to": None},
    {"numero_vendedor": "NV-3", "title": "Director of Sales", "reports_to": "NV-2"},
    {"numero_vendedor": "NV-4", "title": "Sales Assistant", "reports_to": "NV-3"},
    {"numero_vendedor": "NV-5", "title": "Account Executive", "reports_to": "NV-0"},
]


@pytest.mark.parametrize("title, role", [
    ("Sales Manager", "manager"), ("VP Sales", "manager"), ("EVP Sales", "manager"), ("Vice President", "manager"),
    ("Director of Sales", "manager"), ("Gerente comercial", "manager"), ("Sales Executive", "seller"),
    ("Sales Assistant", "seller"), ("Account Executive", "seller"), ("", "seller"), (None, "seller"),
])
def test_role_comes_from_the_title(title, role):
    assert auth.role_of(title) == role


def test_a_managers_team_follows_the_reports_to_chain():
    assert auth.team_of("NV-0", "Sales Manager", SELLERS) == ("NV-0", "NV-1", "NV-5")
    assert auth.team_of("NV-2", "EVP Sales", SELLERS) == ("NV-2", "NV-3", "NV-4")  # transitively
    assert auth.team_of("NV-3", "Director of Sales", SELLERS) == ("NV-3", "NV-4")
    assert auth.team_of("NV-1", "Sales Executive", SELLERS) == ("NV-1",)
    cycle = [{"numero_vendedor": "A", "reports_to": "B"}, {"numero_vendedor": "B", "reports_to": "A"}]
    assert auth.team_of("A", "Manager", cycle) == ("A", "B")


def test_without_any_reports_to_a_manager_sees_everyone():
    flat = [{k: v for k, v in s.items() if k != "reports_to"} for s in SELLERS]
    assert auth.team_of("NV-0", "Sales Manager", flat) == tuple(f"NV-{i}" for i in range(6))
    assert auth.team_of("NV-1", "Sales Executive", flat) == ("NV-1",)


def test_visibility_filters_use_only_known_seller_numbers():
    viewer = auth.Viewer("NV-0", "ana", "Ana", "M", "Sales Manager", "manager", ("NV-0", "NV-1"))
    assert viewer.visibility("numero_vendedor") == {"numero_vendedor": {"$in": ["NV-0", "NV-1"]}}
    alone = auth.Viewer("NV-1", "luis", "Luis", "G", "Sales Executive", "seller", ("NV-1",))
    assert alone.visibility("numero_vendedor") == {"numero_vendedor": "NV-1"}


def test_secret_key_from_the_environment_or_generated_once(monkeypatch, tmp_path):
    monkeypatch.setenv("SALESPRED_HOME", str(tmp_path))
    monkeypatch.delenv("SALESPRED_SECRET_KEY", raising=False)
    monkeypatch.setenv("SALESPRED_ENV", "local")
    first = auth.secret_key()
    assert auth.secret_key() == first and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600
    monkeypatch.setenv("SALESPRED_SECRET_KEY", "short")
    with pytest.raises(SalespredError, match="too short"):
        auth.secret_key()
    monkeypatch.setenv("SALESPRED_SECRET_KEY", "k" * 40)
    assert auth.secret_key() == "k" * 40
    monkeypatch.delenv("SALESPRED_SECRET_KEY")
    monkeypatch.setenv("SALESPRED_ENV", "production")
    with pytest.raises(SalespredError, match="SALESPRED_SECRET_KEY must be set"):
        auth.secret_key()


def _payload(**changes):
    base = {"cliente": "CL-7", "unidad_negocio": "BU-00", "tipos": "TY-05", "regiones": "RE-03", "territorios": "TE-15",
            "industrias": "IN-64", "lead_source": "LS-35", "acv": 10.0, "tcv": 10.0, "margen_ganancia": 1,
            "fecha_cierre_oportunidad": dt.date.today().isoformat()}
    return {**base, **changes}


def test_the_document_has_the_pipelines_shape():
    close = dt.date.today() + dt.timedelta(days=90)
    data = OpportunityIn.model_validate(_payload(fecha_cierre_oportunidad=close.isoformat()))
    created = dt.date.today()
    doc = build_document(data, format_number(7), "NV-2", created)
    # The generator's shape, plus the close date as typed (kept unchanged when the close date moves).
    assert [k for k in doc if k != "fecha_cierre_planificada"] == list(next(generate(1, seed=0))[0])
    assert set(doc) == {*DEFAULT_SCHEMA.fields, "fecha_cierre_planificada"}
    assert doc["fecha_cierre_planificada"] == doc["fecha_cierre_oportunidad"] == close.isoformat()
    # Age 0 at capture: the age so far, never the planned duration (which the model read as a final one).
    assert doc["cliente"] == "CL-00007" and doc["edad_oferta"] == 0.0 and doc["etapas"] == "S1"
    assert format_number(7) == "OP-00007" and format_number(1234567) == "OP-1234567"


def test_tcv_rules():
    assert OpportunityIn.model_validate(_payload(tcv=None, contract_years=4)).tcv == 40.0
    for changes, kind in (({"tcv": 9.99}, "tcv_below_acv"), ({"tcv": None}, "tcv_missing")):
        with pytest.raises(ValidationError) as info:
            OpportunityIn.model_validate(_payload(**changes))
        assert [e["type"] for e in info.value.errors()] == [kind]


def test_messages_are_per_field_and_translated():
    with pytest.raises(ValidationError) as info:
        OpportunityIn.model_validate_json('{"acv": -1, "$set": {"x": 1}, "cliente": "CL-1"}', strict=True)
    english, spanish = field_errors(info.value.errors()), field_errors(info.value.errors(), "es")
    assert set(english) == set(spanish) >= {"acv", "$set", "tipos"}
    assert english["acv"] == "Must be greater than or equal to 0." and spanish["tipos"] == "Obligatorio."
    assert "'$'" in english["$set"]
    assert i18n.translate("es", "err.missing") == "Obligatorio." and i18n.translate("en", "err.missing") == "Required."
