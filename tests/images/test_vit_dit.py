"""ViT and DiT on patch grids, and the flow-matching objective and sampler (randpos.images).

Tiny models only (width <= 32, grids <= 16x16): every test takes a few seconds on a busy CPU.
Besides ``none`` the models are checked with two test-local 2D encodings (an absolute sin-cos
and an axial rotary one) registered for the test only, and with the project's 2D encodings
when they are registered.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close_f32, f32_atol, f64_atol, magnitude
from torch import nn

from randpos.encodings import ENCODINGS
from randpos.encodings.base import PositionalEncoding, sinusoid
from randpos.encodings.rope import RotaryOptions
from randpos.images.flow import (
    denoising_losses,
    euler_sample,
    flow_matching_loss,
    interpolate,
    sampling_times,
)
from randpos.images.models import (
    DiT,
    PatchEmbed,
    VisionConfig,
    ViT,
    attention_logit_scale,
    patchify,
    unpatchify,
)
from randpos.model import MultiHeadAttention
from randpos.positions import randomized_positions

# --- test-local 2D encodings ------------------------------------------------------------------


class Embed2D(PositionalEncoding):
    """x + [sinusoid(x-axis, D/2), sinusoid(y-axis, D/2)] (DiT's layout, x first)."""

    name = "test_embed2d"
    float_positions = True

    def embed(self, x, positions):
        half = self.width // 2
        pe = torch.cat([sinusoid(positions[..., 1], half), sinusoid(positions[..., 0], half)], -1)
        return x + pe.to(x.dtype)  # (B, N, D)


class Axial2D(PositionalEncoding):
    """Axial RoPE: the first d/2 channels rotate with x, the last d/2 with y (theta 100)."""

    name = "test_axial2d"
    float_positions = True

    def rotate(self, q, k, positions, layer):
        quarter = self.head_width // 4
        freqs = 100.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # (d/4,)
        p = positions.to(torch.float64)
        angles = torch.cat([p[..., 1:2] * freqs, p[..., 0:1] * freqs], -1)  # (B, N, d/2)
        cos, sin = angles.cos().to(q.dtype).unsqueeze(1), angles.sin().to(q.dtype).unsqueeze(1)

        def turn(t):
            a, b = t.unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, N, d/2) each
            return torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)

        return turn(q), turn(k)


LOCAL = {"test_embed2d": Embed2D, "test_axial2d": Axial2D}
REAL_2D = [n for n in ("sincos2d", "learned2d", "rope2d_axial", "rope2d_mixed") if n in ENCODINGS]
PES = ["none", *LOCAL, *REAL_2D]


@pytest.fixture(autouse=True)
def local_encodings(monkeypatch):
    for name, cls in LOCAL.items():
        monkeypatch.setitem(ENCODINGS, name, cls)


# --- helpers ----------------------------------------------------------------------------------

# Two float32 forward passes of one model along different code paths (SDPA's fused attention or
# the explicit product, vmapped or looped, one row of positions broadcast or B of them) differ
# by rounding: up to EPS32 x LAYERS x sqrt(WIDTH) x max|output| (numerics.f32_atol), LAYERS
# counting each block's two residual branches (attention, MLP; config()'s depth is 2) and the
# output layer, WIDTH the feed-forward's 4 x 32 (the longest dot product). Outputs that should
# differ (other positions, another logit scale, other conditioning) differ by far more.
LAYERS = 2 * 2 + 1
WIDTH = 4 * 32


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def config(**overrides) -> VisionConfig:
    base = dict(width=32, depth=2, num_heads=2, num_classes=4, max_position=16, train_tokens=16)
    return VisionConfig(**{**base, **overrides})


def grid(h: int, w: int, batch: int = 1) -> torch.Tensor:
    """(batch, h*w, 2) row-major (y, x) positions."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([ys, xs], -1).reshape(1, h * w, 2).expand(batch, -1, -1).contiguous()


def random_grid(batch: int, h: int, w: int, limit: int, g: torch.Generator) -> torch.Tensor:
    """Per-sample sorted draws per axis; token (r, c) gets (ys[r], xs[c])."""
    ys = randomized_positions(batch, h, limit, g)  # (B, h)
    xs = randomized_positions(batch, w, limit, g)  # (B, w)
    yy = ys.unsqueeze(2).expand(batch, h, w)
    xx = xs.unsqueeze(1).expand(batch, h, w)
    return torch.stack([yy, xx], -1).reshape(batch, h * w, 2)


def scramble(model: nn.Module, seed: int = 1, std: float = 0.3) -> nn.Module:
    """Overwrite every parameter with noise (so that DiT's zero-initialised layers act)."""
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def dit_inputs(batch=3, H=8, W=12, channels=1, classes=4, seed=0):
    g = gen(seed)
    x = torch.randn(batch, channels, H, W, generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.randint(0, classes + 1, (batch,), generator=g)
    return x, t, y, grid(H // 2, W // 2)


# --- patches ----------------------------------------------------------------------------------


def test_patchify_unpatchify_are_exact_inverses_on_non_square_grids():
    g = gen()
    for C, p, h, w in [(3, 2, 3, 5), (1, 2, 4, 7), (2, 3, 5, 2), (1, 1, 2, 3)]:
        x = torch.randn(2, C, h * p, w * p, generator=g)
        tokens = patchify(x, p)
        assert tokens.shape == (2, h * w, p * p * C)
        assert torch.equal(unpatchify(tokens, h, w, p, C), x)
        t = torch.randn(2, h * w, p * p * C, generator=g)
        assert torch.equal(patchify(unpatchify(t, h, w, p, C), p), t)
        # row-major tokens, each its patch in (row, column, channel) order
        r, c = h - 1, w // 2
        patch = x[:, :, r * p : (r + 1) * p, c * p : (c + 1) * p].permute(0, 2, 3, 1)
        assert torch.equal(tokens[:, r * w + c], patch.flatten(1))


@pytest.mark.numerics
def test_patch_embedding_equals_a_strided_conv2d_with_the_same_weights():
    C, D, p = 3, 8, 2
    # the conv is the oracle: both in float64
    embed = PatchEmbed(p, C, D).double()
    conv = nn.Conv2d(C, D, kernel_size=p, stride=p).double()
    g = gen()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
        conv.bias.copy_(torch.randn(D, generator=g, dtype=torch.float64))
        # (D, C, p, p) -> (D, p*p*C) in the tokens' (row, column, channel) order
        embed.proj.weight.copy_(conv.weight.permute(0, 2, 3, 1).reshape(D, -1))
        embed.proj.bias.copy_(conv.bias)
    x = torch.randn(2, C, 6, 10, generator=g, dtype=torch.float64)
    expected = conv(x).flatten(2).transpose(1, 2)  # (B, N, D) row-major
    # one dot product of length p * p * C = 12 (plus the bias) per output, summed in another order
    atol = f64_atol(magnitude(expected), depth=2, width=p * p * C)
    torch.testing.assert_close(embed(x), expected, rtol=0, atol=atol)


def test_patch_embedding_init_is_xavier_on_the_flattened_kernel():
    m = ViT(config(channels=3, width=32), generator=gen())
    w = m.patch_embed.proj.weight  # (D, p*p*C) = (32, 12)
    bound = math.sqrt(6.0 / (12 + 32))
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert torch.equal(m.patch_embed.proj.bias, torch.zeros(32))


def test_patchify_rejects_indivisible_sides():
    with pytest.raises(ValueError, match="images of side 15 are not divisible by patch=2"):
        patchify(torch.zeros(1, 1, 16, 15), 2)
    with pytest.raises(ValueError, match="tokens must have shape"):
        unpatchify(torch.zeros(1, 6, 4), 2, 2, 2, 1)


# --- DiT at initialisation --------------------------------------------------------------------


@pytest.mark.parametrize("pe", PES)
def test_dit_outputs_exactly_zero_at_init_and_every_block_is_the_identity(pe):
    m = DiT(config(pe=pe, cond_dim=2), generator=gen())
    x, t, y, pos = dit_inputs()
    cond = torch.rand(3, 2, generator=gen(5))
    out = m(x, t, y, pos, cond)
    # exact: the final Linear and every gate are zero, so the output is a sum of products by 0
    # (plus a zero bias), and each block adds 0 * (attention or MLP) to its input
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(x))
    tokens = torch.randn(3, 24, 32, generator=gen(1))
    c = torch.randn(3, 32, generator=gen(2))
    for index, block in enumerate(m.blocks):
        assert torch.equal(block(tokens, c, pos, m.pe, index), tokens)


def test_init_is_a_function_of_the_generator():
    a = DiT(config(cond_dim=2), generator=gen(3))
    b = DiT(config(cond_dim=2), generator=gen(3))
    c = DiT(config(cond_dim=2), generator=gen(4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(
        sa["blocks.0.attention.query.weight"], sc["blocks.0.attention.query.weight"]
    )
    # DiT's init: N(0, 0.02) label table and timestep MLP, zero adaLN and final layer
    assert abs(a.y_embedder.weight.std().item() - 0.02) < 0.005
    assert abs(a.t_embedder.mlp[0].weight.std().item() - 0.02) < 0.002
    assert torch.equal(a.t_embedder.mlp[0].bias, torch.zeros(32))
    assert not a.blocks[0].adaLN_modulation[-1].weight.any()
    assert not a.final_layer.linear.weight.any() and not a.final_layer.linear.bias.any()
    default = DiT(config())  # generator None: a fixed seed, never the global RNG
    again = DiT(config())
    assert torch.equal(default.patch_embed.proj.weight, again.patch_embed.proj.weight)


# --- shapes: non-square canvases, grids beyond training ---------------------------------------


@pytest.mark.parametrize("pe", PES)
def test_vit_and_dit_run_on_non_square_and_larger_grids(pe):
    cfg = config(pe=pe, attn_logit_scale="log_ratio")
    vit, dit = ViT(cfg, generator=gen()), scramble(DiT(cfg, generator=gen()))
    g = gen(7)
    # train grid 4x4 (S=8); then non-square 3x7 and 6x10, and the largest 16x16 (= L per axis)
    for H, W in [(8, 8), (6, 14), (12, 20), (32, 32)]:
        h, w = H // 2, W // 2
        x = torch.randn(2, 1, H, W, generator=g)
        for pos in (grid(h, w), random_grid(2, h, w, 16, g)):
            logits = vit(x, pos)
            assert logits.shape == (2, 4) and torch.isfinite(logits).all()
            v = dit(x, torch.rand(2, generator=g), torch.tensor([0, 4]), pos)
            assert v.shape == x.shape and torch.isfinite(v).all()


@pytest.mark.numerics
@pytest.mark.parametrize("pe", PES)
def test_shared_positions_broadcast_like_per_sample_positions(pe):
    cfg = config(pe=pe)
    vit, dit = scramble(ViT(cfg, generator=gen())), scramble(DiT(cfg, generator=gen()))
    pos = random_grid(1, 4, 6, 16, gen(3))
    x, t, y, _ = dit_inputs()
    with torch.no_grad():
        shared, each = vit(x, pos), vit(x, pos.expand(3, -1, -1))
        assert_close_f32(shared, each, depth=LAYERS, width=WIDTH)
        shared, each = dit(x, t, y, pos), dit(x, t, y, pos.expand(3, -1, -1))
        assert_close_f32(shared, each, depth=LAYERS, width=WIDTH)


@pytest.mark.numerics
def test_positions_matter_for_positional_encodings_and_not_for_none():
    x, t, y, _ = dit_inputs()
    a, b = grid(4, 6), random_grid(1, 4, 6, 16, gen(2))
    for pe in ["none", *LOCAL]:
        dit = scramble(DiT(config(pe=pe), generator=gen()))
        with torch.no_grad():
            on_a, on_b = dit(x, t, y, a), dit(x, t, y, b)
        if pe == "none":
            assert torch.equal(on_a, on_b)  # exact: no op reads the positions
        else:
            assert (on_a - on_b).abs().max() > 100 * f32_atol(on_a, depth=LAYERS, width=WIDTH), pe


# --- validation -------------------------------------------------------------------------------


def test_bad_inputs_give_errors_naming_the_field():
    vit = ViT(config(), generator=gen())
    dit = DiT(config(cond_dim=2), generator=gen())
    x, t, y, pos = dit_inputs()
    cond = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="images of side 15 are not divisible by patch=2"):
        vit(torch.zeros(3, 1, 8, 15), pos)
    with pytest.raises(ValueError, match="images must have channels=1"):
        vit(torch.zeros(3, 2, 8, 12), pos)
    with pytest.raises(ValueError, match=r"positions must have shape \(B=3 or 1, N=24, 2\)"):
        vit(x, grid(4, 5))
    with pytest.raises(ValueError, match="positions must have shape"):
        vit(x, grid(4, 6)[..., 0])
    with pytest.raises(ValueError, match="positions must have shape"):
        vit(x, grid(4, 6, batch=2))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, max_position=16\)"):
        vit(x, grid(4, 6) + 12)
    with pytest.raises(ValueError, match=r"positions must lie in \[0, max_position=16\)"):
        dit(x, t, y, grid(4, 6) - 1, cond)
    with pytest.raises(ValueError, match=r"y must lie in \[0, num_classes=4\]"):
        dit(x, t, torch.tensor([0, 5, 1]), pos, cond)
    with pytest.raises(ValueError, match="y must be an integer tensor"):
        dit(x, t, y.float(), pos, cond)
    with pytest.raises(ValueError, match="t must be a float tensor"):
        dit(x, t[:2], y, pos, cond)
    with pytest.raises(ValueError, match="cond is required"):
        dit(x, t, y, pos)
    with pytest.raises(ValueError, match="cond must have shape"):
        dit(x, t, y, pos, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="cond must be None"):
        DiT(config(), generator=gen())(x, t, y, pos, cond)
    # validate=False skips only the range checks (they sync)
    vit(x, grid(4, 6) + 12, validate=False)


def test_float_positions_need_an_encoding_that_takes_them():
    x = torch.zeros(1, 1, 8, 8)
    pos = grid(4, 4).double() * 1.5
    ViT(config(pe="test_embed2d"), generator=gen())(x, pos)
    if "learned2d" in ENCODINGS and not ENCODINGS["learned2d"].float_positions:
        with pytest.raises(ValueError, match="positions must be an integer tensor"):
            ViT(config(pe="learned2d"), generator=gen())(x, pos)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(width=30, num_heads=4), "width"),
        (dict(patch=0), "patch"),
        (dict(attention="flash"), "attention"),
        (dict(attn_logit_scale="log"), "attn_logit_scale"),
        (dict(train_tokens=1), "train_tokens"),
        (dict(cond_dim=-1), "cond_dim"),
        (dict(pe="xpos"), "pe"),
        (dict(pe="relative"), "pe"),
        (dict(pe="rope2d_axial", pe_options={"scaling": "bogus"}), "pe.scaling"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    prefix = "" if field.startswith("pe.") else "VisionConfig."
    with pytest.raises(ValueError, match=re.escape(f"{prefix}{field}=")):
        ViT(config(**overrides))


def test_unknown_encoding_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown positional encoding 'nope'.*none"):
        DiT(config(pe="nope"))


# --- training signal --------------------------------------------------------------------------


def test_gradients_are_finite_and_one_step_makes_the_dit_nonzero():
    m = DiT(config(pe="test_axial2d"), generator=gen())
    x, t, y, pos = dit_inputs()
    noise = torch.randn(x.shape, generator=gen(9))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss = flow_matching_loss(m, x, y, pos, noise, t)
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # adaLN-Zero: at init only the final Linear receives gradient
    assert grads["final_layer.linear.weight"].abs().sum() > 0
    assert grads["final_layer.linear.bias"].abs().sum() > 0
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        assert m(x, t, y, pos).abs().sum() > 0
    flow_matching_loss(m, x, y, pos, noise, t).backward()
    # now the gradient reaches the blocks' gates and the embedders
    assert m.blocks[0].adaLN_modulation[-1].weight.grad.abs().sum() > 0
    assert m.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_a_tiny_dit_lowers_the_flow_matching_loss():
    cfg = config(pe="test_embed2d", num_classes=2)
    m = DiT(cfg, generator=gen())
    g = gen(1)
    x1 = torch.tanh(2 * torch.randn(8, 1, 8, 8, generator=g))
    y = torch.tensor([0, 1] * 4)
    pos = grid(4, 4)
    before = denoising_losses(m, x1, y, pos, generator=gen(2))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(200):
        x0 = torch.randn(x1.shape, generator=g)
        t = torch.rand(8, generator=g)
        loss = flow_matching_loss(m, x1, y, pos, x0, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = denoising_losses(m, x1, y, pos, generator=gen(2))
    assert set(after) == {0.1, 0.3, 0.5, 0.7, 0.9}
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    assert mean(after) < 0.8 * mean(before), (before, after)


def test_a_tiny_vit_overfits_sixteen_labelled_images():
    m = ViT(config(pe="test_embed2d", num_classes=4), generator=gen())
    g = gen(3)
    images = torch.randn(16, 1, 8, 8, generator=g)
    labels = torch.arange(16) % 4
    pos = grid(4, 4)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(120):
        loss = F.cross_entropy(m(images, pos), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (m(images, pos).argmax(-1) == labels).float().mean().item()
    assert accuracy == 1.0, (accuracy, loss.item())


# --- backends, logit scale, functional use ----------------------------------------------------


@pytest.mark.numerics
@pytest.mark.parametrize("pe", ["none", "test_axial2d", *REAL_2D])
def test_fast_attention_backend_equals_the_math_backend(pe):
    x, t, y, pos = dit_inputs()
    for cls in (ViT, DiT):
        fast = scramble(cls(config(pe=pe, attention="fast"), generator=gen()))
        slow = scramble(cls(config(pe=pe, attention="math"), generator=gen()))
        args = (x, pos) if cls is ViT else (x, t, y, pos)
        with torch.no_grad():  # (with a gradient to take, "fast" runs the math path on CPU)
            assert_close_f32(fast(*args), slow(*args), depth=LAYERS, width=WIDTH)


def test_log_ratio_scale_values():
    cfg = config(attn_logit_scale="log_ratio", train_tokens=64)
    assert attention_logit_scale(cfg, 16) == 1.0
    assert attention_logit_scale(cfg, 64) == 1.0
    assert attention_logit_scale(cfg, 256) == pytest.approx(math.log(256) / math.log(64))
    assert attention_logit_scale(config(train_tokens=64), 256) == 1.0  # "none"


@pytest.mark.numerics
@pytest.mark.parametrize("backend", ["fast", "math"])
def test_logit_scale_equals_a_manually_scaled_attention(backend):
    D, H, T = 16, 2, 5
    # the manual formula is the oracle: module, inputs and formula all in float64
    attn = MultiHeadAttention(D, H, causal=False, backend=backend)
    scramble(attn).double()
    pe = Axial2D(config(width=D, num_heads=H).encoding_shape(), RotaryOptions(theta=100.0))
    x = torch.randn(2, T, D, generator=gen(4), dtype=torch.float64)
    pos = random_grid(2, 1, T, 16, gen(5))
    s = 1.7
    with torch.no_grad():
        out = attn(x, pos, pe, 0, logit_scale=s)
        q, k, v = (
            m(x).unflatten(-1, (H, -1)).transpose(1, 2) for m in (attn.query, attn.key, attn.value)
        )
        q, k = pe.rotate(q, k, pos, 0)
        logits = s * q @ k.transpose(-1, -2) / math.sqrt(D // H)
        weights = torch.softmax(logits, dim=-1)
        manual = attn.output((weights @ v).transpose(1, 2).flatten(2))
        # four products in a row (projection, logits, weights x values, output; the longest of
        # length D = 16), and the softmax turns the logits' errors, relative to their size,
        # into output errors max|logit| times larger
        factor = max(1.0, magnitude(logits))
        atol = factor * f64_atol(magnitude(manual), depth=4, width=D)
        torch.testing.assert_close(out, manual, rtol=0, atol=atol)
        # exact: logit_scale=None is the default, the same call
        assert torch.equal(attn(x, pos, pe, 0, logit_scale=None), attn(x, pos, pe, 0))
        assert (out - attn(x, pos, pe, 0)).abs().max() > 100 * atol


@pytest.mark.numerics
def test_models_pass_the_log_ratio_scale_to_every_attention(monkeypatch):
    seen = []
    forward = MultiHeadAttention.forward

    def recording(self, *args, logit_scale=None, **kwargs):
        seen.append(logit_scale)
        return forward(self, *args, logit_scale=logit_scale, **kwargs)

    monkeypatch.setattr(MultiHeadAttention, "forward", recording)
    cfg = config(pe="test_axial2d", attn_logit_scale="log_ratio", train_tokens=16)
    plain = scramble(DiT(dataclasses.replace(cfg, attn_logit_scale="none"), generator=gen()))
    scaled = scramble(DiT(cfg, generator=gen()))
    vit = ViT(cfg, generator=gen())
    for H, W, expected in [(8, 8, None), (6, 8, None), (12, 16, math.log(48) / math.log(16))]:
        x, t, y, pos = dit_inputs(H=H, W=W)
        seen.clear()
        with torch.no_grad():
            a, b = plain(x, t, y, pos), scaled(x, t, y, pos)
        vit(x, pos)
        assert seen[:2] == [None, None]  # the plain DiT
        assert seen[2:] == [expected] * 4  # the scaled DiT, then the ViT, every layer
        if expected is None:
            assert torch.equal(a, b)  # exact: the same weights through the same ops
        else:
            assert (a - b).abs().max() > 100 * f32_atol(a, depth=LAYERS, width=WIDTH)


@pytest.mark.numerics
def test_functional_call_and_vmap_over_an_ensemble():
    models = [scramble(DiT(config(pe="test_axial2d"), generator=gen()), seed=s) for s in (1, 2)]
    params, buffers = torch.func.stack_module_state(models)
    x, t, y, pos = dit_inputs()

    def one(p, b):
        state = {**p, **b}
        return torch.func.functional_call(models[0], state, (x, t, y, pos), {"validate": False})

    with torch.no_grad():
        out = torch.vmap(one)(params, buffers)  # batched products, and the math attention path
        for i, m in enumerate(models):
            assert_close_f32(out[i], m(x, t, y, pos), depth=LAYERS, width=WIDTH)


@pytest.mark.numerics
def test_micro_conditioning_changes_the_output():
    m = scramble(DiT(config(cond_dim=4), generator=gen()))
    x, t, y, pos = dit_inputs()
    identity = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(3, -1)
    crop = torch.tensor([[0.1, 0.2, 1.5, 1.5]]).expand(3, -1)
    with torch.no_grad():
        plain, cropped = m(x, t, y, pos, identity), m(x, t, y, pos, crop)
    assert (plain - cropped).abs().max() > 100 * f32_atol(plain, depth=LAYERS, width=WIDTH)


def test_the_global_rng_is_untouched():
    state = torch.random.get_rng_state()
    cfg = config(pe="test_embed2d", cond_dim=2)
    vit, dit = ViT(cfg), DiT(cfg, generator=gen())
    vit.reset_parameters(gen(1))
    dit.reset_parameters(gen(1))
    x, t, y, pos = dit_inputs()
    cond = torch.zeros(3, 2)
    vit(x, pos).sum().backward()
    flow_matching_loss(dit, x, y, pos, torch.zeros_like(x), t, cond).backward()
    euler_sample(dit, x, y, pos, steps=2, cfg_scale=2.0, null_class=4, cond=cond)
    denoising_losses(dit, x, y, pos, generator=gen(2), cond=cond)
    assert torch.equal(torch.random.get_rng_state(), state)


# --- flow matching ----------------------------------------------------------------------------


class PointMass(nn.Module):
    """The optimal velocity when the data is the point c[y]: (c - x) / (1 - t)."""

    def __init__(self, centers: torch.Tensor) -> None:
        super().__init__()
        self.centers = centers  # (classes + 1, C, H, W)
        self.batches = []

    def forward(self, x, t, y, positions, cond=None):
        self.batches.append(x.shape[0])
        return (self.centers[y] - x) / (1 - t).reshape(-1, 1, 1, 1)


class Gaussian(nn.Module):
    """The optimal velocity for data N(c, s^2 I), noise N(0, I) on the linear path:
    x_t ~ N(t c, sigma_t^2), sigma_t^2 = t^2 s^2 + (1 - t)^2, v = c + sigma_t'/sigma_t (x - t c).
    Its flow maps noise z to c + s z exactly."""

    def __init__(self, c: torch.Tensor, s: float) -> None:
        super().__init__()
        self.c, self.s = c, s

    def forward(self, x, t, y, positions, cond=None):
        t = t.reshape(-1, 1, 1, 1)
        var = t**2 * self.s**2 + (1 - t) ** 2
        return self.c + (t * self.s**2 - (1 - t)) / var * (x - t * self.c)


@pytest.mark.numerics
def test_interpolate_and_loss_follow_the_linear_path():
    g = gen()  # float64: the formulas are the oracles
    x1 = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    x0 = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 1.0])
    xt, u = interpolate(x1, x0, t)
    # exact: t = 0 and 1 give 0 * x1 + 1 * x0 and 1 * x1 + 0 * x0, which round to x0 and x1
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], x1[2])
    # two products and a sum of values of size max|x|
    atol = f64_atol(magnitude(x1, x0), depth=3)
    torch.testing.assert_close(xt[1], 0.25 * x1[1] + 0.75 * x0[1], rtol=0, atol=atol)
    assert torch.equal(u, x1 - x0)  # exact: the one subtraction
    zero = lambda x, t, y, p, c=None: torch.zeros_like(x)  # noqa: E731
    loss = flow_matching_loss(zero, x1, None, None, x0, t)
    expected = ((x1 - x0) ** 2).mean()
    # a square and a mean over 48 terms, summed in another order
    torch.testing.assert_close(loss, expected, rtol=0, atol=f64_atol(expected, depth=2, width=48))


@pytest.mark.numerics
def test_euler_is_exact_for_a_point_mass_and_converges_for_a_gaussian():
    c = torch.randn(1, 1, 4, 4, generator=gen(1))
    noise = torch.randn(6, 1, 4, 4, generator=gen(2), dtype=torch.float64)
    y = torch.zeros(6, dtype=torch.long)
    point = PointMass(c.double().expand(2, -1, -1, -1))
    # the last step x + dt (c - x) / (1 - t) has dt = 1 - t: it lands on c up to its 4 roundings
    # (earlier steps' errors are multiplied by 1 - dt / (1 - t) = 0) of values no larger than
    # max(|c|, |noise|) (x moves from the noise straight to c)
    atol = f64_atol(magnitude(c, noise), depth=4)
    for steps in (1, 4, 16):  # the path is straight: Euler is exact at any step count
        out = euler_sample(point, noise, y, None, steps=steps, null_class=1)
        torch.testing.assert_close(out, c.double().expand_as(out), rtol=0, atol=atol)
    gauss = Gaussian(c.double(), 0.5)
    target = c.double() + 0.5 * noise
    errors = []
    for steps in (4, 16, 64, 256):
        out = euler_sample(gauss, noise, y, None, steps=steps, null_class=1)
        errors.append((out - target).abs().max().item())
    # Euler is first order: four times the steps, about a quarter of the error
    assert all(3 < a / b < 5 for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-2, errors
    shifted = euler_sample(gauss, noise, y, None, steps=256, null_class=1, shift=2.0)
    assert (shifted - target).abs().max() < 1e-2


def test_timestep_shift_one_is_the_uniform_grid():
    # exact: k / 8 is a binary fraction, which either linspace (float64 then cast, or float32)
    # computes exactly
    assert torch.equal(sampling_times(8), torch.linspace(0, 1, 9))
    assert torch.equal(sampling_times(8, 1.0), sampling_times(8))
    s = sampling_times(8, 3.0, dtype=torch.float64)
    assert s[0] == 0 and s[-1] == 1 and (s.diff() > 0).all()
    assert (s[1:-1] < torch.linspace(0, 1, 9, dtype=torch.float64)[1:-1]).all()  # more noise
    sigma = 0.25  # sigma' = 3 * 0.25 / (1 + 2 * 0.25)
    # float64: the formula's six correctly rounded ops (five here) on values <= 1
    expected = 1 - 3 * sigma / (1 + 2 * sigma)
    assert s[6].item() == pytest.approx(expected, rel=0, abs=f64_atol(1.0, depth=6))
    noise = torch.randn(2, 1, 4, 4, generator=gen())
    gauss = Gaussian(torch.zeros(1, 1, 4, 4), 0.5)
    y = torch.zeros(2, dtype=torch.long)
    plain = euler_sample(gauss, noise, y, None, steps=5, null_class=1)
    assert torch.equal(euler_sample(gauss, noise, y, None, steps=5, null_class=1, shift=1.0), plain)
    with pytest.raises(ValueError, match="steps"):
        sampling_times(0)


@pytest.mark.numerics
def test_classifier_free_guidance():
    centers = torch.randn(3, 1, 4, 4, generator=gen(1), dtype=torch.float64)  # row 2 = null
    noise = torch.randn(4, 1, 4, 4, generator=gen(2), dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    pos = grid(2, 2, batch=4)
    model = PointMass(centers)
    out = euler_sample(model, noise, y, pos, steps=3, cfg_scale=1.0, null_class=2)
    # float64; the last step lands on the target up to its roundings (test_euler_is_exact...)
    atol = f64_atol(magnitude(centers, noise), depth=4)
    torch.testing.assert_close(out, centers[y], rtol=0, atol=atol)  # cfg 1: the conditional only
    assert model.batches == [4, 4, 4]
    model.batches.clear()
    w = 2.5
    out = euler_sample(model, noise, y, pos, steps=3, cfg_scale=w, null_class=2)
    assert model.batches == [8, 8, 8]  # one batched forward of size 2B per step
    # guided velocity = the point mass at c_null + w (c_y - c_null)
    expected = centers[2] + w * (centers[y] - centers[2])
    # the last step's 7 roundings (two point-mass velocities, v_null + w (v_cond - v_null), the
    # step), of values up to the size of x, the centers and the target, w times for v_cond - v_null
    atol = (1 + w) * f64_atol(magnitude(centers, noise, expected), depth=7)
    torch.testing.assert_close(out, expected, rtol=0, atol=atol)


@pytest.mark.numerics
def test_sampling_a_dit_with_guidance_and_shared_positions():
    m = scramble(DiT(config(pe="test_axial2d"), generator=gen()))
    noise = torch.randn(2, 1, 6, 10, generator=gen(3))
    y = torch.tensor([1, 3])
    shared, per_sample = grid(3, 5), grid(3, 5, batch=2)
    a = euler_sample(m, noise, y, shared, steps=3, cfg_scale=2.0, null_class=m.null_class)
    b = euler_sample(m, noise, y, per_sample, steps=3, cfg_scale=2.0, null_class=m.null_class)
    assert a.shape == noise.shape and torch.isfinite(a).all()
    # broadcast positions vs B rows of them: 3 steps through the model's LAYERS, and guidance
    # 2 v_cond - v_null adds up 2 + 1 = 3 velocities' rounding errors
    assert_close_f32(a, b, depth=3 * LAYERS, width=WIDTH, factor=3)
    fast = functools.partial(m, validate=False)
    c = euler_sample(fast, noise, y, shared, steps=3, cfg_scale=2.0, null_class=m.null_class)
    assert torch.equal(a, c)  # exact: validate=False skips range checks only, the same ops


def test_denoising_losses_are_fixed_by_the_seed():
    m = scramble(DiT(config(), generator=gen()))
    x1 = torch.randn(4, 1, 8, 8, generator=gen(1))
    y, pos = torch.tensor([0, 1, 2, 3]), grid(4, 4)
    a = denoising_losses(m, x1, y, pos, generator=gen(5))
    b = denoising_losses(m, x1, y, pos, generator=gen(5))
    c = denoising_losses(m, x1, y, pos, generator=gen(6))
    assert a == b and a != c and list(a) == [0.1, 0.3, 0.5, 0.7, 0.9]
    custom = denoising_losses(m, x1, y, pos, (0.5,), generator=gen(5))
    g = gen(5)
    x0 = torch.randn(x1.shape, generator=g)
    with torch.no_grad():  # as denoising_losses (with a gradient, attention takes another path)
        manual = flow_matching_loss(m, x1, y, pos, x0, torch.full((4,), 0.5))
    assert custom == {0.5: manual.item()}  # exact: the same noise through the same ops
