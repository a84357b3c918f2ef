"""Retried captures create one opportunity: `Idempotency-Key` on the API and the capture form's one-time token.

Against the session's SecantusDB and Redis; the concurrent retries go through a real uvicorn server.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import Counter

import httpx
import pytest

from salespred_assets.app import idempotency
from salespred_assets.mongo.resource import OPPORTUNITIES
from salespred_tests.app_fixtures import *  # noqa: F403 - the fixtures app, app_db, client (its __all__)
from salespred_tests.app_fixtures import AppDB, RunningServer, login_token, new_client, valid_payload

pytestmark = pytest.mark.integration
SECTION = "Faults"


def _count(app_db: AppDB, **query: object) -> int:
    return app_db.mongo.db[OPPORTUNITIES].count_documents(query)


def test_the_same_key_and_body_return_the_same_opportunity(client, app_db):
    headers = {**login_token(client, app_db, "luis"), "Idempotency-Key": str(uuid.uuid4())}
    payload = valid_payload(cliente="CL-77001")
    first = client.post("/api/opportunities", json=payload, headers=headers)
    assert first.status_code == 201, first.text
    # The same body with its keys in another order is the same request (canonical JSON).
    again = client.post("/api/opportunities", json=dict(reversed(payload.items())), headers=headers)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert again.headers["Location"] == first.headers["Location"]
    assert _count(app_db, cliente="CL-77001") == 1
    # A new key is a new capture.
    other = client.post("/api/opportunities", json=payload, headers={**headers, "Idempotency-Key": "another-key"})
    assert other.status_code == 201 and other.json()["numero_opportunidad"] != first.json()["numero_opportunidad"]
    assert _count(app_db, cliente="CL-77001") == 2


def test_a_replay_is_the_first_answer_in_the_first_answers_language(client, app_db):
    headers = {**login_token(client, app_db, "luis"), "Idempotency-Key": str(uuid.uuid4())}
    payload = valid_payload(cliente="CL-77090")
    first = client.post("/api/opportunities?lang=en", json=payload, headers=headers)
    assert first.status_code == 201 and first.headers["Content-Language"] == "en"
    assert first.headers["Vary"] == "Accept-Language"
    again = client.post("/api/opportunities", json=payload, headers={**headers, "Accept-Language": "es"})
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Content-Language"] == "en" and "Vary" not in again.headers


def test_the_same_key_with_another_body_is_refused(client, app_db):
    headers = {**login_token(client, app_db, "luis"), "Idempotency-Key": str(uuid.uuid4())}
    assert client.post("/api/opportunities", json=valid_payload(cliente="CL-77002"), headers=headers).status_code == 201
    changed = client.post("/api/opportunities?lang=en", json=valid_payload(cliente="CL-77002", acv=1.0),
                          headers=headers)
    assert changed.status_code == 422
    assert changed.json()["errors"] == {"Idempotency-Key": "this Idempotency-Key was used with another body; use a "
                                                           "new key for a new capture"}
    spanish = client.post("/api/opportunities", json=valid_payload(cliente="CL-77002", acv=1.0), headers=headers)
    assert spanish.json()["errors"]["Idempotency-Key"].startswith("esta Idempotency-Key ya se usó")
    assert isinstance(changed.json()["detail"], str)  # the one error shape
    assert _count(app_db, cliente="CL-77002") == 1
    bad = client.post("/api/opportunities", json=valid_payload(), headers={**headers, "Idempotency-Key": "a b"})
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["errors"]


def test_keys_are_per_seller(client, app_db):
    key = str(uuid.uuid4())
    payload = valid_payload(cliente="CL-77003")
    luis = client.post("/api/opportunities", json=payload, headers={**login_token(client, app_db, "luis"),
                                                                     "Idempotency-Key": key})
    jorge = client.post("/api/opportunities", json=payload, headers={**login_token(client, app_db, "jorge"),
                                                                      "Idempotency-Key": key})
    assert luis.status_code == jorge.status_code == 201
    assert jorge.json()["numero_opportunidad"] != luis.json()["numero_opportunidad"]
    assert jorge.json()["opportunity"]["numero_vendedor"] == "NV-3"
    assert "Idempotent-Replayed" not in jorge.headers


def test_a_failed_capture_releases_its_key_and_an_expired_key_is_forgotten(client, app_db):
    headers = {**login_token(client, app_db, "luis"), "Idempotency-Key": str(uuid.uuid4())}
    seller, key = "NV-1", headers["Idempotency-Key"]
    calls: list[int] = []

    def failing() -> tuple[int, dict]:
        calls.append(1)
        raise RuntimeError("MongoDB went away")

    with pytest.raises(RuntimeError):
        idempotency.run_once(app_db.mongo.db, seller, key, "d1", failing)
    assert app_db.mongo.db[idempotency.COLLECTION].count_documents({"_id": f"{seller}\x1f{key}"}) == 0
    done = idempotency.run_once(app_db.mongo.db, seller, key, "d1", lambda: (201, {"n": 1}))
    assert (done.status, done.body, done.replayed) == (201, {"n": 1}, False)
    # Older than 24 hours: treated as absent even if the TTL monitor has not removed it yet.
    import datetime as dt

    app_db.mongo.db[idempotency.COLLECTION].update_one(
        {"_id": f"{seller}\x1f{key}"}, {"$set": {"created_at": dt.datetime.now(dt.UTC) - dt.timedelta(hours=25)}})
    fresh = idempotency.run_once(app_db.mongo.db, seller, key, "d2", lambda: (201, {"n": 2}))
    assert fresh.body == {"n": 2} and not fresh.replayed
    index = app_db.mongo.db[idempotency.COLLECTION].index_information()["expire_after_24h"]
    assert index["expireAfterSeconds"] == 24 * 3600


def test_twenty_simultaneous_retries_create_one_opportunity(app, app_db, reliability):
    with new_client(app) as client:
        headers = {**login_token(client, app_db, "marta"), "Idempotency-Key": str(uuid.uuid4())}
    payload = valid_payload(cliente="CL-77004")
    barrier = threading.Barrier(20)
    answers: list[httpx.Response] = []
    lock = threading.Lock()
    with RunningServer(app) as running:
        def retry() -> None:
            with httpx.Client(base_url=running.url, timeout=30) as http:
                barrier.wait()
                response = http.post("/api/opportunities", json=payload, headers=headers)
            with lock:
                answers.append(response)

        threads = [threading.Thread(target=retry) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    statuses = Counter(r.status_code for r in answers)
    bodies = {r.text for r in answers if r.status_code == 201}
    stored = _count(app_db, cliente="CL-77004")
    replayed = sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers)
    reliability.record(SECTION, "20 simultaneous retries of one capture (Idempotency-Key)", **{
        "requests": len(answers), "statuses": dict(sorted(statuses.items())), "opportunities stored": stored,
        "duplicate captures prevented": len(answers) - stored, "answered from the stored result": replayed,
        "distinct bodies": len(bodies)})
    assert len(answers) == 20 and statuses == {201: 20}, statuses
    assert stored == 1 and len(bodies) == 1 and replayed == 19


def _form_login(client, app_db: AppDB, username: str) -> tuple[str, str]:
    response = client.post("/login", data={"username": username, "password": app_db.passwords[username]},
                           follow_redirects=False)
    assert response.status_code == 303
    form = client.get("/opportunities/new").text
    return (re.search(r'name="csrf" value="([^"]+)"', form).group(1),
            re.search(r'name="submission" value="([^"]+)"', form).group(1))


def test_a_double_form_submission_creates_one_opportunity_and_shows_it(app, app_db, reliability):
    with new_client(app) as client:
        csrf, submission = _form_login(client, app_db, "sofia")
        cookies = dict(client.cookies)
        # Each form carries its own token.
        assert re.search(r'name="submission" value="([^"]+)"', client.get("/opportunities/new").text).group(1) \
            != submission
    form = {**valid_payload(cliente="CL-77005"), "csrf": csrf, "submission": submission}
    barrier = threading.Barrier(2)
    answers: list[httpx.Response] = []
    with RunningServer(app) as running:
        def submit() -> None:
            with httpx.Client(base_url=running.url, cookies=cookies, timeout=30) as http:
                barrier.wait()
                answers.append(http.post("/opportunities/new", data=form, follow_redirects=False))

        threads = [threading.Thread(target=submit) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with httpx.Client(base_url=running.url, cookies=cookies, timeout=30) as http:
            later = http.post("/opportunities/new", data=form, follow_redirects=False)  # the reload, later
            changed = http.post("/opportunities/new", data={**form, "acv": "1"}, follow_redirects=False)
            forged = http.post("/opportunities/new", data={**form, "submission": "x.y"}, follow_redirects=False)
    locations = {r.headers.get("location") for r in [*answers, later]}
    stored = _count(app_db, cliente="CL-77005")
    reliability.record(SECTION, "2 simultaneous submissions of one capture form, then a third", **{
        "submissions": 3, "statuses": dict(Counter(r.status_code for r in [*answers, later])),
        "opportunities stored": stored, "duplicate captures prevented": 3 - stored})
    assert [r.status_code for r in answers] == [303, 303] and later.status_code == 303
    assert len(locations) == 1 and re.fullmatch(r"/opportunities/OP-\d+\?saved=1", locations.pop())
    assert stored == 1
    # The same form with other values, or a token this session was not given, captures nothing.
    assert changed.status_code == 422 and "ya se envió con otros datos" in changed.text
    assert forged.status_code == 422 and "caducó" in forged.text
    assert _count(app_db, cliente="CL-77005") == 1
