"""Incremental decoding with the KV cache against recomputing the whole prefix every step.

The reference-size causal model (5 x 64, 8 heads) generates ``--new`` tokens after a prompt of
``--prompt`` tokens (default 250 + 250: T = 500 at the end) for a batch of ``--batch``
sequences, greedily, at randomized positions (a sorted draw from [0, L), L = 2048, the prompt and
its continuation drawn as one sequence):

* ``cached``: the prompt in one forward, then one token per step against the cache
  (:class:`randpos.model.KVCache`);
* ``uncached``: every step a full forward over the prefix so far.

Both paths must generate the same tokens (checked, not timed). Reports wall and CPU seconds per
encoding, the ratio uncached / cached, and the cache's size at T (bytes: O(T) per layer).
Writes ``benchmarks/results/decode_<hostname>.json``. No assertions on time.

    .venv/bin/python benchmarks/bench_decode.py [--pes rope alibi t5 fire] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import machine_info  # benchmarks/machine.py (the script's own folder)

from randpos.model import KVCache, ModelConfig, Transformer
from randpos.positions import randomized_positions

RESULTS = Path(__file__).resolve().parent / "results"


def greedy(model: Transformer, prompt: torch.Tensor, positions: torch.Tensor, new: int, cached):
    """Generated tokens (B, new); the model's logits pick the next input token."""
    P = prompt.shape[1]
    vocab = model.config.vocab_size
    out = []
    if cached:
        cache = KVCache(model.config.num_layers)
        logits = model(prompt, positions[:, :P], cache=cache, validate=False)[:, -1]
        for t in range(new):
            token = logits.argmax(-1, keepdim=True) % vocab
            out.append(token)
            if t + 1 < new:
                step = positions[:, P + t : P + t + 1]
                logits = model(token, step, cache=cache, validate=False)[:, -1]
        return torch.cat(out, 1), cache.nbytes()
    tokens = prompt
    for t in range(new):
        logits = model(tokens, positions[:, : P + t], validate=False)[:, -1]
        token = logits.argmax(-1, keepdim=True) % vocab
        out.append(token)
        tokens = torch.cat([tokens, token], 1)
    return torch.cat(out, 1), None


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pes", nargs="+", default=["none", "rope", "alibi", "t5", "fire"])
    parser.add_argument("--prompt", type=int, default=250)
    parser.add_argument("--new", type=int, default=250)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    L, T = 2048, args.prompt + args.new
    rows = []
    print(f"B={args.batch}, prompt {args.prompt} + {args.new} generated (T={T}), L={L}")
    print(f"{'pe':>8} {'cached s':>9} {'uncached s':>11} {'ratio':>6} {'cache MiB':>10}")
    for pe in args.pes:
        config = ModelConfig(vocab_size=8, num_classes=8, pe=pe, max_position=L, causal=True)
        model = Transformer(config, generator=torch.Generator().manual_seed(0)).eval()
        g = torch.Generator().manual_seed(1)
        prompt = torch.randint(0, 8, (args.batch, args.prompt), generator=g)
        positions = randomized_positions(1, T, L, g)
        with torch.inference_mode():
            (fast, nbytes), c_wall, c_cpu = timed(greedy, model, prompt, positions, args.new, True)
            (slow, _), u_wall, u_cpu = timed(greedy, model, prompt, positions, args.new, False)
        same = bool(torch.equal(fast, slow))
        rows.append(
            {
                "pe": pe,
                "cached_wall_s": c_wall,
                "cached_cpu_s": c_cpu,
                "uncached_wall_s": u_wall,
                "uncached_cpu_s": u_cpu,
                "ratio_wall": u_wall / c_wall,
                "cache_bytes_at_T": nbytes,
                "same_tokens": same,
            }
        )
        print(
            f"{pe:>8} {c_wall:9.2f} {u_wall:11.2f} {u_wall / c_wall:6.1f} {nbytes / 2**20:10.2f}"
            + ("" if same else "  (tokens differ!)")
        )
    record = {
        "machine": machine_info(),
        "protocol": {
            "batch": args.batch,
            "prompt": args.prompt,
            "new": args.new,
            "max_position": L,
            "threads": args.threads,
            "model": "reference 5 x 64, 8 heads, causal, eval mode",
        },
        "rows": rows,
    }
    out = args.out or RESULTS / f"decode_{record['machine']['hostname']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
