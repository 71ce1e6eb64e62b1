"""Grid positions and the 2D encodings: properties and independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numerics import EPS32, EPS64, f64_atol

from randpos.core.fields import ConfigError
from randpos.encodings import PE_NAMES_2D, build_encoding
from randpos.encodings.base import EncodingShape
from randpos.model import ModelConfig, Transformer
from randpos.model.attention import attend
from randpos.positions.grid import (
    GRID_MODES,
    check_grid_positions,
    combine_axes,
    grid_positions,
    sample_grid_positions,
)
from randpos.workloads import resolve_config

ENCODINGS_2D = [n for n in PE_NAMES_2D if n != "none"]
ROTARY_2D = ["rope2d_axial", "rope2d_mixed"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def angle_atol(max_angle: float, factor: float = 1.0) -> float:
    """float64 cos/sin of angles p * f (|angle| <= max_angle) against an oracle computing the
    frequencies f by another formula (numpy's pow or torch's, 1 / x or x^-1, FiT's rewritten
    ntk/yarn forms): f differs by <= 6 ulps and p * f by <= 7 ulps of the angle, cos and sin by
    <= 1 ulp each, times the cos/sin factor (yarn's 0.1 ln s + 1, its own ulp or two):
    EPS64 * (8 * max_angle + 4) * factor."""
    return EPS64 * (8 * max_angle + 4) * factor


def encoding(name: str, *, width=32, heads=2, layers=2, L=64, theta=100.0, **options):
    """``name`` built for a bidirectional model of this shape; ``options`` are pe options
    (``theta`` 100 as rope-vit's axial RoPE)."""
    shape = EncodingShape(width=width, num_heads=heads, num_layers=layers, max_position=L)
    pe = build_encoding(name, shape, {"theta": theta, **options})
    pe.reset_parameters(gen(1))
    return pe


# --- grid positions ---------------------------------------------------------------------------


def test_grid_positions_are_row_major_y_x():
    p = grid_positions(2, 3, 4)
    assert p.shape == (2, 12, 2) and p.dtype == torch.long
    for r in range(3):
        for c in range(4):
            assert p[1, r * 4 + c].tolist() == [r, c]


@pytest.mark.parametrize("sampler", ["positions", "float", "pose"])
def test_random_grid_rows_share_y_columns_share_x(sampler):
    p = sample_grid_positions("random", 5, 3, 4, 16, gen(), sampler=sampler)
    grid = p.view(5, 3, 4, 2)
    assert (grid[..., 0] == grid[:, :, :1, 0]).all()  # a row's tokens share y
    assert (grid[..., 1] == grid[:, :1, :, 1]).all()  # a column's tokens share x
    ys, xs = grid[:, :, 0, 0], grid[:, 0, :, 1]
    assert (ys.diff(dim=1) > 0).all() and (xs.diff(dim=1) > 0).all()  # sorted, distinct
    assert p.min() >= 0 and p.max() < 16
    assert not torch.equal(ys[0], ys[1]) or not torch.equal(xs[0], xs[1])  # one draw per sample


def test_random_grid_is_seeded_and_shared_on_request():
    a = sample_grid_positions("random", 4, 5, 5, 32, gen(3))
    b = sample_grid_positions("random", 4, 5, 5, 32, gen(3))
    assert torch.equal(a, b)
    shared = sample_grid_positions("random", 4, 5, 5, 32, gen(3), per_sample=False)
    assert (shared == shared[:1]).all()


def test_spread_interpolate_and_contiguous_modes():
    assert torch.equal(sample_grid_positions("contiguous", 1, 2, 3, 8), grid_positions(1, 2, 3))
    spread = sample_grid_positions("spread", 1, 4, 2, 16).view(4, 2, 2)
    assert spread[:, 0, 0].tolist() == [0, 4, 8, 12] and spread[0, :, 1].tolist() == [0, 8]
    pi = sample_grid_positions("interpolate", 1, 16, 4, 16, train_side=8).view(16, 4, 2)
    assert pi.dtype == torch.float64
    # exact: i * 8 / 16 are binary fractions
    assert pi[:, 0, 0].tolist() == [i * 0.5 for i in range(16)]  # 16 rows squeezed into [0, 8)
    assert pi[0, :, 1].tolist() == [0.0, 1.0, 2.0, 3.0]  # a smaller axis keeps its integers
    assert set(GRID_MODES) == {"random", "contiguous", "spread", "interpolate"}


def test_grid_errors_name_the_axis_and_field():
    with pytest.raises(ValueError, match="grid height h 20 exceeds max_position=16"):
        sample_grid_positions("contiguous", 1, 20, 4, 16)
    with pytest.raises(ValueError, match="grid width w 17"):
        sample_grid_positions("random", 1, 4, 17, 16, gen())
    with pytest.raises(ValueError, match="train_side"):
        sample_grid_positions("interpolate", 1, 4, 4, 16)
    with pytest.raises(ValueError, match="unknown grid position mode"):
        sample_grid_positions("arange", 1, 4, 4, 16)
    with pytest.raises(ValueError, match=r"positions must have shape \(B, N=6, 2\)"):
        check_grid_positions(torch.zeros(1, 5, 2), 2, 3, 8)
    with pytest.raises(ValueError, match="max_position=8"):
        check_grid_positions(torch.full((1, 6, 2), 8), 2, 3, 8)
    with pytest.raises(ValueError, match="ys and xs"):
        combine_axes(torch.zeros(2, 3), torch.zeros(3, 3))


# --- sincos2d and learned2d -------------------------------------------------------------------


def dit_sincos_oracle(width: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """DiT's get_2d_sincos_pos_embed_from_grid, re-derived: x channels first."""

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(width // 2, xs), one_d(width // 2, ys)], axis=1)


def test_sincos2d_equals_dit_on_a_non_square_grid():
    pe = encoding("sincos2d", width=32)
    p = grid_positions(1, 3, 5) * torch.tensor([2, 3])  # spaced, non-square
    got = pe.embed(torch.zeros(1, 15, 32, dtype=torch.float64), p)[0].numpy()
    want = dit_sincos_oracle(32, p[0, :, 0].numpy(), p[0, :, 1].numpy())
    # float64 on both sides; the largest frequency is 10000^0 = 1, so |angle| <= max position
    np.testing.assert_allclose(got, want, rtol=0, atol=angle_atol(float(p.max())))


def test_learned2d_rows_and_linear_interpolation():
    pe = encoding("learned2d", width=8, L=10)
    p = torch.tensor([[[2, 7], [0, 9]]])
    got = pe.embed(torch.zeros(1, 2, 8), p)[0]
    want = torch.stack([pe.table_y[2] + pe.table_x[7], pe.table_y[0] + pe.table_x[9]])
    # exact: rows are read, not computed, and 0 + (T_y + T_x) is the one correctly rounded sum
    assert torch.equal(got, want)
    # exact too: a float position on a row reads T[p] * 1 + T[p + 1] * 0, correctly rounded ops
    # that give T[p] back bit for bit
    assert torch.equal(pe.embed(torch.zeros(1, 2, 8), p.double())[0], got)  # integer floats
    # the interpolation against its formula, both in float64 (tables too): three roundings of
    # values of size max|T|
    pe.double()
    half = pe.embed(torch.zeros(1, 1, 8, dtype=torch.float64), torch.tensor([[[2.25, 7.0]]]))
    expect = 0.75 * pe.table_y[2] + 0.25 * pe.table_y[3] + pe.table_x[7]
    scale = max(pe.table_y.abs().max().item(), pe.table_x.abs().max().item())
    torch.testing.assert_close(half[0, 0], expect, rtol=0, atol=f64_atol(scale, depth=3))


# --- the rotary pair --------------------------------------------------------------------------


def scores(pe, q, k, positions, layer=0):
    qr, kr = pe.rotate(q, k, positions, layer)
    return qr @ kr.transpose(-1, -2)


def rotated_scores_atol(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> float:
    """How far the float64 scores of q, k rotated at ``positions`` can be from the exact ones.

    Every 2D rotary frequency has |f| <= 1 (axial: theta^0 = 1 the largest; mixed: magnitudes
    theta^(-4m/d) <= 1 on a unit direction), so every angle is at most P = max(|y| + |x|). The
    computed angle is off by <= 2 P EPS64 (a product, or mixed's two-term sum), cos and sin by
    one more ulp, and the rotated (a cos - b sin, b cos + a sin) by two more: each rotated
    coordinate by <= EPS64 (2 P + 3) (|a| + |b|) of its pair (a, b). A score is then off by
    <= 2 EPS64 (2 P + 3) sum_pairs (|q_a| + |q_b|)(|k_a| + |k_b|) (a rotated q against a rotated
    k, and the other way round), plus the dot product's own EPS64 sqrt(d) sum_c |q_c k_c|."""
    P = float(positions.abs().sum(-1).max())
    d = q.shape[-1]
    qp, kp = (t.abs().unflatten(-1, (-1, 2)).sum(-1) for t in (q, k))  # (B, H, N, d/2)
    pairs = float((qp @ kp.transpose(-1, -2)).max())
    terms = float((q.abs() @ k.abs().transpose(-1, -2)).max())
    return EPS64 * (2 * (2 * P + 3) * pairs + math.sqrt(d) * terms)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ROTARY_2D)
def test_rotary_2d_depends_only_on_offsets(name):
    pe = encoding(name)
    q = torch.randn(2, 2, 12, 16, generator=gen(2), dtype=torch.float64)
    k = torch.randn(2, 2, 12, 16, generator=gen(3), dtype=torch.float64)
    p = sample_grid_positions("random", 2, 3, 4, 40, gen(4))
    shifted = p + torch.tensor([7, 11])
    # the same offsets at other angles: each side is off the exact scores by rounding only
    atol = 2 * rotated_scores_atol(q, k, shifted)  # shifted has the larger angles
    base = scores(pe, q, k, p, 1)
    torch.testing.assert_close(base, scores(pe, q, k, shifted, 1), rtol=0, atol=atol)
    swapped = p.flip(-1)  # a different layout of the same offsets changes the scores
    assert (base - scores(pe, q, k, swapped, 1)).abs().max() > 100 * atol


def test_axial_first_half_follows_x_second_half_y():
    pe = encoding("rope2d_axial", width=16, heads=1)
    q = torch.randn(1, 1, 1, 16, generator=gen(5), dtype=torch.float64)
    # exact: a half whose axis did not move goes through the same float64 ops on the same
    # inputs (the pairs rotate independently); the other half turns by 5 f (a move of 5)
    base = pe.rotate(q, q, torch.tensor([[[3, 4]]]), 0)[0]
    move_x = pe.rotate(q, q, torch.tensor([[[3, 9]]]), 0)[0]
    move_y = pe.rotate(q, q, torch.tensor([[[8, 4]]]), 0)[0]
    assert torch.equal(base[..., 8:], move_x[..., 8:]) and not torch.equal(
        base[..., :8], move_x[..., :8]
    )
    assert torch.equal(base[..., :8], move_y[..., :8]) and not torch.equal(
        base[..., 8:], move_y[..., 8:]
    )


def attention_atol(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    """float32 softmax(q k^T / sqrt(d)) v along two code paths (SDPA's fused kernel, the explicit
    product): the logits differ by <= EPS32 sqrt(d) max|logit| (a dot product of length d), the
    softmax turns a logit error e into an output error <= 2 e max|v|, and the exps (another
    vector kernel) and the weighted sum over T keys add EPS32 (sqrt(T) + 2) max|v|:
    EPS32 max|v| (2 sqrt(d) max(1, max|logit|) + sqrt(T) + 2)."""
    q, k, v = q.detach(), k.detach(), v.detach()
    d, T = q.shape[-1], k.shape[-2]
    logits = float((q @ k.transpose(-1, -2)).abs().max()) / math.sqrt(d)
    top = float(v.abs().max())
    return EPS32 * top * (2 * math.sqrt(d) * max(1.0, logits) + math.sqrt(T) + 2)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ENCODINGS_2D)
def test_fast_path_equals_math_path_and_gradients_are_finite(name):
    pe = encoding(name)
    p = sample_grid_positions("random", 2, 4, 4, 64, gen(6))
    x = torch.randn(2, 16, 32, generator=gen(7), requires_grad=True)
    q = k = v = x.view(2, 16, 2, 16).transpose(1, 2)
    if pe.has_embed:
        h = pe.embed(x, p)
        q = k = v = h.view(2, 16, 2, 16).transpose(1, 2)
    if pe.has_rotate:
        q, k = pe.rotate(q, k, p, 1)
    with torch.no_grad():  # with a gradient to take, "fast" falls back to the math path on CPU
        fast = attend(q, k, v, backend="fast")
    math_ = attend(q, k, v, backend="math")
    torch.testing.assert_close(fast, math_, rtol=0, atol=attention_atol(q, k, v))
    math_.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    for param in pe.parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ENCODINGS_2D)
def test_a_large_grid_runs(name):
    pe = encoding(name, L=64)
    p = grid_positions(1, 48, 48)
    x = torch.randn(1, 48 * 48, 32, generator=gen(8))
    q = x.view(1, -1, 2, 16).transpose(1, 2)
    out = pe.embed(x, p) if pe.has_embed else pe.rotate(q, q, p, 0)[0]
    assert torch.isfinite(out).all()


@pytest.mark.numerics
def test_mixed_init_directions_are_per_head_and_seeded():
    a, b = encoding("rope2d_mixed", theta=10.0), encoding("rope2d_mixed", theta=10.0)
    assert torch.equal(a.freqs, b.freqs)  # exact: one code path, the same seed
    # the init against its closed form, in float64 (a float64 module draws the same angles)
    a.double()
    a.reset_parameters(gen(1))
    f = a.freqs.detach()  # (layers, H, d/2, 2) float64
    mag = torch.pow(10.0, -4.0 * torch.arange(4, dtype=torch.float64) / 16)
    norms = f[..., :4, :].norm(dim=-1)  # the first quarter: magnitude mag at angle a
    # mag * cos, mag * sin (a product after a cos or sin: 2 ulps each), then the norm (2 more)
    atol = f64_atol(float(mag.max()), depth=4)
    torch.testing.assert_close(norms, mag.expand_as(norms), rtol=0, atol=atol)
    assert (f[0, 0] - f[0, 1]).abs().max() > 100 * atol  # each head its own direction


# --- per-axis frequency transforms (FiT's decoupled baselines) --------------------------------


def fit_oracle(kind, head, theta, s, L0, beta_fast=32.0, beta_slow=1.0):
    """FiT's formulas for one axis of rotary width D = head / 2, in numpy."""
    D = head // 2
    base = 1.0 / theta ** (np.arange(0, D, 2) / D)
    if s <= 1 or kind == "none":
        return base, 1.0
    if kind == "linear":
        return base / s, 1.0
    if kind == "ntk":
        new_theta = theta * s ** (D / (D - 2))
        return 1.0 / new_theta ** (np.arange(0, D, 2) / D), 1.0

    def dim_of(rot):
        return D * math.log(L0 / (rot * 2 * math.pi)) / (2 * math.log(theta))

    low, high = max(math.floor(dim_of(beta_fast)), 0), min(math.ceil(dim_of(beta_slow)), D - 1)
    ramp = np.clip((np.arange(D // 2) - low) / (high - low), 0, 1)
    return base / s * ramp + base * (1 - ramp), 0.1 * math.log(s) + 1.0


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["linear", "ntk", "yarn"])
@pytest.mark.parametrize("side", [8, 12, 16])
def test_axis_transforms_match_fit(kind, side):
    pe = encoding(
        "rope2d_axial",
        width=64,
        heads=2,
        theta=10000.0,
        scaling=kind,
        original_max_position_embeddings=8,
    )
    p = grid_positions(1, side, 6).double()  # y stretched by side / 8, x not at all
    cos, sin = pe.angles(p)  # (1, N, d/2): x pairs, then y pairs
    K = 8
    fy, my = fit_oracle(kind, 32, 10000.0, side / 8, 8)
    fx, mx = fit_oracle(kind, 32, 10000.0, 1.0, 8)
    py, px = p[0, :, 0].numpy(), p[0, :, 1].numpy()
    # float64 on both sides; every frequency is <= theta^0 = 1, so |angle| <= the position
    ax, ay = angle_atol(float(px.max()), mx), angle_atol(float(py.max()), my)
    np.testing.assert_allclose(
        cos[0, :, :K].numpy(), mx * np.cos(np.outer(px, fx)), rtol=0, atol=ax
    )
    np.testing.assert_allclose(
        sin[0, :, K:].numpy(), my * np.sin(np.outer(py, fy)), rtol=0, atol=ay
    )


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["linear", "ntk", "yarn"])
def test_transforms_are_plain_axial_within_the_training_grid(kind):
    plain = encoding("rope2d_axial", theta=10000.0)
    scaled = encoding(
        "rope2d_axial", theta=10000.0, scaling=kind, original_max_position_embeddings=8
    )
    p = sample_grid_positions("random", 2, 5, 6, 8, gen(9))
    # exact ("bit for bit", the module's promise): at s = 1 torch.where selects the plain
    # frequencies and the factor 1, so both sides run the same cos/sin on the same float64
    # tensors (same values, same shapes) and multiply by exactly 1
    for a, b in zip(plain.angles(p), scaled.angles(p), strict=True):
        assert torch.equal(a, b)


def test_bad_2d_settings_name_the_field():
    with pytest.raises(ValueError, match="divisible by 4"):
        encoding("rope2d_axial", width=24, heads=4)
    with pytest.raises(ValueError, match="pe.scaling='dynamic'"):
        encoding("rope2d_axial", scaling="dynamic", original_max_position_embeddings=8)
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        encoding("rope2d_axial", scaling="ntk")
    with pytest.raises(ValueError, match="rope2d_mixed learns"):
        encoding("rope2d_mixed", scaling="linear", original_max_position_embeddings=8)
    with pytest.raises(ValueError, match="sincos2d needs width divisible by 4"):
        encoding("sincos2d", width=30, heads=1)


def test_models_refuse_the_other_kind_of_encoding():
    with pytest.raises(ValueError, match="'sincos2d' is a 2D .* takes: .*rope"):
        Transformer(ModelConfig(pe="sincos2d"))
    with pytest.raises(ConfigError, match="'rope2d_axial' is a 2D"):
        resolve_config({"pe": "rope2d_axial"})
    with pytest.raises(ConfigError, match="'rope' is a 1D .* takes: .*rope2d_axial"):
        resolve_config(
            {
                "workload": "vit",
                "pe": "rope",
                "max_train_length": 16,
                "eval_max_length": 32,
                "max_position": 16,
                "dropout": 0,
            }
        )
