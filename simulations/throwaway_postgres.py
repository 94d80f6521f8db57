"""A throwaway PostgreSQL server for tests and benchmarks: a cluster made by `initdb` in a new
temporary folder, listening on a unix socket in that folder only (no TCP), removed when stopped.

`initdb` refuses to run as root, so as root the cluster belongs to the `postgres` user the
Debian package creates (or `nobody`), and its programs run through `runuser`.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg

__all__ = ["ThrowawayPostgres", "find_binaries"]


def find_binaries() -> Path | None:
    """The folder of `initdb` and `pg_ctl`: on the PATH, else the newest of Debian's
    `/usr/lib/postgresql/*/bin`; `None` if neither has them."""
    found = shutil.which("initdb")
    if found is not None and shutil.which("pg_ctl") is not None:
        return Path(found).resolve().parent
    versions = [
        folder
        for folder in Path("/usr/lib/postgresql").glob("*/bin")
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists()
    ]

    def version(folder: Path) -> int:
        number = re.match(r"\d+", folder.parent.name)
        return int(number.group()) if number else 0

    return max(versions, key=version, default=None)


class ThrowawayPostgres:
    """A PostgreSQL server of its own; `durable=False` turns fsync off, for tests that do not
    measure or rely on durability."""

    def __init__(self, *, durable: bool = False) -> None:
        binaries = find_binaries()
        if binaries is None:
            msg = (
                "no initdb and pg_ctl on the PATH or in /usr/lib/postgresql/*/bin: "
                "scripts/ensure-postgres installs them (make test runs it)"
            )
            raise RuntimeError(msg)
        self._binaries = binaries
        self._durable = durable
        self.folder = Path(tempfile.mkdtemp(prefix="rejoin-pg-"))
        """The cluster's data, its log, and its socket."""
        self._owner = _unprivileged_user() if os.geteuid() == 0 else None
        self._databases = 0
        self._started = False

    def start(self) -> ThrowawayPostgres:
        if self._owner is not None:
            shutil.chown(self.folder, self._owner)
        try:
            self._run(
                "initdb",
                "--pgdata",
                str(self.folder / "data"),
                "--auth=trust",
                "--username=rejoin",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            fsync = "on" if self._durable else "off"
            self._run(
                "pg_ctl",
                "--pgdata",
                str(self.folder / "data"),
                "--log",
                str(self.folder / "server.log"),
                "--wait",
                "--options",
                f"-c listen_addresses='' -c unix_socket_directories='{self.folder}'"
                f" -c fsync={fsync} -c max_connections=200",
                "start",
            )
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self._started = True
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://rejoin@/{database}?host={self.folder}"

    def new_database(self) -> str:
        """The URL of a new, empty database on this server."""
        self._databases += 1
        name = f"log{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}".encode())
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once and remove its folder."""
        try:
            if self._started:
                self._run(
                    "pg_ctl", "--pgdata", str(self.folder / "data"), "-m", "immediate", "stop"
                )
        finally:
            self._started = False
            shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *argv: str) -> None:
        command = [str(self._binaries / program), *argv]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            msg = f"{program} failed ({done.returncode}): {done.stderr.strip() or done.stdout}"
            raise RuntimeError(msg)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    msg = "running as root, and neither a postgres nor a nobody user to run PostgreSQL as"
    raise RuntimeError(msg)
