"""Request bodies, checked before anything reaches a model: every problem is a 4xx with a JSON error naming the field.

    {"prompt": str, "response": str, "key"?: str}                       one item (score)
    {"prompt": str, "response_a": str, "response_b": str, "key"?: str}  one pair (compare)
    {"items": [ {...}, ... ], "key"?: str}                              at most max_client_batch of them
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SCORE_FIELDS = ("prompt", "response")
COMPARE_FIELDS = ("prompt", "response_a", "response_b")


class ApiError(Exception):
    """An HTTP error with a JSON body: {"error": message, "field": the offending field or null}."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


@dataclass(frozen=True)
class Parsed:
    items: list[dict[str, str]]
    batched: bool  # the request used "items" (the response does too)
    key: str | None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ApiError(422, f"{where} must be a string, got {type(value).__name__}", where)
    if "\x00" in value:
        raise ApiError(422, f"{where} contains a NUL byte", where)
    return value


def _item(obj: Any, fields: tuple[str, ...], where: str) -> dict[str, str]:
    if not isinstance(obj, dict):
        raise ApiError(422, f"{where or 'the body'} must be a JSON object with {', '.join(fields)}", where or None)
    prefix = f"{where}." if where else ""
    missing = [f for f in fields if f not in obj]
    if missing:
        raise ApiError(422, f"missing field {prefix}{missing[0]}", f"{prefix}{missing[0]}")
    return {f: _text(obj[f], f"{prefix}{f}") for f in fields}


def parse(body: bytes, fields: tuple[str, ...], max_items: int, header_key: str | None) -> Parsed:
    if not body.strip():
        raise ApiError(400, "empty body: send a JSON object")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, f"the body must be a JSON object, not a JSON {type(doc).__name__}")
    key = header_key
    if "key" in doc:
        key = _text(doc["key"], "key")
    if "items" in doc:
        items = doc["items"]
        if not isinstance(items, list):
            raise ApiError(422, "items must be a list", "items")
        if not items:
            raise ApiError(422, "items is empty", "items")
        if len(items) > max_items:
            raise ApiError(422, f"items has {len(items)} entries; at most {max_items} per request", "items")
        return Parsed([_item(x, fields, f"items[{i}]") for i, x in enumerate(items)], True, key)
    return Parsed([_item(doc, fields, "")], False, key)
