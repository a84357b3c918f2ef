"""An S3-compatible object store for tests: moto's server, started in this process on a free port.

``s3_storage_url`` gives a test a fresh bucket and the environment a run needs to reach it (dummy keys and
``SALESPRED_STORAGE_ENDPOINT_URL``), and returns ``s3://<bucket>/runs``. Tests that start processes pass
``s3_server.environment()`` on to them. Use: ``from salespred_tests.storage_fixtures import *``.

``two_process_job`` is a two-step job whose steps run in processes of their own; this module imports little,
so that each step's process starts quickly.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from salespred_assets import settings
from salespred_assets.storage.io_manager import FrameIOManager

__all__ = ["S3Server", "s3_server", "s3_storage_url"]  # the fixtures and their type

KEYS = {"AWS_ACCESS_KEY_ID": "salespred-test", "AWS_SECRET_ACCESS_KEY": "salespred-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str

    def environment(self) -> dict[str, str]:
        """What a process needs to reach this server through the platform's settings."""
        return {**KEYS, "SALESPRED_STORAGE_ENDPOINT_URL": self.endpoint}

    def filesystem(self) -> Any:
        """An s3fs filesystem on this server, independent of the process environment (for checking)."""
        import s3fs

        return s3fs.S3FileSystem(key=KEYS["AWS_ACCESS_KEY_ID"], secret=KEYS["AWS_SECRET_ACCESS_KEY"],
                                 endpoint_url=self.endpoint, skip_instance_cache=True)

    def create_bucket(self) -> str:
        name = f"salespred-{uuid.uuid4().hex[:12]}"  # S3 rules: 3-63 lower-case letters, digits, hyphens
        self.filesystem().mkdir(name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed (the dev extra has it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_storage_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<a new bucket>/runs``, with this process's environment set to reach it."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return f"s3://{s3_server.create_bucket()}/runs"


# ---- steps in processes of their own, sharing nothing but the storage URL ---------------------------------------
@dg.asset
def counted() -> pd.DataFrame:
    return pd.DataFrame({"pid": [os.getpid()] * 3, "n": [1, 2, 3]})


@dg.asset
def total(counted: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"writer_pid": counted["pid"].iloc[:1], "reader_pid": [os.getpid()],
                         "total": [int(counted["n"].sum())]})


def two_process_job() -> dg.JobDefinition:
    """Each step in a process of its own, the storage URL from ``SALESPRED_STORAGE_URL`` as the definitions take
    it. ``spawn``: each step's process starts from the test's environment as it is then (a forkserver started
    earlier in the session would hand on its own, older one)."""
    executor = dg.multiprocess_executor.configured({"start_method": {"spawn": {}}})
    job = dg.define_asset_job("two_processes", selection=[counted, total], executor_def=executor)
    defs = dg.Definitions(assets=[counted, total], jobs=[job],
                          resources={"io_manager": FrameIOManager(url=dg.EnvVar(settings.ENV_STORAGE_URL),
                                                                  origin=settings.ENV_STORAGE_URL)})
    return defs.resolve_job_def("two_processes")
