"""A real PostgreSQL server for tests, the way pytest-postgresql runs one: ``initdb`` + ``pg_ctl`` in a temporary
directory, listening on a free loopback port (no Unix socket outside that directory), stopped at the end.

The binaries come from PATH or from Debian's ``/usr/lib/postgresql/<version>/bin`` (the ``postgresql`` package
does not put them on PATH; ``make postgresql`` installs it). PostgreSQL refuses to run as root, so under root the
server runs as the ``postgres`` user the Debian package creates (``nobody`` otherwise) through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
USER = "rlhf"  # the superuser initdb creates, with a password (scram-sha-256), as in production


def server_binaries() -> Path | None:
    """The directory holding both ``initdb`` and ``pg_ctl`` (PATH first, then the newest Debian version)."""
    on_path = [shutil.which(name) for name in ("initdb", "pg_ctl")]
    if all(on_path) and Path(on_path[0]).resolve().parent == Path(on_path[1]).resolve().parent:
        return Path(on_path[0]).resolve().parent
    debian = sorted(Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")), key=lambda p: int(p.parent.name)
                    if p.parent.name.isdigit() else -1)
    for directory in reversed(debian):
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    """The unprivileged account the server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as")


@dataclass
class PostgresServer:
    """One running server: connect as :data:`USER` with ``password`` to ``127.0.0.1:port``."""

    bin_dir: Path
    base: Path
    port: int
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    user: str = USER
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def _cmd(self, *args: str) -> list[str]:
        account = _run_as()
        return ["runuser", "-u", account, "--", *args] if account else list(args)

    def _call(self, *args: str) -> None:
        # cwd: the server's own directory (runuser keeps ours, which the unprivileged user may not read).
        done = subprocess.run(self._cmd(*args), cwd=self.base, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = (self.base / "server.log").read_text() if (self.base / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}{log}")

    def start(self) -> PostgresServer:
        password_file = self.base / "password"
        password_file.write_text(self.password)
        if account := _run_as():
            entry = pwd.getpwnam(account)
            os.chown(password_file, entry.pw_uid, entry.pw_gid)
        self._call(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                   "--auth=scram-sha-256", f"--pwfile={password_file}", "-E", "UTF8", "--no-sync")
        password_file.unlink()
        # -k: the Unix socket in our directory; -F: no fsync (a throwaway server); -h/-p: loopback, our port.
        options = f"-h {self.host} -p {self.port} -k {self.base} -F"
        self._call(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.base / "server.log"),
                   "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._call(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")

    def connect(self, db_name: str = "postgres"):
        """A psycopg2 connection (the caller closes it)."""
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=db_name)

    def create_database(self, name: str) -> str:
        connection = self.connect()
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return name

    def env(self, db_name: str) -> dict[str, str]:
        """The variables the instance configs (dagster.postgres.yaml, k8s/dagster.yaml) read."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USER": self.user,
                "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": db_name}


def start_server(bin_dir: Path) -> PostgresServer:
    """initdb + pg_ctl start in a fresh temporary directory (owned by the account the server runs as)."""
    base = Path(tempfile.mkdtemp(prefix="rlhf-postgres-"))
    account = _run_as()
    if account:
        entry = pwd.getpwnam(account)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(bin_dir=bin_dir, base=base, port=free_port())
    try:
        return server.start()
    except BaseException:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise


def stop_server(server: PostgresServer) -> None:
    try:
        server.stop()
    finally:
        shutil.rmtree(server.base, ignore_errors=True)
