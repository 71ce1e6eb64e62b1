"""Small building blocks with the reference's (Haiku) initialization and explicit randomness.

Modules are constructed without touching any RNG; :meth:`reset_parameters` takes the generator
(docs/design.md §4: no global RNG inside modules).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def truncated_normal_(
    tensor: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Haiku's TruncatedNormal: a normal with ``std``, cut (not rescaled) at two std."""
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std, generator=generator)


class Linear(nn.Linear):
    """``nn.Linear`` with Haiku's default init: weights truncated normal std 1/sqrt(fan_in),
    biases zero. Constructed as zeros; :meth:`reset_parameters` does the random init."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._constructed = True

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        if not getattr(self, "_constructed", False):
            # called from nn.Linear.__init__: stay off the global RNG until given a generator
            nn.init.zeros_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
            return
        truncated_normal_(self.weight, 1.0 / math.sqrt(self.in_features), generator)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


def dropout(
    x: torch.Tensor,
    p: float,
    training: bool,
    generator: torch.Generator | None = None,
    *,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Inverted dropout whose mask comes from ``noise`` or else from ``generator``.

    Eval mode (or p == 0) is the identity. ``noise`` holds uniform [0, 1) draws of ``x``'s shape
    (the element is kept where noise >= p), or that comparison already made (a bool keep mask, a
    quarter of the memory): callers that cannot hand a generator down (vmap over an ensemble)
    draw it themselves. Without noise, the mask is drawn from ``generator`` on its
    device and moved, so a CPU generator also works for a CUDA model (at the cost of a copy).
    With neither, this falls back to ``F.dropout`` (torch's global RNG).
    """
    if not training or p == 0.0:
        return x
    if noise is None and generator is None:
        return F.dropout(x, p, training=True)
    if noise is None:
        noise = torch.rand(x.shape, generator=generator, device=generator.device)
    keep = noise if noise.dtype == torch.bool else noise >= p
    return x * keep.to(device=x.device, dtype=x.dtype) / (1.0 - p)
