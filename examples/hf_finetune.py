"""Fine-tune a tiny Hugging Face LlamaForCausalLM on a randpos task posed as language modeling,
with contiguous versus randomized ``position_ids``, and test length generalization.

Each example is one token sequence: the task's input symbols, a separator, the output symbols
(B = batch, n = input length, k = output length; the sequence has n + 1 + k tokens). The loss
covers only the output tokens (labels are -100 elsewhere). Both arms train on input lengths
1..N and are evaluated by greedy decoding with :func:`randpos.model.hf.generate` on lengths up to
``eval_max``; the metric is per-token accuracy of the generated output.

Arms:

* ``contiguous``: position_ids 0..T-1 (what HF does by default);
* ``random``: sorted distinct draws from [0, L) rooted at 0, per sequence
  (:class:`randpos.model.hf.RandomPositionCollator`).

Every arm is decoded with ``decode_positions`` arange, spread and random; the headline pairs
are contiguous/arange and random/random.

Usage (6 min 16 s measured on one thread of a busy 2-core VM)::

    .venv/bin/python examples/hf_finetune.py --out results/hf/finetune.json
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

from randpos.model.hf import RandomPositionCollator, generate
from randpos.tasks import get_task

#: The protocol of docs/hf.md.
FULL: dict[str, Any] = dict(
    task="reverse_string",
    train_max=8,  # N: train on input lengths 1..N
    eval_max=24,  # evaluate on 1..eval_max (unseen: N+1..eval_max)
    max_position=64,  # L: random positions are drawn from [0, L)
    steps=1500,
    batch_size=32,
    groups=4,  # lengths per batch: batch_size / groups examples of each
    lr=1e-3,
    warmup=100,
    weight_decay=0.0,
    clip=1.0,
    eval_batch=64,
    seeds=[0, 1, 2],
    model=dict(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        rope_theta=10000.0,
        attn_implementation="sdpa",
    ),
)
#: A smaller run for the slow test.
REDUCED: dict[str, Any] = dict(FULL, steps=800, eval_batch=32, seeds=[0])

ARMS = ("contiguous", "random")
DECODES = ("arange", "spread", "random")
HEADLINE = {"contiguous": "arange", "random": "random"}


class Vocab:
    """Shared token ids: inputs 0..I-1, the separator I, outputs I+1..I+O, padding I+O+1."""

    def __init__(self, task: Any) -> None:
        self.inputs = task.input_vocab_size
        self.sep = self.inputs
        self.out = self.inputs + 1
        self.pad = self.out + task.output_vocab_size
        self.size = self.pad + 1


def make_examples(task: Any, vocab: Vocab, n: int, count: int, gen: torch.Generator) -> list:
    """``count`` examples of input length n: dicts of input_ids and labels (1-D lists)."""
    batch = task.sample(count, n, gen)
    sep = torch.full((count, 1), vocab.sep, dtype=torch.long)
    ids = torch.cat([batch.inputs, sep, batch.targets + vocab.out], dim=1)  # (B, n+1+k)
    labels = ids.clone()
    labels[:, : batch.inputs.shape[1] + 1] = -100  # loss on the outputs only
    pairs = zip(ids, labels, strict=True)
    return [{"input_ids": i.tolist(), "labels": lab.tolist()} for i, lab in pairs]


def build_model(cfg: dict, vocab: Vocab, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # HF initializes weights from the global RNG
    config = transformers.LlamaConfig(
        vocab_size=vocab.size,
        max_position_embeddings=cfg["max_position"],
        pad_token_id=vocab.pad,
        bos_token_id=None,
        eos_token_id=None,
        use_cache=False,
        **cfg["model"],
    )
    return transformers.LlamaForCausalLM(config)


def train(cfg: dict, arm: str, seed: int, log_every: int = 0) -> tuple[torch.nn.Module, dict]:
    task = get_task(cfg["task"])
    vocab = Vocab(task)
    model = build_model(cfg, vocab, seed)
    mode = "random" if arm == "random" else "contiguous"
    collate = RandomPositionCollator(
        mode, cfg["max_position"], model=model, pad_token_id=vocab.pad, seed=seed + 1
    )
    data_gen = torch.Generator().manual_seed(seed + 2)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps, warmup = cfg["steps"], cfg["warmup"]

    def schedule(step: int) -> float:  # linear warmup, then cosine to 10%
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * frac)).item())

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    per_group = cfg["batch_size"] // cfg["groups"]

    def next_batch(step: int) -> dict:
        lengths = torch.randint(1, cfg["train_max"] + 1, (cfg["groups"],), generator=data_gen)
        feats = [
            ex
            for n in lengths.tolist()
            for ex in make_examples(task, vocab, n, per_group, data_gen)
        ]
        return collate(feats)

    losses, seconds = fit(model, opt, sched, next_batch, steps, cfg["clip"], f"{arm} seed {seed}",
                          log_every)  # fmt: skip
    return model, {
        "final_loss": sum(losses[-50:]) / min(50, len(losses)),
        "train_s": seconds,
    }


def fit(model, opt, sched, next_batch, steps: int, clip: float, label: str, log_every: int = 0):
    """Train ``model`` for ``steps`` steps, each on ``next_batch(step)`` (collated keyword
    arguments with labels): AdamW after global-norm clipping to ``clip``, the schedule stepped
    every step, the mean loss printed every ``log_every`` steps. Returns the losses and seconds."""
    model.train()
    start, losses = time.time(), []
    for step in range(steps):
        loss = model(**next_batch(step), use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            print(f"  {label} step {step + 1}: loss {recent:.4f}", flush=True)
    model.eval()
    return losses, time.time() - start


def evaluate(model: torch.nn.Module, cfg: dict, seed: int) -> dict[str, dict[int, float]]:
    """Per-token accuracy of greedy decoding, per decode mode and input length."""
    task = get_task(cfg["task"])
    vocab = Vocab(task)
    out: dict[str, dict[int, float]] = {}
    for decode in DECODES:
        data_gen = torch.Generator().manual_seed(10_000 + seed)  # the same data for every mode
        pos_gen = torch.Generator().manual_seed(20_000 + seed)
        accs = {}
        for n in range(1, cfg["eval_max"] + 1):
            batch = task.sample(cfg["eval_batch"], n, data_gen)
            sep = torch.full((batch.batch_size, 1), vocab.sep, dtype=torch.long)
            prompt = torch.cat([batch.inputs, sep], dim=1)  # (B, n+1)
            k = batch.targets.shape[1]
            ids = generate(
                model,
                prompt,
                max_new_tokens=k,
                decode_positions=decode,
                max_position=cfg["max_position"],
                generator=pos_gen,
            )
            pred = ids[:, prompt.shape[1] :] - vocab.out
            accs[n] = float((pred == batch.targets)[batch.mask].float().mean())
        out[decode] = accs
    return out


def summarize(per_length: dict[int, float], train_max: int) -> dict[str, float]:
    seen = [a for n, a in per_length.items() if n <= train_max]
    unseen = [a for n, a in per_length.items() if n > train_max]
    return {"trained": sum(seen) / len(seen), "unseen": sum(unseen) / max(1, len(unseen))}


def run(cfg: dict, log_every: int = 0) -> dict:
    """Train and evaluate both arms for every seed; the results as a JSON-ready dict."""
    start = time.time()
    runs = []
    for seed in cfg["seeds"]:
        for arm in ARMS:
            model, info = train(cfg, arm, seed, log_every)
            accs = evaluate(model, cfg, seed)
            runs.append(dict(arm=arm, seed=seed, **info, accuracy=accs))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for arm in ARMS:
        table[arm] = {}
        for decode in DECODES:
            rows = [
                summarize(r["accuracy"][decode], cfg["train_max"]) for r in runs if r["arm"] == arm
            ]
            table[arm][decode] = {
                key: sum(row[key] for row in rows) / len(rows) for key in ("trained", "unseen")
            }
    summary = {arm: table[arm][HEADLINE[arm]] for arm in ARMS}
    return dict(
        config=cfg,
        runs=runs,
        table=table,
        summary=summary,
        headline_decode=HEADLINE,
        wall_s=time.time() - start,
        torch=torch.__version__,
        transformers=transformers.__version__,
        threads=torch.get_num_threads(),
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
    )


def print_table(result: dict) -> None:
    cfg = result["config"]
    n, top = cfg["train_max"], cfg["eval_max"]
    print(f"\n{cfg['task']}: per-token accuracy, trained lengths 1..{n}, unseen {n + 1}..{top}")
    print(f"{'arm':<12}{'decode':<10}{'trained':>9}{'unseen':>9}")
    for arm, modes in result["table"].items():
        for decode, row in modes.items():
            mark = " *" if HEADLINE[arm] == decode else ""
            print(f"{arm:<12}{decode:<10}{row['trained']:>9.3f}{row['unseen']:>9.3f}{mark}")
    print(f"(* = the arm's headline decode mode) wall time {result['wall_s']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    parser.add_argument("--reduced", action="store_true", help="the smaller protocol of the test")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=250)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dict(REDUCED if args.reduced else FULL)
    if args.steps is not None:
        cfg["steps"] = args.steps
    if args.seeds is not None:
        cfg["seeds"] = args.seeds
    result = run(cfg, log_every=args.log_every)
    print_table(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
