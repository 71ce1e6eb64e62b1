"""Long context on the causal decoder: the synthetic retrieval suite scored per length
(docs/long-context.md).

The tasks (:mod:`randpos.tasks.long_context`: ``passkey``, ``niah_multikey``,
``variable_tracking``, ``flip_flop``) train on the decoder of :mod:`randpos.workloads.decoder`:

* an *answer* task (a question at the end of the context) is the decoder's sequence
  ``x SEP y_1 .. y_{k-1}``, trained with teacher forcing on the answer and evaluated by greedy
  decoding with the KV cache (the prompt ``x SEP`` in one forward, then one token per step).
  The evaluated sequence's positions are drawn as one sequence of n' + k tokens, as a training
  sequence's, and the generated answer takes the positions drawn for it (the decoder's
  ``decode_positions`` does not apply: a PoSE or random draw may end at L - 1 and leave no room
  after the prompt; for the random sampler the tail of the draw is distributed as the
  decoder's ``random`` placement);
* an *inline* task (``flip_flop``) is its input alone, trained and scored at the positions its
  mask marks (the bit after each read), in one forward.

Training takes the context length N (``max_train_length``; the ``fixed`` curriculum by default).
Evaluation scores the lengths N, 2N, 4N, ... up to M (``eval_max_length``: M = 16 N gives the
1x..16x of the suite), each on ``eval_batch_size`` sequences that depend only on (eval_seed,
length). Per length and member it records (the run's ``size_metrics``):

* ``accuracy``: an answer task's exact match (every answer token right, the whole key, value or
  variable list), an inline task's accuracy over the scored positions (every read);
* ``token_accuracy``: per answer token (inline: the same as ``accuracy``);
* ``sequence_accuracy``: every scored token of a sequence right (answer tasks: ``accuracy``);
* ``depth_<b>``, b = 0..bins-1: ``accuracy`` over the sequences whose asked needle lies in depth
  bin b (the tasks with depth strata: row r is in bin r % bins), for the heat map.

``accuracy`` is the mean over the length's sequences (the sub-batch pooling of the algorithmic
tasks does not apply). The effective length, the heat map and the success rate over seeds are
the report's (:mod:`randpos.results.report.long_context`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from randpos.core.fields import ConfigError
from randpos.core.seeding import make_generator
from randpos.positions import PositionPlan, plan_positions
from randpos.tasks import CONTEXT_TASK_NAMES
from randpos.tasks.long_context import FlipFlop
from randpos.workloads.base import Batch, Models
from randpos.workloads.decoder import DecoderOptions, DecoderWorkload
from randpos.workloads.evaluation import ATTENTION_ELEMENT_BUDGET, evaluation_batch
from randpos.workloads.registry import register_workload


@dataclasses.dataclass
class LongContextOptions(DecoderOptions):
    """The long-context workload's options (``--set options.NAME=VALUE``): the decoder's, plus
    flip_flop's ignore probability."""

    #: flip_flop's probability that an instruction is an ignore (Liu et al.'s p_i)
    ignore_probability: float = 0.8


def doubling_sizes(first: int, largest: int) -> list[int]:
    """first, 2 first, 4 first, ... up to ``largest``."""
    sizes, size = [], first
    while size <= largest:
        sizes.append(size)
        size *= 2
    return sizes


@register_workload("long_context")
class LongContextWorkload(DecoderWorkload):
    """The long-context suite on the causal decoder, scored at N, 2N, ... M."""

    options = LongContextOptions
    tasks = CONTEXT_TASK_NAMES
    defaults = {
        "task": "passkey",
        "curriculum": "fixed",
        "max_train_length": 128,
        "eval_max_length": 2048,  # 16 N
        "eval_batch_size": 100,
        "eval_sub_batch_size": 100,
        "positions": {"max_position": 4096},
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        if self.task.name == FlipFlop.name:
            self.task = FlipFlop(self.opts.ignore_probability)

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        opts = cls.parse_options(config.options)
        if opts.decode_positions != DecoderOptions.decode_positions:
            raise ConfigError(
                f"options.decode_positions={opts.decode_positions!r}: the long_context workload "
                "places the answer at the positions drawn with its context; leave it unset"
            )
        try:
            FlipFlop(opts.ignore_probability)
        except ValueError as exc:
            raise ConfigError(f"options.{exc}") from None

    # ----------------------------------------------------------------- training
    def shared(self, positions: torch.Tensor) -> torch.Tensor:
        """(1, T) when every row of ``positions`` (B, T) is the same draw (contiguous, or one
        draw per batch: ``positions.per_sequence`` false), else the rows: the model broadcasts
        a single row, so a bias computed from positions (FIRE's MLP over every pair, ALiBi) is
        computed once instead of B times. The same numbers."""
        return positions if self.config.positions.per_sequence else positions[:1]

    def draw_batch(self, model, size, generators, device) -> Batch:
        batch = super().draw_batch(model, size, generators, device)
        batch["positions"] = self.shared(batch["positions"])
        return batch

    def inputs(self, sample) -> torch.Tensor:
        """The teacher-forced tokens: an inline task's input, else the decoder's x SEP y."""
        return sample.inputs if self.task.inline else super().inputs(sample)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """An answer task: the decoder's loss. An inline task: the mean cross-entropy over
        the scored positions (``mask``), with the logits (B, T, C)."""
        if not self.task.inline:
            return super().loss(model, batch)
        logits = model(batch["tokens"], batch["positions"], validate=False, **_extras(batch))
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1), reduction="none"
        )
        mask = batch["mask"].reshape(-1).to(ce.dtype)
        return (ce * mask).sum() / mask.sum().clamp(min=1), logits

    # ----------------------------------------------------------------- evaluation
    def eval_sizes(self) -> list[int]:
        """N, 2N, 4N, ... up to M."""
        return doubling_sizes(self.config.max_train_length, self.config.eval_max_length)

    def sizes_up_to(self, largest: int) -> list[int]:
        return doubling_sizes(self.config.max_train_length, largest)

    def evaluate_size(
        self, models: Models, copies: int, size: int, *, mode: str, device
    ) -> list[dict[str, float]]:
        self.check_eval_size(size)
        cfg, task = self.config, self.task
        batch = evaluation_batch(task, size, cfg.eval_seed, cfg.eval_batch_size, device)
        pos_gen = make_generator(cfg.eval_seed, f"eval-positions/{size}", device)
        tokens = self.inputs(batch)  # (E, T)
        E, T = tokens.shape
        k = batch.targets.shape[1]
        chunk = max(1, min(E, ATTENTION_ELEMENT_BUDGET // (cfg.num_heads * T * T)))
        correct = torch.zeros(copies, *batch.targets.shape, dtype=torch.bool, device=device)
        for start in range(0, E, chunk):
            stop = min(E, start + chunk)
            plan = plan_positions(
                cfg.positions, cfg.num_layers, stop - start, T, pos_gen, mode=mode, device=device
            )
            plan = PositionPlan(self.shared(plan.positions))
            if task.inline:
                logits = models(tokens[start:stop], plan.positions, validate=False)  # (K, r, T, C)
            else:
                prompt = tokens[start:stop, : T - k + 1]  # x SEP
                logits = torch.stack(
                    [
                        self.generate(models.member(i), prompt, plan.positions, k)
                        for i in range(copies)
                    ]  # fmt: skip
                )  # (K, r, k, C)
            correct[:, start:stop] = logits.argmax(-1) == batch.targets[start:stop]
        return [self.scores(correct[i], batch.mask) for i in range(copies)]

    def scores(self, correct: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """The metrics of one model at one length from its (E, k) correct tokens and the
        batch's (E, k) mask (see the module docstring)."""
        hits = (correct & mask).sum(-1)  # (E,)
        counted = mask.sum(-1)
        whole = (hits == counted).double()  # every scored token of the sequence right
        tokens = float(hits.sum() / counted.sum().clamp(min=1))
        out = {
            "accuracy": tokens if self.task.inline else float(whole.mean()),
            "token_accuracy": tokens,
            "sequence_accuracy": float(whole.mean()),
        }
        bins = self.task.depth_bins
        if bins > 1:
            where = self.task.depth_bin(whole.shape[0], whole.device)
            for b in range(bins):
                out[f"depth_{b}"] = float(whole[where == b].mean())
        return out

    def place_generated(
        self, plan: PositionPlan, k: int, generator: torch.Generator
    ) -> PositionPlan:
        """The plan as drawn: the answer takes the positions drawn for it with its context."""
        return plan

    def predict(self, model, sample, plan: PositionPlan) -> torch.Tensor:
        """An inline task's argmax at every position (B, T); an answer task's greedy answer."""
        if not self.task.inline:
            return super().predict(model, sample, plan)
        return model(sample.inputs, plan.positions).argmax(-1)

    def summary_fields(self) -> dict:
        return {**super().summary_fields(), "decode_positions": "plan"}


def _extras(batch: Batch) -> dict[str, torch.Tensor | None]:
    return {name: batch.get(name) for name in ("distances", "layer_positions", "dropout_noise")}


__all__ = ["LongContextOptions", "LongContextWorkload", "doubling_sizes"]
