"""Data-dependent attention (docs/design.md §6): FoX and stick-breaking against brute-force
O(T^2) formulas, their limits and properties, the sink form of the one attention function,
and cached decoding (chunks of several tokens at once) against one full forward.

The oracles loop over query i and key j in float64 with the formulas of the papers, written
independently of the encodings' vectorized forms (cumulative sums, the sink)."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import assert_close_f32, f64_atol

from randpos.encodings import build_encoding
from randpos.encodings.base import BiasWithSink, EncodingShape
from randpos.model import KVCache, ModelConfig, Transformer, attend
from randpos.model.attention import MultiHeadAttention

B, T, D, H = 2, 9, 16, 2
d = D // H


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def layer_and_pe(name: str, seed: int = 0, **options):
    """One float64 attention layer (math backend) and its encoding, every parameter random."""
    shape = EncodingShape(width=D, num_heads=H, num_layers=1, max_position=64, causal=True)
    pe = build_encoding(name, shape, options).double()
    attention = MultiHeadAttention(D, H, causal=True, backend="math").double()
    g = gen(seed)
    with torch.no_grad():
        for p in [*attention.parameters(), *pe.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return attention, pe


def projections(attention: MultiHeadAttention, x: torch.Tensor):
    """q, k, v (B, H, T, d) of the layer, by hand."""

    def heads(w: torch.Tensor) -> torch.Tensor:
        return (x @ w.T).unflatten(-1, (H, d)).transpose(1, 2)

    return heads(attention.query.weight), heads(attention.key.weight), heads(attention.value.weight)


def output(attention: MultiHeadAttention, heads_out: torch.Tensor) -> torch.Tensor:
    return heads_out.transpose(1, 2).flatten(2) @ attention.output.weight.T  # (B, T, D)


# --- FoX ----------------------------------------------------------------------------------


def fox_oracle(attention, pe, x):
    q, k, v = projections(attention, x)
    gates = torch.sigmoid(x @ pe.gate_weight[0].T + pe.gate_bias[0])  # (B, T, H) f_t
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                logits = []
                for j in range(i + 1):
                    decay = sum(math.log(gates[b, l, h]) for l in range(j + 1, i + 1))
                    logits.append(float(q[b, h, i] @ k[b, h, j]) / math.sqrt(d) + decay)
                weights = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
                out[b, h, i] = weights @ v[b, h, : i + 1]
    return output(attention, out)


@pytest.mark.numerics
def test_fox_matches_the_brute_force_formula():
    attention, pe = layer_and_pe("fox")
    x = torch.randn(B, T, D, generator=gen(1), dtype=torch.float64)
    with torch.no_grad():
        got = attention(x, torch.arange(T)[None], pe, 0)
        want = fox_oracle(attention, pe, x)
    # float64, sums of up to T terms of size |logit| through a softmax and two projections
    torch.testing.assert_close(got, want, atol=f64_atol(want, depth=4, width=D * T), rtol=0)


@pytest.mark.numerics
def test_fox_with_gates_of_one_is_nope():
    attention, fox = layer_and_pe("fox")
    _, nope = layer_and_pe("none")
    with torch.no_grad():
        fox.gate_weight.zero_()
        fox.gate_bias.fill_(80.0)  # log sigmoid(80) = -1.8e-35: a gate of 1 in float64
    x = torch.randn(B, T, D, generator=gen(2), dtype=torch.float64)
    with torch.no_grad():
        got = attention(x, torch.arange(T)[None], fox, 0)
        want = attention(x, torch.arange(T)[None], nope, 0)
    torch.testing.assert_close(got, want, atol=f64_atol(want, depth=4, width=D * T), rtol=0)


def test_fox_bias_is_the_log_of_the_gates_between_key_and_query():
    _, pe = layer_and_pe("fox")
    x = torch.randn(B, T, D, generator=gen(3), dtype=torch.float64)
    q = torch.zeros(B, H, T, d, dtype=torch.float64)
    with torch.no_grad():
        features = pe.features(x, 0)  # (B, H, T, 1)
        bias = pe.bias(q, q, torch.arange(T)[None], 0, features=features)
    assert features.dtype == torch.float64 and bool((features <= 0).all())
    diagonal = bias.diagonal(dim1=-2, dim2=-1)
    assert bool((diagonal == 0).all())  # no gate between a query and its own key
    below = torch.ones(T, T, dtype=torch.bool).tril()
    assert bool((bias.masked_select(below) <= 1e-5).all())  # a product of gates <= 1
    # decays monotonically with the distance back from the query
    assert bool((bias[..., 1:, :-1].diagonal(dim1=-2, dim2=-1) <= 0).all())
    with pytest.raises(ValueError, match="forget gates"):
        pe.bias(q, q, torch.arange(T)[None], 0)


def test_fox_options_and_causality():
    shape = EncodingShape(width=D, num_heads=H, num_layers=2, max_position=64, causal=True)
    pe = build_encoding("fox", shape, {"forget_bias": 3.0})
    pe.reset_parameters(gen(0))
    assert bool((pe.gate_bias == 3.0).all())
    with pytest.raises(Exception, match="pe.forget_bias"):
        build_encoding("fox", shape, {"forget_bias": float("nan")})
    with pytest.raises(ValueError, match="causal"):
        build_encoding("fox", EncodingShape(D, H, 2, 64, causal=False))


# --- stick-breaking ------------------------------------------------------------------------


def stick_breaking_oracle(attention, x, attend_current: bool):
    q, k, v = projections(attention, x)
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                last = i if attend_current else i - 1  # the keys a query breaks its stick over
                for j in range(last + 1):
                    beta = torch.sigmoid(q[b, h, i] @ k[b, h, j] / math.sqrt(d))
                    weight = beta
                    for m in range(j + 1, last + 1):
                        # 1 - sigmoid(z) written as sigmoid(-z): no cancellation near z >> 1
                        weight = weight * torch.sigmoid(-q[b, h, i] @ k[b, h, m] / math.sqrt(d))
                    out[b, h, i] += weight * v[b, h, j]
    return output(attention, out)


@pytest.mark.numerics
@pytest.mark.parametrize("attend_current", [False, True])
def test_stick_breaking_matches_the_brute_force_formula(attend_current):
    attention, pe = layer_and_pe("stick_breaking", attend_current=attend_current)
    x = torch.randn(B, T, D, generator=gen(4), dtype=torch.float64)
    with torch.no_grad():
        got = attention(x, torch.arange(T)[None], pe, 0)
        want = stick_breaking_oracle(attention, x, attend_current)
    torch.testing.assert_close(got, want, atol=f64_atol(want, depth=4, width=D * T), rtol=0)


def test_stick_breaking_weights_sum_to_at_most_one_and_the_first_token_sees_nothing():
    attention, pe = layer_and_pe("stick_breaking")
    x = torch.randn(B, T, D, generator=gen(5), dtype=torch.float64)
    q, k, _ = projections(attention, x)
    bias, sink = pe.bias(q, k, torch.arange(T)[None], 0)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d) + bias  # log a_ij, -inf where hidden
    weights = logits.exp()
    total = weights.sum(-1)
    # the stick-breaking identity: the keys' weights and the sink's sum to one
    torch.testing.assert_close(total + sink.exp(), torch.ones_like(total), atol=1e-12, rtol=0)
    assert bool((total <= 1 + 1e-12).all())
    assert bool((weights.triu(0) == 0).all())  # no key at or after the query
    with torch.no_grad():
        out = attention(x, torch.arange(T)[None], pe, 0)
    assert bool((out[:, 0] == 0).all())  # the first query's stick goes to the zero-value sink


@pytest.mark.numerics
def test_the_sink_form_is_softmax_over_the_keys_and_a_null_key():
    """attend(..., sink=s) equals attention over k, v with a zero key and a zero value
    appended whose logit is s, for both backends and under a cache's row alignment."""
    g = gen(6)
    q = torch.randn(B, H, 3, d, generator=g)
    k, v = torch.randn(B, H, 7, d, generator=g), torch.randn(B, H, 7, d, generator=g)
    bias = torch.randn(B, H, 3, 7, generator=g)
    sink = torch.randn(B, H, 3, generator=g)
    rows = torch.arange(3)[:, None] + 4  # the 3 queries are the last of the 7 keys
    visible = torch.arange(7)[None, :] <= rows
    logits = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(d) + bias.double()
    logits = torch.cat([logits.masked_fill(~visible, float("-inf")), sink.double()[..., None]], -1)
    want = torch.softmax(logits, -1)[..., :-1] @ v.double()
    for backend in ("math", "fast"):
        got = attend(q, k, v, bias, sink=sink, causal=True, backend=backend)
        # float32 dot products of width d, a softmax over 8 logits, a product of width 7
        assert_close_f32(got, want.float(), depth=3, width=8 * d)


# --- the model: cached decoding, every chunk size ------------------------------------------


def causal_model(pe: str, backend: str) -> Transformer:
    config = ModelConfig(
        vocab_size=7,
        num_classes=5,
        num_layers=2,
        width=32,
        num_heads=4,
        ff_width=64,
        dropout=0.0,
        pe=pe,
        max_position=64,
        causal=True,
        attention=backend,
    )
    return Transformer(config, generator=gen(0)).eval()


@pytest.mark.numerics
@pytest.mark.parametrize("backend", ["fast", "math"])
@pytest.mark.parametrize("pe", ["fox", "stick_breaking"])
def test_cached_decoding_in_chunks_equals_one_full_forward(pe, backend):
    model = causal_model(pe, backend)
    g = gen(7)
    tokens = torch.randint(0, 7, (3, 15), generator=g)
    positions = torch.arange(15)[None]
    with torch.no_grad():
        full = model(tokens, positions)
        cache = KVCache(2)
        pieces = [model(tokens[:, a:b], positions[:, a:b], cache=cache) for a, b in
                  ((0, 4), (4, 5), (5, 9), (9, 10), (10, 15))]  # fmt: skip
    assert cache.length == 15
    assert all(f is None or f.shape[-2] == 15 for f in cache.features)  # fox's gates, cached
    # two layers, dot products over ff_width = 64, at the logits' scale
    assert_close_f32(torch.cat(pieces, dim=1), full, depth=2, width=64)


def test_fox_caches_its_features_next_to_the_keys():
    model = causal_model("fox", "fast")
    cache = KVCache(2)
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), torch.arange(5)[None], cache=cache)
    assert all(f is not None and f.shape == (1, 4, 5, 1) for f in cache.features)
    keys = sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values))
    assert cache.nbytes() == keys + sum(f.numel() * 4 for f in cache.features) + 5 * 8


def test_a_sink_bias_is_a_named_pair():
    _, pe = layer_and_pe("stick_breaking")
    q = torch.zeros(1, H, 2, d, dtype=torch.float64)
    out = pe.bias(q, q, torch.arange(2)[None], 0)
    assert isinstance(out, BiasWithSink) and out.sink.shape == (1, H, 2)
    # z = 0: beta = 1/2, the second query gives half its stick to the first key
    want = torch.tensor([0.0, math.log(0.5)], dtype=torch.float64).expand(1, H, 2)
    torch.testing.assert_close(out.sink, want, atol=1e-15, rtol=0)


# --- PaTH (reference form) -----------------------------------------------------------------


def path_oracle(attention, pe, x):
    """softmax_j(q_i^T H_i ... H_{j+1} k_j / sqrt(d)) v_j with the transforms as explicit
    d x d matrices, multiplied out for every (i, j)."""
    q, k, v = projections(attention, x)
    features = pe.features(x, 0)  # (B, H, T, d + 1): the transforms' data, checked below
    w, beta = features[..., :-1], features[..., -1]
    W = x @ pe.w_weight[0].T  # (B, T, H d)
    want_w = torch.nn.functional.normalize(W.unflatten(-1, (H, d)), dim=-1).transpose(1, 2)
    torch.testing.assert_close(w, want_w, atol=1e-15, rtol=0)
    want_beta = 2 * torch.sigmoid(x @ pe.beta_weight[0].T + pe.beta_bias[0]).transpose(1, 2)
    torch.testing.assert_close(beta, want_beta, atol=1e-15, rtol=0)
    eye = torch.eye(d, dtype=torch.float64)
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            transforms = [
                eye - beta[b, h, t] * torch.outer(w[b, h, t], w[b, h, t]) for t in range(T)
            ]
            for i in range(T):
                logits = []
                for j in range(i + 1):
                    product = eye
                    for t in range(i, j, -1):  # H_i H_{i-1} ... H_{j+1}
                        product = product @ transforms[t]
                    logits.append(float(q[b, h, i] @ product @ k[b, h, j]) / math.sqrt(d))
                weights = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
                out[b, h, i] = weights @ v[b, h, : i + 1]
    return output(attention, out)


@pytest.mark.numerics
def test_path_matches_the_brute_force_formula():
    attention, pe = layer_and_pe("path")
    x = torch.randn(B, T, D, generator=gen(8), dtype=torch.float64)
    with torch.no_grad():
        got = attention(x, torch.arange(T)[None], pe, 0)
        want = path_oracle(attention, pe, x)
    # float64: products of up to T transforms of norm <= 1 (|1 - beta| <= 1), dots of width d
    torch.testing.assert_close(got, want, atol=f64_atol(want, depth=T + 4, width=D * T), rtol=0)


@pytest.mark.numerics
def test_path_with_no_transform_is_nope():
    attention, path = layer_and_pe("path")
    _, nope = layer_and_pe("none")
    with torch.no_grad():
        path.beta_weight.zero_()
        path.beta_bias.fill_(-80.0)  # beta = 2 sigmoid(-80) ~ 4e-35: every H_t = I
    x = torch.randn(B, T, D, generator=gen(9), dtype=torch.float64)
    with torch.no_grad():
        got = attention(x, torch.arange(T)[None], path, 0)
        want = attention(x, torch.arange(T)[None], nope, 0)
    torch.testing.assert_close(got, want, atol=f64_atol(want, depth=4, width=D * T), rtol=0)


@pytest.mark.numerics
@pytest.mark.parametrize("backend", ["fast", "math"])
def test_path_cached_decoding_in_chunks_equals_one_full_forward(backend):
    test_cached_decoding_in_chunks_equals_one_full_forward("path", backend)
