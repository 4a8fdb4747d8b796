"""The annotation app in a real browser (Playwright driving Debian's chromium, headless; never `playwright
install`): two annotators sign in and label today's batch with the keyboard only — pairs, a gold item, an attention
check, a skip — the landing files hold exactly their answers (schema, orientation, timing); then the data pillar
runs on that day in a real Dagster instance and its agreement statistics are those of the answers."""

from __future__ import annotations

import os
import time

import polars as pl
import pytest
from sklearn.metrics import cohen_kappa_score

from rlhf_assets.annotation.app import is_swapped
from rlhf_assets.preference.ingest import read_comparison_file
from rlhf_assets.preference.schema import FIELD_NAMES, REQUIRED_FIELDS
from rlhf_assets.storage import Storage
from rlhf_assets_tests.annotation.app_support import (
    add_annotators,
    assignment,
    landing_records,
    start_app,
    today,
    write_assignments,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ITEMS = [("p1", "pair", "a"), ("p2", "pair", "b"), ("p3", "pair", "a"), ("p4", "pair", "b"), ("g1", "gold", "b"),
         ("t1", "attention", "a")]  # (item, kind, which queued side is GOOD)
#: what each annotator answers per item: the GOOD response, the BAD one, or a tie; bob fails gold and attention
PLAN = {"alice": {"p1": "good", "p2": "good", "p3": "good", "p4": "tie", "g1": "good", "t1": "good"},
        "bob": {"p1": "good", "p2": "good", "p3": "bad", "p4": "tie", "g1": "bad", "t1": "bad", "x1": "skip"}}
FLIP = {"a": "b", "b": "a", "tie": "tie"}


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium (as root, with apt-get)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def label_batch(browser, url: str, annotator: str, token: str) -> dict[str, float]:
    """Sign in and work through the queue with the keyboard only, per PLAN; the wall time (ms) each item was on
    screen, from its page being loaded to its answer being acknowledged."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    expect.set_options(timeout=30_000)  # assertions as patient as actions: CI's 2 cores are slow to render
    page = context.new_page()
    page.goto(url)
    expect(page.locator("#annotator")).to_be_focused()  # autofocus; typing before it lands loses keystrokes
    page.keyboard.type(annotator)
    page.keyboard.press("Tab")
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    expect(page.locator("#annotator")).to_have_text(annotator)
    expect(page.locator("#guidelines-version")).to_have_text("v1")
    on_screen = {}
    while page.locator("#item").count():
        shown_at = time.monotonic()
        aid = page.locator("#item").get_attribute("data-assignment")
        item = aid.split("-", 1)[1]
        expect(page.locator("#progress")).to_contain_text(f"item {len(on_screen) + 1} of {len(PLAN[annotator])}")
        plan = PLAN[annotator][item]
        if plan == "skip":
            page.keyboard.press("s")
            page.keyboard.type("the prompt is cut off")
        else:
            left_good = page.locator("#response-a").inner_text().startswith("GOOD")
            key = "3" if plan == "tie" else "1" if left_good == (plan == "good") else "2"
            page.keyboard.press(key)
            if (annotator, item) == ("alice", "p1"):  # confidence and rationale, by keyboard too
                page.keyboard.press("c")
                page.keyboard.type("4")
                page.keyboard.press("Escape")
                page.keyboard.press("r")
                page.keyboard.type("more specific")
            if (annotator, item) == ("alice", "p2"):
                page.wait_for_timeout(400)  # a slower item: its annotation_ms shows it
        page.keyboard.press("Enter")
        expect(page.locator(f"#item[data-assignment='{aid}']")).to_have_count(0)  # acknowledged: the next page
        on_screen[aid] = (time.monotonic() - shown_at) * 1000
        page.wait_for_load_state()
        expect(page.locator("#item, #done")).to_have_count(1)
    expect(page.locator("#done")).to_contain_text("All done for today")
    context.close()
    return on_screen


def canonical(record: dict) -> str:
    """The record's label with the lexicographically smaller response first (as aggregation orients it)."""
    return record["label"] if record["response_a"] <= record["response_b"] else FLIP[record["label"]]


def test_two_annotators_label_a_batch_and_the_data_pillar_agrees(browser, storage_root, dagster_instance):
    root = storage_root
    tokens = add_annotators(root, "alice", "bob")
    rows = [assignment(f"{who}-{item}", who, item, kind, good=good) for who in ("alice", "bob")
            for item, kind, good in ITEMS]
    rows.append(assignment("bob-x1", "bob", "x1"))
    write_assignments(root, rows)
    server = start_app(root, "--rotate-answers", "4", "--rotate-seconds", "3600")
    try:
        timing = label_batch(browser, server.url, "alice", tokens["alice"])
        timing |= label_batch(browser, server.url, "bob", tokens["bob"])
        assert server.terminate() == 0  # the answers still waiting land at shutdown
    finally:
        if server.process.poll() is None:
            server.process.kill()

    # the landing zone: every answer once, in finished files, in the comparison schema --------------------------
    files = landing_records(root)
    # rotated after (about) every 4 answers and at shutdown; each file finished when it appeared
    assert len(files) >= 2 and all(name.startswith(f"date={today()}/annotate-") for name in files)
    records = {r["comparison_id"]: r for rs in files.values() for r in rs}
    assert sum(len(rs) for rs in files.values()) == len(records) == 12
    assert set(records) == {r["assignment_id"] for r in rows} - {"bob-x1"}
    for name in files:
        path = root / "landing" / "comparisons" / name
        frame, report = read_comparison_file(path.name, path.read_bytes())
        assert report.status == "ok" and report.unknown_columns == [] and frame["ingest_error"].is_null().all()
    for aid, r in records.items():
        who, item = aid.split("-", 1)
        kind, plan = dict((i, k) for i, k, _ in ITEMS)[item], PLAN[who][item]
        assert set(REQUIRED_FIELDS) <= set(r) <= set(FIELD_NAMES)
        assert r["annotator_id"] == who and r["item_kind"] == kind and r["guidelines_version"] == "v1"
        assert r["orientation"] == ("swapped" if is_swapped(aid) else "as_queued")
        assert r["created_at"].startswith(today()) and r["batch_id"] == f"batch-{item}"
        # the label is in the orientation shown: the response it names is the one the plan chose
        if plan == "tie":
            assert r["label"] == "tie"
        else:
            assert r[f"response_{r['label']}"].startswith("GOOD" if plan == "good" else "BAD"), r
        good_shown = "a" if r["response_a"].startswith("GOOD") else "b"
        good_queued = dict((i, g) for i, _, g in ITEMS)[item]
        assert good_shown == (good_queued if r["orientation"] == "as_queued" else FLIP[good_queued])
        assert r["policy_a"] == ("policy-2" if r["orientation"] == "swapped" else "policy-1")
        assert r.get("expected_label") == (good_shown if kind in ("gold", "attention") else None)
        # timing: measured in the browser, never longer than the item was on screen
        assert 0 < r["annotation_ms"] <= timing[aid] + 500, (aid, r["annotation_ms"], timing[aid])
    assert records["alice-p2"]["annotation_ms"] >= 400
    assert records["alice-p1"]["confidence"] == 4 and records["alice-p1"]["rationale"] == "more specific"
    assert all("confidence" not in r for aid, r in records.items() if aid != "alice-p1")
    skip = Storage(str(root)).read_json(Storage(str(root)).path("annotation", "skips", "bob-x1.json"))
    assert skip["reason"] == "the prompt is cut off" and skip["annotator_id"] == "bob"

    # the data pillar on that day, in a real Dagster instance ---------------------------------------------------
    from rlhf_assets.definitions import defs

    result = defs().resolve_job_def("data_pillar").execute_in_process(
        partition_key=today(), instance=dagster_instance, raise_on_error=False,
        run_config={"ops": {"aggregated_labels": {"config": {"min_overlap": 4, "method": "majority"}}}})
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    storage = Storage(str(root))
    valid = storage.read_parquet(storage.table_path("validated_pairs", today()))
    assert valid.height == 12 and sorted(valid["comparison_id"]) == sorted(records)
    annotators = storage.read_parquet(storage.table_path("annotator_reliability", today()))
    agreement = storage.read_parquet(storage.table_path("annotator_agreement", today()))
    labels = storage.read_parquet(storage.table_path("aggregated_labels", today()))

    # quality-control answers are no labels (aggregation leaves gold and attention out): the agreement is the pairs'
    shared = [i for i, k, _ in ITEMS if k == "pair"]
    assert labels.height == len(shared)
    canonical_labels = {who: [canonical(records[f"{who}-{i}"]) for i in shared] for who in ("alice", "bob")}
    expected = cohen_kappa_score(canonical_labels["alice"], canonical_labels["bob"], labels=["a", "b", "tie"])
    row = agreement.filter((pl.col("annotator_1") == "alice") & (pl.col("annotator_2") == "bob"))
    assert row.height == 1 and row["n_overlap"][0] == len(shared)
    assert row["kappa"][0] == pytest.approx(expected)
    quality = {r["annotator_id"]: r for r in annotators.to_dicts()}
    aggregate = dict(labels.select("prompt", "label").iter_rows())
    for who in ("alice", "bob"):  # each annotator's kappa against the aggregate label
        against = [aggregate[f"Question about {i}?"] for i in shared]
        assert quality[who]["kappa"] == pytest.approx(cohen_kappa_score(canonical_labels[who], against,
                                                                        labels=["a", "b", "tie"]))
        assert quality[who]["n_labels"] == len(shared) and quality[who]["gold_n"] == 1
    # their gold and attention answers are in the annotator table: bob got both wrong
    assert quality["alice"]["gold_accuracy"] == 1.0 and quality["bob"]["gold_accuracy"] == 0.0
    assert quality["alice"]["attention_failures"] == 0 and quality["bob"]["attention_failures"] == 1
    # where both chose the GOOD response (p1, p2) or a tie (p4), so does the aggregate; every pair has both votes
    by_prompt = {r["prompt"]: r for r in labels.to_dicts()}
    assert {r["n_votes"] for r in by_prompt.values()} == {2}
    assert by_prompt["Question about p1?"]["chosen"].startswith("GOOD")
    assert by_prompt["Question about p2?"]["chosen"].startswith("GOOD")
    assert by_prompt["Question about p4?"]["label"] == "tie"
