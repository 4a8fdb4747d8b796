"""Materialization metadata people would rather look at than read: plots as images, tables as tables, numbers
rounded for display.

The Dagster UI shows a float at full precision, a JSON list of records as a blob and markdown over 1,000 characters
behind a "[Show Markdown]" link; a native table (``MetadataValue.table``) always inline. So every asset passes its
metadata through :func:`display` (floats to 4 significant digits, also inside JSON; a list of records → a table);
what the assets store (tables, references, decision records, artifact manifests) keeps full precision.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg
import polars as pl

from rlhf_assets.training_process import png_markdown

SIGNIFICANT_DIGITS = 4


def md_image(png: bytes, title: str) -> dg.MetadataValue:
    """A PNG shown in the UI (a markdown image with a data URL; "[Show Markdown]" opens it)."""
    return dg.MetadataValue.md(png_markdown(png, title))


def md_table(frame: pl.DataFrame, limit: int = 50) -> dg.MetadataValue:
    """The first ``limit`` rows as a markdown table (floats to 3 decimals)."""
    head = frame.head(limit)
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in head.iter_rows()]
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    return dg.MetadataValue.md("\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]))


def rounded(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits (never fewer than its integer digits),
    inside lists and dicts too; anything else unchanged. For display only."""
    if isinstance(value, float) and not isinstance(value, bool):
        if value == 0 or not math.isfinite(value):
            return float(value)
        return round(float(value), max(0, digits - 1 - math.floor(math.log10(abs(value)))))
    if isinstance(value, Mapping):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def interval(low: Any, high: Any) -> str:
    """A bootstrap interval as text, "[0.5431, 0.6572]" ("—" when not measured)."""
    if low is None or high is None:
        return "—"
    return f"[{rounded(float(low))}, {rounded(float(high))}]"


def _column_type(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    return "string"


def _cell(value: Any) -> Any:
    value = rounded(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return ", ".join(str(v) for v in value)
    return json.dumps(value, default=str, ensure_ascii=False)


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> dg.TableMetadataValue:
    """Records as a native Dagster table (always shown inline), numbers rounded for display; ``columns`` picks and
    orders the columns (default: every key, in order of first appearance)."""
    rows = [dict(r) for r in rows]
    names = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    cells = [{c: _cell(r.get(c)) for c in names} for r in rows]
    schema = dg.TableSchema(columns=[dg.TableColumn(c, _column_type([r[c] for r in cells])) for c in names])
    return dg.MetadataValue.table([dg.TableRecord(r) for r in cells], schema)


def frame_table(frame: pl.DataFrame, limit: int = 100) -> dg.TableMetadataValue:
    """The first ``limit`` rows of a polars frame as a native table."""
    return table(frame.head(limit).to_dicts(), frame.columns)


def mapping_table(mapping: Mapping[str, Any], key: str, value: str) -> dg.TableMetadataValue:
    """A flat mapping ({name: number}) as a two-column table."""
    return table([{key: k, value: v} for k, v in mapping.items()], [key, value])


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, Mapping) for r in value)


def display(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata ready for the UI: floats (plain or ``MetadataValue.float``) rounded, JSON rounded inside, a list of
    records (plain or JSON) as a native table; every other value as it is."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, dg.FloatMetadataValue):
            value = value.value
        elif isinstance(value, dg.JsonMetadataValue):
            value = value.data if _is_records(value.data) else dg.MetadataValue.json(rounded(value.data))
        if isinstance(value, float) and not isinstance(value, bool):
            value = dg.MetadataValue.float(rounded(value)) if math.isfinite(value) else value
        elif _is_records(value):
            value = table(value)
        elif isinstance(value, (Mapping, list, tuple)) and not isinstance(value, dg.MetadataValue):
            value = dg.MetadataValue.json(rounded(value))
        out[key] = value
    return out
