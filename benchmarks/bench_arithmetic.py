"""The cost of the arithmetic study's runs (docs/arithmetic.md, "Cost"), to size the sweep.

For every arm of a sweep file (seed 0 of its grid), one thread: CPU seconds per training step
(``time.process_time`` over ``--steps`` steps after two warm-up steps, so another job sharing the
machine inflates it little), and CPU seconds of the whole grid evaluation for the arms named by
``--eval-arms`` (greedy decoding always runs to the longest possible answer, so an untrained
model costs what a trained one does). Prints, per arm, the predicted CPU seconds of one run
(steps x step + evaluation, the evaluation of the nearest measured arm where not measured) and
the sweep's total, and saves everything with the machine:

    OMP_NUM_THREADS=1 python benchmarks/bench_arithmetic.py arithmetic \
        --out benchmarks/results/arithmetic_vm.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import machine_info

from randpos.loop.trainer import Trainer
from randpos.sweep.plan import expand, load_spec
from randpos.workloads import resolve_config
from randpos.workloads.arithmetic import arm_label


def arms(sweep: str) -> list[dict]:
    """One resolved config per arm (the lowest seed of the grid)."""
    configs = list(expand(load_spec(sweep)).values())
    first: dict[str, dict] = {}
    for config in sorted(configs, key=lambda c: c["seed"]):
        first.setdefault(arm_label(config), config)
    return list(first.values())


def step_seconds(config: dict, steps: int) -> float:
    trainer = Trainer(resolve_config(config))
    for _ in range(2):
        trainer.train_step()
    started = time.process_time()
    for _ in range(steps):
        trainer.train_step()
    return (time.process_time() - started) / steps


def eval_seconds(config: dict) -> float:
    trainer = Trainer(resolve_config(config))
    started = time.process_time()
    trainer.evaluate(progress=False)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep file or preset name (src/randpos/sweep/presets/)")
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per arm")
    parser.add_argument(
        "--eval-arms", default="nope,fire,fire + abacus + looped 1x4",
        help="arms whose grid evaluation is timed (their labels, comma-separated)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(args.sweep)
    seeds = len(spec.grid.get("seed", [0]))
    rows = []
    for config in arms(args.sweep):
        label = arm_label(config)
        row = {"arm": label, "steps": config["steps"], "step_s": step_seconds(config, args.steps)}
        if label in {p.strip() for p in args.eval_arms.split(",")}:
            row["eval_s"] = eval_seconds(config)
        rows.append(row)
        print(json.dumps(row), flush=True)
    measured = [r for r in rows if "eval_s" in r]
    for row in rows:
        if "eval_s" not in row:  # the measured arm of the nearest step cost
            near = min(measured, key=lambda r: abs(r["step_s"] - row["step_s"]))
            row["eval_s_assumed"] = near["eval_s"]
        row["run_s"] = row["steps"] * row["step_s"] + row.get("eval_s", row.get("eval_s_assumed"))
    total = seeds * sum(r["run_s"] for r in rows)
    summary = {
        "sweep": args.sweep,
        "seeds": seeds,
        "runs": seeds * len(rows),
        "cpu_seconds_total": round(total),
        "hours_with_2_workers": round(total / 2 / 3600, 2),
        "arms": rows,
        "protocol": f"one thread; {args.steps} timed steps after 2 warm-up steps per arm; "
        "time.process_time (CPU seconds of this process)",
        "machine": machine_info(),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "arms"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
