"""Read one day of the landing zone into records; move unreadable files to quarantine with their reason."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from rlhf_assets.preference.ingest import FileReport, read_comparison_file
from rlhf_assets.preference.schema import empty_records
from rlhf_assets.storage import Storage


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
    the next run does not trip over it again and a person can look at it.
    """
    frames, reports = [], []
    for path in storage.list_files(storage.landing_dir(day, kind)):
        frame, report = read_comparison_file(path.name, storage.read_bytes(path))
        if report.status != "ok":
            target = storage.quarantine_dir(day).joinpath("files", path.name)
            storage.write_json(target.with_name(path.name + ".reason.json"), report.as_dict() | {"moved_from": str(path)})
            storage.move(path, target)
            report.path = str(target)
        else:
            frames.append(frame)
        reports.append(report)
    records = pl.concat(frames, how="vertical") if frames else empty_records()
    return LandingBatch(records=records, files=reports)
