"""Structured logs: one JSON object per line, for Dagster's runs and the ``salespred`` logger.

Dagster's instance config attaches these through its supported hook, ``python_logs.dagster_handler_config``
(a ``logging.config.dictConfig`` of handlers and formatters): every record of a run (Dagster's own events
and the managed ``salespred`` loggers) reaches the handler with the run's context attached, which the
formatter writes out as fields::

    {"ts": "2026-11-27T18:31:02.120Z", "level": "INFO", "logger": "salespred.batches", "run_id": "...",
     "job": "score_new_opportunities", "step": "new_opportunity_scores", "event": "STEP_SUCCESS",
     "partition": "6b09...-6b09...", "message": "..."}

``salespred_assets/instance/dagster.local.yaml`` writes them to ``$SALESPRED_HOME/logs/dagster.jsonl``
(rotated, :class:`HomeFileHandler`); the production ``deploy/dagster.yaml`` writes them to stderr, where
the container runtime collects them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
from typing import Any

from salespred_assets import settings

_DAGSTER_META = "dagster_meta"  # where Dagster's handler puts a record's run context


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON: time, level, logger, the Dagster run context, message, error."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
        meta = getattr(record, _DAGSTER_META, None) or {}
        message = meta.get("orig_message") if meta else None
        if meta:
            event = meta.get("dagster_event")
            tags = meta.get("job_tags") or {}
            out.update({
                "run_id": meta.get("run_id"),
                "job": meta.get("job_name"),
                "step": meta.get("step_key"),
                "event": getattr(event, "event_type_value", None),
                "partition": tags.get("dagster/partition"),
            })
        out["message"] = message if message is not None else record.getMessage()
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in out.items() if v is not None}, ensure_ascii=False, default=str)


class HomeFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file under ``$SALESPRED_HOME/logs/`` (the embedded instance has no log collector)."""

    def __init__(self, filename: str = "dagster.jsonl", max_bytes: int = 20 * 1024 * 1024, backups: int = 5) -> None:
        directory = settings.home() / "logs"
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory / filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
