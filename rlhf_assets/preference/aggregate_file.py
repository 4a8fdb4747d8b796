"""`rlhf aggregate`: crowd labels from a CSV/TSV/Parquet/JSONL file to one label per item.

Parquet input (a file or a directory of files) larger than ``AggregationSettings.out_of_core_bytes`` goes through
the out-of-core Dawid–Skene (aggregation_out_of_core.py), in memory bounded by ``batch_rows``; smaller input, and
every other format, is read whole and aggregated in memory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import polars as pl

from rlhf_assets.preference.aggregation import AggregationSummary, aggregate_table
from rlhf_assets.preference.aggregation_out_of_core import REQUIRED, LabelInputError, aggregate_parquet


class AggregateInputError(ValueError):
    """The input file cannot be aggregated; the message says why."""


def read_label_file(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise AggregateInputError(f"{path}: no such file")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    try:
        if suffix in (".csv", ".csv.gz"):
            frame = pl.read_csv(path, infer_schema=False)
        elif suffix in (".tsv", ".tsv.gz"):
            frame = pl.read_csv(path, separator="\t", infer_schema=False)
        elif suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pl.read_ndjson(path, infer_schema_length=None)
        else:
            raise AggregateInputError(f"{path}: unsupported extension {suffix!r}; use .csv, .tsv, .parquet or .jsonl")
    except AggregateInputError:
        raise
    except Exception as exc:  # polars raises many types for malformed files
        raise AggregateInputError(f"{path}: cannot read as {suffix}: {str(exc).splitlines()[0][:300]}") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise AggregateInputError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}")
    frame = frame.select([pl.col(c).cast(pl.String) for c in REQUIRED])
    nulls = frame.filter(pl.any_horizontal(pl.all().is_null()))
    if nulls.height:
        raise AggregateInputError(f"{path}: {nulls.height} row(s) with an empty item_id, annotator_id or label")
    if frame.height == 0:
        raise AggregateInputError(f"{path}: no rows")
    return frame


def aggregate_file(path: Path, *, method: str = "dawid-skene", **kwargs) -> tuple[pl.DataFrame, AggregationSummary]:
    frame = read_label_file(Path(path))
    if method == "majority":
        kwargs = {k: v for k, v in kwargs.items() if k == "seed"}
    else:
        kwargs.pop("seed", None)
    return aggregate_table(frame["item_id"], frame["annotator_id"], frame["label"], method=method, **kwargs)


def input_bytes(path: Path) -> int:
    """Bytes on disk of a file, or of the files under a directory."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def is_parquet(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".parquet"


def aggregate_to(path: Path, out: Path | TextIO | None, *, method: str = "dawid-skene",
                 out_of_core: bool | None = None, out_of_core_bytes: int | None = None,
                 batch_rows: int | None = None, work_dir: Path | None = None, **kwargs) -> tuple[AggregationSummary, bool]:
    """Aggregate the file and write (item_id, label, confidence, n_votes) to ``out`` (Parquet when it ends in
    .parquet, else CSV; stdout when None). ``out_of_core``: True forces it, False forbids it, None chooses by
    size (a directory of Parquet files always goes out of core). ``out_of_core_bytes`` and ``batch_rows`` default
    to AggregationSettings'. Returns the summary and whether it ran out of core."""
    from rlhf_assets.preference.labels import AggregationSettings

    defaults = AggregationSettings()
    out_of_core_bytes = defaults.out_of_core_bytes if out_of_core_bytes is None else out_of_core_bytes
    batch_rows = batch_rows or defaults.batch_rows
    path = Path(path)
    if out_of_core is None:
        out_of_core = path.is_dir() or (is_parquet(path) and input_bytes(path) > out_of_core_bytes)
    if out_of_core:
        if not is_parquet(path):
            raise AggregateInputError(f"{path}: out of core needs Parquet input (a .parquet file or a directory)")
        try:
            result = aggregate_parquet(path, sys.stdout if out is None else out, method=method,
                                       batch_rows=batch_rows, workdir=work_dir, **kwargs)
        except LabelInputError as exc:
            raise AggregateInputError(str(exc)) from None
        return result.summary, True
    if path.is_dir():
        raise AggregateInputError(f"{path}: a directory; the in-memory path reads one file (drop --in-memory)")
    table, summary = aggregate_file(path, method=method, **kwargs)
    if out is None:
        sys.stdout.write(table.write_csv())
    elif isinstance(out, Path) and out.suffix == ".parquet":
        table.write_parquet(out)
    else:
        table.write_csv(out)
    return summary, False
