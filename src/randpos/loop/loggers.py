"""Metric loggers: where a run's config, training curve and per-size evaluation go.

A run names its loggers in the run-time field ``TrainConfig.logger`` (``--logger`` on the
command line; several comma-separated, or ``--logger`` repeated): ``jsonl`` (the default:
``history.jsonl`` in the run directory), ``tensorboard`` (event files in
``<run dir>/tensorboard/``, written with ``torch.utils.tensorboard``; ``pip install
'randpos[tensorboard]'``) and ``wandb`` (Weights & Biases, files in ``<run dir>/wandb/``;
``pip install 'randpos[wandb]'``; ``WANDB_MODE=offline`` needs no network and no account).
The field is excluded from the run id, like ``device``: logging elsewhere never changes a
result.

Each logger follows the interface of torchtune's metric loggers (``log_config``, ``log_dict``,
``close``) plus ``log_evaluation`` for the per-size table and figure:

* ``log_config(run_id, config)``: the run's id and resolved config, as hyper-parameters;
* ``log_dict(record, step)``: one record of the training curve (``loss``, the workload's metric,
  ``train_seconds``), every ``log_every`` steps;
* ``log_evaluation(evaluation)``: the metric per evaluated size as a table and as the figure
  ``accuracy.png``, and the run's ``id_accuracy`` / ``ood_accuracy``;
* ``close()``.

A run of a sweep is logged in the sweep's group: W&B's ``group``, a ``sweep`` hyper-parameter in
TensorBoard (whose runs of one sweep also sit under one folder, ``<store dir>/sweeps/NAME``).
A resumed run logs its restored curve again (W&B, JSONL) or purges what was logged after its
checkpoint (TensorBoard's ``purge_step``), so every backend shows one unbroken curve.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from randpos.core.fields import ConfigError
from randpos.core.files import atomic_write_text
from randpos.workloads.config import LOGGERS

HISTORY = "history.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # W&B's own folder name, inside the ``dir`` it is given
#: the folders the loggers write in a run directory (``--overwrite`` removes them)
LOG_DIRS = (TENSORBOARD_DIR, WANDB_DIR)
#: the W&B project when ``WANDB_PROJECT`` is not set
WANDB_PROJECT = "randpos"


@dataclass
class Evaluation:
    """What a run's loggers receive once it is evaluated.

    ``per_size`` maps each evaluated size (a sequence length, or an image side) to the
    workload's metric (an accuracy in [0, 1] for the algorithmic tasks); ``metrics`` holds the
    workload's other named metrics per size (may be empty); ``summary`` is the run's
    ``summary.json`` (``id_accuracy``, ``ood_accuracy``, ...); ``figure`` is the run's
    ``accuracy.png``, when it was drawn."""

    size_name: str
    metric: str
    per_size: dict[int, float]
    summary: dict[str, Any]
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    figure: Path | None = None

    def table(self) -> list[list[float]]:
        """The rows ``[size, metric]`` in order of size."""
        return [[n, value] for n, value in sorted(self.per_size.items())]


class MetricLogger:
    """The interface every logger implements (torchtune's ``MetricLoggerInterface``, plus the
    per-size evaluation). ``out`` is the run directory; ``group`` the sweep the run belongs to
    (None outside a sweep); ``history`` the curve restored from a checkpoint (empty for a fresh
    run), which the logger shows again or keeps."""

    def __init__(self, out: Path, group: str | None, history: Sequence[dict[str, Any]]) -> None:
        self.out = Path(out)
        self.group = group
        self.history = list(history)

    def log_config(self, run_id: str, config: dict[str, Any]) -> None:
        """Record the run's id and resolved config as its hyper-parameters."""

    def log_dict(self, record: dict[str, Any], step: int) -> None:
        """Record one point of the training curve (every value a number) at ``step``."""

    def log_evaluation(self, evaluation: Evaluation) -> None:
        """Record the per-size evaluation: a table, a figure and the summary metrics."""

    def close(self) -> None:
        """Flush and release whatever the logger holds (files, a W&B run)."""


class JsonlLogger(MetricLogger):
    """``history.jsonl``: one JSON record per line, appended (and flushed) as training goes,
    so ``tail -f`` follows a run. A resumed run starts the file again from the history in its
    checkpoint, so the finished file holds every record once."""

    def log_config(self, run_id: str, config: dict[str, Any]) -> None:
        atomic_write_text(self.out / HISTORY, "".join(json.dumps(r) + "\n" for r in self.history))

    def log_dict(self, record: dict[str, Any], step: int) -> None:
        with open(self.out / HISTORY, "a") as f:
            f.write(json.dumps(record) + "\n")


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``a.b`` keys with plain values (TensorBoard's hyper-parameters take
    numbers, strings and booleans only)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + ".") if value else {name: "{}"})
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


class TensorBoardLogger(MetricLogger):
    """Event files in ``<run dir>/tensorboard/`` (``tensorboard --logdir runs/``).

    Tags: ``train/loss``, ``train/<metric>``, ``train/train_seconds`` against the step;
    the hyper-parameters (the HParams dashboard: the flattened config, ``run_id`` and
    ``sweep``, with ``eval/id_accuracy`` and ``eval/ood_accuracy`` as its metrics); the text
    ``config`` (JSON); ``eval/<metric>_by_<size>`` against the size; the text
    ``eval/per_<size>`` (a Markdown table) and the image ``eval/figure``."""

    def __init__(self, out: Path, group: str | None, history: Sequence[dict[str, Any]]) -> None:
        super().__init__(out, group, history)
        try:
            # optional: torch's writer needs the tensorboard package
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "logger 'tensorboard' needs the tensorboard package: "
                "pip install 'randpos[tensorboard]' (or pip install tensorboard)"
            ) from None
        step = self.history[-1]["step"] if self.history else None
        # a resumed run drops what it logged after its checkpoint, then logs it again
        self.writer = SummaryWriter(
            str(self.out / TENSORBOARD_DIR), purge_step=None if step is None else step + 1
        )

    def log_config(self, run_id: str, config: dict[str, Any]) -> None:
        # optional: torch's writer needs the tensorboard package
        from torch.utils.tensorboard.summary import hparams

        params = {"run_id": run_id, "sweep": self.group or "", **_flat(config)}
        metrics = {"eval/id_accuracy": 0.0, "eval/ood_accuracy": 0.0}  # names; values at the end
        for summary in hparams(params, metrics):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=2)}\n```")
        self.writer.add_text("run_id", run_id)

    def log_dict(self, record: dict[str, Any], step: int) -> None:
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(f"train/{key}", value, step)

    def log_evaluation(self, evaluation: Evaluation) -> None:
        size, metric = evaluation.size_name, evaluation.metric
        for n, value in evaluation.table():
            self.writer.add_scalar(f"eval/{metric}_by_{size}", value, n)
        for n, named in sorted(evaluation.metrics.items()):
            for name, value in named.items():
                self.writer.add_scalar(f"eval/{name}_by_{size}", value, n)
        rows = [f"| {size} | {metric} |", "| ---: | ---: |"]
        rows += [f"| {n} | {value:.4f} |" for n, value in evaluation.table()]
        self.writer.add_text(f"eval/per_{size}", "\n".join(rows))
        for key in ("id_accuracy", "ood_accuracy"):
            if evaluation.summary.get(key) is not None:
                self.writer.add_scalar(f"eval/{key}", evaluation.summary[key])
        if evaluation.figure is not None and evaluation.figure.is_file():
            # optional heavy dependency: matplotlib reads the PNG the run drew
            import matplotlib.image

            image = matplotlib.image.imread(str(evaluation.figure))  # (H, W, 3|4) in [0, 1]
            self.writer.add_image("eval/figure", image[..., :3], dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbLogger(MetricLogger):
    """A Weights & Biases run in ``<run dir>/wandb/``: named by the run id, grouped by sweep,
    project ``$WANDB_PROJECT`` (default ``randpos``); ``WANDB_MODE=offline`` writes it with no
    network (``wandb sync`` uploads it later).

    Logged: the config with ``run_id`` and ``sweep``; ``train/loss``, ``train/<metric>``,
    ``train/train_seconds`` at each step; the table ``eval/per_<size>``, its line plot
    ``eval/<metric>_by_<size>`` and the image ``eval/figure``; ``id_accuracy`` and
    ``ood_accuracy`` in the run's summary."""

    def __init__(self, out: Path, group: str | None, history: Sequence[dict[str, Any]]) -> None:
        super().__init__(out, group, history)
        try:
            import wandb  # optional: pip install 'randpos[wandb]'
        except ImportError:
            raise ConfigError(
                "logger 'wandb' needs the wandb package: "
                "pip install 'randpos[wandb]' (or pip install wandb)"
            ) from None
        self.wandb = wandb
        self.run = None

    def log_config(self, run_id: str, config: dict[str, Any]) -> None:
        self.run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT,
            name=run_id,
            group=self.group,
            dir=str(self.out),
            config={"run_id": run_id, "sweep": self.group, **config},
            reinit="create_new",  # the members of an ensemble are runs of their own
            # W&B's copy of the console would wrap the progress bar's stream; WANDB_CONSOLE
            # asks for it
            settings=self.wandb.Settings(console=os.environ.get("WANDB_CONSOLE") or "off"),
        )
        for record in self.history:  # a resumed run shows its whole curve
            self.log_dict(record, record["step"])

    def log_dict(self, record: dict[str, Any], step: int) -> None:
        self.run.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)

    def log_evaluation(self, evaluation: Evaluation) -> None:
        wandb, size, metric = self.wandb, evaluation.size_name, evaluation.metric
        table = wandb.Table(columns=[size, metric], data=evaluation.table())
        payload: dict[str, Any] = {
            f"eval/per_{size}": table,
            f"eval/{metric}_by_{size}": wandb.plot.line(
                table, size, metric, title=f"{metric} by {size}"
            ),
        }
        if evaluation.figure is not None and evaluation.figure.is_file():
            payload["eval/figure"] = wandb.Image(str(evaluation.figure))
        self.run.log(payload)
        for key in ("id_accuracy", "ood_accuracy"):
            if evaluation.summary.get(key) is not None:
                self.run.summary[key] = evaluation.summary[key]

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


#: the logger of each name in ``TrainConfig.logger`` (the names: ``randpos.workloads.config``)
LOGGER_CLASSES: dict[str, type[MetricLogger]] = {
    "jsonl": JsonlLogger,
    "tensorboard": TensorBoardLogger,
    "wandb": WandbLogger,
}
assert tuple(LOGGER_CLASSES) == LOGGERS


def logger_names(value: str) -> list[str]:
    """The names in a ``logger`` value (``"jsonl,tensorboard"``), in order, each once."""
    return list(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))


class RunLoggers(MetricLogger):
    """The loggers a run's config names, as one: each call goes to every one of them."""

    def __init__(
        self,
        names: str,
        out: Path,
        group: str | None = None,
        history: Sequence[dict[str, Any]] = (),
    ) -> None:
        super().__init__(out, group, history)
        self.loggers: list[MetricLogger] = []
        try:
            for name in logger_names(names):
                self.loggers.append(LOGGER_CLASSES[name](self.out, group, history))
        except BaseException:
            self.close()
            raise

    def log_config(self, run_id: str, config: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_config(run_id, config)

    def log_dict(self, record: dict[str, Any], step: int) -> None:
        for logger in self.loggers:
            logger.log_dict(record, step)

    def log_evaluation(self, evaluation: Evaluation) -> None:
        for logger in self.loggers:
            logger.log_evaluation(evaluation)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []


def on_log_callback(
    loggers: Sequence[MetricLogger | None],
    also: Callable[..., None] | None = None,
) -> Callable[[int, dict[str, Any]], None]:
    """The trainer's ``on_log(member_index, record)``: the record goes to that member's
    loggers (None: a member without a run directory), then to ``also`` (the store's
    heartbeat)."""

    def on_log(index: int, record: dict[str, Any]) -> None:
        if loggers[index] is not None:
            loggers[index].log_dict(record, record["step"])
        if also is not None:
            also(index, record)

    return on_log


__all__ = [
    "HISTORY",
    "LOGGER_CLASSES",
    "LOG_DIRS",
    "TENSORBOARD_DIR",
    "WANDB_DIR",
    "WANDB_PROJECT",
    "Evaluation",
    "JsonlLogger",
    "MetricLogger",
    "RunLoggers",
    "TensorBoardLogger",
    "WandbLogger",
    "logger_names",
    "on_log_callback",
]
