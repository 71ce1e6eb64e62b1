"""Record the numbers of short runs, one plain and one randomized per encoding (plus the
distances reading for relative and ALiBi), so that a change to the training loop can be checked
against them (tests/workloads/test_workload_interface.py). Written with the code of commit 34fe52e
(before the workload interface), by ``python tests/data/record_reference_runs.py``; ``--check``
re-runs them with the code at hand and prints the differences. One intra-op thread, in the
recording and in the test: CPU reductions split across threads round differently.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tiny import TINY_BASE  # noqa: E402

from randpos.loop.training import train  # noqa: E402
from randpos.workloads import resolve_config

OUT = Path(__file__).with_name("reference_runs.json")
PES = ("none", "sincos", "learned", "relative", "relative_reference_bug", "rope", "alibi")


def cases() -> list[dict]:
    base = dict(TINY_BASE, steps=12, log_every=4, max_position=64)
    out = []
    for pe in PES:
        out.append(dict(base, pe=pe))
        out.append(dict(base, pe=pe, randomized=True, seed=1))
        if pe in ("relative", "alibi"):
            out.append(dict(base, pe=pe, randomized=True, randomize="distances", seed=2))
    out.append(dict(base, pe="rope", randomized=True, task="even_pairs", eval_positions="spread"))
    return out


def record(config: dict) -> dict:
    summary = train(resolve_config(config), progress=False)
    return {
        "config": config,
        "run_id": summary["run_id"],
        "id_accuracy": summary["id_accuracy"],
        "ood_accuracy": summary["ood_accuracy"],
        "final_loss": summary["final_loss"],
        "final_train_accuracy": summary["final_train_accuracy"],
        "per_length": summary["per_length"],
        "num_parameters": summary["num_parameters"],
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    records = [record(c) for c in cases()]
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        old = json.loads(OUT.read_text())
        diffs = [(a["config"], a, b) for a, b in zip(old, records, strict=True) if a != b]
        for config, a, b in diffs:
            print("DIFFERS", config["pe"], a, b)
        print(f"{len(records) - len(diffs)} equal, {len(diffs)} differ")
    else:
        OUT.write_text(json.dumps(records, indent=1) + "\n")
        print(f"wrote {len(records)} records to {OUT}")
