"""The cost of one long-context run (docs/long-context.md), to size the study.

For each (task, arm) asked for, trains the ``configs/long_context.yaml`` protocol for
``--steps`` steps on one thread, then evaluates it at every length N, 2N, ... M of the preset,
and reports the CPU seconds (``time.process_time``, what one single-thread worker costs on an
idle core) and the wall seconds of the training steps (per step) and of the evaluation. The
estimate of a full run is ``steps x (per step) + evaluation``, ``steps`` the preset's. The arms
are those of ``configs/sweeps/long_context.yaml``. Writes
``benchmarks/results/long_context_<hostname>.json``. No assertions on time.

    .venv/bin/python benchmarks/bench_long_context.py [--steps 30] [--tasks passkey]
        [--arms all] [--eval-max-length 2048]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from machine import machine_info  # benchmarks/machine.py (the script's own folder)

from randpos.loop.training import Trainer
from randpos.workloads import resolve_config
from randpos.workloads.config import CONFIG_DIR, load_yaml

RESULTS = Path(__file__).resolve().parent / "results"


def sweep_arms() -> list[dict]:
    spec = yaml.safe_load((CONFIG_DIR / "sweeps" / "long_context.yaml").read_text())
    return spec["arms"]


def measure(layers: list[dict], steps: int) -> dict:
    config = resolve_config(*layers, {"steps": steps, "threads": 1})
    trainer = Trainer([config])
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    train_cpu, train_wall = time.process_time() - cpu, time.perf_counter() - wall
    sizes = trainer.workload.eval_sizes()
    per_size = {}
    for size in sizes:
        cpu, wall = time.process_time(), time.perf_counter()
        trainer.evaluate(progress=False, lengths=[size])
        per_size[size] = {
            "cpu_s": round(time.process_time() - cpu, 2),
            "wall_s": round(time.perf_counter() - wall, 2),
        }
    return {
        "train_steps": steps,
        "step_cpu_s": round(train_cpu / steps, 4),
        "step_wall_s": round(train_wall / steps, 4),
        "eval": per_size,
        "eval_cpu_s": round(sum(v["cpu_s"] for v in per_size.values()), 2),
        "eval_wall_s": round(sum(v["wall_s"] for v in per_size.values()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--tasks", nargs="+", default=["passkey"])
    parser.add_argument("--arms", nargs="+", default=["all"], help="indices into the sweep's arms")
    parser.add_argument("--eval-max-length", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    preset = load_yaml(CONFIG_DIR / "long_context.yaml")
    arms = sweep_arms()
    chosen = range(len(arms)) if args.arms == ["all"] else [int(a) for a in args.arms]
    extra = {} if args.eval_max_length is None else {"eval_max_length": args.eval_max_length}
    rows = []
    for task in args.tasks:
        for index in chosen:
            arm = arms[index]
            layers = [preset, arm, {"task": task}, extra]
            row = {"task": task, "arm": arm, **measure(layers, args.steps)}
            row["run_cpu_s"] = round(preset["steps"] * row["step_cpu_s"] + row["eval_cpu_s"], 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = args.out or RESULTS / f"long_context_{machine_info()['hostname']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(), "preset_steps": preset["steps"], "runs": rows}
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
