"""``rlhf serve-policy``: the registry's production (and canary) policy behind its runtime guards, with the
reward-model service's set-up rules, binding and graceful shutdown (serving/server.py: SIGTERM drains in-flight
requests, flushes the log, exits 0).

    RLHF_SERVE_TOKEN=… rlhf serve-policy [--port 8090] [--kl-limit-factor 3 | --kl-limit 8] [--on-guard reference|refuse]
                                          [--filter-blocklist W …] [--filter-regexes RX …] [--classifier-url URL] …

Every PolicyServeSettings and ResponseFilterSettings field is a flag (``--help``); ``--config FILE`` takes the
PolicyServeSettings from JSON or YAML. Exit codes: 0 after a clean shutdown, 2 on a refused set-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from rlhf_assets.config_schema import add_flags, describe_error, load
from rlhf_assets.evaluation.response_filters import ResponseFilterSettings
from rlhf_assets.policy_serving.settings import PolicyServeSettings
from rlhf_assets.serving.server import run_service

FILTER_LISTS = ("filter_blocklist", "filter_regexes")


def serve(settings: PolicyServeSettings, filters: ResponseFilterSettings, root: str | None = None) -> int:
    from rlhf_assets.policy_serving.app import create_app

    limit = f"{settings.kl_limit} nats" if settings.kl_limit else f"each release's own ({settings.kl_limit_factor}x)"
    return run_service("rlhf serve-policy", settings, root,
                       lambda storage, token: create_app(settings, filters, storage, token),
                       f"kl limit {limit}, on guard: {settings.on_guard}", drain_s=60)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf serve-policy", description="The policy behind runtime guards.")
    p.add_argument("--config", help="PolicyServeSettings as JSON or YAML; the flags below override it.")
    p.add_argument("--root", help="Storage root (default $RLHF_STORAGE_ROOT or ./.rlhf).")
    add_flags(p, PolicyServeSettings)
    group = p.add_argument_group("ResponseFilterSettings (evaluation/response_filters.py)")
    for name, info in ResponseFilterSettings.__pydantic_fields__.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, nargs="*", default=argparse.SUPPRESS,
                           help=f"{info.description} (default: {info.default!r}; give none to empty it)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(argv) if argv is not None else None)
    try:
        settings = load(PolicyServeSettings, args.config, args)
        given = {k: tuple(v) for k, v in vars(args).items() if k in FILTER_LISTS}
        try:
            filters = dataclasses.replace(ResponseFilterSettings(), **given)
        except Exception as exc:  # noqa: BLE001 - pydantic's validation error, in one line
            raise ValueError(describe_error(exc, "ResponseFilterSettings")) from None
        return serve(settings, filters, args.root)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
