"""Loading a run never runs its code (docs/protocol.md, "Run directories received from others";
randpos.loop.trust).

* a crafted ``checkpoint.pt`` (a pickle whose ``__reduce__`` calls ``os.system``) runs nothing
  under ``randpos evaluate``, ``randpos generate`` or ``randpos train --resume``: one-line error,
  exit status 2, no marker file;
* truncated, foreign and mismatched checkpoints, ``model.safetensors`` files and summaries each
  end in a one-line error;
* a run whose files name a ``module:Class`` workload is refused unless that path is passed with
  ``--trust-workload``, and loads when it is; stores naming one import nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from randpos.cli import app
from randpos.core.fields import ConfigError
from randpos.loop.runs import load_checkpoint
from randpos.loop.training import load_model, train
from randpos.workloads import resolve_config

runner = CliRunner()

# A tiny encoder run; the same arguments resume it.
RUN_ARGS = [
    "--task",
    "parity_check",
    "--pe",
    "none",
    "--steps",
    "2",
    "-M",
    "6",
    "--no-store",
    "--quiet",
    "--device",
    "cpu",
    *("--set", "batch_size=8", "--set", "max_train_length=4", "--set", "eval_batch_size=16"),
    *("--set", "eval_sub_batch_size=8", "--set", "num_layers=1", "--set", "width=16"),
    *("--set", "num_heads=2", "--set", "ff_width=16"),
]
TOY = dict(
    workload="toy_workload:MeanRegression",
    steps=2,
    batch_size=4,
    max_train_length=3,
    eval_max_length=5,
    eval_batch_size=16,
    eval_sub_batch_size=8,
    device="cpu",
)


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles: str) -> None:
    output = result.output.strip()
    assert result.exit_code == 2, result.output
    assert output.startswith("error:") and "\n" not in output, result.output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny encoder run (model.safetensors, checkpoint.pt, summary.json, ...)."""
    out = tmp_path_factory.mktemp("legit") / "run"
    result = invoke("train", "--out", out, *RUN_ARGS)
    assert result.exit_code == 0, result.output
    return out


def checkpoint_only(run_dir: Path, dest: Path) -> Path:
    """A run directory holding only ``run_dir``'s checkpoint: what --resume, evaluate and
    generate then read."""
    dest.mkdir()
    shutil.copy(run_dir / "checkpoint.pt", dest / "checkpoint.pt")
    return dest


# ----------------------------------------------------------------------------- crafted pickles
class SystemCall:
    """Pickles as a call of ``os.system`` that writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"echo pwned > {shlex.quote(self.marker)}",))


class Exec:
    """Pickles as a call of ``exec`` on code that writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def write_crafted(path: Path, marker: Path, kind: str) -> None:
    if kind == "torch.save":  # the zip format, the payload inside a checkpoint-like dict
        torch.save({"version": 1, "config": SystemCall(marker), "step": 0}, path)
    elif kind == "pickle":  # a bare pickle (torch.load reads the legacy format too)
        path.write_bytes(pickle.dumps(SystemCall(marker)))
    else:  # exec instead of os.system
        torch.save({"version": 1, "model": Exec(marker)}, path)


COMMANDS = {
    "evaluate": lambda d: ("evaluate", d, "-M", "10"),
    "generate": lambda d: ("generate", d, "--length", "3"),
    "train --resume": lambda d: ("train", "--out", d, "--resume", *RUN_ARGS),
}


@pytest.mark.parametrize("kind", ["torch.save", "pickle", "exec"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_crafted_checkpoint_runs_nothing(tmp_path, command, kind):
    run = tmp_path / "received"
    run.mkdir()
    marker = tmp_path / "marker"
    write_crafted(run / "checkpoint.pt", marker, kind)
    result = invoke(*COMMANDS[command](run))
    assert_one_line_error(result, "cannot read checkpoint", "refused it before anything in it ran")
    assert not marker.exists()


def test_the_reported_command_runs_nothing(tmp_path):
    """The report, as the user ran it: ``randpos evaluate DIR -M 10`` in a fresh process."""
    run = tmp_path / "received"
    run.mkdir()
    marker = tmp_path / "marker"
    write_crafted(run / "checkpoint.pt", marker, "torch.save")
    proc = subprocess.run(
        [sys.executable, "-m", "randpos.cli", "evaluate", str(run), "-M", "10"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_legitimate_checkpoint_loads_weights_only(run_dir):
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert load_checkpoint(run_dir / "checkpoint.pt").keys() == state.keys()
    assert state["version"] == 1 and state["step"] == 2
    assert all(s.dtype == torch.uint8 for s in state["generators"].values())


# ----------------------------------------------------------------------------- checkpoints
def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)


def _truncated(run_dir: Path, path: Path) -> None:
    data = (run_dir / "checkpoint.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edited(change):
    def write(run_dir: Path, path: Path) -> None:
        state = _state(run_dir)
        change(state)
        torch.save(state, path)

    return write


def _first_weight(state: dict) -> str:
    return next(iter(state["model"]))


BAD_CHECKPOINTS = {
    "text": (lambda r, p: p.write_text("hello, I am no checkpoint"), "cannot read checkpoint"),
    "empty": (lambda r, p: p.write_bytes(b""), "cannot read checkpoint"),
    "truncated": (_truncated, "cannot read checkpoint"),
    "safetensors": (
        lambda r, p: save_file({"x": torch.zeros(2)}, str(p)),
        "cannot read checkpoint",
    ),
    "random dict": (
        lambda r, p: torch.save({"weights": torch.randn(3), "note": "hi"}, p),
        "not a randpos checkpoint: it has no version",
    ),
    "list": (lambda r, p: torch.save([1, 2, 3], p), "not a randpos checkpoint: it holds a list"),
    "version": (_edited(lambda s: s.update(version=7)), "version 7"),
    "no history": (_edited(lambda s: s.pop("history")), "no history"),
    "config text": (_edited(lambda s: s.update(config="encoder")), "config is not a mapping"),
    "config tensor": (
        _edited(lambda s: s["config"].update(seed=torch.zeros(1))),
        "config is not a mapping of plain values",
    ),
    "step": (_edited(lambda s: s.update(step=-1)), "step -1"),
    "model text": (
        _edited(lambda s: s.update(model={"w": "not a tensor"})),
        "model is not a mapping of names to tensors",
    ),
    "generator": (
        _edited(lambda s: s["generators"].update(data=torch.zeros(3))),
        "generators are not",
    ),
    "history": (_edited(lambda s: s.update(history=[{"loss": "low"}])), "history is not"),
    "weight shape": (
        _edited(lambda s: s["model"].update({_first_weight(s): torch.zeros(2, 3)})),
        "do not match the model its config describes (wrong shape or dtype",
    ),
    "weight missing": (
        _edited(lambda s: s["model"].pop(_first_weight(s))),
        "do not match the model its config describes (missing",
    ),
    "weight extra": (
        _edited(lambda s: s["model"].update(extra=torch.zeros(1))),
        "(unexpected extra)",
    ),
}
# Only --resume reads the optimizer and the random streams.
RESUME_ONLY = {
    "adam shape": (
        _edited(lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(1, 1, 1))),
        "optimizer state does not fit the model (parameter 0: exp_avg",
    ),
    "adam groups": (
        _edited(lambda s: s["optimizer"].update(param_groups=[])),
        "optimizer state does not fit the model (expected one parameter group",
    ),
    "stream missing": (
        _edited(lambda s: s["generators"].pop("dropout")),
        "no state of the random stream(s) dropout",
    ),
    "stream size": (
        _edited(lambda s: s["generators"].update(data=torch.zeros(5, dtype=torch.uint8))),
        "a random stream's state does not fit",
    ),
    "other config": (
        _edited(lambda s: s["config"].update(width=32)),
        "was written with a different config (fields: width)",
    ),
}


@pytest.mark.parametrize("name", list(BAD_CHECKPOINTS) + list(RESUME_ONLY))
def test_a_bad_checkpoint_is_one_line_error(run_dir, tmp_path, name):
    write, message = {**BAD_CHECKPOINTS, **RESUME_ONLY}[name]
    out = tmp_path / "run"
    out.mkdir()
    write(run_dir, out / "checkpoint.pt")
    commands = ["train --resume"] if name in RESUME_ONLY else list(COMMANDS)
    for command in commands:
        result = invoke(*COMMANDS[command](out))
        assert_one_line_error(result, message)


def test_a_checkpoint_only_run_still_evaluates_and_resumes(run_dir, tmp_path):
    out = checkpoint_only(run_dir, tmp_path / "ckpt")
    result = invoke("evaluate", out, "-M", "6", "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("train", "--out", out, "--resume", *RUN_ARGS)
    assert result.exit_code == 0, result.output
    a = json.loads((run_dir / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    assert a["per_length"] == b["per_length"] and a["final_loss"] == b["final_loss"]


# ----------------------------------------------------------------------------- model files
def _weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model.safetensors"))


def _meta_config(run_dir: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(run_dir / "model.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["config"])


def _model_file(weights=None, config=None, raw=None):
    def write(run_dir: Path, path: Path) -> None:
        meta = None
        if raw is not None or config is not None:
            text = raw if raw is not None else json.dumps(config(_meta_config(run_dir)))
            meta = {"config": text}
        save_file(weights(run_dir) if weights else _weights(run_dir), str(path), metadata=meta)

    return write


def _truncated_model(run_dir: Path, path: Path) -> None:
    data = (run_dir / "model.safetensors").read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_MODEL_FILES = {
    "text": (lambda r, p: p.write_text("not safetensors"), "cannot read"),
    "truncated": (_truncated_model, "cannot read"),
    "pickle": (lambda r, p: torch.save({"x": torch.zeros(1)}, p), "cannot read"),
    "no config": (_model_file(), "metadata holds no config"),
    "config not JSON": (_model_file(raw="{width: 16"), "not JSON"),
    "config list": (_model_file(raw="[1, 2]"), "its config is not a mapping"),
    "unknown field": (
        _model_file(config=lambda c: {**c, "wdith": 3}),
        "unknown config field(s): 'wdith' (did you mean 'width'?)",
    ),
    "bad options": (
        _model_file(config=lambda c: {**c, "options": 5}),
        "options must be a mapping",
    ),
    "other tensors": (
        _model_file(weights=lambda r: {"x": torch.zeros(2)}, config=lambda c: c),
        "do not match the model its config describes (missing",
    ),
    "other model": (
        _model_file(config=lambda c: {**c, "width": 32, "ff_width": 32}),
        "wrong shape or dtype",
    ),
}


@pytest.mark.parametrize("name", list(BAD_MODEL_FILES))
def test_a_bad_model_file_is_one_line_error(run_dir, tmp_path, name):
    write, message = BAD_MODEL_FILES[name]
    out = tmp_path / "run"
    out.mkdir()
    write(run_dir, out / "model.safetensors")
    for command in ("evaluate", "generate"):
        result = invoke(*COMMANDS[command](out))
        assert_one_line_error(result, "model.safetensors", message)


# ----------------------------------------------------------------------------- summaries
def _summary(change=None, raw=None):
    def write(run_dir: Path, path: Path) -> None:
        if raw is not None:
            path.write_text(raw)
            return
        summary = json.loads((run_dir / "summary.json").read_text())
        change(summary)
        path.write_text(json.dumps(summary))

    return write


BAD_SUMMARIES = {
    "not JSON": (_summary(raw="{"), "cannot read"),
    "empty": (_summary(raw=""), "cannot read"),
    "list": (_summary(raw="[1]"), "not a randpos run summary: it holds a list"),
    "no run_id": (_summary(lambda s: s.pop("run_id")), "no run_id"),
    "per_length": (
        _summary(lambda s: s.update(per_length={"1": "all right"})),
        "per_length is not a mapping of sizes to numbers",
    ),
    "accuracy": (_summary(lambda s: s.update(ood_accuracy=None)), "ood_accuracy is not a number"),
    "timings": (_summary(lambda s: s.update(timings=[])), "timings is not a mapping"),
    "no N": (_summary(lambda s: s.pop("max_train_length")), "max_train_length is not"),
    "config mismatch": (
        _summary(lambda s: s["config"].update(width=99)),
        "its config does not hash to its run_id",
    ),
}


@pytest.mark.parametrize("name", list(BAD_SUMMARIES))
def test_a_bad_summary_is_one_line_error(run_dir, tmp_path, name):
    write, message = BAD_SUMMARIES[name]
    out = checkpoint_only(run_dir, tmp_path / "run")
    write(run_dir, out / "summary.json")
    result = invoke("train", "--out", out, "--resume", *RUN_ARGS)
    assert_one_line_error(result, "summary.json", message)


def test_a_finished_run_resumes_as_a_no_op(run_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    result = invoke("train", "--out", out, "--resume", *RUN_ARGS)
    assert result.exit_code == 0, result.output
    assert "in-distribution" in result.output
    # another finished run in the directory
    result = invoke("train", "--out", out, "--resume", *RUN_ARGS, "--seed", "5")
    assert_one_line_error(result, "holds a finished run with a different config")


def test_a_summary_for_another_run_is_no_finished_sweep_run(run_dir, tmp_path):
    from randpos.sweep.run import _finished_on_disk

    summary = json.loads((run_dir / "summary.json").read_text())
    assert _finished_on_disk(run_dir, summary["run_id"]) == summary
    assert _finished_on_disk(run_dir, "0" * 16) is None
    out = tmp_path / "odd"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({**summary, "per_length": [1, 2]}))
    assert _finished_on_disk(out, summary["run_id"]) is None  # trained again, not recorded


# ----------------------------------------------------------------------------- workloads
EVIL = """
from pathlib import Path
Path({marker!r}).write_text("imported")
from randpos.workloads import Workload
class Evil(Workload):
    pass
"""


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """An importable module that writes a marker when imported; yields (name, marker)."""
    name = f"evil_{tmp_path.name.replace('-', '_')}"
    marker = tmp_path / "imported"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{name}.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    yield f"{name}:Evil", marker
    assert name not in sys.modules
    assert not marker.exists()


@pytest.mark.parametrize("where", ["model.safetensors", "checkpoint.pt"])
def test_a_run_naming_a_module_is_refused(run_dir, tmp_path, evil_module, where):
    workload, _ = evil_module
    out = tmp_path / "run"
    out.mkdir()
    if where == "model.safetensors":
        meta = {"config": json.dumps({**_meta_config(run_dir), "workload": workload})}
        save_file(_weights(run_dir), str(out / where), metadata=meta)
    else:
        state = _state(run_dir)
        state["config"]["workload"] = workload
        torch.save(state, out / where)
    for command in ("evaluate", "generate"):
        result = invoke(*COMMANDS[command](out))
        assert_one_line_error(result, where, repr(workload), f"--trust-workload {workload}")
    # trusting another class is no trust in this one
    result = invoke("evaluate", out, "--trust-workload", "toy_workload:MeanRegression")
    assert_one_line_error(result, f"--trust-workload {workload}")
    with pytest.raises(ConfigError, match="module:Class path"):
        load_model(out, "cpu")
    if where == "checkpoint.pt":  # --resume compares the config; it never builds the run's
        result = invoke("train", "--out", out, "--resume", *RUN_ARGS)
        assert_one_line_error(result, "different config (fields: workload)")


def test_a_trusted_module_workload_loads(tmp_path):
    out = tmp_path / "toy"
    train(resolve_config(TOY), out, progress=False)  # named here: imported
    result = invoke("evaluate", out, "--quiet")
    assert_one_line_error(result, "--trust-workload toy_workload:MeanRegression")
    result = invoke("evaluate", out, "--quiet", "--trust-workload", "toy_workload:MeanRegression")
    assert result.exit_code == 0, result.output
    assert (out / "evaluation_contiguous_M5.json").is_file()
    model, config = load_model(out, "cpu", trust_workload="toy_workload:MeanRegression")
    assert config.workload == "toy_workload:MeanRegression"
    (out / "model.safetensors").unlink()  # the checkpoint alone: the same rule
    result = invoke("evaluate", out, "--quiet")
    assert_one_line_error(result, "checkpoint.pt", "--trust-workload")
    result = invoke("evaluate", out, "--quiet", "--trust-workload", "toy_workload:MeanRegression")
    assert result.exit_code == 0, result.output


def test_a_store_naming_a_module_imports_nothing(tmp_path, evil_module):
    from randpos.loop.identity import config_hash
    from randpos.results.store import ResultsStore

    workload, _ = evil_module
    out = tmp_path / "toy"
    summary = train(resolve_config(TOY), out, progress=False)
    config = {**summary["config"], "workload": workload}
    summary = {**summary, "workload": workload, "config": config, "run_id": config_hash(config)}
    store = ResultsStore(tmp_path / "received.sqlite")
    per_length = {int(n): v for n, v in summary["per_length"].items()}
    store.finish_run(summary["run_id"], summary, per_length)
    result = invoke("report", "--store", tmp_path / "received.sqlite", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert workload in (tmp_path / "r" / "report.md").read_text()


def test_report_samples_refuse_pickled_arrays(tmp_path):
    import pandas as pd

    from randpos.results.report.images import sample_figures

    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "samples.npz", side_8=np.array([SystemCall(marker)], dtype=object))
    frame = pd.DataFrame(
        [{"workload": "dit", "arm": "a", "run_id": "r", "seed": 0, "out_dir": str(run)}]
    )
    assert sample_figures(frame, tmp_path / "figs") == {}
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["torch.save", "pickle", "exec"])
def test_the_crafted_checkpoints_are_live(tmp_path, kind):
    """The payloads above do run when a checkpoint is unpickled unsafely: the tests that find
    no marker test something."""
    marker = tmp_path / "marker"
    write_crafted(tmp_path / "checkpoint.pt", marker, kind)
    with contextlib.suppress(RuntimeError):  # a bare pickle: unpickled, then "no magic number"
        torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert marker.exists()
