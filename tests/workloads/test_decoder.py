"""The causal decoder: the KV cache, the placement of generated tokens and the workload.

* cached decoding (a prompt, then one token at a time) gives the logits of one full forward
  over the same positions, for every encoding that runs causally and every decode mode;
* the cache holds O(T) per layer;
* the decoder workload poses a task autoregressively, trains, and evaluates by greedy decoding
  with the same numbers with and without the cache, alone or as an ensemble member.
"""

from __future__ import annotations

import pytest
import torch
from numerics import assert_close_f32, f32_atol
from tiny import TINY_BASE
from trajectories import EvalLogits, assert_same_evaluation, logit_width

from randpos.core.fields import ConfigError
from randpos.encodings import PE_NAMES_1D as PE_NAMES
from randpos.encodings import get_encoding
from randpos.loop.training import Trainer, train
from randpos.model import KVCache, ModelConfig, Transformer
from randpos.positions import DECODE_MODES, decode_positions, randomized_positions
from randpos.tasks import get_task
from randpos.workloads import get_workload, resolve_config
from randpos.workloads.config import TrainConfig

L = 64
CACHED = [n for n in PE_NAMES if get_encoding(n).supports_cache]
# Cached decoding and a full forward compute the same logits with other shapes (T keys and one
# query instead of T x T), so other kernels and blockings round them: they agree to
# EPS32 x 2 layers x sqrt(64) (ff_width, the longest dot product) x max|logit| (f32_atol).
DEPTH, WIDTH = 2, 64


def causal_model(pe: str, backend: str = "fast", **overrides) -> Transformer:
    config = ModelConfig(
        vocab_size=7,
        num_classes=5,
        num_layers=2,
        width=32,
        num_heads=4,
        ff_width=64,
        dropout=0.0,
        pe=pe,
        max_position=L,
        causal=True,
        attention=backend,
        **overrides,
    )
    model = Transformer(config, generator=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():  # move every parameter off its initial value (CoPE starts at zero)
        g = torch.Generator().manual_seed(1)
        for p in model.pe.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def incremental(model: Transformer, tokens, positions, prompt: int) -> torch.Tensor:
    """Logits of the prompt in one cached forward, then of every later token one at a time."""
    cache = KVCache(model.config.num_layers)
    outs = [model(tokens[:, :prompt], positions[:, :prompt], cache=cache)]
    for t in range(prompt, tokens.shape[1]):
        outs.append(model(tokens[:, t : t + 1], positions[:, t : t + 1], cache=cache))
    assert cache.length == tokens.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.numerics
@pytest.mark.parametrize("mode", DECODE_MODES)
@pytest.mark.parametrize("pe", CACHED)
def test_cached_decoding_equals_a_full_forward_over_the_same_positions(pe, mode):
    B, P, N = 3, 6, 7
    g = torch.Generator().manual_seed(2)
    prompt_positions = randomized_positions(1, P, L // 2, g).expand(B, P)
    positions = torch.cat([prompt_positions, decode_positions(prompt_positions, N, L, mode, g)], 1)
    tokens = torch.randint(0, 7, (B, P + N), generator=g)
    for backend in ("fast", "math"):
        model = causal_model(pe, backend)
        with torch.no_grad():
            full = model(tokens, positions)
            step = incremental(model, tokens, positions, P)
        assert_close_f32(step, full, depth=DEPTH, width=WIDTH)


@pytest.mark.numerics
@pytest.mark.parametrize("pe", [n for n in CACHED if get_encoding(n).float_positions])
def test_cached_decoding_takes_float_positions(pe):
    g = torch.Generator().manual_seed(3)
    prompt = torch.sort(torch.rand(1, 5, generator=g, dtype=torch.float64) * 20).values
    positions = torch.cat([prompt, decode_positions(prompt, 4, L, "random", g)], 1)
    assert positions.is_floating_point() and bool((positions.diff() > 0).all())
    tokens = torch.randint(0, 7, (2, 9), generator=g)
    model = causal_model(pe)
    with torch.no_grad():
        full = model(tokens, positions)
        step = incremental(model, tokens, positions, 5)
    assert_close_f32(step, full, depth=DEPTH, width=WIDTH)


def test_the_cache_holds_keys_and_values_linear_in_the_length():
    model = causal_model("alibi")
    sizes = {}
    for T in (10, 20, 40):
        cache = KVCache(2)
        with torch.no_grad():
            model(torch.zeros(1, T, dtype=torch.long), torch.arange(T)[None], cache=cache)
        sizes[T] = cache.nbytes()
        assert cache.keys[0].shape == (1, 4, T, 8)  # (B, H, T, d): no (T, T) state is kept
    assert sizes[20] == 2 * sizes[10] and sizes[40] == 2 * sizes[20]


def test_decode_positions_follow_their_rules():
    prompt = torch.tensor([[0, 4, 9]]).expand(2, 3)
    assert decode_positions(prompt, 3, 20, "arange").tolist() == [[10, 11, 12]] * 2
    spread = decode_positions(prompt, 4, 20, "spread")
    assert spread[0].tolist() == [12, 14, 17, 19]  # evenly up to L - 1
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = decode_positions(prompt, 6, 20, "random", g1)
    assert torch.equal(a, decode_positions(prompt, 6, 20, "random", g2))  # seeded
    assert torch.equal(a[0], a[1])  # a shared prompt shares the draw
    assert bool((a.diff() > 0).all()) and int(a.min()) > 9 and int(a.max()) < 20
    with pytest.raises(ValueError, match="do not fit after the prompt's last position 9"):
        decode_positions(prompt, 11, 20, "arange")
    with pytest.raises(ValueError, match="unknown decode_positions 'next'"):
        decode_positions(prompt, 1, 20, "next")


def test_random_decode_positions_continue_a_sorted_draw_uniformly():
    """For a uniform sorted subset of [0, L), the part after its P smallest is uniform over the
    subsets of (p_P, L): a drawn continuation must hit every later position about equally."""
    g = torch.Generator().manual_seed(6)
    prompt = torch.tensor([[0, 3, 7]])
    counts = torch.zeros(16)
    for _ in range(2000):
        counts[decode_positions(prompt, 2, 16, "random", g)[0]] += 1
    later = counts[8:] / 2000  # each of the 8 later positions: probability 2/8
    assert counts[:8].sum() == 0 and bool(((later - 0.25).abs() < 0.04).all())


def test_cache_errors_name_the_problem():
    bidirectional = Transformer(ModelConfig(pe="rope", dropout=0.0, causal=False)).eval()
    with pytest.raises(ValueError, match="needs a causal model"):
        bidirectional(torch.zeros(1, 3, dtype=torch.long), torch.arange(3)[None], cache=KVCache(5))
    model = causal_model("alibi")
    tables = torch.zeros(1, 2, 3, dtype=torch.long)
    tables[0, :, 1:] = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="takes positions only"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.arange(3)[None], distances=tables,
              cache=KVCache(2))  # fmt: skip
    bug = causal_model("relative_reference_bug")
    with pytest.raises(ValueError, match="cannot decode with a KV cache"):
        bug(torch.zeros(1, 3, dtype=torch.long), torch.arange(3)[None], cache=KVCache(2))


# ------------------------------------------------------------------------- the workload
DECODER = dict(TINY_BASE, workload="decoder", steps=30, batch_size=16, learning_rate=3e-3)


def decoder(**overrides) -> TrainConfig:
    return resolve_config({**DECODER, **overrides})


def test_the_decoder_poses_a_task_autoregressively():
    workload = get_workload("decoder")(decoder(task="duplicate_string"))
    task = get_task("duplicate_string")
    sample = task.sample(2, 3, torch.Generator().manual_seed(0))
    tokens = workload.inputs(sample)  # x (3), SEP, y_1..y_5 (y has 6 symbols)
    v = task.input_vocab_size
    assert tokens.shape == (2, 3 + 6)
    assert torch.equal(tokens[:, :3], sample.inputs) and bool((tokens[:, 3] == v).all())
    assert torch.equal(tokens[:, 4:], sample.targets[:, :-1] + v + 1)
    model = workload.build_model(torch.Generator().manual_seed(0))
    assert model.config.causal and model.config.vocab_size == v + 1 + task.output_vocab_size


@pytest.mark.numerics
def test_a_decoder_run_trains_and_decodes_the_same_with_and_without_the_cache(tmp_path):
    config = decoder(pe="rope", randomized=True, max_position=32)
    with EvalLogits() as cached_seen:
        cached = train(config, tmp_path / "cached", progress=False)
    assert cached["decode_positions"] == "random" and cached["workload"] == "decoder"
    trainer = Trainer(config.replace(options={"kv_cache": False}))
    trainer.load_weights([train_weights(tmp_path / "cached")])
    with EvalLogits() as uncached_seen:
        (uncached,) = trainer.evaluate(progress=False)
    # the same weights: the logits of the two decodings differ by the rounding of one forward,
    # EPS32 x num_layers x sqrt(the longest sum: ff_width or T) x max|logit|, and the greedy
    # choices agree but at near ties (test_ensemble.assert_same_evaluation)
    tol = f32_atol(uncached_seen.scale(), depth=config.num_layers, width=logit_width(config))
    assert_same_evaluation(
        config, cached["per_length"], {str(n): a for n, a in uncached.per_length.items()},
        cached_seen, uncached_seen, tol=tol,
    )  # fmt: skip


def train_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def test_decoder_ensemble_members_decode_like_single_runs():
    configs = [decoder(pe="alibi", seed=s) for s in (0, 1)]
    together = Trainer(configs)
    together.fit(progress=False)
    results = together.evaluate(progress=False, lengths=[3, 7])
    for config, result in zip(configs, results, strict=True):
        alone = Trainer(config)
        alone.fit(progress=False)
        # exact: on CPU the ensemble runs its members one by one, with a single run's arithmetic
        assert alone.evaluate(progress=False, lengths=[3, 7])[0].per_length == result.per_length


def test_decoder_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="options.decode_positions='next'"):
        decoder(options={"decode_positions": "next"}).validate()
    with pytest.raises(ConfigError, match="reading 'distances'"):
        decoder(pe="alibi", randomized=True, randomize="distances").validate()
    with pytest.raises(ConfigError, match="cannot decode with a KV cache"):
        decoder(pe="relative_reference_bug").validate()
    decoder(pe="xpos").validate()  # causal-only encodings need no causal=true on a decoder
    with pytest.raises(ConfigError, match="causal-only: set causal=true"):
        resolve_config({**DECODER, "workload": "encoder", "pe": "cope"})


def test_the_cli_trains_a_decoder_and_prints_its_generations(tmp_path):
    from typer.testing import CliRunner

    from randpos.cli import app

    sets = []
    for item in ("batch_size=8", "max_train_length=4", "eval_batch_size=16",
                 "eval_sub_batch_size=8", "num_layers=1", "width=16", "num_heads=2",
                 "ff_width=16"):  # fmt: skip
        sets += ["--set", item]
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--model", "decoder", "--task", "reverse_string",
            "--pe", "alibi", "--randomized", "-L", "40", "--steps", "5", "-M", "6", "--no-store",
            "--quiet", "--device", "cpu", *sets]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = __import__("json").loads((run / "summary.json").read_text())
    assert summary["workload"] == "decoder"
    result = CliRunner().invoke(
        app, ["generate", str(run), "--length", "5", "--count", "2", "--show-positions"]
    )
    assert result.exit_code == 0, result.output
    assert "example 2" in result.output and "output" in result.output
    assert "generated tokens random" in result.output
    result = CliRunner().invoke(app, ["generate", str(run), "--length", "30"])
    assert result.exit_code != 0 and "more than the position range L=40" in result.output


def test_a_sweep_over_the_architecture_reaches_the_report_with_an_architecture_column(tmp_path):
    from randpos.results.report import write_report
    from randpos.results.store import ResultsStore
    from randpos.sweep import LocalExecutor, parse_spec, run_sweep

    base = {k: v for k, v in DECODER.items() if k != "workload"}
    spec = parse_spec(
        {
            "name": "arch",
            "base": {**base, "steps": 5, "pe": "rope", "max_position": 32},
            "grid": {"workload": ["encoder", "decoder"], "randomized": [False, True]},
        }
    )
    store = ResultsStore(tmp_path / "r.sqlite")
    result = run_sweep(
        spec, store, LocalExecutor(1), ensemble_size=1, runs_dir=tmp_path / "runs", progress=False
    )
    assert (result.done, result.failed) == (4, 0)
    paths = write_report(store, tmp_path / "report", sweep="arch")
    text = paths["markdown"].read_text()
    assert "## Architectures" in text and "| task | pe | architecture | randomized |" in text
    assert "| reverse_string | rope | decoder | True |" in text
    assert "| reverse_string | rope | encoder | False |" in text
    assert paths["figure_accuracy_by_architecture"].is_file()


@pytest.mark.parametrize("pe", CACHED)
def test_every_encoding_that_takes_the_cache_trains_and_decodes_on_the_decoder(pe):
    randomized = get_encoding(pe).randomizable
    config = decoder(pe=pe, steps=2, randomized=randomized, max_position=32)
    trainer = Trainer(config)
    trainer.fit(progress=False)
    (result,) = trainer.evaluate(progress=False, lengths=[2, 6])
    assert all(0.0 <= a <= 1.0 for a in result.per_length.values())
