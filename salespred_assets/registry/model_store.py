"""Model versions in MongoDB: artifacts in GridFS, one registry document per version, one pointer.

Any process (a Dagster run in its own container, the seller app, the CLI) loads the current model
from here; nothing depends on a shared filesystem. Artifacts are written with skops, which loads
without executing arbitrary code: only scikit-learn, NumPy and SciPy types are trusted on load.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import gridfs
import numpy as np
import skops.io as sio
from pymongo import ReturnDocument
from pymongo.database import Database

from salespred_assets import settings
from salespred_assets.core.features import FeatureSpec
from salespred_assets.core.model import WinModel
from salespred_assets.errors import SalespredError
from salespred_assets.registry import gate

REGISTRY = "model_registry"
POINTER = "model_pointer"
BUCKET = "models"
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")


class NoModel(SalespredError):
    pass


def _bucket(db: Database) -> gridfs.GridFSBucket:
    return gridfs.GridFSBucket(db, bucket_name=BUCKET)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


def save(db: Database, model: WinModel, card: str = "") -> str:
    """Store a model version as a candidate; returns its version."""
    blob = sio.dumps({"pipeline": model.pipeline, "calibrator": model.calibrator, "threshold": model.threshold})
    info = _json_safe(model.info)
    bucket = _bucket(db)
    artifact_id = bucket.upload_from_stream(f"{model.version}.skops", blob, metadata={"version": model.version})
    card_id = bucket.upload_from_stream(f"{model.version}.md", card.encode("utf-8"),
                                        metadata={"version": model.version, "kind": "model_card"})
    db[REGISTRY].replace_one({"_id": model.version}, {
        "_id": model.version,
        "version": model.version,
        "trained_at": info.get("trained_at"),
        "status": "candidate",
        "info": info,
        "spec": {"categorical": list(model.spec.categorical), "numeric": list(model.spec.numeric)},
        "artifact_id": artifact_id,
        "card_id": card_id,
        "size_bytes": len(blob),
        "history": [{"event": "trained", "at": _now()}],
    }, upsert=True)
    return model.version


def gate_verdict(info: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    """The promotion gate's (passed, reason, figures) for a candidate's info, with the configured ROC AUC floor."""
    return gate.verdict(info, settings.gate_auc_floor(gate.AUC_FLOOR))


def register_candidate(db: Database, model: WinModel, card: str = "") -> tuple[str, bool, str]:
    """Store a trained candidate and record the promotion gate's verdict on it: one that fails is ``rejected``,
    with the reason (``production_model`` promotes only the newest candidate not rejected, and ``salespred model
    promote`` needs ``--force`` for it). Returns (version, passed, reason)."""
    version = save(db, model, card)
    passed, reason, _ = gate_verdict(_json_safe(model.info))
    if not passed:
        mark(db, version, "rejected", reason)
    return version, passed, reason


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load(db: Database, version: str) -> WinModel:
    # A version names one trained model, so the one in memory answers without reading the registry.
    key = (db.client.address, db.name, version)
    model = _cache.get(key)
    if model is not None:
        return model
    doc = db[REGISTRY].find_one({"_id": version})
    if doc is None:
        raise NoModel(f"model version {version!r} is not in the registry; `salespred model list` shows the versions")
    model = _load_artifact(db, doc)
    _cache.clear()  # keep one model in memory per process: the current one
    _cache[key] = model
    return model


_cache: dict[tuple, WinModel] = {}


def _load_artifact(db: Database, doc: dict[str, Any]) -> WinModel:
    if "client" in doc["spec"]:
        raise NoModel(f"model version {doc['_id']} predates as-of training: it learned from inputs only known at "
                      f"close and cannot be scored with today's features; train a new one (the retrain job, or "
                      f"`salespred demo --once`)")
    artifact_id = doc["artifact_id"]
    blob = _bucket(db).open_download_stream(artifact_id).read()
    untrusted = sio.get_untrusted_types(data=blob)
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise SalespredError(f"model artifact {artifact_id} holds types that are not trusted: {refused}")
    parts = sio.loads(blob, trusted=untrusted)
    spec = doc["spec"]
    return WinModel(parts["pipeline"], parts["calibrator"], parts["threshold"],
                    FeatureSpec(tuple(spec["categorical"]), tuple(spec["numeric"])), doc["info"])


def card(db: Database, version: str) -> str:
    doc = db[REGISTRY].find_one({"_id": version}, {"card_id": 1})
    if doc is None:
        raise NoModel(f"model version {version!r} is not in the registry")
    return _bucket(db).open_download_stream(doc["card_id"]).read().decode("utf-8")


def current_version(db: Database) -> str | None:
    doc = db[POINTER].find_one({"_id": "current"})
    return doc["version"] if doc else None


def load_current(db: Database) -> WinModel:
    version = current_version(db)
    if version is None:
        raise NoModel("no model has been promoted yet: materialise the model assets first "
                      "(`salespred demo --once`, or the `retrain` job in the Dagster UI)")
    return load(db, version)


def registry_entry(db: Database, version: str) -> dict[str, Any] | None:
    return db[REGISTRY].find_one({"_id": version}, {"artifact_id": 0, "card_id": 0})


def versions(db: Database) -> list[dict[str, Any]]:
    current = current_version(db)
    out = []
    for doc in db[REGISTRY].find({}, {"artifact_id": 0, "card_id": 0}).sort("trained_at", -1):
        doc["current"] = doc["_id"] == current
        out.append(doc)
    return out


# How a version became current: the promotion gate, `salespred model promote`, `salespred model rollback`.
ACTIONS = ("gate", "promote", "rollback")


def set_current(db: Database, version: str, reason: str, action: str = "gate") -> str | None:
    """Point scoring at ``version``; returns the previous version. Records the switch on both."""
    if action not in ACTIONS:
        raise ValueError(f"unknown switch action {action!r}; use one of {ACTIONS}")
    if db[REGISTRY].count_documents({"_id": version}) == 0:
        raise NoModel(f"model version {version!r} is not in the registry; `salespred model list` shows the versions")
    now = _now()
    before = db[POINTER].find_one_and_update(
        {"_id": "current"},
        {"$set": {"version": version, "switched_at": now, "reason": reason},
         "$push": {"history": {"version": version, "at": now, "reason": reason, "action": action}}},
        upsert=True, return_document=ReturnDocument.BEFORE)
    previous = before["version"] if before else None
    db[REGISTRY].update_one({"_id": version},
                            {"$set": {"status": "promoted", "promoted_at": now},
                             "$push": {"history": {"event": "promoted", "at": now, "reason": reason}}})
    if previous and previous != version:
        db[REGISTRY].update_one({"_id": previous}, {"$set": {"status": "retired"},
                                                    "$push": {"history": {"event": "retired", "at": now,
                                                                          "reason": reason}}})
    return previous


def mark(db: Database, version: str, status: str, reason: str) -> None:
    db[REGISTRY].update_one({"_id": version}, {"$set": {"status": status},
                                               "$push": {"history": {"event": status, "at": _now(), "reason": reason}}})


def pointer_history(db: Database) -> list[dict[str, Any]]:
    doc = db[POINTER].find_one({"_id": "current"})
    return list(doc.get("history", [])) if doc else []
