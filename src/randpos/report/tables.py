"""The paper's Table 1 from the results store, and the headline gain of randomization.

Aggregation (stated in every caption):

* a run's score is its ``ood_accuracy``: mean accuracy over the unseen lengths N+1..M;
* Table 1 cell (task, PE, plain|randomized) = the MAX of that score over every finished run in
  the cell (seeds x learning rates), the paper's "best run" reading (docs/reference-system.md §5.2);
* the seed table picks, per cell, the learning rate with the best mean over seeds and shows the
  mean ± sample standard deviation (ddof=1) over those seeds;
* headline = mean over the (task, PE) pairs that have both a plain and a randomized cell of
  (randomized - plain), in percentage points: the paper's "+12.0% on average".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

LEVELS = ("regular", "dcf", "cs")
LEVEL_NAMES = {
    "regular": "Regular (R)",
    "dcf": "Deterministic context-free (DCF)",
    "cs": "Context-sensitive (CS)",
}
# docs/reference-system.md §1 summary table; used when the task registry cannot be imported.
FALLBACK_TASKS = {
    "regular": ("even_pairs", "modular_arithmetic", "parity_check", "cycle_navigation"),
    "dcf": (
        "stack_manipulation",
        "reverse_string",
        "modular_arithmetic_brackets",
        "solve_equation",
    ),
    "cs": (
        "duplicate_string",
        "missing_duplicate_string",
        "odds_first",
        "binary_addition",
        "binary_multiplication",
        "compute_sqrt",
        "bucket_sort",
    ),
}
# The paper's column order; encodings added later follow in registry order.
PE_ORDER = ("none", "sincos", "relative", "alibi", "rope", "learned")
# Fields that are the table's own axes or are aggregated over; any other config field that
# varies inside a cell is reported in the caption (the max then runs over it too).
AXES = {"task", "pe", "randomized", "seed", "learning_rate"}


def task_levels() -> dict[str, str]:
    """Task name -> level, in the docs/reference-system.md §1 order."""
    try:
        from randpos.tasks import TASK_NAMES, get_task

        return {name: get_task(name).level for name in TASK_NAMES}
    except Exception:  # noqa: BLE001 - the registry is optional for reading a store
        return {t: level for level, tasks in FALLBACK_TASKS.items() for t in tasks}


def pe_order(names) -> list[str]:
    try:
        from randpos.encodings import PE_NAMES

        registry = list(PE_NAMES)
    except Exception:  # noqa: BLE001
        registry = list(PE_ORDER)
    order = list(PE_ORDER) + [p for p in registry if p not in PE_ORDER]
    present = set(names)
    return [p for p in order if p in present] + sorted(present - set(order))


def column_label(pe: str, randomized: bool) -> str:
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


def headline_gain(best: pd.DataFrame) -> dict:
    """Mean over (task, PE) of randomized - plain, in percentage points."""
    gains = {}
    for task_key in best.index:
        for pe in best.columns.get_level_values("pe").unique():
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


def build_table1(runs: pd.DataFrame) -> Table1:
    """Table 1 (max over seeds and learning rates), the seed table and the headline."""
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
    return Table1(best, mean, std, counts, headline_gain(best), caption, protocol)


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
    from randpos.store import NON_RESULT_FIELDS, RUN_COLUMNS

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


def to_markdown(t: Table1, *, seeds: bool = False) -> str:
    table = t.mean if seeds else t.best
    cols = columns_of(table)
    head = ["level", "task"] + [column_label(p, r) for r, p in cols]
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---", "---"] + ["---:"] * len(cols)) + " |",
    ]
    for (level, task), row in table.iterrows():
        best = _row_best(row)
        cells = []
        for col in cols:
            value = row[col]
            if seeds:
                sd = t.std.loc[(level, task), col]
                text = _pct(value) + (f" ± {100 * sd:.1f}" if pd.notna(sd) else "")
            else:
                text = _pct(value)
            if not seeds and pd.notna(value) and value == best:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join([level, task] + cells) + " |")
    return "\n".join(lines)


def to_html_table(t: Table1, *, seeds: bool = False) -> str:
    table = t.mean if seeds else t.best
    cols = columns_of(table)
    plain = [c for c in cols if not c[0]]
    rand = [c for c in cols if c[0]]
    out = ["<table>", "<thead><tr><th rowspan=2>level</th><th rowspan=2>task</th>"]
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
        previous = level
        for col in cols:
            value = row[col]
            text = _pct(value)
            if seeds:
                sd = t.std.loc[(level, task), col]
                text += f" ± {100 * sd:.1f}" if pd.notna(sd) else ""
            style = ""
            if pd.notna(value):
                # Cell shade from chance-ish (white) to perfect (green), for reading at a glance.
                style = f' style="background: rgba(46, 160, 67, {max(0.0, value - 0.5) * 1.2:.2f})"'
            bold = not seeds and pd.notna(value) and value == best
            out.append(f"<td{style}>{'<b>' + text + '</b>' if bold else text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(t: Table1) -> str:
    table = t.best
    cols = columns_of(table)
    plain = [c for c in cols if not c[0]]
    rand = [c for c in cols if c[0]]
    spec = "ll" + "r" * len(plain) + ("|" if plain and rand else "") + "r" * len(rand)
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
    lines.append(" & & " + " & ".join(groups) + r" \\")
    lines.append("Level & Task & " + " & ".join(_tex(p) for _, p in cols) + r" \\")
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
        lines.append(f"{name} & {_tex(task)} & " + " & ".join(cells) + r" \\")
        previous = level
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{_tex(t.caption)} Average gain of randomized over plain: "
        rf"{t.headline['mean_gain']:+.1f} points over {t.headline['cells']} task/encoding pairs.}}",
        r"\label{tab:randpos-table1}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def headline_text(t: Table1) -> str:
    h = t.headline
    if not h["cells"]:
        return "Headline: no (task, PE) pair has both a plain and a randomized run."
    per_pe = ", ".join(f"{pe} {g:+.1f}" for pe, g in h["per_pe"].items())
    return (
        f"Randomized positions change the unseen-length accuracy by {h['mean_gain']:+.1f} "
        f"percentage points on average (mean over {h['cells']} task/encoding pairs of "
        f"randomized - plain, each cell the best run; the paper's way of stating its +12.0%). "
        f"Per encoding: {per_pe}."
    )


__all__ = [
    "FALLBACK_TASKS",
    "LEVELS",
    "PE_ORDER",
    "Table1",
    "build_table1",
    "column_label",
    "headline_gain",
    "headline_text",
    "task_levels",
    "to_html_table",
    "to_latex",
    "to_markdown",
]
