"""`rlhf validate` end to end: the real entry point in a subprocess, on files with every kind of bad input.

Each invocation pays ~5 s of imports, so the few invocations are started together once per module and the
tests read their results.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from rlhf_assets_tests.records import DAY, rec

REPO = Path(__file__).resolve().parents[1]
REPORT_KEYS = {"path", "status", "rows_in", "rows_valid", "rows_quarantined", "failures"}


def jsonl(*rows: dict | bytes) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pl.DataFrame(rows).write_parquet(buf)
    return buf.getvalue()


CLEAN = [rec(i) for i in range(5)]

# name -> bytes, for files that read fine but have bad rows: (bytes, rows_in, rows_quarantined, failure substrings)
ROW_PROBLEMS: dict[str, tuple[bytes, int, int, list[str]]] = {
    "non_utf8_lines.jsonl": (
        jsonl(rec(0), b"\xff\xfe" + json.dumps(rec(1)).encode(), "café".encode("latin-1") + b"\n", rec(2)),
        4, 2, ["to_be_null(ingest_error)"],
    ),
    "truncated.jsonl": (jsonl(rec(0), rec(1)) + json.dumps(rec(2)).encode()[:30], 3, 1, ["to_be_null(ingest_error)"]),
    "wrong_types.jsonl": (
        jsonl(rec(0), rec(1, label=1), rec(2, prompt={"x": 1}), rec(3, annotation_ms="9"), rec(4, confidence=True),
              rec(5, annotation_ms=10**40)),
        6, 5, ["to_be_null(ingest_error)", "to_not_be_null(label)", "to_not_be_null(prompt)"],
    ),
    "unknown_labels.jsonl": (
        jsonl(rec(0), rec(1, label="A"), rec(2, label="maybe"), rec(3, label="")), 4, 3, ["to_be_in_set(label)"],
    ),
    "huge_fields.jsonl": (
        jsonl(rec(0), rec(1, response_a="x" * (2 * 1024 * 1024)), rec(2, prompt="p" * 100_000)),
        3, 2, ["lengths_to_be_between(response_a)", "lengths_to_be_between(prompt)"],
    ),
    "json_lines_mixed.jsonl": (jsonl(rec(0), b"[1, 2]", b"42", b'"text"'), 4, 3, ["to_be_null(ingest_error)"]),
}

# name -> (bytes or None for "do not create", substring of the error)
UNREADABLE: dict[str, tuple[bytes | None, str]] = {
    "empty.jsonl": (b"", "empty"),
    "array.jsonl": (json.dumps(CLEAN).encode(), "JSON array"),
    "binary.jsonl": (bytes(range(256)) * 4, "binary"),
    "latin1.jsonl": ("é,ü\nçà\n".encode("latin-1"), "no line is a JSON object"),
    "not_gzip.jsonl.gz": (jsonl(*CLEAN), "gzip"),
    "corrupt.parquet": (b"PAR1garbagePAR1", "Parquet"),
    "table.csv": (b"comparison_id,label\nc1,a\n", "unsupported"),
    "missing.jsonl": (None, "no such file"),
}


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def _write(directory: Path, files: dict[str, bytes | None]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        if data is not None:
            (directory / name).write_bytes(data)
        paths.append(str(directory / name))
    return paths


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    tmp = tmp_path_factory.mktemp("cli_validate")
    clean_files = _write(tmp / "clean", {
        "clean.jsonl": jsonl(*CLEAN),
        "clean.jsonl.gz": gzip.compress(jsonl(*CLEAN)),
        "clean.parquet": parquet(CLEAN),
    })
    other_day = jsonl(rec(0), rec(1, created_at="2025-06-02T08:00:00Z"), rec(2, created_at="2025-05-31T23:59:59Z"))
    day_file = _write(tmp / "day", {"other_day.jsonl": other_day})
    row_files = _write(tmp / "rows", {name: v[0] for name, v in ROW_PROBLEMS.items()})
    unreadable_files = _write(tmp / "unreadable", {name: v[0] for name, v in UNREADABLE.items()})
    quarantine = tmp / "quarantine"

    commands = {
        "clean": ["--json", *clean_files, *day_file],
        "rows": ["--json", "--day", DAY, "--quarantine-dir", str(quarantine / "rows"), row_files[0],
                 clean_files[0], *row_files[1:], *day_file],
        "everything": ["--json", "--quarantine-dir", str(quarantine / "files"), *unreadable_files[:4],
                       clean_files[0], row_files[2], *unreadable_files[4:], str(tmp / "clean")],
        "bad_day": ["--json", "--day", "2024-13-01", clean_files[0]],
    }
    env = os.environ | {"GX_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)}
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "rlhf_assets.cli", "validate", *args], cwd=tmp, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, args in commands.items()
    }
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[name] = Run(commands[name], proc.returncode, out, err)
    results["_tmp"] = tmp  # type: ignore[assignment]
    return results


def _by_name(document: dict) -> dict[str, dict]:
    return {Path(f["path"]).name: f for f in document["files"]}


def _assert_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.stderr[-3000:]


def _assert_report_shape(document: dict, n_files: int) -> None:
    assert set(document) == {"files"}
    assert len(document["files"]) == n_files
    for report in document["files"]:
        assert REPORT_KEYS <= set(report), report
        assert report["status"] in ("ok", "quarantined", "unreadable")
        assert report["rows_in"] == report["rows_valid"] + report["rows_quarantined"]


def test_clean_files_exit_0(runs):
    run = runs["clean"]
    _assert_no_traceback(run)
    assert run.returncode == 0, run.stderr[-3000:]
    document = run.json()
    _assert_report_shape(document, 4)
    for report in document["files"]:
        assert report["status"] == "ok"
        assert report["rows_quarantined"] == 0 and report["failures"] == {}
        assert report["error"] is None
    assert [f["rows_in"] for f in document["files"]] == [5, 5, 5, 3]  # other days are fine without --day


def test_bad_rows_exit_1_with_counts_and_failures(runs):
    run = runs["rows"]
    _assert_no_traceback(run)
    assert run.returncode == 1, run.stderr[-3000:]
    document = run.json()
    _assert_report_shape(document, len(ROW_PROBLEMS) + 2)
    assert [Path(f["path"]).name for f in document["files"]] == [*list(ROW_PROBLEMS)[:1], "clean.jsonl",
                                                                 *list(ROW_PROBLEMS)[1:], "other_day.jsonl"]
    files = _by_name(document)
    assert files["clean.jsonl"]["status"] == "ok" and files["clean.jsonl"]["rows_valid"] == 5
    for name, (_, rows_in, rows_quarantined, needles) in ROW_PROBLEMS.items():
        report = files[name]
        assert report["status"] == "quarantined", (name, report)
        assert (report["rows_in"], report["rows_quarantined"]) == (rows_in, rows_quarantined), (name, report)
        assert report["error"] is None
        for needle in needles:
            assert any(needle in f for f in report["failures"]), (name, needle, report["failures"])
        assert max(report["failures"].values()) <= rows_quarantined


def test_unreadable_files_exit_2_with_a_status_per_file_and_no_traceback(runs):
    run = runs["everything"]
    _assert_no_traceback(run)
    assert run.returncode == 2, run.stderr[-3000:]
    document = run.json()
    _assert_report_shape(document, len(UNREADABLE) + 3)
    files = _by_name(document)
    for name, (_, reason) in UNREADABLE.items():
        report = files[name]
        assert report["status"] == "unreadable", (name, report)
        assert reason.lower() in report["error"].lower(), (name, report["error"])
        assert (report["rows_in"], report["rows_valid"], report["rows_quarantined"]) == (0, 0, 0)
    assert files["clean"]["status"] == "unreadable" and files["clean"]["error"] == "is a directory"
    assert files["clean.jsonl"]["status"] == "ok" and files["clean.jsonl"]["rows_valid"] == 5
    assert files["wrong_types.jsonl"]["status"] == "quarantined"
    assert files["wrong_types.jsonl"]["rows_quarantined"] == ROW_PROBLEMS["wrong_types.jsonl"][2]
    # The order of the report is the order of the arguments.
    assert [Path(f["path"]).name for f in document["files"]] == [
        *list(UNREADABLE)[:4], "clean.jsonl", "wrong_types.jsonl", *list(UNREADABLE)[4:], "clean"]


def _out(directory: Path, name: str, suffix: str = "") -> Path:
    """The quarantine output for input file `name`: named `<position>-<name><suffix>`."""
    matches = [p for p in directory.glob(f"*-{name}{suffix}") if p.name.split("-", 1)[1] == name + suffix]
    assert len(matches) <= 1, matches
    return matches[0] if matches else directory / f"absent-{name}{suffix}"


def test_quarantine_dir_holds_rejected_rows_and_unreadable_files(runs):
    tmp: Path = runs["_tmp"]  # type: ignore[assignment]
    rows_dir, files_dir = tmp / "quarantine" / "rows", tmp / "quarantine" / "files"
    row_reports = _by_name(runs["rows"].json())

    for name, report in row_reports.items():
        rejected = _out(rows_dir, name, ".rejected.jsonl")
        if report["status"] == "ok":
            assert not rejected.exists()
            continue
        lines = rejected.read_text(encoding="utf-8").splitlines()
        assert len(lines) == report["rows_quarantined"] > 0
        counted: dict[str, int] = {}
        for text in lines:
            row = json.loads(text)
            assert row["failed_expectations"], row
            for failed in row["failed_expectations"]:
                counted[failed] = counted.get(failed, 0) + 1
            assert row["source_line"] >= 1
            if row["ingest_error"] is not None:
                assert row["raw"]
        assert counted == report["failures"]
    assert sorted(p.name.split("-", 1)[1] for p in rows_dir.iterdir()) == sorted(
        f"{name}.rejected.jsonl" for name, r in row_reports.items() if r["status"] == "quarantined")

    file_reports = _by_name(runs["everything"].json())
    for name, (data, _) in UNREADABLE.items():
        if data is None:  # nothing to copy
            assert not _out(files_dir, name).exists()
            continue
        assert _out(files_dir, name).read_bytes() == data
        reason = json.loads(_out(files_dir, name, ".reason.json").read_text())
        assert reason["status"] == "unreadable" and reason["error"] == file_reports[name]["error"]
        assert reason["size_bytes"] == len(data)
    rejected = _out(files_dir, "wrong_types.jsonl", ".rejected.jsonl").read_text().splitlines()
    assert len(rejected) == file_reports["wrong_types.jsonl"]["rows_quarantined"]
    assert not _out(files_dir, "clean.jsonl", ".rejected.jsonl").exists()


def test_day_enforces_the_partition_day(runs):
    # The same file is "ok" without --day (test_clean_files_exit_0); with it, the rows of other days fail.
    report = _by_name(runs["rows"].json())["other_day.jsonl"]
    assert report["status"] == "quarantined"
    assert (report["rows_in"], report["rows_valid"], report["rows_quarantined"]) == (3, 1, 2)
    assert report["failures"] == {"expect_column_values_to_be_between(created_at_epoch)": 2}


def test_invalid_day_is_a_usage_error(runs):
    run = runs["bad_day"]
    _assert_no_traceback(run)
    assert run.returncode == 2
    assert "--day must be YYYY-MM-DD" in run.stderr
    assert run.stdout == ""
