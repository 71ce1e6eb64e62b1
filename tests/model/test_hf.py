"""randpos.model.hf: the position collator and cached decoding on tiny HF causal LMs (no downloads).

The oracle for the collator is an independent forward pass written from the weights: RMSNorm
(or LayerNorm for GPT-NeoX), the RoPE rotation computed here in float64 with HF's half-split
pairing and ``inv_freq = 1 / theta^(2i/d)``, causal attention with the padding mask, and the
MLP. Shapes: B = batch, T = length, H = heads, d = head dim.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from numerics import assert_close_f32, f32_atol
from torch import nn

transformers = pytest.importorskip("transformers")

from randpos.model.hf import (  # noqa: E402
    RandomPositionCollator,
    generate,
    rooted_positions,
)

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 50
MPE = 256  # max_position_embeddings of the tiny configs
L = 64  # the random range [0, L) used by most tests
LLAMA_THETA = 1000.0
NEOX_THETA = 500.0
NEOX_ROTARY = 0.5  # GPT-NeoX rotates only the first half of each head
SMALL = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=VOCAB,
    max_position_embeddings=MPE,
    initializer_range=0.2,  # larger than HF's 0.02, so positions visibly move the logits
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and two threads stall on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The oracle checks run the HF model in float64 too (.double()). One step stays float32, as HF
# writes it: the rotary angle position x inv_freq and its cos/sin, whatever the model's dtype. An
# angle of up to L = 64 rad rounded in float32 moves cos/sin by up to EPS32 x L, so the logits of
# the 2 layers agree with the float64 oracle to EPS32 x 2 x L x max|logit|: f32_atol with
# depth 2 and a factor L (everything else rounds in float64, 1e-9 times less).
DEPTH = 2


def assert_matches_oracle(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.float64
    assert_close_f32(got, want, depth=DEPTH, factor=L)


def oracle_atol(want: torch.Tensor) -> float:
    return L * f32_atol(want, depth=DEPTH)


def tiny_model(family: str = "llama", attn: str = "sdpa", seed: int = 0) -> nn.Module:
    """A randomly initialized 2-layer causal LM of ``family`` in eval mode (float32)."""
    torch.manual_seed(seed)
    if family == "neox":
        config = transformers.GPTNeoXConfig(
            **SMALL, rotary_pct=NEOX_ROTARY, rotary_emb_base=NEOX_THETA, attn_implementation=attn
        )
    else:
        cls = {
            "llama": transformers.LlamaConfig,
            "qwen2": transformers.Qwen2Config,
            "mistral": transformers.MistralConfig,
        }[family]
        config = cls(
            **SMALL, num_key_value_heads=2, rope_theta=LLAMA_THETA, attn_implementation=attn
        )
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert model.config._attn_implementation == attn
    return model.eval()


# --- the independent oracle --------------------------------------------------------------------


def _rotate(t: torch.Tensor, pos: torch.Tensor, theta: float, rot_dim: int) -> torch.Tensor:
    """RoPE on the first ``rot_dim`` dims of t (B, H, T, d), pairing dim i with i + rot_dim/2."""
    half = rot_dim // 2
    inv_freq = 1.0 / theta ** (torch.arange(half, dtype=torch.float64) * 2 / rot_dim)
    angle = pos.to(torch.float64)[:, None, :, None] * inv_freq  # (B, 1, T, half)
    cos, sin = angle.cos(), angle.sin()
    a, b, rest = t[..., :half], t[..., half:rot_dim], t[..., rot_dim:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Causal attention (B, H, T, d) with key padding ``mask`` (B, T); every token sees all
    earlier real tokens, whatever the positions."""
    t = q.shape[2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = torch.ones(t, t, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None]
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ v


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:  # (B, T, n*d) -> (B, n, T, d)
    b, t, _ = x.shape
    return x.view(b, t, n, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:  # (B, n, T, d) -> (B, T, n*d)
    b, n, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, n * d)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.double()
    return nn.functional.linear(x, layer.weight.double(), bias)


def oracle_llama(model: nn.Module, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor):
    """Logits (B, T, V) of a Llama/Qwen2/Mistral model, computed from its weights in float64."""
    cfg, base = model.config, model.model
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // heads
    eps = cfg.rms_norm_eps

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()

    x = base.embed_tokens.weight.double()[ids]
    for layer in base.layers:
        att = layer.self_attn
        h = rms(x, layer.input_layernorm.weight)
        q = _rotate(_heads(_linear(h, att.q_proj), heads), pos, LLAMA_THETA, d)
        k = _rotate(_heads(_linear(h, att.k_proj), kv), pos, LLAMA_THETA, d)
        v = _heads(_linear(h, att.v_proj), kv)
        k, v = (t.repeat_interleave(heads // kv, dim=1) for t in (k, v))
        x = x + _linear(_merge(_attend(q, k, v, mask)), att.o_proj)
        h = rms(x, layer.post_attention_layernorm.weight)
        mlp = layer.mlp
        x = x + _linear(
            nn.functional.silu(_linear(h, mlp.gate_proj)) * _linear(h, mlp.up_proj), mlp.down_proj
        )
    return _linear(rms(x, base.norm.weight), model.lm_head)


def oracle_neox(model: nn.Module, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor):
    """Logits (B, T, V) of a GPT-NeoX model (parallel residual, partial rotary) in float64."""
    cfg, base = model.config, model.gpt_neox
    heads = cfg.num_attention_heads
    d = cfg.hidden_size // heads
    rot = int(d * NEOX_ROTARY)

    def ln(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        return nn.functional.layer_norm(
            x, x.shape[-1:], norm.weight.double(), norm.bias.double(), norm.eps
        )

    x = base.embed_in.weight.double()[ids]
    b, t, _ = x.shape
    for layer in base.layers:
        qkv = _linear(ln(x, layer.input_layernorm), layer.attention.query_key_value)
        q, k, v = qkv.view(b, t, heads, 3 * d).transpose(1, 2).chunk(3, dim=-1)
        q, k = _rotate(q, pos, NEOX_THETA, rot), _rotate(k, pos, NEOX_THETA, rot)
        attn = _linear(_merge(_attend(q, k, v, mask)), layer.attention.dense)
        h = ln(x, layer.post_attention_layernorm)
        mlp = _linear(
            nn.functional.gelu(_linear(h, layer.mlp.dense_h_to_4h)), layer.mlp.dense_4h_to_h
        )
        x = x + attn + mlp
    return _linear(ln(x, base.final_layer_norm), model.get_output_embeddings())


def oracle(model: nn.Module, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor):
    if model.config.model_type == "gpt_neox":
        return oracle_neox(model, ids, pos, mask)
    return oracle_llama(model, ids, pos, mask)


def examples(lengths: list[int], seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, VOCAB, (n,), generator=g).tolist()} for n in lengths]


def hf_logits(model: nn.Module, batch: dict, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            position_ids=batch["position_ids"],
            **kwargs,
        ).logits


# --- packaging ---------------------------------------------------------------------------------


def test_import_randpos_stays_light_and_missing_transformers_is_one_line():
    code = (
        "import sys\n"
        "import randpos\n"
        "assert 'transformers' not in sys.modules, 'import randpos imported transformers'\n"
        "sys.modules['transformers'] = None  # as if it were not installed\n"
        "try:\n"
        "    import randpos.model.hf\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    message = out.stdout.strip()
    assert message.count("\n") == 0
    assert "pip install 'randpos[hf]'" in message


# --- the collator ------------------------------------------------------------------------------


def test_collator_pads_masks_and_roots_random_positions():
    collate = RandomPositionCollator("random", L, pad_token_id=7, seed=3)
    batch = collate(examples([5, 2, 9, 1]))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "position_ids"}
    ids, mask, labels, pos = (
        batch[k] for k in ("input_ids", "attention_mask", "labels", "position_ids")
    )
    assert ids.shape == mask.shape == labels.shape == pos.shape == (4, 9)
    assert pos.dtype == torch.long
    assert mask.sum(1).tolist() == [5, 2, 9, 1]
    assert (ids[mask == 0] == 7).all()
    assert (labels[mask == 0] == -100).all()
    assert torch.equal(labels[mask == 1], ids[mask == 1])
    assert (pos >= 0).all() and (pos < L).all()  # pads included
    for row, n in zip(pos, [5, 2, 9, 1], strict=True):
        assert row[0] == 0 and (row[1:] != 0).all()  # rooted, one zero per row
        assert (row[:n].diff() > 0).all()  # distinct and sorted
    # per-sequence draws: rows of the same length differ
    again = collate(examples([9, 9, 9]))["position_ids"]
    assert not torch.equal(again[0], again[1])


def test_collator_seeding_is_explicit():
    data = examples([6, 4, 8])
    first = RandomPositionCollator("random", L, seed=11)(data)["position_ids"]
    same = RandomPositionCollator("random", L, seed=11)(data)["position_ids"]
    other = RandomPositionCollator("random", L, seed=12)(data)["position_ids"]
    assert torch.equal(first, same) and not torch.equal(first, other)
    g = torch.Generator().manual_seed(11)
    assert torch.equal(
        RandomPositionCollator("random", L, generator=g)(data)["position_ids"], first
    )
    torch.manual_seed(0)
    a = RandomPositionCollator("random", L, seed=5)(data)["position_ids"]
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(RandomPositionCollator("random", L, seed=5)(data)["position_ids"], a)


def test_rooted_positions_are_uniform_subsets():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([rooted_positions(3, 6, g) for _ in range(3000)])
    assert (draws[:, 0] == 0).all()
    # the two non-root positions are a uniform 2-subset of {1..5}: each value has mass 2/5
    freq = torch.bincount(draws[:, 1:].flatten(), minlength=6)[1:].double() / 3000
    assert torch.allclose(freq, torch.full((5,), 0.4, dtype=torch.float64), atol=0.04)


def test_collator_modes_pose_float_contiguous_and_batched_input():
    data = examples([7, 3])
    pose = RandomPositionCollator("pose", L, seed=0)(data)["position_ids"]
    for row, n in zip(pose, [7, 3], strict=True):
        steps = row[:n].diff()
        assert row[0] == 0 and (steps > 0).all() and (steps != 1).sum() <= 1  # two chunks
    floats = RandomPositionCollator("float", L, seed=0)(data)["position_ids"]
    assert floats.dtype == torch.float32 and floats[0, 0] == 0 and (floats[:, 1:] > 0).all()
    assert (floats[0].diff() > 0).all() and (floats < L).all()
    contiguous = RandomPositionCollator("contiguous")(data)["position_ids"]
    assert torch.equal(contiguous, torch.arange(7).expand(2, 7))
    # an already padded batch of tensors, with its own labels
    ids = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
    tensor_batch = {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "labels": torch.tensor([[-100, 4, 5, 0], [-100, 7, 0, 0]]),
    }
    out = RandomPositionCollator("random", L, pad_token_id=9)(tensor_batch)
    assert out["input_ids"].tolist() == [[3, 4, 5], [6, 7, 9]]
    assert out["labels"].tolist() == [[-100, 4, 5], [-100, 7, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    padded = RandomPositionCollator("random", 8, pad_to_multiple_of=8)(examples([6, 2]))
    assert padded["position_ids"].shape == (2, 8) and (padded["position_ids"] < 8).all()


FAMILIES = ["llama", "qwen2", "mistral", "neox"]


@pytest.mark.numerics
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_collator_positions_match_a_hand_rotation(family: str, attn: str):
    model = tiny_model(family, attn)
    batch = RandomPositionCollator("random", L, model=model, seed=1)(examples([9, 4, 6]))
    mask = batch["attention_mask"]
    model.double()  # the code under test in float64 too (DEPTH)
    # use_cache=False: the setting in which recent versions look for packed sequences
    got = hf_logits(model, batch, use_cache=False)
    want = oracle(model, batch["input_ids"], batch["position_ids"], mask)
    real = mask.bool()
    assert_matches_oracle(got[real], want[real])
    # the oracle is sharp: contiguous positions give clearly different logits
    arange = torch.arange(9).expand(3, 9)
    wrong = oracle(model, batch["input_ids"], arange, mask)
    assert (wrong[real] - want[real]).abs().max() > 100 * oracle_atol(want[real])


@pytest.mark.numerics
def test_gap_positions_without_a_mask(record_property):
    """With the collator's explicit mask, gapped positions keep full causal attention. Without
    a mask (and with use_cache=False), transformers 5.x reads every gap as the start of a new
    packed sequence and isolates the tokens; 4.45 does not. Recorded, not asserted."""
    model = tiny_model("llama", "sdpa")
    batch = RandomPositionCollator("random", L, model=model, seed=2)(examples([8, 8]))
    assert batch["attention_mask"].all()
    model.double()
    want = oracle(model, batch["input_ids"], batch["position_ids"], batch["attention_mask"])
    with_mask = hf_logits(model, batch, use_cache=False)
    assert_matches_oracle(with_mask, want)
    no_mask = dict(batch, attention_mask=None)
    gap = (hf_logits(model, no_mask, use_cache=False) - want).abs().max().item()
    record_property("transformers", transformers.__version__)
    record_property("max_logit_gap_without_mask", gap)
    print(f"transformers {transformers.__version__}: no-mask logit gap {gap:.3g}")
    # contiguous positions are never mistaken for packing, with or without a mask
    flat = dict(no_mask, position_ids=torch.arange(8).expand(2, 8))
    flat_want = oracle(model, batch["input_ids"], flat["position_ids"], batch["attention_mask"])
    assert_matches_oracle(hf_logits(model, flat, use_cache=False), flat_want)


def test_rooted_rows_are_one_sequence_for_flash_varlen():
    """FlashAttention-2 (batch 1, no padding) splits a row where its minimum position repeats;
    a rooted row has a single 0, so the split keeps one sequence."""
    utils = pytest.importorskip("transformers.modeling_flash_attention_utils")
    prepare = getattr(utils, "prepare_fa_kwargs_from_position_ids", None)
    if prepare is None:
        pytest.skip("this transformers version has no prepare_fa_kwargs_from_position_ids")
    pos = RandomPositionCollator("random", L, seed=0)(examples([12]))["position_ids"]
    (cu_q, _), _ = prepare(pos)
    assert cu_q.tolist() == [0, 12]
    unrooted = torch.tensor([[0, 3, 0, 9]])  # what a second 0 would do
    (cu_bad, _), _ = prepare(unrooted)
    assert cu_bad.tolist() == [0, 2, 4]


@pytest.mark.numerics
def test_float_positions_on_llama_and_refused_where_they_cannot_work():
    model = tiny_model("llama", "eager")
    batch = RandomPositionCollator("float", L, model=model, seed=4)(examples([8, 5]))
    pos, mask = batch["position_ids"], batch["attention_mask"]
    model.double()
    got = hf_logits(model, batch)
    assert torch.isfinite(got).all()
    want = oracle(model, batch["input_ids"], pos, mask)[mask.bool()]
    assert_matches_oracle(got[mask.bool()], want)
    rounded = hf_logits(model, dict(batch, position_ids=pos.round().long()))
    assert (rounded - got)[mask.bool()].abs().max() > 100 * oracle_atol(want)
    gpt2 = transformers.GPT2Config(
        n_embd=32,
        n_layer=1,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
    )
    with pytest.raises(ValueError, match=r"^mode: 'float' positions cannot work for gpt2") as err:
        RandomPositionCollator("float", 64, config=gpt2)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="learned table"):
        RandomPositionCollator("float", 64, model=transformers.GPT2LMHeadModel(gpt2))
    RandomPositionCollator("random", 64, config=gpt2)  # integer positions are fine for GPT-2


class NoPositions(nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return input_ids


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: RandomPositionCollator("random", 4)(examples([5])), "max_position"),
        (lambda: RandomPositionCollator("rnd", 8), "mode"),
        (lambda: RandomPositionCollator("random"), "max_position"),
        (lambda: RandomPositionCollator("random", 0), "max_position"),
        (lambda: RandomPositionCollator("random", 8, model=NoPositions()), "position_ids"),
        (lambda: RandomPositionCollator("random", 8)([{"input_ids": []}]), "input_ids"),
        (lambda: RandomPositionCollator("random", 8)([]), "input_ids"),
        (
            lambda: RandomPositionCollator("random", 8)([{"input_ids": [1, 2], "labels": [1]}]),
            "labels",
        ),
        (
            lambda: RandomPositionCollator("random", 8)(
                {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": [[0, 1, 1]]}
            ),
            "attention_mask",
        ),
    ],
)
def test_collator_bad_input_is_a_one_line_value_error(make, field):
    with pytest.raises(ValueError, match=rf"^{field}\b") as err:
        make()
    assert "\n" not in str(err.value)


def test_collator_checks_the_model_range():
    config = tiny_model("llama").config
    with pytest.raises(ValueError, match=r"^max_position: 512 exceeds .*max_position_embeddings"):
        RandomPositionCollator("random", 512, config=config)
    assert RandomPositionCollator("random", 512, config=config, check_max_position=False)
    assert RandomPositionCollator("random", config=config).max_position == MPE


# --- decoding ----------------------------------------------------------------------------------


# Decoding runs in float64 models, so cached and uncached logits differ only through HF's float32
# cos/sin of the same float32 angles (the same product, but a 1-token call may take another
# vector kernel, off by an ulp): EPS32 x 2 layers x max|logit| (f32_atol). The greedy tokens then
# agree wherever the top-2 margin exceeds twice that.
def decoding_atol(logits: torch.Tensor) -> float:
    return f32_atol(logits, depth=DEPTH)


def _no_near_tie(logits: torch.Tensor) -> bool:
    """Whether every row of logits (B, V) has a top-2 margin above 2 decoding_atol."""
    top = logits.topk(2, dim=-1).values
    return bool(((top[:, 0] - top[:, 1]) > 2 * decoding_atol(logits)).all())


def _check_against_full_forward(model, ids, pos, prompt_len):
    """Every new token is the argmax of one uncached forward over the same ids and positions,
    with a top-2 margin that no rounding of another code path can overturn."""
    with torch.no_grad():
        for k in range(prompt_len, ids.shape[1]):
            logits = model(
                input_ids=ids[:, :k],
                attention_mask=torch.ones_like(ids[:, :k]),
                position_ids=pos[:, :k],
                use_cache=False,
            ).logits[:, -1]
            assert _no_near_tie(logits), f"step {k}: a near tie, either token is right"
            assert torch.equal(logits.argmax(-1), ids[:, k]), f"step {k}"


@pytest.mark.numerics
@pytest.mark.parametrize("given", [False, True])
@pytest.mark.parametrize("mode", ["arange", "spread", "random"])
def test_generate_matches_uncached_forward(mode: str, given: bool):
    model = tiny_model("llama", "sdpa").double()
    prompt = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    p, n = 5, 7
    prompt_pos = torch.tensor([[0, 4, 9, 10, 21], [0, 2, 3, 17, 30]]) if given else None
    ids, pos = generate(
        model,
        prompt,
        max_new_tokens=n,
        position_ids=prompt_pos,
        decode_positions=mode,
        max_position=L,
        generator=torch.Generator().manual_seed(1),
        return_positions=True,
    )
    assert ids.shape == pos.shape == (2, p + n) and torch.equal(ids[:, :p], prompt)
    _check_against_full_forward(model, ids, pos, p)
    for row, last in zip(pos, [21, 30] if given else [None, None], strict=True):
        assert (row.diff() > 0).all() and (row >= 0).all() and (row < L).all()
        if given:
            new = row[p:]
            room = L - 1 - last
            if mode == "arange":
                assert new.tolist() == list(range(last + 1, last + 1 + n))
            elif mode == "spread":
                assert new.tolist() == [last + -(-(i + 1) * room // n) for i in range(n)]
            else:
                assert new.min() > last
        elif mode == "arange":
            assert row.tolist() == list(range(p + n))
        elif mode == "spread":
            assert row.tolist() == [i * L // (p + n) for i in range(p + n)]
        else:
            assert row[0] == 0 and (row[1:] > 0).all()
    if given:
        assert torch.equal(pos[:, :p], prompt_pos)


@pytest.mark.numerics
def test_generate_positions_matter_and_neox_decodes():
    model = tiny_model("neox", "eager").double()
    prompt = torch.randint(1, VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    ids, pos = generate(
        model,
        prompt,
        max_new_tokens=5,
        decode_positions="spread",
        max_position=L,
        return_positions=True,
    )
    _check_against_full_forward(model, ids, pos, 6)
    with torch.no_grad():
        spread = model(input_ids=ids, position_ids=pos).logits
        arange = model(input_ids=ids, position_ids=torch.arange(11)[None]).logits
    assert (spread - arange).abs().max() > 100 * decoding_atol(spread)  # positions reach it


@pytest.mark.numerics
def test_generate_left_padding_and_eos():
    model = tiny_model("qwen2", "sdpa").double()
    g = torch.Generator().manual_seed(5)
    long, short = (
        torch.randint(1, VOCAB, (1, 6), generator=g),
        torch.randint(1, VOCAB, (1, 3), generator=g),
    )
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    for mode in ("arange", "spread"):
        ids, pos = generate(
            model,
            batch,
            attention_mask=mask,
            max_new_tokens=4,
            decode_positions=mode,
            max_position=L,
            return_positions=True,
        )
        for row, prompt in ((0, long), (1, short)):
            alone, alone_pos = generate(
                model,
                prompt,
                max_new_tokens=4,
                decode_positions=mode,
                max_position=L,
                return_positions=True,
            )
            # padded and alone: other shapes, so equal tokens need margins beyond rounding
            _check_against_full_forward(model, alone, alone_pos, prompt.shape[1])
            assert torch.equal(ids[row, -4:], alone[0, -4:])
            assert torch.equal(pos[row, -(prompt.shape[1] + 4) :], alone_pos[0])
    # eos: stop once every row has emitted it, later tokens of finished rows are padding
    free = generate(model, long, max_new_tokens=6, max_position=L)
    eos = int(free[0, 7])
    stopped = generate(model, long, max_new_tokens=6, max_position=L, eos_token_id=eos)
    first = int((free[0, 6:] == eos).nonzero()[0]) + 6
    assert torch.equal(stopped[0], free[0, : first + 1])


@pytest.mark.numerics
def test_hf_generate_with_user_position_ids_is_recorded(record_property):
    """What model.generate() does with a user position_ids varies by version (5.24 continues
    last+1, last+2, ...; 4.45 keeps the whole prompt tensor and fails at the first decode
    step). Recorded, not asserted; randpos.model.hf.generate gives the same ids on every version."""
    model = tiny_model("llama").double()
    prompt = torch.randint(1, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([[0, 7, 15, 30, 40]])
    seen: list[list[int]] = []
    hook = model.model.rotary_emb.register_forward_hook(
        lambda module, args, out: seen.append(args[1].flatten().tolist())
    )
    try:
        model.generate(
            prompt,
            position_ids=pos,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
        )
        behaviour = f"decode positions {[s[-1] for s in seen[1:]]}"
    except Exception as err:  # any failure is the observation
        behaviour = f"{type(err).__name__}"
    finally:
        hook.remove()
    record_property("hf_generate_with_position_ids", behaviour)
    print(f"transformers {transformers.__version__}: model.generate with position_ids: {behaviour}")
    ids, used = generate(
        model, prompt, position_ids=pos, max_new_tokens=3, max_position=L, return_positions=True
    )
    assert used[0, 5:].tolist() == [41, 42, 43]
    _check_against_full_forward(model, ids, used, 5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(max_position=4), "input_ids"),  # a prompt longer than L
        (dict(position_ids=torch.tensor([[0, 1, 2, 3, 64]])), "position_ids"),
        (dict(position_ids=torch.tensor([[0, 1, 2, 3, -1]])), "position_ids"),
        (dict(position_ids=torch.tensor([[0, 1, 2, 3, 60]]), max_new_tokens=4), "max_new_tokens"),
        (dict(max_new_tokens=60, decode_positions="random"), "max_new_tokens"),
        (dict(decode_positions="next"), "decode_positions"),
        (dict(position_ids=torch.tensor([[0.0, 1, 2, 3, 4]])), "position_ids"),
        (dict(attention_mask=torch.tensor([[1, 1, 1, 0, 0]])), "attention_mask"),
    ],
)
def test_generate_bad_input_is_a_one_line_value_error(kwargs, field):
    model = tiny_model("llama")
    args = dict(max_new_tokens=3, max_position=L) | kwargs
    with pytest.raises(ValueError, match=rf"^{field}\b") as err:
        generate(model, torch.ones(1, 5, dtype=torch.long), **args)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^position_ids\b"):
        generate(NoPositions(), torch.ones(1, 5, dtype=torch.long), max_new_tokens=1)


# --- the fine-tune demonstration, reduced ------------------------------------------------------


def _load_finetune():
    path = ROOT / "examples" / "hf_finetune.py"
    spec = importlib.util.spec_from_file_location("hf_finetune", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_finetune_randomized_beats_contiguous_on_unseen_lengths():
    """REDUCED (800 steps, seed 0, about 70 s on one thread). Measured margins on unseen
    lengths (random/random minus contiguous/arange) for seeds 0, 1, 2: 0.071, 0.080, 0.046,
    so the threshold 0.03 holds for every seed tried."""
    finetune = _load_finetune()
    result = finetune.run(finetune.REDUCED)
    summary = result["summary"]
    assert summary["contiguous"]["trained"] > 0.9  # both arms learn the trained lengths
    assert summary["random"]["trained"] > 0.9
    assert summary["random"]["unseen"] > summary["contiguous"]["unseen"] + 0.03
