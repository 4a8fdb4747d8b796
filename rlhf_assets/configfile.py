"""Training configs as frozen dataclasses that load from JSON/YAML and take CLI overrides.

One mixin for the reward-model and policy configs, so every ``--config FILE`` behaves the same: unknown keys are
refused by name, parse errors name the file, ``None`` overrides (CLI flags left out) keep the file's values.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar


class FileConfig:
    """Mixin for frozen dataclasses; subclasses set ``CONFIG_LABEL`` (used in error messages)."""

    CONFIG_LABEL: ClassVar[str] = "config"

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise ValueError(f"{cls.CONFIG_LABEL} config must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown {cls.CONFIG_LABEL} config key(s): {', '.join(unknown)}; "
                             f"known: {', '.join(cls.field_names())}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path):
        """Load from ``.json`` or ``.yaml``/``.yml`` (a mapping of field names to values)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {cls.CONFIG_LABEL} config {path}: {exc}") from exc
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - report any parse error with its file
            raise ValueError(f"cannot parse {cls.CONFIG_LABEL} config {path}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def with_overrides(self, **overrides: Any):
        """A copy with the given fields replaced (None values are ignored, so CLI flags left out keep the file's)."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise ValueError(f"unknown {self.CONFIG_LABEL} config key(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
