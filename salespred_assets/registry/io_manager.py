"""The model IO manager: a trained model goes to GridFS (via the model store), never to local disk."""

from __future__ import annotations

import dagster as dg

from salespred_assets.core.model import WinModel
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.registry import model_store


class MongoModelIOManager(dg.ConfigurableIOManager):
    """Stores :class:`WinModel` outputs as registry candidates, with the promotion gate's verdict (a candidate that
    fails it is recorded ``rejected``); loads the newest trained version."""

    mongo: MongoResource

    def handle_output(self, context: dg.OutputContext, obj: WinModel) -> None:
        version, _, _ = model_store.register_candidate(self.mongo.db, obj, card=str(obj.info.get("card", "")))
        context.add_output_metadata({"model_version": version, "stored_in": "MongoDB GridFS bucket 'models'"})

    def load_input(self, context: dg.InputContext) -> WinModel:
        db = self.mongo.db
        latest = db[model_store.REGISTRY].find_one({}, {"_id": 1}, sort=[("trained_at", -1)])
        if latest is None:
            raise model_store.NoModel("no model has been trained yet: materialise `win_model` first")
        return model_store.load(db, str(latest["_id"]))
