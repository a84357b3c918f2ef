"""The SQL IO manager: the one way an asset's frame reaches a reporting table, written idempotently.

An asset names its table with ``metadata={"table": ...}`` (default: the asset's name) and how it is
written with ``metadata={"write": "replace" | "upsert" | "append"}``. ``replace`` swaps the whole table
in one transaction; ``upsert`` replaces only the rows whose key the frame carries, in one transaction (a
batch of new opportunities: a partition's write replaces that partition's keys, never the table);
``append`` inserts only rows whose key (default: the primary key; ``metadata={"key": [...]}``) the table
lacks, as the append-only prediction history does. A partitioned asset may only upsert or append.

The export's schema (the fact table's columns follow it) travels as the output's typed metadata,
:func:`schema_metadata`; without it the tables follow the default schema. ``load_input`` reads a table
back for a downstream asset.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from salespred_assets.core.schema import DEFAULT_SCHEMA, DatasetSchema
from salespred_assets.errors import SalespredError
from salespred_assets.sql import tables, writer
from salespred_assets.sql.resource import SqlResource

SCHEMA_METADATA = "dataset_schema"


def schema_metadata(schema: DatasetSchema) -> dict[str, dg.MetadataValue]:
    """Output metadata that tells the IO manager which export schema the tables follow (shown in the UI too)."""
    return {SCHEMA_METADATA: dg.MetadataValue.json(schema.to_dict())}


def output_schema(context: dg.OutputContext) -> DatasetSchema:
    raw = context.output_metadata.get(SCHEMA_METADATA)
    value = getattr(raw, "value", raw)
    return DatasetSchema.from_dict(value) if isinstance(value, dict) else DEFAULT_SCHEMA


class SqlIOManager(dg.ConfigurableIOManager):
    sql: SqlResource

    def _table(self, context: dg.OutputContext | dg.InputContext, schema: DatasetSchema = DEFAULT_SCHEMA) -> sa.Table:
        # An input names its table through the upstream asset's metadata, as that asset's output did.
        output = context.upstream_output if isinstance(context, dg.InputContext) else context
        meta = (output.definition_metadata if output is not None else None) or {}
        name = meta.get("table") or context.asset_key.path[-1]
        return tables.table_for(str(name), sa.MetaData(), schema)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        schema = output_schema(context)
        table = self._table(context, schema)
        engine = self.sql.engine
        meta = context.definition_metadata or {}
        mode = str(meta.get("write", "replace"))
        if context.has_asset_partitions and mode == "replace":
            raise SalespredError(f"{context.asset_key.to_user_string()} is partitioned and would replace the whole "
                                 f"{table.name} table: declare metadata write='upsert' or 'append'")
        key = meta.get("key")
        if obj.empty and mode != "replace":  # a batch with nothing valid in it: its tables stay as they are
            result: dict = {"inserted": 0, "deleted": 0, "table": "untouched"}
        else:
            result = writer.write(engine, table, obj, mode=mode, schema=schema,
                                  key=[str(k) for k in key] if isinstance(key, (list, tuple)) else key)
        metadata = {
            "table": table.name,
            "dialect": engine.dialect.name,
            "rows_written": result["inserted"],
            "rows_replaced": result["deleted"],
            "table_ddl": result["table"],
        }
        if not context.has_asset_partitions:  # a batch's cost follows the batch: no count of the whole table
            metadata["rows_in_table"] = writer.count_rows(engine, table.name)
        if "skipped" in result:
            metadata["rows_already_recorded"] = result["skipped"]
        if result.get("views_recreated") or result.get("views_left_out"):
            metadata["views_recreated"] = ", ".join(result["views_recreated"]) or "none"
            metadata["views_left_out"] = ", ".join(result["views_left_out"]) or "none"
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        return writer.read_table(self.sql.engine, self._table(context).name)
