"""The SQL IO manager: asset frames become reporting tables, written idempotently in one transaction.

An asset names its table with ``metadata={"table": ...}`` (default: the asset's name) and how it is
written with ``metadata={"write": "replace" | "upsert" | "append"}``. ``replace`` swaps the whole table
(or, for a partitioned asset, the partition's window); ``upsert`` replaces only the rows whose key it
carries, as the new-opportunity sensor's runs do; ``append`` inserts only rows whose key (default: the
primary key; ``metadata={"key": [...]}``) the table lacks, as the append-only prediction history does.
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
        # An input reads the table its upstream asset's output declared.
        owner = context.upstream_output if isinstance(context, dg.InputContext) else context
        meta = (owner.definition_metadata if owner is not None else None) or {}
        name = meta.get("table") or context.asset_key.path[-1]
        return tables.table_for(str(name), sa.MetaData(), schema)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        # A frame built from a non-default CRM export carries its schema; tables follow it.
        raw_schema = obj.attrs.get("schema")
        schema = DatasetSchema.from_dict(raw_schema) if raw_schema else DEFAULT_SCHEMA
        table = self._table(context, schema)
        engine = self.sql.engine
        meta = context.definition_metadata or {}
        where = None
        if context.has_asset_partitions and meta.get("partition_column"):
            where = table.c[str(meta["partition_column"])].in_(list(context.asset_partition_keys))
        key = meta.get("key")
        result = writer.write(engine, table, obj, mode=str(meta.get("write", "replace")), where=where, schema=schema,
                              key=[str(k) for k in key] if isinstance(key, (list, tuple)) else key)
        metadata = {
            "table": table.name,
            "dialect": engine.dialect.name,
            "rows_written": result["inserted"],
            "rows_replaced": result["deleted"],
            "rows_in_table": writer.count_rows(engine, table.name),
            "table_ddl": result["table"],
        }
        if "skipped" in result:
            metadata["rows_already_recorded"] = result["skipped"]
        if result.get("views_recreated") or result.get("views_left_out"):
            metadata["views_recreated"] = ", ".join(result["views_recreated"]) or "none"
            metadata["views_left_out"] = ", ".join(result["views_left_out"]) or "none"
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        return writer.read_table(self.sql.engine, self._table(context).name)
