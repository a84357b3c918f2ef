"""A second CRM export, shaped unlike the seed: Salesforce-like field names and an English vocabulary."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from salespred_assets.core import synthetic
from salespred_tests.helpers import AS_OF

RENAME = {
    "numero_opportunidad": "OpportunityId", "cliente": "AccountId", "etapas": "StageName",
    "unidad_negocio": "Segment", "tipos": "Product", "regiones": "Country", "tcv": "Amount",
    "margen_ganancia": "Discount", "fecha_creacion_oportunidad": "CreatedDate",
    "fecha_cierre_oportunidad": "CloseDate", "numero_vendedor": "OwnerId",
}
STAGES = {"Won": "Closed Won", "Lost": "Closed Lost", "S1": "Prospecting", "S2": "Prospecting",
          "S3": "Qualification", "S4": "Proposal", "S5": "Negotiation", "S6": "Negotiation"}

SCHEMA_YAML = """\
id: OpportunityId
stage:
  field: StageName
  won: [Closed Won]
  lost: [Closed Lost]
  open: [Prospecting, Qualification, Proposal, Negotiation]
categorical: [Segment, Product, Country]
numeric: [Discount]
amount: Amount
dates:
  created: CreatedDate
  close: CloseDate
seller: OwnerId
client: AccountId
non_negative: [Amount]
"""

MINIMAL_SCHEMA_YAML = """\
id: OpportunityId
stage: {field: StageName, won: [Closed Won], lost: [Closed Lost]}
categorical: [Segment, Product, Country]
numeric: [Discount, Amount]
"""


def write_export(directory: Path, n: int = 2500, seed: int = 21) -> tuple[Path, Path, Path]:
    """(export CSV, full schema, minimal schema): the minimal one leaves out dates, seller, client, open stages."""
    docs = [d for chunk in synthetic.generate(n, seed=seed, as_of=AS_OF) for d in chunk]
    frame = pd.DataFrame(docs).rename(columns=RENAME)
    frame["StageName"] = frame["StageName"].map(STAGES)
    frame["OpportunityId"] = frame["OpportunityId"].str.replace("OP-", "006A", regex=False)
    frame["Notes"] = "free text the schema does not mention"
    frame = frame[[c for c in frame.columns if c in RENAME.values() or c == "Notes"]]
    csv = directory / "salesforce_export.csv"
    frame.to_csv(csv, index=False)
    full, minimal = directory / "schema.yaml", directory / "minimal.toml"
    full.write_text(SCHEMA_YAML)
    minimal.write_text(_as_toml(MINIMAL_SCHEMA_YAML))
    return csv, full, minimal


def _as_toml(yaml_text: str) -> str:
    import yaml

    data = yaml.safe_load(yaml_text)
    stage = data.pop("stage")
    lines = [f'id = "{data["id"]}"',
             f'categorical = {list(data["categorical"])}'.replace("'", '"'),
             f'numeric = {list(data["numeric"])}'.replace("'", '"'),
             "[stage]", f'field = "{stage["field"]}"',
             f'won = {stage["won"]}'.replace("'", '"'), f'lost = {stage["lost"]}'.replace("'", '"')]
    return "\n".join(lines) + "\n"
