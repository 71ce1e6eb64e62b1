"""Record the run ids of every preset and sweep file (tests/data/run_ids.json).

The committed file was written by this script run against randpos at 8eab223, before configs
held a position spec and encoding options (``PYTHONPATH=<that checkout>/src python
tests/data/record_run_ids.py`` from that checkout's root, whose presets were then in
``configs/*.yaml`` and ``configs/sweeps/*.yaml``); tests/loop/test_identity.py checks that
today's code gives the same ids for the presets as they ship today, inside the package
(``src/randpos/workloads/presets``, ``src/randpos/sweep/presets``). The file records names,
never paths, so the move changed nothing in it. Sweeps are recorded as their run count and the
sha256 of their sorted ids, presets as the id of the preset alone and with two sets of overrides.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

OVERRIDES = ({}, {"randomized": True}, {"pe": "rope", "randomized": True, "max_position": 4096})


def record(presets: Path, sweeps: Path) -> dict:
    """The ids of every preset in ``presets`` and every sweep file in ``sweeps``."""
    from randpos.sweep.plan import expand, load_spec

    try:  # today's code
        from randpos.loop.identity import run_id
        from randpos.workloads import resolve_config as resolve
    except ImportError:  # the code the committed file was recorded with
        from randpos.config import TrainConfig
        from randpos.training import run_id

        resolve = TrainConfig.from_dict
    out: dict = {"sweeps": {}, "presets": {}}
    for path in sorted(sweeps.glob("*.yaml")):
        ids = sorted(expand(load_spec(path)))
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        out["sweeps"][path.stem] = {"runs": len(ids), "sha256": digest}
    for path in sorted(presets.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        rows = []
        for extra in OVERRIDES:
            try:
                rows.append({"extra": extra, "run_id": run_id(resolve({**data, **extra}))})
            except ValueError as exc:  # an override the preset refuses
                rows.append({"extra": extra, "run_id": f"error {type(exc).__name__}"})
        out["presets"][path.stem] = rows
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("run_ids.json")
    if Path("configs").is_dir():  # a checkout from before the presets moved into the package
        folders = Path("configs"), Path("configs") / "sweeps"
    else:
        folders = Path("src/randpos/workloads/presets"), Path("src/randpos/sweep/presets")
    target.write_text(json.dumps(record(*folders), indent=1) + "\n")
