"""Security, on real SecantusDB, Redis and SQLite: where passwords live, who sees what, how SQL and MongoDB
queries are built, secrets, and dependencies.

One module-scoped platform: sellers with known passwords (and names made to break SQL), synthetic
opportunities, one run of the whole asset graph with every SQL statement and log line captured, and the
seller app on the same databases. The tests then look for passwords and hashes everywhere they must not
be, walk every route of the app as one seller trying to reach another's opportunity, and read the source.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from salespred_assets import settings
from salespred_assets.app.main import create_app
from salespred_assets.mongo.resource import OPPORTUNITIES, SELLERS, MongoResource
from salespred_assets.operations import loading
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.sql.resource import SqlResource, make_engine
from salespred_tests.app_fixtures import LIMITS, SECRET, SELLERS as APP_SELLERS, new_client, valid_payload
from salespred_tests.conftest import REPO, wait_for
from salespred_tests.helpers import AS_OF, build_test_resources, materialize_all

pytestmark = pytest.mark.integration
SECTION = "Security"
PACKAGE = REPO / "salespred_assets"
# A seller whose name would break SQL built by pasting values (it must arrive in dim_seller verbatim).
BOBBY = ("NV-9", "bobby", "Robert'); DROP TABLE dim_seller;--", "O'Brien \"Bobby\" ; DELETE FROM fact_opportunity",
         "Sales Executive", "NV-0")
OTHER = "NV-3"  # jorge, in the VP's team: neither luis (a seller) nor ana (a manager of another team) may see him
MARKERS = {"cliente": "CL-77777", "acv": 7777777.77, "tcv": 8888888.88}  # planted in one of his opportunities
ARGON2 = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[A-Za-z0-9+/]{16,}\$[A-Za-z0-9+/]{32,}$")


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Platform:
    mongo: MongoResource
    redis: RedisResource
    sql_url: str
    passwords: dict[str, str]
    app: Any
    run: Any
    statements: list[tuple[str, Any]]
    logs: Lines
    other_number: str
    responses: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def platform(mongo_server, redis_url, tmp_path_factory) -> Iterator[Platform]:
    mongo = MongoResource(uri=mongo_server.uri, database=f"sec_{uuid.uuid4().hex[:10]}", timeout_ms=3000)
    redis = RedisResource(url=redis_url, namespace=f"tsec{uuid.uuid4().hex[:10]}", timeout_s=2.0)
    sql_url = f"sqlite:///{tmp_path_factory.mktemp('security') / 'report.db'}"
    loading.seed_synthetic(mongo, 500, seed=21, as_of=AS_OF)
    sellers = [*APP_SELLERS, BOBBY]
    passwords = {user: f"pw-{uuid.uuid4().hex[:12]}-ñ" for _, user, *_ in sellers}
    loading.write_sellers(mongo, [{"numero_vendedor": nv, "username": user, "first_name": first, "last_name": last,
                                   "title": title, "reports_to": boss, "password": passwords[user]}
                                  for nv, user, first, last, title, boss in sellers])
    other = mongo.db[OPPORTUNITIES].find_one({"numero_vendedor": OTHER})
    mongo.db[OPPORTUNITIES].update_one({"_id": other["_id"]}, {"$set": MARKERS})

    statements: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    engine = make_engine(sql_url)
    sa.event.listen(engine, "before_cursor_execute", capture)
    logs = Lines()
    logs.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # what a deployment logs: INFO and above, from every library
    root.addHandler(logs)
    try:
        run = materialize_all(build_test_resources(mongo, redis, sql_url, str(tmp_path_factory.mktemp("storage"))))
        assert run.success, [e.step_key for e in run.all_events if e.is_step_failure]
        app = create_app(mongo, redis, SECRET, login_limits=LIMITS)
        app.state.sql = SqlResource(url=sql_url)
        yield Platform(mongo, redis, sql_url, passwords, app, run, statements, logs, other["numero_opportunidad"])
    finally:
        root.removeHandler(logs)
        root.setLevel(level)
        sa.event.remove(engine, "before_cursor_execute", capture)
        mongo.client.drop_database(mongo.database)
        keys = list(redis.client.scan_iter(match=f"{redis.namespace}:*", count=10_000))
        if keys:
            redis.client.delete(*keys)


def login(client, p: Platform, username: str) -> dict[str, str]:
    """Log in through both doors: a bearer token (returned as headers) and a page session (the client's cookie)."""
    token = client.post("/api/auth/token", json={"username": username, "password": p.passwords[username]})
    assert token.status_code == 200, token.text
    page = client.post("/login", data={"username": username, "password": p.passwords[username]},
                       follow_redirects=False)
    assert page.status_code == 303, page.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def csrf_of(client) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/opportunities/new").text).group(1)


# ---- passwords ------------------------------------------------------------------------------------------
def test_passwords_are_stored_as_argon2id_hashes_only(platform, reliability):
    sellers = list(platform.mongo.db[SELLERS].find())
    hashes = [s.get("password_hash", "") for s in sellers]
    params = [ARGON2.match(h) for h in hashes]
    reliability.record(SECTION, "passwords are argon2id hashes", sellers=len(sellers),
                       **{"argon2id hashes": sum(m is not None for m in params),
                          "parameters (m KiB, t, p)": sorted({m.groups() for m in params if m}),
                          "fields holding a password": sum("password" in s for s in sellers)})
    assert all(params), [h[:12] for h in hashes]
    assert all(int(m.group(1)) >= 19 * 1024 and int(m.group(2)) >= 2 for m in params)  # OWASP's argon2id floor
    assert len(set(hashes)) == len(hashes)  # salted
    assert not any("password" in s for s in sellers)  # only the hash, never the text


def test_no_password_or_hash_leaves_mongodb(platform, reliability):
    p = platform
    secrets_ = {**{f"password of {u}": pw for u, pw in p.passwords.items()}}
    for seller in p.mongo.db[SELLERS].find():
        digest = seller["password_hash"]
        secrets_[f"hash of {seller['username']}"] = digest
        secrets_[f"hash digest of {seller['username']}"] = digest.rsplit("$", 1)[-1]
        secrets_[f"hash salt of {seller['username']}"] = digest.rsplit("$", 2)[-2]

    # Use the app the way sellers and managers do, and keep every answer.
    with new_client(p.app) as client:
        for _, username, *_ in [*APP_SELLERS, BOBBY]:
            client.cookies.clear()
            headers = login(client, p, username)
            form = client.get("/opportunities/new").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
            submission = re.search(r'name="submission" value="([^"]+)"', form).group(1)  # the form's one-time token
            created = client.post("/api/opportunities", json=valid_payload(), headers=headers)
            number = created.json()["numero_opportunidad"]
            saved = client.post("/opportunities/new", data={**valid_payload(), "csrf": csrf, "submission": submission},
                                follow_redirects=False)
            pages = ["/", "/opportunities", "/opportunities/new", f"/opportunities/{number}",
                     saved.headers.get("location", "/"), "/dashboard"]
            api = ["/api/me", "/api/opportunities?limit=100", f"/api/opportunities/{number}",
                   f"/api/opportunities/{number}/prediction", "/api/codes", "/healthz"]
            responses = [created, saved, *[client.get(u) for u in pages],
                         *[client.get(u, headers=headers) for u in api]]
            p.responses += [_dump(r) for r in responses]
        for path in ("/openapi.json", "/docs", "/login"):
            p.responses.append(_dump(client.get(path)))
        wrong = client.post("/api/auth/token", json={"username": "ana", "password": p.passwords["luis"]})
        p.responses.append(_dump(wrong))

    places = {
        "API and page responses": "\n".join(p.responses),
        "SQL tables and views": _sql_text(p.sql_url),
        "Redis keys and values": _redis_text(p.redis),
        "log lines": "\n".join(p.logs.lines),
        "Dagster run events": _events_text(p.run),
        "dashboard HTML files": _files_text(settings.home() / "dashboard", "*.html"),
        "log files": _files_text(settings.home() / "logs", "*"),
    }
    found = {place: sorted(name for name, secret in secrets_.items() if secret in text)
             for place, text in places.items()}
    found = {k: v for k, v in found.items() if v}
    reliability.record(SECTION, "no password or hash outside MongoDB", **{
        "secrets looked for": len(secrets_), "places": len(places),
        "kilobytes scanned": round(sum(len(t) for t in places.values()) / 1024),
        "found": sum(len(v) for v in found.values()),
        "'$argon2' outside MongoDB": sum("$argon2" in t for t in places.values())})
    assert all(len(t) > 0 for k, t in places.items() if k not in ("log files",)), \
        {k: len(t) for k, t in places.items()}  # every place was really read
    assert found == {}
    assert not [k for k, t in places.items() if "$argon2" in t]


def _dump(response: Any) -> str:
    return f"{response.status_code} {dict(response.headers)}\n{response.text}"


def _sql_text(url: str) -> str:
    engine = sa.create_engine(url)
    out = []
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        for name in [*inspector.get_table_names(), *inspector.get_view_names()]:
            result = conn.execute(sa.select(sa.text("*")).select_from(sa.table(name)))
            out.append(f"{name}: {' '.join(result.keys())}")
            out += ["\t".join(map(str, row)) for row in result]
    engine.dispose()
    return "\n".join(out)


def _redis_text(redis: RedisResource) -> str:
    client = redis.client
    out = []
    for key in client.scan_iter(match=f"{redis.namespace}:*", count=10_000):
        kind = client.type(key).decode()
        value: Any = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
                      "list": lambda k: client.lrange(k, 0, -1), "zset": lambda k: client.zrange(k, 0, -1)}[kind](key)
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


def _events_text(run: Any) -> str:
    from dagster._serdes import serialize_value

    # the events as stored in the run's event log

    return "\n".join(serialize_value(event) for event in run.all_events)


def _files_text(folder: Path, pattern: str) -> str:
    if not folder.exists():
        return ""
    return "\n".join(f.read_text(errors="replace") for f in sorted(folder.glob(pattern)) if f.is_file())


# ---- logins, tokens, sessions -----------------------------------------------------------------------------
def test_logins_are_rate_limited_through_the_api_and_the_pages(platform, reliability):
    attacker = new_client(platform.app)
    tries = []
    for i in range(LIMITS[0]):  # the test app allows 3 failures per user
        door = ("/api/auth/token", "json") if i % 2 else ("/login", "data")
        tries.append(attacker.post(door[0], **{door[1]: {"username": "sofia", "password": "guess"}}).status_code)
    right = {"username": "sofia", "password": platform.passwords["sofia"]}
    page = new_client(platform.app).post("/login", data=right, follow_redirects=False)
    api = new_client(platform.app).post("/api/auth/token", json=right)
    reliability.record(SECTION, "logins are rate limited", **{
        "failures allowed per user": LIMITS[0], "per client address": LIMITS[1],
        "window s": LIMITS[2], "failed tries": tries, "then, right password (page, API)": [page.status_code,
                                                                                           api.status_code],
        "Retry-After s": api.headers.get("Retry-After")})
    assert tries == [401] * LIMITS[0]
    assert page.status_code == 429 and api.status_code == 429 and int(api.headers["Retry-After"]) > 0


def test_tokens_and_sessions_expire_and_are_revoked(platform, reliability):
    short = create_app(platform.mongo, platform.redis, SECRET, token_ttl_s=1, session_ttl_s=2, login_limits=LIMITS)
    with new_client(short) as client:
        headers = login(client, platform, "marta")
        assert client.get("/api/me", headers=headers).status_code == 200
        assert client.get("/opportunities/new", follow_redirects=False).status_code == 200
        started = time.monotonic()
        token_gone = wait_for(lambda: client.get("/api/me", headers=headers).status_code == 401, 15, 0.25)
        token_s = time.monotonic() - started
        session_gone = wait_for(lambda: client.get("/opportunities/new", follow_redirects=False).status_code == 303,
                                15, 0.25)
    with new_client(platform.app) as client:
        headers = login(client, platform, "marta")
        cookie = client.cookies["salespred_session"]
        revoked = client.delete("/api/auth/token", headers=headers).status_code
        after = {path: client.get(path, headers=headers).status_code for path in _api_get_paths(platform)}
        client.post("/logout", data={"csrf": csrf_of(client)}, follow_redirects=False)
    with new_client(platform.app) as replay:
        replay.cookies.set("salespred_session", cookie)
        replayed = replay.get("/opportunities/new", follow_redirects=False).status_code
    reliability.record(SECTION, "tokens expire, tokens and sessions are revoked", **{
        "token TTL s (test)": 1, "token refused after s": round(token_s, 1), "session TTL s (test)": 2,
        "session expired": session_gone, "revocation status": revoked,
        "API routes refusing the revoked token": sum(s == 401 for s in after.values()),
        "API routes that need a token": len(after), "logged-out cookie replayed": replayed})
    assert token_gone and session_gone
    assert revoked == 204 and set(after.values()) == {401}, after
    assert replayed == 303


def _api_get_paths(p: Platform) -> list[str]:
    """Every GET route under /api that needs a bearer token, with a real number in it."""
    return [path.replace("{number}", p.other_number) for path, methods in app_routes(p.app.routes)
            if path.startswith("/api") and "GET" in methods and path != "/api/codes"]


# ---- who sees what -----------------------------------------------------------------------------------
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
KNOWN_PARAMETERS = {"number", "code"}


def _concrete(path: str, number: str) -> str:
    unknown = set(re.findall(r"{([^}:]+)(?::[^}]*)?}", path)) - KNOWN_PARAMETERS
    assert not unknown, f"route {path} has a path parameter this test does not know ({unknown}): say what to send"
    return path.replace("{number}", number).replace("{code}", "en")


def app_routes(routes: list[Any], prefix: str = "") -> list[tuple[str, set[str]]]:
    """(path, methods) of every route, routers included at any depth (FastAPI keeps them nested)."""
    out = []
    for route in routes:
        if hasattr(route, "original_router"):  # an included router (FastAPI >= 0.16x)
            out += app_routes(route.original_router.routes, prefix + (route.include_context.prefix or ""))
        elif isinstance(route, Mount):  # files from the package (styles, Swagger UI): no opportunity data
            assert isinstance(route.app, StaticFiles), \
                f"a mount this test does not know: {route.path}; add it here with how to check it"
        else:
            assert isinstance(route, (APIRoute, Route)), f"a route of a kind this test does not know: {route!r}"
            out.append((prefix + route.path, set(route.methods or ())))
    return out


def test_no_route_lets_one_seller_read_or_change_anothers_opportunities(platform, reliability):
    p = platform
    coll = p.mongo.db[OPPORTUNITIES]
    before = sorted(map(str, coll.find({"numero_vendedor": OTHER})))
    newest = coll.find_one({}, sort=[("_id", -1)])["_id"]
    routes = app_routes(p.app.routes)
    markers = [MARKERS["cliente"], str(MARKERS["acv"]), str(MARKERS["tcv"]), "7777777", "8888888"]
    tried, leaks = 0, []
    with new_client(p.app) as control:  # the markers are visible to whom they belong: the test can see a leak
        headers = login(control, p, "marta")
        shown = control.get(f"/api/opportunities/{p.other_number}", headers=headers).text
        assert all(m in shown for m in markers[:3])
    for viewer in ("luis", "ana"):
        with new_client(p.app, raise_server_exceptions=False) as client:
            headers = login(client, p, viewer)
            csrf = csrf_of(client)
            for path, declared in routes:
                url = _concrete(path, p.other_number)
                for method in sorted(declared | set(METHODS)):
                    if method in ("HEAD", "OPTIONS"):
                        continue
                    for body in _bodies(p.other_number, csrf) if method != "GET" else [{}]:
                        response = client.request(method, url, headers=headers, follow_redirects=False,
                                                  params={"number": p.other_number, "numero_vendedor": OTHER,
                                                          "seller": OTHER, "limit": 100}, **body)
                        tried += 1
                        problem = None
                        if response.status_code >= 500:
                            problem = f"status {response.status_code}"
                        elif "{number}" in path and 200 <= response.status_code < 300:
                            problem = f"answered {response.status_code} for another seller's opportunity"
                        elif any(m in response.text for m in markers):
                            problem = "shows the other seller's opportunity"
                        if problem:
                            leaks.append(f"{viewer}: {method} {path} {list(body)}: {problem}")
                    if not _still_logged_in(client, headers):  # /logout and DELETE /api/auth/token end it
                        client.cookies.clear()
                        headers = login(client, p, viewer)
                        csrf = csrf_of(client)
    after = sorted(map(str, coll.find({"numero_vendedor": OTHER})))
    created_for = {d.get("numero_vendedor") for d in coll.find({"_id": {"$gt": newest}})}
    reliability.record(SECTION, "no route reaches another seller's opportunities", **{
        "routes enumerated": len(routes), "requests (2 viewers, every method, with and without bodies)": tried,
        "leaks": len(leaks), "other seller's documents changed": int(before != after),
        "documents created for": sorted(map(str, created_for)) or "none"})
    assert not leaks, "\n".join(leaks[:20])
    assert before == after  # nothing of the other seller's changed, whatever was sent
    assert created_for == {"NV-1", "NV-0"}  # what was written, was written as the one logged in


def _bodies(number: str, csrf: str) -> list[dict[str, Any]]:
    """No body; JSON and a form (with this session's CSRF token) naming the other seller and his opportunity;
    a valid capture as JSON and as a form (whatever it writes must be the logged-in seller's)."""
    valid = valid_payload()
    aimed = {**valid, "numero_vendedor": OTHER, "numero_opportunidad": number}
    return [{}, {"json": aimed}, {"data": {**{k: str(v) for k, v in aimed.items()}, "csrf": csrf}},
            {"json": valid}, {"data": {**{k: str(v) for k, v in valid.items()}, "csrf": csrf}}]


def _still_logged_in(client, headers: dict[str, str]) -> bool:
    return client.get("/api/me", headers=headers).status_code == 200 and \
        client.get("/opportunities/new", follow_redirects=False).status_code == 200


# ---- SQL ----------------------------------------------------------------------------------------------------
def test_sql_statements_carry_values_only_as_bound_parameters(platform, reliability):
    p = platform
    with new_client(p.app) as client:  # the dashboard's SQL too
        login(client, p, "ana")
        assert client.get("/dashboard").status_code == 200
    values = {str(v) for doc in p.mongo.db[OPPORTUNITIES].find({}, {"_id": 0, "numero_opportunidad": 1, "cliente": 1})
              for v in doc.values()}
    for seller in p.mongo.db[SELLERS].find({}, {"_id": 0, "password_hash": 0}):
        values |= {str(v) for v in seller.values() if v}
    values = {v for v in values if len(v) >= 5}  # short values (NV-1, ana) also spell SQL words
    pasted = [(s[:200], sorted(v for v in values if v in s)[:3]) for s, _ in p.statements
              if any(v in s for v in values)]
    bound = [params for _, params in p.statements if BOBBY[2] in json.dumps(params, default=str)]
    engine = sa.create_engine(p.sql_url)
    names = set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT first_name FROM dim_seller WHERE numero_vendedor = :n"),
                              {"n": BOBBY[0]}).scalar_one()
    engine.dispose()
    reliability.record(SECTION, "SQL carries values as bound parameters only", **{
        "statements captured (pipeline run + dashboard)": len(p.statements), "user values looked for": len(values),
        "statements with a value pasted in": len(pasted),
        "statements binding the SQL-breaking name": len(bound), "dim_seller holds it verbatim": stored == BOBBY[2]})
    assert len(p.statements) > 20 and len(values) > 500
    assert pasted == []
    assert bound and stored == BOBBY[2] and {"dim_seller", "fact_opportunity"} <= names


SQL_START = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|COPY|COMMENT|TRUNCATE|MERGE|WITH|EXEC|"
                       r"GRANT|PRAGMA|SET)\b", re.IGNORECASE)
# SQL text built from pieces, reviewed: what is pasted in, and why it is no value from outside.
REVIEWED_DYNAMIC_SQL = {
    ("sql/writer.py", "_copy_postgres"): "COPY: table and column names quoted by the dialect's preparer; rows stream "
                                          "as CSV data, never as SQL text",
    ("sql/views.py", "_comment"): "the view name quoted by the preparer; the comment is a code constant compiled "
                                  "by SQLAlchemy as a literal",
    ("sql/writer.py", "_allow_nulls"): "a NOT NULL relaxed in place: table, index and column names quoted by the "
                                       "dialect's preparer, column types compiled by SQLAlchemy from the declarations",
    ("bench/stages/common.py", "scratch_database"): "benchmark scratch databases named by the benchmark (uuid)",
    ("bench/stages/data.py", "_bare_copy"): "benchmark table and column names from the table declarations",
}


def dynamic_sql(root: Path) -> list[tuple[str, str, int, str]]:
    """(file, function, line, source) of every f-string, .format(), % or + that builds text starting like SQL."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format" \
                    and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str):
                text = node.func.value.value
            elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)) \
                    and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
                text = node.left.value
            if text is None or not SQL_START.match(text):
                continue
            scope = node
            while scope in parents and not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                scope = parents[scope]
            found.append((path.relative_to(root).as_posix(), getattr(scope, "name", "<module>"), node.lineno,
                          ast.unparse(node)[:120]))
    return found


def test_no_sql_is_built_by_pasting_values_in_the_source(reliability):
    found = dynamic_sql(PACKAGE)
    unreviewed = [f for f in found if (f[0], f[1]) not in REVIEWED_DYNAMIC_SQL]
    reliability.record(SECTION, "no SQL built by pasting values (source)", **{
        "files read": len(list(PACKAGE.rglob("*.py"))), "dynamic SQL texts": len(found),
        "each reviewed (identifiers or code constants only)": len(found) - len(unreviewed),
        "unreviewed": len(unreviewed)})
    assert not unreviewed, ("SQL text built from pieces: bind values as parameters (sa.text(...) with :names, or "
                            "SQLAlchemy constructs); if only quoted identifiers are pasted, add the function to "
                            f"REVIEWED_DYNAMIC_SQL with why: {unreviewed}")
    # The detector finds what it must.
    planted = ("def f(conn, name):\n    conn.execute(f\"SELECT * FROM t WHERE name = '{name}'\")\n"
               "    conn.execute('DELETE FROM t WHERE id = %s' % name)\n")
    (probe := Path(os.environ.get("TMPDIR", "/tmp")) / f"sqlprobe_{uuid.uuid4().hex[:8]}").mkdir()
    try:
        (probe / "m.py").write_text(planted)
        assert len(dynamic_sql(probe)) == 2
    finally:
        shutil.rmtree(probe)


# ---- secrets ------------------------------------------------------------------------------------------------
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|URI|URL|DSN|CREDENTIAL", re.IGNORECASE)


def test_secrets_come_only_from_the_environment_and_ci_scans_for_committed_ones(reliability):
    reads = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for match in re.finditer(r"os\.(?:environ(?:\.get)?|getenv)\s*[\[(]\s*([^\])]+)", source):
            reads.append((path.relative_to(PACKAGE).as_posix(), match.group(1).strip()))
    outside = [(f, name) for f, name in reads if f != "settings.py" and SECRET_NAMES.search(name)]
    ci = (REPO / ".ci" / "run").read_text()
    steps = [line.strip() for line in ci.splitlines() if line.strip() and not line.strip().startswith("#")]
    scan = next((i for i, s in enumerate(steps) if "scripts/scan_secrets.py" in s), None)
    test = next((i for i, s in enumerate(steps) if s.startswith("make test") and "slow" not in s), None)
    reliability.record(SECTION, "secrets only from the environment; CI scans for committed ones", **{
        "environment reads outside settings.py naming a secret": len(outside),
        ".ci/run scans before make test": scan is not None and test is not None and scan < test})
    assert not outside, f"read secrets through salespred_assets.settings: {outside}"
    assert scan is not None and test is not None and scan < test, ".ci/run must run scan_secrets.py before make test"


# ---- dependencies -------------------------------------------------------------------------------------------
def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not pinned with =="
            out[_normal(name.split("[")[0])] = version
    return out


def test_every_dependency_is_pinned(reliability):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + [d for extra in project["optional-dependencies"].values() for d in extra]
    names = {_normal(re.split(r"[\s<>=!~\[;]", d, maxsplit=1)[0]) for d in declared}
    pins = pinned()
    missing = sorted(names - set(pins))
    reliability.record(SECTION, "dependencies pinned", **{
        "declared (all extras)": len(names), "pinned in constraints.txt": len(pins), "declared but unpinned": missing
        or "none"})
    assert not missing, f"add these to constraints.txt with the version pip installed: {missing}"


def _pip_audit(requirements: Path, service: str) -> dict[str, Any]:
    done = subprocess.run([str(Path(sys.executable).parent / "pip-audit"), "-r", str(requirements), "--no-deps",
                           "--disable-pip", "--format", "json", "--progress-spinner", "off", "--vulnerability-service",
                           service, "--timeout", "20"], capture_output=True, text=True, timeout=600, check=False)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}


def test_dependencies_have_no_known_vulnerabilities(tmp_path, reliability):
    if not (Path(sys.executable).parent / "pip-audit").exists():
        pytest.skip("pip-audit is not installed (pip install -c constraints.txt -e '.[dev]')")
    # A release with published advisories: an advisory source that reports nothing for it is not answering.
    canary = tmp_path / "canary.txt"
    canary.write_text("jinja2==2.10\n")
    service, reasons = None, []
    for candidate in ("pypi", "osv"):
        report = _pip_audit(canary, candidate)
        vulns = [v for d in report.get("dependencies", []) for v in d.get("vulns", [])]
        if vulns:
            service = candidate
            break
        skipped = [d.get("skip_reason") for d in report.get("dependencies", []) if d.get("skip_reason")]
        reasons.append(f"{candidate}: {report.get('error') or (skipped[0] if skipped else 'no advisories reported')}")
    if service is None:
        reliability.record(SECTION, "pip-audit", result="skipped: no advisory source reachable",
                           detail="; ".join(reasons))
        pytest.skip("pip-audit cannot reach an advisory source, so the audit cannot say anything: "
                    + "; ".join(reasons))
    pins = pinned()
    requirements = tmp_path / "pinned.txt"
    requirements.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    report = _pip_audit(requirements, service)
    found = {d["name"]: [v["id"] for v in d.get("vulns", [])] for d in report.get("dependencies", []) if d.get("vulns")}
    skipped = [d["name"] for d in report.get("dependencies", []) if d.get("skip_reason")]
    reliability.record(SECTION, "pip-audit", result=f"audited with {service}", packages=len(pins),
                       **{"vulnerable packages": found or "none", "not audited": skipped or "none"})
    assert "error" not in report, report
    assert not found, f"known vulnerabilities in pinned dependencies (upgrade them in constraints.txt): {found}"
