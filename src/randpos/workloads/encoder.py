"""The paper's workload: the 15 algorithmic tasks on the reference encoder
(docs/reference-system.md §1-§5).

One step of a member: the task samples a batch of length n from the ``data`` stream; k blank
tokens are appended; positions are drawn from the ``positions`` stream (contiguous, or a sorted
random subset of [0, L) when randomized, :func:`randpos.positions.plan_positions`);
dropout draws come from the ``dropout`` stream; the model's logits at the k blank positions give an
unmasked mean cross-entropy (docs/reference-system.md §2.1) and a masked accuracy. Evaluation
scores every length 1..M on sequences and positions that depend only on (eval_seed, n).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from randpos.core.fields import ConfigError, check_choice
from randpos.core.seeding import make_generator
from randpos.encodings import PE_NAMES, build_encoding, check_position_dims, get_encoding
from randpos.model import Transformer
from randpos.positions import PositionPlan, plan_positions
from randpos.tasks import TASK_NAMES, get_task
from randpos.workloads.base import Batch, Models, Workload
from randpos.workloads.evaluation import evaluate_length_batched, model_inputs
from randpos.workloads.registry import register_workload


@register_workload("encoder")
class EncoderWorkload(Workload):
    """Algorithmic tasks, bidirectional encoder, per-length accuracy (the default workload)."""

    # (B, T) tokens/positions, (B, k) targets/mask, (G, 2, T) distances,
    # (layers, B, T) layer positions, (S, B, T, D) dropout keep masks
    dynamic_axes = {
        "tokens": (1,),
        "targets": (1,),
        "mask": (1,),
        "positions": (1,),
        "distances": (2,),
        "layer_positions": (2,),
        "dropout_noise": (2,),
    }

    #: the tasks this workload poses (a subclass may pose others: randpos.workloads.long_context)
    tasks: tuple[str, ...] = TASK_NAMES

    def __init__(self, config) -> None:
        super().__init__(config)
        self.task = get_task(config.task)

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        check_choice("task", config.task, cls.tasks)
        check_choice("pe", config.pe, PE_NAMES)
        encoding = get_encoding(config.pe)
        try:
            check_position_dims(encoding, 1)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if encoding.causal_only and not cls.causal(config):
            raise ConfigError(
                f"pe {config.pe!r} is causal-only: set causal=true (--set causal=true)"
            )
        if config.randomized and not encoding.randomizable:
            raise ConfigError(
                f"pe {config.pe!r} takes its positions from the content and cannot be "
                "randomized: set randomized=false"
            )
        sampler = config.positions.sampler
        if sampler == "float" and not encoding.float_positions:
            raise ConfigError(
                f"positions.sampler 'float' draws non-integer positions, which pe {config.pe!r} "
                "cannot take; choose sampler: random or an encoding that takes them"
            )
        if config.randomized:
            longest, L = config.longest_sequence(), config.positions.max_position
            if longest > L:
                raise ConfigError(
                    f"positions.max_position (L={L}) must cover the longest evaluated "
                    f"sequence ({longest} tokens for {config.task} at length "
                    f"{config.eval_max_length}); raise max_position or lower eval_max_length"
                )
        model = config.model_config()
        model = replace(model, causal=cls.causal(config))
        try:  # the encoding checks its options against the model's shape
            build_encoding(config.pe, model.encoding_shape(), config.pe_options)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @classmethod
    def causal(cls, config) -> bool:
        """Whether the model attends causally (the encoder: the ``causal`` field)."""
        return config.causal

    # ----------------------------------------------------------------- training
    def inputs(self, sample) -> torch.Tensor:
        """The model's input tokens (B, T) for a task batch: the inputs, then k blanks."""
        return model_inputs(sample, self.task)

    def build_model(self, generator: torch.Generator):
        return Transformer(self.config.model_config(), generator=generator)

    def draw_batch(self, model, size, generators, device) -> Batch:
        cfg = self.config
        sample = self.task.sample(cfg.batch_size, size, generators["data"])
        tokens = self.inputs(sample)  # (B, T)
        B, T = tokens.shape
        plan = plan_positions(
            cfg.positions, cfg.num_layers, B, T, generators["positions"], device=device
        )
        batch = {
            "tokens": tokens,
            "targets": sample.targets,
            "mask": sample.mask,
            "positions": plan.positions,
            "distances": plan.distances,
            "layer_positions": plan.layer_positions,
        }
        if cfg.dropout > 0.0:  # keep masks, the bool form of the model's own draws
            batch["dropout_noise"] = model.draw_dropout_noise(B, T, generators["dropout"])
            batch["dropout_noise"] = batch["dropout_noise"] >= cfg.dropout
        return {k: v for k, v in batch.items() if v is not None}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over the blank positions, and their logits (B, k, C)."""
        tokens, targets = batch["tokens"], batch["targets"]
        kwargs = {
            name: batch.get(name) for name in ("distances", "layer_positions", "dropout_noise")
        }
        logits = model(tokens, batch["positions"], validate=False, **kwargs)
        k = targets.shape[-1]
        logits = logits[:, logits.shape[1] - k :]  # (B, k, C): the blank positions
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return loss, logits

    def train_metric(self, aux: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Masked token accuracy of each member's batch (K,), from logits (K, B, k, C)."""
        mask = batch["mask"]  # (K, B, k)
        correct = ((aux.argmax(-1) == batch["targets"]) & mask).sum((1, 2))
        return correct / mask.sum((1, 2)).clamp(min=1)

    # ----------------------------------------------------------------- evaluation
    def check_eval_size(self, size: int) -> None:
        """``ConfigError`` when a plain model's positions do not reach length ``size``."""

        cfg = self.config
        needed, covered = cfg.sequence_length(size), cfg.model_max_position()
        if not cfg.randomized and needed > covered:  # randomized draws stay within [0, L)
            raise ConfigError(
                f"length {size} needs positions up to {needed - 1}, but the model covers "
                f"[0, {covered}) (max_position, fixed at training); evaluate at most length "
                f"{cfg.eval_max_length} or train with a larger eval_max_length"
            )

    def evaluate_size(
        self, models: Models, copies: int, size: int, *, mode: str, device
    ) -> list[float]:
        self.check_eval_size(size)

        def forward(tokens: torch.Tensor, plan: PositionPlan) -> torch.Tensor:
            return models(tokens, plan.positions, validate=False, **plan.model_kwargs())

        return evaluate_length_batched(
            forward, copies, self.config, self.task, size, mode=mode, device=device
        )

    def place_generated(
        self, plan: PositionPlan, k: int, generator: torch.Generator
    ) -> PositionPlan:
        """The evaluation plan of a whole sequence whose k outputs are generated: the encoder
        answers in one pass at the plan's own positions (the decoder places its tokens)."""
        return plan

    def examples(self, model, size: int, count: int, seed: int) -> list[dict[str, Any]]:
        """Fresh examples of the task at length ``size``: the task's own batch, positions of
        the evaluation mode, the answer from :meth:`predict` (the decoder's placed by
        :meth:`place_generated`)."""
        self.check_eval_size(size)
        cfg = self.config
        T = cfg.sequence_length(size)
        if cfg.randomized and T > cfg.positions.max_position:
            raise ConfigError(
                f"length {size} needs {T} positions, more than the position range L="
                f"{cfg.positions.max_position} the model was trained on; choose a shorter --length"
            )
        dev = next(model.parameters()).device
        sample = self.task.sample(count, size, make_generator(seed, "generate/data", dev))
        positions = make_generator(seed, "generate/positions", dev)
        plan = plan_positions(
            cfg.positions, cfg.num_layers, count, T, positions, mode=self.eval_mode(), device=dev
        )
        plan = self.place_generated(plan, sample.targets.shape[1], positions)
        outputs = self.predict(model, sample, plan)
        correct = (outputs == sample.targets) & sample.mask
        return [
            {
                "input": sample.inputs[i].tolist(),
                "target": sample.targets[i].tolist(),
                "output": outputs[i].tolist(),
                "positions": plan.positions[min(i, plan.positions.shape[0] - 1)].tolist(),
                "correct": int(correct[i].sum()),
                "counted": int(sample.mask[i].sum()),
            }
            for i in range(count)
        ]

    def predict(self, model, sample, plan: PositionPlan) -> torch.Tensor:
        """The model's output symbols (B, k) for a task batch, ``model`` in eval mode: the
        argmax at the k blanks (``randpos generate``)."""
        tokens = self.inputs(sample)
        logits = model(tokens, plan.positions, **plan.model_kwargs())
        return logits[:, -sample.targets.shape[1] :].argmax(-1)

    def eval_mode(self) -> str:
        return self.config.positions.eval_mode

    # ----------------------------------------------------------------- reporting
    def summary_fields(self) -> dict[str, Any]:
        return task_summary(self.config, self.eval_mode())


def task_summary(config, eval_mode: str) -> dict[str, Any]:
    """The summary's leading fields of a task run (task, encoding, positions), as every earlier
    run wrote them."""
    flat = config.positions.legacy()
    return {
        "task": config.task,
        "pe": config.pe,
        "randomized": config.randomized,
        "max_position": flat["max_position"],
        "randomize": flat["randomize"],
        "eval_positions": eval_mode,
    }


__all__ = ["EncoderWorkload", "task_summary"]
