"""Model versions by hand: list them, promote one, roll back to the previous one.

A switch is two steps, in this order:

1. the pointer in MongoDB moves to the version (recorded in its history, and in the registry: promoted,
   retired): from now on the seller app and the new-opportunity batches score with it;
2. the ``rescore`` job runs (the same job, and so the same code, as any rescore): every opportunity
   is scored by the new version, ``fact_opportunity`` is replaced in one transaction, a new Redis
   generation is written and swapped in with one command, and ``dim_model_version`` and
   ``fact_model_switch`` record the switch.

Lookups never miss: until the swap, the cache answers from the previous generation (the previous model's
predictions); after it, from the new one. SQL readers see the old rows or the new ones, never a mix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from salespred_assets.errors import SalespredError
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.operations.runner import RunOutcome
from salespred_assets.registry import model_store

Rescore = Callable[[], RunOutcome]


def versions(mongo: MongoResource) -> list[dict[str, Any]]:
    """Every version, newest first: status, whether it is current, its backtest figures, its promotions."""
    out = []
    for doc in model_store.versions(mongo.db):
        metrics = (doc.get("info") or {}).get("metrics") or {}
        history = doc.get("history") or []
        promoted = [e["at"] for e in history if e.get("event") == "promoted"]
        out.append({"version": doc["_id"], "current": doc["current"], "status": doc.get("status", "candidate"),
                    "trained_at": doc.get("trained_at"), "roc_auc": metrics.get("roc_auc"),
                    "accuracy": metrics.get("accuracy"), "times_promoted": len(promoted),
                    "last_promoted": max(promoted).isoformat(timespec="seconds") if promoted else None})
    return out


def previous_version(mongo: MongoResource) -> str | None:
    """The version that was current before the current one (what a rollback returns to)."""
    history = model_store.pointer_history(mongo.db)
    current = model_store.current_version(mongo.db)
    for entry in reversed(history):
        if entry["version"] != current:
            return str(entry["version"])
    return None


def _default_rescore() -> RunOutcome:
    from salespred_assets.operations import runner

    return runner.materialize("rescore")


def promote(mongo: MongoResource, version: str, *, action: str = "promote", reason: str | None = None,
            force: bool = False, rescore: Rescore | None = None) -> dict[str, Any]:
    """Make ``version`` the one that scores, then rescore SQL and the cache with it (see the module doc).

    Promoting the current version again only rescores (the way to finish a switch whose rescore failed).
    A version the gate rejected needs ``force``.
    """
    db = mongo.db
    entry = model_store.registry_entry(db, version)
    if entry is None:
        known = ", ".join(v["version"] for v in versions(mongo)[:5]) or "none"
        raise SalespredError(f"model version {version!r} is not in the registry (newest: {known}); "
                             f"`salespred model list` shows every version")
    if entry.get("status") == "rejected" and not force:
        raise SalespredError(f"model version {version} failed the promotion gate; pass --force to promote it anyway")
    current = model_store.current_version(db)
    previous = current
    if current != version:
        previous = model_store.set_current(db, version, reason or f"{action} from the command line", action=action)
    outcome = (rescore or _default_rescore)()
    if not outcome.ok:
        failed = ", ".join(outcome.failed_steps + outcome.failed_checks) or "unknown"
        raise SalespredError(
            f"model {version} is current (new scorings use it), but the rescore run {outcome.run_id} failed at: "
            f"{failed}. SQL and the Redis cache may still hold {previous or 'no'} predictions; fix the cause "
            f"(the run's log is in the Dagster UI) and run `salespred model promote {version}` again, or "
            f"`salespred model rollback`.")
    return {"version": version, "previous": previous, "switched": current != version, "run_id": outcome.run_id,
            "rows": outcome.metadata.get("fact_opportunity", {}).get("rows_written"),
            "cache_generation": outcome.metadata.get("prediction_cache", {}).get("generation")}


def rollback(mongo: MongoResource, *, rescore: Rescore | None = None) -> dict[str, Any]:
    """Return to the version that was current before this one (and rescore with it)."""
    target = previous_version(mongo)
    if target is None:
        raise SalespredError("there is no previous model version to roll back to: only one has ever been current")
    current = model_store.current_version(mongo.db)
    return promote(mongo, target, action="rollback", reason=f"rollback from {current}", force=True, rescore=rescore)
