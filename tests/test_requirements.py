"""The dependency floors of setup.cfg: ranges, not exact pins, each equal to its pin in
requirements-min.txt (the versions the minimum-versions job tests, .ci/min-versions), and the
pinned environment of requirements.txt inside every range."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
TESTED_EXTRAS = ("test", "dist", "lite")  # the extras requirements-min.txt installs (not gpu, bench)


def _setup_requirements(extras: tuple[str, ...] = ()) -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def _pins(name: str) -> dict[str, Version]:
    path = REPO / name
    if not path.is_file():  # an unpacked sdist carries setup.cfg but not the requirement files
        pytest.skip(f"{name} is not in this copy of the project")
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{name}: {line} is not an exact pin"
            pins[requirement.name.lower()] = Version(specifier.version)
    return pins


def test_every_dependency_is_a_range_with_a_floor():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    extras = tuple(config["options.extras_require"])
    for requirement in _setup_requirements(extras):
        operators = {specifier.operator for specifier in requirement.specifier}
        assert ">=" in operators and "==" not in operators, f"setup.cfg: {requirement} is no range with a floor"


def test_the_minimum_versions_are_the_floors():
    pins = _pins("requirements-min.txt")
    floors = {}
    for requirement in _setup_requirements(TESTED_EXTRAS):
        (floor,) = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        floors[requirement.name.lower()] = floor
    assert pins == floors


def test_the_pinned_versions_are_inside_the_ranges():
    pins = _pins("requirements.txt")
    for requirement in _setup_requirements(TESTED_EXTRAS):
        assert requirement.specifier.contains(pins[requirement.name.lower()]), (
            f"requirements.txt pins {requirement.name}=={pins[requirement.name.lower()]}, outside {requirement}")
