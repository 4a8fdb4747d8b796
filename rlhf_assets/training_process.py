"""The scaffold every training entry point runs in: flags, config, logging to Dagster Pipes, errors, summary.

    python -m rlhf_assets.reward.entrypoint train --config rm.json --pairs train.jsonl --out runs/rm --lr 1e-4
    python -m rlhf_assets.policy.entrypoint ppo --config ppo.json --sft ID --reward-model ID ... --out runs/ppo

A :class:`Command` names its settings dataclass; the scaffold adds the shared flags (``--config FILE``, ``--out``,
``--store``, ``--dataset-id``, ``--parent``) and one flag per settings field (generated, with the field's docstring
as help), loads the config (file, then flags), opens Dagster Pipes on rank 0 when launched through Pipes, and
turns a bad input (``ValueError``, an unknown artifact) into ``error: …`` on stderr and exit code 2. On success
rank 0 prints one JSON summary line.

The storage root reaches a training process one way: ``$RLHF_STORAGE_ROOT`` (the Dagster launcher sets it;
``--store`` sets it for this process, for people running the command by hand).

``--checkpoint-key KEY`` mirrors the run's checkpoints to ``<storage root>/checkpoints/KEY/`` and, when ``--out`` holds
none, resumes from the last one mirrored there (rlhf_assets/checkpoint_mirror.py; :attr:`Process.checkpoints`): a
process on a fresh machine — a retried Kubernetes pod — picks up where the killed one stopped. Without it, ``--out``
alone holds the checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf_assets.checkpoint_mirror import CheckpointMirror
from rlhf_assets.config_schema import add_flags, load
from rlhf_assets.jsonsafe import json_safe
from rlhf_assets.storage import ROOT_ENV

# rank and Dagster Pipes -----------------------------------------------------------------------------------

PIPES_ENV = "DAGSTER_PIPES_CONTEXT"


def rank() -> int:
    """This process's rank. Lightning's DDP children and torchrun's workers inherit the environment (so every rank
    sees ``DAGSTER_PIPES_CONTEXT``); a process is rank 0 only when every rank variable that is set says 0."""
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0


def meta(value: Any) -> Any:
    """A Dagster Pipes metadata value with an explicit type (an already typed ``{"raw_value", "type"}`` passes)."""
    if isinstance(value, dict) and set(value) == {"raw_value", "type"}:
        return value
    if isinstance(value, bool):
        return {"raw_value": value, "type": "bool"}
    if isinstance(value, int):
        return {"raw_value": value, "type": "int"}
    if isinstance(value, float):
        return {"raw_value": value, "type": "float"} if math.isfinite(value) else {"raw_value": None, "type": "null"}
    if value is None:
        return {"raw_value": None, "type": "null"}
    if isinstance(value, (dict, list, tuple)):
        return {"raw_value": json_safe(value), "type": "json"}
    return {"raw_value": str(value), "type": "text"}


@contextlib.contextmanager
def pipes() -> Iterator[Any | None]:
    """Dagster Pipes context on rank 0 of a Pipes-launched process, else None."""
    if not os.environ.get(PIPES_ENV) or rank() != 0:
        yield None
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        yield pipes


def png_markdown(png: bytes, title: str) -> str:
    """A PNG as a markdown image with a data URL (how plots travel in materialization metadata)."""
    import base64

    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


# the scaffold -----------------------------------------------------------------------------------------------


@dataclass
class Process:
    """What a command's run function gets besides its arguments: where to log and report (rank 0 only), and the
    storage root's mirror of the checkpoints (None without ``--checkpoint-key``)."""

    tag: str
    pipes: Any | None
    checkpoints: CheckpointMirror | None = None

    @property
    def is_rank_zero(self) -> bool:
        return rank() == 0

    def log(self, msg: str) -> None:
        print(f"[{self.tag}] {msg}", file=sys.stderr, flush=True)
        if self.pipes is not None:
            self.pipes.log.info(msg)

    @property
    def logger(self) -> Callable[[str], None] | None:
        """The log function on rank 0, None on the other ranks (they train silently)."""
        return self.log if self.is_rank_zero else None

    def report(self, metadata: dict[str, Any], data_version: str) -> None:
        """The materialization Dagster records (rank 0 under Pipes; a no-op elsewhere)."""
        if self.pipes is not None:
            self.pipes.report_asset_materialization(metadata={k: meta(v) for k, v in metadata.items()},
                                                    data_version=data_version)


@dataclass
class Command:
    """One subcommand: ``run(args, config, process)`` returns the JSON summary (None: print nothing, e.g. rank>0)."""

    name: str
    help: str
    run: Callable[[argparse.Namespace, Any, Process], dict[str, Any] | None]
    settings: type | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    training: bool = True  # takes the shared training flags (--out, --dataset-id, --parent)
    default_out: str | None = None  # --out when not given (None: --out is required)


def build_parser(prog: str, description: str, commands: Sequence[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        p.add_argument("--store", help=f"Storage root (sets ${ROOT_ENV}; default ${ROOT_ENV} or ./.rlhf).")
        if command.settings is not None:
            p.add_argument("--config", help="Settings as JSON or YAML; the flags below override it.")
        if command.training:
            p.add_argument("--out", required=command.default_out is None, default=command.default_out,
                           help="Work directory: checkpoints, metrics; rerun to resume"
                                + (f" (default {command.default_out})." if command.default_out else "."))
            p.add_argument("--dataset-id", help="preference_dataset id (recorded in the manifest).")
            p.add_argument("--parent", action="append", default=[], dest="parents",
                           help="Parent artifact id (repeatable).")
            p.add_argument("--checkpoint-key",
                           help="Mirror checkpoints to <storage root>/checkpoints/KEY/ and resume from there when "
                                "--out has none (a fresh machine picks up where a killed run stopped).")
        if command.add_arguments is not None:
            command.add_arguments(p)
        if command.settings is not None:
            add_flags(p, command.settings)
    return parser


def run_commands(prog: str, description: str, commands: Sequence[Command],
                 argv: Sequence[str] | None = None) -> int:
    """Parse, load the config, run the command under Pipes (rank 0), print its summary; exit 2 on bad input."""
    args = build_parser(prog, description, commands).parse_args(list(argv) if argv is not None else None)
    command = next(c for c in commands if c.name == args.command)
    from rlhf_assets.registry.artifacts import ArtifactNotFound

    before = os.environ.get(ROOT_ENV)
    try:
        if args.store:
            os.environ[ROOT_ENV] = args.store
        config = load(command.settings, args.config, args) if command.settings is not None else None
        with pipes() as context:
            process = Process(f"{prog} {command.name}", context)
            if getattr(args, "checkpoint_key", None):
                from rlhf_assets.storage import storage_from_env

                process.checkpoints = CheckpointMirror(storage_from_env(), args.checkpoint_key, args.out,
                                                       log=process.logger)
            summary = command.run(args, config, process)
    except (ValueError, ArtifactNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:  # in-process callers (tests, notebooks) get their environment back
        if args.store:
            os.environ.pop(ROOT_ENV, None) if before is None else os.environ.__setitem__(ROOT_ENV, before)
    if summary is not None:
        print(json.dumps(json_safe(summary), sort_keys=True), flush=True)
    return 0
