"""scripts/scan_secrets.py: the repository holds no committed secret, and the scanner finds planted ones.

Planted values are assembled at run time, so this file itself stays clean for the scanner.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from functools import cache
from types import ModuleType

import pytest

from salespred_tests.conftest import REPO

SCANNER = REPO / "scripts" / "scan_secrets.py"


@cache
def load_scanner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scan_secrets", SCANNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def rules(path: str, text: str) -> list[str]:
    return [f.rule for f in load_scanner().scan_text(path, text)]


def test_tracked_files_hold_no_secret():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the scanner lists tracked files with git")
    done = subprocess.run([sys.executable, str(SCANNER)], cwd=REPO, capture_output=True, check=False, text=True,
                          timeout=120)
    assert done.returncode == 0, f"committed secrets:\n{done.stdout}{done.stderr}"
    assert "no secrets found" in done.stdout


# Each planted secret is split so that no line of this file matches a rule.
PLANTED = {
    "private key": ("deploy/key.pem", "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEow\n"),
    "AWS access key id": ("config.yaml", "aws_access_key_id: " + "AKIA" + "Q3X7LMN2P4R6T8V0\n"),
    "GitHub token": ("ci.yml", "token: " + "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8\n"),
    "Slack token": ("notify.py", "HOOK = '" + "xoxb-" + "1234567890-abcdefghij'\n"),
    "Google API key": ("maps.js", "const k = '" + "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q'\n"),
}


@pytest.mark.parametrize("rule", sorted(PLANTED))
def test_token_formats_are_found_anywhere(rule):
    path, text = PLANTED[rule]
    assert rule in rules(path, text)
    assert rule in rules("salespred_tests/fixtures/" + path, text), "tests may not hold real tokens either"


@pytest.mark.parametrize(("path", "text"), [
    ("deploy/app.yaml", "db:\n  password: " + "Tr0ub4dor3\n"),
    (".env", "REDIS_PASSWORD=" + "k9xq2mz7w1\n"),
    ("salespred_assets/config.py", 'SECRET_KEY = "' + 'q8Z2m1xLr0vT"\n'),
    ("salespred_assets/db.py", 'connect(password="' + 'hunter22")\n'),
    ("deploy/run.sh", "export DB_PASSWORD=" + "s3cr3tValue\n"),
    ("deploy/app.yaml", "pin_password: " + "73914582\n"),
])
def test_literal_passwords_are_found(path, text):
    assert any(r.startswith("literal value") for r in rules(path, text)), text


def test_urls_with_inline_passwords_are_found():
    url = "postgresql://app:" + "Sup3rS3cret" + "@db.prod.internal:5432/app"
    assert rules("README.md", f"connect to {url}\n") == ["password inline in a URL"]
    # In tests, a password for a loopback test server is test data; one for a remote host is not.
    assert rules("salespred_tests/test_x.py", 'U = "redis://:' + 'wrongpw@127.0.0.1:6379/0"\n') == []
    assert rules("salespred_tests/test_x.py", f'U = "{url}"\n') == ["password inline in a URL"]


@pytest.mark.parametrize(("path", "text"), [
    ("docker-compose.yml", "  REDIS_PASSWORD: ${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}\n"),
    ("docker-compose.yml", "  URI: mongodb://salespred:${MONGO_APP_PASSWORD}@mongo:27017/salespred\n"),
    ("deploy/dagster.yaml", "      password:\n        env: DAGSTER_PG_PASSWORD\n"),
    ("README.md", "SALESPRED_SQL_URL=postgresql+psycopg://salespred:<password>@db/salespred\n"),
    ("salespred_assets/settings.py", 'ENV_SECRET_KEY = "SALESPRED_SECRET_KEY"\n'),
    ("salespred_assets/auth.py", "def login(password: str = Form(...)):\n    check(password=password)\n"),
    ("salespred_assets/i18n/locales/es/LC_MESSAGES/messages.po", 'msgid "login.password"\nmsgstr "Contraseña"\n'),
    ("deploy/postgres/init.sh", "CREATE ROLE salespred LOGIN PASSWORD :'salespred_password';\n"),
    (".env.example", "MONGO_ROOT_PASSWORD=\nSALESPRED_SECRET_KEY=\n"),
    ("docs/deployment.md", "password: changeme-before-use\n"),
    ("salespred_tests/test_app.py", 'login(password="' + 'not-it")\n'),
    ("config.yaml", "password: " + "Tr0ub4dor3  # scan-secrets: allow\n"),
    ("RELIABILITY.md", '    "API routes refusing the revoked token": 4,\n'),
    ("RELIABILITY.md", "| fields holding a password: 0 | token TTL s: 1.5 |\n"),
])
def test_references_and_fixtures_are_not_secrets(path, text):
    assert rules(path, text) == []


def test_command_line_reports_file_and_line_without_the_value(tmp_path):
    secret = "Tr0ub4" + "dor3x"
    planted = tmp_path / "app.yaml"
    planted.write_text(f"name: app\npassword: {secret}\n")
    clean = tmp_path / "ok.yaml"
    clean.write_text("password: ${APP_PASSWORD}\n")
    found = subprocess.run([sys.executable, str(SCANNER), str(planted), str(clean)],
                           capture_output=True, check=False, text=True, timeout=60)
    assert found.returncode == 1
    assert f"{planted}:2: literal value for 'password'" in found.stdout
    assert secret not in found.stdout + found.stderr
    passed = subprocess.run([sys.executable, str(SCANNER), str(clean)], capture_output=True, check=False, text=True,
                            timeout=60)
    assert passed.returncode == 0, passed.stdout
