"""A second PostgreSQL cluster for tests that stop and restart a database
server: initdb into a temporary directory, pg_ctl on a free port, removed at
the end. Run as the ``postgres`` user when the tests run as root (initdb
refuses root), as the current user otherwise."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def bindir() -> str | None:
    """Where initdb and pg_ctl are: ``OUTBOX_TEST_PG_BINDIR``, PATH, or Debian's
    /usr/lib/postgresql/<version>/bin (newest first)."""
    places = [os.environ.get("OUTBOX_TEST_PG_BINDIR") or ""]
    if found := shutil.which("initdb"):
        places.append(str(Path(found).parent))
    places += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: float(Path(p).parent.name), reverse=True
    )
    for place in places:
        if (
            place
            and os.access(Path(place) / "initdb", os.X_OK)
            and os.access(Path(place) / "pg_ctl", os.X_OK)
        ):
            return place
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running (or stopped) PostgreSQL cluster on 127.0.0.1:``port``."""

    bindir: str
    directory: Path
    port: int
    user: str | None  # the OS user to run as (None: this one)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [*args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            f"{self.bindir}/pg_ctl", "start", "-w", "-D", str(self.directory / "data"),
            "-l", str(self.directory / "log"), "-o", options,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(f"{self.bindir}/pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.directory / "data"))


@contextmanager
def second_cluster() -> Iterator[Cluster]:
    """A fresh cluster, started; stopped and removed afterwards."""
    where = bindir()
    if where is None:
        raise RuntimeError(
            "initdb and pg_ctl not found: install PostgreSQL's server binaries or set OUTBOX_TEST_PG_BINDIR"
        )
    user = "postgres" if os.geteuid() == 0 else None
    directory = Path(tempfile.mkdtemp(prefix="outbox-cluster-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    cluster = Cluster(where, directory, _free_port(), user)
    try:
        cluster._run(
            f"{where}/initdb", "-D", str(directory / "data"), "-U", "postgres", "-A", "trust", "--no-sync",
        )  # fmt: skip
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError):  # stopped already, or never started
            cluster.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
