"""Running ``outbox-worker`` as a real process, as an operator would."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios


def run(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUTBOX_DATABASE_URL": database_url, "OUTBOX_LOG_FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "outbox_worker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def create_hook(database_url: str, owner: str = "v") -> subprocess.CompletedProcess[str]:
    return run(
        database_url,
        "--json",
        "webhooks",
        "create",
        "--owner",
        owner,
        "--url",
        "https://e.com/",
        "--event",
        "*",
    )


def run_in_terminal(database_url: str, *args: str, columns: int = 80) -> str:
    """``run``, with stdout a terminal ``columns`` wide; what the terminal showed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {
        **os.environ,
        "OUTBOX_DATABASE_URL": database_url,
        "OUTBOX_LOG_FORMAT": "json",
        "COLUMNS": str(columns),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "outbox_worker.cli", *args], env=env, stdout=follower, stderr=subprocess.PIPE
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
    return b"".join(chunks).decode().replace("\r\n", "\n")
