"""Sample-quality metrics that need no pretrained network (docs/images.md, references §D).

Notation: B = generated batch, M = real batch, S = image side, n / m = feature-set sizes,
d = feature dimension. Images are (B, 1, S, S) float32 in [0, 1].

* :class:`FeatureNet`: a small CNN trained per side S on the real images
  (:func:`train_feature_net`, cached); its pooled 64-d features replace Inception's.
* :func:`frechet_distance` ("FD-own", the FID formula) and :func:`kernel_inception_distance`
  ("KID-own", unbiased MMD^2 with the cubic polynomial kernel) on those features.
* Pixel statistics (:func:`pixel_stats`, :func:`radial_spectrum`, :func:`spectrum_distance`): mean
  ink, ink fraction and the number of connected ink components, which catches the duplicated
  strokes typical of positional-encoding extrapolation.
* :func:`sample_metrics`: all of the above for one generated set against one real set.

Randomness is explicit: network initialisation, training batches and KID subsets come from
``torch.Generator``s (derived with :func:`randpos.core.seeding.make_generator`); torch's global RNG
and thread settings are never touched.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from randpos.core.seeding import make_generator
from randpos.images.data import (
    DIGIT_SIDE,
    digit_canvases,
    fixed_eval_set,
    load_digits_split,
    num_classes,
    shape_images,
    shift_augment,
)

# Bump whenever FeatureNet's architecture or train_feature_net's recipe changes: it keys the cache.
FEATURE_NET_VERSION = 1
FEATURE_DIM = 64
TRAIN_BATCH = 128
TRAIN_LR = 5e-3
EVAL_COUNT = 1000  # held-out images for heldout_accuracy (digits: all 360 test images)


def stem_stride_for(side: int) -> int:
    """First-conv stride used by :func:`train_feature_net` at side S.

    Above 16 the stem downsamples by 2 so that one training step costs about what it costs at
    S = 16 (a stride-1 stem at S = 32 is ~4x slower: minutes per net on one CPU core). The 3x3
    stride-2 stem still reads every pixel, and a resized 8x8 digit has no detail finer than it."""
    return 1 if side <= 16 else 2


class _Conv2d(nn.Conv2d):
    """``nn.Conv2d`` constructed as zeros, so construction stays off the global RNG;
    :meth:`FeatureNet.reset_parameters` does the random init from a generator."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class _Linear(nn.Linear):
    reset_parameters = _Conv2d.reset_parameters


class FeatureNet(nn.Module):
    """conv3x3(1->32, stride s) ReLU, conv3x3(32->64, stride 2) ReLU, conv3x3(64->64) ReLU, global
    average pool -> 64-d features -> Linear to the classes. Runs at any side S >= 8.

    Inputs in [0, 1] are centred to [-1, 1] first. Construction draws from ``generator`` only
    (None: a fixed seed-0 generator), with He-normal convolutions and zero biases."""

    def __init__(
        self,
        num_classes: int,
        *,
        stem_stride: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: must be >= 2")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride={stem_stride}: must be 1 or 2")
        self.num_classes = num_classes
        self.stem_stride = stem_stride
        self.conv1 = _Conv2d(1, 32, 3, stride=stem_stride, padding=1)
        self.conv2 = _Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv3 = _Conv2d(64, FEATURE_DIM, 3, padding=1)
        self.head = _Linear(FEATURE_DIM, num_classes)
        # set by train_feature_net: accuracy on fixed_eval_set at the side it was trained for
        self.heldout_accuracy: float | None = None
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-normal convolution weights and zero biases from ``generator`` (a fixed seed when
        None)."""
        gen = torch.Generator().manual_seed(0) if generator is None else generator
        for conv in (self.conv1, self.conv2, self.conv3):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu", generator=gen)
            nn.init.zeros_(conv.bias)
        bound = 1.0 / math.sqrt(FEATURE_DIM)
        nn.init.uniform_(self.head.weight, -bound, bound, generator=gen)
        nn.init.zeros_(self.head.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 64) of images (B, 1, S, S)."""
        if x.dim() != 4 or x.shape[1] != 1 or min(x.shape[-2:]) < DIGIT_SIDE:
            raise ValueError(
                f"images must have shape (B, 1, S, S) with S >= 8, got {tuple(x.shape)}"
            )
        h = F.relu(self.conv1(2.0 * x - 1.0))  # (B, 32, S/s, S/s)
        h = F.relu(self.conv2(h))  # (B, 64, S/2s, S/2s)
        h = F.relu(self.conv3(h))  # (B, 64, S/2s, S/2s)
        return h.mean(dim=(2, 3))  # (B, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.head(self.features(x))


@torch.no_grad()
def _batched(fn, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def classifier_accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` (B, 1, S, S) that ``net`` classifies as ``labels`` (B,)."""
    if len(images) != len(labels):
        raise ValueError(f"labels: need {len(images)}, got {len(labels)}")
    predicted = _batched(net, images).argmax(-1)
    return (predicted == labels.to(predicted.device)).double().mean().item()


def _cache_path(cache_dir: Path, dataset: str, side: int, seed: int, steps: int) -> Path:
    name = f"feature_net-v{FEATURE_NET_VERSION}-{dataset}-s{side}-seed{seed}-steps{steps}"
    return cache_dir / f"{name}.safetensors"


def _metadata(dataset: str, side: int, seed: int, steps: int, net: FeatureNet) -> dict[str, str]:
    return {
        "version": str(FEATURE_NET_VERSION),
        "dataset": dataset,
        "side": str(side),
        "seed": str(seed),
        "steps": str(steps),
        "num_classes": str(net.num_classes),
        "stem_stride": str(net.stem_stride),
        "heldout_accuracy": json.dumps(net.heldout_accuracy),
    }


def _load_cached(path: Path, expected: dict[str, str]) -> FeatureNet | None:
    """The cached net, or None when the file is missing, unreadable or for another setting."""

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError):
        return None
    keys = ("version", "dataset", "side", "seed", "steps", "num_classes", "stem_stride")
    if any(meta.get(k) != expected[k] for k in keys):
        return None
    net = FeatureNet(int(meta["num_classes"]), stem_stride=int(meta["stem_stride"]))
    net.load_state_dict(state)
    net.heldout_accuracy = json.loads(meta.get("heldout_accuracy", "null"))
    return net.eval()


def train_feature_net(dataset: str, side: int, seed: int = 0, **kwargs) -> FeatureNet:
    """See :func:`_train_feature_net`; callable from inside an evaluation's inference mode
    (the net is built and trained with autograd on, its tensors normal ones)."""
    with torch.inference_mode(False), torch.enable_grad():
        return _train_feature_net(dataset, side, seed, **kwargs)


def _train_feature_net(
    dataset: str,
    side: int,
    seed: int = 0,
    *,
    steps: int = 600,
    cache_dir: str | Path | None = None,
) -> FeatureNet:
    """A :class:`FeatureNet` trained on real images at side S, in eval mode; same seed, same net.

    digits: the train split fixed by ``seed`` (:func:`load_digits_split`; use the generative
    model's split seed, so that the net never saw the held-out images used as the real
    reference), resized canvases with random shifts of up to max(1, S // 16) px (zero fill).
    shapes: fresh draws every step. Adam (lr 5e-3, cosine decay to 0), batch 128;
    initialisation and batches come from generators derived from ``seed``.

    ``heldout_accuracy`` is the accuracy on ``fixed_eval_set(dataset, side, 1000, seed)`` (all
    360 test digits; 1,000 fresh shapes). With ``cache_dir`` the net is loaded from / saved to a
    safetensors file keyed by (dataset, side, seed, steps, :data:`FEATURE_NET_VERSION`), with
    ``heldout_accuracy`` in its metadata, so that a sweep trains each net once."""
    classes = num_classes(dataset)  # validates dataset
    if side < DIGIT_SIDE:
        raise ValueError(f"side={side}: must be >= {DIGIT_SIDE}")
    if steps < 1:
        raise ValueError(f"steps={steps}: must be >= 1")
    stride = stem_stride_for(side)
    net = FeatureNet(
        classes, stem_stride=stride, generator=make_generator(seed, "vision/feature_net/init")
    )
    path = None
    if cache_dir is not None:
        path = _cache_path(Path(cache_dir), dataset, side, seed, steps)
        cached = _load_cached(path, _metadata(dataset, side, seed, steps, net))
        if cached is not None:
            return cached

    data_gen = make_generator(seed, "vision/feature_net/data")
    canvases = labels = None
    shift = 0
    if dataset == "digits":
        split = load_digits_split(seed)
        labels = split.train_labels
        # resizing the whole split once is far cheaper than resizing every batch
        canvases = digit_canvases(split.train_images, side)  # (1437, 1, S, S)
        # +-1 px up to S = 16, then +-S/16 px (half a digit pixel): measured slightly better
        # than +-1 digit pixel (S // 8) at S = 16 (held-out 0.986 vs 0.967)
        shift = max(1, side // 16)

    _fit(net, dataset, side, steps, data_gen, canvases, labels, shift)
    net.eval()

    images, labels = fixed_eval_set(dataset, side, EVAL_COUNT, seed)
    net.heldout_accuracy = classifier_accuracy(net, images, labels)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename, so that a concurrent sweep worker never reads a half-written file
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp), metadata=_metadata(dataset, side, seed, steps, net))
        os.replace(tmp, path)
    return net


def _fit(net, dataset, side, steps, data_gen, canvases, train_labels, shift) -> None:
    """Adam with cosine decay on real canvases (digits: shifted) or fresh shapes."""
    optimizer = torch.optim.Adam(net.parameters(), lr=TRAIN_LR)
    net.train()
    for step in range(steps):
        if dataset == "digits":
            index = torch.randint(0, len(canvases), (TRAIN_BATCH,), generator=data_gen)
            x = shift_augment(canvases[index], data_gen, shift)
            y = train_labels[index]
        else:
            x, y = shape_images(TRAIN_BATCH, side, data_gen)
        for group in optimizer.param_groups:
            group["lr"] = TRAIN_LR * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


# --- feature-space distances -------------------------------------------------------------------


def _features_2d(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {array.shape}")
    return array.astype(np.float64)


def frechet_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(Ca + Cb - 2 sqrtm(Ca Cb)) in float64 (the FID formula).

    a (n, d), b (m, d) with n, m >= 2; Ca, Cb are the unbiased sample covariances (np.cov, as in
    the reference FID code), sqrtm is scipy's with its (numerically) imaginary part dropped."""
    from scipy import linalg  # the images extra: only the image metrics need it

    xa, xb = _features_2d(a, "a"), _features_2d(b, "b")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"b: feature dimension {xb.shape[1]} differs from a's {xa.shape[1]}")
    if len(xa) < 2 or len(xb) < 2:
        raise ValueError(f"a, b: need at least 2 samples each, got {len(xa)} and {len(xb)}")
    mu_a, mu_b = xa.mean(0), xb.mean(0)
    ca = np.atleast_2d(np.cov(xa, rowvar=False))  # (d, d)
    cb = np.atleast_2d(np.cov(xb, rowvar=False))
    with warnings.catch_warnings():
        # dead ReLU features make the covariances singular; the square root still exists and
        # the non-finite case is handled below, so scipy's warning says nothing actionable
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(ca @ cb)
    if not np.isfinite(covmean).all():
        # singular product (e.g. fewer samples than dimensions): regularise as pytorch-fid does
        offset = np.eye(len(ca)) * 1e-6
        covmean = linalg.sqrtm((ca + offset) @ (cb + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(covmean))


def _unbiased_mmd2_cubic(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3  # (n, n)
    kyy = (y @ y.T / d + 1.0) ** 3  # (m, m)
    kxy = (x @ y.T / d + 1.0) ** 3  # (n, m)
    n, m = len(x), len(y)
    # the diagonals k(x_i, x_i) are what makes the plain V-statistic biased
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    *,
    subsets: int = 10,
    subset_size: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3, averaged over ``subsets`` random subsets of ``subset_size``
    (default min(n, m, 500)) rows of a and of b, each drawn without replacement from
    ``generator`` (None: a fixed seed-0 generator). Can be slightly negative (unbiased)."""
    xa, xb = _features_2d(a, "a"), _features_2d(b, "b")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"b: feature dimension {xb.shape[1]} differs from a's {xa.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets={subsets}: must be >= 1")
    size = min(len(xa), len(xb), 500) if subset_size is None else subset_size
    if not 2 <= size <= min(len(xa), len(xb)):
        raise ValueError(f"subset_size={size}: must be in [2, min(n, m) = {min(len(xa), len(xb))}]")
    gen = torch.Generator().manual_seed(0) if generator is None else generator
    total = 0.0
    for _ in range(subsets):
        ia = torch.randperm(len(xa), generator=gen, device=gen.device)[:size].cpu().numpy()
        ib = torch.randperm(len(xb), generator=gen, device=gen.device)[:size].cpu().numpy()
        total += _unbiased_mmd2_cubic(xa[ia], xb[ib])
    return total / subsets


# --- pixel statistics --------------------------------------------------------------------------


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a tensor of shape (B, 1, S, S), got {got}")
    if len(images) == 0:
        raise ValueError(f"{name}: empty batch")


INK_THRESHOLD = 0.5


def pixel_stats(images: torch.Tensor) -> dict[str, float]:
    """``mean_ink`` (mean intensity), ``ink_fraction`` (share of pixels > 0.5) and ``components``
    (mean number of 8-connected components of the > 0.5 mask, ``scipy.ndimage.label``)."""
    from scipy import ndimage  # the images extra: only the image metrics need it

    _check_images(images)
    x = images.detach().cpu().to(torch.float64)
    mask = (x[:, 0] > INK_THRESHOLD).numpy()  # (B, S, S)
    eight = np.ones((3, 3), dtype=bool)  # diagonal neighbours connect: strokes are thin
    counts = [ndimage.label(m, structure=eight)[1] for m in mask]
    return {
        "mean_ink": x.mean().item(),
        "ink_fraction": float(mask.mean()),
        "components": float(np.mean(counts)),
    }


def radial_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Mean radially averaged power spectrum (R,), R = S // 2 + 1, normalised to sum 1.

    Each image's mean is removed first (the DC term would otherwise dominate; mean ink is
    reported separately); bin k averages |FFT|^2 over frequencies with round(S |f|) = k, where
    |f| is in cycles per pixel; the corners beyond the Nyquist radius are dropped."""
    _check_images(images)
    x = images.detach().cpu().to(torch.float64)[:, 0]  # (B, S, H) with H = W = S
    H, W = x.shape[-2:]
    if H != W:
        raise ValueError(f"images must be square, got {H}x{W}")
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = (torch.fft.fft2(x).abs() ** 2).mean(0)  # (S, S)
    f = torch.fft.fftfreq(H, dtype=torch.float64)  # (S,) cycles per pixel
    radius = torch.round(torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2) * H).long()  # (S, S)
    bins = H // 2 + 1
    keep = radius < bins
    sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, radius[keep], power[keep])
    counts = torch.zeros(bins, dtype=torch.float64).index_add_(
        0, radius[keep], torch.ones_like(power[keep])
    )
    spectrum = sums / counts
    total = spectrum.sum()
    # a batch of constant images has no structure at all: call it flat rather than divide by 0
    return spectrum / total if total > 0 else torch.full_like(spectrum, 1.0 / bins)


def spectrum_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """L1 distance sum_k |p_k - q_k| in [0, 2] between two normalised radial spectra (linear, not
    log: it weighs frequencies by their share of the power, so it is stable where the power is
    ~0). ``a`` and ``b``: image batches (B, 1, S, S) of one side, or spectra (R,) from
    :func:`radial_spectrum`."""
    p = radial_spectrum(a) if a.dim() == 4 else a.to(torch.float64)
    q = radial_spectrum(b) if b.dim() == 4 else b.to(torch.float64)
    if p.dim() != 1 or p.shape != q.shape:
        raise ValueError(
            f"b: spectrum of shape {tuple(q.shape)} does not match a's {tuple(p.shape)} "
            "(same side S needed)"
        )
    return (p - q).abs().sum().item()


# --- everything for one generated set ----------------------------------------------------------


def sample_metrics(
    generated: torch.Tensor,
    labels: torch.Tensor,
    real: torch.Tensor,
    net: FeatureNet,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Metrics of ``generated`` (B, 1, S, S) in [0, 1] (clamp samples first) conditioned on
    ``labels`` (B,), against ``real`` (M, 1, S, S), with ``net`` trained at the same S.

    Keys: ``accuracy`` (share classified as their conditioning label), ``fd``, ``kid`` (subsets
    from ``generator``), ``mean_ink``, ``ink_fraction``, ``components`` of the generated set, and
    ``ink_gap``, ``ink_fraction_gap``, ``components_gap`` (absolute differences to the real set's)
    and ``spectrum_distance``."""
    _check_images(generated, "generated")
    _check_images(real, "real")
    if generated.shape[-2:] != real.shape[-2:]:
        raise ValueError(
            f"real: side {tuple(real.shape[-2:])} differs from generated's "
            f"{tuple(generated.shape[-2:])}"
        )
    if not torch.isfinite(generated).all() or generated.min() < 0 or generated.max() > 1:
        raise ValueError("generated: values must be finite and in [0, 1] (clamp samples first)")
    if labels.shape != (len(generated),):
        raise ValueError(f"labels: must have shape ({len(generated)},), got {tuple(labels.shape)}")
    device = next(net.parameters()).device
    generated, real = generated.to(device, torch.float32), real.to(device, torch.float32)
    gen_feats = _batched(net.features, generated)  # (B, 64)
    real_feats = _batched(net.features, real)  # (M, 64)
    with torch.no_grad():
        predicted = net.head(gen_feats).argmax(-1)
    gen_stats, real_stats = pixel_stats(generated), pixel_stats(real)
    return {
        "accuracy": (predicted == labels.to(device)).double().mean().item(),
        "fd": frechet_distance(gen_feats, real_feats),
        "kid": kernel_inception_distance(gen_feats, real_feats, generator=generator),
        **gen_stats,
        "ink_gap": abs(gen_stats["mean_ink"] - real_stats["mean_ink"]),
        "ink_fraction_gap": abs(gen_stats["ink_fraction"] - real_stats["ink_fraction"]),
        "components_gap": abs(gen_stats["components"] - real_stats["components"]),
        "spectrum_distance": spectrum_distance(generated.cpu(), real.cpu()),
    }
