"""randpos as an installed package: the presets and sweep files are package data (a user's
./configs first), the version is written once and printed by ``--version``, ``python -m
randpos`` is the command, shell completion knows the preset and sweep names. (CI also builds
the wheel and runs it from outside the checkout: .ci/run.)"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import randpos
from randpos.cli import app
from randpos.core.fields import ConfigError
from randpos.sweep.plan import SWEEP_PRESETS, SweepError, find_spec, load_spec, sweep_names
from randpos.workloads.config import PRESETS, find_preset, load_yaml, preset_names

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "randpos"
runner = CliRunner()


def test_presets_and_sweeps_are_package_data_found_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./configs here
    assert {"paper", "quick", "reference_example"} <= set(preset_names())
    assert {"tiny", "small", "paper", "zoo"} <= set(sweep_names())
    quick = find_preset("quick")
    assert quick == PRESETS / "quick.yaml" and load_yaml(quick)["steps"] == 500
    assert find_spec("tiny") == SWEEP_PRESETS / "tiny.yaml"
    assert load_spec("tiny").name == "tiny"
    with pytest.raises(ConfigError, match=r"neither a file nor a preset; presets: (\w+, )*quick"):
        find_preset("quik")
    with pytest.raises(SweepError, match="sweep 'tin' is neither a file nor a preset"):
        find_spec("tin")


def test_a_users_configs_folder_comes_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "sweeps").mkdir(parents=True)
    (tmp_path / "configs" / "quick.yaml").write_text("steps: 7\n")
    (tmp_path / "configs" / "mine.yaml").write_text("steps: 9\n")
    tiny = yaml.safe_load((SWEEP_PRESETS / "tiny.yaml").read_text())
    (tmp_path / "configs" / "sweeps" / "tiny.yaml").write_text(
        yaml.safe_dump({**tiny, "grid": {"task": ["parity_check"], "seed": [0]}})
    )
    assert load_yaml(find_preset("quick")) == {"steps": 7}
    assert load_yaml(find_preset("mine")) == {"steps": 9}
    assert "mine" in preset_names() and preset_names().count("quick") == 1
    assert find_spec("tiny") == Path("configs/sweeps/tiny.yaml")
    dry = runner.invoke(app, ["sweep", "tiny", "--dry-run"])
    assert dry.exit_code == 0 and "sweep tiny: 1 runs" in dry.output
    listed = runner.invoke(app, ["list"])
    assert "mine" in listed.output


def test_every_packaged_yaml_is_declared_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = pyproject["tool"]["setuptools"]["package-data"]
    shipped = sorted(p.relative_to(PACKAGE.parent) for p in PACKAGE.rglob("*.yaml"))
    assert len(shipped) >= 15
    for path in shipped:
        package_dir = path.parent
        while (
            package_dir != Path(".")
            and not (PACKAGE.parent / package_dir / "__init__.py").is_file()
        ):
            package_dir = package_dir.parent
        patterns = declared.get(".".join(package_dir.parts), [])
        inside = path.relative_to(package_dir).as_posix()
        assert any(fnmatch.fnmatch(inside, p) for p in patterns), f"{path} would not ship"


def test_one_version_printed_by_the_command():
    assert importlib.metadata.version("randpos") == randpos.__version__
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["dynamic"] == ["version"]  # not written a second time
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "randpos.__version__"}
    out = runner.invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.strip() == f"randpos {randpos.__version__}"


def test_python_dash_m_randpos_is_the_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    version = subprocess.run([sys.executable, "-m", "randpos", "--version"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert version.returncode == 0 and version.stdout.strip() == f"randpos {randpos.__version__}"


@pytest.mark.parametrize(
    "words, expected",
    [("randpos sweep sm", ["small"]), ("randpos train --config q", ["quick"]),
     ("randpos sweep-st", ["sweep-status"])],
)  # fmt: skip
def test_shell_completion_knows_commands_presets_and_sweeps(words, expected):
    env = {"_RANDPOS_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - 1)}  # fmt: skip
    out = runner.invoke(app, [], prog_name="randpos", env=env)
    assert out.exit_code == 0 and out.output.split() == expected
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="randpos")
    assert "complete -o default -F _randpos_completion randpos" in script.output


def test_metadata_is_complete():
    meta = importlib.metadata.metadata("randpos")
    assert meta["License-Expression"] == "Apache-2.0"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert any(
        c.startswith("Programming Language :: Python :: 3") for c in meta.get_all("Classifier")
    )
    extras = set(meta.get_all("Provides-Extra"))
    assert {"hf", "vision", "ray", "dev", "tensorboard", "wandb", "docs"} <= extras
