"""Read annotation files (JSONL, JSONL.gz, Parquet) into the record schema, losing nothing.

Every non-blank line (or Parquet row) becomes exactly one record; a blank line (only ASCII whitespace) is no
row, the same rule ``landing.count_lines`` counts by. A line that cannot be decoded or parsed, or a field of the
wrong type, still becomes a record: its ``ingest_error`` says what was wrong and ``raw`` keeps what was there,
so validation can quarantine it with the reason. A file that cannot be read *at all* (empty, binary, not gzip,
not Parquet, a JSON array, no JSON object on any line) yields no records and a report with
``status="unreadable"`` and the reason; callers move it to quarantine.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import polars as pl

from rlhf_assets.preference.schema import FIELDS, RECORD_SCHEMA, SCHEMA_VERSION, empty_records, pair_id
from rlhf_assets.storage import sha256_bytes

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".parquet")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


@dataclass
class FileReport:
    path: str
    sha256: str
    size_bytes: int
    format: str
    status: str  # "ok" | "unreadable"
    rows: int = 0
    error: str | None = None
    unknown_columns: list[str] = field(default_factory=list)
    schema_version: str = SCHEMA_VERSION
    # The file's rows as counted from its bytes by ``landing.count_rows``, independently of this parser (None
    # until counted, or when the bytes cannot be counted: then ``landing_rows_error`` says why).
    landing_rows: int | None = None
    landing_rows_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_format(name: str) -> str | None:
    lower = name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if lower.endswith(suffix):
            return "parquet" if suffix == ".parquet" else ("jsonl.gz" if suffix.endswith(".gz") else "jsonl")
    return None


def read_comparison_file(path: str, data: bytes) -> tuple[pl.DataFrame, FileReport]:
    """Parse one file's bytes; never raises for bad content."""
    fmt = file_format(path) or "unknown"
    report = FileReport(path=path, sha256=sha256_bytes(data), size_bytes=len(data), format=fmt, status="ok")
    try:
        rows, unknown = _read_rows(fmt, data)
    except UnreadableFile as exc:
        report.status, report.error = "unreadable", str(exc)
        return empty_records(), report
    report.rows, report.unknown_columns = len(rows), sorted(unknown)
    frame = pl.DataFrame(rows, schema=RECORD_SCHEMA, orient="row") if rows else empty_records()
    return frame.with_columns(pl.lit(path).alias("source_file")), report


class UnreadableFile(Exception):
    """The file as a whole cannot be read; the message is the reason shown to users."""


def _read_rows(fmt: str, data: bytes) -> tuple[list[tuple], set[str]]:
    if fmt == "unknown":
        raise UnreadableFile(f"unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    if not data.strip():
        raise UnreadableFile("file is empty")
    if fmt == "parquet":
        return _parquet_rows(data)
    if fmt == "jsonl.gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise UnreadableFile(f"not a valid gzip file ({exc})") from None
        if not data.strip():
            raise UnreadableFile("file is empty (after gunzip)")
    return _jsonl_rows(data.removeprefix(b"\xef\xbb\xbf"))  # a UTF-8 byte-order mark is not data


def _parquet_rows(data: bytes) -> tuple[list[tuple], set[str]]:
    try:
        table = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # polars raises several error types for corrupt files
        raise UnreadableFile(f"not a valid Parquet file ({type(exc).__name__}: {str(exc)[:200]})") from None
    unknown: set[str] = set()
    rows = [_normalize(obj, line, None, unknown) for line, obj in enumerate(table.iter_rows(named=True), start=1)]
    return rows, unknown


def _jsonl_rows(data: bytes) -> tuple[list[tuple], set[str]]:
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UnreadableFile(f"binary content (NUL byte at offset {nul}); expected UTF-8 JSON Lines")
    stripped = data.lstrip()
    if stripped[:1] == b"[":
        try:
            if isinstance(json.loads(data), list):
                raise UnreadableFile(
                    "file is a single JSON array; expected JSON Lines, one object per line (convert: jq -c '.[]')"
                )
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass  # not one valid array: fall through to line-by-line parsing
    rows: list[tuple] = []
    unknown: set[str] = set()
    first_error: str | None = None
    n_objects = 0
    for line_no, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        obj, error = _parse_line(line)
        if error is None:
            n_objects += 1
            rows.append(_normalize(obj, line_no, None, unknown))
        else:
            first_error = first_error or f"line {line_no}: {error}"
            rows.append(_error_row(line_no, error, line.decode("utf-8", errors="replace")))
    if n_objects == 0:
        raise UnreadableFile(f"no line is a JSON object ({first_error})")
    return rows, unknown


def _parse_line(line: bytes) -> tuple[dict | None, str | None]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return None, "malformed JSON (nested too deeply)"
    except ValueError as exc:  # e.g. an integer literal longer than Python's int_max_str_digits
        return None, f"malformed JSON ({str(exc)[:120]})"
    if not isinstance(obj, dict):
        return None, f"a JSON {_type_name(obj)}, expected an object"
    return obj, None


def _type_name(value: Any) -> str:
    return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


def _error_row(line_no: int, error: str, raw: str) -> tuple:
    values = {name: None for name in RECORD_SCHEMA}
    values.update(source_line=line_no, ingest_error=error, raw=raw)
    return tuple(values.values())


def _coerce(name: str, expected: type | tuple[type, ...], value: Any) -> tuple[Any, str | None]:
    """The value in the schema's type, or (None, why) when it has another type. No silent string→number casts."""
    if value is None:
        return None, None
    if name == "created_at" and isinstance(value, (datetime, date)):  # Parquet timestamps
        if isinstance(value, datetime):
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.isoformat().replace("+00:00", "Z"), None
    types = expected if isinstance(expected, tuple) else (expected,)
    wanted = "number" if float in types else _TYPE_NAMES[types[0]]  # (int, float) is a number, not an integer
    if isinstance(value, bool) and bool not in types:
        return None, f"{name}: expected {wanted}, got boolean"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape: not storable as UTF-8
            return None, f"{name}: invalid Unicode (lone surrogate)"
    if isinstance(value, types):
        if float in types:
            try:
                number = float(value)
            except OverflowError:
                return None, f"{name}: number out of range"
            return (number, None) if math.isfinite(number) else (None, f"{name}: not a finite number")
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            return None, f"{name}: integer out of range"
        return value, None
    if int in types and isinstance(value, float) and value.is_integer():
        if not _INT64_MIN <= value <= _INT64_MAX:
            return None, f"{name}: integer out of range"
        return int(value), None
    return None, f"{name}: expected {wanted}, got {_type_name(value)}"


def _normalize(obj: dict[str, Any], line_no: int, raw: str | None, unknown: set[str]) -> tuple:
    values: dict[str, Any] = {}
    errors: list[str] = []
    for f in FIELDS:
        values[f.name], error = _coerce(f.name, f.python_type, obj.get(f.name))
        if error:
            errors.append(error)
    unknown.update(k for k in obj if k not in values)
    texts = (values["prompt"], values["response_a"], values["response_b"])
    pid = pair_id(*texts) if all(isinstance(t, str) for t in texts) else None
    if errors and raw is None:
        raw = json.dumps(obj, ensure_ascii=False, default=str)
        raw = raw.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates as \udxxx text
    values.update(source_file=None, source_line=line_no, pair_id=pid, ingest_error="; ".join(errors) or None, raw=raw)
    return tuple(values[name] for name in RECORD_SCHEMA)
