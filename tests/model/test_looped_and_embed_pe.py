"""The Transformer's two extensions for arithmetic (docs/design.md §6): a second, embed-only
encoding fed by its own positions, and the looped model (one weight-tied block applied r times
with the embedded input added before every later pass). One pass is the plain model; r passes
are the block composed r times (a float64 oracle); cached decoding, with a cache slot per pass
and each new token's embed positions read from the sequence so far, equals a full forward."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from numerics import assert_close_f32, f64_atol

from randpos.model import KVCache, ModelConfig, Transformer
from randpos.positions import TokenKinds, TokenPositionSpec, token_positions
from randpos.tasks.arithmetic import ArithmeticFormat, ArithmeticTask

TASK = ArithmeticTask("addition", ArithmeticFormat(index_hints=True, hint_vocab=5))
KINDS = TokenKinds(TASK.vocab_size, TASK.digit_ids, TASK.hint_ids).table()
L = 96


def model(pe: str = "fire", loops: int = 3, embed_pe: str = "learned", **overrides) -> Transformer:
    config = ModelConfig(
        vocab_size=TASK.vocab_size,
        num_classes=TASK.vocab_size,
        num_layers=2,
        width=32,
        num_heads=4,
        ff_width=64,
        dropout=0.0,
        pe=pe,
        max_position=L,
        causal=True,
        embed_pe=embed_pe,
        embed_max_position=40,
        loops=loops,
        **overrides,
    )
    return Transformer(config, generator=torch.Generator().manual_seed(0)).eval()


def example(batch: int = 3, digits: int = 6, source: str = "abacus", offset: int = 7):
    sample = TASK.sample(batch, digits, torch.Generator().manual_seed(1))
    tokens = sample.tokens
    embed = token_positions(TokenPositionSpec(source), tokens, KINDS, torch.tensor([[offset]]))
    positions = torch.arange(tokens.shape[1])[None]
    return tokens, positions, embed, int(sample.answer_start.min())


def test_one_pass_is_the_plain_model():
    looped = model(loops=4)
    plain = model(loops=1)
    assert sum(p.numel() for p in looped.parameters()) == sum(
        p.numel() for p in plain.parameters()
    )  # weight tying: passes add no parameters
    plain.load_state_dict(looped.state_dict())
    tokens, positions, embed, _ = example()
    with torch.no_grad():
        # the same code path on the same machine: exactly equal
        assert torch.equal(
            looped(tokens, positions, embed_positions=embed, loops=1),
            plain(tokens, positions, embed_positions=embed),
        )


def test_r_passes_compose_the_block_with_input_injection():
    net = model(loops=3).double()
    tokens, positions, embed, _ = example()
    with torch.no_grad():
        got = net(tokens, positions, embed_positions=embed)
        # the oracle: e = token embedding * sqrt(D) + table[embed positions];
        # h_1 = block(e), h_p = block(h_{p-1} + e); logits = head(h_3)
        e = net.embedding(tokens) * math.sqrt(net.config.width)
        e = e + net.embed_pe.table[embed]
        h = e
        for p in range(3):
            h = h if p == 0 else h + e
            for index, layer in enumerate(net.layers):
                h = layer(h, positions, net.pe, index, None)
        expected = net.head(h)
    # float64 throughout, the same operations in another arrangement: EPS64 x 3 passes x 2
    # layers x sqrt(64) (ff_width) x max|logit|
    torch.testing.assert_close(got, expected, atol=f64_atol(expected, depth=6, width=64), rtol=0)


def test_a_zero_embed_table_leaves_the_model_unchanged():
    with_embed = model(loops=1)
    without = model(loops=1, embed_pe="none")
    state = {k: v for k, v in with_embed.state_dict().items() if not k.startswith("embed_pe.")}
    without.load_state_dict(state)
    with torch.no_grad():
        with_embed.embed_pe.table.zero_()
    tokens, positions, embed, _ = example()
    with torch.no_grad():  # x + 0 is exact
        assert torch.equal(
            with_embed(tokens, positions, embed_positions=embed), without(tokens, positions)
        )


@pytest.mark.numerics
@pytest.mark.parametrize("source", ["abacus", "coupled"])
@pytest.mark.parametrize("pe", ["none", "fire", "rope", "alibi"])
@pytest.mark.parametrize("loops", [1, 3])
def test_cached_decoding_reads_each_new_tokens_position_and_equals_a_full_forward(
    pe, source, loops
):
    net = model(pe=pe, loops=loops)
    tokens, positions, embed, prompt = example(source=source)
    spec = TokenPositionSpec(source)
    offset = torch.tensor([[7]])
    with torch.no_grad():
        full = net(tokens, positions, embed_positions=embed)
        cache = KVCache(net.config.num_layers * loops)
        steps = [net(tokens[:, :prompt], positions[:, :prompt], embed_positions=embed[:, :prompt],
                     cache=cache)]  # fmt: skip
        for t in range(prompt, tokens.shape[1]):
            # the new token's embed position, from the sequence so far alone
            new = token_positions(spec, tokens[:, : t + 1], KINDS, offset)[:, -1:]
            steps.append(
                net(tokens[:, t : t + 1], positions[:, t : t + 1], embed_positions=new, cache=cache)
            )
        assert all(k is not None for k in cache.keys)  # every pass filled its own slots
        assert cache.keys[0].shape[-2] == tokens.shape[1]
    # other shapes, other kernels: EPS32 x (2 layers x r passes) x sqrt(64) (ff_width) x
    # max|logit| (f32_atol)
    assert_close_f32(torch.cat(steps, dim=1), full, depth=2 * loops, width=64)


def test_bad_inputs_are_one_line_errors():
    net = model(loops=2)
    tokens, positions, embed, _ = example()
    with pytest.raises(ValueError, match="needs embed_positions"):
        net(tokens, positions)
    with pytest.raises(ValueError, match=r"embed_positions must lie in \[0, embed_max_position=40"):
        net(tokens, positions, embed_positions=embed + 40)
    with pytest.raises(ValueError, match="embed_positions must be an integer tensor"):
        net(tokens, positions, embed_positions=embed.float())
    with pytest.raises(ValueError, match=r"KVCache\(num_layers \* loops = 4\)"):
        net(tokens, positions, embed_positions=embed, cache=KVCache(2))
    with pytest.raises(ValueError, match="loops must be a positive integer"):
        net(tokens, positions, embed_positions=embed, loops=0)
    base = dataclasses.replace(net.config)
    with pytest.raises(ValueError, match="embed_pe='rope': must be an embed-only encoding"):
        Transformer(dataclasses.replace(base, embed_pe="rope"))
    with pytest.raises(ValueError, match="ModelConfig.loops=0: must be a positive integer"):
        Transformer(dataclasses.replace(base, loops=0))
