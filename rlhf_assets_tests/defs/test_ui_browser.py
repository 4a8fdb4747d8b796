"""The Dagster UI, checked in a real browser: `dagster dev` on loopback over an instance the loop has run on (the
data pillar for DAY, the whole tiny release chain for RELEASE), driven headless by Playwright through Debian's
chromium (`make chromium` installs it; never `playwright install`). It dismisses the first-visit dialog, opens the
asset graph, rm_calibration, deployment_decision and the sensors page, and saves a screenshot of each — under the
module's temporary directory (printed; ``RLHF_UI_SCREENSHOTS=<dir>`` keeps them somewhere else)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from rlhf_assets_tests.defs.dagster_support import DAY, RELEASE, land_release, release_chain_config, run_release
from rlhf_assets_tests.support import REPO, learnable_pairs

CHROMIUM = "/usr/bin/chromium"
#: headless, and nothing that reaches off the machine
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SENSORS = ("landing_sensor", "drift_sensor", "human_rm_correlation_sensor", "annotator_disagreement_sensor",
           "policy_guard_sensor")
GATES = ("upstream_checks", "rm_test_accuracy", "calibrated_ece", "human_rm_correlation", "kl", "ope_reliable",
         "uplift")
LOAD_S = 120  # the first page waits for the code location to load


@pytest.fixture(scope="module")
def browser_available():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium (as root, with apt-get)")
    pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")


@pytest.fixture(scope="module")
def loop_instance(browser_available, tmp_path_factory):
    """(DAGSTER_HOME, storage root) of an instance the loop has run on: the data pillar for DAY, then the whole tiny
    release chain. The instance is a new one, as `dagster dev` makes it (the community dialog not yet seen)."""
    import dagster as dg

    from rlhf_assets.instance import ensure_dagster_home

    base = tmp_path_factory.mktemp("ui_instance")
    home, root = base / "dagster", base / "rlhf"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RLHF_STORAGE_ROOT", str(root))
        env.setenv("DAGSTER_HOME", str(home))  # ensure_dagster_home sets it; undone with the rest
        ensure_dagster_home(home)
        config = yaml.safe_load((home / "dagster.yaml").read_text())
        config["nux"] = {"enabled": True}
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            land_release(str(root), instance, learnable_pairs())
            result = run_release(instance, release_chain_config(), job="release_chain")
            assert result.success, [e.message for e in result.all_events if e.is_failure]
    return home, root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """`dagster dev` runs a webserver, a daemon and code servers: stop its whole process group (Ctrl-C, as a person
    would; it may not stop, so SIGKILL after a grace period)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def ui_url(loop_instance, tmp_path_factory):
    """`dagster dev` on a free loopback port over the instance; the daily partitions span exactly DAY."""
    home, root = loop_instance
    port = _free_port()
    log_path = tmp_path_factory.mktemp("ui_server") / "dagster_dev.log"
    env = {**os.environ, "DAGSTER_HOME": str(home), "RLHF_STORAGE_ROOT": str(root), "GX_ANALYTICS_ENABLED": "false",
           "RLHF_PARTITIONS_START": DAY,
           "RLHF_PARTITIONS_END": (date.fromisoformat(DAY) + timedelta(days=1)).isoformat()}
    command = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", str(REPO / "workspace.yaml"),
               "-h", "127.0.0.1", "-p", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + LOAD_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"dagster dev exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster dev did not answer in {LOAD_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("RLHF_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui_screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nUI screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser_context(browser_available):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        context.set_default_timeout(30_000)
        yield context
        context.close()
        browser.close()


def dismiss_first_visit_dialog(page, screenshot: Path) -> bool:
    """Dagster greets a new instance on localhost with "Join the Dagster community" (an email form): screenshot it
    and Skip it (Dagster remembers that, in the browser and on the instance). True when it was shown."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    skip = page.get_by_role("dialog").get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=5_000)  # it opens a second after the page
    except PlaywrightTimeout:
        return False
    page.screenshot(path=screenshot)
    skip.click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    return True


@pytest.fixture
def page(browser_context, ui_url, screenshots):
    from playwright.sync_api import expect

    # a loaded 2-core CI machine renders pages in seconds, not milliseconds: every assertion may wait up to 30 s
    # (the default is 5 s; a passing one returns as soon as it holds)
    expect.set_options(timeout=30_000)
    page = browser_context.new_page()
    page.goto(ui_url)
    page.get_by_text("Overview").first.wait_for(timeout=LOAD_S * 1000)
    dismiss_first_visit_dialog(page, screenshots / "first_visit_dialog.png")
    yield page
    page.close()


def _assets_by_group() -> dict[str, list[str]]:
    from rlhf_assets.definitions import defs

    groups: dict[str, list[str]] = {}
    for spec in defs().resolve_all_asset_specs():
        groups.setdefault(spec.group_name, []).append(spec.key.to_user_string())
    return groups


def test_asset_graph_shows_every_asset(page, ui_url, screenshots):
    from playwright.sync_api import expect

    # the graph zooms to fit and stops drawing names below a zoom level: a large window keeps every name drawn
    page.set_viewport_size({"width": 2400, "height": 1600})
    page.goto(f"{ui_url}/asset-groups")  # the global lineage: one node per group
    groups = _assets_by_group()
    for group in groups:
        expect(page.get_by_text(group, exact=True).first).to_be_visible(timeout=LOAD_S * 1000)
    expect(page.get_by_text("fetching statuses")).to_have_count(0)
    page.screenshot(path=screenshots / "asset_graph.png")
    for group, assets in groups.items():  # each group's graph: its assets, named
        page.goto(f"{ui_url}/locations/rlhf_assets/asset-groups/{group}")
        for asset in assets:  # a group's page loads its graph afresh: as patient as the first page
            expect(page.get_by_text(asset, exact=True).first).to_be_visible(timeout=LOAD_S * 1000)
        if group == "data":  # the daily partitions span the days the loop ran on: filled, none missing
            # partition statuses load after the graph draws (each node says "Loading..." meanwhile)
            expect(page.get_by_text("100% filled").first).to_be_visible(timeout=LOAD_S * 1000)
            expect(page.get_by_text("0% filled", exact=True)).to_have_count(0)
        page.screenshot(path=screenshots / f"asset_graph_{group}.png")


def test_rm_calibration_shows_its_reliability_diagram(page, ui_url, screenshots):
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 1600, "height": 2600})
    page.goto(f"{ui_url}/assets/rm_calibration")
    row = page.locator("tr", has=page.get_by_text("reliability_diagram", exact=True))
    expect(row).to_have_count(1)
    for key in ("test_accuracy", "cv_log_loss", "human_correlation", "slices"):
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
    page.screenshot(path=screenshots / "rm_calibration.png")
    row.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").get_by_role("img", name="reliability diagram")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth > 100"), "the reliability diagram did not render"
    page.screenshot(path=screenshots / "rm_calibration_reliability_diagram.png")


def test_deployment_decision_shows_its_gate_table_and_verdict(page, ui_url, loop_instance, screenshots):
    from playwright.sync_api import expect

    from rlhf_assets.registry.decisions import read_decision
    from rlhf_assets.storage import Storage

    verdict = read_decision(Storage(str(loop_instance[1])), RELEASE)["verdict"]
    page.set_viewport_size({"width": 1600, "height": 2200})
    page.goto(f"{ui_url}/assets/deployment_decision")
    gates = page.locator("tr", has=page.get_by_text("gates", exact=True)).locator("table")
    expect(gates).to_have_count(1)
    expect(gates.locator("th")).to_contain_text(["gate", "value", "interval", "threshold", "outcome"])
    for gate in GATES:
        expect(gates.get_by_text(gate, exact=True)).to_be_visible()
    expect(page.locator("tr", has=page.get_by_text("verdict", exact=True)).first).to_contain_text(verdict)
    page.screenshot(path=screenshots / "deployment_decision.png")
    page.goto(f"{ui_url}/assets/deployment_decision?view=checks")
    expect(page.get_by_text("release_approved").first).to_be_visible()
    page.screenshot(path=screenshots / "deployment_decision_checks.png")


def test_sensors_page_lists_every_sensor(page, ui_url, screenshots):
    from playwright.sync_api import expect

    page.goto(f"{ui_url}/automation")
    expect(page.get_by_text("rlhf_assets").first).to_be_visible()
    try:
        expect(page.get_by_text("Standard sensor").first).to_be_visible()  # loaded, not placeholders
        for sensor in SENSORS:
            expect(page.get_by_text(sensor, exact=True)).to_be_visible()
    finally:
        page.screenshot(path=screenshots / "sensors.png")
