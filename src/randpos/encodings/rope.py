"""Rotary encoding (the reference's ``ROTARY``; docs/reference-system.md §4.1) and RoPE scaling for
context extension.

Notation: B = batch, H = heads, T = length, d = head width, K = d / 2 rotary pairs,
theta_m = base^(-m / K) with base = ``theta`` (10000 by default).
The interleaved pair (2m, 2m+1) of every query and key is rotated by the angle p * theta_m:
(a, b) -> (a cos - b sin, b cos + a sin). Then q_i . k_j depends on positions only through
p_j - p_i.

The rotary encodings' parameters are :class:`RotaryOptions` (``--set pe.theta=500000``,
``pe_options: {scaling: yarn, factor: 4}``): the base and RoPE scaling for context extension,
with Hugging Face's rope types and field names (``scaling`` is HF's ``rope_type``, ``factor`` its
``factor``). Scaling changes only the inverse frequencies theta_m and an attention factor that
multiplies cos and sin (so the logits by its square); :func:`rope_inverse_frequencies` computes
both, as a pure function of the options and the position range (and, for ``dynamic``, of the
largest position seen). ``tests/encodings/test_rotary_and_cope.py`` checks it against
``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS``. With ``scaling="none"`` (the default)
the numbers are those of plain RoPE, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch

from randpos.encodings.base import EncodingShape, PositionalEncoding, register

#: values of ``RotaryOptions.scaling``; ``ntk`` is the static NTK-aware base change
ROPE_SCALING_TYPES = ("none", "linear", "ntk", "dynamic", "yarn", "llama3")


@dataclass(frozen=True)
class RotaryOptions:
    """The parameters of the rotary encodings (rope, xpos, rope2d_axial, rope2d_mixed).

    theta:       the base of the frequencies theta_m = theta^(-m / K)
    scaling:     RoPE scaling for context extension (:data:`ROPE_SCALING_TYPES`; HF's rope_type)
    factor:      the scaling factor s (HF's ``factor``); 1 without scaling
    original_max_position_embeddings: L0, the pre-extension length; None: the model's L
    beta_fast, beta_slow:   yarn's ramp bounds (rotations)
    low_freq_factor, high_freq_factor: llama3's wavelength bounds (Llama 3.1's values)
    attention_factor: yarn's factor on cos and sin; None: 0.1 ln(s) + 1, as HF derives it
    train_scaling: False applies the scaling in eval mode only (``module.eval()``): a model
                 trained with plain RoPE and extended at test time (YaRN at test time)
    """

    theta: float = 10000.0
    scaling: str = "none"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    attention_factor: float | None = None
    train_scaling: bool = True

    def __post_init__(self) -> None:
        check_rope_options(self)

    def in_training(self) -> RotaryOptions:
        """The options in force in training mode: these, or plain RoPE (same base) when the
        scaling applies at test time only (``train_scaling=False``)."""
        if self.train_scaling:
            return self
        return RotaryOptions(theta=self.theta)


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_rope_options(options: RotaryOptions, head_width: int | None = None) -> None:
    """``ValueError`` naming ``pe.FIELD``, its value and what is allowed (with ``head_width``,
    also what the model's head width allows)."""

    def fail(field: str, allowed: str) -> None:
        raise ValueError(f"pe.{field}={getattr(options, field)!r}: must be {allowed}")

    kind = options.scaling
    if kind not in ROPE_SCALING_TYPES:
        fail("scaling", f"one of {', '.join(ROPE_SCALING_TYPES)}")
    if not _is_number(options.theta) or options.theta <= 1.0:
        fail("theta", "a number > 1")
    if not _is_number(options.factor) or options.factor < 1.0:
        fail("factor", "a number >= 1")
    if kind == "none" and options.factor != 1.0:
        fail("factor", "1.0 with scaling='none' (choose a scaling type)")
    original = options.original_max_position_embeddings
    if original is not None and (
        not isinstance(original, int) or isinstance(original, bool) or original <= 0
    ):
        fail("original_max_position_embeddings", "None (max_position) or a positive integer")
    for field in ("beta_fast", "beta_slow", "low_freq_factor", "high_freq_factor"):
        value = getattr(options, field)
        if not _is_number(value) or value <= 0:
            fail(field, "a positive number")
    if options.beta_fast <= options.beta_slow:
        fail("beta_fast", f"greater than beta_slow={options.beta_slow!r}")
    if options.high_freq_factor <= options.low_freq_factor:
        fail("high_freq_factor", f"greater than low_freq_factor={options.low_freq_factor!r}")
    factor = options.attention_factor
    if factor is not None:
        if not _is_number(factor) or factor <= 0:
            fail("attention_factor", "None (derived) or a positive number")
        if kind != "yarn":
            fail("attention_factor", f"None unless scaling='yarn' (got {kind!r})")
    if not isinstance(options.train_scaling, bool):
        fail("train_scaling", "true or false")
    if not options.train_scaling and kind == "none":
        fail("train_scaling", "true unless there is a scaling to apply at test time")
    if head_width is not None and kind in ("ntk", "dynamic") and head_width <= 2:
        raise ValueError(
            f"num_heads: the head width {head_width} must exceed 2 for pe.scaling={kind!r}"
        )


def rope_inverse_frequencies(
    head_width: int,
    options: RotaryOptions,
    max_position: int,
    seq_len: int | float | torch.Tensor | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, float]:
    """The K = head_width / 2 inverse frequencies (float64 (K,)) and the attention factor.

    Follows Hugging Face's ``ROPE_INIT_FUNCTIONS`` (same formulas, computed in float64), with
    L0 = ``original_max_position_embeddings`` or, when None, ``max_position``, s = factor:

    * none:    theta_m = base^(-2m/d), attention factor 1.
    * linear:  theta_m / s (position interpolation: position p acts as p / s).
    * ntk:     static NTK-aware base change, base * s^(d/(d-2)) (not in current HF).
    * dynamic: HF's ``_compute_dynamic_ntk_parameters``: base * (s l / L0 - (s-1))^(d/(d-2)),
      l = max(seq_len, L0); ``seq_len`` (a tensor is fine, no device sync) is the largest
      position seen + 1, and None means L0 (unchanged frequencies).
    * yarn:    HF's ramp over pair indices between the rounded correction dims of
      ``beta_fast`` / ``beta_slow`` at L0, blending theta_m (extrapolation) and theta_m / s;
      attention factor ``attention_factor`` or 0.1 ln(s) + 1 (1 for s <= 1).
    * llama3:  wavelengths 2 pi / theta_m below L0 / ``high_freq_factor`` kept, above
      L0 / ``low_freq_factor`` divided by s, smoothly interpolated in between.
    """
    kind, s = options.scaling, float(options.factor)
    dim = head_width
    k = torch.arange(dim // 2, device=device, dtype=torch.float64)
    exponent = -2.0 * k / dim  # (K,)
    base = float(options.theta)
    # the exact expression of base.inverse_frequencies, so that "none" is plain RoPE bit for bit
    inv_freq = torch.pow(base, exponent)  # (K,)
    original = options.original_max_position_embeddings or max_position
    if kind == "none":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / s, 1.0
    if kind == "ntk":
        return torch.pow(base * s ** (dim / (dim - 2)), exponent), 1.0
    if kind == "dynamic":
        # (base * r)^e = base^e * r^e, so r = 1 (seq_len <= L0, or s = 1 within L0) is exact
        if seq_len is None:
            seq_len = original
        if isinstance(seq_len, torch.Tensor):
            length = seq_len.to(device=device, dtype=torch.float64).clamp(min=original)
        else:
            length = torch.tensor(max(float(seq_len), original), dtype=torch.float64, device=device)
        ratio = s * length / original - (s - 1.0)  # () tensor
        return inv_freq * torch.pow(ratio, exponent * (dim / (dim - 2))), 1.0
    if kind == "yarn":
        factor = options.attention_factor
        if factor is None:
            factor = 0.1 * math.log(s) + 1.0 if s > 1.0 else 1.0

        def correction_dim(rotations: float) -> float:
            # the pair index whose wavelength fits ``rotations`` times into L0
            return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(correction_dim(options.beta_fast)), 0)
        high = min(math.ceil(correction_dim(options.beta_slow)), dim - 1)
        if low == high:
            high += 0.001  # as HF: avoids a zero-width ramp
        ramp = ((k - low) / (high - low)).clamp(0.0, 1.0)  # (K,) 0: keep, 1: interpolate
        keep = 1.0 - ramp
        return inv_freq / s * (1.0 - keep) + inv_freq * keep, float(factor)
    if kind == "llama3":
        low_wavelength = original / options.low_freq_factor
        high_wavelength = original / options.high_freq_factor
        wavelength = 2 * math.pi / inv_freq  # (K,)
        scaled = torch.where(wavelength > low_wavelength, inv_freq / s, inv_freq)
        smooth = (original / wavelength - options.low_freq_factor) / (
            options.high_freq_factor - options.low_freq_factor
        )
        smoothed = (1.0 - smooth) * scaled / s + smooth * scaled
        medium = (wavelength >= high_wavelength) & (wavelength <= low_wavelength)
        return torch.where(medium, smoothed, scaled), 1.0
    raise ValueError(f"pe.scaling={kind!r}: must be one of {', '.join(ROPE_SCALING_TYPES)}")


def _rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    pairs = x.unflatten(-1, (-1, 2))  # (B, H, T, d/2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
    return out.flatten(-2)  # (B, H, T, d)


@register("rope")
class RotaryEncoding(PositionalEncoding):
    """RoPE: each interleaved pair of query and key channels rotated by ``p * theta_m``
    (``rotate``), with the context-extension scalings of :class:`RotaryOptions` (PI, NTK, YaRN)."""

    float_positions = True  # angles p * theta_m are continuous in the positions
    Options = RotaryOptions

    def __init__(self, shape: EncodingShape, options: RotaryOptions | None = None) -> None:
        super().__init__(shape, options)
        check_rope_options(self.options, self.head_width)

    def frequencies(self, positions: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Inverse frequencies (K,) float64 and attention factor for these positions (B, T),
        with the scaling of the module's mode (``train_scaling``)."""
        options = self.options.in_training() if self.training else self.options
        seq_len = None
        if options.scaling == "dynamic":
            # HF's dynamic_rope_update: the largest position id seen + 1, over the whole batch
            seq_len = positions.max() + 1
        return rope_inverse_frequencies(
            self.head_width, options, self.max_position, seq_len, positions.device
        )

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (B, T, K) float64 of p * theta_m, times the attention factor."""
        inv_freq, factor = self.frequencies(positions)
        # float64 angles (see base.inverse_frequencies)
        angles = positions.to(torch.float64).unsqueeze(-1) * inv_freq  # (B, T, K)
        cos, sin = angles.cos(), angles.sin()
        if factor != 1.0:
            cos, sin = cos * factor, sin * factor
        return cos, sin

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.angles(positions)
        cos = cos.to(q.dtype).unsqueeze(1)  # (B, 1, T, K): shared by all heads
        sin = sin.to(q.dtype).unsqueeze(1)
        return _rotate_pairs(q, cos, sin), _rotate_pairs(k, cos, sin)
