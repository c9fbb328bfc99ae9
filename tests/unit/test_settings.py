"""Settings: environment parsing, validation, and the README staying in step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from outbox_worker.settings import Settings, settings_table


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_CONCURRENCY", "17")
    monkeypatch.setenv("OUTBOX_RETRY_SCHEDULE", "[1, 2]")
    monkeypatch.setenv("OUTBOX_LISTEN", "false")
    settings = Settings()
    assert (settings.concurrency, settings.retry_schedule, settings.listen) == (17, [1.0, 2.0], False)
    assert settings.max_attempts == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"concurrency": 0}, "greater than or equal to 1"),
        ({"retry_schedule": [5, -1]}, "retry delays must be >= 0"),
        ({"lease_seconds": 10, "request_timeout": 15}, "must be longer than request_timeout"),
        ({"log_format": "xml"}, "auto"),
    ],
)
def test_bad_settings_are_refused_clearly(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings.model_validate(overrides)


def test_readme_documents_every_setting(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    for line in settings_table().splitlines()[2:]:
        variable = line.split("|")[1].strip()
        assert variable in readme, f"{variable} is missing from the README's configuration table"


def test_the_table_command_prints_no_warning() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "outbox_worker.settings"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("| Variable | Default | Meaning |")


@pytest.mark.parametrize("url", ["postgres//oops", "mysql://user:hunter2@db/app", "host='db"])
def test_a_malformed_database_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(database_url=url)
    [error] = refused.value.errors()
    assert "not a PostgreSQL URL" in error["msg"] and "hunter2" not in error["msg"]  # what the CLI prints
