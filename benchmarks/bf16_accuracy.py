"""What bf16 autocast does to accuracy (and speed): the same runs trained in fp32 and in bf16.

For each task, K seeds train as one ensemble per precision (randpos.loop.training.train_runs:
same data, positions and dropout streams in both precisions, so the only difference is the
arithmetic); each run is scored on every length 1..M. Reported per task and precision: mean
in-distribution (1..N) and unseen (N+1..M) accuracy over seeds, the per-seed bf16 - fp32
differences, and training seconds. bf16 needs CUDA; on a CPU only ``--precisions fp32`` runs
(a smoke test of the script).

    .venv/bin/python benchmarks/bf16_accuracy.py --device cuda --steps 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from machine import machine_info  # benchmarks/machine.py (the script's own folder)

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["parity_check", "reverse_string"])
    parser.add_argument("--pe", default="rope")
    parser.add_argument("--plain", action="store_true", help="contiguous positions")
    parser.add_argument("--max-position", "-L", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=4, help="K: runs per ensemble")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-train-length", type=int, default=20)
    parser.add_argument("--eval-max-length", "-M", type=int, default=60)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from randpos.core.seeding import resolve_device
    from randpos.loop.training import train_runs
    from randpos.workloads.config import TrainConfig

    if "bf16" in args.precisions and resolve_device(args.device).type != "cuda":
        parser.error("bf16 autocast needs a CUDA device; on a CPU run --precisions fp32")

    info = machine_info()
    rows: dict[str, dict] = {}
    for task in args.tasks:
        for precision in args.precisions:
            configs = [
                TrainConfig.from_dict(
                    task=task,
                    pe=args.pe,
                    randomized=not args.plain,
                    max_position=args.max_position,
                    steps=args.steps,
                    batch_size=args.batch_size,
                    max_train_length=args.max_train_length,
                    eval_max_length=args.eval_max_length,
                    precision=precision,
                    device=args.device,
                    seed=seed,
                )
                for seed in range(args.seeds)
            ]
            started = time.perf_counter()
            outcomes = train_runs(configs, progress=sys.stderr.isatty())
            wall = time.perf_counter() - started
            runs = [o for o in outcomes if isinstance(o, dict)]
            failed = [f"{type(o).__name__}: {o}" for o in outcomes if not isinstance(o, dict)]
            rows[f"{task}/{precision}"] = {
                "task": task,
                "precision": precision,
                "id_accuracy": [r["id_accuracy"] for r in runs],
                "ood_accuracy": [r["ood_accuracy"] for r in runs],
                "mean_id_accuracy": statistics.fmean(r["id_accuracy"] for r in runs)
                if runs
                else None,
                "mean_ood_accuracy": statistics.fmean(r["ood_accuracy"] for r in runs)
                if runs
                else None,
                "train_seconds": runs[0]["timings"]["train_seconds"] if runs else None,
                "wall_seconds": round(wall, 2),
                "failed": failed,
            }
            row = rows[f"{task}/{precision}"]
            print(
                f"{task:24} {precision:5} id {row['mean_id_accuracy']} ood "
                f"{row['mean_ood_accuracy']} train {row['train_seconds']} s",
                flush=True,
            )
    differences = {}
    for task in args.tasks:
        fp32, bf16 = rows.get(f"{task}/fp32"), rows.get(f"{task}/bf16")
        if fp32 and bf16 and len(fp32["ood_accuracy"]) == len(bf16["ood_accuracy"]):
            differences[task] = {
                "ood_bf16_minus_fp32": [
                    b - a for a, b in zip(fp32["ood_accuracy"], bf16["ood_accuracy"], strict=True)
                ],
                "id_bf16_minus_fp32": [
                    b - a for a, b in zip(fp32["id_accuracy"], bf16["id_accuracy"], strict=True)
                ],
                "train_speedup": fp32["train_seconds"] / bf16["train_seconds"]
                if bf16["train_seconds"]
                else None,
            }
    payload = {
        "machine": info,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "protocol": vars(args) | {"out": None},
        "rows": rows,
        "differences": differences,
    }
    out = args.out or RESULTS / f"bf16_accuracy_{info['hostname']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(json.dumps(differences, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
