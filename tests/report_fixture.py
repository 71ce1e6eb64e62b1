"""A small deterministic results store for the report tests: encoder runs in the Table 1
layout (two tasks, three cells each, two learning rates, three seeds), decoder runs of one task
(so the report adds its architectures table) and runs of a workload without a task.

Every number is drawn from ``random.Random(7)`` and rounded to 4 digits, so the store, and every
report of it, is the same on every machine. tests/data/report_golden/ holds the CSV and JSON
files that the report code of commit 502c6a9 (before the seed statistics) wrote for this store;
``python tests/data/record_report_golden.py`` rewrites them with the code at hand.
"""

from __future__ import annotations

import random

from randpos.loop.identity import config_hash
from randpos.results.store import ResultsStore

N, M = 10, 20
TASKS = ("parity_check", "reverse_string")
CELLS = (("none", False), ("rope", False), ("rope", True))
LRS = (1e-4, 3e-4)
SEEDS = (0, 1, 2)
EVAL = {"eval_seed": 1, "eval_batch_size": 32, "eval_sub_batch_size": 16}


def configs():
    """Every run's config, in a fixed order."""
    base = {"steps": 100, "max_train_length": N, "eval_max_length": M, "max_position": 64, **EVAL}
    for task in TASKS:
        for pe, randomized in CELLS:
            for lr in LRS:
                for seed in SEEDS:
                    yield {
                        **base,
                        "workload": "encoder",
                        "task": task,
                        "pe": pe,
                        "randomized": randomized,
                        "learning_rate": lr,
                        "seed": seed,
                    }
    for randomized in (False, True):
        for seed in SEEDS:
            yield {
                **base,
                "workload": "decoder",
                "task": "reverse_string",
                "pe": "rope",
                "randomized": randomized,
                "learning_rate": 3e-4,
                "seed": seed,
            }
    for seed in (0, 1):  # a workload without a task of its own (the config default says one)
        yield {
            **base,
            "workload": "vit",
            "task": "reverse_string",
            "pe": "sincos2d",
            "randomized": False,
            "learning_rate": 5e-4,
            "seed": seed,
        }


def per_length(rng: random.Random) -> dict[int, float]:
    """Accuracy per length: high on 1..N, a decaying level on N+1..M."""
    level = rng.uniform(0.4, 1.0)
    slope = rng.uniform(0.0, 0.02)
    seen = {n: round(rng.uniform(0.9, 1.0), 4) for n in range(1, N + 1)}
    unseen = {n: round(max(0.0, level - slope * (n - N - 1)), 4) for n in range(N + 1, M + 1)}
    return seen | unseen


def build_small_store(path, sweep: str = "small") -> tuple[ResultsStore, dict[str, dict]]:
    """The store at ``path``; returns it and {run_id: {"config", "per_length", "ood", "id"}}."""
    rng = random.Random(7)
    store = ResultsStore(path)
    runs, plan = {}, {}
    for config in configs():
        rid = config_hash(config)
        values = per_length(rng)
        ood = sum(values[n] for n in range(N + 1, M + 1)) / (M - N)
        iid = sum(values[n] for n in range(1, N + 1)) / N
        store.start_run(rid, config, sweep=sweep)
        store.finish_run(
            rid,
            {"id_accuracy": iid, "ood_accuracy": ood, "config": config},
            values,
            {"train_seconds": 1.0},
        )
        plan[rid] = config
        runs[rid] = {"config": config, "per_length": values, "ood": ood, "id": iid}
    store.register_sweep(sweep, {"grid": sweep}, plan)
    return store, runs


#: the report files whose columns (CSV) or keys (JSON) must never change
GOLDEN_FILES = (
    "table1.csv",
    "table1_seeds.csv",
    "headline.json",
    "architectures.csv",
    "per_length.csv",
)
