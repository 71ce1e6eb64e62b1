"""The arithmetic workload (randpos.workloads.arithmetic): the operand-length grid scored by an
oracle that adds with Python integers (every cell exact) and by one wrong on long operands
(exactly those cells fail); greedy decoding with the KV cache agrees with a full forward; a
tiny run trains, evaluates the grid, writes its heat map and reaches the report's section;
looped models draw their passes per step; bad options are one-line errors."""

from __future__ import annotations

import re

import pytest
import torch
from numerics import f32_atol

from randpos.core.fields import ConfigError
from randpos.loop.training import train
from randpos.positions import token_positions
from randpos.results.report import write_report
from randpos.results.store import ResultsStore
from randpos.tasks.arithmetic import EOS, EQUALS, PAD, PLUS, TIMES
from randpos.workloads import build_workload, resolve_config

TINY = {
    "workload": "arithmetic",
    "steps": 6,
    "batch_size": 8,
    "max_train_length": 3,
    "eval_max_length": 5,
    "eval_batch_size": 4,
    "eval_sub_batch_size": 4,
    "num_layers": 2,
    "width": 16,
    "num_heads": 2,
    "ff_width": 32,
    "log_every": 3,
    "checkpoint_every": 3,
    "threads": 1,
    "device": "cpu",
}


class Oracle:
    """A 'model' that answers with Python integers, through the same calls the workload makes
    (a prompt, then one token at a time against a cache); ``wrong_beyond`` digits in the first
    operand make it answer EOS at once."""

    def __init__(self, task, wrong_beyond: int | None = None) -> None:
        self.task, self.wrong_beyond = task, wrong_beyond
        self.seen: dict[int, tuple] = {}

    def parameters(self):  # where the workload finds the device
        yield torch.zeros(1)

    def __call__(self, tokens, positions, *, cache, validate=False, loops=1, **kwargs):
        key = id(cache)  # the cache is kept alive below, so its id is not reused
        history = torch.cat([self.seen[key][1], tokens], 1) if key in self.seen else tokens
        self.seen[key] = (cache, history)
        logits = torch.zeros(tokens.shape[0], tokens.shape[1], self.task.vocab_size)
        for i, row in enumerate(history.tolist()):
            logits[i, -1, self.next_token(row)] = 1.0
        return logits

    def next_token(self, row: list[int]) -> int:
        op = next(i for i, t in enumerate(row) if t in (PLUS, TIMES))
        eq = row.index(EQUALS)
        a = int("".join(map(str, reversed(row[:op]))))
        b = int("".join(map(str, reversed(row[op + 1 : eq]))))
        if self.wrong_beyond is not None and op > self.wrong_beyond:
            return EOS
        c = a + b if row[op] == PLUS else a * b
        digits = [int(x) for x in reversed(str(c))]
        if self.task.format.zero_pad:
            digits += [0] * (self.task.answer_digits(eq - op - 1, op) - len(digits))
        answer = digits + [EOS]
        done = len(row) - eq - 1
        return answer[done] if done < len(answer) else PAD


class Members:
    def __init__(self, *models) -> None:
        self.models = models

    def member(self, i):
        return self.models[i]


@pytest.mark.parametrize("task,options", [("addition", {}), ("multiplication", {"zero_pad": True})])
def test_the_grid_scores_an_integer_oracle_exact_and_a_wrong_one_where_it_is_wrong(task, options):
    config = resolve_config(TINY, task=task, options=options)
    workload = build_workload(config)
    models = Members(Oracle(workload.task), Oracle(workload.task, wrong_beyond=2))
    cells = {}
    for d in workload.eval_sizes():
        scores = workload.evaluate_size(models, 2, d, mode="contiguous", device="cpu")
        good, bad = scores
        shell = [k for k in good if k.startswith("cell_")]
        assert len(shell) == 2 * d - 1  # (d, m) and (m, d), m = 1..d
        assert good["accuracy"] == 1.0 and all(good[k] == 1.0 for k in shell)
        for k in shell:
            _, n, m = k.split("_")
            written = workload.task.operand_digits(int(n), int(m))[0]  # a's digits, padded
            assert bad[k] == (0.0 if written > 2 else 1.0)
            cells[(int(n), int(m))] = bad[k]
        assert bad["accuracy"] == pytest.approx(sum(bad[k] for k in shell) / len(shell))
    assert set(cells) == {(n, m) for n in range(1, 6) for m in range(1, 6)}
    assert workload.cells[1] == cells


@pytest.mark.numerics
@pytest.mark.parametrize(
    "options",
    [
        {"digit_positions": "abacus"},
        {"digit_positions": "coupled", "zero_pad": True},
        {"digit_positions": "abacus", "index_hints": True, "hint_vocab": 7, "loops": 2},
    ],
    ids=["abacus", "coupled", "hints-looped"],
)
def test_cached_greedy_decoding_agrees_with_a_full_forward(options):
    config = resolve_config(TINY, pe="fire", options=options)
    workload = build_workload(config)
    model = workload.build_model(torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():  # a model far from its initialization, whose answers vary
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    batch = workload.eval_cell(4, 3, "cpu")
    start = int(batch.answer_start[0])
    T = batch.tokens.shape[1]
    positions = torch.arange(T)[None]
    with torch.no_grad():
        generated = workload.generate(model, batch.tokens[:, :start], positions, T - start)
        sequence = torch.cat([batch.tokens[:, :start], generated[:, :-1]], 1)
        zero = torch.zeros(1, 1, dtype=torch.long)
        embed = token_positions(workload.reading, sequence, workload.kinds.table(), zero)
        full = model(sequence, positions[:, : T - 1], embed_positions=embed)[:, start - 1 :]
    top2 = full.topk(2, dim=-1).values
    # the cached logits equal these to EPS32 x (2 layers x loops) x sqrt(32) x max|logit|
    # (tests/model/test_looped_and_embed_pe.py): the argmax may differ only at a near tie
    tol = 2 * f32_atol(full, depth=2 * workload.opts.loops, width=32)
    clear = (top2[..., 0] - top2[..., 1]) > tol
    assert bool(clear.all())  # seeded: no near tie here, so every token is certified
    assert torch.equal(generated[clear], full.argmax(-1)[clear])


def test_examples_read_the_problem_and_the_answer_as_numbers():
    """``randpos generate``'s rows: an integer oracle is right on every example and reads as
    the sum; one that answers EOS at once is wrong and reads as no number; the digit positions
    shown are the Abacus indices (1 = least significant, 0 elsewhere) of prompt and answer."""
    config = resolve_config(TINY, options={"digit_positions": "abacus"})
    workload = build_workload(config)
    right = workload.examples(Oracle(workload.task), 4, count=3, seed=0)
    for row in right:
        assert row["correct"] == row["counted"] == len(row["target"])
        assert row["output"] == row["target"] and row["output"][-1] == EOS
        problem, answer = row["text"].split("; model: ")
        a, b, c = (int(x) for x in problem.replace("+", "=").split("="))
        assert a + b == c == int(answer)
        prompt = row["input"]
        expected, run = [], 0
        for t in prompt + row["output"]:
            run = run + 1 if t < 10 else 0
            expected.append(run)
        assert row["digit_positions"] == expected
    wrong = workload.examples(Oracle(workload.task, wrong_beyond=2), 4, count=3, seed=0)
    assert [r["input"] for r in wrong] == [r["input"] for r in right]  # the seed's problems
    for row in wrong:
        assert row["output"] == [EOS] and row["correct"] == 0
        assert row["text"].endswith("; model: (none)")


def test_generate_prints_a_tiny_runs_problems_and_their_exact_match(tmp_path):
    from typer.testing import CliRunner

    from randpos.cli import app

    run = tmp_path / "run"
    train(resolve_config(TINY, options={"digit_positions": "abacus"}), run, progress=False)
    result = CliRunner().invoke(
        app, ["generate", str(run), "--length", "4", "--count", "2", "--show-positions"]
    )
    assert result.exit_code == 0, result.output
    assert "addition, length 4" in result.output and "digit positions abacus" in result.output
    assert result.output.count("  reads     ") == 2 and "digits at 1 2 3 4 0" in result.output
    assert "exact match " in result.output and "/2" in result.output
    result = CliRunner().invoke(
        app, ["generate", str(run), "-n", "4", "--decode-positions", "spread"]
    )
    assert result.exit_code != 0 and "decode_positions" in result.output


@pytest.mark.parametrize(
    "config,message",
    [
        ({"pe": "learned"}, "take 22 tokens, beyond the positions [0, 19)"),  # 6+6+7+3 > 5+5+6+3
        (
            {
                "pe": "fire",
                "positions": {"sampler": "random"},
                "options": {"digit_positions": "abacus", "max_offset": 0},
            },
            "digit positions beyond the model's table [0, 7)",  # 7 answer digits, rows 0..6
        ),
    ],
)
def test_examples_beyond_the_models_tables_are_one_line_errors(config, message):
    workload = build_workload(resolve_config(TINY, **config))
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        workload.examples(Oracle(workload.task), 6, count=1, seed=0)
    assert "\n" not in str(info.value)


def test_a_tiny_run_trains_evaluates_the_grid_and_reaches_the_report(tmp_path):
    store = ResultsStore(tmp_path / "store.sqlite")
    summaries = []
    for seed in (0, 1):
        config = resolve_config(
            TINY, seed=seed, pe="fire", options={"digit_positions": "abacus", "max_offset": 6}
        )
        summaries.append(train(config, tmp_path / f"run{seed}", store=store, progress=False))
    summary = summaries[0]
    shells = summary["size_metrics"]
    assert sorted(map(int, shells)) == [1, 2, 3, 4, 5]
    for d, metrics in shells.items():
        cells = {k: v for k, v in metrics.items() if k.startswith("cell_")}
        assert len(cells) == 2 * int(d) - 1
        assert summary["per_length"][d] == pytest.approx(sum(cells.values()) / len(cells))
    assert summary["id_accuracy"] == pytest.approx(
        sum(summary["per_length"][str(d)] for d in (1, 2, 3)) / 3
    )
    run = tmp_path / "run0"
    assert (run / "heatmap.png").stat().st_size > 0
    lines = (run / "grid.csv").read_text().splitlines()
    assert lines[0] == "n,m,exact_match" and len(lines) == 1 + 25
    paths = write_report(store, tmp_path / "report")
    text = paths["markdown"].read_text()
    assert "## Arithmetic" in text and "## Workload arithmetic" in text
    assert paths["figure_arithmetic_heatmaps"].stat().st_size > 0
    bands = paths["arithmetic_bands_csv"].read_text().splitlines()
    assert len(bands) == 1 + 2  # one row per run
    assert "success (beyond 2N >= 0.9)" in text


def test_looped_runs_draw_their_passes_per_step_from_the_curriculum(tmp_path):
    options = {"digit_positions": "abacus", "loops": 3, "min_loops": 1}
    config = resolve_config(TINY, num_layers=1, options=options)
    workload = build_workload(config)
    g = torch.Generator().manual_seed(0)
    drawn = set()
    for _ in range(40):
        assert workload.next_size(g) == config.max_train_length
        drawn.add(workload.train_loops)
    assert drawn == {1, 2, 3}
    eval_length = resolve_config(TINY, options={**options, "eval_loops": "length"})
    workload = build_workload(eval_length)
    assert [workload.eval_loops_at(d) for d in (1, 3, 4, 5)] == [3, 3, 4, 5]  # ceil(3 d / 3)
    summary = train(config, tmp_path / "looped", progress=False)
    assert summary["loops"] == 3 and summary["num_parameters"] > 0


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"task": "reverse_string"},
            "unknown task 'reverse_string'; valid: addition, multiplication",
        ),
        ({"options": {"digit_positions": "digits"}}, "options.digit_positions"),
        ({"options": {"digit_pe": "rope"}}, "options.digit_pe='rope': must be an embed-only"),
        ({"options": {"loops": 2, "min_loops": 3}}, "options.min_loops=3 exceeds"),
        ({"options": {"eval_loops": "adaptive"}}, "options.eval_loops"),
        ({"dropout": 0.1}, "dropout=0.1: the arithmetic workload has none"),
        ({"pe": "rope2d_axial"}, "rope2d_axial"),
        ({"positions": {"sampler": "random", "max_position": 12}}, "must cover the longest"),
        ({"options": {"max_offset": -1}}, "options.max_offset=-1"),
    ],
)
def test_bad_options_are_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        resolve_config({**TINY, **change})
    assert "\n" not in str(info.value)
