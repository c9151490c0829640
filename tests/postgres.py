"""A throwaway PostgreSQL cluster for the test session, from the distribution's own binaries.

Use it from a test module (pytest only collects fixtures from conftest files and test modules)::

    @pytest.fixture(scope="session")
    def postgres() -> Iterator[PostgresCluster]:
        yield from postgres_cluster()

Binaries are looked up under ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu, newest version
first), then on ``PATH``. Without them the tests that use the fixture are skipped, unless
``LINKFLOW_REQUIRE_POSTGRES`` is set (CI sets it): then they fail. The cluster listens on
127.0.0.1 on a free port, trusts every local TCP connection and keeps its unix socket in its own
directory; it is stopped and deleted at the end of the session. ``initdb`` refuses to run as
root, so under root every server command runs as the ``postgres`` system user (created by the
Debian ``postgresql`` package) through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from linkflow_stream.dev.broker import free_port

REQUIRE_ENV = "LINKFLOW_REQUIRE_POSTGRES"
SERVER_USER = "postgres"
SUPERUSER = "postgres"


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when ``LINKFLOW_REQUIRE_POSTGRES`` says PostgreSQL must be there."""
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV} is set) but {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason} (set {REQUIRE_ENV}=1 to make this an error)")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, newest version first."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


@dataclass
class PostgresCluster:
    """One ``initdb``-made cluster under ``base``, run as ``run_as`` (or the current user)."""

    bin_dir: Path
    base: Path
    port: int
    run_as: str | None = None
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        return subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False, cwd=self.base
        )

    def _check(self, what: str, proc: subprocess.CompletedProcess[str]) -> None:
        if proc.returncode != 0:
            raise RuntimeError(
                f"{what} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def start(self) -> None:
        initdb = self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        self._check("initdb", initdb)
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            # A throwaway cluster: durability buys nothing and costs seconds.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/postgres.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        started = self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            "60",
            "start",
        )
        self._check("pg_ctl start", started)

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser; its output."""
        proc = self._run(
            str(self.bin_dir / "psql"),
            *("-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", database),
            *("-v", "ON_ERROR_STOP=1", "-qAtc", sql),
            timeout=60,
        )
        self._check(f"psql -c {sql!r}", proc)
        return proc.stdout

    def create_database(self) -> str:
        """A fresh, empty database; its name. (About 0.3 s: prefer ``fresh_url``.)"""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f'create database "{name}"')
        return name

    def fresh_url(self) -> str:
        """The URL of a fresh, empty schema of the ``postgres`` database: its own tables, types
        and functions, as the first entry of ``search_path`` (a server setting in the URL)."""
        schema = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f'create schema "{schema}"')
        return f"{self.url()}?search_path={schema}"


def postgres_cluster() -> Iterator[PostgresCluster]:
    """Start a cluster, yield it, stop and delete it; skip or fail (see the module) if impossible."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        unavailable(
            "initdb/pg_ctl were not found under /usr/lib/postgresql/*/bin or on PATH "
            "(Debian/Ubuntu: apt-get install postgresql)"
        )
    run_as: str | None = None
    root = os.geteuid() == 0
    # Under root the server user must reach the directory: /tmp, not a private $TMPDIR.
    base = Path(tempfile.mkdtemp(prefix="linkflow-pg-", dir="/tmp" if root else None))  # noqa: S108
    if root:
        try:
            server_user = pwd.getpwnam(SERVER_USER)
        except KeyError:
            shutil.rmtree(base)
            unavailable(f"running as root and there is no {SERVER_USER!r} system user to run initdb as")
        # mkdtemp's directory is 0700 in the world-traversable temp dir: the server user owns it.
        os.chown(base, server_user.pw_uid, server_user.pw_gid)
        run_as = SERVER_USER
    cluster = PostgresCluster(bin_dir=bin_dir, base=base, port=free_port(), run_as=run_as)
    try:
        try:
            cluster.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"PostgreSQL did not start from {bin_dir}: {exc}", pytrace=False)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
