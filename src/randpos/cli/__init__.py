"""The ``randpos`` command line: list | train | evaluate | compare | sweep | status | report.

Bad input ends with a one-line ``error: ...`` on stderr and exit code 2, never a traceback;
an interrupted run exits 130 after leaving a checkpoint.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import randpos
from randpos.core.fields import ConfigError
from randpos.core.files import atomic_write_text
from randpos.encodings import ENCODINGS
from randpos.loop.identity import run_id
from randpos.loop.plots import plot_runs, run_label
from randpos.loop.training import TrainingInterrupted, evaluate_run, predict_run
from randpos.loop.training import train as run_training
from randpos.results.store import ResultsStore, default_store_path
from randpos.sweep.plan import sweep_names
from randpos.tasks import TASK_NAMES, get_task
from randpos.workloads import WORKLOADS, build_workload, resolve_config
from randpos.workloads.config import TrainConfig, find_preset, load_yaml, preset_names

app = typer.Typer(
    no_args_is_help=True,
    help="Randomized positional encodings and length generalization for transformers.",
)
console = Console()
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"randpos {randpos.__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Randomized positional encodings and length generalization for transformers."""


# The main job (README, first command): a plain PE against its randomized form on the same
# task and budget. Chosen by measurement on a 2-core CPU (docs/demo.md): at this budget the
# outcome of a run is seed-sensitive (a run either learns the task or collapses to a constant),
# so the demo pins one thread, whose summation order makes its numbers repeatable on a machine.
DEMO = {
    "task": "even_pairs",
    "pe": "rope",
    "steps": 1500,
    "batch_size": 64,
    "max_train_length": 20,
    "eval_max_length": 100,
    "eval_batch_size": 256,
    "learning_rate": 1e-3,
    "max_position": 256,
    "threads": 1,
}


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr (one line) and exit with ``code``."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def cli_errors(func):
    """Turn expected failures into one-line messages and exit codes."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TrainingInterrupted as exc:
            err.print(f"[yellow]{exc}[/yellow]", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None
        except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    return wrapper


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``--set FIELD=VALUE`` items as a mapping (dashes in names read as underscores); an item
    without ``=`` raises a one-line ``ConfigError``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def build_config(
    preset: str | None, sets: list[str] | None, base: dict[str, Any] | None = None, **options
) -> TrainConfig:
    """Defaults < base < preset file < --set FIELD=VALUE < explicit options, each layer over
    the last field by field (``resolve_config``)."""
    given = {k: v for k, v in options.items() if v is not None}
    preset_fields = load_yaml(find_preset(preset)) if preset else None
    return resolve_config(base, preset_fields, parse_sets(sets), given)


def join_loggers(loggers: list[str] | None) -> str | None:
    """``--logger`` given once or more (each may list several, comma-separated) as the
    config's ``logger`` value; None when not given."""
    return ",".join(loggers) if loggers else None


def open_store(store: Path | None, no_store: bool):
    """The results store to record in (``--store``, else ``$RANDPOS_STORE`` or
    ``runs/randpos.sqlite``), or None with ``--no-store``."""
    if no_store:
        return None

    return ResultsStore(store or default_store_path())


# Shared option declarations.
TaskOpt = Annotated[str | None, typer.Option("--task", help="Task name (see `randpos list`).")]
PeOpt = Annotated[str | None, typer.Option("--pe", help="Positional encoding name.")]
RandOpt = Annotated[
    bool | None,
    typer.Option("--randomized/--plain", help="Train on random sorted positions from [0, L)."),
]
MaxPosOpt = Annotated[int | None, typer.Option("--max-position", "-L", help="L when randomized.")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Training steps.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of every random stream.")]
EvalMOpt = Annotated[
    int | None, typer.Option("--eval-max-length", "-M", help="Evaluate lengths 1..M.")
]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Training batch size.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Adam learning rate.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="The workload: encoder (default) | decoder | vit | dit | arpg | arithmetic | "
        "module:Class.",
    ),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda[:i].")]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML preset: a path, or a name in ./configs/ or among randpos's presets.",
        autocompletion=lambda incomplete: [n for n in preset_names() if n.startswith(incomplete)],
    ),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override any config field: FIELD=VALUE.")
]
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Results store (default $RANDPOS_STORE or runs/).")
]
NoStoreOpt = Annotated[bool, typer.Option("--no-store", help="Do not record in the store.")]
LoggerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--logger",
        help="Where to log the run: jsonl (history.jsonl, the default) | tensorboard | wandb; "
        "repeat or comma-separate to combine.",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
TrustOpt = Annotated[
    str | None,
    typer.Option(
        "--trust-workload",
        metavar="MODULE:CLASS",
        help="Import this module:Class workload if the run's files name it (its code runs: "
        "only for runs you trust). Registered workloads need nothing.",
    ),
]


@app.command("list")
@cli_errors
def list_cmd() -> None:
    """List tasks, positional encodings, workloads, presets and sweeps."""

    table = Table(title="tasks", show_lines=False)
    table.add_column("task", no_wrap=True, min_width=27)
    for col in ("level", "input vocab", "classes", "output length (n=10)"):
        table.add_column(col)
    for name in TASK_NAMES:
        task = get_task(name)
        n_in = task.input_length(10)
        table.add_row(
            name,
            task.level,
            str(task.input_vocab_size),
            str(task.output_vocab_size),
            str(task.output_length(n_in)),
        )
    console.print(table)
    console.print(encodings_table())

    console.print("workloads (--set workload=NAME, or module:Class): " + ", ".join(WORKLOADS))
    console.print("presets (--config NAME): " + ", ".join(preset_names()))
    console.print("sweeps (randpos sweep NAME): " + ", ".join(sweep_names()))


def encodings_table() -> Table:
    """Every registered encoding: its positions, hooks, whether it is causal-only, the samplers
    (``positions.sampler``) and the reference's distance reading it takes, its options."""

    table = Table(title="positional encodings")
    table.add_column("encoding", no_wrap=True, min_width=max(map(len, ENCODINGS)))
    for col in ("positions", "hooks", "causal-only", "samplers", "reading", "options (pe.NAME)"):
        table.add_column(col)
    for name, cls in ENCODINGS.items():
        hooks = cls.overridden_hooks()
        samplers = ["random", "pose"] + (["float"] if cls.float_positions else [])
        options = cls.Options.__name__ if cls.Options else "-"
        dims = {1: "1D", 2: "2D", None: "1D, 2D"}[cls.position_dims]
        table.add_row(
            name,
            dims,
            ", ".join(hooks) or "-",
            "yes" if cls.causal_only else "",
            ", ".join(samplers) if cls.randomizable else "contiguous only",
            "distances" if cls.uses_distances else "",
            options,
        )
    return table


@app.command()
@cli_errors
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    model: ModelOpt = None,
    task: TaskOpt = None,
    pe: PeOpt = None,
    randomized: RandOpt = None,
    max_position: MaxPosOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = None,
    eval_max_length: EvalMOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out.")] = False,
    store: StoreOpt = None,
    no_store: NoStoreOpt = False,
    logger: LoggerOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train one model, evaluate every length 1..M, write DIR/summary.json and friends."""

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    cfg = build_config(
        config,
        set_,
        workload=model,
        task=task,
        pe=pe,
        randomized=randomized,
        max_position=max_position,
        steps=steps,
        seed=seed,
        eval_max_length=eval_max_length,
        batch_size=batch_size,
        learning_rate=lr,
        device=device,
        logger=join_loggers(logger),
    )
    summary = run_training(
        cfg,
        out,
        store=open_store(store, no_store),
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
    )
    print_summaries([summary])
    console.print(f"wrote {out}/summary.json")


@app.command()
@cli_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `randpos train`.")],
    eval_max_length: EvalMOpt = None,
    eval_positions: Annotated[
        str | None, typer.Option("--eval-positions", help="random | contiguous | spread")
    ] = None,
    device: DeviceOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="JSON file to write.")] = None,
    quiet: QuietOpt = False,
    trust_workload: TrustOpt = None,
) -> None:
    """Evaluate a saved model on lengths 1..M with a chosen position mode."""

    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    result, cfg = evaluate_run(
        run_dir,
        device=device or "auto",
        eval_max_length=eval_max_length,
        eval_positions=eval_positions,
        progress=not quiet,
        trust_workload=trust_workload,
    )
    record = {
        "run_dir": str(run_dir),
        "eval_positions": cfg.positions.eval_mode,
        "eval_max_length": cfg.eval_max_length,
        "id_accuracy": result.id_accuracy,
        "ood_accuracy": result.ood_accuracy,
        "per_length": {str(n): a for n, a in sorted(result.per_length.items())},
    }
    target = out or run_dir / f"evaluation_{record['eval_positions']}_M{cfg.eval_max_length}.json"
    atomic_write_text(Path(target), json.dumps(record, indent=2))
    console.print(
        f"id_accuracy {result.id_accuracy:.4f}  ood_accuracy {result.ood_accuracy:.4f}  "
        f"(positions: {record['eval_positions']}; wrote {target})"
    )


@app.command()
@cli_errors
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `randpos train`.")],
    length: Annotated[
        int,
        typer.Option(
            "--length",
            "-n",
            help="Task length of the examples (arithmetic: digits of each operand).",
        ),
    ],
    count: Annotated[int, typer.Option("--count", help="How many examples.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the examples.")] = 0,
    eval_positions: Annotated[
        str | None, typer.Option("--positions", help="random | contiguous | spread")
    ] = None,
    decode_positions: Annotated[
        str | None,
        typer.Option("--decode-positions", help="Decoder: arange | spread | random."),
    ] = None,
    show_positions: Annotated[
        bool, typer.Option("--show-positions", help="Print each example's positions.")
    ] = False,
    device: DeviceOpt = None,
    trust_workload: TrustOpt = None,
) -> None:
    """Print fresh examples of a run's task at one length: input, target, the model's output."""

    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    rows, cfg = predict_run(
        run_dir,
        length,
        count=count,
        seed=seed,
        eval_positions=eval_positions,
        decode_positions=decode_positions,
        device=device or "auto",
        trust_workload=trust_workload,
    )
    mode = cfg.positions.eval_mode
    how = f"positions {mode}"
    summary = build_workload(cfg).summary_fields()
    if summary.get("decode_positions") is not None:  # a decoder
        how += f", generated tokens {summary['decode_positions']}, greedy with the KV cache"
    if summary.get("digit_positions", "none") != "none":  # arithmetic
        how += f", digit positions {summary['digit_positions']}"
    console.print(f"{cfg.task}, length {length} ({cfg.workload}, {cfg.pe}, {how})", soft_wrap=True)

    def text(symbols: list[int]) -> str:
        return " ".join(str(s) for s in symbols)

    total = counted = exact = 0
    for i, row in enumerate(rows, 1):
        console.print(f"[bold]example {i}[/bold]  {row['correct']}/{row['counted']} correct")
        console.print(f"  input     {text(row['input'])}", soft_wrap=True, highlight=False)
        console.print(f"  target    {text(row['target'])}", soft_wrap=True, highlight=False)
        console.print(f"  output    {text(row['output'])}", soft_wrap=True, highlight=False)
        if show_positions:
            console.print(f"  positions {text(row['positions'])}", soft_wrap=True, highlight=False)
            if "digit_positions" in row:
                digits = text(row["digit_positions"])
                console.print(f"  digits at {digits}", soft_wrap=True, highlight=False)
        if "text" in row:
            console.print(f"  reads     {row['text']}", soft_wrap=True, highlight=False)
        total, counted = total + row["correct"], counted + row["counted"]
        exact += row["correct"] == row["counted"]
    console.print(
        f"token accuracy {total}/{counted} = {total / max(counted, 1):.1%}; "
        f"exact match {exact}/{len(rows)}"
    )


@app.command()
@cli_errors
def compare(
    task: TaskOpt = None,
    pe: PeOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = None,
    max_position: MaxPosOpt = None,
    eval_max_length: EvalMOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the runs go.")] = Path(
        "runs/compare"
    ),
    store: StoreOpt = None,
    no_store: NoStoreOpt = False,
    logger: LoggerOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """The main job: train a plain PE and its randomized form side by side, compare them."""

    base = build_config(
        config,
        set_,
        base=DEMO,
        task=task,
        pe=pe,
        steps=steps,
        seed=seed,
        max_position=max_position,
        eval_max_length=eval_max_length,
        device=device,
        logger=join_loggers(logger),
    )
    results_store = open_store(store, no_store)
    summaries = []
    for randomized in (False, True):
        cfg = base.replace(randomized=randomized)
        run_dir = (
            out / f"{cfg.task}-{cfg.pe}-{'randomized' if randomized else 'plain'}-{run_id(cfg)}"
        )
        label = "randomized" if randomized else "plain"
        console.print(
            f"[bold]{label}[/bold] {cfg.pe} on {cfg.task}: {cfg.steps} steps -> {run_dir}"
        )
        summaries.append(
            run_training(cfg, run_dir, store=results_store, resume=True, progress=not quiet)
        )
    print_summaries(summaries)
    figure = plot_runs(
        summaries,
        out / f"compare-{base.task}-{base.pe}.png",
        title=f"{base.task}: {base.pe} plain vs randomized ({base.steps} steps)",
    )
    console.print(f"plot: {figure}")


def print_summaries(summaries: list[dict]) -> None:
    """Print the runs' in-distribution and unseen-size metrics (mean over sizes, in %), training
    seconds and steps per second as one table."""
    first = summaries[0]
    n, m = first["max_train_length"], first["eval_max_length"]
    what = first.get("task", first.get("workload"))
    table = Table(
        title=f"{what}: {first.get('metric', 'accuracy')} (mean over sizes)"
        if "task" not in first
        else f"{what}: accuracy (mean over lengths)"
    )
    table.add_column("run")
    if "train_side" in first:  # images: trained at one side, every other one unseen
        train = str(first["train_side"])
        sides = ", ".join(s for s in first["per_length"] if s != train)
        table.add_column(f"trained S={train}", justify="right")
        table.add_column(f"unseen S in {{{sides}}}", justify="right")
    else:
        table.add_column(f"in-distribution 1..{n}", justify="right")
        table.add_column(f"unseen {n + 1}..{m}", justify="right")
    table.add_column("train s", justify="right")
    table.add_column("steps/s", justify="right")
    for s in summaries:
        t = s["timings"]
        table.add_row(
            run_label(s),
            f"{s['id_accuracy']:.1%}",
            f"{s['ood_accuracy']:.1%}",
            f"{t.get('train_seconds') or 0:.0f}",
            f"{t.get('steps_per_second') or 0:.2f}",
        )
    console.print(table)


# ----------------------------------------------------------------------------- sweeps
# `sweep`, `sweep-status` and `report` (randpos.cli.sweeps)
from randpos.cli.sweeps import register_commands as _register_sweep_commands  # noqa: E402

_register_sweep_commands(app)


def main() -> None:  # pragma: no cover - console entry point
    """The console entry point: run the ``randpos`` command."""
    app(prog_name="randpos")
