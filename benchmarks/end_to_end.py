"""One run end to end, as a user runs it: train on lengths 1..N, then evaluate every length 1..M.

It times the whole ``randpos train`` command in a fresh process (interpreter start, imports,
training, evaluation, run files) and reads the training / evaluation split from the run's
summary. With ``--reference FILE`` (a JSON measurement of the reference JAX implementation on
the same protocol, with ``total_s``, ``train_s`` and ``eval_s``; docs/performance.md says how
it was taken) it also reports the speed-up. Results go to
``benchmarks/results/end_to_end_<hostname>.json`` (or ``--out``).

    .venv/bin/python benchmarks/end_to_end.py --steps 1000 --eval-max-length 100 \\
        --reference benchmarks/results/reference_jax_e2e_cpu2.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import load_average, machine_info  # benchmarks/machine.py (the script's own folder)

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="reverse_string")
    parser.add_argument("--pe", default="none")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--max-train-length", type=int, default=40)
    parser.add_argument("--eval-max-length", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--reference", type=Path, help="the reference's measurement (JSON)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="randpos-e2e-") as tmp:
        run_dir = Path(tmp) / "run"
        command = [
            sys.executable,
            "-m",
            "randpos.cli",
            "train",
            "--task",
            args.task,
            "--pe",
            args.pe,
            "--steps",
            str(args.steps),
            "--eval-max-length",
            str(args.eval_max_length),
            "--set",
            f"max_train_length={args.max_train_length}",
            "--set",
            f"threads={args.threads}",
            "--device",
            "cpu",
            "--no-store",
            "--quiet",
            "--out",
            str(run_dir),
        ]
        load_start = load_average()
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        summary = json.loads((run_dir / "summary.json").read_text())
    timings = summary["timings"]
    result = {
        "machine": info,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "protocol": {
            "task": args.task,
            "pe": args.pe,
            "steps": args.steps,
            "batch_size": summary["config"]["batch_size"],
            "train_lengths": [1, args.max_train_length],
            "eval_lengths": [1, args.eval_max_length],
            "eval_sequences_per_length": summary["config"]["eval_batch_size"],
            "threads": args.threads or "torch default",
        },
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "total_s": round(wall, 2),
        "train_s": timings["train_seconds"],
        "eval_s": timings["eval_seconds"],
        "id_accuracy": summary["id_accuracy"],
        "ood_accuracy": summary["ood_accuracy"],
    }
    if args.reference:
        ref = json.loads(args.reference.read_text())
        result["reference"] = {
            "file": args.reference.name,
            **{k: ref.get(k) for k in ("total_s", "train_s", "eval_s", "steps_run")},
        }
        result["speedup"] = {
            k: round(ref[k] / result[k], 2) for k in ("total_s", "train_s", "eval_s") if ref.get(k)
        }
    out = args.out or RESULTS / f"end_to_end_{info['hostname']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
