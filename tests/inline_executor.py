"""An executor that runs each sweep job in the test's own process (no spawned workers), for
the sweep tests; it remembers the jobs it was given."""

from __future__ import annotations

from randpos.sweep.executors import execute


class InlineExecutor:
    """Runs each job in this process when polled, and remembers the jobs it was given."""

    describe = "inline"

    def __init__(self, capacity: int = 2, gpus: int = 0) -> None:
        self.capacity, self.gpus = capacity, gpus
        self.jobs, self.pending = [], []

    def start(self, run_fn, group_fn=None):
        self.run_fn, self.group_fn = run_fn, group_fn
        return self.capacity

    def submit(self, job):
        self.jobs.append(job)
        self.pending.append(job)

    def poll(self, timeout):
        outcomes = []
        while self.pending:
            outcomes.extend(execute(self.pending.pop(0), self.run_fn, self.group_fn))
        return outcomes

    def close(self, cancel=False):
        pass
