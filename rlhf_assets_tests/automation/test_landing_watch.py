"""Which landing files a day needs a run for (new or changed checksums), and the cursor after asking."""

import hashlib
import os

from rlhf_assets.automation.landing_watch import DayRequest, LandingState, scan
from rlhf_assets.storage import Storage


def put(store: Storage, day: str, name: str, data: bytes, kind: str = "comparisons") -> None:
    store.write_bytes(store.path("landing", kind, f"date={day}", name), data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_no_landing_zone_asks_for_nothing(tmp_path):
    state = LandingState({"x": [1, 2, "c"]}, {"2026-03-01": ["c"]})
    assert scan(Storage(tmp_path), state) == ([], state)


def test_new_files_ask_once_per_day_and_never_again(tmp_path):
    store = Storage(tmp_path)
    put(store, "2026-03-02", "b.jsonl", b"two")
    put(store, "2026-03-01", "a.jsonl", b"one")
    put(store, "2026-03-01", ".partial", b"hidden")  # a hidden upload in progress
    store.path("landing", "comparisons", "notes").mkdir()  # not a day
    put(store, "2026-03-01", "x", b"y", kind="audits")  # another kind
    requests, state = scan(store, LandingState())
    assert requests == [DayRequest("2026-03-01", ["a.jsonl"], [sha(b"one")]),
                        DayRequest("2026-03-02", ["b.jsonl"], [sha(b"two")])]
    assert state.requested == {"2026-03-01": [sha(b"one")], "2026-03-02": [sha(b"two")]}
    again, _ = scan(store, LandingState.from_json(state.to_json()))  # a restarted daemon: the cursor's JSON
    assert again == []


def test_a_changed_file_asks_again_and_a_reverted_one_does_not(tmp_path):
    store = Storage(tmp_path)
    put(store, "2026-03-01", "a.jsonl", b"one")
    put(store, "2026-03-01", "b.jsonl", b"other")
    _, state = scan(store, LandingState())
    put(store, "2026-03-01", "a.jsonl", b"one, corrected")
    [request], state = scan(store, state)
    assert (request.files, request.checksums) == (["a.jsonl"], [sha(b"one, corrected")])
    put(store, "2026-03-01", "a.jsonl", b"one")  # back to what was already processed
    assert scan(store, state)[0] == []


def test_a_vanished_file_asks_for_nothing(tmp_path):
    store = Storage(tmp_path)
    put(store, "2026-03-01", "a.jsonl", b"one")
    _, state = scan(store, LandingState())
    os.remove(store.path("landing", "comparisons", "date=2026-03-01", "a.jsonl"))
    assert scan(store, state)[0] == []


def test_an_unchanged_file_keeps_its_checksum_without_reading(tmp_path):
    store = Storage(tmp_path)
    put(store, "2026-03-01", "a.jsonl", b"one")
    path = store.path("landing", "comparisons", "date=2026-03-01", "a.jsonl")
    st = os.stat(path)
    known = LandingState({"2026-03-01/a.jsonl": [st.st_size, st.st_mtime_ns, "cached"]}, {"2026-03-01": ["cached"]})
    assert scan(store, known)[0] == []  # the cached checksum was trusted (the real one was never requested)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched: recomputed
    [request], _ = scan(store, known)
    assert request.checksums == [sha(b"one")]


def test_run_key_names_the_day_and_digests_the_checksums_in_any_order():
    a = DayRequest("2026-03-01", ["x", "y"], ["s1", "s2"])
    assert a.run_key.startswith("landing:2026-03-01:")
    assert a.run_key == DayRequest("2026-03-01", ["y", "x"], ["s2", "s1"]).run_key
    assert a.run_key != DayRequest("2026-03-01", ["x"], ["s1"]).run_key
    assert a.run_key != DayRequest("2026-03-02", ["x", "y"], ["s1", "s2"]).run_key


def test_state_json_round_trip():
    state = LandingState({"d/a": [3, 4, "c"]}, {"d": ["c"]})
    assert LandingState.from_json(state.to_json()) == state
    assert LandingState.from_json(None) == LandingState() == LandingState.from_json("")
