"""The command line end to end on a tiny budget, its errors, and signal handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from randpos.cli import app

runner = CliRunner()

TINY_SETS = [
    "--set",
    "batch_size=8",
    "--set",
    "max_train_length=4",
    "--set",
    "eval_batch_size=16",
    "--set",
    "eval_sub_batch_size=8",
    "--set",
    "num_layers=1",
    "--set",
    "width=16",
    "--set",
    "num_heads=2",
    "--set",
    "ff_width=16",
    "--device",
    "cpu",
]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_list_shows_every_task_and_encoding():
    from randpos.encodings import PE_NAMES
    from randpos.tasks import TASK_NAMES

    result = invoke("list")
    assert result.exit_code == 0, result.output
    for name in (*TASK_NAMES, *PE_NAMES):
        assert name in result.output


def test_train_then_evaluate(tmp_path):
    out = tmp_path / "run"
    store = tmp_path / "store.sqlite"
    result = invoke(
        "train",
        "--task",
        "parity_check",
        "--pe",
        "rope",
        "--randomized",
        "-L",
        "32",
        "--steps",
        "3",
        "--seed",
        "4",
        "-M",
        "7",
        "--out",
        str(out),
        "--store",
        str(store),
        "--quiet",
        *TINY_SETS,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "parity_check" and summary["pe"] == "rope"
    assert summary["randomized"] is True and summary["steps"] == 3 and summary["seed"] == 4
    assert sorted(int(n) for n in summary["per_length"]) == list(range(1, 8))

    from randpos.results.store import ResultsStore

    assert ResultsStore(store).status(summary["run_id"]) == "done"

    result = invoke("evaluate", str(out), "-M", "9", "--eval-positions", "spread", "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "evaluation_spread_M9.json").read_text())
    assert sorted(int(n) for n in record["per_length"]) == list(range(1, 10))


def test_compare_runs_plain_and_randomized(tmp_path):
    out = tmp_path / "cmp"
    result = invoke(
        "compare",
        "--task",
        "even_pairs",
        "--pe",
        "sincos",
        "--steps",
        "2",
        "-M",
        "6",
        "-L",
        "16",
        "--out",
        str(out),
        "--no-store",
        "--quiet",
        *TINY_SETS,
    )
    assert result.exit_code == 0, result.output
    assert "randomized" in result.output and "unseen" in result.output
    assert (out / "compare-even_pairs-sincos.png").is_file()
    assert len(list(out.glob("*/summary.json"))) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "unknown task 'nope'; valid:"),
        (["--pe", "nope"], "unknown pe 'nope'; valid:"),
        (["--steps", "0"], "steps must be >= 1"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["-M", "3"], "must be greater than max_train_length"),
        (["--set", "nonsense=1"], "unknown config field"),
        (["--config", "no-such-preset"], "neither a file nor a preset"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    result = invoke("train", "--out", str(tmp_path / "r"), "--no-store", *TINY_SETS, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_existing_output_and_unreadable_checkpoint(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "checkpoint.pt").write_text("garbage")
    base = [
        "train",
        "--out",
        str(out),
        "--no-store",
        "--steps",
        "2",
        "-M",
        "6",
        "--quiet",
        *TINY_SETS,
    ]
    result = invoke(*base)
    assert result.exit_code == 2 and "already exists" in result.output
    result = invoke(*base, "--resume")
    assert result.exit_code == 2 and "cannot read checkpoint" in result.output
    result = invoke("evaluate", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "does not exist" in result.output


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "randpos.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kwargs,
    )


def test_sigterm_leaves_a_checkpoint_and_resume_matches(tmp_path: Path):
    args = [
        "train",
        "--task",
        "reverse_string",
        "--pe",
        "none",
        "--steps",
        "150",
        "-M",
        "6",
        "--no-store",
        "--set",
        "log_every=1",
        "--set",
        "checkpoint_every=1000",
        *TINY_SETS,
    ]
    straight = _cli(*args, "--out", str(tmp_path / "a"))
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    proc = _cli(*args, "--out", str(tmp_path / "b"))
    # Wait for a few training steps to be logged, then ask the run to stop.
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[train] 20/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 130, "".join(seen) + rest
    assert "continue with --resume" in rest
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    assert not (tmp_path / "b" / "summary.json").exists()

    resumed = _cli(*args, "--out", str(tmp_path / "b"), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert a["per_length"] == b["per_length"] and a["final_loss"] == b["final_loss"]


@pytest.mark.parametrize("model", ["vit", "dit", "arpg"])
def test_a_workload_named_alone_trains_with_its_own_defaults(model, tmp_path):
    """``--model NAME`` with nothing else set: the workload's defaults (no dropout, 16 x 16
    canvases, a 2D encoding), not the encoder's; only the budget is cut here."""
    small = ["steps=2", "options.eval_sides=8,16", "options.eval_count=10", "checkpoint_every=2"]
    if model != "vit":
        small += ["options.eval_samples=10", "options.feature_steps=2"]
    if model == "dit":
        small += ["options.sample_steps=2"]
    sets = [arg for item in small for arg in ("--set", item)]
    out = tmp_path / "run"
    result = invoke("train", "--model", model, "--pe", "sincos2d" if model != "arpg" else
                    "rope2d_axial", "--out", str(out), "--no-store", "--quiet", "--device", "cpu",
                    *sets)  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["dropout"] == 0.0 and config["max_train_length"] == 16
    assert config["positions"]["max_position"] == 16 and config["positions"]["per_sequence"]
    assert config["num_layers"] == 4 and config["pe_options"] == {"theta": 100.0}


def test_position_and_encoding_options_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "train", "--pe", "rope", "--randomized", "-L", "128", "--set", "positions.eval=spread",
        "--set", "eval_max_length=12", "--set", "steps=3",
        "--set", "pe.theta=500", "--set", "pe.scaling=linear", "--set", "pe.factor=2",
        "--out", str(out), "--no-store", *TINY_SETS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["positions"] == {**config["positions"], "sampler": "random",
                                   "max_position": 128, "eval": "spread"}  # fmt: skip
    assert config["pe_options"] == {"factor": 2.0, "scaling": "linear", "theta": 500.0}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["randomized"] and summary["eval_positions"] == "spread"
    bad = invoke("train", "--pe", "rope", "--set", "pe.tehta=5", "--out", str(tmp_path / "b"))
    assert bad.exit_code == 2 and "did you mean 'theta'" in bad.output
    bad = invoke("train", "--pe", "sincos", "--set", "positions.sampler=sorted",
                 "--out", str(tmp_path / "c"))  # fmt: skip
    assert bad.exit_code == 2 and "unknown positions.sampler 'sorted'" in bad.output
