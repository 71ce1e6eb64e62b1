"""Sample quality of a trained ARPG run against the number of decoding steps.

Loads a finished ``arpg`` run and, for each canvas side and each step count, decodes the
evaluation's class-balanced samples with exactly the evaluation's fixed orders, positions and
sampling streams (``ARPGWorkload.sample_and_score``), so the run's own ``decode_steps`` reproduces
its stored ``size_metrics``. Prints one line per (side, steps) and optionally writes JSON.

    .venv/bin/python examples/arpg_decode_steps.py RUN_DIR [RUN_DIR ...] \\
        --sides 16 24 --steps 64 16 4 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from randpos.loop.training import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sides", type=int, nargs="+", default=[16, 24])
    parser.add_argument("--steps", type=int, nargs="+", default=[64, 16, 4])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        model, config = load_model(run, device="cpu")
        if config.workload != "arpg":
            raise SystemExit(f"{run}: workload {config.workload!r}, not arpg")
        workload = config.workload_class()(config)
        model.eval()
        for side in args.sides:
            for steps in args.steps:
                with torch.inference_mode():
                    _, metrics = workload.sample_and_score(
                        model, side, mode=workload.eval_mode(), device="cpu", decode_steps=steps
                    )
                row = {"run": str(run), "seed": config.seed, "side": side, "steps": steps}
                rows.append({**row, **metrics})
                print(
                    f"{run.name} seed {config.seed} S={side} steps={steps}: "
                    f"sample_accuracy {metrics['sample_accuracy']:.3f} fd {metrics['fd']:.1f} "
                    f"components_gap {metrics['components_gap']:.3f}",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
