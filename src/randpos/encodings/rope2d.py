"""2D rotary encodings on grid positions: axial (with the per-axis frequency transforms of the
resolution-extension baselines) and RoPE-Mixed (learned frequencies).

Notation: B = batch, H = heads, N = patches, d = head width (divisible by 4), K = d / 4
frequencies per axis, theta = ``pe.theta``, positions (B, N, 2) in (y, x); pairs of adjacent
channels rotate as in :mod:`randpos.encodings.rope`. Both take the rotary encodings' options
(:class:`randpos.encodings.rope.RotaryOptions`).

* ``rope2d_axial`` (naver-ai/rope-vit ``compute_axial_cis``): f_m = theta^(-4m/d), m < K; the
  first d/2 channels rotate by x f, the last d/2 by y f. rope-vit uses theta = 100, FiT and
  LlamaGen 10000 (the default). ``pe.scaling`` in none | linear | ntk | yarn applies FiT's
  per-axis ("decoupled", whlzy/FiT ``fit/model/rope.py``) transforms with
  L0 = ``pe.original_max_position_embeddings`` (the training grid's side) and the scale of
  each axis s = max((largest position on it in the batch + 1) / L0, 1), computed as a tensor
  (no device sync): linear f / s; ntk f with base theta s^(D/(D-2)), D = d/2 the per-axis
  rotary width; yarn the ramp of :func:`randpos.encodings.rope.rope_inverse_frequencies` over
  the K pairs (``beta_fast``, ``beta_slow``) between f and f / s, cos and sin times
  ``attention_factor`` or 0.1 ln s + 1. At s = 1 every transform is plain axial, bit for bit.
* ``rope2d_mixed`` (rope-vit ``RoPE-Mixed``): per layer and head, learned frequencies
  (f_x, f_y) for each of the d/2 pairs, the phase of pair j being x f_x[j] + y f_y[j] (a
  learned direction in the plane). Init: per (layer, head) an angle a ~ U[0, 2 pi), magnitudes
  theta^(-4m/d), f_x = (mag cos a, mag cos(a + pi/2)), f_y = (mag sin a, mag sin(a + pi/2));
  rope-vit uses theta = 10. rope-vit keeps them out of weight decay; randpos trains with plain
  Adam (no decay), so nothing to exclude.

Both depend on positions only through differences (tests/encodings/test_grid_encodings.py) and
accept float positions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from randpos.encodings.base import EncodingShape, PositionalEncoding, register
from randpos.encodings.rope import RotaryOptions, _rotate_pairs

AXIAL_SCALINGS = ("none", "linear", "ntk", "yarn")


def _check_head(name: str, shape: EncodingShape, options: RotaryOptions) -> int:
    head = shape.head_width
    if head % 4:
        raise ValueError(
            f"{name} needs a head width (width / num_heads = {head}) divisible by 4: "
            "choose width and num_heads accordingly"
        )
    if not options.theta > 1.0:
        raise ValueError(f"pe.theta={options.theta!r}: must be a number > 1")
    return head


def axis_frequencies(
    head_width: int,
    theta: float,
    scale: torch.Tensor,
    *,
    kind: str = "none",
    original: int | None = None,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    attention_factor: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis' K = d/4 inverse frequencies, float64 (..., K), and its cos/sin factor (...,
    1), for axis scales ``scale`` (...,) >= 1 (FiT's decoupled transforms; module docstring)."""
    dim = head_width // 2  # the axis' rotary width
    m = torch.arange(dim // 2, dtype=torch.float64, device=scale.device)
    exponent = -2.0 * m / dim  # (K,)
    freqs = torch.pow(theta, exponent)  # (K,)
    s = scale.to(torch.float64).unsqueeze(-1)  # (..., 1)
    one = torch.ones_like(s)
    stretched = s > 1.0
    if kind == "none":
        return freqs.expand(*s.shape[:-1], -1), one
    if kind == "linear":
        return torch.where(stretched, freqs / s, freqs), one
    if kind == "ntk":
        return torch.where(stretched, freqs * torch.pow(s, exponent * dim / (dim - 2)), freqs), one
    if kind == "yarn":

        def correction(rotations: float) -> float:
            return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(correction(beta_fast)), 0)
        high = min(math.ceil(correction(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((m - low) / (high - low)).clamp(0.0, 1.0)  # (K,) 1: interpolate
        blended = freqs / s * ramp + freqs * (1.0 - ramp)
        factor = (
            torch.full_like(s, float(attention_factor))
            if attention_factor is not None
            else 0.1 * torch.log(s) + 1.0
        )
        return torch.where(stretched, blended, freqs), torch.where(stretched, factor, one)
    raise ValueError(f"pe.scaling={kind!r}: a 2D rotary encoding takes {', '.join(AXIAL_SCALINGS)}")


@register("rope2d_axial")
class AxialRope2D(PositionalEncoding):
    """Axial 2D RoPE: half of each head's pairs rotated by the y position, half by the x position
    (positions (B, N, 2)); the rotary options' scalings apply per axis."""

    float_positions = True
    position_dims = 2
    Options = RotaryOptions

    def __init__(self, shape: EncodingShape, options: RotaryOptions | None = None) -> None:
        super().__init__(shape, options)
        opts = self.options
        _check_head("rope2d_axial", shape, opts)
        if not opts.train_scaling:
            raise ValueError("pe.train_scaling=False: rope2d_axial scales in training too")
        if opts.scaling not in AXIAL_SCALINGS:
            raise ValueError(
                f"pe.scaling={opts.scaling!r}: rope2d_axial takes {', '.join(AXIAL_SCALINGS)}"
            )
        original = opts.original_max_position_embeddings
        if opts.scaling != "none" and (not isinstance(original, int) or original <= 0):
            raise ValueError(
                "pe.original_max_position_embeddings must be the training grid's side (a "
                f"positive integer) with pe.scaling={opts.scaling!r}, got {original!r}"
            )
        if opts.beta_fast <= opts.beta_slow:
            raise ValueError(f"pe.beta_fast={opts.beta_fast!r}: must exceed beta_slow")
        if opts.factor != 1.0:
            raise ValueError(
                f"pe.factor={opts.factor}: rope2d_axial takes each axis' scale from its extent "
                "over the training grid (FiT); leave it at 1"
            )
        self.theta = float(opts.theta)
        self.kind = opts.scaling
        self.original = original
        self.beta = (float(opts.beta_fast), float(opts.beta_slow))
        self.attention_factor = opts.attention_factor

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (B, N, d/2) float64: x pairs first, then y pairs."""
        p = positions.to(torch.float64)  # (B, N, 2)
        if self.kind == "none":
            scale = torch.ones(2, dtype=torch.float64, device=p.device)
        else:  # one scale per axis over the whole batch, as FiT's test-grid ratio
            scale = ((p.flatten(0, 1).amax(0) + 1.0) / self.original).clamp(min=1.0)  # (2,)
        freqs, factor = axis_frequencies(
            self.head_width,
            self.theta,
            scale,
            kind=self.kind,
            original=self.original,
            beta_fast=self.beta[0],
            beta_slow=self.beta[1],
            attention_factor=self.attention_factor,
        )  # (2, K), (2, 1): row 0 = y, row 1 = x
        ax = p[..., 1:2] * freqs[1]  # (B, N, K)
        ay = p[..., 0:1] * freqs[0]
        cos = torch.cat([ax.cos() * factor[1], ay.cos() * factor[0]], dim=-1)  # (B, N, d/2)
        sin = torch.cat([ax.sin() * factor[1], ay.sin() * factor[0]], dim=-1)
        return cos, sin

    def rotate(self, q, k, positions, layer):
        cos, sin = self.angles(positions)
        cos = cos.to(q.dtype).unsqueeze(1)  # (B, 1, N, d/2): shared by the heads
        sin = sin.to(q.dtype).unsqueeze(1)
        return _rotate_pairs(q, cos, sin), _rotate_pairs(k, cos, sin)


@register("rope2d_mixed")
class MixedRope2D(PositionalEncoding):
    """RoPE-Mixed: learned per-head frequencies that mix the two axes, rotating each pair by ``f_y *
    y + f_x * x`` (positions (B, N, 2))."""

    float_positions = True
    position_dims = 2
    Options = RotaryOptions

    def __init__(self, shape: EncodingShape, options: RotaryOptions | None = None) -> None:
        super().__init__(shape, options)
        head = _check_head("rope2d_mixed", shape, self.options)
        if self.options.scaling != "none":
            raise ValueError(
                f"pe.scaling={self.options.scaling!r}: rope2d_mixed learns its frequencies "
                "and takes pe.scaling=none"
            )
        self.theta = float(self.options.theta)
        # (layers, H, d/2, 2): per pair (f_y, f_x); zeros until reset_parameters
        self.freqs = nn.Parameter(torch.zeros(shape.num_layers, shape.num_heads, head // 2, 2))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        layers, heads, pairs, _ = self.freqs.shape
        mag = torch.pow(
            self.theta, -4.0 * torch.arange(pairs // 2, dtype=torch.float64) / self.head_width
        )  # (K,)
        a = torch.rand(layers, heads, 1, generator=generator, dtype=torch.float64) * 2 * math.pi
        f_x = torch.cat([mag * torch.cos(a), mag * torch.cos(a + math.pi / 2)], dim=-1)
        f_y = torch.cat([mag * torch.sin(a), mag * torch.sin(a + math.pi / 2)], dim=-1)
        with torch.no_grad():
            self.freqs.copy_(torch.stack([f_y, f_x], dim=-1).to(self.freqs.dtype))

    def rotate(self, q, k, positions, layer):
        freqs = self.freqs[layer].to(torch.float64)  # (H, d/2, 2)
        phase = torch.einsum("bnc,hjc->bhnj", positions.to(torch.float64), freqs)  # (B,H,N,d/2)
        cos, sin = phase.cos().to(q.dtype), phase.sin().to(q.dtype)
        return _rotate_pairs(q, cos, sin), _rotate_pairs(k, cos, sin)
