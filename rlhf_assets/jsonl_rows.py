"""Reading a user's JSONL file: one JSON object a line, blank lines skipped, errors naming the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path


def numbered_jsonl(path: str | os.PathLike, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each row of a JSONL file, each checked for the required string fields; a
    ValueError names the file and line of the first bad one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected an object")
        for key in required:
            if not isinstance(row.get(key), str):
                raise ValueError(f"{path}:{n}: field {key!r} must be a string")
        yield n, row


def read_jsonl(path: str | os.PathLike, required: Sequence[str]) -> list[dict]:
    """Rows of a JSONL file, each checked for the required string fields (line numbers in errors); at least one."""
    rows = [row for _, row in numbered_jsonl(path, required)]
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows
