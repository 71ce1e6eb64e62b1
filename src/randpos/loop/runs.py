"""A run's directory and its files, shared by every workload: atomic writes, the output
directory rules, checkpoints, the stop flag set by SIGINT/SIGTERM, the summary and the run files.

Every file of a run is written to a temporary name and renamed into place, so an interruption
(even ``kill -9``) never leaves a half-written file; ``summary.json`` is written last, and its
presence means the run finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

import randpos
from randpos.core.fields import ConfigError
from randpos.core.files import atomic_write_text
from randpos.loop.loggers import HISTORY, LOG_DIRS
from randpos.loop.plots import plot_runs
from randpos.loop.trust import check_checkpoint, error_line, unpickling_detail

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
PLOT = "accuracy.png"
RUN_FILES = (
    CHECKPOINT,
    SUMMARY,
    "model.safetensors",
    "per_length.csv",
    "metrics.csv",
    "samples.npz",
    "samples.png",
    PLOT,
    HISTORY,
    "config.json",
)


class TrainingInterrupted(Exception):
    """Raised after a signal stopped training; the checkpoint on disk resumes it."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        where = f"; checkpoint saved to {checkpoint}" if checkpoint else ""
        super().__init__(f"interrupted at step {step}{where}; continue with --resume")
        self.step = step
        self.checkpoint = checkpoint


# ----------------------------------------------------------------------------- file helpers
def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file renamed into place (an interruption never leaves half a
    checkpoint)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def prepare_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Create the run directory. An existing, non-empty one needs ``resume`` (continue in it) or
    ``overwrite`` (remove the run's files and the loggers' folders first); otherwise a one-line
    ``ConfigError``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not (resume or overwrite):
        raise ConfigError(
            f"output directory {out_dir} already exists; pass --resume to continue the run in it "
            "or --overwrite to replace it"
        )
    if overwrite and out_dir.exists():
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        for name in LOG_DIRS:  # an earlier run's TensorBoard events and W&B runs
            shutil.rmtree(out_dir / name, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A run's checkpoint, read without running anything it holds and checked.

    ``torch.load(weights_only=True)`` rebuilds tensors and plain Python data (dicts, lists,
    numbers, strings) only, which is all a checkpoint holds (``randpos.loop.trainer.Member.state``):
    a pickle naming any other callable is refused before it is called. The structure is then
    checked (:func:`randpos.loop.trust.check_checkpoint`); any failure is a one-line
    ``ConfigError``.
    """

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. on the pickle protocol of a foreign file
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"cannot read checkpoint {path}: torch's weights-only loader, which rebuilds "
            f"tensors and plain data alone, refused it before anything in it ran "
            f"({unpickling_detail(exc)})"
        ) from None
    except Exception as exc:  # any unreadable, truncated or foreign file
        raise ConfigError(
            f"cannot read checkpoint {path}: not a torch checkpoint, or truncated "
            f"({error_line(exc)})"
        ) from None
    return check_checkpoint(state, path)


def read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], Any]:
    """``model.safetensors``: its tensors and the config stored in its metadata (parsed JSON,
    not yet checked: :func:`randpos.loop.trust.config_from_file`). One-line ``ConfigError`` for a
    truncated or foreign file."""

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        weights = load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError, ...: unreadable, truncated, foreign
        raise ConfigError(
            f"cannot read {path}: not a safetensors file, or truncated ({error_line(exc)})"
        ) from None
    if "config" not in meta:
        raise ConfigError(f"{path} is not a randpos model file: its metadata holds no config")
    try:
        config = json.loads(meta["config"])
    except ValueError as exc:
        raise ConfigError(f"{path}: the config in its metadata is not JSON ({exc})") from None
    return weights, config


# ----------------------------------------------------------------------------- signals
class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """Handle SIGINT and SIGTERM by setting the flag while the block runs (a second Ctrl-C stops
        at once); the previous handlers come back after it. Outside the main thread it installs
        nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled in the main thread
            return

        def handler(signum, frame):
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            self.signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


# ----------------------------------------------------------------------------- summary, files
def make_summary(trainer, index: int, result, rid: str, eval_seconds: float) -> dict[str, Any]:
    """Member ``index``'s summary: what identifies the run (the workload's fields), the
    protocol, the metrics, timings and the resolved config."""
    member = trainer.members[index]
    cfg = member.config
    last = member.history[-1] if member.history else {}
    metric = trainer.workload.metric
    return {
        "run_id": rid,
        **trainer.workload.summary_fields(),
        "steps": cfg.steps,
        "seed": cfg.seed,
        "learning_rate": cfg.learning_rate,
        "max_train_length": cfg.max_train_length,
        "eval_max_length": cfg.eval_max_length,
        "id_accuracy": result.id_accuracy,
        "ood_accuracy": result.ood_accuracy,
        "final_loss": last.get("loss"),
        f"final_train_{metric}": last.get(metric),
        "per_length": {str(n): acc for n, acc in sorted(result.per_length.items())},
        **(
            {"size_metrics": {str(n): m for n, m in sorted(result.metrics.items())}}
            if result.metrics
            else {}
        ),
        "num_parameters": sum(p.numel() for p in member.model.parameters()),
        "timings": {
            "train_seconds": round(member.train_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "steps_per_second": round(cfg.steps / member.train_seconds, 3)
            if member.train_seconds
            else None,
        },
        "device": str(trainer.device),
        "torch_version": torch.__version__,
        "randpos_version": randpos.__version__,
        "config": cfg.to_dict(),
    }


def write_run_files(out: Path, member, result, summary: dict, workload, index: int = 0) -> None:
    """model.safetensors, per_length.csv (and metrics.csv), accuracy.png, the workload's own
    files, then summary.json; ``history.jsonl`` is the jsonl logger's
    (:mod:`randpos.loop.loggers`)."""

    tmp = out / "model.safetensors.tmp"
    weights = {k: v.detach().cpu().contiguous() for k, v in member.model.state_dict().items()}
    save_file(weights, str(tmp), metadata={"config": json.dumps(member.config.to_dict())})
    os.replace(tmp, out / "model.safetensors")
    lines = [f"{workload.size_name},{workload.metric}\n"]
    lines += [f"{n},{a:.6f}\n" for n, a in sorted(result.per_length.items())]
    atomic_write_text(out / "per_length.csv", "".join(lines))
    if result.metrics:  # one row per size, one column per named metric
        names = sorted({k for m in result.metrics.values() for k in m})
        rows = [",".join([workload.size_name, *names]) + "\n"]
        for n, m in sorted(result.metrics.items()):
            values = (f"{m.get(k, float('nan')):.6g}" for k in names)
            rows.append(",".join([str(n), *values]) + "\n")
        atomic_write_text(out / "metrics.csv", "".join(rows))
    plot_runs([summary], out / PLOT)
    workload.write_files(out, index)
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2))


__all__ = [
    "CHECKPOINT",
    "PLOT",
    "SUMMARY",
    "StopFlag",
    "TrainingInterrupted",
    "atomic_torch_save",
    "load_checkpoint",
    "make_summary",
    "prepare_out_dir",
    "read_model_file",
    "write_run_files",
]
