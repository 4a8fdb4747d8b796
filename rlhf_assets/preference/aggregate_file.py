"""`rlhf aggregate`: crowd labels from a CSV/TSV/Parquet/JSONL file to one label per item."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from rlhf_assets.preference.aggregation import AggregationSummary, aggregate_table

REQUIRED = ("item_id", "annotator_id", "label")


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
