"""Reports: a pure function of the results store (docs/design.md §4.8).

``write_report(store, out_dir, sweep=...)`` writes::

    report.md            Table 1, the seed tables, the headline and the protocol, linking figures
    report.html          the same in one self-contained file (figures inlined as base64 PNG)
    table1.tex           Table 1 as a LaTeX table (booktabs)
    table1.csv           Table 1 values (0..1) and each task's chance level, plus
                         table1_seeds.csv (mean, std, median, quartiles, success rate over seeds)
                         and table1_stats.csv (one row per cell, every statistic)
    chance.csv           the chance level of every (task, length) the report used
    runs.csv             one row per finished run
    per_length.csv/.parquet  every (run, length, accuracy) with the run's config
    figures/accuracy_<task>.png, figures/table1_heatmap.png

Next to the paper's max over seeds and learning rates, every table states the median, the
interquartile range and the success rate over seeds (randpos.results.report.stats; the threshold
tau is ``success_threshold``) and, for the algorithmic tasks, the chance level
(randpos.results.report.chance).

Table 1 holds the paper's workload (``encoder``) only; runs of other workloads get a table and
a figure each (:mod:`randpos.results.report.workloads`), and a store without encoder runs a report
without Table 1. The image workloads and the arithmetic workload add their own sections
(:mod:`randpos.results.report.images`, :mod:`randpos.results.report.arithmetic`: bands of the
operand-length grid and its heat maps, arithmetic_cells.csv, arithmetic_bands.csv).
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console

from randpos.results.report.architectures import CAPTION as ARCHITECTURE_CAPTION
from randpos.results.report.architectures import (
    accuracy_by_architecture,
    architecture_table,
    task_runs,
)
from randpos.results.report.arithmetic import write_arithmetic_section
from randpos.results.report.chance import ChanceLevels
from randpos.results.report.figures import accuracy_vs_length, heatmap
from randpos.results.report.images import write_images_section
from randpos.results.report.long_context import write_long_context_section
from randpos.results.report.stats import DEFAULT_SUCCESS_THRESHOLD, QUANTILE_METHOD, check_threshold
from randpos.results.report.tables import (
    LEVEL_NAMES,
    Table1,
    build_table1,
    chance_caption,
    headline_text,
    seed_statistics_caption,
    to_html_table,
    to_latex,
    to_markdown,
)
from randpos.results.report.workloads import CAPTION as WORKLOAD_CAPTION
from randpos.results.report.workloads import (
    figure_name,
    is_encoder,
    metric_vs_size,
    seed_caption,
    workload_tables,
)
from randpos.results.report.workloads import to_html as workload_html
from randpos.results.report.workloads import to_markdown as workload_markdown
from randpos.results.store import ResultsStore, default_store_path
from randpos.tasks import TASK_NAMES


@dataclass
class Report:
    """Everything a report shows, computed from the store alone: Table 1 (None without encoder
    runs), the finished runs and their per-length metrics (long format), and the source named in
    the captions."""

    table: Table1 | None  # None when no encoder run is in the store
    runs: pd.DataFrame  # finished runs
    per_length: pd.DataFrame  # long format, finished runs only
    source: str  # "<store path> (sweep NAME)" for the captions
    workloads: dict[str, pd.DataFrame] = field(default_factory=dict)  # other workloads' tables
    architectures: pd.DataFrame | None = None  # encoder vs decoder, when both are present
    threshold: float = DEFAULT_SUCCESS_THRESHOLD  # tau of the success rates
    chance: ChanceLevels = field(default_factory=ChanceLevels)  # the chance levels measured


def build_report(
    store: ResultsStore,
    sweep: str | None = None,
    *,
    success_threshold: float = DEFAULT_SUCCESS_THRESHOLD,
    chance_sequences: int | None = None,
) -> Report:
    """Everything the outputs show, computed from the store alone (and, for the chance levels,
    the task registry). ``success_threshold`` is tau of the success rates;
    ``chance_sequences`` the sequences per length of the chance levels (None: each run's own
    evaluation sequences)."""
    threshold = check_threshold(success_threshold)
    if chance_sequences is not None and chance_sequences < 1:
        raise ValueError(f"chance_sequences must be at least 1, got {chance_sequences}")
    if sweep is not None and sweep not in store.sweeps():
        known = ", ".join(store.sweeps()) or "(none)"
        raise ValueError(f"no sweep named {sweep!r} in {store.path}; known: {known}")
    runs = store.runs(sweep=sweep, status="done")
    if runs.empty:
        where = f"sweep {sweep!r} of " if sweep else ""
        raise ValueError(f"no finished runs in {where}{store.path}: nothing to report")
    encoder = is_encoder(runs)
    per_length = store.per_length(sweep=sweep)
    chance = ChanceLevels(chance_sequences)
    levels = chance.of_runs(runs, per_length)
    table = None
    if encoder.any():
        table = build_table1(runs[encoder], success_threshold=threshold, chance=levels)
    source = str(store.path) + (f" (sweep {sweep})" if sweep else "")
    return Report(
        table,
        runs,
        per_length,
        source,
        workload_tables(runs[~encoder], threshold, levels),
        architecture_table(runs, threshold, levels),
        threshold,
        chance,
    )


def write_report(
    store: ResultsStore | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sweep: str | None = None,
    figures: bool = True,
    success_threshold: float = DEFAULT_SUCCESS_THRESHOLD,
    chance_sequences: int | None = None,
    effective_threshold: float | None = None,
) -> dict[str, Path]:
    """Write every report output into ``out_dir``; returns the paths by name.
    ``effective_threshold``: the long-context effective length's fixed threshold (None: 0.9 x
    each run's accuracy at its training length, randpos.results.report.long_context)."""
    if not isinstance(store, ResultsStore):
        store = _open_existing(store)
    # raises before anything is written
    report = build_report(
        store, sweep, success_threshold=success_threshold, chance_sequences=chance_sequences
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    t = report.table

    paths["per_length_csv"] = _write_frame(report.per_length, out / "per_length.csv")
    paths["per_length_parquet"] = _write_frame(report.per_length, out / "per_length.parquet")
    paths["runs_csv"] = _write_frame(report.runs, out / "runs.csv")
    figure_paths: dict[str, Path] = {}
    if t is not None:
        figure_paths = _write_table1(t, report, out, paths, figures)
    if figures:
        for name in report.workloads:
            runs = report.runs[report.runs["workload"] == name]
            path = out / "figures" / f"{figure_name(name)}.png"
            figure_paths[figure_name(name)] = metric_vs_size(report.per_length, runs, path)
    if report.architectures is not None:
        paths["architectures_csv"] = _write_frame(report.architectures, out / "architectures.csv")
        if figures:
            figure_paths["accuracy_by_architecture"] = accuracy_by_architecture(
                report.per_length,
                task_runs(report.runs),
                out / "figures" / "accuracy_by_architecture.png",
            )
    if report.chance.values:
        paths["chance_csv"] = _write_frame(report.chance.table(), out / "chance.csv")
    paths.update({f"figure_{k}": v for k, v in figure_paths.items()})
    images, image_paths = write_images_section(store, report.runs, out, figures)
    arithmetic, arithmetic_paths = write_arithmetic_section(
        store, report.runs, out, figures, report.threshold
    )
    images, image_paths = images + arithmetic, {**image_paths, **arithmetic_paths}
    paths.update(image_paths)
    context, context_paths = write_long_context_section(
        store, report.runs, out, figures, threshold=effective_threshold, tau=report.threshold
    )
    paths.update(context_paths)
    markdown = _markdown(report, figure_paths, out, images + context)
    paths["markdown"] = _write_text(out / "report.md", markdown)
    paths["html"] = _write_text(out / "report.html", _html(report, figure_paths))
    return paths


def _write_table1(t: Table1, report: Report, out: Path, paths: dict, figures: bool) -> dict:
    """Table 1's files (csv, LaTeX, headline) and figures; returns the figures' paths."""
    flat = t.best.copy()
    flat.columns = [f"{pe}{'_randomized' if r else ''}" for r, pe in flat.columns]
    flat["chance"] = t.chance_row  # new columns go after the existing ones
    paths["table1_csv"] = _write_frame(flat.reset_index(), out / "table1.csv")
    stats = {"mean": t.mean, "std": t.std, "median": t.median, "q1": t.q1, "q3": t.q3}
    stats |= {"success_rate": t.success, "seeds": t.seeds.astype("Int64")}
    seeds = pd.concat(stats, axis=1)
    seeds.columns = [f"{pe}{'_randomized' if r else ''}_{stat}" for stat, r, pe in seeds.columns]
    seeds["chance"] = t.chance_row
    paths["table1_seeds_csv"] = _write_frame(seeds.reset_index(), out / "table1_seeds.csv")
    paths["table1_stats_csv"] = _write_frame(t.stats, out / "table1_stats.csv")
    paths["latex"] = _write_text(out / "table1.tex", to_latex(t))

    # every length's chance level, whether or not the figures that draw them are (chance.csv)
    encoder_runs = report.runs[is_encoder(report.runs)]
    curves = {task: _chance_curve(report, encoder_runs, task) for _, task in t.best.index}
    figure_paths: dict[str, Path] = {}
    if figures:
        figure_paths["heatmap"] = heatmap(t, out / "figures" / "table1_heatmap.png")
        for _, task in t.best.index:
            figure_paths[f"accuracy_{task}"] = accuracy_vs_length(
                report.per_length,
                encoder_runs,
                task,
                out / "figures" / f"accuracy_{task}.png",
                seed_runs=t.seed_runs,
                chance=curves[task],
            )
    headline = {**t.headline, "protocol": t.protocol}
    headline |= {**t.median_headline, "seed_statistics": _seed_protocol(report)}
    headline["chance"] = {task: value for (_, task), value in t.chance_row.dropna().items()}
    _write_text(out / "headline.json", json.dumps(headline, indent=2, default=str))
    paths["headline"] = out / "headline.json"
    return figure_paths


def _chance_curve(report: Report, runs: pd.DataFrame, task: str) -> pd.Series | None:
    """The task's chance level at every length its runs were evaluated at (None without)."""
    mine = runs[runs["task"] == task]
    if report.table.chance_row.isna().all() or mine.empty or task not in TASK_NAMES:
        return None
    lengths = report.per_length[report.per_length["run_id"].isin(mine["run_id"])]["length"]
    return report.chance.curve(mine, task, sorted(lengths.astype(int).unique()))


def _seed_protocol(report: Report) -> dict:
    """How the seed statistics and chance levels were computed (headline.json)."""
    return {
        "learning_rate": "per cell, the one with the best mean score over seeds",
        "quantiles": f"numpy.quantile, method={QUANTILE_METHOD!r} (numpy's default)",
        "success_threshold": report.threshold,
        "chance_sequences": report.chance.sequences or "each run's eval_batch_size",
    }


def _open_existing(path) -> ResultsStore:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}")
    return ResultsStore(path)


def _write_frame(frame: pd.DataFrame, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _protocol_lines(report: Report) -> list[str]:
    p = report.table.protocol
    lines = [
        f"- Source: `{report.source}`, {p['runs']} finished runs.",
        f"- Score of a run: mean accuracy over the unseen lengths {p['unseen']} "
        "(per-token accuracy, masked as in docs/reference-system.md §2.2).",
        f"- Table 1 cell: max over {p['seeds_text']} and {p['lrs_text']} (the best run).",
        "- Seed table: per cell the learning rate with the best mean over seeds, then mean ± "
        "sample std (ddof=1) over seeds.",
        "- Headline: mean over (task, encoding) pairs of randomized − plain Table 1 cells, "
        "in percentage points; the median-based one: the same mean over the same pairs of "
        "randomized − plain medians over seeds.",
        "- Median, quartiles and success rate: over the seeds at each cell's learning rate "
        f"with the best mean; quartiles by numpy.quantile, method={QUANTILE_METHOD!r} (linear "
        f"interpolation); success: unseen-length accuracy at least tau = {report.threshold:g}.",
    ]
    chance = chance_caption(report.table, report.chance.sequences)
    if chance:
        lines.append(f"- {chance}")
    if p["steps"]:
        lines.append(f"- Training steps: {', '.join(str(s) for s in p['steps'])}.")
    if p["max_position"]:
        lines.append(f"- Randomized: positions drawn from [0, L), L = {p['max_position']}.")
    return lines


def _markdown(
    report: Report, figures: dict[str, Path], out: Path, images: list[str] | None = None
) -> str:
    t = report.table
    parts = ["# Length generalization: plain vs randomized positional encodings"]
    if t is not None:
        parts += _markdown_table1(report)
    for name, frame in report.workloads.items():
        caption = f"{WORKLOAD_CAPTION} {_seed_caption(report, frame)}"
        parts += ["", f"## Workload {name}", "", caption, "", workload_markdown(frame)]
    if report.architectures is not None:
        frame = report.architectures
        caption = f"{ARCHITECTURE_CAPTION} {_seed_caption(report, frame)}"
        parts += ["", "## Architectures", "", caption, "", workload_markdown(frame)]
    parts += images or []  # the images and long-context sections, when there are any
    if figures:
        parts += ["", "## Figures", ""]
        for name, path in figures.items():
            parts.append(f"![{name}]({path.relative_to(out).as_posix()})")
            parts.append("")
    return "\n".join(parts) + "\n"


def _seed_caption(report: Report, frame: pd.DataFrame) -> str:
    return seed_caption(report.threshold, chance="chance unseen" in frame.columns)


def _table1_caption(report: Report) -> str:
    chance = chance_caption(report.table, report.chance.sequences)
    return report.table.caption + (f" {chance}" if chance else "")


SEEDS_CAPTION = (
    "Mean and sample standard deviation (%) of the unseen-length accuracy over seeds, at the "
    "learning rate with the best mean."
)


def _markdown_table1(report: Report) -> list[str]:
    t = report.table
    return [
        "",
        f"**Headline.** {headline_text(t)}",
        "",
        "## Table 1",
        "",
        _table1_caption(report),
        "",
        to_markdown(t),
        "",
        "## Mean ± std over seeds",
        "",
        SEEDS_CAPTION,
        "",
        to_markdown(t, seeds=True),
        "",
        "## Median [q1, q3] over seeds",
        "",
        seed_statistics_caption(t, "median"),
        "",
        to_markdown(t, view="median"),
        "",
        f"## Success rate over seeds (τ = {t.threshold:g})",
        "",
        seed_statistics_caption(t, "success"),
        "",
        to_markdown(t, view="success"),
        "",
        "## Protocol",
        "",
        *_protocol_lines(report),
        "",
        "Levels: " + ", ".join(f"{k} = {v}" for k, v in LEVEL_NAMES.items()) + ".",
    ]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:nth-child(1),td:nth-child(2){text-align:left}
tr.level-start td{border-top:2px solid #555}
caption,.caption{font-size:13px;color:#444;text-align:left;margin:.5em 0}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.headline{font-size:16px;background:#f4f8ff;padding:.7em 1em;border-left:4px solid #3b7ddd}
"""


def _html(report: Report, figures: dict[str, Path]) -> str:
    t = report.table
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>randpos report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Length generalization: plain vs randomized positional encodings</h1>",
    ]
    if t is not None:
        parts += _html_table1(report)
    for name, frame in report.workloads.items():
        caption = f"{WORKLOAD_CAPTION} {_seed_caption(report, frame)}"
        parts += [f"<h2>Workload {esc(name)}</h2>", f"<p class=caption>{esc(caption)}"]
        parts += ["</p>", workload_html(frame)]
    if report.architectures is not None:
        caption = f"{ARCHITECTURE_CAPTION} {_seed_caption(report, report.architectures)}"
        parts += ["<h2>Architectures</h2>", f"<p class=caption>{esc(caption)}</p>"]
        parts.append(workload_html(report.architectures))
    if figures:
        parts.append("<h2>Figures</h2>")
        for name, path in figures.items():
            # Inlined, so the one HTML file is the whole report (mail it, attach it to an issue).
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{esc(name)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_table1(report: Report) -> list[str]:
    t = report.table
    esc = html.escape
    return [
        f"<p class=headline>{esc(headline_text(t))}</p>",
        "<h2>Table 1</h2>",
        f"<p class=caption>{esc(_table1_caption(report))}</p>",
        to_html_table(t),
        "<h2>Mean ± std over seeds</h2>",
        f"<p class=caption>{esc(SEEDS_CAPTION)}</p>",
        to_html_table(t, seeds=True),
        "<h2>Median [q1, q3] over seeds</h2>",
        f"<p class=caption>{esc(seed_statistics_caption(t, 'median'))}</p>",
        to_html_table(t, view="median"),
        f"<h2>Success rate over seeds (τ = {t.threshold:g})</h2>",
        f"<p class=caption>{esc(seed_statistics_caption(t, 'success'))}</p>",
        to_html_table(t, view="success"),
        "<h2>Protocol</h2><ul>",
        *(f"<li>{esc(line[2:])}</li>" for line in _protocol_lines(report)),
        "</ul>",
    ]


def report_command(
    store: str | os.PathLike | None = None,
    sweep: str | None = None,
    out: str | os.PathLike = "report",
    figures: bool = True,
    success_threshold: float = DEFAULT_SUCCESS_THRESHOLD,
    chance_sequences: int | None = None,
    effective_threshold: float | None = None,
) -> dict[str, Path]:
    """Body of ``randpos report``: write the outputs and print the headline and Table 1."""

    paths = write_report(
        store or default_store_path(),
        out,
        sweep=sweep,
        figures=figures,
        success_threshold=success_threshold,
        chance_sequences=chance_sequences,
        effective_threshold=effective_threshold,
    )
    console = Console()
    text = Path(paths["markdown"]).read_text()
    headline = next((line for line in text.splitlines() if line.startswith("**Headline")), "")
    if headline:
        console.print(headline.replace("**", ""), highlight=False)
    written = [paths[k] for k in ("markdown", "html", "latex") if k in paths]
    console.print(f"report: {', '.join(str(p) for p in written)}", highlight=False)
    console.print(
        f"raw results: {paths['per_length_csv']}, {paths['per_length_parquet']}", highlight=False
    )
    return paths


__all__ = ["Report", "build_report", "report_command", "write_report"]
