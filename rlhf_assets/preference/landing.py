"""One day of the landing zone: read it into records, move unreadable files to quarantine with their reason, and
count its rows independently of the reading, so that rows lost or duplicated after the landing zone are caught.

Counting rule (the ``rows_conserved`` check of ``validated_pairs`` depends on it):

* JSONL (and any file whose name is not ``.gz`` or ``.parquet``): the number of lines, split on ``\\n``, that
  hold at least one byte other than ASCII whitespace (space, tab, CR, VT, FF). Blank lines are not rows, for the
  counter and for ingest alike; a UTF-8 byte-order mark at the very start of the file is not data.
* ``.gz``: the same line count of the gunzipped bytes.
* Parquet: ``num_rows`` from the file's footer (its metadata), without decoding any data page.
* Bytes that cannot be counted at all (a corrupt or truncated gzip, a Parquet file without a readable footer)
  count as ``None`` with the reason. Such a file can only be quarantined, as a whole; it is then accounted for
  as one file, and it contributes no rows to either side of the balance.

The counter shares no parsing code with ``ingest``: it never decodes JSON, so a bug in reading records cannot
hide in the count.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

import polars as pl

from rlhf_assets.preference.ingest import FileReport, read_comparison_file
from rlhf_assets.preference.schema import empty_records
from rlhf_assets.storage import Storage

REASON_SUFFIX = ".reason.json"
_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\x0b\x0c"


@dataclass
class LandingBatch:
    records: pl.DataFrame
    files: list[FileReport]

    @property
    def unreadable(self) -> list[FileReport]:
        return [f for f in self.files if f.status != "ok"]


def ingest_landing(storage: Storage, day: str, kind: str = "comparisons") -> LandingBatch:
    """Every file under landing/<kind>/date=<day>/, normalised; nothing disappears silently.

    An unreadable file is moved to quarantine/date=<day>/files/ with a ``<name>.reason.json`` beside it, so
    the next run does not trip over it again and a person can look at it. Every report carries the file's
    independent row count (``landing_rows``); the reason file records it for the conservation check.
    """
    frames, reports = [], []
    for path in storage.list_files(storage.landing_dir(day, kind)):
        data = storage.read_bytes(path)
        frame, report = read_comparison_file(path.name, data)
        report.landing_rows, report.landing_rows_error = count_rows(path.name, data)
        if report.status != "ok":
            target = storage.quarantine_dir(day).joinpath("files", path.name)
            storage.write_json(target.with_name(path.name + REASON_SUFFIX),
                               report.as_dict() | {"moved_from": str(path)})
            storage.move(path, target)
            report.path = str(target)
        else:
            frames.append(frame)
        reports.append(report)
    records = pl.concat(frames, how="vertical") if frames else empty_records()
    return LandingBatch(records=records, files=reports)


# counting ---------------------------------------------------------------------------------------------------


def count_rows(name: str, data: bytes | IO[bytes]) -> tuple[int | None, str | None]:
    """(rows, None), or (None, why) when the bytes cannot be counted. See the module docstring for the rule.

    ``data`` may be an open binary file: for Parquet only the footer is then read.
    """
    lower = name.lower()
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(io.BytesIO(data) if isinstance(data, bytes) else data).metadata.num_rows, None
        except Exception as exc:  # pyarrow raises several error types for a bad footer
            return None, f"no readable Parquet footer ({type(exc).__name__}: {str(exc)[:200]})"
    raw = data if isinstance(data, bytes) else data.read()
    if lower.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            return None, f"cannot gunzip ({exc})"
    return count_lines(raw), None


def count_lines(data: bytes) -> int:
    """Lines (split on ``\\n``) holding a byte other than ASCII whitespace; a leading byte-order mark is not data."""
    return sum(1 for line in data.removeprefix(_BOM).split(b"\n") if line.strip(_WHITESPACE))


@dataclass
class FileCount:
    name: str
    rows: int | None  # None: the bytes could not be counted (see ``error``)
    quarantined: bool  # moved to quarantine/…/files/ as unreadable: its rows are in no table
    error: str | None = None
    recorded: bool = True  # quarantined: the count comes from its reason file (False: recounted, none recorded)


@dataclass
class LandingCount:
    """Every file that arrived for a day: still in the landing zone (read by ingest) or quarantined whole."""

    files: list[FileCount] = field(default_factory=list)

    @property
    def rows_landing(self) -> int:
        return sum(f.rows or 0 for f in self.files)

    @property
    def rows_in_landing_zone(self) -> int:
        """Rows of the files ingest read: each must come out of validation as a valid or a quarantined row."""
        return sum(f.rows or 0 for f in self.files if not f.quarantined)

    @property
    def rows_in_quarantined_files(self) -> int:
        return sum(f.rows or 0 for f in self.files if f.quarantined)

    @property
    def uncountable(self) -> list[FileCount]:
        return [f for f in self.files if f.rows is None]


def count_landing(storage: Storage, day: str, kind: str = "comparisons") -> LandingCount:
    """Count the day's rows from the files themselves: the landing zone's bytes, and for each file quarantined
    whole the count recorded in its reason file (recounted from its bytes when none was recorded)."""
    files = []
    for path in storage.list_files(storage.landing_dir(day, kind)):
        with path.open("rb") as fh:
            rows, error = count_rows(path.name, fh)
        files.append(FileCount(path.name, rows, quarantined=False, error=error))
    quarantine = storage.quarantine_dir(day).joinpath("files")
    listed = {p.name: p for p in storage.list_files(quarantine)}
    for name, path in listed.items():
        # A reason file is not data, unless it has a reason of its own (someone landed a "*.reason.json" file).
        if name.endswith(REASON_SUFFIX) and name + REASON_SUFFIX not in listed:
            continue
        reason = storage.read_json(listed[name + REASON_SUFFIX]) if name + REASON_SUFFIX in listed else {}
        if "landing_rows" in reason:
            files.append(FileCount(name, reason["landing_rows"], quarantined=True,
                                   error=reason.get("landing_rows_error")))
        else:
            with path.open("rb") as fh:
                rows, error = count_rows(name, fh)
            files.append(FileCount(name, rows, quarantined=True, error=error, recorded=False))
    return LandingCount(files)


def conservation(count: LandingCount, valid: pl.DataFrame, quarantined: pl.DataFrame) -> dict[str, Any]:
    """The balance of a day: ``conserved`` when rows_landing == rows_valid + rows_quarantined +
    rows_in_quarantined_files and, per file ingest read, its valid and quarantined rows (by ``source_file``)
    number exactly its counted rows. A file whose bytes cannot be counted is conserved only when it was
    quarantined whole: it is then one file accounted for, with no rows on either side."""
    out = pl.concat([valid.select("source_file"), quarantined.select("source_file")])
    produced = dict(out.group_by("source_file").len().iter_rows())
    read = [f for f in count.files if not f.quarantined]
    mismatched = {f.name: {"landing": f.rows, "valid_or_quarantined": produced.get(f.name, 0), "error": f.error}
                  for f in read if f.rows != produced.get(f.name, 0)}
    mismatched |= {str(name): {"landing": None, "valid_or_quarantined": n, "error": "not in the landing zone"}
                   for name, n in produced.items() if name not in {f.name for f in read}}
    difference = count.rows_landing - (valid.height + quarantined.height + count.rows_in_quarantined_files)
    return {
        "conserved": difference == 0 and not mismatched,
        "rows_landing": count.rows_landing,
        "rows_valid": valid.height,
        "rows_quarantined": quarantined.height,
        "rows_in_quarantined_files": count.rows_in_quarantined_files,
        "difference": difference,
        "files_landing": len(read),
        "files_quarantined": len(count.files) - len(read),
        "files_uncountable": {f.name: f.error for f in count.uncountable},
        "mismatched_files": mismatched,
    }
