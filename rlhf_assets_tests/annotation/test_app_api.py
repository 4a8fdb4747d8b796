"""The annotation app's HTTP API against a real `rlhf annotate` process on loopback: every bad input is refused with
a clear message and the right status and stores nothing; answers are idempotent by comparison id; stored answers
rotate into immutable landing files that the landing sensor's scan picks up once each."""

from __future__ import annotations

import json
import time

import pytest

from rlhf_assets.annotation.app import is_swapped
from rlhf_assets.automation.landing_watch import LandingState, scan
from rlhf_assets.preference.ingest import read_comparison_file
from rlhf_assets.preference.schema import FIELD_NAMES
from rlhf_assets.storage import Storage
from rlhf_assets_tests.annotation.app_support import (
    add_annotators,
    add_expired,
    assignment,
    landing_records,
    start_app,
    today,
    write_assignments,
)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """An app over a roster (alice, bob; carol expired; dave deactivated) and alice's and bob's queue for today.
    Rotation is left to shutdown, so the stored answers can be looked at one by one."""
    root = tmp_path_factory.mktemp("annotate") / "rlhf"
    tokens = add_annotators(root, "alice", "bob", "dave")
    tokens["carol"] = add_expired(root, "carol")
    from rlhf_assets.annotation.roster import Roster

    Roster(Storage(str(root))).set_active("dave", False)
    rows = [assignment(f"alice-{i}", "alice", f"item-{i}", good="ab"[i % 2]) for i in range(8)]
    rows += [assignment("alice-gold", "alice", "gold-1", "gold", good="b"),
             assignment("bob-0", "bob", "item-0"), assignment("bob-1", "bob", "item-1")]
    write_assignments(root, rows)
    server = start_app(root, "--rotate-answers", "1000", "--rotate-seconds", "3600", "--max-rationale-chars", "50")
    yield server, tokens
    server.terminate()


def answers_stored(root) -> list[str]:
    return sorted(p.stem for p in (root / "annotation" / "answers").glob("*.json"))


def test_sign_in_refusals(app):
    server, tokens = app
    with server.client() as client:
        cases = [
            ({"annotator": "mallory", "token": tokens["alice"]}, 401, "annotator", "unknown annotator 'mallory'"),
            ({"annotator": "alice", "token": tokens["bob"]}, 401, "token", "wrong token for annotator 'alice'"),
            ({"annotator": "carol", "token": tokens["carol"]}, 401, "token", "expired"),
            ({"annotator": "dave", "token": tokens["dave"]}, 403, "annotator", "deactivated"),
            ({"annotator": "alice"}, 422, "token", "missing field token"),
            ({"annotator": "alice", "token": tokens["alice"], "admin": True}, 422, "admin", "unknown field"),
        ]
        for body, status, field, message in cases:
            response = client.post("/api/session", json=body)
            assert response.status_code == status, (body, response.text)
            assert response.json()["field"] == field and message in response.json()["error"], response.text
            assert "rlhf_annotate_session" not in response.cookies
        form = client.post("/api/session", data={"annotator": "alice", "token": tokens["alice"]})
        assert form.status_code == 415 and "JSON" in form.json()["error"]  # a cross-site form cannot sign in
        # without a session nothing is served or stored
        assert client.get("/api/next").status_code == 401
        refused = client.post("/api/answers", json={"assignment_id": "alice-0", "label": "a"})
        assert refused.status_code == 401 and "not signed in" in refused.json()["error"]
        forged = client.post("/api/answers", json={"assignment_id": "alice-0", "label": "a"},
                             headers={"Authorization": "Bearer forged-session"})
        assert forged.status_code == 401 and "sign in again" in forged.json()["error"]
        assert "Sign in" in client.get("/").text
    assert "alice-0" not in answers_stored(server.root)


def test_bad_answers_are_refused_and_store_nothing(app):
    server, tokens = app
    with server.signed_in("alice", tokens["alice"]) as client:
        first = client.get("/api/next").json()
        assert first["item"]["assignment_id"] == "alice-0" and first["progress"]["total"] == 9
        cases = [
            ({"assignment_id": "alice-0", "label": "A"}, 422, "label", "label must be one of a, b, tie"),
            ({"assignment_id": "alice-0", "label": "left"}, 422, "label", "got 'left'"),
            ({"assignment_id": "alice-0"}, 422, "label", "label must be one of"),
            ({"assignment_id": "alice-0", "label": "a", "confidence": 6}, 422, "confidence", "1 to 5"),
            ({"assignment_id": "alice-0", "label": "a", "confidence": "5"}, 422, "confidence", "1 to 5"),
            ({"assignment_id": "alice-0", "label": "a", "rationale": "x" * 51}, 422, "rationale",
             "rationale is 51 characters; at most 50"),
            ({"assignment_id": "alice-0", "label": "a", "annotation_ms": -5}, 422, "annotation_ms", "non-negative"),
            ({"assignment_id": "alice-0", "label": "a", "annotator_id": "bob"}, 422, "annotator_id",
             "unknown field"),
            ({"assignment_id": "bob-0", "label": "a"}, 403, "assignment_id", "not assigned to 'alice'"),
            ({"assignment_id": "nobody-7", "label": "a"}, 404, "assignment_id", f"no assignment 'nobody-7' in the "
                                                                               f"queue of {today()}"),
            ({"label": "a"}, 422, "assignment_id", "missing field assignment_id"),
        ]
        for body, status, field, message in cases:
            response = client.post("/api/answers", json=body)
            assert response.status_code == status, (body, response.text)
            assert response.json()["field"] == field and message in response.json()["error"], (body, response.text)
        huge = client.post("/api/answers", content=json.dumps({"assignment_id": "alice-0", "label": "a",
                                                               "rationale": "x" * 70_000}),
                           headers={"Content-Type": "application/json"})
        assert huge.status_code == 413 and "over the limit" in huge.json()["error"]
        assert client.post("/api/answers", content=b"{not json", headers={"Content-Type": "application/json"}
                           ).status_code == 400
        # nothing was stored: the item is still the next one, unanswered
        assert answers_stored(server.root) == []
        again = client.get("/api/next").json()
        assert again["item"]["assignment_id"] == "alice-0" and again["progress"]["answered"] == 0


def test_answers_are_idempotent_by_comparison_id(app):
    server, tokens = app
    with server.signed_in("alice", tokens["alice"]) as client:
        item = client.get("/api/next").json()["item"]
        shown_again = client.get("/api/next").json()["item"]
        assert shown_again == item  # a reload shows the same item in the same order
        started = time.monotonic()
        body = {"assignment_id": item["assignment_id"], "label": "b", "confidence": 4, "rationale": "clearer",
                "annotation_ms": 10**9}  # a browser clock far off: the server's own timing bounds it
        ack = client.post("/api/answers", json=body)
        elapsed_ms = (time.monotonic() - started) * 1000
        assert ack.status_code == 200 and ack.json()["stored"] and ack.json()["comparison_id"] == "alice-0"
        replay = client.post("/api/answers", json=body | {"annotation_ms": 5})
        assert replay.status_code == 200 and replay.json() == ack.json()  # the same acknowledgement
        changed = client.post("/api/answers", json=body | {"label": "a"})
        assert changed.status_code == 409
        assert "already answered" in changed.json()["error"] and "label 'b'" in changed.json()["error"]
        assert client.post("/api/answers", json=body | {"confidence": 2}).status_code == 409
        assert client.get("/api/next").json()["item"]["assignment_id"] == "alice-1"  # it left the queue
    stored = json.loads((server.root / "annotation" / "answers" / "alice-0.json").read_text())["record"]
    assert stored["label"] == "b" and stored["confidence"] == 4 and stored["rationale"] == "clearer"
    assert 0 <= stored["annotation_ms"] <= elapsed_ms + 2000
    assert stored["orientation"] == ("swapped" if is_swapped("alice-0") else "as_queued")
    assert (stored["response_a"], stored["response_b"]) == (item["response_a"], item["response_b"])
    assert stored["guidelines_version"] == "v1" and stored["item_kind"] == "pair"
    assert stored["created_at"].startswith(today())


def test_gold_answer_records_expected_label_as_shown(app):
    server, tokens = app
    with server.signed_in("alice", tokens["alice"]) as client:
        client.get("/api/next")  # being served starts the server's clock for the item it serves
        ack = client.post("/api/answers", json={"assignment_id": "alice-gold", "label": "tie",
                                                 "annotation_ms": 1000})
        assert ack.status_code == 200
    record = json.loads((server.root / "annotation" / "answers" / "alice-gold.json").read_text())["record"]
    # queued with the GOOD response second (expected "b"): shown swapped it is "a"
    good_side = "a" if record["response_a"].startswith("GOOD") else "b"
    assert record["expected_label"] == good_side
    assert record["expected_label"] == ("a" if is_swapped("alice-gold") else "b")
    assert record["annotation_ms"] is None  # never served to alice by this process: no timing to bound it by


def test_skips_need_a_reason_and_leave_the_queue(app):
    server, tokens = app
    with server.signed_in("bob", tokens["bob"]) as client:
        assert client.get("/api/next").json()["item"]["assignment_id"] == "bob-0"
        empty = client.post("/api/skips", json={"assignment_id": "bob-0", "reason": "  "})
        assert empty.status_code == 422 and empty.json()["field"] == "reason"
        long = client.post("/api/skips", json={"assignment_id": "bob-0", "reason": "x" * 301})
        assert long.status_code == 422 and "at most 300" in long.json()["error"]
        assert client.post("/api/skips", json={"assignment_id": "alice-3", "reason": "no"}).status_code == 403
        ack = client.post("/api/skips", json={"assignment_id": "bob-0", "reason": "not in a language I read"})
        assert ack.status_code == 200 and ack.json()["skipped"]
        assert client.post("/api/skips", json={"assignment_id": "bob-0", "reason": "not in a language I read"}
                           ).json() == ack.json()
        answer = client.post("/api/answers", json={"assignment_id": "bob-0", "label": "a"})
        assert answer.status_code == 409 and "skipped" in answer.json()["error"]
        state = client.get("/api/next").json()
        assert state["item"]["assignment_id"] == "bob-1" and state["progress"]["skipped"] == 1
        assert client.post("/api/answers", json={"assignment_id": "bob-1", "label": "a"}).status_code == 200
        done = client.get("/api/next").json()
        assert done["done"] and done["progress"] == {"day": today(), "total": 2, "answered": 1, "skipped": 1,
                                                     "position": 2}
        assert "All done for today" in client.get("/").text
    skip = json.loads((server.root / "annotation" / "skips" / "bob-0.json").read_text())
    assert skip["reason"] == "not in a language I read" and skip["annotator_id"] == "bob"
    assert "bob-0" not in answers_stored(server.root)


def test_others_answers_are_never_shown(app):
    server, tokens = app
    with server.signed_in("alice", tokens["alice"]) as alice, server.signed_in("bob", tokens["bob"]) as bob:
        item = alice.get("/api/next").json()["item"]
        assert alice.post("/api/answers", json={"assignment_id": item["assignment_id"], "label": "a",
                                                "rationale": "SECRET-RATIONALE"}).status_code == 200
        for client in (alice, bob):
            assert "SECRET-RATIONALE" not in client.get("/").text + client.get("/api/next").text


def test_a_double_submission_stores_one_answer(app):
    """The same answer sent four times at once (a double click, a retry racing the first try): one stored answer,
    four identical acknowledgements."""
    from concurrent.futures import ThreadPoolExecutor

    server, tokens = app
    with server.signed_in("alice", tokens["alice"]) as client:
        body = {"assignment_id": "alice-5", "label": "b", "confidence": 3}
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: client.post("/api/answers", json=body), range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.text for r in responses}) == 1
    assert answers_stored(server.root).count("alice-5") == 1


def test_rotation_lands_each_answer_once(tmp_path):
    """Answers rotate into a landing file once rotate_answers are waiting, and at shutdown; the landing sensor's
    scan requests each file once; audits land apart; nothing is written twice."""
    root = tmp_path / "rlhf"
    tokens = add_annotators(root, "alice")
    rows = [assignment(f"a-{i}", "alice", f"item-{i}") for i in range(3)] + [assignment("a-audit", "alice",
                                                                                         "served-1", "audit")]
    write_assignments(root, rows)
    server = start_app(root, "--rotate-answers", "2", "--rotate-seconds", "3600")
    storage, state = Storage(str(root)), LandingState()
    try:
        with server.signed_in("alice", tokens["alice"]) as client:
            for aid in ("a-0", "a-1"):
                client.get("/api/next")
                assert client.post("/api/answers", json={"assignment_id": aid, "label": "a",
                                                         "annotation_ms": 800}).status_code == 200
            deadline = time.monotonic() + 20
            while not landing_records(root) and time.monotonic() < deadline:
                time.sleep(0.1)
            files = landing_records(root)
            assert [[r["comparison_id"] for r in records] for records in files.values()] == [["a-0", "a-1"]]
            requests, state = scan(storage, state)
            assert [r.day for r in requests] == [today()] and len(requests[0].files) == 1
            assert scan(storage, state)[0] == []  # a finished file is requested once
            for aid in ("a-2", "a-audit"):
                client.get("/api/next")
                assert client.post("/api/answers", json={"assignment_id": aid, "label": "b"}).status_code == 200
        assert server.terminate() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    files = landing_records(root)
    assert len(files) == 2 and sorted(r["comparison_id"] for rs in files.values() for r in rs) == ["a-0", "a-1",
                                                                                                  "a-2"]
    audits = landing_records(root, "audits")
    assert [[r["comparison_id"] for r in rs] for rs in audits.values()] == [["a-audit"]]
    assert audits[next(iter(audits))][0]["item_kind"] == "audit"
    requests, state = scan(storage, state)
    assert len(requests) == 1 and len(requests[0].files) == 1  # only the file written at shutdown is new
    for name in files:
        path = root / "landing" / "comparisons" / name
        frame, report = read_comparison_file(path.name, path.read_bytes())
        assert report.status == "ok" and report.unknown_columns == [] and frame["ingest_error"].is_null().all()
        for record in files[name]:
            assert set(record) <= set(FIELD_NAMES)
    # a restarted app finds everything landed: it rotates nothing again
    again = start_app(root, "--rotate-answers", "1", "--rotate-seconds", "0.2")
    time.sleep(1.0)
    assert again.terminate() == 0
    assert len(landing_records(root)) == 2


def test_app_on_s3(s3_storage, s3_endpoint):
    """The same app over an s3:// root (moto on loopback): roster, queue, stored answers and landing files in the
    bucket, each answer landed once at shutdown."""
    storage, _, _ = s3_storage
    tokens = add_annotators(storage, "alice")
    write_assignments(storage, [assignment(f"s-{i}", "alice", f"item-{i}") for i in range(2)])
    server = start_app(storage.uri, "--rotate-answers", "1000", env={"RLHF_S3_ENDPOINT_URL": s3_endpoint})
    try:
        with server.signed_in("alice", tokens["alice"]) as client:
            for aid in ("s-0", "s-1"):
                assert client.get("/api/next").json()["item"]["assignment_id"] == aid
                assert client.post("/api/answers", json={"assignment_id": aid, "label": "tie"}).status_code == 200
            assert client.post("/api/answers", json={"assignment_id": "s-1", "label": "a"}).status_code == 409
        assert server.terminate() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert sorted(p.name for p in storage.list_files(storage.path("annotation", "answers"))) == ["s-0.json",
                                                                                               "s-1.json"]
    files = storage.list_files(storage.landing_dir(today()))
    assert len(files) == 1
    landed = [json.loads(line) for line in storage.read_bytes(files[0]).decode().splitlines()]
    assert [r["comparison_id"] for r in landed] == ["s-0", "s-1"] and {r["label"] for r in landed} == {"tie"}


def test_a_rewritten_or_added_queue_file_is_seen_at_the_next_request(tmp_path):
    # the app keeps the day's queue between requests; a rematerialized pairs queue or a new audit queue must show
    root = tmp_path / "rlhf"
    tokens = add_annotators(root, "erin")
    write_assignments(root, [assignment("erin-0", "erin", "item-0")])
    server = start_app(root)
    try:
        with server.signed_in("erin", tokens["erin"]) as client:
            assert client.get("/api/next").json()["progress"]["total"] == 1
            assert client.get("/api/next").json()["progress"]["total"] == 1  # served from what it kept
            write_assignments(root, [assignment(f"erin-{i}", "erin", f"item-{i}") for i in range(3)])
            assert client.get("/api/next").json()["progress"]["total"] == 3
            write_assignments(root, [assignment("erin-audit", "erin", "audit-0", "audit")], source="audit")
            state = client.get("/api/next").json()
            assert state["progress"]["total"] == 4
            answer = {"assignment_id": "erin-audit", "label": "a"}
            assert client.post("/api/answers", json=answer).status_code == 200  # the new file's item is answerable
    finally:
        server.terminate()
