"""Shared test setup.

The suite mirrors the package tree: ``tests/<package>/test_*.py`` tests ``randpos.<package>``
(positions, encodings, model, tasks, images, workloads, loop, sweep, results, cli), and
``tests/test_architecture.py`` checks the tree itself. The helper modules beside this file are
importable by name from every test module:

* ``numerics``: float tolerances derived from the computation (docs/testing.md);
* ``trajectories``: comparing training runs and evaluations along two code paths;
* ``tiny``: a tiny protocol that trains in seconds;
* ``toy_workload``: a workload defined outside the package (``toy_workload:MeanRegression``);
* ``report_fixture``: a small deterministic results store;
* ``inline_executor``: a sweep executor that runs each job in the test's own process.

``tests/data`` holds recorded runs, report golden files and the scripts that recorded them.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the helpers above, whatever pytest's import mode
    sys.path.insert(0, str(HERE))
