"""Progress reporting for long work: a live rich bar on a terminal, plain log lines elsewhere.

Log files, CI and sweep workers are not terminals, where a live bar would print nothing until
the end; there a line every ``every`` updates carries the same fields.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressReporter:
    """``with ProgressReporter("train", total, done) as p: p.update(done, text)``."""

    def __init__(
        self,
        label: str,
        total: int,
        completed: int = 0,
        *,
        enabled: bool = True,
        every: int = 100,
        console: Console | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.completed = completed
        self.enabled = enabled
        self.every = max(1, every)
        self.console = console or Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        self._start = time.perf_counter()
        self._start_completed = completed
        self._last_logged = completed

    def __enter__(self) -> ProgressReporter:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[text]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.label, total=self.total, completed=self.completed, text=""
            )
        return self

    def rate(self) -> float:
        """Steps per second since the reporter started (0 before the first step)."""
        elapsed = time.perf_counter() - self._start
        return (self.completed - self._start_completed) / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float:
        """Seconds left at the current rate (infinite before the first step)."""
        rate = self.rate()
        return (self.total - self.completed) / rate if rate > 0 else float("inf")

    def update(self, completed: int, text: str = "") -> None:
        """Report step ``completed`` with a status ``text``: the live bar on a terminal, a log line
        every ``every`` steps otherwise."""
        self.completed = completed
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, text=text)
        elif completed - self._last_logged >= self.every or completed == self.total:
            self._last_logged = completed
            eta = self.eta_seconds()
            eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
            print(
                f"[{self.label}] {completed}/{self.total} {text} | {self.rate():.2f}/s "
                f"ETA {eta_text}",
                file=sys.stderr,
                flush=True,
            )

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
