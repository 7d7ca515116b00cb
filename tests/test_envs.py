"""The conda env files name pyproject.toml's packages (all runtime ones, optional ones at most; conda cannot run here)."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_packages() -> tuple[set[str], set[str]]:
    """(runtime dependencies + the report extra, every optional package)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    required = {_name(r) for r in meta["dependencies"]} | {_name(r) for r in extras["report"]}
    return required, {_name(r) for reqs in extras.values() for r in reqs}


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_names_pyproject_packages(env):
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    names = {_name(r) for r in pip if not r.startswith("-")}
    required, optional = _pyproject_packages()
    assert required <= names, f"{env.name} lacks {sorted(required - names)}"
    assert names <= required | optional, f"{env.name} names packages pyproject does not: {sorted(names - required - optional)}"
