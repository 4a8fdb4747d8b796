"""`rlhf validate`: the validated_pairs suite on files outside Dagster, for vendors before they upload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rlhf_assets.preference.ingest import read_comparison_file
from rlhf_assets.preference.landing import count_rows
from rlhf_assets.preference.validation import ValidationRules, validate


def validate_files(paths: list[Path], *, day: str | None = None,
                   quarantine_dir: Path | None = None) -> list[dict[str, Any]]:
    """One report per file: path, status (ok | quarantined | unreadable), row counts, failures, error.

    Quarantined output is named ``<n>-<file name>…`` (n = the file's position) so that two inputs with the same
    name from different folders never overwrite each other.
    """
    if quarantine_dir is not None and quarantine_dir.exists() and not quarantine_dir.is_dir():
        raise ValueError(f"--quarantine-dir {quarantine_dir} exists and is not a directory")
    return [_validate_one(Path(p), day, quarantine_dir, f"{n}-{Path(p).name}") for n, p in enumerate(paths, 1)]


def _validate_one(path: Path, day: str | None, quarantine_dir: Path | None, out_name: str) -> dict[str, Any]:
    report: dict[str, Any] = {"path": str(path), "status": "unreadable", "rows_in": 0, "rows_valid": 0,
                              "rows_quarantined": 0, "failures": {}, "error": None}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return report | {"error": "no such file"}
    except IsADirectoryError:
        return report | {"error": "is a directory"}
    except OSError as exc:
        return report | {"error": f"cannot read: {exc.strerror or exc}"}
    records, file_report = read_comparison_file(str(path), data)
    file_report.landing_rows, file_report.landing_rows_error = count_rows(path.name, data)  # as in the pipeline
    if file_report.status != "ok":
        if quarantine_dir is not None:
            quarantine_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, quarantine_dir / out_name)
            (quarantine_dir / f"{out_name}.reason.json").write_text(json.dumps(file_report.as_dict(), indent=2))
        return report | {"error": file_report.error}
    result = validate(records, ValidationRules(day=day))
    if quarantine_dir is not None and result.rows_quarantined:
        quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = quarantine_dir / f"{out_name}.rejected.jsonl"
        with target.open("w", encoding="utf-8") as fh:
            for row in result.quarantined.iter_rows(named=True):
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return report | {
        "status": "quarantined" if result.rows_quarantined else "ok",
        "rows_in": result.rows_in,
        "rows_valid": result.rows_valid,
        "rows_quarantined": result.rows_quarantined,
        "failures": dict(sorted(result.failures.items())),
        "unknown_columns": file_report.unknown_columns,
    }
