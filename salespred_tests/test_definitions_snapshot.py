"""The code location, as Dagster loads it, against a committed snapshot: no servers needed.

The snapshot (``definitions_snapshot.json``) lists the asset keys with their groups, the asset checks (blocking,
dependencies, description), the jobs (the assets and checks each selects, executor, retries, description, tags), the
schedules and sensors with their jobs, and the resource keys. A refactor of how the definitions are assembled must
leave it unchanged; a deliberate change to the graph regenerates it::

    .venv/bin/python -m salespred_tests.test_definitions_snapshot   # rewrites the file; review the diff, commit it

Values that the environment chooses (cron expressions, default statuses) are left out, so the test does not
depend on the developer's settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).with_name("definitions_snapshot.json")
REGENERATE = "python -m salespred_tests.test_definitions_snapshot"


def _loaded() -> Any:
    """The Definitions behind the module attribute ``defs`` that workspace.yaml and [tool.dagster] name."""
    import dagster as dg

    from salespred_assets import definitions

    defs = definitions.defs
    return defs if isinstance(defs, dg.Definitions) else defs()


def _check(spec: Any) -> dict[str, Any]:
    return {"blocking": spec.blocking, "deps": sorted(d.asset_key.to_user_string() for d in spec.additional_deps),
            "description": spec.description}


def snapshot() -> dict[str, Any]:
    defs = _loaded()
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()
    jobs = {}
    for job in sorted(repo.get_all_jobs(), key=lambda j: j.name):
        if job.name.startswith("__ASSET_JOB"):
            continue  # Dagster's implicit job
        selected = job.asset_layer.selected_asset_keys if job.asset_layer else set()
        checks = job.asset_layer.asset_graph.asset_check_keys if job.asset_layer else set()
        jobs[job.name] = {
            "assets": sorted(key.to_user_string() for key in selected),
            "asset_checks": sorted(f"{key.asset_key.to_user_string()}:{key.name}" for key in checks),
            "executor": job.executor_def.name,
            "op_retries": job.op_retry_policy.max_retries if job.op_retry_policy else 0,
            "description": job.description,
            "tags": dict(sorted((k, v) for k, v in job.tags.items() if k.startswith("salespred/"))),
        }
    checks = sorted(graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name))
    return {
        "assets": {key.to_user_string(): graph.get(key).group_name
                   for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string())},
        "asset_checks": {f"{key.asset_key.to_user_string()}:{key.name}": _check(graph.get_check_spec(key))
                         for key in checks},
        "jobs": jobs,
        "schedules": {s.name: s.job_name for s in sorted(repo.schedule_defs, key=lambda s: s.name)},
        "sensors": {s.name: sorted(t.job_name for t in s.targets)
                    for s in sorted(repo.sensor_defs, key=lambda s: s.name)},
        "resources": sorted(repo.get_top_level_resources()),
    }


def test_definitions_match_the_snapshot():
    expected = json.loads(SNAPSHOT.read_text())
    actual = json.loads(json.dumps(snapshot()))
    assert actual == expected, (
        f"The definitions no longer match {SNAPSHOT.name}. If the change is deliberate (an asset, check, job, "
        f"schedule or sensor added, renamed or removed), regenerate it with `{REGENERATE}`, review the diff and "
        f"commit it; otherwise the refactor changed the code location.")


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(snapshot(), indent=2) + "\n")
    print(f"wrote {SNAPSHOT}")
