"""The embedded results store: one SQLite file shared by single runs, sweeps and reports.

Every run is identified by :func:`config_hash` of its resolved config, so the same experiment
run twice (from ``randpos train`` or from any sweep) lands on the same row. Tables:

* ``runs``        one row per run: config, status (running | done | failed), summary, timings,
                  error, owner (host, pid), heartbeat, code version.
* ``per_length``  one row per (run, evaluated length); present exactly when the run is done.
* ``sweeps``      a sweep's name and spec; ``sweep_runs`` the runs its grid expands to, which is
                  what lets ``sweep-status`` count runs that have not started yet.

Safety rules: WAL journal and a busy timeout so several processes may write at once; every
write is one short ``BEGIN IMMEDIATE`` transaction (a result and its per-length rows commit
together or not at all, so a SIGKILL never leaves half a result); each process (and each
thread) opens its own connection.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from randpos import __version__
from randpos.loop.identity import NON_RESULT_FIELDS, canonical, config_hash
from randpos.workloads.compat import legacy_flat

if TYPE_CHECKING:  # pandas is imported where frames are built: the CLI starts faster
    import pandas as pd

STORE_VERSION = 1

STATUSES = ("running", "done", "failed")

# The bookkeeping and result columns of a run that `ResultsStore.runs` adds beside its config
# fields (and its timings, as time_* columns).
RUN_COLUMNS = (
    "id_accuracy",
    "ood_accuracy",
    "status",
    "error",
    "attempts",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "host",
    "pid",
    "code_version",
    "out_dir",
)

# A run still marked 'running' whose owner has not written a heartbeat for this long is
# considered dead (the only test possible for an owner on another host).
STALE_AFTER_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT PRIMARY KEY,
    status       TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    config       TEXT NOT NULL,
    summary      TEXT,
    id_accuracy  REAL,
    ood_accuracy REAL,
    timings      TEXT,
    error        TEXT,
    out_dir      TEXT,
    host         TEXT,
    pid          INTEGER,
    code_version TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    started_at   REAL,
    finished_at  REAL,
    heartbeat_at REAL
);
CREATE TABLE IF NOT EXISTS per_length (
    run_id   TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    length   INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    PRIMARY KEY (run_id, length)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sweeps (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep  TEXT NOT NULL,
    run_id TEXT NOT NULL,
    config TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,  -- grid order
    PRIMARY KEY (sweep, run_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
"""


class StoreError(RuntimeError):
    """The store file cannot be used (incompatible version, not a randpos store)."""


def default_store_path() -> Path:
    """``$RANDPOS_STORE`` if set, else ``./runs/randpos.sqlite``."""
    env = os.environ.get("RANDPOS_STORE")
    return Path(env) if env else Path("runs") / "randpos.sqlite"


@lru_cache(maxsize=1)
def code_version() -> str:
    """``randpos.__version__``, plus ``git describe`` when randpos runs from a git checkout of
    its source (``<checkout>/src/randpos``); an installed wheel reports its version alone, never
    the state of whatever repository it happens to be installed in."""

    src = Path(__file__).resolve().parent
    checkout = src.parents[2]  # <checkout>/src/randpos/results
    if src.parents[1].name != "src" or not (checkout / "pyproject.toml").is_file():
        return __version__
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists on this host."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------- store
class ResultsStore:
    """Results of every run, keyed by run id; safe for concurrent writers.

    Connections are per process and per thread (opened lazily), so a store object may be passed
    to worker processes or threads; it pickles as its path. ``stale_after``: seconds without a
    heartbeat after which a 'running' run of another host counts as abandoned.
    """

    stale_after: float = STALE_AFTER_S

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 60.0):
        self.path = Path(path) if path is not None else default_store_path()
        self.timeout = timeout
        self._local = threading.local()
        self._open_checked()

    # ----------------------------------------------------------------- connection handling
    def __getstate__(self) -> dict:
        return {"path": self.path, "timeout": self.timeout}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self.timeout = state["timeout"]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    def _open_checked(self) -> None:
        """Create the schema, or check an existing file's version before writing anything."""
        if self.path.exists():
            version = self._read_version()
            if version is not None:
                if version != STORE_VERSION:
                    raise StoreError(
                        f"results store {self.path} has version {version}, this randpos "
                        f"({code_version()}) reads version {STORE_VERSION}; use a new store path "
                        "(--store / $RANDPOS_STORE) or the randpos version that wrote it"
                    )
                self._conn()
                return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Several processes may create the same new store at once: every statement is
        # idempotent and the whole schema commits in one transaction.
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('store_version', ?)",
                (str(STORE_VERSION),),
            )
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('created_by', ?)",
                (code_version(),),
            )

    def _read_version(self) -> int | None:
        """The file's store version; None for an empty file (a store being created)."""
        # Read-only URI: checking an incompatible (or foreign) file must not modify it.
        uri = f"file:{self.path.resolve()}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.timeout)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results store {self.path}: {exc}") from None
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not tables:
                return None
            if "meta" not in tables:
                raise StoreError(
                    f"{self.path} is an SQLite file but not a randpos results store "
                    f"(tables: {', '.join(sorted(tables))})"
                )
            row = conn.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()
            if row is None:
                raise StoreError(f"results store {self.path} records no store_version")
            return int(row[0])
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a randpos results store: {exc}") from None
        finally:
            conn.close()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the write
        # lock up front and never fails on a read->write upgrade under contention.
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: atomic, durable on crash
        conn.execute("PRAGMA foreign_keys = ON")
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def close(self) -> None:
        """Close this thread's connection to the database (opened again on next use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    @contextmanager
    def _write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        conn = conn or self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ------------------------------------------------------------------------ run lifecycle
    def start_run(
        self,
        run_id: str,
        config: dict,
        *,
        sweep: str | None = None,
        out_dir: str | os.PathLike | None = None,
    ) -> None:
        """Mark a run as running by this process (insert or restart); drop any old result."""
        now = time.time()
        config_json = json.dumps(canonical(config), sort_keys=True)
        with self._write() as conn:
            self._start(conn, run_id, config_json, out_dir, now)
            if sweep is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO sweep_runs(sweep, run_id, config) VALUES (?, ?, ?)",
                    (sweep, run_id, config_json),
                )

    def _start(self, conn, run_id, config_json, out_dir, now) -> None:
        # A run being (re)started has no result until it finishes: per-length rows exist
        # exactly for done runs.
        conn.execute("DELETE FROM per_length WHERE run_id = ?", (run_id,))
        conn.execute(
            """
            INSERT INTO runs(run_id, status, config, out_dir, host, pid, code_version,
                             attempts, started_at, heartbeat_at)
            VALUES (?, 'running', ?, ?, ?, ?, ?, 1, ?, ?)
            ON CONFLICT(run_id) DO UPDATE SET
                status = 'running', config = excluded.config,
                out_dir = COALESCE(excluded.out_dir, runs.out_dir),
                host = excluded.host, pid = excluded.pid, code_version = excluded.code_version,
                attempts = CASE WHEN runs.status = 'running' AND runs.pid = excluded.pid
                                AND runs.host = excluded.host
                           THEN runs.attempts ELSE runs.attempts + 1 END,
                started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
                finished_at = NULL, summary = NULL, id_accuracy = NULL,
                ood_accuracy = NULL, timings = NULL, error = NULL
            """,
            (
                run_id,
                config_json,
                None if out_dir is None else str(out_dir),
                socket.gethostname(),
                os.getpid(),
                code_version(),
                now,
                now,
            ),
        )

    def claim_run(
        self,
        run_id: str,
        config: dict,
        *,
        sweep: str | None = None,
        out_dir: str | os.PathLike | None = None,
        retry_failed: bool = False,
        stale_after: float | None = None,
    ) -> bool:
        """Atomically take a run for this process: True if it was free, failed (with
        ``retry_failed``) or abandoned by a dead owner; False if done or owned by a live one."""
        now = time.time()
        config_json = json.dumps(canonical(config), sort_keys=True)
        with self._write() as conn:
            row = conn.execute(
                "SELECT status, host, pid, heartbeat_at FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is not None:
                status, host, pid, heartbeat = row
                if status == "done":
                    return False
                if status == "failed" and not retry_failed:
                    return False
                limit = self.stale_after if stale_after is None else stale_after
                if status == "running" and not _is_stale(host, pid, heartbeat, now, limit):
                    return False
            self._start(conn, run_id, config_json, out_dir, now)
            if sweep is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO sweep_runs(sweep, run_id, config) VALUES (?, ?, ?)",
                    (sweep, run_id, config_json),
                )
        return True

    def heartbeat(self, run_ids: str | Iterable[str]) -> None:
        """Tell other processes that these runs' owner is alive."""
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        if not ids:
            return
        now = time.time()
        with self._write() as conn:
            conn.executemany(
                "UPDATE runs SET heartbeat_at = ? WHERE run_id = ? AND status = 'running'",
                [(now, r) for r in ids],
            )

    def release_run(self, run_id: str) -> None:
        """Give up this process's claim on a running run (interrupted): the next sweep takes it
        over at once instead of waiting for the heartbeat to go stale."""
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET pid = NULL, heartbeat_at = NULL "
                "WHERE run_id = ? AND status = 'running'",
                (run_id,),
            )

    def finish_run(
        self,
        run_id: str,
        summary: dict,
        per_length: dict[int, float],
        timings: dict | None = None,
    ) -> None:
        """Record a run's result: summary, every per-length accuracy and status='done' commit in
        one transaction."""
        now = time.time()
        timings = dict(timings or summary.get("timings") or {})
        rows = [(run_id, int(length), float(acc)) for length, acc in per_length.items()]
        config = summary.get("config")
        with self._write() as conn:
            exists = conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if exists is None:
                # A result recorded without start_run (e.g. imported): create the row first.
                self._start(conn, run_id, json.dumps(canonical(config or {})), None, now)
            conn.execute("DELETE FROM per_length WHERE run_id = ?", (run_id,))
            conn.executemany(
                "INSERT INTO per_length(run_id, length, accuracy) VALUES (?, ?, ?)", rows
            )
            conn.execute(
                """
                UPDATE runs SET status = 'done', summary = ?, id_accuracy = ?, ood_accuracy = ?,
                       timings = ?, error = NULL, finished_at = ?, heartbeat_at = ?
                WHERE run_id = ?
                """,
                (
                    json.dumps(_jsonable(summary), sort_keys=True),
                    _float_or_none(summary.get("id_accuracy")),
                    _float_or_none(summary.get("ood_accuracy")),
                    json.dumps(_jsonable(timings), sort_keys=True),
                    now,
                    now,
                    run_id,
                ),
            )

    def fail_run(self, run_id: str, error: str) -> None:
        """Record a failure (kept until a sweep is asked to retry failed runs)."""
        now = time.time()
        with self._write() as conn:
            conn.execute("DELETE FROM per_length WHERE run_id = ?", (run_id,))
            updated = conn.execute(
                """
                UPDATE runs SET status = 'failed', error = ?, finished_at = ?, heartbeat_at = ?,
                       summary = NULL, id_accuracy = NULL, ood_accuracy = NULL
                WHERE run_id = ?
                """,
                (str(error), now, now, run_id),
            ).rowcount
            if not updated:
                self._start(conn, run_id, "{}", None, now)
                conn.execute(
                    "UPDATE runs SET status = 'failed', error = ?, finished_at = ? "
                    "WHERE run_id = ?",
                    (str(error), now, run_id),
                )

    # ---------------------------------------------------------------------------- sweeps
    def register_sweep(self, name: str, spec: dict, runs: dict[str, dict]) -> None:
        """Record a sweep's spec and the runs its grid expands to (replacing older versions)."""
        now = time.time()
        rows = [
            (name, rid, json.dumps(canonical(cfg), sort_keys=True), i)
            for i, (rid, cfg) in enumerate(runs.items())
        ]
        with self._write() as conn:
            conn.execute(
                """
                INSERT INTO sweeps(name, spec, created_at, updated_at) VALUES (?, ?, ?, ?)
                ON CONFLICT(name) DO UPDATE SET spec = excluded.spec,
                                                updated_at = excluded.updated_at
                """,
                (name, json.dumps(_jsonable(spec), sort_keys=True), now, now),
            )
            conn.execute("DELETE FROM sweep_runs WHERE sweep = ?", (name,))
            conn.executemany(
                "INSERT INTO sweep_runs(sweep, run_id, config, position) VALUES (?, ?, ?, ?)", rows
            )

    def sweeps(self) -> list[str]:
        """The names of the sweeps the store knows, sorted."""
        # A run started with sweep=NAME but never registered (no spec) still names a sweep.
        query = "SELECT name FROM sweeps UNION SELECT DISTINCT sweep FROM sweep_runs ORDER BY 1"
        return [r[0] for r in self._conn().execute(query)]

    def sweep_spec(self, name: str) -> dict | None:
        """The spec a sweep was registered with (as a dict), or None for an unknown sweep."""
        row = self._conn().execute("SELECT spec FROM sweeps WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def sweep_plan(self, name: str) -> dict[str, dict]:
        """The run ids (and configs) a sweep's grid expands to."""
        rows = self._conn().execute(
            "SELECT run_id, config FROM sweep_runs WHERE sweep = ? ORDER BY position", (name,)
        )
        return {rid: json.loads(cfg) for rid, cfg in rows}

    # ---------------------------------------------------------------------------- reading
    def status(self, run_id: str) -> str | None:
        """A run's status (``running``, ``done``, ``failed``), or None when the store has no such
        run."""
        row = self._conn().execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else row[0]

    def is_stale(self, run_id: str, stale_after: float | None = None) -> bool:
        """Whether a 'running' run's owner is gone (dead pid here, or no recent heartbeat)."""
        row = (
            self._conn()
            .execute("SELECT status, host, pid, heartbeat_at FROM runs WHERE run_id = ?", (run_id,))
            .fetchone()
        )
        if row is None or row[0] != "running":
            return False
        limit = self.stale_after if stale_after is None else stale_after
        return _is_stale(row[1], row[2], row[3], time.time(), limit)

    def get_run(self, run_id: str) -> dict | None:
        """A run's row as a dict (its config and summary parsed from JSON), or None when the store
        has no such run."""
        cur = self._conn().execute("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        row = cur.fetchone()
        if row is None:
            return None
        record = dict(zip([c[0] for c in cur.description], row, strict=True))
        for key in ("config", "summary", "timings"):
            record[key] = json.loads(record[key]) if record[key] else None
        record["per_length"] = {
            length: acc
            for length, acc in self._conn().execute(
                "SELECT length, accuracy FROM per_length WHERE run_id = ? ORDER BY length",
                (run_id,),
            )
        }
        return record

    def runs(self, sweep: str | None = None, status: str | None = None) -> pd.DataFrame:
        """One row per run: config fields as columns, then accuracies, status and timings."""
        import pandas as pd  # heavy: imported only when a frame is built

        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
        query = "SELECT r.* FROM runs r"
        args: list[Any] = []
        if sweep is not None:
            query += " JOIN sweep_runs s ON s.run_id = r.run_id AND s.sweep = ?"
            args.append(sweep)
        if status is not None:
            query += " WHERE r.status = ?"
            args.append(status)
        query += " ORDER BY r.started_at, r.run_id"
        cur = self._conn().execute(query, args)
        columns = [c[0] for c in cur.description]
        records = []
        for row in cur.fetchall():
            raw = dict(zip(columns, row, strict=True))
            record: dict[str, Any] = {"run_id": raw["run_id"]}
            record.update(config_columns(raw["config"]))
            for key in RUN_COLUMNS:
                record[key] = raw[key]
            for key, value in (json.loads(raw["timings"]) if raw["timings"] else {}).items():
                record[f"time_{key}"] = value
            records.append(record)
        frame = pd.DataFrame.from_records(records)
        if frame.empty:
            frame = pd.DataFrame(columns=["run_id", "id_accuracy", "ood_accuracy", "status"])
        return frame

    def per_length(self, sweep: str | None = None) -> pd.DataFrame:
        """Long format: run_id, length, accuracy, then the run's config fields (done runs)."""
        import pandas as pd  # heavy: imported only when a frame is built

        query = "SELECT p.run_id, p.length, p.accuracy, r.config FROM per_length p "
        query += "JOIN runs r ON r.run_id = p.run_id"
        args: list[Any] = []
        if sweep is not None:
            query += " JOIN sweep_runs s ON s.run_id = p.run_id AND s.sweep = ?"
            args.append(sweep)
        query += " WHERE r.status = 'done' ORDER BY p.run_id, p.length"
        records = []
        configs: dict[str, dict] = {}
        for run_id, length, accuracy, config in self._conn().execute(query, args):
            if run_id not in configs:
                configs[run_id] = config_columns(config)
            records.append(
                {"run_id": run_id, "length": length, "accuracy": accuracy, **configs[run_id]}
            )
        frame = pd.DataFrame.from_records(records)
        if frame.empty:
            frame = pd.DataFrame(columns=["run_id", "length", "accuracy"])
        return frame


def config_columns(config_json: str | None) -> dict[str, Any]:
    """A stored config as frame columns: a workload's ``options`` become ``options.NAME``
    columns (none when empty), so every column holds a plain value."""
    config = legacy_flat(json.loads(config_json)) if config_json else {}
    options = config.pop("options", None) or {}
    config.update({f"options.{k}": v for k, v in options.items()})
    return config


def _is_stale(host, pid, heartbeat, now: float, stale_after: float) -> bool:
    if host == socket.gethostname() and not pid_alive(pid):
        return True
    return heartbeat is None or now - heartbeat > stale_after


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _jsonable(value: Any) -> Any:
    """Best-effort JSON form of a summary (numpy/torch scalars, paths)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


__all__ = [
    "NON_RESULT_FIELDS",
    "RUN_COLUMNS",
    "STALE_AFTER_S",
    "STORE_VERSION",
    "ResultsStore",
    "StoreError",
    "code_version",
    "config_hash",
    "default_store_path",
    "pid_alive",
]
