"""The long-context comparison on a Hugging Face model: a tiny LlamaForCausalLM built from a
config (no download), trained from scratch on ``passkey`` with the position modes of
:class:`randpos.model.hf.RandomPositionCollator`, evaluated as the native decoder is
(docs/long-context.md, "The same comparison on a Hugging Face Llama").

Each example is one token sequence: the passkey context of N tokens (its last token is the
question), a separator, the key's digits; the loss covers the digits only. Every arm trains at
N = ``train_length`` and is evaluated at N, 2N, ... ``eval_max`` on the native study's
evaluation sequences (:func:`randpos.workloads.evaluation.evaluation_batch`, eval seed 1, so
both models read the same haystacks), by greedy decoding with the KV cache
(:func:`randpos.model.hf.generate`): ``arange`` positions for the contiguous arm, a fresh sorted
draw rooted at 0 from [0, L) for the others (``decode_positions="random"``, the native
decoder's evaluation). Scores: exact match of the key per length and per depth bin (the
heat map), and the effective length of
:func:`randpos.results.report.long_context.effective_length` (threshold 0.9 x the accuracy at N).

Arms: ``contiguous`` (HF's default positions), ``random`` (sorted distinct draws from [0, L)
rooted at 0), ``pose`` (two chunks with a random skip) and ``float`` (Random Float Sampling).

Usage (the cost of the full protocol is in docs/long-context.md)::

    .venv/bin/python examples/hf_long_context.py --out results/hf/long_context.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from hf_finetune import FULL as FINETUNE
from hf_finetune import Vocab, build_model, fit  # examples/hf_finetune.py (the script's own folder)

from randpos.model.hf import RandomPositionCollator, generate
from randpos.results.report.long_context import effective_length
from randpos.tasks import get_task
from randpos.workloads.evaluation import evaluation_batch

#: The protocol of docs/long-context.md (the native study's lengths and evaluation sequences).
FULL: dict[str, Any] = dict(
    task="passkey",
    train_length=128,  # N
    eval_max=2048,  # 16 N
    max_position=4096,  # L
    steps=1000,
    batch_size=32,
    lr=1e-3,
    warmup=50,
    clip=1.0,
    eval_batch=50,
    eval_seed=1,
    seeds=[0],
    arms=["contiguous", "random", "pose", "float"],
    model=dict(FINETUNE["model"]),  # hf_finetune's tiny Llama: the native decoder's size
)
#: A few-minute version (the smoke check).
SMOKE: dict[str, Any] = dict(
    FULL, train_length=32, eval_max=128, max_position=256, steps=60, eval_batch=10,
    arms=["contiguous", "random"],
)  # fmt: skip


def sequences(batch: Any, vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels) (B, n' + 1 + k): context, separator, answer; labels on the answer only."""
    sep = torch.full((batch.inputs.shape[0], 1), vocab.sep, dtype=torch.long)
    ids = torch.cat([batch.inputs, sep, batch.targets + vocab.out], dim=1)
    labels = ids.clone()
    labels[:, : batch.inputs.shape[1] + 1] = -100
    return ids, labels


def train(cfg: dict, arm: str, seed: int, log_every: int = 0) -> tuple[torch.nn.Module, dict]:
    task, vocab = get_task(cfg["task"]), Vocab(get_task(cfg["task"]))
    model = build_model(cfg, vocab, seed)
    collate = RandomPositionCollator(
        arm, cfg["max_position"], model=model, pad_token_id=vocab.pad, seed=seed + 1
    )
    data_gen = torch.Generator().manual_seed(seed + 2)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg["warmup"]))

    def next_batch(step: int) -> dict:
        ids, labels = sequences(
            task.sample(cfg["batch_size"], cfg["train_length"], data_gen), vocab
        )
        return collate(
            [
                {"input_ids": i.tolist(), "labels": j.tolist()}
                for i, j in zip(ids, labels, strict=True)
            ]
        )

    losses, seconds = fit(model, opt, sched, next_batch, cfg["steps"], cfg["clip"],
                          f"{arm} seed {seed}", log_every)  # fmt: skip
    tail = losses[-50:]
    return model, {"final_loss": sum(tail) / len(tail), "train_s": round(seconds, 1)}


def evaluate(model: torch.nn.Module, cfg: dict, arm: str, seed: int) -> dict[str, Any]:
    """Exact match per length and per depth bin, on the native study's sequences."""
    task, vocab = get_task(cfg["task"]), Vocab(get_task(cfg["task"]))
    decode = "arange" if arm == "contiguous" else "random"
    pos_gen = torch.Generator().manual_seed(20_000 + seed)
    accuracy, depth = {}, {}
    length = cfg["train_length"]
    with torch.no_grad():
        while length <= cfg["eval_max"]:
            batch = evaluation_batch(task, length, cfg["eval_seed"], cfg["eval_batch"])
            prompt = sequences(batch, vocab)[0][:, : batch.inputs.shape[1] + 1]
            k = batch.targets.shape[1]
            rows = []
            for lo in range(0, prompt.shape[0], 10):  # 10 sequences at a time: bounded memory
                ids = generate(
                    model,
                    prompt[lo : lo + 10],
                    max_new_tokens=k,
                    decode_positions=decode,
                    max_position=cfg["max_position"],
                    generator=pos_gen,
                )
                rows.append(((ids[:, -k:] - vocab.out) == batch.targets[lo : lo + 10]).all(-1))
            exact = torch.cat(rows).double()
            accuracy[length] = float(exact.mean())
            bins = task.depth_bin(exact.shape[0])
            depth[length] = [float(exact[bins == b].mean()) for b in range(task.depth_bins)]
            length *= 2
    effective = effective_length(_series(accuracy), cfg["train_length"])
    return {"decode": decode, "accuracy": accuracy, "depth": depth, "effective_length": effective}


def _series(values: dict[int, float]):
    import pandas as pd  # heavy: the report's helper takes a Series

    return pd.Series(values)


def run(cfg: dict, log_every: int = 0) -> dict:
    start = time.time()
    runs = []
    for seed in cfg["seeds"]:
        for arm in cfg["arms"]:
            model, info = train(cfg, arm, seed, log_every)
            scores = evaluate(model, cfg, arm, seed)
            runs.append(dict(arm=arm, seed=seed, **info, **scores))
            print(
                f"{arm} seed {seed}: exact match per length {scores['accuracy']}, effective "
                f"length {scores['effective_length']} ({info['train_s']} s training)",
                flush=True,
            )
    return dict(
        config=cfg,
        runs=runs,
        wall_s=round(time.time() - start, 1),
        torch=torch.__version__,
        transformers=transformers.__version__,
        threads=torch.get_num_threads(),
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    parser.add_argument("--smoke", action="store_true", help="the few-minute protocol")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--arms", nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dict(SMOKE if args.smoke else FULL)
    for key in ("steps", "seeds", "arms"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    result = run(cfg, log_every=args.log_every)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
