"""Image data with nothing to download: scikit-learn's bundled 8x8 digits and procedural shapes.

Notation: B = batch, C = channels, S = image side (square images), S' = side after a resize.
Images are float32 in [0, 1], laid out (B, 1, S, S); labels are long (B,).

Two families, each defined at every side S, so that every test resolution has ground truth:

* ``digits``: ``sklearn.datasets.load_digits`` (1,797 images, values 0..16, shipped with
  scikit-learn), split 1,437 / 360 stratified by class with the split fixed by a seed. A canvas of
  side S is the 8x8 digit resized (``resize``: bilinear, antialiased) or pasted unresized at a
  random place (``paste``).
* ``shapes``: four classes (:data:`SHAPE_CLASSES`) whose size and position are drawn in
  continuous canvas coordinates (fractions of the side) and rendered analytically with 4x4
  supersampling, so the same scene distribution exists at every S, and the same generator state
  gives the same scenes at every S. Procedural shapes have no held-out set beyond fresh draws:
  ``split`` changes nothing for them.

Randomness is explicit (docs/design.md §4): every random function takes a ``torch.Generator`` and
never touches torch's global RNG; the digits split uses scikit-learn with a seed derived by
:func:`randpos.core.seeding.derive_seed`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from randpos.core.seeding import derive_seed, make_generator

DATASETS = ("digits", "shapes")
SPLITS = ("train", "test")
CANVAS_MODES = ("resize", "paste")
SHAPE_CLASSES = ("disc", "square", "triangle", "cross")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
DIGIT_SIDE = 8
DIGITS_TEST_SIZE = 360
# Micro-conditioning of an uncropped image: offsets (0, 0), resized side / side = 1 on both axes.
IDENTITY_CROP = (0.0, 0.0, 1.0, 1.0)

# Shapes: half-extent r as a fraction of the side; >= 0.2 keeps a cross's arms (thickness 2r/3)
# above one pixel at S = 8, <= 0.4 leaves room to move the shape around.
SHAPE_MIN_RADIUS = 0.2
SHAPE_MAX_RADIUS = 0.4
SHAPE_SUPERSAMPLE = 4


def num_classes(dataset: str) -> int:
    """The number of classes of a dataset (``digits``: 10, ``shapes``: the shapes); an unknown
    dataset raises a ``ValueError`` naming the valid ones."""
    _check_dataset(dataset)
    return len(DIGIT_CLASSES) if dataset == "digits" else len(SHAPE_CLASSES)


# --- digits ------------------------------------------------------------------------------------


class DigitsSplit(NamedTuple):
    """Images (N, 8, 8) float32 in [0, 1] and labels (N,) long. Cached: do not modify in place."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@functools.lru_cache(maxsize=8)
def load_digits_split(seed: int = 0) -> DigitsSplit:
    """The 1,437 / 360 split of scikit-learn's digits, stratified by class, fixed by ``seed``."""
    from sklearn.datasets import load_digits  # the images extra: only the digits data needs it

    # the images extra: only the digits data needs it
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0  # (1797, 8, 8)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=DIGITS_TEST_SIZE,
        stratify=digits.target,
        # sklearn wants a 32-bit seed; derive it so split seeds never collide with other streams
        random_state=derive_seed(seed, "vision/digits_split") % (2**32),
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    return DigitsSplit(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])


def digit_canvases(
    images: torch.Tensor,
    side: int,
    mode: str = "resize",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Digits (B, h, w) (normally 8x8) as canvases (B, 1, S, S) float32 in [0, 1].

    ``resize``: bilinear ``F.interpolate`` with antialiasing to S x S (any S >= 2; at S = h it is
    the identity). ``paste``: the digit unresized at a uniformly random (top, left) on a zero
    canvas (S >= h, w; ``generator`` required)."""
    if images.dim() != 3:
        raise ValueError(f"images must have shape (B, h, w), got {tuple(images.shape)}")
    if mode not in CANVAS_MODES:
        raise ValueError(f"mode={mode!r}: must be one of {CANVAS_MODES}")
    B, h, w = images.shape
    x = images.to(torch.float32)
    if mode == "resize":
        if side < 2:
            raise ValueError(f"side={side}: must be >= 2 for mode='resize'")
        out = F.interpolate(
            x[:, None], size=(side, side), mode="bilinear", align_corners=False, antialias=True
        )  # (B, 1, S, S)
        # bilinear weights are convex, so only rounding can leave [0, 1]
        return out.clamp_(0.0, 1.0)
    if side < max(h, w):
        raise ValueError(f"side={side}: must be >= the digit size {max(h, w)} for mode='paste'")
    if generator is None:
        raise ValueError("generator: required for mode='paste' (random placement)")
    top = torch.randint(0, side - h + 1, (B,), generator=generator, device=generator.device)
    left = torch.randint(0, side - w + 1, (B,), generator=generator, device=generator.device)
    top, left = top.to(x.device), left.to(x.device)
    rows = top[:, None] + torch.arange(h, device=x.device)  # (B, h)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (B, w)
    batch = torch.arange(B, device=x.device)[:, None, None]  # (B, 1, 1)
    out = x.new_zeros(B, side, side)
    out[batch, rows[:, :, None], cols[:, None, :]] = x
    return out[:, None]  # (B, 1, S, S)


# --- procedural shapes -------------------------------------------------------------------------


def _inside(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test of shape ``kind`` in shape-normalised coordinates (u, v) = ((x - cx) / r,
    (y - cy) / r); every shape spans [-1, 1]^2 before scaling."""
    au, av = u.abs(), v.abs()
    if kind == 0:  # disc
        return u * u + v * v <= 1.0
    if kind == 1:  # square
        return (au <= 1.0) & (av <= 1.0)
    if kind == 2:  # triangle, apex up at v = -1, base at v = +1: half-width grows 0 -> 1
        return (av <= 1.0) & (au <= (v + 1.0) / 2.0)
    arm = 1.0 / 3.0  # cross: half-thickness of the bars
    return ((au <= arm) & (av <= 1.0)) | ((av <= arm) & (au <= 1.0))


def shape_images(
    batch_size: int, side: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural shapes: (images (B, 1, S, S) float32 in [0, 1], labels (B,) long).

    Draws (in this order, independent of S): the class uniformly over :data:`SHAPE_CLASSES`, the
    half-extent r ~ U[0.2, 0.4] and the centre uniformly in [r, 1 - r]^2 (fractions of the side),
    so the shape always fits. Pixels are the covered fraction of a 4x4 grid of sample points."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if side < 2:
        raise ValueError(f"side={side}: must be >= 2")
    if generator is None:
        raise ValueError("generator: required (shapes are random)")
    dev = generator.device
    B = batch_size
    labels = torch.randint(0, len(SHAPE_CLASSES), (B,), generator=generator, device=dev)
    r = SHAPE_MIN_RADIUS + (SHAPE_MAX_RADIUS - SHAPE_MIN_RADIUS) * torch.rand(
        B, generator=generator, device=dev
    )
    cy, cx = (r + (1 - 2 * r) * torch.rand(2, B, generator=generator, device=dev)).unbind(0)
    P = side * SHAPE_SUPERSAMPLE
    grid = (torch.arange(P, device=dev, dtype=torch.float32) + 0.5) / P  # (P,) point centres
    fine = torch.empty(B, P, P, device=dev)
    # one class at a time: each image runs only its own inside-test (4x less work than all four)
    for kind in range(len(SHAPE_CLASSES)):
        sel = (labels == kind).nonzero()[:, 0]
        if len(sel) == 0:
            continue
        rs = r[sel, None, None]  # (b, 1, 1)
        v = (grid[None, :, None] - cy[sel, None, None]) / rs  # (b, P, 1)
        u = (grid[None, None, :] - cx[sel, None, None]) / rs  # (b, 1, P)
        fine[sel] = _inside(kind, u, v).to(torch.float32)  # (b, P, P) by broadcasting
    images = F.avg_pool2d(fine[:, None], SHAPE_SUPERSAMPLE)  # (B, 1, S, S)
    return images, labels


# --- sampling ----------------------------------------------------------------------------------


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: must be one of {DATASETS}")


def sample_images(
    dataset: str,
    split: str,
    batch_size: int,
    side: int,
    generator: torch.Generator | None,
    *,
    mode: str = "resize",
    index: torch.Tensor | None = None,
    split_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (images (B, 1, S, S), labels (B,)) of ``dataset`` at side S.

    digits: images of ``split`` (train | test) of the split fixed by ``split_seed`` (see
    :func:`load_digits_split`) at uniformly random indices
    (with replacement), or at ``index`` (B,) when given (fixed evaluation sets; then
    ``batch_size`` must equal its length and ``generator`` is only needed for ``paste``).
    ``mode`` is the canvas mode (:data:`CANVAS_MODES`). shapes: fresh procedural draws; ``split``
    and ``mode`` change nothing (a shape is rendered at S either way), ``index`` is not allowed."""
    _check_dataset(dataset)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {SPLITS}")
    if mode not in CANVAS_MODES:
        raise ValueError(f"mode={mode!r}: must be one of {CANVAS_MODES}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if dataset == "shapes":
        if index is not None:
            raise ValueError("index: procedural shapes have no stored images to index")
        if generator is None:
            raise ValueError("generator: required for dataset='shapes'")
        return shape_images(batch_size, side, generator)
    data = load_digits_split(split_seed)
    images, labels = (
        (data.train_images, data.train_labels)
        if split == "train"
        else (data.test_images, data.test_labels)
    )
    if index is None:
        if generator is None:
            raise ValueError("generator: required to draw random digits when index is None")
        index = torch.randint(0, len(labels), (batch_size,), generator=generator)
    else:
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        if index.shape != (batch_size,):
            raise ValueError(f"index: must have shape ({batch_size},), got {tuple(index.shape)}")
        if len(index) and (index.min() < 0 or index.max() >= len(labels)):
            raise ValueError(f"index: values must be in [0, {len(labels)}) for split={split!r}")
    index = index.cpu()
    return digit_canvases(images[index], side, mode, generator), labels[index]


def fixed_eval_set(
    dataset: str, side: int, count: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (images (N, 1, S, S), labels (N,)) on every call, for evaluation.

    digits: the first ``count`` test images of the split fixed by ``seed`` (all 360 when
    count >= 360), resized. shapes: ``count`` draws from a generator derived from ``seed`` (the
    same scenes at every S, rendered at S)."""
    _check_dataset(dataset)
    if count < 1:
        raise ValueError(f"count={count}: must be >= 1")
    if dataset == "digits":
        data = load_digits_split(seed)
        n = min(count, len(data.test_labels))
        return digit_canvases(data.test_images[:n], side), data.test_labels[:n].clone()
    return shape_images(count, side, make_generator(seed, "vision/eval_shapes"))


# --- augmentation ------------------------------------------------------------------------------


def random_resize_crop(
    images: torch.Tensor, generator: torch.Generator, max_scale: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """RPE-2D-style random resize and crop with SDXL-style micro-conditioning.

    Per sample r ~ U[1, max_scale]; the image (C, H, W) is resized (bilinear, antialias) to
    H' = round(H r), W' = round(W r) and cropped back to H x W at a uniformly random (top, left).
    Returns (crops (B, C, H, W), cond (B, 4)) with cond = (top / H', left / W', H' / H, W' / W);
    the uncropped image has cond :data:`IDENTITY_CROP` (what to pass at sampling time). Always
    draws 3 B uniforms, so the stream advances the same way for every ``max_scale``."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if not max_scale >= 1.0:
        raise ValueError(f"max_scale={max_scale}: must be >= 1")
    if generator is None:
        raise ValueError("generator: required (crops are random)")
    B, C, H, W = images.shape
    u = torch.rand(3, B, generator=generator, device=generator.device).cpu().double()
    scale = 1.0 + (max_scale - 1.0) * u[0]  # (B,)
    crops = torch.empty_like(images)
    cond = torch.empty(B, 4, dtype=torch.float32)
    for b in range(B):
        Hr, Wr = max(H, round(H * scale[b].item())), max(W, round(W * scale[b].item()))
        # floor(u * (n + 1)) is uniform over 0..n; min() guards u's rounding to 1.0
        top = min(int(u[1, b] * (Hr - H + 1)), Hr - H)
        left = min(int(u[2, b] * (Wr - W + 1)), Wr - W)
        x = images[b : b + 1]  # (1, C, H, W)
        if (Hr, Wr) != (H, W):
            x = F.interpolate(
                x, size=(Hr, Wr), mode="bilinear", align_corners=False, antialias=True
            )  # (1, C, H', W')
        crops[b] = x[0, :, top : top + H, left : left + W]
        cond[b] = torch.tensor([top / Hr, left / Wr, Hr / H, Wr / W])
    return crops, cond.to(images.device)


def shift_augment(
    images: torch.Tensor, generator: torch.Generator, max_shift: int = 1
) -> torch.Tensor:
    """Shift each image (B, C, H, W) by integers (dy, dx) uniform in [-max_shift, max_shift]
    (positive: down / right), filling the uncovered border with zeros."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift={max_shift}: must be >= 0")
    if generator is None:
        raise ValueError("generator: required (shifts are random)")
    B, C, H, W = images.shape
    m = max_shift
    dy, dx = torch.randint(-m, m + 1, (2, B), generator=generator, device=generator.device)
    dy, dx = dy.to(images.device), dx.to(images.device)
    padded = F.pad(images, (m, m, m, m))  # (B, C, H + 2m, W + 2m)
    # output pixel (i, j) reads padded (i + m - dy, j + m - dx), i.e. input (i - dy, j - dx)
    rows = (m - dy)[:, None] + torch.arange(H, device=images.device)  # (B, H)
    cols = (m - dx)[:, None] + torch.arange(W, device=images.device)  # (B, W)
    batch = torch.arange(B, device=images.device)[:, None, None]  # (B, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
