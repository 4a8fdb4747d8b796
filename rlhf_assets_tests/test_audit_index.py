"""The correlation monitor's incremental audit index (automation/audit_index.py) and sample-weight index
(annotation/audit.py audit_weights) give what reading every file gives, while a tick reads only the files that are
new or changed: files added to an old day, rewritten (same size too), deleted; counted, not timed."""

import json
import os
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from rlhf_assets.annotation.audit import AUDIT_DIR, audit_weights, weights_from_samples
from rlhf_assets.automation.audit_index import indexed_audits
from rlhf_assets.automation.correlation import _sha, correlations, live_correlations, read_audits
from rlhf_assets.automation.served_index import INDEX as SERVED_INDEX
from rlhf_assets.automation.settings import AutomationSettings
from rlhf_assets_tests.counting_storage import CountingStorage

DAYS = ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]
PAIRS = [(f"prompt {i}", f"answer A{i}", f"answer B{i}") for i in range(40)]
SETTINGS = AutomationSettings(min_audits=5, n_boot=100, audit_window=200)


def audit_lines(seed: int, n: int, label: str | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    lines = []
    for j in range(n):
        prompt, a, b = PAIRS[int(rng.integers(len(PAIRS)))]
        lines.append(json.dumps({"prompt": prompt, "response_a": a, "response_b": b,
                                 "label": label or str(rng.choice(["a", "b", "tie"])),
                                 "annotator_id": f"h{j % 3}", "created_at": f"2026-03-0{seed % 4 + 1}T{j:02d}:00:00Z"}))
    lines.append("not json")  # skipped by both readers
    return ("\n".join(lines) + "\n").encode()


def write_audit(storage, day: str, name: str, data: bytes) -> None:
    storage.write_bytes(storage.path("landing", "audits", f"date={day}", name), data)


def write_sample(storage, day: str, pairs: list[int], pi: float) -> None:
    rows = []
    for i in pairs:
        prompt, a, b = PAIRS[i]
        first, second = sorted((_sha(a), _sha(b)))
        rows.append({"prompt_sha256": _sha(prompt), "first": first, "second": second, "inclusion_probability": pi})
    storage.write_parquet(storage.path(*AUDIT_DIR, f"date={day}", "sample.parquet"), pl.DataFrame(rows))


@pytest.fixture
def storage(tmp_path):
    storage = CountingStorage(str(tmp_path / "root"))
    for d, day in enumerate(DAYS):
        for f in range(3):
            write_audit(storage, day, f"audits-{f}.jsonl", audit_lines(10 * d + f, 20))
        write_sample(storage, day, list(range(d * 8, d * 8 + 16)), 0.1 * (d + 1))  # overlapping: latest wins
    rng = np.random.default_rng(0)
    served = []
    for prompt, a, b in PAIRS:
        first, second = sorted((_sha(a), _sha(b)))
        served.append({"prompt_sha256": _sha(prompt), "first": first, "second": second,
                       "p_first": float(rng.uniform()), "artifact_id": "rm-1", "release": "r1",
                       "alias": "production", "time": datetime(2026, 3, 1, tzinfo=UTC)})
    storage.write_parquet(storage.path(*SERVED_INDEX), pl.DataFrame(served))
    storage.reads.clear()
    return storage


def full_weights(storage) -> pl.DataFrame:
    """audit_weights as it was: every day's sample.parquet read, oldest first."""
    frames = [storage.read_parquet(storage.path(*AUDIT_DIR, f"date={d}", "sample.parquet"))
              for d in sorted(p.name.removeprefix("date=") for p in storage.path(*AUDIT_DIR).iterdir())]
    return weights_from_samples(pl.concat(frames).select("prompt_sha256", "first", "second", "inclusion_probability"))


def assert_same_as_full_read(storage) -> None:
    from rlhf_assets.automation.served_index import read_index

    incremental = [c.to_dict() for c in live_correlations(storage, SETTINGS)]
    audits, weights = indexed_audits(storage), audit_weights(storage)
    storage.reads.clear()
    full_audits, full = read_audits(storage), full_weights(storage)
    assert_frame_equal(audits, full_audits)
    assert_frame_equal(weights, full)
    reference = [c.to_dict() for c in correlations(full_audits, read_index(storage), SETTINGS, weights=full)]
    assert incremental == reference and incremental[0]["spearman"] is not None
    storage.reads.clear()


def tick(storage) -> tuple[list[str], list[str]]:
    """One correlation measurement as the sensor takes it: the audit files and the sample files it read."""
    storage.reads.clear()
    live_correlations(storage, SETTINGS)
    read = storage.reads_under("landing", "audits"), storage.reads_under(*AUDIT_DIR)
    storage.reads.clear()
    return read


def test_a_tick_reads_only_new_or_changed_files_and_matches_the_full_read(storage):
    audits, samples = tick(storage)  # the first tick indexes everything
    assert (len(audits), len(samples)) == (12, 4)
    assert_same_as_full_read(storage)
    assert tick(storage) == ([], [])  # nothing new: no audit or sample file read

    write_audit(storage, DAYS[0], "audits-late.jsonl", audit_lines(99, 15))  # a file added to an old day
    audits, samples = tick(storage)
    assert [r.rsplit("/", 2)[-2:] for r in audits] == [[f"date={DAYS[0]}", "audits-late.jsonl"]] and not samples
    assert_same_as_full_read(storage)

    write_audit(storage, DAYS[2], "audits-1.jsonl", audit_lines(7, 5))  # rewritten, smaller
    assert [r.rsplit("/", 1)[-1] for r in tick(storage)[0]] == ["audits-1.jsonl"]
    assert_same_as_full_read(storage)
    assert indexed_audits(storage).height == read_audits(storage).height == 3 * 20 * 4 - 20 + 5 + 15

    write_audit(storage, DAYS[2], "audits-1.jsonl", audit_lines(7, 5, label="a"))
    assert len(tick(storage)[0]) == 1
    before = indexed_audits(storage)["prefers_first"].sum()
    # the same size, other labels, even with the same modification time (a clock tick is milliseconds): the
    # atomic rewrite is a new file (inode)
    rewritten = storage.path("landing", "audits", f"date={DAYS[2]}", "audits-1.jsonl")
    old = os.stat(rewritten)
    write_audit(storage, DAYS[2], "audits-1.jsonl", audit_lines(7, 5, label="b"))
    os.utime(rewritten, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (os.stat(rewritten).st_size, os.stat(rewritten).st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert len(tick(storage)[0]) == 1
    assert indexed_audits(storage)["prefers_first"].sum() != before
    assert_same_as_full_read(storage)

    storage.path("landing", "audits", f"date={DAYS[1]}", "audits-0.jsonl").unlink()  # a file taken away
    assert tick(storage) == ([], [])
    assert_same_as_full_read(storage)


def test_a_rewritten_sample_is_read_again_and_its_weights_replace_the_old_ones(storage):
    audit_weights(storage)
    assert len(storage.reads_under(*AUDIT_DIR)) == 4
    write_sample(storage, DAYS[1], list(range(30, 40)), 0.5)  # audit_queue rematerialized for an old day
    storage.reads.clear()
    weights = audit_weights(storage)
    assert [r.rsplit("/", 2)[-2] for r in storage.reads_under(*AUDIT_DIR)] == [f"date={DAYS[1]}"]
    assert_frame_equal(weights, full_weights(storage))
    write_sample(storage, "2026-02-28", [0, 1], 0.25)  # a day before every other
    storage.reads.clear()
    assert_frame_equal(audit_weights(storage), full_weights(storage))


def test_a_damaged_index_is_rebuilt_from_the_files(storage):
    indexed_audits(storage)
    index = storage.path("monitoring", "audit_rows.parquet")
    index.write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="unusable index"):
        assert_frame_equal(indexed_audits(storage), read_audits(storage))
    storage.reads.clear()
    assert_frame_equal(indexed_audits(storage), read_audits(storage))  # rewritten whole: no warning, no re-read
    assert len([r for r in storage.reads if "/landing/audits/" in r]) == 12  # only the full read's own


def test_on_s3_a_tick_lists_and_reads_only_what_changed(s3_storage, moto_server):
    """The same on an s3:// root (moto's server on loopback): a same-size rewrite within the same second is told
    apart by its ETag."""
    storage = CountingStorage(s3_storage[0].uri, {"endpoint_url": moto_server.endpoint})
    for day in DAYS[:2]:
        write_audit(storage, day, "audits-0.jsonl", audit_lines(1, 10, label="a"))
        write_sample(storage, day, list(range(10)), 0.2)
    assert_frame_equal(indexed_audits(storage), read_audits(storage))
    storage.reads.clear()
    before = storage.list_file_stats(storage.path("landing", "audits", f"date={DAYS[0]}"))[0]
    write_audit(storage, DAYS[0], "audits-0.jsonl", audit_lines(1, 10, label="b"))  # same size, same second
    after = storage.list_file_stats(storage.path("landing", "audits", f"date={DAYS[0]}"))[0]
    assert after[1] == before[1] and after[3] != before[3]  # size the same, ETag not
    write_audit(storage, DAYS[0], "audits-1.jsonl", audit_lines(2, 4))
    audits = indexed_audits(storage)
    assert sorted(r.rsplit("/", 1)[-1] for r in storage.reads_under("landing", "audits")) == [
        "audits-0.jsonl", "audits-1.jsonl"]
    assert_frame_equal(audits, read_audits(storage))
    assert_frame_equal(audit_weights(storage), full_weights(storage))
