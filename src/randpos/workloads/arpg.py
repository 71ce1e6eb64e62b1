"""ARPG on the one loop (``workload: arpg``): random-order autoregressive generation of binary
patch tokens with position-guided queries (:mod:`randpos.images.arpg`, docs/images.md "ARPG").

Training: canvases of the training side (the image workloads' data, crops and positions), each
2 x 2 patch one of 16 tokens, a fresh order per sample from ``options.train_order`` (``random``:
ARPG; ``raster``: the raster-order autoregressive baseline), teacher forcing with the
cross-entropy of every token, class dropout for guidance.

Per evaluated side S: ``nll_random`` and ``nll_raster`` (teacher-forced negative log-likelihood
in nats per token of the held-out canvases, binarized, in fixed random orders and in raster
order), and for ``options.eval_samples`` class-balanced samples decoded in ``options.gen_order``
with ``options.decode_steps`` steps on ``options.schedule``: the DiT's sample metrics
(``sample_accuracy``, ``fd``, ``kid``, pixel statistics), against the *binarized* held-out
canvases (what the tokens can express), with the same per-side feature networks. One position
draw per sample serves its whole generation.

Streams: ``data`` (images, crops), ``positions``, ``noise`` (orders and dropped labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from randpos.core.fields import ConfigError, check_choice
from randpos.core.seeding import make_generator
from randpos.images.arpg import (
    ARPG,
    ORDERS,
    SCHEDULES,
    binarize,
    check_arpg_config,
    decode_counts,
    detokenize,
    generate,
    generation_orders,
    tokenize,
)
from randpos.workloads.base import Batch, Models
from randpos.workloads.images import DiTWorkload, VisionOptions
from randpos.workloads.registry import register_workload


@dataclass
class ARPGOptions(VisionOptions):
    """The image options plus ARPG's own (``sample_steps``, ``timestep_shift`` and
    ``micro_cond`` are the DiT's and are refused here)."""

    train_order: str = "random"  # random (ARPG) | raster (the raster AR baseline)
    gen_order: str = "random"  # random | raster | spiral
    decode_steps: int = 16  # decoding steps per image (N: one token per step)
    schedule: str = "arccos"  # arccos | linear
    temperature: float = 1.0  # 0: argmax


@register_workload("arpg")
class ARPGWorkload(DiTWorkload):
    """Class-conditional ARPG over binary 2 x 2 patch tokens; the metric is the conditional
    accuracy of generated samples per side."""

    options = ARPGOptions
    dynamic_axes = {"tokens": (1,), "positions": (1,), "orders": (1,)}

    @classmethod
    def validate(cls, config) -> None:
        opts = cls.parse_options(config.options)
        defaults = VisionOptions()
        for name in ("sample_steps", "timestep_shift", "micro_cond"):
            if getattr(opts, name) != getattr(defaults, name):
                raise ConfigError(f"options.{name}: a DiT option; arpg does not take it")
        super().validate(config)
        check_choice("options.train_order", opts.train_order, ("random", "raster"))
        check_choice("options.gen_order", opts.gen_order, ORDERS)
        check_choice("options.schedule", opts.schedule, SCHEDULES)
        if opts.patch != 2:
            raise ConfigError(f"options.patch={opts.patch}: arpg's tokens are 2 x 2 patches")
        if opts.decode_steps <= 0:
            raise ConfigError(f"options.decode_steps={opts.decode_steps}: must be positive")
        if opts.temperature < 0:
            raise ConfigError(f"options.temperature={opts.temperature}: must be >= 0")
        try:
            check_arpg_config(cls.vision_config(config, opts, 10))
        except ValueError as exc:
            raise ConfigError(str(exc).replace("VisionConfig.", "")) from None

    def build_model(self, generator: torch.Generator):
        return ARPG(self.model_config(), generator=generator)

    def draw_batch(self, model, size, generators, device) -> Batch:
        images, labels, _ = self.training_images(size, generators)
        B, grid = len(labels), size // self.opts.patch
        g = generators["noise"]
        orders = generation_orders(self.opts.train_order, B, grid, grid, g, device=g.device)
        labels = self.drop_labels(labels, g)
        return {
            "tokens": tokenize(images, self.opts.patch).to(device),
            "labels": labels.to(device),
            "positions": self.positions(B, size, "train", generators["positions"], device),
            "orders": orders.to(device),
        }

    def loss(self, model, batch: Batch):
        logits = model(
            batch["tokens"], batch["labels"], batch["positions"], batch["orders"], validate=False
        )  # (B, N, V) in generation order
        target = batch["tokens"].gather(1, batch["orders"])
        correct = (logits.detach().argmax(-1) == target).float().mean(-1)  # (B,)
        return F.cross_entropy(logits.flatten(0, 1), target.flatten()), correct

    def train_metric(self, aux, batch: Batch) -> torch.Tensor:
        return aux.mean(-1)  # token accuracy under teacher forcing

    def _nll(self, models: Models, copies, tokens, labels, positions, orders) -> torch.Tensor:
        """Mean teacher-forced NLL (K,) in nats per token."""
        total = torch.zeros(copies, device=tokens.device)
        for lo in range(0, len(labels), 128):
            hi = min(lo + 128, len(labels))
            logits = models(
                tokens[lo:hi], labels[lo:hi], positions[lo:hi], orders[lo:hi], validate=False
            )  # (K, b, N, V)
            target = tokens[lo:hi].gather(1, orders[lo:hi]).expand(copies, -1, -1)
            total += (
                F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none")
                .view(copies, -1)
                .sum(-1)
            )
        return total / tokens.numel()

    def real_canvases(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out canvases of ``size``, binarized (what the tokens express), and labels."""

        real, labels = self.eval_images(size)
        return binarize(real), labels

    def sample_and_score(
        self, model, size: int, *, mode: str, device, decode_steps: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``options.eval_samples`` class-balanced samples (B, 1, S, S) of one ``model`` (an
        ARPG or a trained member) at ``size`` with the evaluation's fixed orders, positions and
        sampling streams, decoded in ``decode_steps`` steps (None: ``options.decode_steps``),
        and their sample metrics against the binarized held-out canvases."""

        opts, cfg = self.opts, self.config
        grid = size // opts.patch
        n = opts.eval_samples
        labels = torch.arange(n) % self.num_classes
        g = make_generator(cfg.eval_seed, f"arpg/gen_orders/{size}")
        orders = generation_orders(opts.gen_order, n, grid, grid, g).to(device)
        g_positions = make_generator(cfg.eval_seed, f"vision/sample_positions/{size}")
        positions = self.positions(n, size, mode, g_positions, device)
        steps = opts.decode_steps if decode_steps is None else decode_steps
        sampled = generate(
            model,
            labels.to(device),
            positions,
            orders,
            decode_counts(grid * grid, steps, opts.schedule),
            null_class=self.num_classes,
            cfg_scale=opts.cfg_scale,
            temperature=opts.temperature,
            generator=make_generator(cfg.eval_seed, f"arpg/sample/{size}"),
        )
        images = detokenize(sampled, grid, grid, opts.patch).cpu()
        return images, self.score_samples(images, labels, self.real_canvases(size)[0], size)

    def evaluate_size(self, models: Models, copies: int, size: int, *, mode: str, device):
        grid = size // self.opts.patch
        real, labels = self.real_canvases(size)
        tokens, y = tokenize(real, self.opts.patch).to(device), labels.to(device)
        positions = self.eval_positions(len(y), size, mode, device)
        results: list[dict[str, float]] = [{} for _ in range(copies)]
        g_orders = make_generator(self.config.eval_seed, f"arpg/orders/{size}")
        for kind in ("random", "raster"):
            orders = generation_orders(kind, len(y), grid, grid, g_orders).to(device)
            nll = self._nll(models, copies, tokens, y, positions, orders)
            for i in range(copies):
                results[i][f"nll_{kind}"] = float(nll[i])
        grids = []
        for i in range(copies):
            images, metrics = self.sample_and_score(
                models.member(i), size, mode=mode, device=device
            )
            results[i].update(metrics)
            grids.append(images[: 2 * self.num_classes])  # two samples per class
        self.samples[size] = grids
        return results

    def summary_fields(self):
        fields = super().summary_fields()
        opts = self.opts
        fields.update(
            train_order=opts.train_order,
            gen_order=opts.gen_order,
            decode_steps=opts.decode_steps,
            schedule=opts.schedule,
        )
        return fields


__all__ = ["ARPGOptions", "ARPGWorkload"]
