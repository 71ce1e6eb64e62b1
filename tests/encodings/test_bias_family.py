"""The bias-family zoo (t5, kerple_log, kerple_power, fire, sandwich) against independent oracles.

Oracles: Hugging Face's T5 bucket function, brute-force double loops over the papers' formulas
(plain Python floats), and our ``alibi`` for KERPLE's power kernel at p = 1. Properties: shift
invariance, signs and monotonicity, per-layer state, constraints, finite gradients.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from numerics import EPS64, f64_atol, magnitude

from randpos.encodings import fire as fire_module
from randpos.encodings import get_encoding
from randpos.encodings.alibi import alibi_slopes
from randpos.encodings.kerple import POWER_MAX, SCALE_MIN, SHAPE_MIN
from randpos.encodings.t5 import relative_position_bucket
from randpos.model import ModelConfig
from randpos.positions import randomized_distances, randomized_positions

CONFIG = ModelConfig(max_position=2048)
B, H, T, L = 2, CONFIG.num_heads, 9, CONFIG.num_layers
d = CONFIG.width // H
ZOO = ("t5", "kerple_log", "kerple_power", "fire", "sandwich")
TRAINABLE = ("t5", "kerple_log", "kerple_power", "fire")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(name: str, config: ModelConfig = CONFIG, seed: int = 0, double: bool = True):
    pe = get_encoding(name)(config)
    pe.reset_parameters(gen(seed))
    return pe.double() if double else pe


def probe(batch: int = B, length: int = T, dtype=torch.float64) -> torch.Tensor:
    """q (= k) of the right shape; every encoding here ignores its values."""
    return torch.zeros(batch, H, length, d, dtype=dtype)


def positions(max_position: int = 1000, seed: int = 0, batch: int = B, length: int = T):
    return randomized_positions(batch, length, max_position, gen(seed), per_sequence=True)


def float_positions(seed: int = 0, scale: float = 700.0) -> torch.Tensor:
    """Sorted float positions (Random Float Sampling style), some gaps below 0.5."""
    g = gen(seed)
    values = torch.rand(B, T, generator=g, dtype=torch.float64) * scale
    values[:, 1] = values[:, 0] + 0.3  # a sub-half-unit gap: exercises KERPLE's floor at 0
    return values.sort(dim=-1).values


def bias(pe, pos, layer=0, distances=None, dtype=torch.float64) -> torch.Tensor:
    q = probe(pos.shape[0], pos.shape[1], dtype)
    out = pe.bias(q, q, pos, layer, distances)
    return out.expand(pos.shape[0], H, pos.shape[1], pos.shape[1])


def offset_value(table: torch.Tensor, delta: int) -> int:
    """Signed distance of offset delta = j - i under a distance table: +a right, -b left."""
    return int(table[0, delta]) if delta >= 0 else -int(table[1, -delta])


# --- rounding bounds (float64: the encodings under test and the oracles) ------------------------
# numerics.f32_atol's bound in float64, EPS64 x depth x sqrt(width) x scale, with the scale of
# each family's terms:
#   t5:       a table lookup (exact);
#   kerple:   r1 times a log1p or pow of an exactly computed distance: a few ulps of the value,
#             plus the ulp of ln(1 + x) at x ~ 0 (|r1| EPS64) for the oracle's log;
#   fire:     the input x (c |delta|, log1p, the normalizer, the division) then the MLP, whose
#             32-wide output sums terms of size sum_w |w2| (|w1| x + |b1|) + |b2|;
#   sandwich: cos(a - b) = cos a cos b + sin a sin b summed over K' = d/2 = 4 frequencies (8
#             products, |cos a cos b| + |sin a sin b| <= 1 each): angles p w of positions < 2048
#             are off by up to EPS64 x 2048, so each frequency's term by as much.
ANGLE = 2048.0


def mlp_scale(pe, layer: int, x: torch.Tensor) -> float:
    """max over heads of sum_w |w2_hw| (|w1_w| max|x| + |b1_w|) + |b2_h|: the size of the terms
    of FIRE's MLP output at the inputs ``x``."""
    w1, b1 = pe.w1[layer].detach().abs(), pe.b1[layer].detach().abs()
    w2, b2 = pe.w2[layer].detach().abs(), pe.b2[layer].detach().abs()
    return float((w2 @ (w1 * magnitude(x) + b1) + b2).max())


def zoo_atol(name: str, pe, pos: torch.Tensor, out: torch.Tensor, layer: int = 0) -> float:
    """Rounding bound of the float64 bias ``out`` of encoding ``name`` at positions ``pos``
    (the list above)."""
    if name == "sandwich":  # head scales <= 1
        return f64_atol(ANGLE * (d // 2), depth=4, width=d)
    if name == "fire":
        x = pe.mlp_input(pos, layer, torch.float64)
        return f64_atol(mlp_scale(pe, layer, x), depth=8, width=fire_module.MLP_WIDTH)
    if name.startswith("kerple"):
        return f64_atol(magnitude(out) + magnitude(pe.constrained()[0]), depth=4)
    return f64_atol(out)  # t5


# --- registry facts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count", "floats", "distances"),
    [
        ("t5", 32 * H, False, False),
        ("kerple_log", 2 * H, True, True),
        ("kerple_power", 2 * H, True, True),
        ("fire", L * (32 + 32 + 32 * H + H + 2), True, False),
        ("sandwich", 0, True, True),
    ],
)
def test_parameter_counts_and_capabilities(name, count, floats, distances):
    cls = get_encoding(name)
    pe = cls(CONFIG)
    assert sum(p.numel() for p in pe.parameters()) == count
    assert cls.float_positions is floats
    assert cls.uses_distances is distances
    assert cls.randomizable and not cls.causal_only
    assert pe.has_bias and not pe.has_embed and not pe.has_rotate


@pytest.mark.numerics
@pytest.mark.parametrize("name", ZOO)
def test_bias_is_a_function_of_the_positions_passed(name):
    pe = build(name)
    pos = positions()
    out = bias(pe, pos)
    atol = zoo_atol(name, pe, pos, out)
    assert (out - bias(pe, pos * 2)).abs().max() > 100 * atol
    # shared positions (1, T) broadcast over the batch and give the per-row result (computed
    # with other shapes, so equal to rounding)
    shared = pos[:1]
    torch.testing.assert_close(bias(pe, shared)[0], out[0], atol=atol, rtol=0)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ZOO)
def test_shift_invariance(name):
    pe = build(name)
    # FIRE is shift invariant only while every query position is below its threshold L = 512
    top = 200 if name == "fire" else 1000
    pos = positions(max_position=top)
    shift = 300 if name == "fire" else 1000
    want = bias(pe, pos)
    atol = zoo_atol(name, pe, pos + shift, want)
    torch.testing.assert_close(bias(pe, pos + shift), want, rtol=0, atol=atol)


@pytest.mark.parametrize("name", TRAINABLE)
def test_gradients_are_finite_and_reach_every_parameter(name):
    pe = build(name, double=False)
    pos = torch.cat([positions(max_position=2048)[:1], torch.arange(T).unsqueeze(0)])  # incl. δ=1
    for layer in range(L):
        bias(pe, pos, layer, dtype=torch.float32).square().sum().backward()
    for pname, p in pe.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), pname
        assert bool(p.grad.abs().sum() > 0), pname


@pytest.mark.parametrize("name", [n for n in ZOO if get_encoding(n).float_positions])
def test_float_positions_are_accepted_and_continuous(name):
    pe = build(name)
    pos = float_positions()
    out = bias(pe, pos)
    assert bool(torch.isfinite(out).all())
    nudged = bias(pe, pos + torch.linspace(0, 1e-7, T, dtype=torch.float64))
    torch.testing.assert_close(nudged, out, rtol=0, atol=1e-5)


# --- t5 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_bucket_equals_huggingface(bidirectional):
    transformers_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    hf = transformers_t5.T5Attention._relative_position_bucket
    relative = torch.arange(-1000, 1001)
    want = hf(relative, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    got = relative_position_bucket(relative, bidirectional=bidirectional)
    assert torch.equal(got, want)
    # and the module's precomputed lookup (L = 2048 covers |r| <= 2047) agrees on that range
    pe = build("t5", dataclasses.replace(CONFIG, causal=not bidirectional))
    assert torch.equal(pe.buckets[relative + CONFIG.max_position - 1], want)


def test_t5_bucket_vectors():
    # the reference notes' float64 vectors (avoiding bidirectional |r| in {16, 32, 64})
    bidirectional = {-200: 15, -128: 15, -12: 9, -11: 8, -8: 8, -7: 7, -1: 1, 0: 0, 1: 17,
                     7: 23, 8: 24, 12: 25, 128: 31, 200: 31}  # fmt: skip
    causal = {5: 0, 0: 0, -1: 1, -15: 15, -16: 16, -20: 17, -32: 21, -64: 26, -100: 30,
              -127: 31, -1000: 31}  # fmt: skip
    for table, bidi in ((bidirectional, True), (causal, False)):
        r = torch.tensor(list(table))
        assert relative_position_bucket(r, bidirectional=bidi).tolist() == list(table.values())


@pytest.mark.parametrize("causal", [False, True])
def test_t5_bias_is_the_table_at_the_bucket(causal):
    config = dataclasses.replace(CONFIG, causal=causal)
    pe = build("t5", config, seed=3)
    pos = positions(max_position=300)
    for layer in (0, 4):  # one table shared by every layer
        out = bias(pe, pos, layer)
        for b in range(B):
            for i in range(T):
                for j in range(T):
                    r = torch.tensor(int(pos[b, j]) - int(pos[b, i]))
                    bucket = int(relative_position_bucket(r, bidirectional=not causal))
                    for h in range(H):
                        assert out[b, h, i, j].item() == pe.table[bucket, h].item()


def test_t5_bucket_properties():
    r = torch.arange(-3000, 3001)
    bidi = relative_position_bucket(r, bidirectional=True)
    causal = relative_position_bucket(r, bidirectional=False)
    assert int(bidi.min()) == 0 and int(bidi.max()) == 31
    assert int(causal.min()) == 0 and int(causal.max()) == 31
    assert bool((causal[r > 0] == 0).all())  # future keys: bucket 0
    left, right = bidi[:3000].flip(0), bidi[3001:]  # |r| = 1..3000 on each side
    assert bool((left.diff() >= 0).all()) and bool((right.diff() >= 0).all())
    assert bool((right == left + 16).all())  # the sides use disjoint halves
    assert causal[3000 - 15 : 3001].flip(0).tolist() == list(range(16))  # exact region


def test_t5_init_and_integer_only():
    pe = build("t5")
    assert pe.table.shape == (32, H)
    assert float(pe.table.detach().std()) == pytest.approx(CONFIG.width**-0.5, rel=0.2)
    with pytest.raises(ValueError, match="integer"):
        bias(pe, float_positions())


# --- kerple -------------------------------------------------------------------------------------


def kerple_oracle(name, r1, r2, rel, bidirectional) -> list:
    """Brute force over (H, T, T) nested lists from a (T, T) table of p_j - p_i."""
    out = []
    for h in range(len(r1)):
        rows = []
        for i in range(len(rel)):
            row = []
            for j in range(len(rel)):
                delta = abs(rel[i][j])
                if bidirectional and rel[i][j] < 0:
                    delta = max(delta - 0.5, 0.0)
                if name == "kerple_log":
                    row.append(-r1[h] * math.log(1 + r2[h] * delta))
                else:
                    row.append(-r1[h] * delta ** r2[h])
            rows.append(row)
        out.append(rows)
    return out


def kerple_tolerances(r1: list) -> dict:
    """Oracle vs module, both float64: log1p / pow within an ulp or two of the same exactly
    computed distance, times r1 (one more rounding): 4 EPS64 relative; the oracle's
    ln(1 + x) for small x adds up to an ulp of 1 (times |r1|) absolute."""
    return {"rtol": 4 * EPS64, "atol": 4 * EPS64 * max(abs(r) for r in r1)}


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["kerple_log", "kerple_power"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["int", "float"])
def test_kerple_matches_brute_force(name, causal, kind):
    pe = build(name, dataclasses.replace(CONFIG, causal=causal), seed=1)
    r1, r2 = (t.tolist() for t in pe.constrained())
    pos = positions(max_position=2048) if kind == "int" else float_positions()
    out = bias(pe, pos, layer=3)
    for b in range(B):
        p = pos[b].tolist()
        rel = [[p[j] - p[i] for j in range(T)] for i in range(T)]
        want = torch.tensor(kerple_oracle(name, r1, r2, rel, not causal), dtype=torch.float64)
        torch.testing.assert_close(out[b], want, **kerple_tolerances(r1))


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["kerple_log", "kerple_power"])
@pytest.mark.parametrize("both_sides", [False, True])
def test_kerple_distance_reading_matches_brute_force(name, both_sides):
    pe = build(name, seed=2)
    r1, r2 = (t.tolist() for t in pe.constrained())
    table = randomized_distances(1, T, 2048, gen(6), both_sides=both_sides)
    rel = [[offset_value(table[0], j - i) for j in range(T)] for i in range(T)]
    want = torch.tensor(kerple_oracle(name, r1, r2, rel, True), dtype=torch.float64)
    got = bias(pe, positions(), 0, table)[0]
    torch.testing.assert_close(got, want, **kerple_tolerances(r1))


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("heads", [8, 6])
def test_kerple_power_at_p1_with_alibi_slopes_is_alibi(dtype, heads):
    config = ModelConfig(width=heads * d, num_heads=heads, max_position=2048)
    kerple = build("kerple_power", config).to(dtype)
    alibi = build("alibi", config).to(dtype)
    with torch.no_grad():
        kerple.r1.copy_(torch.tensor(alibi_slopes(heads)))
        kerple.r2.fill_(1.0)
    q = torch.zeros(B, heads, T, d, dtype=dtype)
    pos = positions(max_position=2048)
    # the same numbers but for pow(delta, 1), within an ulp of delta in a vectorized kernel (the
    # products by power-of-two slopes are exact): rtol one eps of the dtype
    close = {"rtol": torch.finfo(dtype).eps, "atol": 0.0}
    torch.testing.assert_close(kerple.bias(q, q, pos, 0), alibi.bias(q, q, pos, 0), **close)
    table = randomized_distances(L, T, 2048, gen(4), both_sides=True)
    for layer in (0, 2):
        torch.testing.assert_close(
            kerple.bias(q, q, pos, layer, table), alibi.bias(q, q, pos, layer, table), **close
        )


@pytest.mark.numerics
def test_kerple_power_causal_at_p1_is_the_original_alibi():
    # causal: no left offset (the paper's distance), i.e. Press et al.'s -m |i - j|
    pe = build("kerple_power", dataclasses.replace(CONFIG, causal=True))
    slopes = torch.tensor(alibi_slopes(H), dtype=torch.float64)
    with torch.no_grad():
        pe.r1.copy_(slopes)
        pe.r2.fill_(1.0)
    pos = positions()
    rel = (pos.unsqueeze(1) - pos.unsqueeze(2)).abs().double().unsqueeze(1)
    # pow(delta, 1) within an ulp of delta, times a power of two: rtol EPS64
    want = -slopes.view(1, H, 1, 1) * rel
    torch.testing.assert_close(bias(pe, pos), want, rtol=EPS64, atol=0)


@pytest.mark.parametrize("name", ["kerple_log", "kerple_power"])
def test_kerple_properties(name):
    pe = build(name, seed=5)
    pos = torch.arange(0, 2048, 7).unsqueeze(0)  # a query at 0 sees keys ever further right
    out = bias(pe, pos)[0]  # (H, T', T')
    assert bool((out.diagonal(dim1=-2, dim2=-1) == 0).all())
    assert bool((out <= 0).all())
    assert bool((out[:, 0].diff(dim=-1) < 0).all())  # strictly decreasing with the distance
    # one parameter set for all layers
    assert torch.equal(bias(pe, positions(), 0), bias(pe, positions(), 4))


def test_kerple_log_is_first_order_alibi():
    pe = build("kerple_log")
    with torch.no_grad():
        pe.r2.fill_(SHAPE_MIN)
    r1, r2 = pe.constrained()
    pos = torch.arange(T).unsqueeze(0)
    linear = -(r1 * r2).view(1, H, 1, 1) * (pos.unsqueeze(1) - pos.unsqueeze(2)).abs()
    torch.testing.assert_close(bias(pe, pos)[:1].triu(), linear.double().triu(), rtol=0.05, atol=0)


@pytest.mark.parametrize("name", ["kerple_log", "kerple_power"])
def test_kerple_init_and_constraints(name):
    pe = build(name, double=False)
    r1_max, r2_max = (2.0, 1.0) if name == "kerple_log" else (1.0, 2.0)
    assert bool(((pe.r1 >= SCALE_MIN) & (pe.r1 <= r1_max)).all())
    assert bool(((pe.r2 >= SHAPE_MIN) & (pe.r2 <= r2_max)).all())
    assert not torch.equal(pe.r1, build(name, seed=1, double=False).r1)  # drawn from the seed
    # an optimizer step that pushes both parameters far below zero (raising every bias)
    optimizer = torch.optim.SGD(pe.parameters(), lr=1e4)
    pos = torch.arange(0, 2048, 100).unsqueeze(0)  # distances > 1: d(bias)/d(r2) < 0 for both
    (-bias(pe, pos, dtype=torch.float32).sum()).backward()
    optimizer.step()
    assert bool((pe.r1 < 0).all()) and bool((pe.r2 < 0).all())
    r1, r2 = pe.constrained()
    assert bool((r1 == SCALE_MIN).all()) and bool((r2 == SHAPE_MIN).all())
    optimizer.zero_grad()
    out = bias(pe, pos, dtype=torch.float32)
    assert bool(torch.isfinite(out).all()) and bool((out <= 0).all())
    # straight-through: a parameter beyond its bound still gets a gradient, so it can come back
    out.sum().backward()
    assert bool((pe.r1.grad != 0).all()) and bool((pe.r2.grad != 0).all())
    if name == "kerple_power":  # and the exponent's upper bound
        with torch.no_grad():
            pe.r2.fill_(5.0)
        assert bool((pe.constrained()[1] == POWER_MAX).all())


# --- fire ---------------------------------------------------------------------------------------


def fire_oracle(pe, pos: list, layer: int) -> torch.Tensor:
    """The formula with Python floats, one pair at a time: (H, T, T)."""
    c = pe.c[layer].item()
    threshold = abs(pe.l_multiplier[layer].item() * 512.0)
    w1, b1 = pe.w1[layer].tolist(), pe.b1[layer].tolist()
    w2, b2 = pe.w2[layer].tolist(), pe.b2[layer].tolist()
    n = len(pos)
    out = torch.zeros(H, n, n, dtype=torch.float64)
    for i in range(n):
        normalizer = math.log(abs(c * max(pos[i], threshold)) + 1) + 1e-6
        for j in range(n):
            x = math.log(abs(c * (pos[i] - pos[j])) + 1) / normalizer
            hidden = [max(0.0, w * x + a) for w, a in zip(w1, b1, strict=True)]
            for h in range(H):
                out[h, i, j] = sum(v * u for v, u in zip(w2[h], hidden, strict=True)) + b2[h]
    return out


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["int", "float"])
def test_fire_matches_brute_force(kind):
    pe = build("fire", seed=7)
    with torch.no_grad():  # move off the init values so c and L matter per layer
        pe.c.copy_(torch.linspace(0.05, 0.5, L))
        pe.l_multiplier.copy_(torch.linspace(0.1, 1.5, L))
    pos = positions(max_position=2048) if kind == "int" else float_positions(scale=2000.0)
    for layer in (0, 3):
        out = bias(pe, pos, layer)
        atol = zoo_atol("fire", pe, pos, out, layer)  # log1p vs ln(1 + x), then the MLP
        for b in range(B):
            want = fire_oracle(pe, pos[b].tolist(), layer)
            torch.testing.assert_close(out[b], want, rtol=0, atol=atol)
    change = (bias(pe, pos, 0) - bias(pe, pos, 3)).abs().max()
    assert change > 100 * zoo_atol("fire", pe, pos, out, 0)  # per-layer parameters


@pytest.mark.numerics
def test_fire_chunking_is_exact(monkeypatch):
    """Exact in real arithmetic; in float64 the slices' ``w2 @ hidden`` products are blocked
    otherwise (MKL_CBWR=COMPATIBLE rounds them differently), so equal to rounding."""
    pe = build("fire", seed=8)
    pos = positions(max_position=2048)

    def value_and_grads():
        pe.zero_grad()
        out = bias(pe, pos, 1)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), [p.grad.clone() for p in pe.parameters()]

    whole, whole_grads = value_and_grads()
    monkeypatch.setattr(fire_module, "CHUNK_ELEMENTS", 2 * 2 * T * 32)  # two query rows a slice
    sliced, sliced_grads = value_and_grads()
    # the same elementwise input; only the 32-wide output sum may round otherwise
    x = pe.mlp_input(pos, 1, torch.float64)
    atol = f64_atol(mlp_scale(pe, 1, x), depth=2, width=fire_module.MLP_WIDTH)
    torch.testing.assert_close(sliced, whole, rtol=0, atol=atol)
    # each gradient sums over the B x H x T x T = 1296 bias entries, grouped per slice or not:
    # EPS64 x 3 (forward, backward product, sum) x sqrt(1296) x max|gradient|
    for a, b in zip(sliced_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=f64_atol(b, depth=3, width=B * H * T * T))


def test_fire_input_properties():
    pe = build("fire")
    pos = torch.arange(0, 2048, 3).unsqueeze(0)  # queries far beyond L = 512
    x = pe.mlp_input(pos, 0, torch.float64)[0]  # (T', T')
    causal = x.tril()
    assert bool((causal >= 0).all()) and bool((causal <= 1 + 1e-12).all())  # j <= i: in [0, 1]
    # c -> 0: the linear limit |p_i - p_j| / max(p_i, L)
    # (c = 1e-5: c p << 1 for every position, yet c L >> eps = 1e-6)
    with torch.no_grad():
        pe.c.fill_(1e-5)
    p = pos[0].double()
    linear = (p.unsqueeze(1) - p.unsqueeze(0)).abs() / p.clamp(min=512.0).unsqueeze(1)
    torch.testing.assert_close(pe.mlp_input(pos, 0, torch.float64)[0], linear, rtol=0.02, atol=0)


def test_fire_init():
    pe = build("fire", double=False).requires_grad_(False)
    assert torch.equal(pe.c, torch.full((L,), 0.1)) and torch.equal(pe.l_multiplier, torch.ones(L))
    assert float(pe.l_init) == 512.0 and "l_init" not in dict(pe.named_parameters())
    assert float(pe.w1.abs().max()) <= 1.0 and float(pe.b1.abs().max()) <= 1.0
    assert float(pe.w2.abs().max()) <= 32**-0.5 and float(pe.b2.abs().max()) <= 32**-0.5
    assert float(pe.w1.std()) == pytest.approx(1 / math.sqrt(3), rel=0.25)  # U(-1, 1)
    assert not bool((bias(pe, positions(), dtype=torch.float32) == 0).all())  # not zero at init


# --- sandwich -----------------------------------------------------------------------------------


def sandwich_oracle(rel: list) -> torch.Tensor:
    """NeMo's constants: ω_k = 10000^(-2k/d'), k = 1..d'/2, d' = head width; / (8h/H)."""
    n = len(rel)
    out = torch.zeros(H, n, n, dtype=torch.float64)
    for h in range(1, H + 1):
        for i in range(n):
            for j in range(n):
                total = sum(
                    math.cos(10000 ** (-2 * k / d) * rel[i][j]) for k in range(1, d // 2 + 1)
                )
                out[h - 1, i, j] = (total - d / 2) / (8 * h / H)
    return out


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["int", "float"])
def test_sandwich_matches_brute_force(kind):
    pe = build("sandwich")
    pos = positions(max_position=2048) if kind == "int" else float_positions(scale=2000.0)
    out = bias(pe, pos)
    atol = zoo_atol("sandwich", pe, pos, out)  # 2.0e-11: cosines of angles < 2048
    for b in range(B):
        p = pos[b].tolist()
        want = sandwich_oracle([[p[j] - p[i] for j in range(T)] for i in range(T)])
        torch.testing.assert_close(out[b], want, rtol=0, atol=atol)


@pytest.mark.numerics
@pytest.mark.parametrize("both_sides", [False, True])
def test_sandwich_distance_reading_matches_brute_force(both_sides):
    pe = build("sandwich")
    table = randomized_distances(1, T, 2048, gen(9), both_sides=both_sides)
    rel = [[offset_value(table[0], j - i) for j in range(T)] for i in range(T)]
    got = bias(pe, positions(), 0, table)[0]
    atol = zoo_atol("sandwich", pe, positions(), got)  # cosines of distances < 2048
    torch.testing.assert_close(got, sandwich_oracle(rel), rtol=0, atol=atol)


@pytest.mark.numerics
def test_sandwich_properties():
    pe = build("sandwich")
    pos = positions(max_position=2048)
    out = bias(pe, pos)  # (B, H, T, T)
    # cos^2 + sin^2 of one (rounded) angle, and (i, j) vs (j, i) of one product, sum the same
    # d = 8 terms <= 1: EPS64 x 2 x sqrt(8) x d/2 (head scales <= 1), no angle error
    atol = f64_atol(d // 2, depth=2, width=d)
    zeros = torch.zeros(B, H, T, dtype=torch.float64)
    torch.testing.assert_close(out.diagonal(dim1=-2, dim2=-1), zeros, atol=atol, rtol=0)
    assert bool((out <= atol).all())
    torch.testing.assert_close(out, out.transpose(-1, -2), atol=atol, rtol=0)  # even in r
    heads = torch.arange(1, H + 1, dtype=torch.float64).view(1, H, 1, 1)
    # b_h = (H / 8h) b vs (H / 8) b / h: three roundings, relative
    torch.testing.assert_close(out, out[:, :1] / heads, rtol=2 * EPS64, atol=0)  # b_h = b_1 / h
    assert torch.equal(bias(pe, pos, 0), bias(pe, pos, 4))  # no per-layer state
