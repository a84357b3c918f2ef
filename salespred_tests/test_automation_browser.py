"""The Dagster UI in a real browser: `dagster dev` on a free port, Debian's chromium through Playwright.

Every asset, asset check, schedule and sensor of the code location must be visible by name; the expected
names come from the Definitions object itself. The asset graph's screenshot lands in
salespred_tests/artifacts/asset-graph.png. Automation starts stopped here (SALESPRED_AUTOMATION=off),
so that no sensor reaches for a database while the UI is looked at.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from salespred_tests.conftest import REPO, free_port, wait_for
from salespred_tests.test_app_browser import ARTIFACTS, browser  # noqa: F401 - the chromium fixture

pytestmark = [pytest.mark.browser, pytest.mark.integration]
TIMEOUT_MS = 30_000


def _expected() -> dict:
    from salespred_assets.definitions import environment_definitions

    defs = environment_definitions()
    graph = defs.resolve_asset_graph()
    checks: dict[str, list[str]] = defaultdict(list)
    for key in graph.asset_check_keys:
        checks["/".join(key.asset_key.path)].append(key.name)
    groups: dict[str, list[str]] = defaultdict(list)
    for key in graph.get_all_asset_keys():
        groups[graph.get(key).group_name].append(" / ".join(key.path))  # as a group's list writes its key
    return {"assets": sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()), "groups": dict(groups),
            "checks": dict(checks), "schedules": [s.name for s in defs.schedules],
            "sensors": [s.name for s in defs.sensors]}


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster-ui")
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    # The local instance config the demo uses (retries, queue, JSON logs): `dagster dev` must load it.
    shutil.copyfile(REPO / "salespred_assets" / "instance" / "dagster.local.yaml", dagster_home / "dagster.yaml")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "SALESPRED_HOME": str(home), "SALESPRED_AUTOMATION": "off"}
    log = open(home / "dagster-dev.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"),
                             "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/server_info", timeout=2).status == 200
        except OSError:
            return False

    try:
        if not wait_for(up, timeout=120, interval=0.5):
            pytest.fail(f"dagster dev did not answer on {url}: {(home / 'dagster-dev.log').read_text()[-2000:]}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _dismiss_welcome(page) -> None:
    """A new browser profile gets Dagster's 'Join the community' dialog a moment after the first page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_role("button", name="Skip").wait_for(timeout=10_000)
    except PlaywrightTimeout:
        return
    page.get_by_role("button", name="Skip").click()


def _open(page, path: str) -> None:
    """Navigate inside the already loaded single-page app (as its own links do), not a full page load."""
    page.evaluate("path => { window.history.pushState({}, '', path); "
                  "window.dispatchEvent(new PopStateEvent('popstate')); }", path)


def _shown(page, name: str) -> None:
    """Wait until ``name`` is on screen: as text, or as the full title of a label the UI shortens (…)."""
    page.get_by_text(name, exact=True).or_(page.get_by_title(name, exact=True)).filter(visible=True).first.wait_for()


def test_every_asset_check_schedule_and_sensor_is_in_the_ui(browser, dagster_ui):  # noqa: F811
    want = _expected()
    assert want["schedules"] and want["sensors"] and len(want["checks"]) >= 10
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1920, "height": 1200})
    page.set_default_timeout(TIMEOUT_MS)

    page.goto(f"{dagster_ui}/asset-groups")
    for group in want["groups"]:
        page.get_by_text(group, exact=True).first.wait_for()
    _dismiss_welcome(page)
    # The global graph starts with its groups collapsed; its context menu expands them all. Zoomed out to
    # fit, it abbreviates long names (fact_pred…_history), so names are read on each group's list below.
    page.mouse.click(960, 1000, button="right")
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.get_by_text("raw_opportunities", exact=True).first.wait_for()
    shot = ARTIFACTS / "asset-graph.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    # Each group's list (its graph is taller than the window since the code dimensions hang off the
    # ingestion group, and the graph only draws what is in view).
    for group, names in want["groups"].items():
        _open(page, f"/locations/salespred/asset-groups/{group}/list")
        for name in names:
            _shown(page, name)

    for asset, names in want["checks"].items():
        _open(page, f"/assets/{asset}?view=checks")
        for name in names:
            _shown(page, name)

    _open(page, "/automation")
    for name in [*want["schedules"], *want["sensors"]]:
        _shown(page, name)
    page.close()


def test_the_expected_names_cover_the_whole_lifecycle():
    """What the browser test looks for is the code location itself, not a hand-kept list."""
    want = _expected()
    names = {k.path[-1] for k in want["assets"]}
    assert {"new_opportunity_scores", "opportunity_drift", "fact_model_switch", "opportunities"} <= names
    materializable = {"/".join(k.path) for k in want["assets"] if k.path[0] != "mongo"}
    assert materializable == set(want["checks"]), "every asset carries at least one check"
    assert Path(REPO / "workspace.yaml").exists()
