"""Dagster ``Config`` classes generated from the project's settings dataclasses (rlhf_assets/config_schema.py).

The Launchpad shows every field of the dataclass with its docstring and default, and Dagster validates the same
ranges and choices; nothing is copied by hand, so a knob added to a dataclass appears here by itself.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Annotated, Any, get_args, get_origin

import dagster as dg
from pydantic import Field, create_model

from rlhf_assets.config_schema import schema, unwrap


def _dagster_type(annotation: Any) -> Any:
    """Dagster config has no tuples: a tuple field is a list in the Launchpad (the dataclass turns it back)."""
    kind, optional = unwrap(annotation)
    if get_origin(kind) is tuple:
        kind = list[get_args(kind)[0]]
        return kind | None if optional else kind
    return annotation


def config_class(name: str, *sources: type, doc: str | None = None, defaults: Mapping[str, Any] | None = None,
                 exclude: tuple[str, ...] = (), base: type = dg.Config) -> type:
    """A ``base`` subclass (``dg.Config`` or a ``dg.ConfigurableResource``) with every field of ``sources``
    (settings dataclasses with disjoint field names): same type, constraints, description and default; ``defaults``
    replaces some defaults (e.g. the judge's own seed); ``exclude`` leaves out fields the asset sets itself (e.g.
    the partition's day)."""
    defaults = dict(defaults or {})
    fields: dict[str, Any] = {}
    for source in sources:
        for field, info in schema(source).items():
            if field in exclude:
                continue
            if field in fields:
                raise ValueError(f"{name}: field {field!r} comes from two sources")
            default = defaults.pop(field, info.default)
            default = list(default) if isinstance(default, tuple) else default
            annotation = _dagster_type(info.annotation)
            if info.metadata:
                annotation = Annotated[(annotation, *info.metadata)]
            fields[field] = (annotation, Field(default=default, description=info.description))
    if defaults:
        raise ValueError(f"{name}: defaults for unknown field(s) {', '.join(sorted(defaults))}")
    module = sys._getframe(1).f_globals.get("__name__", __name__)
    return create_model(name, __base__=base, __doc__=doc or sources[0].__doc__, __module__=module, **fields)


def settings_from(config: Any, cls: type, **replace: Any):
    """The settings dataclass ``cls`` from a generated config (its own fields only), validated again."""
    values = config.model_dump() if hasattr(config, "model_dump") else dict(config)
    return cls(**{**{k: v for k, v in values.items() if k in schema(cls)}, **replace})
