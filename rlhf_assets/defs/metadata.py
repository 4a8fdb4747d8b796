"""Materialization metadata people would rather look at than read: plots as images, small tables as markdown."""

from __future__ import annotations

import dagster as dg
import polars as pl

from rlhf_assets.training_process import png_markdown


def md_image(png: bytes, title: str) -> dg.MetadataValue:
    """A PNG shown inline in the UI (a markdown image with a data URL)."""
    return dg.MetadataValue.md(png_markdown(png, title))


def md_table(frame: pl.DataFrame, limit: int = 50) -> dg.MetadataValue:
    """The first ``limit`` rows as a markdown table (floats to 3 decimals)."""
    head = frame.head(limit)
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in head.iter_rows()]
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    return dg.MetadataValue.md("\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]))
