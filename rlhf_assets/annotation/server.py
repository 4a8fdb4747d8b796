"""``rlhf annotate``: the annotation app, and its roster.

    rlhf annotate [--host 127.0.0.1] [--port 8070] [--day YYYY-MM-DD] [--root DIR|s3://…] [--config FILE] …
    rlhf annotate roster add NAME [--expires-days N]     prints NAME's new token, once
    rlhf annotate roster list | deactivate NAME | activate NAME

Every AppSettings field is a flag (``rlhf annotate --help``). The binding and the graceful shutdown are the
reward-model service's (serving/server.py): SIGTERM lets in-flight answers finish, then every stored answer is
rotated into the landing zone, then exit 0. Exit codes: 0 after a clean shutdown, 2 on a refused set-up.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rlhf_assets.annotation.roster import Roster
from rlhf_assets.annotation.settings import AppSettings
from rlhf_assets.config_schema import add_flags, load
from rlhf_assets.serving.server import _server_class, bind, is_loopback
from rlhf_assets.storage import storage_from_env

ROOT_HELP = "Storage root (default $RLHF_STORAGE_ROOT or ./.rlhf)."


def serve(settings: AppSettings, root: str | None = None) -> int:
    import uvicorn

    from rlhf_assets.annotation.app import create_app

    storage = storage_from_env(root)
    app = create_app(settings, storage)  # refuses missing guidelines before binding
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    service = app.state.service
    print(f"rlhf annotate: http://{host}:{port} (storage {storage.root}, queue day {service.day()}, guidelines "
          f"{service.guidelines.version}, roster {service.roster.path})", file=sys.stderr, flush=True)
    if not is_loopback(settings.host):
        print("rlhf annotate: not on loopback — serve it behind TLS (tokens and sessions travel in the requests)",
              file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=30,
                            lifespan="on")
    _server_class()(config).run(sockets=[sock])
    return 0


def roster_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlhf annotate roster", description="Who may sign in to the annotation app.")
    p.add_argument("--root", help=ROOT_HELP)
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="Add NAME (or give them a new token); prints the token once.")
    add.add_argument("name")
    add.add_argument("--expires-days", type=float, default=None,
                     help=f"Days the token is valid (default AppSettings.token_expiry_days, "
                          f"{AppSettings().token_expiry_days:g}).")
    listing = sub.add_parser("list", help="Annotators, their expiry and whether they are active (no tokens).")
    toggles = [sub.add_parser(action, help=f"{action.capitalize()} NAME.") for action in ("deactivate", "activate")]
    for command in (add, listing, *toggles):  # --root before or after the action
        command.add_argument("--root", default=argparse.SUPPRESS, help=ROOT_HELP)
    for command in toggles:
        command.add_argument("name")
    args = p.parse_args(argv)
    roster = Roster(storage_from_env(args.root))
    if args.action == "add":
        replaced = args.name in roster.load()
        entry, token = roster.add(args.name, args.expires_days or AppSettings().token_expiry_days)
        print(f"annotator {entry.annotator_id}: {'a new token (the earlier one no longer works), ' if replaced else ''}"
              f"valid until {entry.expires_at} (shown once, store it now):", file=sys.stderr)
        print(token)
    elif args.action == "list":
        print(json.dumps([a.public() for a in roster.load().values()], indent=2))
    else:
        print(json.dumps(roster.set_active(args.name, args.action == "activate").public()))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf annotate", description="The annotation app (see also `rlhf annotate "
                                                                  "roster --help`).")
    p.add_argument("--config", help="AppSettings as JSON or YAML; the flags below override it.")
    p.add_argument("--root", help=ROOT_HELP)
    add_flags(p, AppSettings)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    try:
        if argv[:1] == ["roster"]:
            return roster_main(argv[1:])
        args = parser().parse_args(argv)
        return serve(load(AppSettings, args.config, args), args.root)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
