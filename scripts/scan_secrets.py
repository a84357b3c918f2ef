#!/usr/bin/env python3
"""Fail when a committed file holds a secret. CI runs it through the test suite; run it by hand with

    python scripts/scan_secrets.py            # every file `git ls-files` lists
    python scripts/scan_secrets.py PATH ...   # just these files

It reports, by file and line (the value itself is never printed):

- private keys (PEM blocks) and well-known token formats (AWS, GitHub, Slack, Google, Stripe);
- password-like settings with a literal value: ``password: hunter2``, ``SECRET_KEY = "..."``;
- URLs with an inline password: ``postgresql://user:PASSWORD@db/prod`` with a literal PASSWORD.

References are not secrets and pass: ``${VAR}``, ``$VAR``, ``{env: VAR}``, ``<placeholder>``, code
expressions (an unquoted name in a source file), environment-variable names, and values that say
they are fake (``example``, ``changeme``, ``dummy``...). Test code (``salespred_tests/``, ``test_*.py``)
may hold fake passwords for its own servers; only real-looking tokens, keys and URLs to non-local
hosts are reported there. A deliberate exception carries ``scan-secrets: allow`` on its line.
Exit status: 0 clean, 1 findings, 2 usage error.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ALLOW_MARKER = "scan-secrets: allow"
MAX_BYTES = 1_000_000

# Formats that are secrets wherever they appear.
TOKEN_PATTERNS: dict[str, re.Pattern[str]] = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),
    "AWS secret access key": re.compile(r"(?i)aws.{0,20}secret.{0,20}[=:][ \t]*[\"']?[A-Za-z0-9/+]{40}"
                                        r"(?![A-Za-z0-9/+])"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"),
    "Stripe live key": re.compile(r"\b[sr]k_live_[0-9A-Za-z]{24,}"),
}

SECRET_WORDS = (r"(?:password|passwd|pwd|secret|secret_key|token|api[_-]?key|access[_-]?key|private[_-]?key"
                r"|auth[_-]?key)")
ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9_.\-${])(?P<key>[A-Za-z0-9_.\-]*" + SECRET_WORDS + r")[\"']?[ \t]*(?P<op>:=|=|:)[ \t]*"
    r"(?P<value>\"[^\"\n]*\"|'[^'\n]*'|[^\s,;#)}\]]+)"
)
URL_PASSWORD = re.compile(
    r"\b[a-z][a-z0-9+.\-]*://(?P<user>[^\s/:@'\"]*):(?P<password>[^\s/@'\"]+)@(?P<host>[^\s/:?'\"]+)"
)

# Source files: an unquoted right-hand side is an expression, not a literal.
CODE_SUFFIXES = {".py", ".pyi", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".go", ".rs", ".java",
                 ".kt", ".rb", ".php", ".cs", ".c", ".h", ".cpp", ".swift", ".scala"}
FAKE_WORDS = ("example", "fake", "dummy", "placeholder", "changeme", "change-me", "change_me",
              "redacted", "not-a-real", "your-", "your_", "xxxx", "****", "...")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")
LOOPBACK_HOSTS = ("127.", "localhost", "[::1]", "::1")
TEST_HOST_SUFFIXES = (".test", ".example", ".invalid", ".localhost", "example.com", "example.org")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}"


def is_test_path(path: str) -> bool:
    parts = Path(path).parts
    name = parts[-1] if parts else ""
    return ("salespred_tests" in parts or "tests" in parts or name.startswith("test_")
            or name == "conftest.py")


def is_reference(value: str, key: str = "") -> bool:
    """True when ``value`` names or points at a secret instead of being one."""
    v = value.strip()
    low = v.lower()
    if not v:
        return True
    if v.startswith(("$", "<", "{", "[", "%(", "@", "*")) or "${" in v or "$(" in v or "{{" in v:
        return True
    if any(word in low for word in FAKE_WORDS):
        return True
    if ENV_NAME.match(v):  # the name of an environment variable
        return True
    if re.fullmatch(r"\d{1,4}(?:\.\d+)?", v):
        return True  # a count or a setting in a report ("tokens refused: 4"), not a credential
    key_words = set(re.split(r"[^a-z0-9]+", key.lower())) | {key.lower()}
    if low in key_words or any(w and w in low for w in ("password", "passwd", "secret", "token")):
        return True  # a label or a reference named after the setting ("Password", "db_password")
    if re.search(r"\s", v) or not v.isascii():
        return True  # prose or a translated label, not a credential
    return v.lower() in {"none", "null", "true", "false", "required", "optional", "str", "string"}


def scan_text(path: str, text: str) -> list[Finding]:
    findings: list[Finding] = []
    suffix = Path(path).suffix.lower()
    in_code = suffix in CODE_SUFFIXES
    in_tests = is_test_path(path)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if ALLOW_MARKER in line:
            continue
        for rule, pattern in TOKEN_PATTERNS.items():
            if pattern.search(line):
                findings.append(Finding(path, lineno, rule))
        for match in URL_PASSWORD.finditer(line):
            host = match.group("host").lower()
            if is_reference(match.group("password")):
                continue
            if in_tests and (host.startswith(LOOPBACK_HOSTS) or host.endswith(TEST_HOST_SUFFIXES)):
                continue
            findings.append(Finding(path, lineno, "password inline in a URL"))
        if in_tests:
            continue
        for match in ASSIGNMENT.finditer(line):
            raw = match.group("value")
            quoted = raw[:1] in "\"'" and raw[-1:] == raw[:1] and len(raw) >= 2
            value = raw[1:-1] if quoted else raw
            if in_code and not quoted:
                continue
            if "://" in value or is_reference(value, match.group("key")):
                continue
            findings.append(Finding(path, lineno, f"literal value for {match.group('key')!r}"))
    return findings


def scan_file(path: Path, display: str | None = None) -> list[Finding]:
    try:
        data = path.read_bytes()[:MAX_BYTES]
    except OSError:
        return []
    if b"\0" in data:
        return []  # binary
    return scan_text(display or str(path), data.decode("utf-8", errors="replace"))


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[1]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv:
        targets = [(Path(a), a) for a in argv]
    else:
        try:
            targets = [(root / p, p) for p in tracked_files(root)]
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"scan-secrets: cannot list tracked files with git in {root}: {exc}", file=sys.stderr)
            return 2
    findings = [f for path, shown in targets if path.is_file() for f in scan_file(path, shown)]
    for finding in findings:
        print(finding)
    if findings:
        print(f"scan-secrets: {len(findings)} possible secret(s). Move each to the environment (.env, a "
              f"secret store) and reference it as ${{VAR}}; mark a deliberate fake with '{ALLOW_MARKER}'.",
              file=sys.stderr)
        return 1
    print(f"scan-secrets: {len(targets)} files, no secrets found")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
