"""The reference encoder: size, backends, invariances, randomness, validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from numerics import assert_close_f32, f32_atol, magnitude

from randpos.encodings import PE_NAMES_1D as PE_NAMES
from randpos.encodings import get_encoding
from randpos.model import ModelConfig, Transformer, attend
from randpos.positions import (
    contiguous_positions,
    randomized_distances,
    randomized_positions,
)

B, T = 3, 11
DISTANCE_PES = [n for n in PE_NAMES if get_encoding(n).uses_distances]

# Two float32 forwards of the reference encoder along different code paths (fast vs math
# attention, permuted, shifted or broadcast inputs, vmapped vs looped) differ by rounding: up to
# EPS32 x 5 layers x sqrt(256) (the feed-forward width, the longest dot product) x max|logit|
# (numerics.f32_atol). Outputs that really differ (other positions, other dropout masks) differ
# by more than 100 x that.
DEPTH, WIDTH = 5, 256


def rounding(logits: torch.Tensor, depth: int = DEPTH) -> float:
    """The float32 rounding bound above for these logits."""
    return f32_atol(logits, depth=depth, width=WIDTH)


def assert_differ(a: torch.Tensor, b: torch.Tensor) -> None:
    """a and b differ by more than 100 x the rounding bound: a real difference."""
    assert float((a - b).detach().abs().max()) > 100 * rounding(b)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def model(pe: str = "none", seed: int = 0, **overrides) -> Transformer:
    if get_encoding(pe).causal_only:  # xpos, cope: defined for causal attention only
        overrides["causal"] = True
    return Transformer(ModelConfig(pe=pe, **overrides), generator=gen(seed))


def inputs(seed: int = 0, batch: int = B, length: int = T, vocab: int = 3, max_position=2048):
    g = gen(seed)
    tokens = torch.randint(0, vocab, (batch, length), generator=g)
    return tokens, randomized_positions(batch, length, max_position, g)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --- architecture -----------------------------------------------------------------------------


def test_reference_parameter_count():
    assert n_params(model("none")) == 248_962
    assert n_params(model("relative")) == 248_962 + 21_120
    for pe in ("sincos", "rope", "alibi"):  # parameter-free encodings
        assert n_params(model(pe)) == 248_962
    assert n_params(model("learned", max_position=100)) == 248_962 + 100 * 64


def test_output_shape_and_dtype():
    tokens, positions = inputs()
    out = model(num_classes=5, vocab_size=3)(tokens, positions)
    assert out.shape == (B, T, 5) and out.dtype == torch.float32


def test_init_follows_the_reference_and_the_generator():
    m = model("relative")
    emb = m.embedding.weight
    assert float(emb.detach().abs().max()) <= 2 * 0.02  # truncated at two std
    q = m.layers[0].attention.query.weight
    assert float(q.detach().abs().max()) <= 2 / 64**0.5
    assert torch.equal(m.layers[0].ff_in.bias, torch.zeros(256))
    assert m.layers[0].attention.query.bias is None
    assert float(m.pe.u.detach().std()) == pytest.approx(0.02, rel=0.3)
    # same generator seed, same parameters; the global RNG is neither used nor disturbed
    state = torch.get_rng_state()
    a, b, c = model("relative", seed=1), model("relative", seed=1), model("relative", seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb, pc in zip(
        a.named_parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if "norm" not in name and not name.endswith("bias"):
            assert not torch.equal(pa, pc), name


def test_learned_table_init():
    table = model("learned").pe.table.detach()
    assert table.shape == (2048, 64)
    assert float(table.abs().max()) <= 2.0
    assert 0.7 < float(table.std()) < 1.0  # std 1 cut at 2 std has std ~0.88


# --- attention backends -----------------------------------------------------------------------


@pytest.mark.numerics
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_distances", [False, True])
@pytest.mark.parametrize("pe", PE_NAMES)
def test_fast_path_equals_math_path(pe, with_distances, causal):
    fast = model(pe, attention="fast", causal=causal).eval()
    math_ = model(pe, attention="math", causal=causal).eval()
    tokens, positions = inputs()
    distances = randomized_distances(5, T, 2048, gen(1)) if with_distances else None
    with torch.no_grad():  # with a gradient on CPU "fast" takes the explicit path itself
        assert_close_f32(
            fast(tokens, positions, distances=distances),
            math_(tokens, positions, distances=distances),
            depth=DEPTH,
            width=WIDTH,
        )


def softmax_atol(q, k, v, bias=None) -> float:
    """Rounding bound of one float32 attention, fused vs explicit: EPS32 x 2 products (q k^T,
    weights @ v) x sqrt(8) (the head width, the longest dot product) x max|v|, times max|logit|:
    the softmax turns an absolute logit error of eps |logit| into a relative error of its
    weights, so the output's error grows with the logits' size."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    return f32_atol(v, depth=2, width=q.shape[-1]) * max(1.0, magnitude(logits))


@pytest.mark.numerics
def test_attend_backends_agree_with_broadcast_bias():
    g = gen(2)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    bias = torch.randn(1, 4, 6, 6, generator=g)
    atol = softmax_atol(q, k, v, bias)  # 1.19e-7 x 2 x 2.83 x 3.0 x 4.4 = 9e-6
    for causal in (False, True):
        torch.testing.assert_close(
            attend(q, k, v, bias, causal=causal, backend="fast"),
            attend(q, k, v, bias, causal=causal, backend="math"),
            atol=atol,
            rtol=0,
        )


@pytest.mark.numerics
def test_fast_backend_routes_cpu_training_to_the_explicit_path(monkeypatch):
    from randpos.model import attention

    q = torch.randn(2, 4, 6, 8, requires_grad=True)
    assert attention._prefer_math_on_cpu(q, None)  # a gradient through a short sequence
    with torch.no_grad():
        assert not attention._prefer_math_on_cpu(q, None)  # evaluation keeps SDPA
    assert not attention._prefer_math_on_cpu(q.detach(), None)
    monkeypatch.setattr(attention, "MATH_TRAINING_MAX_LOGITS", 2 * 4 * 6 * 6 - 1)
    assert not attention._prefer_math_on_cpu(q, None)  # too long: the fused kernel saves memory
    bias = torch.zeros(1, 4, 6, 6, requires_grad=True)
    assert attention._prefer_math_on_cpu(q.detach(), bias)  # SDPA's CPU kernel: no mask grad
    # and the two give the same gradients where SDPA is used
    k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    (grad_fast,) = torch.autograd.grad(attend(q, k, v, backend="fast").sum(), q)
    (grad_math,) = torch.autograd.grad(attend(q, k, v, backend="math").sum(), q)
    # dq_i = sum_j p_ij (g_ij - sum_l p_il g_il) k_j / sqrt(d) with g_ij = sum_c v_jc: terms of
    # size max|g| max|k| / sqrt(8), through 4 float32 products (logits, weights; dp, dq), the
    # longest of width 8: EPS32 x 4 x sqrt(8) x max|g| max|k| / sqrt(8)
    terms = magnitude(v.sum(-1)) * magnitude(k) / math.sqrt(8)
    atol = f32_atol(terms, depth=4, width=8)
    torch.testing.assert_close(grad_fast, grad_math, atol=atol, rtol=0)


@pytest.mark.numerics
def test_causal_outputs_ignore_later_tokens():
    m = model("rope", causal=True).eval()
    tokens, positions = inputs()
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 3
    a, b = m(tokens, positions), m(changed, positions)
    assert_close_f32(a[:, :7], b[:, :7], depth=DEPTH, width=WIDTH)
    assert_differ(a[:, 7:], b[:, 7:])


# --- invariances ------------------------------------------------------------------------------


@pytest.mark.numerics
def test_encoder_without_pe_is_permutation_equivariant():
    m = model("none").eval()
    tokens, positions = inputs()
    perm = torch.randperm(T, generator=gen(3))
    out = m(tokens, positions)
    # the softmax sums over the keys in another order
    assert_close_f32(m(tokens[:, perm], positions[:, perm]), out[:, perm], depth=DEPTH, width=WIDTH)


def test_none_ignores_positions():
    m = model("none").eval()
    tokens, positions = inputs()
    # NoPE reads positions only to range-check them: one computation twice, so bit for bit
    assert torch.equal(m(tokens, positions), m(tokens, contiguous_positions(B, T)))


@pytest.mark.parametrize(
    "pe",
    [
        n
        for n in PE_NAMES
        if n not in ("none", "relative_reference_bug") and get_encoding(n).randomizable
    ],
)
def test_pes_make_the_output_depend_on_positions(pe):
    m = model(pe).eval()
    tokens, positions = inputs()
    assert_differ(m(tokens, positions), m(tokens, contiguous_positions(B, T)))


@pytest.mark.numerics
@pytest.mark.parametrize("pe", ["relative", "rope", "alibi"])
def test_relative_pes_invariant_to_global_shift(pe):
    m = model(pe).eval()
    tokens, positions = inputs(max_position=1000)
    # sines and cosines of other angles (float64, then rounded to float32): equal to rounding
    assert_close_f32(m(tokens, positions + 1000), m(tokens, positions), depth=DEPTH, width=WIDTH)


@pytest.mark.numerics
@pytest.mark.parametrize("pe", PE_NAMES)
def test_shared_positions_broadcast(pe):
    m = model(pe).eval()
    tokens, positions = inputs()  # rows identical (one shared draw)
    # (1, T) positions give (1, ...) encodings and biases, so other shapes in the products
    assert_close_f32(m(tokens, positions[:1]), m(tokens, positions), depth=DEPTH, width=WIDTH)


@pytest.mark.parametrize("pe", DISTANCE_PES)
def test_distances_change_distance_pes_only(pe):
    m = model(pe).eval()
    tokens, positions = inputs()
    tables = randomized_distances(5, T, 2048, gen(4))
    assert_differ(m(tokens, positions, distances=tables), m(tokens, positions))
    # per-layer tables differ from sharing the first one
    assert_differ(
        m(tokens, positions, distances=tables), m(tokens, positions, distances=tables[:1])
    )


@pytest.mark.numerics
@pytest.mark.parametrize("pe", PE_NAMES)
def test_layer_positions(pe):
    m = model(pe).eval()
    tokens, positions = inputs()
    same = positions.expand(5, B, T)  # the same values in another memory layout
    base = m(tokens, positions)
    assert_close_f32(m(tokens, positions, layer_positions=same), base, depth=DEPTH, width=WIDTH)
    per_layer = torch.stack([randomized_positions(1, T, 2048, gen(s)) for s in range(5)])
    out = m(tokens, positions, layer_positions=per_layer)  # (5, 1, T): shared by the batch
    change = float((out - base).detach().abs().max())
    # only attention-level encodings that read positions see them
    reads = (m.pe.has_rotate or m.pe.has_bias) and pe != "relative_reference_bug"
    reads = reads and m.pe.randomizable  # cope counts positions from the content
    if reads:
        assert change > 100 * rounding(base)
    else:
        assert change <= rounding(base)
    with pytest.raises(ValueError, match="layer_positions"):
        m(tokens, positions, layer_positions=per_layer[:4])
    with pytest.raises(ValueError, match="max_position"):
        m(tokens, positions, layer_positions=per_layer + 2048)


@pytest.mark.parametrize("pe", [n for n in PE_NAMES if n not in DISTANCE_PES])
def test_distances_are_ignored_by_other_pes(pe):
    m = model(pe).eval()
    tokens, positions = inputs()
    tables = randomized_distances(5, T, 2048, gen(4))
    # the model drops the tables before the first layer: one computation twice, bit for bit
    assert torch.equal(m(tokens, positions, distances=tables), m(tokens, positions))


@pytest.mark.parametrize("pe", PE_NAMES)
def test_long_sequence_forward(pe):
    # the longest test sequence of the paper (duplicate_string at n = 500) with L = 2048
    m = model(pe).eval()
    tokens, positions = inputs(batch=1, length=1500)
    distances = randomized_distances(5, 1500, 2048, gen(5)) if pe in DISTANCE_PES else None
    with torch.no_grad():
        out = m(tokens, positions, distances=distances)
    assert out.shape == (1, 1500, 2) and bool(torch.isfinite(out).all())


# --- randomness -------------------------------------------------------------------------------


@pytest.mark.parametrize("pe", ["none", "sincos", "relative"])
def test_dropout_is_reproducible_from_the_generator(pe):
    m = model(pe).train()
    tokens, positions = inputs()
    a = m(tokens, positions, generator=gen(7))
    b = m(tokens, positions, generator=gen(7))
    c = m(tokens, positions, generator=gen(8))
    assert torch.equal(a, b)  # one computation (masks included) twice: bit for bit
    assert_differ(a, c)
    m.eval()
    e1, e2 = m(tokens, positions, generator=gen(7)), m(tokens, positions, generator=gen(8))
    assert torch.equal(e1, e2)
    assert_differ(e1, a)


def test_dropout_without_generator_uses_torch_dropout():
    m = model("none").train()
    tokens, positions = inputs()
    torch.manual_seed(0)
    a = m(tokens, positions)
    torch.manual_seed(0)
    b = m(tokens, positions)
    assert torch.equal(a, b)  # one computation (masks included) twice: bit for bit
    assert_differ(a, m(tokens, positions))


def test_no_dropout_when_rate_is_zero():
    m = model("sincos", dropout=0.0).train()
    tokens, positions = inputs()
    # dropout at rate 0 returns its input: train and eval mode compute the same, bit for bit
    assert torch.equal(m(tokens, positions, generator=gen(1)), m.eval()(tokens, positions))


@pytest.mark.parametrize("pe", PE_NAMES)
def test_every_parameter_gets_a_gradient(pe):
    m = model(pe, max_position=64).train()
    tokens, positions = inputs(max_position=64)
    distances = randomized_distances(5, T, 64, gen(6)) if pe in DISTANCE_PES else None
    m(tokens, positions, distances=distances, generator=gen(1)).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


@pytest.mark.numerics
@pytest.mark.parametrize("pe", PE_NAMES)
def test_vmap_over_stacked_models(pe):
    # K models batched with torch.func: the forward has no data-dependent control flow.
    # (On CPU the fast backend runs the explicit path under vmap, so one backend suffices.)
    from torch.func import functional_call, stack_module_state

    models = [model(pe, seed=s, max_position=64, num_layers=2).eval() for s in range(2)]
    params, buffers = stack_module_state(models)
    tokens, positions = inputs(max_position=64)
    distances = randomized_distances(1, T, 64, gen(6)) if pe in DISTANCE_PES else None

    def run(p, b):
        kwargs = {"distances": distances, "validate": False}
        return functional_call(models[0], (p, b), (tokens, positions), kwargs)

    batched = torch.vmap(run)(params, buffers)  # (K, B, T, C)
    for i, m in enumerate(models):
        # batched products vs one model's: 2 layers deep (rounding bound above, depth 2)
        assert_close_f32(
            batched[i], m(tokens, positions, distances=distances), depth=2, width=WIDTH
        )
    batched.square().mean().backward()  # autograd through the vmapped forward
    assert all(p.grad is not None for p in params.values())


# --- validation -------------------------------------------------------------------------------


def test_unknown_pe_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: .*rope"):
        model("rotary")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 60),
        ("num_heads", 0),
        ("dropout", 1.0),
        ("attention", "flash"),
        ("max_position", 0),
    ],
)
def test_bad_config_names_the_field(field, value):
    config = dataclasses.replace(ModelConfig(), **{field: value})
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        Transformer(config)


@pytest.mark.parametrize("pe", PE_NAMES)
def test_out_of_range_positions_raise(pe):
    m = model(pe, max_position=32).eval()
    tokens, _ = inputs()
    good = torch.arange(T).expand(B, T)
    m(tokens, good)
    for bad in (good + 32 - T + 1, good - 1):
        with pytest.raises(ValueError, match=r"positions must lie in \[0, max_position=32\)"):
            m(tokens, bad)


def test_bad_inputs_raise():
    m = model("alibi", max_position=64).eval()
    tokens, positions = inputs(max_position=64)
    with pytest.raises(ValueError, match="shape"):
        m(tokens, positions[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        m(tokens[0], positions[0])
    with pytest.raises(ValueError, match="batch size"):
        m(tokens, positions[:2])
    with pytest.raises(ValueError, match="integer"):
        m(tokens.float(), positions)
    with pytest.raises(ValueError, match="integer"):  # learned tables take integers only
        model("learned", max_position=64).eval()(tokens, positions.float())
    with pytest.raises(ValueError, match="vocab_size=3"):
        m(tokens + 3, positions)
    with pytest.raises(ValueError, match="vocab_size=3"):
        m(tokens - 1, positions)
    with pytest.raises(ValueError, match="distances"):
        m(tokens, positions, distances=randomized_distances(2, T, 64, gen()))
    with pytest.raises(ValueError, match="distances"):
        m(tokens, positions, distances=randomized_distances(1, T, 64, gen()) + 64)
    # validate=False skips only the range checks (which need a device sync)
    m(tokens, positions, validate=False)
    with pytest.raises(ValueError, match="shape"):
        m(tokens, positions[:, :-1], validate=False)
    # smaller integer dtypes are accepted
    m(tokens.int(), positions.int())
