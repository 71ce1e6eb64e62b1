"""The ``randpos sweep``, ``sweep-status`` and ``report`` commands."""

from __future__ import annotations

import functools
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from randpos.results.report import report_command
from randpos.results.store import ResultsStore, StoreError, default_store_path
from randpos.sweep.executors import make_executor
from randpos.sweep.jobs import load_run_fn
from randpos.sweep.plan import SweepError, expand, load_spec, sweep_names
from randpos.sweep.run import SweepResult, fmt_seconds, run_sweep
from randpos.sweep.status import sweep_status
from randpos.workloads.compat import config_value


def sweep_command(
    spec: str,
    store: Path | None = None,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    runs_dir: Path | None = None,
    retry_failed: bool = False,
    run_fn: str | None = None,
    dry_run: bool = False,
    quiet: bool = False,
    ensemble_size: int | None = None,
    logger: str | None = None,
) -> SweepResult | None:
    """Body of ``randpos sweep``; errors raise SweepError/ValueError (one line each).
    ``logger`` (the run-time field, e.g. ``"jsonl,wandb"``) overrides every run's loggers."""
    loaded = load_spec(spec)
    if logger:  # a run-time field: the runs and their ids stay the same
        loaded.base = {**loaded.base, "logger": logger}
    plan = expand(loaded)
    if dry_run:
        console = Console()
        console.print(f"sweep {loaded.name}: {len(plan)} runs")
        keys = list(dict.fromkeys([k for arm in loaded.arms for k in arm] + list(loaded.grid)))

        def value(cfg, key):
            if key.startswith("options."):
                return (cfg.get("options") or {}).get(key.removeprefix("options."))
            return config_value(cfg, key)  # positions.NAME and pe.NAME too

        for rid, cfg in plan.items():
            shown = " ".join(f"{k}={value(cfg, k)}" for k in keys if value(cfg, k) is not None)
            console.print(f"  {rid}  {shown}", highlight=False)
        return None
    if executor == "local" and address:
        raise SweepError("--address is for --executor ray")
    fn = load_run_fn(run_fn) if run_fn else None  # None: the real trainer, ensembles included
    ex = make_executor(executor, workers=workers, address=address)
    results_store = ResultsStore(store or default_store_path())

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        result = run_sweep(
            loaded,
            results_store,
            ex,
            run_fn=fn,
            ensemble_size=ensemble_size,
            runs_dir=runs_dir,
            retry_failed=retry_failed,
            progress=not quiet,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    return result


def _cli_errors(func):
    """Expected failures end as one ``error: ...`` line and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("interrupted; re-run the same command to resume", err=True)
            raise typer.Exit(130) from None
        except (ValueError, StoreError, FileNotFoundError) as exc:
            typer.echo(f"error: {str(exc).splitlines()[0]}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _complete_sweep(incomplete: str) -> list[str]:
    """Shell completion of ``randpos sweep NAME``: the sweep names that start so."""
    return [name for name in sweep_names() if name.startswith(incomplete)]


_StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Results store (default $RANDPOS_STORE or runs/randpos.sqlite)."),
]


@_cli_errors
def sweep_cli(
    spec: Annotated[
        str,
        typer.Argument(
            help="Sweep file, or a sweep name (see `randpos list`).", autocompletion=_complete_sweep
        ),
    ],
    store: _StoreOpt = None,
    executor: Annotated[
        str, typer.Option("--executor", "-e", help="local (processes) | ray.")
    ] = "local",
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (ray executor).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-j", help="Concurrent jobs (default: cores, or GPUs)."),
    ] = None,
    ensemble_size: Annotated[
        int | None,
        typer.Option(
            "--ensemble-size",
            "-k",
            min=1,
            help="Train up to K runs that differ only in seed and learning rate as one "
            "ensemble job (default: 32 on GPUs, 1 on CPUs).",
        ),
    ] = None,
    runs_dir: Annotated[
        Path | None,
        typer.Option("--runs-dir", help="Run folders (default: <store dir>/sweeps/NAME)."),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run failed runs again.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the runs; train nothing.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    logger: Annotated[
        list[str] | None,
        typer.Option(
            "--logger",
            help="Where every run logs: jsonl (default) | tensorboard | wandb; repeat or "
            "comma-separate to combine. Runs are grouped by the sweep's name.",
        ),
    ] = None,
    run_fn: Annotated[
        str | None, typer.Option("--run-fn", hidden=True, help="module:function to run.")
    ] = None,
) -> None:
    """Run every unfinished run of a sweep (idempotent: interrupt and re-run to resume)."""
    result = sweep_command(
        spec,
        store=store,
        executor=executor,
        address=address,
        workers=workers,
        runs_dir=runs_dir,
        retry_failed=retry_failed,
        run_fn=run_fn,
        dry_run=dry_run,
        quiet=quiet,
        ensemble_size=ensemble_size,
        logger=",".join(logger) if logger else None,
    )
    if result is not None and result.failed:
        raise typer.Exit(1)


@_cli_errors
def sweep_status_cli(
    name: Annotated[
        str | None, typer.Argument(help="Sweep name (default: the store's only sweep).")
    ] = None,
    store: _StoreOpt = None,
) -> None:
    """Progress of a sweep, from the store: done / failed / running / pending, ETA."""
    status_command(name, store=store)


@_cli_errors
def report_cli(
    store: _StoreOpt = None,
    sweep: Annotated[
        str | None, typer.Option("--sweep", help="Only this sweep's runs (default: all runs).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("report"),
    figures: Annotated[
        bool, typer.Option("--figures/--no-figures", help="Draw the PNG figures.")
    ] = True,
    success_threshold: Annotated[
        float,
        typer.Option(
            "--success-threshold",
            min=0.0,
            max=1.0,
            help="tau of the success rate: the fraction of seeds whose unseen-length accuracy "
            "is at least tau (0..1).",
        ),
    ] = 0.9,
    chance_sequences: Annotated[
        int | None,
        typer.Option(
            "--chance-sequences",
            min=1,
            help="Sequences per length for the tasks' chance levels (default: each run's own "
            "evaluation sequences, eval_batch_size).",
        ),
    ] = None,
    effective_threshold: Annotated[
        float | None,
        typer.Option(
            "--effective-threshold",
            min=0.0,
            max=1.0,
            help="Long context: the effective length's fixed threshold, an accuracy (RULER's "
            "form; default: 0.9 x each run's accuracy at its training length).",
        ),
    ] = None,
) -> None:
    """Table 1, mean ± std, median [IQR] and success rate over seeds, chance levels, the
    headline gains (max- and median-based) and figures, from the store alone."""

    report_command(
        store=store,
        sweep=sweep,
        out=out,
        figures=figures,
        success_threshold=success_threshold,
        chance_sequences=chance_sequences,
        effective_threshold=effective_threshold,
    )


def status_command(name: str | None = None, store: Path | None = None) -> dict[str, Any]:
    """Body of ``randpos sweep-status``: prints and returns :func:`randpos.sweep.sweep_status`."""

    path = Path(store or default_store_path())
    if not path.is_file():  # a status query must not create an empty store
        raise FileNotFoundError(f"no results store at {path}")
    results_store = ResultsStore(path)
    if name is None:
        names = results_store.sweeps()
        if len(names) != 1:
            raise SweepError(
                "name the sweep; sweeps in this store: " + (", ".join(names) or "(none)")
            )
        name = names[0]
    info = sweep_status(results_store, name)
    console = Console()
    eta = fmt_seconds(info["eta_seconds"]) if info["eta_seconds"] is not None else "?"
    console.print(
        f"sweep [bold]{name}[/bold]: {info['done']}/{info['total']} done, "
        f"{info['failed']} failed, {info['running']} running, {info['stale']} stale "
        f"(owner died; resumed by the next `randpos sweep`), {info['pending']} pending; "
        f"ETA {eta}",
        highlight=False,
    )
    table = Table("task", "done", "failed", "running", "stale", "pending")
    for task, row in info["per_task"].items():
        table.add_row(
            task, *(str(row[k]) for k in ("done", "failed", "running", "stale", "pending"))
        )
    console.print(table)
    for rid, error in list(info["failures"].items())[:20]:
        console.print(f"[red]failed[/red] {rid}: {error}", highlight=False)
    return info


def register_commands(app: typer.Typer) -> None:
    """Add ``sweep``, ``sweep-status`` and ``report`` to a typer app (``randpos.cli.app``)."""
    app.command("sweep")(sweep_cli)
    app.command("sweep-status")(sweep_status_cli)
    app.command("report")(report_cli)
