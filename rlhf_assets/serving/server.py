"""``rlhf serve``: refuse unsafe set-ups, bind, run uvicorn; SIGTERM drains in-flight requests and flushes the log.

    RLHF_SERVE_TOKEN=… rlhf serve [--host 127.0.0.1] [--port 8080] [--model ID|latest] [--backend torch|onnx] …
    rlhf serve --insecure-no-auth            # loopback only, no token (trying it out)

Every ServeSettings field is a flag (``rlhf serve --help``); ``--config FILE`` takes them from JSON or YAML.
Exit codes: 0 after a clean shutdown, 2 on a refused set-up (no token, a bad flag).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rlhf_assets.config_schema import add_flags, load
from rlhf_assets.serving.settings import TOKEN_ENV, ServeSettings
from rlhf_assets.storage import Storage, storage_from_env


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_setup(settings: ServeSettings, token: str | None) -> None:
    """The rules the service will not bend: a token, or --insecure-no-auth on loopback only."""
    if token is not None and len(token) < 16:
        raise ValueError(f"${TOKEN_ENV} is shorter than 16 characters; use a long random token "
                         "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    if token is None and not settings.insecure_no_auth:
        raise ValueError(f"no token: set ${TOKEN_ENV} (clients send `Authorization: Bearer <token>`), or pass "
                         "--insecure-no-auth to try it out on loopback")
    if token is None and not is_loopback(settings.host):
        raise ValueError(f"--insecure-no-auth only binds to loopback; {settings.host} is not (set ${TOKEN_ENV})")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn
    from uvicorn.server import HANDLED_SIGNALS

    class DrainingServer(uvicorn.Server):
        """SIGTERM/SIGINT: stop accepting, let in-flight requests finish, run the shutdown (the log flush), exit 0.
        (uvicorn re-raises the signal after its graceful shutdown, which would make a clean stop exit -15.)"""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return DrainingServer


def run_service(name: str, settings: Any, root: str | None, make_app: Callable[[Storage, str | None], Any],
                details: str, drain_s: int) -> int:
    """Both services' start: the token from the environment and the set-up rules, the storage, the socket, one line
    on stderr (``name: http://host:port (storage …, details, auth …)``, which tests and scripts read the port from),
    then uvicorn until SIGTERM/SIGINT, draining in-flight requests for up to ``drain_s`` seconds."""
    import uvicorn

    token = os.environ.get(TOKEN_ENV) or None
    check_setup(settings, token)
    storage = storage_from_env(root)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    print(f"{name}: http://{host}:{port} (storage {storage.root}, {details}, "
          f"auth {'bearer token' if token else 'OFF (loopback only)'}); /readyz says when it is loaded",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(make_app(storage, token), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=drain_s, lifespan="on")
    _server_class()(config).run(sockets=[sock])
    return 0


def serve(settings: ServeSettings, root: str | None = None) -> int:
    from rlhf_assets.serving.app import create_app

    return run_service("rlhf serve", settings, root, lambda storage, token: create_app(settings, storage, token),
                       f"backend {settings.backend}", drain_s=30)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf serve", description="The reward-model HTTP service.")
    p.add_argument("--config", help="ServeSettings as JSON or YAML; the flags below override it.")
    p.add_argument("--root", help="Storage root (default $RLHF_STORAGE_ROOT or ./.rlhf).")
    add_flags(p, ServeSettings)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(argv) if argv is not None else None)
    try:
        settings = load(ServeSettings, args.config, args)
        return serve(settings, args.root)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
