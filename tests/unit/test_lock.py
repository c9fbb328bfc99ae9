"""The lock file: every dependency pinned, and CI and the image install from it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    return {canonicalize_name(name): version for name, version in pinned.items()}


def test_every_dependency_and_extra_is_pinned_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    locked = pins()
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        if name == "outbox-worker":
            continue  # an extra naming another extra
        assert name in locked, f"{name} is not in constraints.txt: run .ci/lock"
        assert requirement.specifier.contains(locked[name]), f"{name}=={locked[name]} not {requirement}"


def test_ci_and_the_image_install_from_the_lock_file() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pip install .*-c constraints\.txt", ci)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"COPY .*constraints\.txt", dockerfile)
    assert re.search(r"pip wheel .*-c constraints\.txt", dockerfile)
    assert ".ci/lock" in (ROOT / "docs" / "operations.md").read_text()
