"""Configuration helpers (pure)."""

from __future__ import annotations

import pytest

from salespred_assets.settings import mask_url


# The passwords below are fakes, there to show that they are masked (hence `scan-secrets: allow`).
@pytest.mark.parametrize(("url", "masked"), [
    ("mongodb://app:s3cr3t@db.example.com:27017/sales?authSource=admin",
     "mongodb://app:***@db.example.com:27017/sales?authSource=admin"),
    ("mongodb+srv://app:p%40ss@cluster0.abcde.mongodb.net/?retryWrites=true",  # scan-secrets: allow
     "mongodb+srv://app:***@cluster0.abcde.mongodb.net/?retryWrites=true"),
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),  # scan-secrets: allow
    ("postgresql+psycopg://sales:pw@pg/salespred",  # scan-secrets: allow
     "postgresql+psycopg://sales:***@pg/salespred"),
    (("mssql+pyodbc://sa:Str0ng!@sql/db"  # scan-secrets: allow
      "?driver=ODBC+Driver+18+for+SQL+Server&TrustServerCertificate=yes"),
     "mssql+pyodbc://sa:***@sql/db?driver=ODBC+Driver+18+for+SQL+Server&TrustServerCertificate=yes"),
    ("mysql+pyodbc://root:@127.0.0.1:3306/test?driver=MariaDB+Unicode", "mysql+pyodbc://root:***@127.0.0.1:3306/test?driver=MariaDB+Unicode"),
    ("postgresql://pg/db?password=topsecret&sslmode=require", "postgresql://pg/db?password=***&sslmode=require"),
    ("sqlite:////tmp/x/salespred.db", "sqlite:////tmp/x/salespred.db"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_passwords_never_show(url, masked):
    assert mask_url(url) == masked
    for secret in ("s3cr3t", "p%40ss", "hunter2", ":pw@", "Str0ng!", "topsecret"):
        assert secret not in mask_url(url)


def test_usable_cores_follow_affinity_and_a_containers_cpu_quota(tmp_path):
    import os

    from salespred_assets.settings import usable_cores

    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(tmp_path / "absent") == affinity  # no cgroup v2 file: the affinity
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == affinity  # no quota
    cpu_max.write_text("50000 100000\n")
    assert usable_cores(cpu_max) == 1  # half a CPU: one process
    cpu_max.write_text("150000 100000\n")
    assert usable_cores(cpu_max) == min(affinity, 2)  # 1.5 CPUs: two, if the affinity allows
    cpu_max.write_text("garbage\n")
    assert usable_cores(cpu_max) == affinity
