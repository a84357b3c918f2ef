"""The SQL IO manager: asset frames become reporting tables, written idempotently in one transaction.

An asset names its table with ``metadata={"table": ...}`` (default: the asset's name) and how it is
written with ``metadata={"write": "replace" | "upsert"}``. ``replace`` swaps the whole table (or, for a
partitioned asset, the partition's window); ``upsert`` replaces only the rows whose key it carries, as
the new-opportunity sensor's runs do.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from salespred_assets.core.schema import DEFAULT_SCHEMA, DatasetSchema
from salespred_assets.sql import tables, writer
from salespred_assets.sql.resource import SqlResource


class SqlIOManager(dg.ConfigurableIOManager):
    sql: SqlResource

    def _table(self, context: dg.OutputContext | dg.InputContext, schema: DatasetSchema = DEFAULT_SCHEMA) -> sa.Table:
        meta = context.definition_metadata or {}
        name = meta.get("table") or context.asset_key.path[-1]
        return tables.table_for(str(name), sa.MetaData(), schema)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        # A frame built from a non-default CRM export carries its schema; tables follow it.
        raw_schema = obj.attrs.get("schema")
        schema = DatasetSchema.from_dict(raw_schema) if raw_schema else DEFAULT_SCHEMA
        table = self._table(context, schema)
        engine = self.sql.engine
        writer.ensure_table(engine, table)
        meta = context.definition_metadata or {}
        mode = meta.get("write", "replace")
        if mode == "upsert":
            result = writer.upsert_rows(engine, table, obj, key=str(meta.get("key") or table.primary_key.columns[0].name))
        elif context.has_asset_partitions and meta.get("partition_column"):
            col = table.c[str(meta["partition_column"])]
            result = writer.replace_rows(engine, table, obj, where=col.in_(list(context.asset_partition_keys)))
        else:
            result = writer.replace_rows(engine, table, obj)
        context.add_output_metadata({
            "table": table.name,
            "dialect": engine.dialect.name,
            "rows_written": result["inserted"],
            "rows_replaced": result["deleted"],
            "rows_in_table": writer.count_rows(engine, table.name),
        })

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        return writer.read_table(self.sql.engine, self._table(context).name)
