"""Arithmetic length generalization on a causal decoder (docs/arithmetic.md).

Notation: B = batch, T = length, V = vocabulary, N = max_train_length, M = eval_max_length,
S = eval_batch_size (samples per grid cell), r = loops.

The task (``randpos.tasks.arithmetic``: ``addition`` or ``multiplication``, least significant
digit first) is one token sequence ``a OP b = c EOS``; the model is the project's
:class:`~randpos.model.Transformer` with causal attention and a head over the vocabulary.

* **Training.** Each example draws its operand lengths n and m uniformly in 1..N (the data
  stream); a batch is padded to the longest sequence at N. Teacher forcing: the loss is the
  mean cross-entropy over the answer's tokens and EOS (the predictions made at ``=`` .. c_k);
  the logged training metric is the batch's exact-match rate under teacher forcing.
* **Positions.** Two sources, each optional. The attention encoding (``pe``: FIRE, RoPE,
  ALiBi, ..., or none) gets the run's ordinary positions (``positions``: plain or randomized,
  :func:`randpos.positions.plan_positions`). An embed-only encoding (``options.digit_pe``,
  learned by default) gets positions read from the tokens (``options.digit_positions``:
  ``abacus`` or ``coupled``, :mod:`randpos.positions.tokens`), with an offset drawn in training
  from [0, ``options.max_offset``] and 0 at evaluation. Abacus + FIRE is ``pe: fire`` with
  ``options.digit_positions: abacus``; FIRE + randomized positions is ``pe: fire`` with
  ``positions.sampler: random``.
* **Looped model** (``options.loops`` = r): the ``num_layers`` layers are one weight-tied block
  applied r times with input injection (:class:`~randpos.model.Transformer`). With
  ``options.min_loops`` > 0, r is drawn per step uniformly in [min_loops, loops] from the
  curriculum stream (shared by an ensemble's members); ``options.eval_loops: length`` runs
  ceil(loops * d / N) passes on operands of d > N digits.
* **Evaluation: the operand-length grid.** Every cell (n, m) of [1, M]^2 gets S fresh examples
  (a function of eval_seed, the task, its format and the cell), answered by greedy decoding with
  the KV cache: the prompt in one forward, then one token per step, each new token's
  embed position computed from the sequence so far. A cell's score is the exact match of the
  whole answer and EOS. The sizes the loop evaluates are the shells d = max(n, m) = 1..M: a
  shell's metric is its cells' mean, and its cells are kept as further metrics ``cell_n_m``
  (``size_metrics`` of the summary, the store, ``metrics.csv``). So ``id_accuracy`` covers the
  cells with both operands <= N and ``ood_accuracy`` those with at least one longer, each the
  mean over shells. The run directory gets ``grid.csv`` and ``heatmap.png``; the report's
  arithmetic section draws the heat maps over seeds and the bands (randpos.results.report).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from randpos.core.fields import ConfigError, check_choice
from randpos.core.files import atomic_write_text
from randpos.core.seeding import make_generator
from randpos.encodings import check_position_dims, get_encoding
from randpos.model import KVCache, Transformer
from randpos.model.config import ModelConfig
from randpos.model.transformer import check_config
from randpos.positions import (
    TOKEN_SOURCES,
    TokenKinds,
    TokenPositionSpec,
    plan_positions,
    token_positions,
)
from randpos.tasks.arithmetic import ARITHMETIC_TASKS, EOS, ArithmeticFormat, ArithmeticTask
from randpos.workloads.base import Batch, Models, Workload
from randpos.workloads.encoder import task_summary
from randpos.workloads.registry import register_workload

DIGIT_SOURCES = ("none", *TOKEN_SOURCES)
OFFSET_MODES = ("auto", "batch", "sequence")
EVAL_LOOPS = ("fixed", "length")
#: what ``offsets: auto`` means per source: the public code of each paper
AUTO_PER_SEQUENCE = {"abacus": False, "coupled": True}


@dataclasses.dataclass
class ArithmeticOptions:
    """The arithmetic workload's options (``--set options.NAME=VALUE``): the format, the
    positions read from the tokens and their embed-only encoding, loops, and the evaluation grid
    (docs/arithmetic.md)."""

    #: the format (randpos.tasks.arithmetic.ArithmeticFormat)
    index_hints: bool = False
    zero_pad: bool = False
    hint_vocab: int = 102
    #: positions read from the tokens for an embed-only encoding: none | abacus | coupled
    digit_positions: str = "none"
    #: the embed-only encoding that reads them
    digit_pe: str = "learned"
    #: training offsets (Abacus's k, coupling's start) uniform in [0, max_offset]; 0 at eval
    max_offset: int = 50
    #: one offset per batch or per sequence; auto: per batch for abacus, per sequence for
    #: coupled (each paper's public code)
    offsets: str = "auto"
    #: looped model: passes of the weight-tied block (r)
    loops: int = 1
    #: > 0: r drawn per training step uniformly in [min_loops, loops]
    min_loops: int = 0
    #: passes at evaluation: fixed (loops) | length (ceil(loops * d / N) beyond N digits)
    eval_loops: str = "fixed"


@register_workload("arithmetic")
class ArithmeticWorkload(Workload):
    """Addition / multiplication on a causal decoder, exact match on the operand-length grid."""

    options = ArithmeticOptions
    # CPU-sized defaults (docs/arithmetic.md, "Cost"): operands of 1..10 digits in training,
    # the grid to 40 x 40 digits with 16 examples per cell; a 4-layer model of width 64 (about
    # 0.2M parameters), 4,500 Adam steps of batch 64 (about 6 CPU minutes a run with the grid
    # evaluation, one thread: benchmarks/bench_arithmetic.py); no dropout.
    defaults = {
        "task": "addition",
        "pe": "none",
        "positions": {"max_position": 256},
        "steps": 4500,
        "batch_size": 64,
        "max_train_length": 10,
        "eval_max_length": 40,
        "eval_batch_size": 16,
        "eval_sub_batch_size": 16,
        "num_layers": 4,
        "width": 64,
        "num_heads": 4,
        "ff_width": 256,
        "dropout": 0.0,
        "learning_rate": 1.0e-3,
        "log_every": 100,
        "checkpoint_every": 500,
    }
    size_name = "digits"
    metric = "accuracy"
    # (B, T) tokens, mask, positions, embed positions
    dynamic_axes = {"tokens": (1,), "mask": (1,), "positions": (1,), "embed_positions": (1,)}

    def __init__(self, config) -> None:
        super().__init__(config)
        self.task = self.make_task(config, self.opts)
        self.reading = self.token_spec(self.opts)
        self.kinds = TokenKinds(self.task.vocab_size, self.task.digit_ids, self.task.hint_ids)
        self.train_loops = self.opts.loops  # r of the current step (next_size draws it)
        self.cells: dict[int, dict[tuple[int, int], float]] = {}  # member -> cell -> score

    # ----------------------------------------------------------------- configuration
    @staticmethod
    def make_task(config, opts) -> ArithmeticTask:
        """The task the config names, written in the options' format."""
        fmt = ArithmeticFormat(opts.index_hints, opts.zero_pad, opts.hint_vocab)
        return ArithmeticTask(config.task, fmt)

    @staticmethod
    def token_spec(opts) -> TokenPositionSpec | None:
        """The token-reading position source of the options, or None without one."""
        if opts.digit_positions == "none":
            return None
        per_sequence = {"batch": False, "sequence": True}.get(
            opts.offsets, AUTO_PER_SEQUENCE[opts.digit_positions]
        )
        return TokenPositionSpec(opts.digit_positions, opts.max_offset, per_sequence)

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        opts = cls.parse_options(config.options)
        check_choice("task", config.task, ARITHMETIC_TASKS)
        check_choice("options.digit_positions", opts.digit_positions, DIGIT_SOURCES)
        check_choice("options.offsets", opts.offsets, OFFSET_MODES)
        check_choice("options.eval_loops", opts.eval_loops, EVAL_LOOPS)
        for name, low in (("hint_vocab", 1), ("max_offset", 0), ("loops", 1), ("min_loops", 0)):
            value = getattr(opts, name)
            if value < low:
                raise ConfigError(f"options.{name}={value}: must be an integer >= {low}")
        if opts.min_loops > opts.loops:
            raise ConfigError(
                f"options.min_loops={opts.min_loops} exceeds options.loops={opts.loops}: r is "
                "drawn from [min_loops, loops]"
            )
        if config.dropout != 0.0:
            raise ConfigError(f"dropout={config.dropout}: the arithmetic workload has none; set 0")
        try:
            encoding = get_encoding(config.pe)
            digit_pe = get_encoding(opts.digit_pe)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            check_position_dims(encoding, 1)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not encoding.supports_cache:
            raise ConfigError(f"pe {config.pe!r} cannot decode with a KV cache: choose another pe")
        if digit_pe.overridden_hooks() != ("embed",):
            raise ConfigError(
                f"options.digit_pe={opts.digit_pe!r}: must be an embed-only encoding "
                "(learned, sincos)"
            )
        if config.positions.distances:
            raise ConfigError(
                "positions.reading 'distances' describes a whole sequence; the arithmetic "
                "decoder places tokens one at a time: use reading: positions"
            )
        if config.randomized and not encoding.randomizable:
            raise ConfigError(f"pe {config.pe!r} cannot be randomized: use sampler contiguous")
        if config.positions.sampler == "float" and not encoding.float_positions:
            raise ConfigError(f"pe {config.pe!r} cannot take the float sampler's positions")
        task = cls.make_task(config, opts)
        longest = task.longest_sequence(config.eval_max_length)
        if config.randomized and longest > config.positions.max_position:
            raise ConfigError(
                f"positions.max_position (L={config.positions.max_position}) must cover the "
                f"longest evaluated sequence ({longest} tokens at {config.eval_max_length} "
                "digits); raise max_position or lower eval_max_length"
            )
        try:
            check_config(cls.build_model_config(config, opts, task))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @classmethod
    def build_model_config(cls, config, opts, task: ArithmeticTask) -> ModelConfig:
        """The causal model of a config: the architecture, the task's vocabulary, the
        embed-only encoding of the digit positions and the loops; positions cover the longest
        evaluated sequence (or L when randomized)."""
        longest = task.longest_sequence(config.eval_max_length)
        spec = cls.token_spec(opts)
        # the longest number evaluated: the answer of two M-digit operands
        longest_number = task.answer_digits(config.eval_max_length, config.eval_max_length)
        return ModelConfig(
            **{**config.architecture(), "causal": True},
            vocab_size=task.vocab_size,
            num_classes=task.vocab_size,
            max_position=config.positions.max_position if config.randomized else longest,
            embed_pe="none" if spec is None else opts.digit_pe,
            embed_max_position=1 if spec is None else spec.positions_needed(longest_number),
            loops=opts.loops,
        )

    def model_config(self) -> ModelConfig:
        """This workload's model config (:meth:`build_model_config`)."""
        return self.build_model_config(self.config, self.opts, self.task)

    def build_model(self, generator: torch.Generator) -> Transformer:
        return Transformer(self.model_config(), generator=generator)

    # ----------------------------------------------------------------- training
    def next_size(self, curriculum: torch.Generator) -> int:
        """Operand lengths are drawn per example (the data stream); the step's size is N. The
        curriculum stream draws r for the step when it varies."""
        opts = self.opts
        if opts.min_loops:
            draw = torch.randint(opts.min_loops, opts.loops + 1, (1,), generator=curriculum)
            self.train_loops = int(draw)
        return self.config.max_train_length

    def draw_batch(self, model, size, generators, device) -> Batch:
        cfg = self.config
        sample = self.task.sample(cfg.batch_size, size, generators["data"])
        tokens = sample.tokens.to(device)  # (B, T)
        B, T = tokens.shape
        reading = None if self.reading is None else (self.reading, self.kinds.table(device))
        plan = plan_positions(
            cfg.positions,
            cfg.num_layers,
            B,
            T,
            generators["positions"],
            device=device,
            tokens=tokens,
            reading=reading,
        )
        batch = {
            "tokens": tokens,
            "mask": sample.loss_mask().to(device),
            "positions": self.shared(plan.positions),
        }
        if plan.embed_positions is not None:
            batch["embed_positions"] = plan.embed_positions
        return batch

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over the answer tokens and EOS; aux: each example's exact match
        under teacher forcing (B,)."""
        tokens, mask = batch["tokens"], batch["mask"]  # (B, T), (B, T - 1)
        kwargs = {}
        if "embed_positions" in batch:
            kwargs["embed_positions"] = batch["embed_positions"][:, :-1]
        logits = model(
            tokens[:, :-1],
            batch["positions"][:, :-1],
            validate=False,
            loops=self.train_loops,
            **kwargs,
        )  # (B, T - 1, V)
        targets = tokens[:, 1:]
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        weights = mask.to(ce.dtype).flatten()
        loss = (ce * weights).sum() / weights.sum().clamp(min=1)
        exact = ((logits.argmax(-1) == targets) | ~mask).all(dim=-1)
        return loss, exact.to(logits.dtype)

    def shared(self, positions: torch.Tensor) -> torch.Tensor:
        """(1, T) when every row has the same positions (one draw per batch), so that bias
        encodings (FIRE's MLP) compute their (H, T, T) bias once rather than per row."""
        return positions if self.config.positions.per_sequence else positions[:1]

    def train_metric(self, aux: torch.Tensor, batch: Batch) -> torch.Tensor:
        return aux.mean(dim=-1)  # (K,) from (K, B)

    # ----------------------------------------------------------------- evaluation
    def eval_loops_at(self, digits: int) -> int:
        """Passes of the looped block for operands of up to ``digits`` digits."""
        r, N = self.opts.loops, self.config.max_train_length
        if self.opts.eval_loops == "length" and digits > N:
            return math.ceil(r * digits / N)
        return r

    def eval_cell(self, n: int, m: int, device) -> Any:
        """The S evaluation examples of cell (n, m): a function of eval_seed, the task, its
        format and the cell alone."""
        fmt = self.task.format
        stream = f"arithmetic/{self.task.name}/{int(fmt.index_hints)}{int(fmt.zero_pad)}/{n}x{m}"
        generator = make_generator(self.config.eval_seed, stream, device)
        return self.task.sample_cell(self.config.eval_batch_size, n, m, generator)

    def evaluate_size(self, models: Models, copies: int, size: int, *, mode: str, device):
        """Shell d = ``size``: the cells (d, m) and (m, d), m = 1..d, each scored by exact
        match; a cell and its mirror share a prompt length and are decoded together."""
        d = size
        scores: list[dict[str, float]] = [{} for _ in range(copies)]
        for m in range(1, d + 1):
            cells = [(d, m)] + ([(m, d)] if m != d else [])
            batches = [self.eval_cell(n, k, device) for n, k in cells]
            tokens = torch.cat([b.tokens for b in batches])
            length = torch.cat([b.length for b in batches])
            start = int(batches[0].answer_start[0])
            stream = f"arithmetic-positions/{self.task.name}/{d}x{m}"
            generator = make_generator(self.config.eval_seed, stream, device)
            plan = plan_positions(
                self.config.positions,
                self.config.num_layers,
                tokens.shape[0],
                tokens.shape[1],
                generator,
                mode=mode,
                device=device,
            )
            for i in range(copies):
                generated = self.generate(
                    models.member(i), tokens[:, :start], self.shared(plan.positions),
                    tokens.shape[1] - start,
                    self.eval_loops_at(d),
                )  # fmt: skip
                exact = exact_match(generated, tokens[:, start:], length - start)
                for j, cell in enumerate(cells):
                    rows = exact[j * len(batches[0].n) : (j + 1) * len(batches[0].n)]
                    scores[i][f"cell_{cell[0]}_{cell[1]}"] = float(rows.float().mean())
        out = []
        for i in range(copies):
            mine = self.cells.setdefault(i, {})
            for name, value in scores[i].items():
                _, n, m = name.split("_")
                mine[(int(n), int(m))] = value
            shell = sum(scores[i].values()) / len(scores[i])
            out.append({"accuracy": shell, **scores[i]})
        return out

    def generate(
        self,
        model,
        prompt: torch.Tensor,
        positions: torch.Tensor,
        steps: int,
        loops: int | None = None,
    ) -> torch.Tensor:
        """Greedy decoding of ``steps`` tokens after ``prompt`` (B, P) with the KV cache:
        (B, steps). ``positions`` (B or 1, >= P + steps - 1) are the attention's positions of
        the prompt and the fed-back tokens; each fed-back token's embed position is read from
        the sequence so far (offset 0, the evaluation rule)."""
        loops = self.opts.loops if loops is None else loops
        P = prompt.shape[1]
        cache = KVCache(self.config.num_layers * loops)
        read = self.digit_reader(prompt.device)

        def embedded(sequence: torch.Tensor, last: int) -> dict[str, torch.Tensor]:
            return {} if read is None else {"embed_positions": read(sequence)[:, -last:]}

        logits = model(
            prompt, positions[:, :P], validate=False, cache=cache, loops=loops,
            **embedded(prompt, P),
        )[:, -1]  # fmt: skip
        sequence, out = prompt, []
        for t in range(steps):
            token = logits.argmax(-1, keepdim=True)  # (B, 1)
            out.append(token)
            if t == steps - 1:
                break
            sequence = torch.cat([sequence, token], dim=1)
            logits = model(
                token, positions[:, P + t : P + t + 1], validate=False, cache=cache, loops=loops,
                **embedded(sequence, 1),
            )[:, -1]  # fmt: skip
        return torch.cat(out, dim=1)

    def digit_reader(self, device) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """A function from token sequences (B, T) to their digit positions at offset 0 (the
        evaluation rule), or None without a token-reading source."""
        if self.reading is None:
            return None
        kinds = self.kinds.table(device)
        zero = torch.zeros(1, 1, dtype=torch.long, device=device)
        return lambda sequence: token_positions(self.reading, sequence, kinds, zero)

    def examples(self, model, size: int, count: int, seed: int) -> list[dict[str, Any]]:
        """Fresh problems with operands of ``size`` digits each, decoded as in evaluation
        (greedy, KV cache, digit positions read as the answer grows); ``text`` reads the problem
        and the model's answer as numbers (most significant digit first). ``ConfigError`` when
        the problems need positions beyond the tables the model was built with."""
        built, M = self.model_config(), self.config.eval_max_length
        T = self.task.sequence_length(size, size)  # every problem's width: n = m = size
        if not self.config.randomized and T > built.max_position:
            raise ConfigError(
                f"length {size}: its problems take {T} tokens, beyond the positions "
                f"[0, {built.max_position}) the model was built with (eval_max_length={M}); "
                "choose a shorter --length"
            )
        if self.reading is not None and self.task.answer_digits(size, size) >= (
            built.embed_max_position
        ):
            raise ConfigError(
                f"length {size}: its answers need digit positions beyond the model's table "
                f"[0, {built.embed_max_position}) (eval_max_length={M}, options.max_offset="
                f"{self.opts.max_offset}); choose a shorter --length"
            )
        dev = next(model.parameters()).device
        batch = self.task.sample_cell(count, size, size, make_generator(seed, "generate/data", dev))
        start = int(batch.answer_start[0])
        positions = make_generator(seed, "generate/positions", dev)
        plan = plan_positions(
            self.config.positions, self.config.num_layers, count, T, positions,
            mode=self.eval_mode(), device=dev,
        )  # fmt: skip
        prompt = batch.tokens[:, :start]
        generated = self.generate(
            model, prompt, self.shared(plan.positions), T - start, self.eval_loops_at(size)
        )
        read = self.digit_reader(dev)  # the digit positions the model read
        digits = None if read is None else read(torch.cat([prompt, generated], dim=1))
        symbol = "+" if self.task.name == "addition" else "*"
        rows = []
        for i in range(count):
            k = int(batch.length[i]) - start  # answer digits and EOS
            target, output = batch.tokens[i, start : start + k], generated[i]
            ended = (output == EOS).nonzero()
            shown = output[: int(ended[0]) + 1] if len(ended) else output  # to the first EOS
            a, b, c = self.task.decode(batch.tokens[i].tolist())
            row = {
                "input": prompt[i].tolist(),
                "target": target.tolist(),
                "output": shown.tolist(),
                "positions": plan.positions[min(i, plan.positions.shape[0] - 1)].tolist(),
                "correct": int((shown[:k] == target[: len(shown)]).sum()),  # to its EOS
                "counted": k,
                "text": f"{a} {symbol} {b} = {c}; model: {self.read_answer(shown)}",
            }
            if digits is not None:
                row["digit_positions"] = digits[i, : start + len(shown)].tolist()
            rows.append(row)
        return rows

    def read_answer(self, tokens: torch.Tensor) -> str:
        """Generated answer tokens as a number (most significant digit first, leading zeros
        dropped): the digits before the first EOS (hints skipped); ``?`` for any other symbol,
        ``(no EOS)`` when the model did not end its answer."""
        out, ended = [], False
        for t in tokens.tolist():
            if t == EOS:
                ended = True
                break
            if t in self.task.hint_ids:
                continue
            out.append(str(t) if t < 10 else "?")
        number = "".join(reversed(out))
        number = number.lstrip("0") or number[:1] or "(none)"
        return number + ("" if ended else " (no EOS)")

    def eval_mode(self) -> str:
        return self.config.positions.eval_mode

    # ----------------------------------------------------------------- reporting
    def write_files(self, out, member: int) -> None:
        """``grid.csv`` (n, m, exact match) and ``heatmap.png`` of member ``member``."""
        cells = self.cells.get(member)
        if not cells:
            return
        rows = ["n,m,exact_match\n"] + [f"{n},{m},{v:.6f}\n" for (n, m), v in sorted(cells.items())]
        atomic_write_text(Path(out) / "grid.csv", "".join(rows))
        title = f"{self.task.name}: {arm_label(self.config)} (seed {self.config.seed})"
        plot_grids({title: cells}, Path(out) / "heatmap.png", self.config.max_train_length)

    def summary_fields(self) -> dict[str, Any]:
        return {
            "workload": self.name,
            **task_summary(self.config, self.eval_mode()),
            "digit_positions": self.opts.digit_positions,
            "loops": self.opts.loops,
        }


def exact_match(generated: torch.Tensor, expected: torch.Tensor, count: torch.Tensor):
    """(B,) whether the first ``count`` tokens of each row of ``generated`` equal
    ``expected``'s (the answer and EOS; what follows EOS does not count)."""
    t = torch.arange(expected.shape[1], device=expected.device)
    return ((generated == expected) | (t >= count[:, None])).all(dim=-1)


def arm_label(config) -> str:
    """A short name of a run's arm (a :class:`TrainConfig` or its ``to_dict()``): the attention
    encoding (``nope`` for none), ``randomized``, the digit positions, the format, the loops;
    e.g. ``fire + abacus``, ``nope + coupled + pad``, ``nope + abacus + looped 1x4``."""
    data = config if isinstance(config, dict) else config.to_dict()
    positions = data.get("positions") or {}
    sampler = positions.get("sampler", "contiguous")
    opts = data.get("options") or {}
    parts = [data["pe"] if data["pe"] != "none" else "nope"]
    if sampler != "contiguous":
        parts.append("randomized" if sampler == "random" else sampler)
    if opts.get("digit_positions", "none") != "none":
        parts.append(str(opts["digit_positions"]))
    for name, shown in (("zero_pad", "pad"), ("index_hints", "hints")):
        if opts.get(name):
            parts.append(shown)
    if opts.get("loops", 1) != 1:
        low = opts.get("min_loops", 0)
        drawn = f"{low}..{opts['loops']}" if low else str(opts["loops"])
        parts.append(f"looped {data['num_layers']}x{drawn}")
    return " + ".join(parts)


def grid_array(cells: dict[tuple[int, int], float], size: int):
    """(size, size) numpy array: [n - 1, m - 1] = the cell's score, NaN where missing."""
    grid = np.full((size, size), np.nan)
    for (n, m), value in cells.items():
        if n <= size and m <= size:
            grid[n - 1, m - 1] = value
    return grid


def plot_grids(
    panels: dict[str, dict[tuple[int, int], float]],
    path: Path,
    train_digits: int,
    columns: int = 3,
) -> Path:
    """One heat map per panel (title -> cells): exact match over the operand-length grid, the
    first operand's digits down, the second's across, the training square outlined."""
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: imported only when a figure is drawn
    from matplotlib.patches import Rectangle  # heavy: with matplotlib

    size = max(max(max(c) for c in cells) for cells in panels.values() if cells)
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    image = None
    for ax, (title, cells) in zip(axes.flat, panels.items(), strict=False):
        grid = grid_array(cells, size)
        extent = (0.5, size + 0.5, size + 0.5, 0.5)
        image = ax.imshow(100 * grid, vmin=0, vmax=100, cmap="viridis", extent=extent)
        ax.add_patch(
            Rectangle((0.5, 0.5), train_digits, train_digits, fill=False, ec="red", lw=1.2)
        )
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("digits of b", fontsize=8)
        ax.set_ylabel("digits of a", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="exact match (%)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "ArithmeticOptions",
    "ArithmeticWorkload",
    "arm_label",
    "exact_match",
    "grid_array",
    "plot_grids",
]
