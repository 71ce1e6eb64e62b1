"""Training one model and evaluating it per length: ``train(config, out_dir) -> summary``.

Read top to bottom, one step is: the curriculum picks a length n; the task samples a batch; k
blank tokens are appended; positions are drawn (contiguous, or a sorted random subset of
[0, L) when randomized); the model's logits at the k blank positions give an unmasked mean
cross-entropy (SPEC §2.1); gradients are clipped to global norm 1.0; Adam steps.

Robustness: SIGINT/SIGTERM stop at the next step boundary and leave a checkpoint holding the
model, the optimizer and every random stream, so ``resume=True`` continues bit-for-bit; every
file of a run is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import randpos
from randpos.compile import autocast, check_precision
from randpos.config import RUNTIME_FIELDS, ConfigError, TrainConfig
from randpos.evaluation import EvalResult, batch_accuracy, draw_positions, evaluate, model_inputs
from randpos.model import Transformer
from randpos.progress import ProgressReporter
from randpos.seeding import make_generator, resolve_device
from randpos.tasks import get_task

CHECKPOINT_VERSION = 1
STREAMS = ("data", "positions", "dropout")  # generators on the model's device
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"


class TrainingInterrupted(Exception):
    """Raised after a signal stopped training; the checkpoint on disk resumes it."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        where = f"; checkpoint saved to {checkpoint}" if checkpoint else ""
        super().__init__(f"interrupted at step {step}{where}; continue with --resume")
        self.step = step
        self.checkpoint = checkpoint


def run_id(config: TrainConfig) -> str:
    from randpos.store import config_hash

    return config_hash(config.to_dict())


def result_fields(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in RUNTIME_FIELDS}


# ----------------------------------------------------------------------------- file helpers
def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def prepare_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not (resume or overwrite):
        raise ConfigError(
            f"output directory {out_dir} already exists; pass --resume to continue the run in it "
            "or --overwrite to replace it"
        )
    if overwrite and out_dir.exists():
        for name in (
            CHECKPOINT,
            SUMMARY,
            "model.safetensors",
            "per_length.csv",
            "accuracy.png",
            "history.jsonl",
            "config.json",
        ):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # any unreadable or truncated file
        raise ConfigError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path} is not a randpos checkpoint (version {CHECKPOINT_VERSION})")
    return state


# ----------------------------------------------------------------------------- signals
class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
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


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Holds a run's model, optimizer and random streams; steps, checkpoints and evaluates."""

    def __init__(self, config: TrainConfig) -> None:
        config.validate()
        self.config = config
        self.device = resolve_device(config.device)
        try:
            check_precision(config.precision, self.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if config.threads:
            torch.set_num_threads(config.threads)
        self.task = get_task(config.task)
        self.model = Transformer(
            config.model_config(), generator=make_generator(config.seed, "init")
        ).to(self.device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps,
        )
        self.generators = {s: make_generator(config.seed, s, self.device) for s in STREAMS}
        self.curriculum = make_generator(config.curriculum_seed, "curriculum", "cpu")
        self.step = 0
        self.history: list[dict[str, Any]] = []  # one record per log interval
        self.train_seconds = 0.0

    # --------------------------------------------------------------------- one step
    def next_length(self) -> int:
        if self.config.curriculum == "fixed":
            return self.config.max_train_length
        n = torch.randint(1, self.config.max_train_length + 1, (1,), generator=self.curriculum)
        return int(n)

    def train_step(self) -> tuple[float, float, int]:
        cfg = self.config
        n = self.next_length()
        batch = self.task.sample(cfg.batch_size, n, self.generators["data"])
        tokens = model_inputs(batch, self.task)  # (B, T)
        B, T = tokens.shape
        k = batch.targets.shape[1]
        plan = draw_positions(
            cfg, B, T, self.generators["positions"], mode="random", device=self.device
        )
        self.model.train()
        with autocast(self.device, cfg.precision):
            logits = self.model(
                tokens, plan.positions, generator=self.generators["dropout"], **plan.model_kwargs()
            )[:, T - k :]  # (B, k, C): the blank positions
            loss = F.cross_entropy(logits.reshape(B * k, -1), batch.targets.reshape(B * k))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return loss.item(), batch_accuracy(logits.detach(), batch), n

    # --------------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "randpos_version": randpos.__version__,
            "config": self.config.to_dict(),
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generators": {s: g.get_state() for s, g in self.generators.items()},
            "curriculum": self.curriculum.get_state(),
            "history": self.history,
            "train_seconds": self.train_seconds,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        # fields added after a checkpoint was written take their defaults
        saved = result_fields(TrainConfig())
        saved.update({k: v for k, v in state["config"].items() if k not in RUNTIME_FIELDS})
        if saved != result_fields(self.config):
            diff = sorted(k for k in saved if saved.get(k) != result_fields(self.config).get(k))
            raise ConfigError(
                "checkpoint was written with a different config (fields: "
                f"{', '.join(diff)}); resume with the same settings or start a new --out"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for s, g in self.generators.items():
            g.set_state(state["generators"][s])
        self.curriculum.set_state(state["curriculum"])
        self.step = state["step"]
        self.history = list(state["history"])
        self.train_seconds = state["train_seconds"]

    def save_checkpoint(self, path: Path) -> None:
        atomic_torch_save(self.state(), path)

    # --------------------------------------------------------------------- loops
    def fit(
        self,
        *,
        checkpoint: Path | None = None,
        stop: StopFlag | None = None,
        progress: bool = True,
        label: str = "train",
        on_log=None,
    ) -> None:
        """Train up to ``config.steps``; ``on_log(record)`` is called every log interval."""
        cfg = self.config
        stop = stop if stop is not None else StopFlag()
        window: list[tuple[float, float]] = []
        with ProgressReporter(
            label, cfg.steps, self.step, enabled=progress, every=cfg.log_every
        ) as bar:
            while self.step < cfg.steps:
                started = time.perf_counter()
                loss, acc, n = self.train_step()
                self.train_seconds += time.perf_counter() - started
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {self.step}")
                window.append((loss, acc))
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    mean_loss = sum(w[0] for w in window) / len(window)
                    mean_acc = sum(w[1] for w in window) / len(window)
                    self.history.append(
                        {
                            "step": self.step,
                            "loss": mean_loss,
                            "accuracy": mean_acc,
                            "train_seconds": round(self.train_seconds, 3),
                        }
                    )
                    window.clear()
                    bar.update(self.step, f"loss {mean_loss:.4f} acc {mean_acc:.3f} n={n}")
                    if on_log is not None:
                        on_log(self.history[-1])
                if checkpoint is not None and (
                    self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps
                ):
                    self.save_checkpoint(checkpoint)
                if stop:
                    if checkpoint is not None:
                        self.save_checkpoint(checkpoint)
                    raise TrainingInterrupted(self.step, checkpoint)

    def evaluate(
        self, *, progress: bool = True, mode: str | None = None, lengths=None, stop=None
    ) -> EvalResult:
        return evaluate_with_progress(
            self.model,
            self.config,
            self.device,
            progress=progress,
            mode=mode,
            lengths=lengths,
            stop=stop,
            step=self.step,
        )


def evaluate_with_progress(
    model: Transformer,
    config: TrainConfig,
    device: torch.device,
    *,
    progress: bool = True,
    mode: str | None = None,
    lengths=None,
    stop: StopFlag | None = None,
    step: int = 0,
) -> EvalResult:
    """:func:`randpos.evaluation.evaluate` with a progress display and a stop check per length."""
    lengths = list(lengths) if lengths is not None else None
    total = len(lengths) if lengths is not None else config.eval_max_length
    with ProgressReporter("eval", total, enabled=progress, every=max(1, total // 10)) as bar:
        done = [0]

        def on_length(n: int, acc: float) -> None:
            done[0] += 1
            bar.update(done[0], f"length {n}: {acc:.3f}")
            if stop:  # the final checkpoint is on disk; a resume re-runs evaluation
                raise TrainingInterrupted(step, None)

        with autocast(device, config.precision):
            return evaluate(
                model, config, lengths=lengths, mode=mode, device=device, on_length=on_length
            )


# ----------------------------------------------------------------------------- entry point
def train(
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    store=None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    sweep: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate every length 1..M and write the run's files; returns the summary.

    Files in ``out_dir``: config.json, checkpoint.pt (resumable), model.safetensors,
    history.jsonl, per_length.csv, accuracy.png and summary.json (written last: its presence
    means the run is complete). ``store`` (a :class:`randpos.store.ResultsStore`) records the run.
    """
    config.validate()
    if config.compile:
        # the compiled path is the ensemble's (one model is an ensemble of one)
        from randpos.ensemble import train_ensemble

        (outcome,) = train_ensemble(
            [config],
            None if out_dir is None else [out_dir],
            store=store,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            sweep=sweep,
        )
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    rid = run_id(config)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        prepare_out_dir(out, resume=resume, overwrite=overwrite)
        if resume and (out / SUMMARY).exists():
            summary = json.loads((out / SUMMARY).read_text())
            if summary.get("run_id") == rid:
                return summary  # already complete: resuming a finished run is a no-op
            raise ConfigError(f"{out} holds a finished run with a different config")
        atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2))
    trainer = Trainer(config)
    ckpt = out / CHECKPOINT if out is not None else None
    if resume and ckpt is not None and ckpt.exists():
        trainer.load_state(load_checkpoint(ckpt))
    if store is not None:
        store.start_run(rid, config.to_dict(), sweep=sweep, out_dir=str(out) if out else None)
    try:
        stop = StopFlag()
        with stop.installed():
            trainer.fit(checkpoint=ckpt, stop=stop, progress=progress, on_log=heartbeat(store, rid))
            eval_started = time.perf_counter()
            result = trainer.evaluate(progress=progress, stop=stop)
            eval_seconds = time.perf_counter() - eval_started
    except TrainingInterrupted:
        raise
    except BaseException as exc:
        if store is not None and not isinstance(exc, KeyboardInterrupt):
            store.fail_run(rid, f"{type(exc).__name__}: {exc}")
        raise
    summary = make_summary(trainer, result, rid, eval_seconds)
    if out is not None:
        write_run_files(out, trainer, result, summary)
    if store is not None:
        store.finish_run(rid, summary, result.per_length, summary["timings"])
    return summary


def heartbeat(store, rids: str | list[str], every_s: float = 10.0):
    """A log callback telling the store (at most every ``every_s``) that the runs are alive.

    It ignores its arguments, so it serves both the single-run and the ensemble log callbacks.
    """
    if store is None:
        return None
    last = [0.0]

    def beat(*_record) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            store.heartbeat(rids)

    return beat


def make_summary(trainer: Trainer, result: EvalResult, rid: str, eval_seconds: float) -> dict:
    cfg = trainer.config
    last = trainer.history[-1] if trainer.history else {}
    return {
        "run_id": rid,
        "task": cfg.task,
        "pe": cfg.pe,
        "randomized": cfg.randomized,
        "max_position": cfg.max_position,
        "randomize": cfg.randomize,
        "eval_positions": cfg.eval_positions if cfg.randomized else "contiguous",
        "steps": cfg.steps,
        "seed": cfg.seed,
        "learning_rate": cfg.learning_rate,
        "max_train_length": cfg.max_train_length,
        "eval_max_length": cfg.eval_max_length,
        "id_accuracy": result.id_accuracy,
        "ood_accuracy": result.ood_accuracy,
        "final_loss": last.get("loss"),
        "final_train_accuracy": last.get("accuracy"),
        "per_length": {str(n): acc for n, acc in sorted(result.per_length.items())},
        "num_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "timings": {
            "train_seconds": round(trainer.train_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "steps_per_second": round(cfg.steps / trainer.train_seconds, 3)
            if trainer.train_seconds
            else None,
        },
        "device": str(trainer.device),
        "torch_version": torch.__version__,
        "randpos_version": randpos.__version__,
        "config": cfg.to_dict(),
    }


def write_run_files(out: Path, trainer: Trainer, result: EvalResult, summary: dict) -> None:
    from safetensors.torch import save_file

    from randpos.plots import plot_runs

    tmp = out / "model.safetensors.tmp"
    weights = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(weights, str(tmp), metadata={"config": json.dumps(trainer.config.to_dict())})
    os.replace(tmp, out / "model.safetensors")
    atomic_write_text(out / "history.jsonl", "".join(json.dumps(r) + "\n" for r in trainer.history))
    lines = ["length,accuracy\n"] + [f"{n},{a:.6f}\n" for n, a in sorted(result.per_length.items())]
    atomic_write_text(out / "per_length.csv", "".join(lines))
    plot_runs([summary], out / "accuracy.png")
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2))


def load_model(run_dir: str | Path, device: str = "auto") -> tuple[Transformer, TrainConfig]:
    """Load a finished run's model (model.safetensors) or a checkpoint.pt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    run_dir = Path(run_dir)
    weights_path = run_dir / "model.safetensors"
    dev = resolve_device(device)
    if weights_path.exists():
        try:
            with safe_open(str(weights_path), framework="pt") as f:
                meta = f.metadata() or {}
            weights = load_file(str(weights_path))
            config = TrainConfig.from_dict(json.loads(meta["config"]))
        except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as exc:
            raise ConfigError(f"cannot read {weights_path}: {exc}") from None
    elif (run_dir / CHECKPOINT).exists():
        state = load_checkpoint(run_dir / CHECKPOINT)
        config = TrainConfig.from_dict(state["config"])
        weights = state["model"]
    else:
        raise ConfigError(f"no model.safetensors or {CHECKPOINT} in {run_dir}")
    config = config.replace(device=str(dev))
    model = Transformer(config.model_config(), generator=torch.Generator())
    model.load_state_dict(weights)
    return model.to(dev), config


__all__ = [
    "Trainer",
    "TrainConfig",
    "TrainingInterrupted",
    "load_model",
    "run_id",
    "train",
]
