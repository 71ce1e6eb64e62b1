"""The workload interface: what differs between the kinds of model that randpos trains.

Everything else — K members stepped as one computation, per-member optimizers and random
streams, clipping, checkpoints, exact resume, run files, the store, sweeps and the report — is
the one loop of :mod:`randpos.loop.trainer` and :mod:`randpos.loop.training`, shared by every
workload.

A workload is built once per trainer from the members' shared config (members differ only in
``seed`` and ``learning_rate``, :func:`randpos.loop.identity.ensemble_key`), so it holds nothing
per-member: every random draw comes from the generators it is handed. Its methods are called
in this order by the loop:

1. :meth:`build_model` once per member, from the member's ``init`` generator;
2. every step, :meth:`next_size` once per member (all members draw the same size: their
   curricula share ``curriculum_seed``), then :meth:`draw_batch` per member from the member's
   own streams; the trainer stacks the members' batches along a leading axis of size K;
3. :meth:`loss` inside the member function (under ``vmap`` or one member at a time, possibly
   compiled), on a single member's batch; then :meth:`train_metric` on the stacked outputs;
4. at the end, :meth:`evaluate_size` for every size of :meth:`eval_sizes`, all members scored
   at once on the same data; :class:`randpos.workloads.evaluation.EvalResult` turns the per-size
   metric into in-distribution (sizes <= N) and unseen (sizes > N) means;
5. :meth:`summary_fields` for the run's summary.

Notation: K = members, B = batch. A *size* is what the curriculum draws and evaluation sweeps:
a sequence length for sequence models, a resolution for image models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from randpos.core.fields import ConfigError, parse_dataclass

if TYPE_CHECKING:
    from randpos.workloads.config import TrainConfig

#: A batch for one member (or, stacked, for K): named tensors; absent inputs are left out.
Batch = dict[str, torch.Tensor]
#: ``models(*args, **kwargs)``: every member's eval-mode model on the same inputs, outputs
#: stacked along a leading member axis (K, ...); ``models.member(i)`` is member i's model
#: alone, called like the module (for inputs that differ between members, e.g. decoding).
Models = Callable[..., torch.Tensor]


class Workload:
    """Base class; a workload overrides the methods below (the defaults fit most of them).

    Class attributes:
      name:         the registry name (``TrainConfig.workload``), set by ``register_workload``;
      options:      a dataclass of the workload's own fields (``TrainConfig.options``), or None;
      defaults:     the workload's own defaults for config fields (e.g. the image models have no
                    dropout), in ``TrainConfig.from_dict`` form: what a config that names the
                    workload and leaves a field unset gets (:func:`resolve_config`);
      size_name:    what a size is called in tables and figures ("length", "resolution");
      metric:       the per-size evaluation metric ("accuracy"; higher is better);
      streams:      the per-member generators on the model's device, besides ``init``
                    (CPU) and the shared ``curriculum`` (CPU);
      dynamic_axes: for compiled execution, the axes of each member batch tensor that vary
                    with the size (marked dynamic, so one graph serves every size).
    """

    name: ClassVar[str] = ""
    options: ClassVar[type | None] = None
    defaults: ClassVar[dict[str, Any]] = {}
    size_name: ClassVar[str] = "length"
    metric: ClassVar[str] = "accuracy"
    streams: ClassVar[tuple[str, ...]] = ("data", "positions", "dropout")
    dynamic_axes: ClassVar[dict[str, tuple[int, ...]]] = {}

    def __init__(self, config: TrainConfig) -> None:
        type(self).validate(config)
        self.config = config
        self.opts = self.parse_options(config.options)

    # ----------------------------------------------------------------- configuration
    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> Any:
        """``options`` as the workload's options dataclass; ``ConfigError`` naming a bad field."""
        if cls.options is None:
            if options:
                raise ConfigError(
                    f"options: workload {cls.name!r} takes none, got {', '.join(sorted(options))}"
                )
            return None
        what = f"option(s) of workload {cls.name!r}"
        return parse_dataclass(cls.options, options, what, prefix="options.")

    @classmethod
    def normalize_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` coerced to their types, without the entries equal to their defaults:
        the stored form, so that spelling a default out does not change a run's id."""
        parsed = cls.parse_options(options)
        if parsed is None:
            return {}
        defaults = cls.options()
        return {
            k: getattr(parsed, k) for k in options if getattr(parsed, k) != getattr(defaults, k)
        }

    @classmethod
    def validate(cls, config: TrainConfig) -> None:
        """Workload-specific checks of ``config`` (``ConfigError`` naming the field)."""
        cls.parse_options(config.options)

    # ----------------------------------------------------------------- training
    def build_model(self, generator: torch.Generator) -> nn.Module:
        """A freshly initialized model, every random draw from ``generator`` (on the CPU)."""
        raise NotImplementedError

    def next_size(self, curriculum: torch.Generator) -> int:
        """The training size of the next step: uniform over 1..N, or N (``curriculum``)."""
        cfg = self.config
        if cfg.curriculum == "fixed":
            return cfg.max_train_length
        return int(torch.randint(1, cfg.max_train_length + 1, (1,), generator=curriculum))

    def draw_batch(
        self,
        model: nn.Module,
        size: int,
        generators: dict[str, torch.Generator],
        device: torch.device,
    ) -> Batch:
        """One member's training batch at ``size``, drawn only from ``generators`` (that
        member's ``streams``). ``model`` is the member's module, for shapes (e.g. how many
        dropout draws a forward makes); the loss must not depend on anything else drawn here.
        """
        raise NotImplementedError

    def loss(self, model: Callable[..., Any], batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One member's scalar training loss and an auxiliary tensor (e.g. the logits that
        :meth:`train_metric` scores). ``model`` is called like the module in training mode;
        it runs under ``vmap`` or compilation, so no data-dependent Python control flow here.
        """
        raise NotImplementedError

    def train_metric(self, aux: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The training metric of each member's batch, (K,), from stacked ``aux`` (K, ...)
        and the stacked batch. Default: nothing measured (NaN)."""
        return torch.full((aux.shape[0],), float("nan"), device=aux.device)

    # ----------------------------------------------------------------- evaluation
    def eval_sizes(self) -> list[int]:
        """The sizes evaluated at the end of a run: 1..M."""
        return list(range(1, self.config.eval_max_length + 1))

    def evaluate_size(
        self, models: Models, copies: int, size: int, *, mode: str, device: torch.device
    ) -> list[float]:
        """The metric of each of ``copies`` models at ``size``, all on the same data (which
        depends only on ``eval_seed`` and ``size``). ``mode`` is the recorded evaluation
        position mode (``TrainConfig.positions.eval``). An entry may instead be a dict of
        named metrics holding :attr:`metric` among them: the others are kept per size in the
        summary (``size_metrics``) and in ``metrics.csv``."""
        raise NotImplementedError

    def sizes_up_to(self, largest: int) -> list[int]:
        """The sizes ``randpos evaluate --eval-max-length M`` scores: 1..M by default."""
        return list(range(1, largest + 1))

    def trained_sizes(self) -> tuple[int, ...] | None:
        """The sizes that count as in-distribution, when not 1..N (None): an image model
        trained at one resolution returns that one, so smaller ones count as unseen too."""
        return None

    def eval_mode(self) -> str:
        """The evaluation position mode recorded with the results."""
        return self.config.positions.eval

    def examples(self, model: nn.Module, size: int, count: int, seed: int) -> list[dict[str, Any]]:
        """``count`` fresh examples at ``size`` with ``model``'s greedy answers (``randpos
        generate``), drawn from ``seed`` alone; ``model`` is in eval mode, under inference mode.
        One dict per example: ``input``, ``target`` and ``output`` (token ids), ``positions``
        (what the model was given), ``correct`` and ``counted`` (answer tokens), and optionally
        ``text`` (the example in words). Default: a workload without generation, a one-line
        error."""
        raise ConfigError(f"workload {self.name!r} has no generation (`randpos generate`)")

    # ----------------------------------------------------------------- reporting
    def write_files(self, out, member: int) -> None:
        """Extra files of member ``member``'s run directory ``out`` after evaluation (the
        DiT's generated samples); none by default."""

    def summary_fields(self) -> dict[str, Any]:
        """Fields that lead the run's summary, after ``run_id`` (what identifies the run)."""
        return {"workload": self.name}


__all__ = ["Batch", "Models", "Workload"]
