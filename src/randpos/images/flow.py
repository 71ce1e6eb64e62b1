"""Flow matching on SiT's linear path: t = 0 is noise, t = 1 is data.

Notation: B = batch, x1 = data, x0 = noise (standard normal), x_t = t x1 + (1 - t) x0, and the
regression target is the path's velocity u = x1 - x0 (willisma/SiT ``transport``, ICPlan).

A ``model`` here is any callable ``model(x_t, t, y, positions, cond) -> velocity`` with x_t's
shape, e.g. :class:`randpos.images.models.DiT` (``functools.partial(dit, validate=False)`` skips
its range checks). Randomness is explicit: :func:`flow_matching_loss` takes the noise and the
times from its caller, :func:`euler_sample` starts from the caller's noise, and
:func:`denoising_losses` draws from the ``generator`` it is given; nothing here touches torch's
global RNG.

Generation contract ("one draw per trajectory"): the ``positions`` given to
:func:`euler_sample` (one draw per sample, e.g. a randomized grid) are used unchanged at every
step of that sample's ODE, so each trajectory sees one consistent set of positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Model = Callable[..., torch.Tensor]


def interpolate(
    x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, u): x_t = t x1 + (1 - t) x0 with t (B,) broadcast over the rest, u = x1 - x0."""
    tb = t.reshape(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)  # (B, 1, ..., 1)
    return tb * x1 + (1 - tb) * x0, x1 - x0


def flow_matching_loss(
    model: Model,
    x1: torch.Tensor,
    y: torch.Tensor,
    positions: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar mean squared error of ``model(x_t, t, y, positions, cond)`` against u = x1 - x0.

    ``x0`` (noise, x1's shape) and ``t`` (B,) in [0, 1] are drawn by the caller from its
    generators, so the loss itself draws nothing (labels dropped for guidance are also the
    caller's: replace them by the model's null class)."""
    xt, u = interpolate(x1, x0, t)
    return F.mse_loss(model(xt, t, y, positions, cond), u)


def sampling_times(
    steps: int,
    shift: float = 1.0,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The Euler grid (steps + 1,) from t = 0 to t = 1: uniform in t, then shifted on
    sigma = 1 - t as sigma' = shift sigma / (1 + (shift - 1) sigma) (shift > 1 spends more
    steps at high noise, as for larger resolutions); shift = 1 is the uniform grid exactly."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise ValueError(f"steps={steps!r}: must be a positive integer")
    if not shift > 0:
        raise ValueError(f"shift={shift!r}: must be a positive number")
    t = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if shift != 1.0:
        sigma = 1.0 - t
        t = 1.0 - shift * sigma / (1.0 + (shift - 1.0) * sigma)
    return t.to(device=device, dtype=dtype)


@torch.no_grad()
def euler_sample(
    model: Model,
    noise: torch.Tensor,
    y: torch.Tensor,
    positions: torch.Tensor,
    *,
    steps: int = 32,
    cfg_scale: float = 1.0,
    null_class: int,
    cond: torch.Tensor | None = None,
    shift: float = 1.0,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from x = ``noise`` at t = 0 to t = 1 with Euler steps on
    :func:`sampling_times` (``steps``, ``shift``); returns the samples (noise's shape).

    With ``cfg_scale`` != 1, classifier-free guidance: v = v_null + cfg_scale (v_cond - v_null),
    both from one batched forward of size 2B (labels ``y`` then ``null_class``; the same
    positions and ``cond`` for both halves). ``positions`` (B or 1, N, 2) stay fixed for the
    whole trajectory (one draw per sample, see the module docstring)."""
    B = noise.shape[0]
    times = sampling_times(steps, shift, device=noise.device, dtype=noise.dtype)  # (S + 1,)
    guided = cfg_scale != 1.0
    if guided:
        y_in = torch.cat([y, torch.full_like(y, null_class)])  # (2B,)
        pos_in = positions if positions.shape[0] == 1 else torch.cat([positions, positions])
        cond_in = None if cond is None else torch.cat([cond, cond])
    x = noise
    for i in range(steps):
        t = times[i].expand(B)  # (B,)
        if guided:
            v = model(torch.cat([x, x]), torch.cat([t, t]), y_in, pos_in, cond_in)
            v_cond, v_null = v.chunk(2)
            v = v_null + cfg_scale * (v_cond - v_null)
        else:
            v = model(x, t, y, positions, cond)
        x = x + (times[i + 1] - times[i]) * v
    return x


@torch.no_grad()
def denoising_losses(
    model: Model,
    x1: torch.Tensor,
    y: torch.Tensor,
    positions: torch.Tensor,
    times: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    *,
    generator: torch.Generator,
    cond: torch.Tensor | None = None,
) -> dict[float, float]:
    """The flow-matching MSE at each fixed t (the same t for the whole batch): {t: loss}.

    The noise is one standard-normal draw of x1's shape per t, in the order of ``times``, from
    ``generator`` (on its device, then moved): a fixed seed gives fixed numbers, and the same
    seed gives every compared model the same noise."""
    losses = {}
    for value in times:
        x0 = torch.randn(x1.shape, generator=generator, device=generator.device)
        x0 = x0.to(device=x1.device, dtype=x1.dtype)
        t = torch.full((x1.shape[0],), float(value), device=x1.device, dtype=x1.dtype)
        losses[float(value)] = float(flow_matching_loss(model, x1, y, positions, x0, t, cond))
    return losses


__all__ = [
    "denoising_losses",
    "euler_sample",
    "flow_matching_loss",
    "interpolate",
    "sampling_times",
]
