"""Images on the one loop: a ViT classifier (``vit``) and a class-conditional DiT (``dit``)
trained at one canvas side and evaluated at several (RPE-2D's resolution generalization;
docs/images.md).

A *size* is the canvas side S (the patch grid is S/p x S/p). Training always uses
``max_train_length`` = the training side; evaluation scores every side of
``options.eval_sides``; only the training side counts as in-distribution (smaller sides are
unseen too). Positions are (B, N, 2) grid positions (y, x): contiguous for plain runs (or, with
``options.pi``, position interpolation at larger grids), and for randomized runs sorted draws
from [0, L) per axis (``randpos.positions.grid``), one draw per sample when
``positions.per_sequence``; evaluation uses ``positions.eval`` (random | contiguous | spread),
recorded with every result. One position draw per sample serves the whole sampling trajectory.

Streams: ``data`` (which images, crops, shifts), ``positions``, ``noise`` (the DiT's noise,
times and dropped labels). Evaluation data depend only on (eval_seed, S).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from randpos.core.fields import ConfigError, check_choice
from randpos.core.files import atomic_write_bytes
from randpos.core.seeding import make_generator
from randpos.encodings import get_encoding
from randpos.encodings.base import check_position_dims
from randpos.images.data import (
    CANVAS_MODES,
    DATASETS,
    DIGIT_SIDE,
    IDENTITY_CROP,
    fixed_eval_set,
    num_classes,
    random_resize_crop,
    sample_images,
)
from randpos.images.figures import sample_rows
from randpos.images.flow import euler_sample, interpolate
from randpos.images.metrics import sample_metrics, train_feature_net
from randpos.images.models import ATTN_LOGIT_SCALES, DiT, VisionConfig, ViT
from randpos.positions import sample_grid_positions
from randpos.workloads.base import Batch, Models, Workload
from randpos.workloads.registry import register_workload

AUGMENTS = ("none", "crop")
_VISION = VisionConfig()  # the image models' architecture defaults, written once (VisionConfig)


@dataclass
class VisionOptions:
    """The image workloads' own fields (``options.NAME``)."""

    dataset: str = "digits"  # digits (sklearn's bundled 8x8) | shapes (procedural)
    canvas: str = "resize"  # resize the digit to S x S | paste it at a random place
    eval_sides: str = "8,12,16,24,32"  # canvas sides S evaluated (comma-separated)
    patch: int = 2
    augment: str = "none"  # none | crop (random resize-and-crop, RPE-2D)
    crop_max_scale: float = 2.0
    micro_cond: bool = False  # dit: the crop box as a conditioning vector (identity at eval)
    pi: bool = False  # plain runs: position interpolation at grids larger than trained
    attn_logit_scale: str = "none"  # none | log_ratio (log N / log N_train at larger grids)
    eval_count: int = 360  # evaluation images per side (digits: the 360 test images)
    # dit only
    class_dropout: float = 0.1  # labels replaced by the null class (classifier-free guidance)
    eval_samples: int = 200  # generated samples per side (class-balanced)
    sample_steps: int = 32  # Euler steps
    cfg_scale: float = 1.5  # 1: no guidance
    timestep_shift: bool = False  # sampling grid shifted by S / S_train (SD3-style)
    feature_steps: int = 600  # training steps of the per-side feature network
    feature_cache: str = ""  # where the feature networks are cached ("": ~/.cache/randpos)


def _sides(text: str) -> tuple[int, ...]:
    try:
        sides = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        sides = ()
    return sides


class VisionWorkload(Workload):
    """What the ViT and the DiT share: data, grid positions, validation, sizes."""

    options = VisionOptions
    # The image models' architecture (VisionConfig's defaults: 4 layers, 4 heads, L = 16 per
    # axis, which covers the largest evaluated grid, 32 / patch 2) with rope-vit's axial RoPE
    # (theta 100) on 16 x 16 canvases; chosen to fit a 2-core CPU (about 4 steps per second on
    # one thread; docs/images.md).
    defaults = {
        "pe": "rope2d_axial",
        "pe_options": {"theta": 100.0},
        "positions": {"max_position": _VISION.max_position, "per_sequence": True},
        "steps": 1500,
        "batch_size": 64,
        "max_train_length": 16,
        "eval_max_length": 32,
        "num_layers": _VISION.depth,
        "num_heads": _VISION.num_heads,
        "dropout": 0.0,  # the image models have none
        "learning_rate": 5.0e-4,
        "checkpoint_every": 250,
    }
    size_name = "resolution"
    streams = ("data", "positions", "noise")
    dynamic_axes = {"images": (2, 3), "positions": (1,), "noise": (2, 3)}

    def __init__(self, config) -> None:
        super().__init__(config)
        self.sides = _sides(self.opts.eval_sides)
        self.num_classes = num_classes(self.opts.dataset)

    # ----------------------------------------------------------------- configuration
    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        opts = cls.parse_options(config.options)
        check_choice("options.dataset", opts.dataset, DATASETS)
        check_choice("options.canvas", opts.canvas, CANVAS_MODES)
        check_choice("options.augment", opts.augment, AUGMENTS)
        check_choice("options.attn_logit_scale", opts.attn_logit_scale, ATTN_LOGIT_SCALES)
        try:
            encoding = get_encoding(config.pe)
            check_position_dims(encoding, 2)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        sides = _sides(opts.eval_sides)
        if not sides or min(sides) <= 0:
            raise ConfigError(
                f"options.eval_sides={opts.eval_sides!r}: must be comma-separated positive sides"
            )
        p = opts.patch
        if p <= 0:
            raise ConfigError(f"options.patch={p}: must be a positive integer")
        for name, side in [("max_train_length", config.max_train_length)] + [
            ("options.eval_sides", s) for s in sides
        ]:
            if side % p:
                raise ConfigError(
                    f"{name}: canvas side {side} is not divisible by options.patch={p}"
                )
            if opts.canvas == "paste" and side < 8:
                raise ConfigError(f"{name}: canvas side {side} < 8 cannot hold a pasted digit")
        largest, L = max(sides) // p, config.positions.max_position
        if largest > L:
            raise ConfigError(
                f"positions.max_position (L={L}) must cover the largest evaluated grid side "
                f"({max(sides)}/{p} = {largest} patches); raise max_position"
            )
        if config.dropout != 0.0:
            raise ConfigError(
                f"dropout={config.dropout}: the image models have no dropout; set dropout=0"
            )
        if config.causal:
            raise ConfigError("causal=true: the image models attend bidirectionally")
        if config.positions.distances:
            raise ConfigError(
                "positions.reading 'distances' is the 1D reading of relative/ALiBi; images take "
                "the positions reading (samplers random, float or pose)"
            )
        needs_float = opts.pi or config.positions.sampler == "float"
        if needs_float and not encoding.float_positions:
            raise ConfigError(
                f"pe {config.pe!r} cannot take non-integer positions (options.pi or "
                "positions.sampler float need them)"
            )
        if opts.pi and config.randomized:
            raise ConfigError("options.pi applies to plain runs: set randomized=false")
        if opts.micro_cond and opts.augment != "crop":
            raise ConfigError("options.micro_cond needs options.augment=crop (the crop box)")
        for name in ("eval_count", "eval_samples", "sample_steps", "feature_steps"):
            if getattr(opts, name) <= 0:
                raise ConfigError(f"options.{name}={getattr(opts, name)}: must be positive")
        if not 0.0 <= opts.class_dropout < 1.0:
            raise ConfigError(f"options.class_dropout={opts.class_dropout}: must be in [0, 1)")
        if opts.crop_max_scale < 1.0:
            raise ConfigError(f"options.crop_max_scale={opts.crop_max_scale}: must be >= 1")
        try:
            cls.vision_config(config, opts, 10).check()
        except ValueError as exc:
            raise ConfigError(str(exc).replace("VisionConfig.", "")) from None

    @classmethod
    def vision_config(cls, config, opts, num_classes: int):
        grid = config.max_train_length // opts.patch
        pe_options = dict(config.pe_options)
        if pe_options.get("scaling", "none") != "none":
            # the frequency transforms extend from the training grid
            pe_options.setdefault("original_max_position_embeddings", grid)
        return VisionConfig(
            channels=1,
            patch=opts.patch,
            width=config.width,
            depth=config.num_layers,
            num_heads=config.num_heads,
            ff_ratio=max(1, config.ff_width // config.width),
            num_classes=num_classes,
            pe=config.pe,
            max_position=config.positions.max_position,
            pe_options=pe_options,
            attn_logit_scale=opts.attn_logit_scale,
            train_tokens=grid * grid,
            attention=config.attention,
            cond_dim=4 if getattr(opts, "micro_cond", False) and cls.name == "dit" else 0,
        )

    def model_config(self):
        return self.vision_config(self.config, self.opts, self.num_classes)

    # ----------------------------------------------------------------- sizes and positions
    def next_size(self, curriculum: torch.Generator) -> int:
        return self.config.max_train_length

    def eval_sizes(self) -> list[int]:
        return list(self.sides)

    def sizes_up_to(self, largest: int) -> list[int]:
        return [s for s in self.sides if s <= largest]

    def trained_sizes(self) -> tuple[int, ...]:
        return (self.config.max_train_length,)

    def eval_mode(self) -> str:
        if self.config.randomized:
            return self.config.positions.eval
        return "interpolate" if self.opts.pi else "contiguous"

    def positions(self, batch: int, side: int, mode: str, generator, device) -> torch.Tensor:
        """Grid positions (B, N, 2) for canvases of ``side``: the training rule for
        ``mode="random"`` (contiguous for plain runs), else the evaluation mode."""
        cfg = self.config
        grid = side // self.opts.patch
        if not cfg.randomized:
            mode = "interpolate" if (self.opts.pi and mode != "train") else "contiguous"
        elif mode == "train":
            mode = "random"
        return sample_grid_positions(
            mode,
            batch,
            grid,
            grid,
            cfg.positions.max_position,
            generator,
            sampler=cfg.positions.sampler,
            per_sample=cfg.positions.per_sequence,
            train_side=cfg.max_train_length // self.opts.patch,
            device=device,
        )

    def eval_positions(self, batch: int, side: int, mode: str, device) -> torch.Tensor:
        g = make_generator(self.config.eval_seed, f"vision/positions/{side}")
        return self.positions(batch, side, mode, g, device)

    # ----------------------------------------------------------------- data
    def training_images(self, size: int, generators) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(images (B, 1, S, S) in [0, 1], labels (B,), crop box (B, 4) or None)."""

        opts = self.opts
        images, labels = sample_images(
            opts.dataset,
            "train",
            self.config.batch_size,
            size,
            generators["data"],
            mode=opts.canvas,
            split_seed=self.config.eval_seed,
        )
        crop = None
        if opts.augment == "crop":
            images, crop = random_resize_crop(images, generators["data"], opts.crop_max_scale)
        return images, labels, crop

    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``labels`` with each replaced by the null class (``num_classes``) with probability
        ``options.class_dropout`` (classifier-free guidance), one draw per label."""
        B = len(labels)
        drop = torch.rand(B, generator=generator, device=generator.device) < self.opts.class_dropout
        return torch.where(drop.cpu(), torch.full_like(labels, self.num_classes), labels)

    def eval_images(self, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        return fixed_eval_set(self.opts.dataset, side, self.opts.eval_count, self.config.eval_seed)

    def summary_fields(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "workload": self.name,
            "pe": cfg.pe,
            "randomized": cfg.randomized,
            "max_position": cfg.positions.max_position,
            "randomize": cfg.positions.legacy()["randomize"],
            "eval_positions": self.eval_mode(),
            "dataset": self.opts.dataset,
            "train_side": cfg.max_train_length,
            "metric": self.metric,
        }


@register_workload("vit")
class ViTWorkload(VisionWorkload):
    """Classification of canvases with a ViT; the metric is accuracy per side."""

    metric = "accuracy"

    def build_model(self, generator: torch.Generator):
        return ViT(self.model_config(), generator=generator)

    def draw_batch(self, model, size, generators, device) -> Batch:
        images, labels, _ = self.training_images(size, generators)
        positions = self.positions(len(labels), size, "train", generators["positions"], device)
        return {"images": images.to(device), "labels": labels.to(device), "positions": positions}

    def loss(self, model, batch: Batch):
        logits = model(batch["images"], batch["positions"], validate=False)
        return F.cross_entropy(logits, batch["labels"]), logits

    def train_metric(self, aux, batch: Batch) -> torch.Tensor:
        return (aux.argmax(-1) == batch["labels"]).float().mean(-1)

    def evaluate_size(self, models: Models, copies: int, size: int, *, mode: str, device):
        images, labels = self.eval_images(size)
        positions = self.eval_positions(len(labels), size, mode, device)
        images, labels = images.to(device), labels.to(device)
        correct = torch.zeros(copies, device=device)
        loss = torch.zeros(copies, device=device)
        for lo in range(0, len(labels), 128):  # bounded attention memory at large grids
            hi = min(lo + 128, len(labels))
            logits = models(images[lo:hi], positions[lo:hi], validate=False)  # (K, b, C)
            correct += (logits.argmax(-1) == labels[lo:hi]).float().sum(-1)
            target = labels[lo:hi].expand(copies, -1)
            loss += (
                F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
                .view(copies, -1)
                .sum(-1)
            )
        n = len(labels)
        return [
            {"accuracy": float(c) / n, "loss": float(v) / n}
            for c, v in zip(correct.tolist(), loss.tolist(), strict=True)
        ]


#: the fixed noise levels of the denoising-loss metric
DENOISE_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


@register_workload("dit")
class DiTWorkload(VisionWorkload):
    """A class-conditional DiT with the flow-matching loss; per side: the conditional
    accuracy of generated samples (the metric), their Fréchet / KID distances and pixel
    statistics against real canvases, and the denoising loss on a fixed grid of noise levels.
    """

    metric = "sample_accuracy"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.samples: dict[int, list[torch.Tensor]] = {}  # side -> per-member sample grids

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        small = [s for s in _sides(cls.parse_options(config.options).eval_sides) if s < DIGIT_SIDE]
        if small:
            raise ConfigError(
                f"options.eval_sides: side {small[0]} < {DIGIT_SIDE}: the sample metrics' "
                "feature network needs canvases of at least 8 x 8"
            )

    def build_model(self, generator: torch.Generator):
        return DiT(self.model_config(), generator=generator)

    def draw_batch(self, model, size, generators, device) -> Batch:
        images, labels, crop = self.training_images(size, generators)
        B = len(labels)
        g = generators["noise"]
        noise = torch.randn(images.shape, generator=g, device=g.device)
        t = torch.rand(B, generator=g, device=g.device)
        labels = self.drop_labels(labels, g)
        batch = {
            "images": (images * 2 - 1).to(device),  # data in [-1, 1]
            "labels": labels.to(device),
            "positions": self.positions(B, size, "train", generators["positions"], device),
            "noise": noise.to(device),
            "t": t.to(device),
        }
        if self.opts.micro_cond:
            batch["cond"] = crop.to(device)
        return batch

    def loss(self, model, batch: Batch):
        xt, target = interpolate(batch["images"], batch["noise"], batch["t"])
        v = model(
            xt, batch["t"], batch["labels"], batch["positions"], batch.get("cond"), validate=False
        )
        loss = F.mse_loss(v, target)
        return loss, loss.detach().reshape(1)  # no training metric (NaN): the loss is logged

    def feature_net(self, side: int):
        """The feature network that scores samples at canvas side ``side``, trained once on real
        canvases and cached on disk (``options.feature_cache``, default
        ``~/.cache/randpos/vision``)."""
        cache = self.opts.feature_cache or str(Path.home() / ".cache" / "randpos" / "vision")
        return _feature_net(
            self.opts.dataset,
            side,
            self.config.eval_seed,
            self.opts.feature_steps,
            cache,
            train_feature_net,
        )

    def score_samples(
        self, images: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, size: int
    ) -> dict[str, float]:
        """:func:`randpos.images.metrics.sample_metrics` of generated ``images`` against
        ``real`` with this side's feature network and fixed KID subsets; the accuracy is named
        ``sample_accuracy``."""

        kid_g = make_generator(self.config.eval_seed, f"vision/kid/{size}")
        metrics = sample_metrics(images, labels, real, self.feature_net(size), generator=kid_g)
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["sample_accuracy"] = metrics.pop("accuracy")
        return metrics

    def identity_cond(self, batch: int, device) -> torch.Tensor | None:
        """The micro-conditioning of an uncropped canvas for ``batch`` samples, (batch, 4), or None
        when the model has none."""
        if not self.opts.micro_cond:
            return None
        return torch.tensor(IDENTITY_CROP, device=device).expand(batch, 4)

    def evaluate_size(self, models: Models, copies: int, size: int, *, mode: str, device):
        opts = self.opts
        real, labels = self.eval_images(size)
        x1 = (real * 2 - 1).to(device)
        y = labels.to(device)
        positions = self.eval_positions(len(y), size, mode, device)
        cond = self.identity_cond(len(y), device)
        results: list[dict[str, float]] = [{} for _ in range(copies)]
        # denoising loss at fixed noise levels, the same noise for every member
        g = make_generator(self.config.eval_seed, f"vision/denoise/{size}")
        total = torch.zeros(copies, device=device)
        for t_value in DENOISE_TIMES:
            x0 = torch.randn(x1.shape, generator=g).to(device)
            t = torch.full((len(y),), t_value, device=device)
            xt = t_value * x1 + (1 - t_value) * x0
            errors = torch.zeros(copies, device=device)
            for lo in range(0, len(y), 128):
                hi = min(lo + 128, len(y))
                v = models(
                    xt[lo:hi],
                    t[lo:hi],
                    y[lo:hi],
                    positions[lo:hi],
                    None if cond is None else cond[lo:hi],
                    validate=False,
                )
                errors += ((v - (x1 - x0)[lo:hi]) ** 2).flatten(2).mean(-1).sum(-1)  # (K,)
            errors /= len(y)
            total += errors / len(DENOISE_TIMES)
            for i in range(copies):
                results[i][f"denoise_t{t_value:g}"] = float(errors[i])
        for i in range(copies):
            results[i]["denoise"] = float(total[i])
        # generation: class-balanced labels, one noise and one position draw per sample
        n = opts.eval_samples
        gen_labels = torch.arange(n) % self.num_classes
        g = make_generator(self.config.eval_seed, f"vision/samples/{size}")
        noise = torch.randn(n, 1, size, size, generator=g).to(device)
        g_positions = make_generator(self.config.eval_seed, f"vision/sample_positions/{size}")
        gen_positions = self.positions(n, size, mode, g_positions, device)
        gen_cond = self.identity_cond(n, device)
        shift = size / self.config.max_train_length if opts.timestep_shift else 1.0
        grids = []
        for i in range(copies):
            samples = euler_sample(
                models.member(i),
                noise,
                gen_labels.to(device),
                gen_positions,
                steps=opts.sample_steps,
                cfg_scale=opts.cfg_scale,
                null_class=self.num_classes,
                cond=gen_cond,
                shift=shift,
            )
            images = ((samples + 1) / 2).clamp(0, 1).cpu()
            results[i].update(self.score_samples(images, gen_labels, real, size))
            grids.append(images[: 2 * self.num_classes])  # two samples per class
        self.samples[size] = grids
        return results

    def write_files(self, out, member: int) -> None:
        """``samples.npz`` (uint8 (20, S, S) per side: two samples per class, in class order)
        and ``samples.png`` (one row per side) of member ``member``'s last evaluation."""

        arrays = {
            f"side_{side}": (grids[member].squeeze(1).numpy() * 255).round().astype(np.uint8)
            for side, grids in sorted(self.samples.items())
            if member < len(grids)
        }
        if not arrays:
            return
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(out / "samples.npz", buffer.getvalue())

        sample_rows(
            arrays,
            out / "samples.png",
            title=f"{self.config.pe}" + (" randomized" if self.config.randomized else ""),
        )


_FEATURE_NETS: dict[tuple, Any] = {}


def _feature_net(dataset, side, seed, steps, cache, train):
    """One trained feature network per (dataset, side, seed, steps) and process; on disk in
    ``cache`` so a sweep's workers train each once."""
    key = (dataset, side, seed, steps)
    if key not in _FEATURE_NETS:
        _FEATURE_NETS[key] = train(dataset, side, seed, steps=steps, cache_dir=cache)
    return _FEATURE_NETS[key]


__all__ = ["DENOISE_TIMES", "DiTWorkload", "VisionOptions", "ViTWorkload"]
