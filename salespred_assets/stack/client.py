"""Driving a running stack as an operator's script would: ``salespred`` commands against its instance, the
webserver's GraphQL API (``dagster_graphql.DagsterGraphQLClient`` and plain queries), and the instance's run
storage read directly. The stack tests' fixture and the benchmark's ``stack`` stage share it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salespred_assets.errors import SalespredError
from salespred_assets.stack.config import LOCATION, postgres_target

REPOSITORY = "__repository__"  # what dg.load_from_defs_folder's Definitions are served as
BACKFILL_TAG, PARTITION_TAG = "dagster/backfill", "dagster/partition"
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
LAUNCH_BACKFILL = """mutation ($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message stack }
    ... on Error { message } } }"""
BACKFILL_STATUS = """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
    __typename ... on PartitionBackfill { status numPartitions } ... on Error { message } } }"""
BATCH_KEY_LENGTH = 49  # "<24 hex>-<24 hex>", as `salespred batches plan` lists them


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """The predicate's first truthy value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


@dataclass
class StackClient:
    """A stack started with ``salespred stack up`` under ``home`` (its SALESPRED_HOME), with ``env`` (the
    environment it was started with) and its instance on ``dagster_pg_url``."""

    home: Path
    env: dict[str, str]
    ui_port: int
    app_port: int
    code_port: int
    dagster_pg_url: str
    logs: list[str] = field(default_factory=list)

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def dagster_home(self) -> Path:
        return self.home / "stack" / "dagster_home"

    def instance_env(self) -> dict[str, str]:
        """What names the stack's instance: its DAGSTER_HOME and the DAGSTER_PG_* address its file reads."""
        return {"DAGSTER_HOME": str(self.dagster_home), **postgres_target(self.dagster_pg_url).env()}

    def cli(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """``salespred ARGS`` with the stack's environment (its DAGSTER_HOME: the stack's instance)."""
        done = subprocess.run([sys.executable, "-m", "salespred_assets.cli", *args],
                              env={**self.env, **self.instance_env()}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        self.logs.append(f"$ salespred {' '.join(args)}\n{done.stdout}{done.stderr}")
        if check and done.returncode != 0:
            raise SalespredError(f"salespred {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def read_ports(self) -> None:
        """The ports from the stack's state: one may have moved if something took it before ``up``."""
        services = json.loads((self.home / "stack" / "state.json").read_text())["services"]
        self.ui_port = services["webserver"]["port"]
        self.app_port = services["app"]["port"]
        self.code_port = services["code-server"]["port"]

    @property
    def graphql(self) -> Any:
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient("127.0.0.1", port_number=self.ui_port, timeout=60)

    def submit(self, job: str, **kwargs: Any) -> str:
        """Submit ``job`` through the webserver's GraphQL API (it goes onto the run queue); return the run id."""
        return str(self.graphql.submit_job_execution(job, repository_location_name=LOCATION,
                                                    repository_name=REPOSITORY, **kwargs))

    def query(self, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request to the webserver's GraphQL API, in gql 4's form (the variables on the GraphQLRequest).

        The polls go through here, not ``DagsterGraphQLClient``: dagster-graphql 1.13.27 passes ``variable_values``
        to ``gql.Client.execute``, which gql 4 deprecates, one DeprecationWarning (attributed to gql) per call.
        """
        from gql import Client, GraphQLRequest
        from gql.transport.requests import RequestsHTTPTransport

        transport = RequestsHTTPTransport(url=f"{self.ui_url}/graphql", timeout=60)
        with Client(transport=transport) as session:
            return dict(session.execute(GraphQLRequest(document, variable_values=variables)))

    def wait_run(self, run_id: str, timeout: float = 600) -> str:
        """Poll the run's status through GraphQL until it ends; return the final status name."""
        query = """query ($runId: ID!) { runOrError(runId: $runId) {
            __typename ... on Run { status } ... on PythonError { message } } }"""
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            answer = self.query(query, {"runId": run_id})["runOrError"]
            if answer["__typename"] != "Run":
                raise SalespredError(f"run {run_id}: {answer}")
            status = answer["status"]
            if status in FINISHED:
                return str(status)
            time.sleep(1.0)
        raise TimeoutError(f"run {run_id} still {status} after {timeout} s\n{self.log_tails()}")

    def plan(self, rows: int) -> list[str]:
        """``salespred batches plan``: the batch keys it registered as partitions."""
        out = self.cli("batches", "plan", "--rows", str(rows)).stdout
        return [line.strip() for line in out.splitlines()
                if line.startswith("  ") and len(line.strip()) == BATCH_KEY_LENGTH]

    def launch_backfill(self, job: str, keys: list[str], tags: dict[str, str] | None = None) -> str:
        """A backfill of ``job`` over ``keys`` (its partition set), launched through GraphQL; the backfill's
        ``tags`` go on each of its runs."""
        params: dict[str, Any] = {
            "selector": {"partitionSetName": f"{job}_partition_set",
                         "repositorySelector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}},
            "partitionNames": keys, "fromFailure": False}
        if tags:
            params["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        result = self.query(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise SalespredError(f"the backfill was not launched: {result}")
        return str(result["backfillId"])

    def backfill_status(self, backfill_id: str) -> str:
        result = self.query(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if result["__typename"] != "PartitionBackfill":
            raise SalespredError(f"backfill {backfill_id}: {result}")
        return str(result["status"])

    @contextlib.contextmanager
    def instance(self) -> Iterator[Any]:
        """The stack's instance (PostgreSQL), as an operator's DAGSTER_HOME and DAGSTER_PG_* name it (its file
        reads the address from the environment, so they are set in this process while it is open)."""
        import dagster as dg

        wanted = self.instance_env()
        saved = {k: os.environ.get(k) for k in wanted}
        os.environ.update(wanted)
        try:
            with dg.DagsterInstance.from_config(wanted["DAGSTER_HOME"]) as instance:
                yield instance
        finally:
            restore = {name: value for name, value in saved.items() if value is not None}
            for name in saved.keys() - restore.keys():
                os.environ.pop(name, None)
            os.environ.update(restore)

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for name in ("code-server", "daemon", "webserver", "app"):
            path = self.home / "logs" / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            out.append(f"---- {name}.log\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)
