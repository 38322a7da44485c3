"""envs/didi.yaml (the rules' conda env) must stay in step with pyproject.toml."""

import tomllib

import yaml
from packaging.requirements import Requirement


def test_conda_env_matches_pyproject(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    wanted = {Requirement(d).name: str(Requirement(d).specifier) for d in project["dependencies"]}
    env = yaml.safe_load((repo / "envs" / "didi.yaml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pinned = {Requirement(d).name: str(Requirement(d).specifier) for d in pip_block if not d.startswith("-")}
    assert pinned == wanted
    assert "-e ..[wandb]" in pip_block, "the env must install the didi package itself, with the wandb extra"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    minimum = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))



def test_license_and_setup_extras(repo):
    """An SPDX license string with the LICENSE file beside it, and `make setup` installing the extras the design
    names (wandb) and the test tools."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (repo / "LICENSE").read_text().startswith("MIT License")
    assert "wandb" in project["optional-dependencies"]
    assert "pip install --quiet -e '.[dev,wandb]'" in (repo / "Makefile").read_text()
