"""Reporting: the SQL tables analysts open in Power BI."""

import dagster as dg
import pandas as pd

from salespred_assets.defs.common import IO_RETRY
from salespred_assets.sql import tables

GROUP = "reporting"


@dg.asset(group_name=GROUP, kinds={"sql"}, io_manager_key="sql_io_manager", retry_policy=IO_RETRY,
          metadata={"table": tables.FACT_OPPORTUNITY, "write": "replace"})
def fact_opportunity(opportunity_predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per opportunity: every input field and its latest prediction (replaced in one transaction)."""
    return opportunity_predictions


@dg.asset(group_name=GROUP, kinds={"sql"}, io_manager_key="sql_io_manager", retry_policy=IO_RETRY,
          metadata={"table": tables.DIM_SELLER, "write": "replace"})
def dim_seller(sellers: pd.DataFrame) -> pd.DataFrame:
    """Sellers for the reports: names and titles, never a password or a hash."""
    out = sellers[["numero_vendedor", "username", "first_name", "last_name", "title"]].copy()
    out["full_name"] = (out["first_name"].fillna("") + " " + out["last_name"].fillna("")).str.strip()
    return out
