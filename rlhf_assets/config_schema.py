"""Configuration declared once: a validated, frozen dataclass whose fields carry their own docstrings.

    @settings
    class PPOConfig(FileConfig):
        steps: Annotated[int, Field(ge=1)] = 30
        \"\"\"PPO iterations: each samples a rollout and updates on it.\"\"\"

Validation is pydantic's, the same for every config: types are strict (``"3"`` is not an int, ``1`` is not a bool),
numbers finite, ranges from ``Field(ge=…, gt=…, le=…)``, choices from ``Literal``, unknown keys refused; rules that
tie several fields together live in ``__post_init__``. From the one declaration come

- the config-file loader (:meth:`FileConfig.from_file`: JSON or YAML, errors name the file and the field),
- the command-line flags of the training entry points (:func:`add_flags`, :func:`flag_overrides`),
- the Dagster ``Config`` the Launchpad shows (``rlhf_assets/defs/config_classes.py``),

each with the field's docstring as its help and its default, so adding a knob is one edit. No Dagster here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import pydantic
from pydantic import ConfigDict
from pydantic.fields import FieldInfo

#: How every settings dataclass validates (see the module docstring).
VALIDATION = ConfigDict(use_attribute_docstrings=True, extra="forbid", strict=True, allow_inf_nan=False)


def settings(cls: type) -> type:
    """Make ``cls`` a frozen, validated settings dataclass (pydantic) whose field docstrings are its descriptions."""
    return pydantic.dataclasses.dataclass(frozen=True, config=VALIDATION)(cls)


def schema(cls: type) -> dict[str, FieldInfo]:
    """The fields of a :func:`settings` dataclass, in declaration order: annotation, default, description and
    constraints (``FieldInfo.metadata``)."""
    fields = getattr(cls, "__pydantic_fields__", None)
    if fields is None:
        raise TypeError(f"{cls.__name__} is not a @settings dataclass")
    return dict(fields)


def describe_error(exc: Exception, label: str = "") -> str:
    """One line per wrong value, naming the field, the value and what it must be (pydantic's own message is a
    multi-line report with a web link)."""
    if not isinstance(exc, pydantic.ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if where:
            value = err.get("input")
            parts.append(f"{label + '.' if label else ''}{where}={value!r}: {msg}")
        else:
            parts.append(msg)
    return "; ".join(parts)


class FileConfig:
    """Loading and overriding for :func:`settings` dataclasses; subclasses set ``CONFIG_LABEL`` (used in errors)."""

    CONFIG_LABEL: ClassVar[str] = "config"
    RENAMED: ClassVar[dict[str, str]] = {}  # old key → what replaced it, named when an old config file uses it

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise ValueError(f"{cls.CONFIG_LABEL} config must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            renamed = [f"{k} is now {cls.RENAMED[k]}" for k in unknown if k in cls.RENAMED]
            raise ValueError(f"unknown {cls.CONFIG_LABEL} config key(s): {', '.join(unknown)}"
                             + (f" ({'; '.join(renamed)})" if renamed else "")
                             + f"; known: {', '.join(cls.field_names())}")
        try:
            return cls(**data)
        except pydantic.ValidationError as exc:
            raise ValueError(describe_error(exc, cls.__name__)) from None

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
        try:
            return dataclasses.replace(self, **overrides)
        except pydantic.ValidationError as exc:
            raise ValueError(describe_error(exc, type(self).__name__)) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------------ types


def unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``Annotated`` and ``None``, whether None is allowed)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        inner = args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007 - built from a list
        return unwrap(inner)[0], optional
    return annotation, False


# ------------------------------------------------------------------------------------------------------ flags


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _none_or(parse):
    def convert(text: str):
        return None if text.strip().lower() in ("none", "null") else parse(text)
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_flags(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls`` (``--max-length`` for ``max_length``), typed from its annotation, with its
    docstring and default as the help. Flags left out are absent from the namespace, so a ``--config`` file's values
    stand unless a flag overrides them (:func:`flag_overrides`)."""
    group = parser.add_argument_group(f"{cls.__name__} (each overrides --config)")
    for name, info in schema(cls).items():
        if name in exclude:
            continue
        kind, optional = unwrap(info.annotation)
        default = info.default
        text = f"{info.description or ''} (default: {default!r})".strip()
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(kind) is Literal:
            choices = list(get_args(kind))
            kwargs.update(choices=choices, type=type(choices[0]))
        elif get_origin(kind) is tuple:
            inner = get_args(kind)
            kwargs.update(nargs=len(inner), type=inner[0], metavar=name.upper())
        elif kind in (int, float, str):
            kwargs["type"] = _none_or(kind) if optional else kind
        else:
            raise TypeError(f"{cls.__name__}.{name}: no command-line form for {kind!r}")
        group.add_argument(flag_name(name), **kwargs)


def flag_overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line (tuples from ``nargs``)."""
    given = vars(args)
    out = {}
    for name, info in schema(cls).items():
        if name in given:
            value = given[name]
            out[name] = tuple(value) if isinstance(value, list) and get_origin(unwrap(info.annotation)[0]) is tuple \
                else value
    return out


def load(cls: type, config_file: str | Path | None, args: argparse.Namespace | None = None):
    """``cls`` from an optional JSON/YAML file, with the command-line flags of :func:`add_flags` on top."""
    base = cls.from_file(config_file) if config_file else cls()
    overrides = flag_overrides(args, cls) if args is not None else {}
    if not overrides:
        return base
    try:
        return dataclasses.replace(base, **overrides)
    except pydantic.ValidationError as exc:
        raise ValueError(describe_error(exc, cls.__name__)) from None
