"""The paper's Table 1 from the results store, and the headline gain of randomization.

Aggregation (stated in every caption):

* a run's score is its ``ood_accuracy``: mean accuracy over the unseen lengths N+1..M;
* Table 1 cell (task, PE, plain|randomized) = the MAX of that score over every finished run in
  the cell (seeds x learning rates), the paper's "best run" reading (docs/reference-system.md §5.2);
* the seed table picks, per cell, the learning rate with the best mean over seeds and shows the
  mean ± sample standard deviation (ddof=1) over those seeds;
* headline = mean over the (task, PE) pairs that have both a plain and a randomized cell of
  (randomized - plain), in percentage points: the paper's "+12.0% on average".

Next to these, per cell and at the seed table's learning rate (randpos.results.report.stats): the
median and interquartile range over seeds, the success rate (fraction of seeds scoring at least tau)
and the headline's gain from medians; per task, its chance level (randpos.results.report.chance),
the accuracy of the best answer that ignores the order of the output positions, averaged over the
same unseen lengths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from randpos.encodings import PE_NAMES
from randpos.loop.identity import NON_RESULT_FIELDS
from randpos.results.report.stats import DEFAULT_SUCCESS_THRESHOLD, QUANTILE_METHOD, summarize
from randpos.results.store import RUN_COLUMNS
from randpos.tasks import TASK_NAMES, get_task
from randpos.tasks.base import LEVELS

LEVEL_NAMES = {
    "regular": "Regular (R)",
    "dcf": "Deterministic context-free (DCF)",
    "cs": "Context-sensitive (CS)",
}
# The paper's column order; encodings added later follow in registry order.
PE_ORDER = ("none", "sincos", "relative", "alibi", "rope", "learned")
# Fields that are the table's own axes or are aggregated over; any other config field that
# varies inside a cell is reported in the caption (the max then runs over it too).
AXES = {"task", "pe", "randomized", "seed", "learning_rate"}


def task_levels() -> dict[str, str]:
    """Task name -> level, in the docs/reference-system.md §1 order."""
    return {name: get_task(name).level for name in TASK_NAMES}


def pe_order(names) -> list[str]:
    order = list(PE_ORDER) + [p for p in PE_NAMES if p not in PE_ORDER]
    present = set(names)
    return [p for p in order if p in present] + sorted(present - set(order))


def column_label(pe: str, randomized: bool) -> str:
    """A Table 1 column's label: the encoding, plus ``randomized`` for a randomized column."""
    return f"{pe} randomized" if randomized else pe


@dataclass
class Table1:
    """Table 1 and its companions, computed from one frame of finished runs."""

    best: pd.DataFrame  # index (level, task); columns MultiIndex (randomized, pe); values 0..1
    mean: pd.DataFrame  # same layout: mean over seeds at the best learning rate
    std: pd.DataFrame  # same layout: sample std over those seeds (NaN with one seed)
    counts: pd.DataFrame  # runs per cell
    headline: dict  # mean_gain (points), cells, per_pe gains, per-cell gains
    caption: str
    protocol: dict = field(default_factory=dict)
    # Seed statistics (randpos.results.report.stats), same layout, over the seeds at the seed
    # table's learning rate: median, quartiles, success rate (fraction >= threshold), seed count.
    median: pd.DataFrame | None = None
    q1: pd.DataFrame | None = None
    q3: pd.DataFrame | None = None
    success: pd.DataFrame | None = None
    seeds: pd.DataFrame | None = None
    threshold: float = DEFAULT_SUCCESS_THRESHOLD
    chance: pd.DataFrame | None = None  # per cell: chance level over the cell's unseen lengths
    chance_row: pd.Series | None = None  # per (level, task): the mean of its cells' chance
    stats: pd.DataFrame | None = None  # one row per cell, every statistic (table1_stats.csv)
    median_headline: dict = field(default_factory=dict)  # the headline from medians
    seed_runs: dict = field(default_factory=dict)  # (task, randomized, pe) -> run ids at the lr


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Done runs with a score, and the columns the table needs."""
    if runs.empty or "status" not in runs:
        return runs.iloc[0:0]
    done = runs[(runs["status"] == "done") & runs["ood_accuracy"].notna()].copy()
    for column in ("task", "pe", "randomized"):
        if column not in done:
            raise ValueError(f"the runs lack the config field {column!r}; not randpos runs?")
    done["randomized"] = done["randomized"].astype(bool)
    if "seed" not in done:
        done["seed"] = 0
    if "learning_rate" not in done:
        done["learning_rate"] = np.nan
    return done


def _layout(values: pd.Series, levels: dict[str, str], pes: list[str]) -> pd.DataFrame:
    """(task, randomized, pe)-indexed values -> the Table 1 grid."""
    frame = values.unstack(["randomized", "pe"])
    columns = [(r, p) for r in (False, True) for p in pes if (r, p) in frame.columns]
    frame = frame.reindex(columns=pd.MultiIndex.from_tuples(columns, names=["randomized", "pe"]))
    known = [t for t in levels if t in frame.index]
    extra = sorted(t for t in frame.index if t not in levels)
    rows = [(levels[t], t) for t in known] + [("other", t) for t in extra]
    frame = frame.reindex([t for _, t in rows])
    frame.index = pd.MultiIndex.from_tuples(rows, names=["level", "task"])
    return frame


def headline_gain(best: pd.DataFrame, pairs: set | None = None) -> dict:
    """Mean over (task, PE) of randomized - plain, in percentage points; ``pairs`` (a set of
    (task, pe)) restricts it to those pairs."""
    gains = {}
    for task_key in best.index:
        for pe in best.columns.get_level_values("pe").unique():
            if pairs is not None and (task_key[1], pe) not in pairs:
                continue
            if (False, pe) in best.columns and (True, pe) in best.columns:
                plain, rand = best.loc[task_key, (False, pe)], best.loc[task_key, (True, pe)]
                if pd.notna(plain) and pd.notna(rand):
                    gains[(task_key[1], pe)] = 100.0 * (rand - plain)
    per_pe: dict[str, list[float]] = {}
    for (_, pe), gain in gains.items():
        per_pe.setdefault(pe, []).append(gain)
    return {
        "mean_gain": float(np.mean(list(gains.values()))) if gains else float("nan"),
        "cells": len(gains),
        "per_pe": {pe: float(np.mean(v)) for pe, v in per_pe.items()},
        "gains": {f"{t}/{p}": g for (t, p), g in gains.items()},
    }


def median_headline(t: Table1) -> dict:
    """The headline from the medians over seeds, over the same (task, PE) pairs as the
    max-based one, with the mean success rate of those pairs' plain and randomized cells."""
    pairs = {tuple(key.split("/", 1)) for key in t.headline["gains"]}
    h = headline_gain(t.median, pairs)
    rates = {False: [], True: []}
    for (_, task), row in t.success.iterrows():
        for randomized in (False, True):
            for pe in {p for tk, p in pairs if tk == task}:
                rates[randomized].append(row[(randomized, pe)])
    return {
        "median_gain": h["mean_gain"],
        "median_cells": h["cells"],
        "median_per_pe": h["per_pe"],
        "median_gains": h["gains"],
        "success_rate_plain": float(np.mean(rates[False])) if pairs else float("nan"),
        "success_rate_randomized": float(np.mean(rates[True])) if pairs else float("nan"),
    }


def build_table1(
    runs: pd.DataFrame,
    *,
    success_threshold: float = DEFAULT_SUCCESS_THRESHOLD,
    chance: pd.Series | None = None,
) -> Table1:
    """Table 1 (max over seeds and learning rates), the seed table, the seed statistics and the
    headline. ``chance`` is each run's chance level (index of ``runs``; see
    randpos.results.report.chance.ChanceLevels.of_runs), NaN or absent where there is none."""
    if chance is not None:
        runs = runs.assign(chance=chance.reindex(runs.index))
    done = finished_runs(runs)
    if done.empty:
        raise ValueError("no finished runs with an unseen-length accuracy to report")
    levels = task_levels()
    pes = pe_order(done["pe"].unique())
    keys = ["task", "randomized", "pe"]
    best = _layout(done.groupby(keys)["ood_accuracy"].max(), levels, pes)
    counts = _layout(done.groupby(keys)["ood_accuracy"].size(), levels, pes)
    # Seed table: per cell, the learning rate whose mean over seeds is best.
    lr_key = done["learning_rate"].fillna(-1.0)
    per_lr = done.assign(lr=lr_key).groupby(keys + ["lr"])["ood_accuracy"].agg(["mean", "std"])
    best_lr = per_lr["mean"].groupby(level=keys).idxmax()
    chosen = per_lr.loc[list(best_lr)]
    chosen.index = chosen.index.droplevel("lr")
    mean = _layout(chosen["mean"], levels, pes)
    std = _layout(chosen["std"], levels, pes)
    stats, seed_runs = _seed_statistics(done.assign(lr=lr_key), keys, best_lr, success_threshold)
    stats["mean"], stats["std"] = chosen["mean"], chosen["std"]
    stats["best"] = done.groupby(keys)["ood_accuracy"].max()
    stats["runs"] = done.groupby(keys)["ood_accuracy"].size()
    if "chance" in done:
        stats["chance"] = done.groupby(keys)["chance"].mean()
    else:
        stats["chance"] = np.nan
    grids = {name: _layout(stats[name], levels, pes) for name in stats.columns}
    chance_row = grids["chance"].mean(axis=1)  # NaN where no cell of the row has one
    protocol = describe_protocol(done)
    caption = (
        f"Accuracy (%) averaged over the unseen lengths {protocol['unseen']}; each cell is the "
        f"maximum over {protocol['seeds_text']} and {protocol['lrs_text']} of that average "
        "(best run, as in the paper). Bold: best in the row."
    )
    if protocol["max_position"]:
        caption += (
            f" Randomized runs draw positions from [0, L) with L = {protocol['max_position']}."
        )
    if protocol["varying"]:
        varied = "; ".join(f"{k} in {v}" for k, v in protocol["varying"].items())
        caption += f" Note: runs in a cell also differ in {varied}; the max runs over those too."
    t = Table1(
        best,
        mean,
        std,
        counts,
        headline_gain(best),
        caption,
        protocol,
        median=grids["median"],
        q1=grids["q1"],
        q3=grids["q3"],
        success=grids["success_rate"],
        seeds=grids["seeds"],
        threshold=success_threshold,
        chance=grids["chance"],
        chance_row=chance_row,
        stats=_stats_frame(stats, levels, success_threshold),
        seed_runs=seed_runs,
    )
    t.median_headline = median_headline(t)
    return t


def _seed_statistics(
    done: pd.DataFrame, keys: list[str], best_lr: pd.Series, threshold: float
) -> tuple[pd.DataFrame, dict]:
    """Per cell (index ``keys``): the chosen learning rate and the seed statistics of its runs;
    and the run ids behind them."""
    groups = done.groupby(keys + ["lr"])
    rows, seed_runs = {}, {}
    for key in best_lr:
        runs = groups.get_group(key)
        cell, lr = tuple(key[:-1]), key[-1]
        rows[cell] = {"learning_rate": np.nan if lr == -1.0 else lr}
        rows[cell].update(summarize(runs["ood_accuracy"], threshold))
        seed_runs[cell] = list(runs["run_id"]) if "run_id" in runs else []
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=keys)
    return frame, seed_runs


STATS_COLUMNS = (
    "runs",
    "best",
    "learning_rate",
    "seeds",
    "mean",
    "std",
    "median",
    "q1",
    "q3",
    "iqr",
    "success_rate",
    "success_threshold",
    "chance",
)


def _stats_frame(stats: pd.DataFrame, levels: dict[str, str], threshold: float) -> pd.DataFrame:
    """One row per cell in Table 1's order: level, task, pe, randomized and every statistic."""
    frame = stats.assign(success_threshold=threshold).reset_index()
    frame.insert(0, "level", frame["task"].map(lambda t: levels.get(t, "other")))
    rank = {t: i for i, t in enumerate(levels)}
    pes = pe_order(frame["pe"].unique())
    frame = frame.assign(
        _t=frame["task"].map(lambda t: rank.get(t, len(rank))),
        _p=frame["pe"].map(pes.index),
    ).sort_values(["_t", "task", "randomized", "_p"], kind="mergesort")
    return frame[["level", "task", "pe", "randomized", *STATS_COLUMNS]].reset_index(drop=True)


def _values_text(values, name: str) -> str:
    values = sorted(v for v in values if pd.notna(v))
    if not values:
        return f"one {name}"
    shown = ", ".join(f"{v:g}" for v in values)
    plural = name if name.endswith("s") else name + "s"
    return f"{len(values)} {plural} ({shown})" if len(values) > 1 else f"{name} {shown}"


def describe_protocol(done: pd.DataFrame) -> dict:
    def distinct(column):
        return sorted(done[column].dropna().unique().tolist()) if column in done else []

    n, m = distinct("max_train_length"), distinct("eval_max_length")
    if len(n) == 1 and len(m) == 1:
        unseen = f"N+1..M = {n[0] + 1}..{m[0]}"
    else:
        unseen = "N+1..M of each run (N in {}, M in {})".format(n or "?", m or "?")
    rand = done[done["randomized"]]
    max_pos = sorted(rand["max_position"].unique().tolist()) if "max_position" in rand else []

    not_config = {"run_id", "max_position", *RUN_COLUMNS}
    config_columns = [
        c
        for c in done.columns
        if c not in AXES
        and c not in NON_RESULT_FIELDS
        and not c.startswith("time_")
        and c not in not_config
    ]
    varying = {}
    for column in config_columns:
        try:
            per_cell = done.groupby(["task", "pe", "randomized"])[column].nunique(dropna=False)
        except TypeError:  # unhashable values (lists): compare their text
            per_cell = (
                done.assign(_v=done[column].astype(str))
                .groupby(["task", "pe", "randomized"])["_v"]
                .nunique()
            )
        if (per_cell > 1).any():
            varying[column] = sorted(done[column].astype(str).unique().tolist())
    return {
        "unseen": unseen,
        "max_train_length": n,
        "eval_max_length": m,
        "seeds": distinct("seed"),
        "learning_rates": distinct("learning_rate"),
        "seeds_text": _values_text(distinct("seed"), "seed"),
        "lrs_text": _values_text(distinct("learning_rate"), "learning rate"),
        "max_position": ", ".join(str(v) for v in max_pos),
        "steps": distinct("steps"),
        "runs": int(len(done)),
        "varying": varying,
    }


# ----------------------------------------------------------------------------- rendering
def _pct(value: float) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}"


def _row_best(row: pd.Series) -> float:
    return row.max() if row.notna().any() else np.nan


def columns_of(table: pd.DataFrame) -> list[tuple[bool, str]]:
    return list(table.columns)


#: the tables a Table1 renders: best run (Table 1), mean ± std, median [q1, q3], success k/n
VIEWS = ("best", "seeds", "median", "success")


def _view(seeds: bool, view: str | None) -> str:
    view = view or ("seeds" if seeds else "best")
    if view not in VIEWS:
        raise ValueError(f"unknown table view {view!r}; one of {', '.join(VIEWS)}")
    return view


def _values(t: Table1, view: str) -> pd.DataFrame:
    return {"best": t.best, "seeds": t.mean, "median": t.median, "success": t.success}[view]


def _has_chance(t: Table1) -> bool:
    return t.chance_row is not None and bool(t.chance_row.notna().any())


def _chance_cell(t: Table1, key) -> str:
    return _pct(t.chance_row.get(key, np.nan))


def _cell_text(t: Table1, view: str, key, col) -> str:
    value = _values(t, view).loc[key, col]
    if view == "seeds":
        sd = t.std.loc[key, col]
        return _pct(value) + (f" ± {100 * sd:.1f}" if pd.notna(sd) else "")
    if view == "median":
        if pd.isna(value) or t.seeds.loc[key, col] < 2:
            return _pct(value)
        return f"{_pct(value)} [{_pct(t.q1.loc[key, col])}, {_pct(t.q3.loc[key, col])}]"
    if view == "success":
        seeds = t.seeds.loc[key, col]
        if pd.isna(value) or pd.isna(seeds):
            return ""
        return f"{round(value * seeds)}/{int(seeds)}"
    return _pct(value)


def to_markdown(t: Table1, *, seeds: bool = False, view: str | None = None) -> str:
    """One of the :data:`VIEWS` as a markdown table (``seeds=True``: the mean ± std view), with
    the task's chance level after its name when there is one."""
    view = _view(seeds, view)
    table = _values(t, view)
    cols = columns_of(table)
    chance = ["chance"] if _has_chance(t) else []
    head = ["level", "task", *chance] + [column_label(p, r) for r, p in cols]
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---", "---"] + ["---:"] * (len(cols) + len(chance))) + " |",
    ]
    for (level, task), row in table.iterrows():
        best = _row_best(row)
        cells = [_chance_cell(t, (level, task))] if chance else []
        for col in cols:
            value = row[col]
            text = _cell_text(t, view, (level, task), col)
            if view == "best" and pd.notna(value) and value == best:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join([level, task] + cells) + " |")
    return "\n".join(lines)


def to_html_table(t: Table1, *, seeds: bool = False, view: str | None = None) -> str:
    """Table 1 as an HTML table (best over seeds, or the seed statistics with ``seeds``; ``view``
    picks one), with the chance column when known."""
    view = _view(seeds, view)
    table = _values(t, view)
    cols = columns_of(table)
    chance = _has_chance(t)
    plain = [c for c in cols if not c[0]]
    rand = [c for c in cols if c[0]]
    out = ["<table>", "<thead><tr><th rowspan=2>level</th><th rowspan=2>task</th>"]
    if chance:
        out.append("<th rowspan=2>chance</th>")
    if plain:
        out.append(f"<th colspan={len(plain)}>plain</th>")
    if rand:
        out.append(f"<th colspan={len(rand)}>randomized (ours)</th>")
    out.append("</tr><tr>" + "".join(f"<th>{p}</th>" for _, p in cols) + "</tr></thead><tbody>")
    previous = None
    for (level, task), row in table.iterrows():
        best = _row_best(row)
        tr = "<tr class=level-start>" if level != previous else "<tr>"
        out.append(tr + f"<td>{level if level != previous else ''}</td><td>{task}</td>")
        if chance:
            out.append(f"<td>{_chance_cell(t, (level, task))}</td>")
        previous = level
        for col in cols:
            value = row[col]
            text = _cell_text(t, view, (level, task), col)
            style = ""
            if pd.notna(value) and view != "success":
                # Cell shade from chance-ish (white) to perfect (green), for reading at a glance.
                style = f' style="background: rgba(46, 160, 67, {max(0.0, value - 0.5) * 1.2:.2f})"'
            bold = view == "best" and pd.notna(value) and value == best
            out.append(f"<td{style}>{'<b>' + text + '</b>' if bold else text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(t: Table1) -> str:
    """Table 1 (best over seeds and learning rates, in %) as a LaTeX tabular, plain and randomized
    columns side by side."""
    table = t.best
    cols = columns_of(table)
    plain = [c for c in cols if not c[0]]
    rand = [c for c in cols if c[0]]
    chance = _has_chance(t)
    spec = "ll" + "r" * (len(plain) + chance) + ("|" if plain and rand else "") + "r" * len(rand)
    lines = [
        "% Generated by `randpos report` from the results store.",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
    ]
    groups = []
    if plain:
        groups.append(rf"\multicolumn{{{len(plain)}}}{{c}}{{Plain}}")
    if rand:
        groups.append(rf"\multicolumn{{{len(rand)}}}{{c}}{{Randomized (ours)}}")
    lead = " & & & " if chance else " & & "
    lines.append(lead + " & ".join(groups) + r" \\")
    head = "Level & Task & " + ("Chance & " if chance else "")
    lines.append(head + " & ".join(_tex(p) for _, p in cols) + r" \\")
    lines.append(r"\midrule")
    previous = None
    for (level, task), row in table.iterrows():
        if previous is not None and level != previous:
            lines.append(r"\midrule")
        best = _row_best(row)
        cells = []
        for col in cols:
            text = _pct(row[col])
            if pd.notna(row[col]) and row[col] == best:
                text = rf"\textbf{{{text}}}"
            cells.append(text)
        name = (
            _tex(LEVEL_NAMES.get(level, level).split("(")[-1].rstrip(")"))
            if level != previous
            else ""
        )
        if chance:
            cells.insert(0, _chance_cell(t, (level, task)))
        lines.append(f"{name} & {_tex(task)} & " + " & ".join(cells) + r" \\")
        previous = level
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{_tex(t.caption)} Average gain of randomized over plain: "
        rf"{t.headline['mean_gain']:+.1f} points over {t.headline['cells']} task/encoding pairs"
        rf"{_tex(_latex_median_note(t))}.{_tex(_latex_chance_note(t))}}}",
        r"\label{tab:randpos-table1}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _latex_median_note(t: Table1) -> str:
    m = t.median_headline
    if not m or not m.get("median_cells"):
        return ""
    return f" ({m['median_gain']:+.1f} from the medians over seeds)"


def _latex_chance_note(t: Table1) -> str:
    if not _has_chance(t):
        return ""
    return (
        " Chance: accuracy of the best answer that ignores the order of the output positions, "
        "over the same lengths."
    )


def headline_text(t: Table1) -> str:
    """The headline sentence: the average gain of randomized over plain, in accuracy points, overall
    and per encoding."""
    h = t.headline
    if not h["cells"]:
        return "Headline: no (task, PE) pair has both a plain and a randomized run."
    per_pe = ", ".join(f"{pe} {g:+.1f}" for pe, g in h["per_pe"].items())
    return (
        f"Randomized positions change the unseen-length accuracy by {h['mean_gain']:+.1f} "
        f"percentage points on average (mean over {h['cells']} task/encoding pairs of "
        f"randomized - plain, each cell the best run; the paper's way of stating its +12.0%). "
        f"Per encoding: {per_pe}." + median_headline_text(t)
    )


def median_headline_text(t: Table1) -> str:
    """The sentence on the gain from medians and the success rates (empty without them)."""
    m = t.median_headline
    if not m or not m.get("median_cells"):
        return ""
    per_pe = ", ".join(f"{pe} {g:+.1f}" for pe, g in m["median_per_pe"].items())
    return (
        f" From the medians over seeds instead (each cell at the learning rate with the best "
        f"mean): {m['median_gain']:+.1f} points over the same pairs (per encoding: {per_pe}). "
        f"Seeds reaching {100 * t.threshold:g}% unseen-length accuracy: "
        f"{100 * m['success_rate_plain']:.0f}% plain, "
        f"{100 * m['success_rate_randomized']:.0f}% randomized (mean success rate of those pairs)."
    )


def seed_statistics_caption(t: Table1, view: str) -> str:
    """The caption of the median and success-rate tables."""
    common = (
        "the seeds of each cell at its learning rate with the best mean score over seeds (as in "
        "the seed table)"
    )
    if view == "median":
        return (
            f"Median [q1, q3] (%) of the unseen-length accuracy over {common}; q1 and q3 are the "
            f"25th and 75th percentiles (numpy.quantile, method={QUANTILE_METHOD!r}: numpy's "
            "default linear interpolation), shown where a cell has two or more seeds."
        )
    return (
        f"Success rate: how many of {common} reach an unseen-length accuracy of at least "
        f"tau = {t.threshold:g} ({100 * t.threshold:g}%)."
    )


def chance_caption(t: Table1, sequences: int | None = None) -> str:
    """What the chance column holds (empty when no task has one)."""
    if not _has_chance(t):
        return ""
    where = (
        "on each run's own evaluation sequences (its eval_seed and eval_batch_size)"
        if sequences is None
        else f"on {sequences} sequences per length from the runs' evaluation streams"
    )
    text = (
        "Chance (%): accuracy of the best answer that ignores the order of the output positions "
        "(a sequence task: each sequence answered with the most frequent class among its own "
        "scored targets; a classification task: the most frequent class over all targets of "
        f"the length), measured {where}, pooled per token like the accuracy and averaged over "
        "the same unseen lengths as the scores."
    )
    spread = t.chance.max(axis=1) - t.chance.min(axis=1)
    if (spread > 0).any():
        text += (
            " In some rows the cells' chance levels differ (their runs' lengths or evaluation "
            "sets differ): the column is their mean, table1_stats.csv has each cell's."
        )
    return text


__all__ = [
    "LEVELS",
    "PE_ORDER",
    "Table1",
    "build_table1",
    "column_label",
    "headline_gain",
    "headline_text",
    "median_headline",
    "median_headline_text",
    "task_levels",
    "to_html_table",
    "to_latex",
    "to_markdown",
]
