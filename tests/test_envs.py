"""The conda env files name the same packages as pyproject.toml (conda cannot run here)."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_packages() -> set[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in meta["dependencies"]} | {_name(r) for r in meta["optional-dependencies"]["report"]}


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_names_pyproject_packages(env):
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    names = {_name(r) for r in pip if not r.startswith("-") and r not in ("..", ".")}
    assert names == _pyproject_packages(), f"{env.name}: {sorted(names ^ _pyproject_packages())}"
    assert ".." in pip, f"{env.name} must install weightflow itself (pip '..')"
