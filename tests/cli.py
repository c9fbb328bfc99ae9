"""Running ``outbox-worker`` as a real process, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys


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
