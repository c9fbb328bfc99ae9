"""The chaos run's small configuration: kills, a Postgres restart, a faulty receiver, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_small_chaos_run_loses_nothing(repo_root: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, str(repo_root / "bench" / "chaos.py"),
            "--workers", "2", "--events", "300", "--webhooks", "2",
            "--kill-every", "1", "--min-kills", "3", "--timeout", "120",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout
    assert "│ LOST                                 │            0 │" in table
    assert "│ Postgres restarts                    │            1 │" in table
    assert "│ left pending / leased / undispatched │    0 / 0 / 0 │" in table
    kills = next(line for line in table.splitlines() if "worker SIGKILLs" in line)
    assert int(kills.split("│")[2]) >= 3
