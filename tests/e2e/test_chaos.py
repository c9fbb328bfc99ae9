"""The chaos run's small configuration: kills, a Postgres restart, a faulty receiver, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("keys", [0, 10], ids=["unkeyed", "ten ordering keys"])
def test_small_chaos_run_loses_nothing(repo_root: Path, keys: int) -> None:
    result = subprocess.run(
        [
            sys.executable, str(repo_root / "bench" / "chaos.py"),
            "--workers", "2", "--events", "300", "--webhooks", "2",
            "--kill-every", "1", "--min-kills", "3", "--timeout", "120", "--keys", str(keys),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # The rich table's rows, label -> value (its widths follow the labels).
    rows = {
        cells[1].strip(): cells[2].strip()
        for line in result.stdout.splitlines()
        if len(cells := line.split("│")) == 4
    }
    assert rows["LOST"] == "0"
    assert rows["Postgres restarts"] == "1"
    assert rows["left pending / leased / undispatched"] == "0 / 0 / 0"
    assert rows["orphans: deliveries w/o event / w/o webhook / attempts"] == "0 / 0 / 0"
    assert int(rows["worker SIGKILLs"]) >= 3
    # Every (webhook, key) with a receipt was checked for emit order (none out of turn: LOST is 0).
    assert int(rows["ordering keys checked (webhook x key)"]) == 2 * keys
