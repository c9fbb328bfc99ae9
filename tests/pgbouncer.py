"""A real PgBouncer for tests: started on a free port with its own config in
a temporary directory, in front of the test server, and stopped at the end."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from outbox_worker.db import as_url

# Debian puts it in /usr/sbin, which is not on every user's PATH.
_PLACES = (
    "/usr/sbin/pgbouncer",
    "/usr/local/sbin/pgbouncer",
    "/usr/local/bin/pgbouncer",
    "/opt/homebrew/bin/pgbouncer",
)


def binary() -> str | None:
    """The pgbouncer executable: ``OUTBOX_TEST_PGBOUNCER``, PATH, or where packages put it."""
    for candidate in (os.environ.get("OUTBOX_TEST_PGBOUNCER"), shutil.which("pgbouncer"), *_PLACES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing(server_url: str) -> str | None:
    """Why no PgBouncer can stand in front of ``server_url`` here, if it cannot."""
    if binary() is None:
        return "pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run installs it)"
    host = str(psycopg.conninfo.conninfo_to_dict(server_url).get("host") or "")
    if os.geteuid() == 0 and host.startswith("/"):
        return (
            "pgbouncer runs as another user than root and cannot reach this server's socket "
            "directory; set OUTBOX_TEST_DATABASE_URL to a server on TCP"
        )
    return None


@dataclass
class PgBouncer:
    port: int
    directory: Path
    server_url: str

    def url(self, database_url: str) -> str:
        """``database_url`` (a database on the test server) reached through this PgBouncer."""
        return as_url(database_url, host="127.0.0.1", port=str(self.port))

    def log(self) -> str:
        return "".join(
            path.read_text(errors="replace")
            for path in (self.directory / "stderr.log", self.directory / "pgbouncer.log")
            if path.exists()
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(directory: Path, server_url: str, port: int, pool_mode: str, pool_size: int) -> None:
    server = psycopg.conninfo.conninfo_to_dict(server_url)
    target = " ".join(f"{key}={server[key]}" for key in ("host", "port") if server.get(key))
    user, password = str(server.get("user") or "postgres"), str(server.get("password") or "")
    # auth_type trust: clients are not checked, but must be listed; PgBouncer
    # logs in to the server with the password listed here, if it asks for one.
    (directory / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    (directory / "pgbouncer.ini").write_text(
        f"""[databases]
* = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/userlist.txt
logfile = {directory}/pgbouncer.log
pool_mode = {pool_mode}
default_pool_size = {pool_size}
reserve_pool_size = 0
max_client_conn = 500
server_login_retry = 0.2
ignore_startup_parameters = extra_float_digits, options
"""
    )


@contextmanager
def running(server_url: str, *, pool_mode: str = "transaction", pool_size: int = 3) -> Iterator[PgBouncer]:
    """A PgBouncer in front of ``server_url``'s server, for every database on it."""
    exe, reason = binary(), missing(server_url)
    if exe is None or reason:
        raise FileNotFoundError(reason)
    directory = Path(tempfile.mkdtemp(prefix="outbox-pgbouncer-"))
    command = [exe, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root: it switches to this user, which
        # must be able to read its directory and write its log there.
        user = "postgres" if _has_user("postgres") else "nobody"
        command[1:1] = ["-u", user]
    process: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(5):  # the free port may be taken before PgBouncer binds it
            port = _free_port()
            _config(directory, server_url, port, pool_mode, pool_size)
            if os.geteuid() == 0:
                entry = pwd.getpwnam(command[2])
                for path in (directory, *directory.iterdir()):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            # Its output goes to a file, not a pipe nobody reads: a full pipe would stall it.
            with open(directory / "stderr.log", "wb") as err:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            bouncer = PgBouncer(port, directory, server_url)
            if _answers(bouncer, process):
                break
            _stop(process)
        else:
            raise RuntimeError(f"pgbouncer did not start:\n{bouncer.log()}")
        yield bouncer
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _answers(bouncer: PgBouncer, process: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    """Wait until PgBouncer accepts a login through to the server; False if it exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with psycopg.connect(bouncer.url(bouncer.server_url), connect_timeout=2) as conn:
                conn.execute("select 1")
            return True
        except psycopg.OperationalError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not answer within {timeout}s:\n{bouncer.log()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
