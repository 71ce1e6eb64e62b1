"""Float tolerances derived from the computation (docs/testing.md).

Two float32 computations of the same quantity along different code paths (another kernel set,
another blocking of a matrix product, another thread count, a cache instead of a full forward)
round differently. A dot product of length n summed in float32 has an error of a few
eps * sqrt(n) * (sum of |terms|) in practice, eps = 2^-23 the float32 machine epsilon; through a
network of `depth` such layers the differences add up. So a comparison of float32 results uses

    atol = EPS32 * depth * sqrt(width) * scale

with `scale` the magnitude of the compared values, and states the numbers it plugs in. Exact
comparisons are kept for what is exact: integer outputs, or the same code path on the same
machine compared with itself. Oracle checks compare in float64.
"""

from __future__ import annotations

import math

import torch

#: float32 machine epsilon, 2^-23 (about 1.19e-7).
EPS32 = torch.finfo(torch.float32).eps
#: float64 machine epsilon, 2^-52 (about 2.2e-16).
EPS64 = torch.finfo(torch.float64).eps


def magnitude(*tensors: torch.Tensor) -> float:
    """The largest |value| of the tensors (at least 1e-30, so a tolerance is never 0)."""
    return max(max(float(t.detach().abs().max()) for t in tensors if t.numel()), 1e-30)


def f32_atol(scale: float | torch.Tensor, *, depth: int = 1, width: int = 1) -> float:
    """EPS32 * depth * sqrt(width) * scale; ``scale`` may be a tensor (its largest |value|)."""
    if isinstance(scale, torch.Tensor):
        scale = magnitude(scale)
    return EPS32 * depth * math.sqrt(width) * float(scale)


def f64_atol(scale: float | torch.Tensor, *, depth: int = 1, width: int = 1) -> float:
    """EPS64 * depth * sqrt(width) * scale: :func:`f32_atol`'s bound for float64 computations."""
    if isinstance(scale, torch.Tensor):
        scale = magnitude(scale)
    return EPS64 * depth * math.sqrt(width) * float(scale)


def assert_close_f32(
    actual: torch.Tensor, expected: torch.Tensor, *, depth: int = 1, width: int = 1, factor=1.0
) -> None:
    """``actual`` equals ``expected`` to ``factor * f32_atol(max|expected|, depth, width)``."""
    atol = factor * f32_atol(magnitude(expected), depth=depth, width=width)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)
