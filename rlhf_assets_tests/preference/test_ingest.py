"""read_comparison_file: every format reads the same, bad files are unreadable with a reason, bad rows are kept."""

from __future__ import annotations

import gzip
import io
import json
from datetime import UTC, datetime

import polars as pl
import pytest

from rlhf_assets.preference.ingest import read_comparison_file
from rlhf_assets.preference.schema import FIELD_NAMES, RECORD_SCHEMA, pair_id
from rlhf_assets_tests.records import jsonl, rec


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


GOOD = [rec(i) for i in range(6)]


def _encode(fmt: str) -> tuple[str, bytes]:
    if fmt == "jsonl":
        return "batch.jsonl", jsonl(*GOOD)
    if fmt == "ndjson":
        return "batch.ndjson", jsonl(*GOOD)
    if fmt == "jsonl.gz":
        return "batch.jsonl.gz", gzip.compress(jsonl(*GOOD))
    assert fmt == "parquet"
    return "batch.parquet", parquet_bytes(pl.DataFrame(GOOD))


@pytest.mark.parametrize("fmt", ["jsonl", "ndjson", "jsonl.gz", "parquet"])
def test_good_file_formats_give_identical_records(fmt):
    name, data = _encode(fmt)
    frame, report = read_comparison_file(name, data)
    assert report.status == "ok" and report.error is None
    assert report.rows == len(GOOD) == frame.height
    assert report.unknown_columns == []
    assert frame.schema == pl.Schema(RECORD_SCHEMA)
    assert frame["source_file"].to_list() == [name] * len(GOOD)
    assert frame["source_line"].to_list() == list(range(1, len(GOOD) + 1))
    assert frame["ingest_error"].null_count() == frame.height
    assert frame["raw"].null_count() == frame.height
    # The record fields are exactly what was written, whatever the container.
    assert frame.select(FIELD_NAMES).to_dicts() == [{name: r.get(name) for name in FIELD_NAMES} for r in GOOD]

    reference, _ = read_comparison_file("batch.jsonl", jsonl(*GOOD))
    assert frame.drop("source_file").equals(reference.drop("source_file"))


def test_report_has_sha256_size_and_format():
    data = gzip.compress(jsonl(*GOOD))
    _, report = read_comparison_file("x/y/batch.JSONL.GZ", data)
    import hashlib

    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.size_bytes == len(data)
    assert report.format == "jsonl.gz"
    assert report.as_dict()["schema_version"] == "1"


def test_parquet_timestamp_created_at_becomes_iso_string_with_z():
    naive = datetime(2024, 5, 1, 10, 30, 0)
    aware = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    for value, expected in ((naive, "2024-05-01T10:30:00Z"), (aware, "2024-05-01T12:00:00Z")):
        frame = pl.DataFrame([rec(0, created_at=value)])
        assert frame["created_at"].dtype.is_temporal()
        records, report = read_comparison_file("t.parquet", parquet_bytes(frame))
        assert report.status == "ok"
        assert records["created_at"].to_list() == [expected]
        assert records["ingest_error"].to_list() == [None]


def test_every_non_blank_line_is_exactly_one_record():
    lines = [
        json.dumps(rec(0)).encode(),
        b"",
        b"   ",
        json.dumps(rec(1)).encode(),
        b"{not json",
        b"\t",
        b"[1, 2]",
        json.dumps(rec(2)).encode() + b"\r",  # CRLF line endings
    ]
    data = b"\n".join(lines) + b"\n\n"
    frame, report = read_comparison_file("lines.jsonl", data)
    non_blank = [i for i, line in enumerate(lines, start=1) if line.strip()]
    assert report.status == "ok"
    assert frame.height == report.rows == len(non_blank) == 5
    assert frame["source_line"].to_list() == non_blank
    assert frame["ingest_error"].is_null().to_list() == [True, True, False, False, True]


UNREADABLE = {
    "empty": ("empty.jsonl", b"", "empty"),
    "whitespace only": ("ws.jsonl", b"  \n\n\t \r\n", "empty"),
    "binary with jsonl name": ("blob.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    "parquet renamed jsonl": ("renamed.jsonl", parquet_bytes(pl.DataFrame(GOOD)), "binary"),
    "json array": ("array.jsonl", json.dumps(GOOD, indent=2).encode(), "JSON array"),
    "gz not gzip": ("plain.jsonl.gz", jsonl(*GOOD), "gzip"),
    "truncated gzip": ("cut.jsonl.gz", gzip.compress(jsonl(*GOOD))[:-12], "gzip"),
    "empty gzip": ("empty.jsonl.gz", gzip.compress(b"\n"), "empty"),
    "corrupt parquet": ("bad.parquet", b"PAR1" + b"\x13" * 64 + b"PAR1", "Parquet"),
    "jsonl renamed parquet": ("text.parquet", jsonl(*GOOD), "Parquet"),
    "unknown extension": ("batch.csv", b"comparison_id,label\nc1,a\n", "unsupported file type"),
    "no line is an object": ("numbers.jsonl", b"1\n2\n3.5\n", "no line is a JSON object"),
    "only strings and nulls": ("misc.jsonl", b'"a"\nnull\n[1]\n', "no line is a JSON object"),
    "deeply nested array": ("deep.jsonl", b"[" * 50_000 + b"]" * 50_000, "no line is a JSON object"),
}


@pytest.mark.parametrize("case", list(UNREADABLE), ids=list(UNREADABLE))
def test_unreadable_files_have_a_reason_and_no_records(case):
    name, data, reason = UNREADABLE[case]
    frame, report = read_comparison_file(name, data)
    assert report.status == "unreadable"
    assert report.error and reason.lower() in report.error.lower(), report.error
    assert report.rows == 0
    assert frame.height == 0
    assert frame.schema == pl.Schema(RECORD_SCHEMA)
    assert report.size_bytes == len(data)


def _only_row(frame: pl.DataFrame, line: int) -> dict:
    rows = frame.filter(pl.col("source_line") == line).to_dicts()
    assert len(rows) == 1
    return rows[0]


def test_truncated_last_line_is_an_error_row_with_raw():
    full = jsonl(rec(0), rec(1))
    truncated = full + json.dumps(rec(2)).encode()[:40]  # writer died mid-line, no trailing newline
    frame, report = read_comparison_file("t.jsonl", truncated)
    assert report.status == "ok" and frame.height == 3
    bad = _only_row(frame, 3)
    assert "malformed JSON" in bad["ingest_error"]
    assert bad["raw"] == json.dumps(rec(2))[:40]
    assert bad["comparison_id"] is None and bad["pair_id"] is None
    assert frame["ingest_error"][:2].to_list() == [None, None]


def test_invalid_utf8_line_is_an_error_row_other_lines_are_fine():
    bad_line = json.dumps(rec(1)).encode().replace(b"prompt 1", b"prompt \xff\xfe 1")
    frame, report = read_comparison_file("u.jsonl", jsonl(rec(0), bad_line, rec(2)))
    assert report.status == "ok" and frame.height == 3
    bad = _only_row(frame, 2)
    assert "invalid UTF-8" in bad["ingest_error"] and "0xff" in bad["ingest_error"]
    assert "prompt \ufffd\ufffd 1" in bad["raw"]
    good = frame.filter(pl.col("ingest_error").is_null())
    assert good["comparison_id"].to_list() == ["c0", "c2"]


def test_json_list_on_a_line_is_an_error_row():
    frame, _ = read_comparison_file("l.jsonl", jsonl(rec(0), b'["c1", "prompt", "a", "b"]'))
    bad = _only_row(frame, 2)
    assert bad["ingest_error"] == "a JSON array, expected an object"
    assert bad["raw"] == '["c1", "prompt", "a", "b"]'


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("label", 1, "label: expected string, got integer"),
        ("prompt", {"role": "user"}, "prompt: expected string, got object"),
        ("annotation_ms", "1500", "annotation_ms: expected integer, got string"),
        ("annotation_ms", 1500.5, "annotation_ms: expected integer, got number"),
        ("confidence", True, "confidence: expected integer, got boolean"),
        ("temperature", "hot", "temperature: expected number, got string"),
        ("created_at", 1714557600, "created_at: expected string, got integer"),
        ("annotator_id", ["a", "b"], "annotator_id: expected string, got array"),
        ("annotation_ms", 10**30, "annotation_ms: integer out of range"),
        ("confidence", 2**63, "confidence: integer out of range"),
        ("annotation_ms", 1e30, "annotation_ms: integer out of range"),
        ("temperature", 10**400, "temperature: number out of range"),
        ("prompt", "\ud800", "prompt: invalid Unicode (lone surrogate)"),
    ],
)
def test_wrong_types_are_error_rows_with_raw(field, value, message):
    frame, report = read_comparison_file("types.jsonl", jsonl(rec(0), rec(1, **{field: value})))
    assert report.status == "ok" and frame.height == 2
    bad = _only_row(frame, 2)
    assert bad["ingest_error"] == message
    assert bad[field] is None  # never a silent cast
    raw = json.loads(bad["raw"])
    assert raw["comparison_id"] == "c1"
    assert _only_row(frame, 1)["ingest_error"] is None


def test_several_type_errors_on_one_line_are_all_listed():
    frame, _ = read_comparison_file("t.jsonl", jsonl(rec(0, label=1, confidence="5")))
    assert frame["ingest_error"].to_list() == ["label: expected string, got integer; confidence: expected integer, got string"]


def test_integral_float_annotation_ms_is_accepted_as_int():
    frame, _ = read_comparison_file("f.jsonl", jsonl(rec(0, annotation_ms=1500.0, temperature=1)))
    row = frame.row(0, named=True)
    assert row["ingest_error"] is None
    assert row["annotation_ms"] == 1500 and isinstance(row["annotation_ms"], int)
    assert row["temperature"] == 1.0 and isinstance(row["temperature"], float)
    assert row["raw"] is None


def test_unparseable_json_numbers_and_nesting_are_error_rows():
    too_many_digits = json.dumps(rec(1)).encode()[:-1] + b', "annotation_ms": 1' + b"0" * 5000 + b"}"
    too_deep = b'{"a":' * 50_000 + b"}" * 50_000
    frame, report = read_comparison_file("n.jsonl", jsonl(rec(0), too_many_digits, too_deep))
    assert report.status == "ok" and frame.height == 3
    assert "malformed JSON" in _only_row(frame, 2)["ingest_error"]
    assert _only_row(frame, 3)["ingest_error"] == "malformed JSON (nested too deeply)"


def test_unknown_extra_fields_are_listed():
    frame, report = read_comparison_file("x.jsonl", jsonl(rec(0, extra_note="hi"), rec(1, zz_vendor=1), rec(2)))
    assert report.unknown_columns == ["extra_note", "zz_vendor"]
    assert "extra_note" not in frame.columns
    assert frame["ingest_error"].null_count() == 3


def test_unknown_parquet_columns_are_listed():
    data = parquet_bytes(pl.DataFrame([rec(0, vendor_score=0.5)]))
    _, report = read_comparison_file("x.parquet", data)
    assert report.status == "ok" and report.unknown_columns == ["vendor_score"]


def test_pair_id_is_the_same_for_swapped_responses():
    one = rec(0, prompt="P", response_a="X", response_b="Y", label="a")
    swapped = rec(1, prompt="P", response_a="Y", response_b="X", label="b")
    other_prompt = rec(2, prompt="Q", response_a="X", response_b="Y")
    frame, _ = read_comparison_file("p.jsonl", jsonl(one, swapped, other_prompt))
    ids = frame["pair_id"].to_list()
    assert ids[0] == ids[1] == pair_id("P", "X", "Y") == pair_id("P", "Y", "X")
    assert ids[2] != ids[0]
    # Missing a text: no pair id (the row will fail validation on the missing field).
    frame, _ = read_comparison_file("p.jsonl", jsonl(rec(3, response_b=...)))
    assert frame["pair_id"].to_list() == [None]


def test_huge_field_is_read_fine():
    huge = "x" * (2 * 1024 * 1024)
    frame, report = read_comparison_file("h.jsonl", jsonl(rec(0, response_a=huge), rec(1)))
    assert report.status == "ok" and frame.height == 2
    assert frame["ingest_error"].null_count() == 2
    assert len(frame["response_a"][0]) == len(huge)


def test_missing_fields_are_null_not_errors():
    frame, _ = read_comparison_file("m.jsonl", jsonl(rec(0, label=..., confidence=...)))
    row = frame.row(0, named=True)
    assert row["label"] is None and row["confidence"] is None
    assert row["ingest_error"] is None  # the not-null expectation reports it, with its own name


def test_utf8_byte_order_mark_is_not_data():
    frame, report = read_comparison_file("bom.jsonl", b"\xef\xbb\xbf" + jsonl(rec(0), rec(1)))
    assert report.status == "ok" and frame.height == 2
    assert frame["ingest_error"].null_count() == 2


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_temperature_is_an_error_row(token):
    line = json.dumps(rec(0)).rstrip("}") + f', "temperature": {token}}}'
    frame, report = read_comparison_file("nan.jsonl", line.encode())
    assert report.status == "ok" and frame.height == 1
    assert "temperature: not a finite number" in frame["ingest_error"][0]
