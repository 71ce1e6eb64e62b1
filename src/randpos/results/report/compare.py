"""Check that a regenerated report keeps every existing number: compare two report folders
column by column.

For each ``*.csv`` of the old folder, every old column must be in the new file with the same
header and, row by row, the same cell text (the bytes between the commas, never parsed as
numbers); for each ``*.json``, every old top-level key must hold the same value, serialized the
way the report writes it; for each ``*.parquet``, every old column must be equal value for
value (NaN equal to NaN). New columns, keys and files are allowed, and listed.

``python -m randpos.results.report.compare OLD_DIR NEW_DIR`` prints one line per file and exits
with 1 when any existing column or key changed.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FileCheck:
    """How one report file compares with its earlier version: the columns or keys kept unchanged,
    those added, and the problems (changed or missing values)."""

    name: str
    kept: list[str] = field(default_factory=list)  # old columns / keys found unchanged
    added: list[str] = field(default_factory=list)  # columns / keys only in the new file
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing that existed before changed."""
        return not self.problems

    def line(self) -> str:
        """One line for the console: ``ok`` or ``CHANGED``, the file, what was kept and added, the
        first problems."""
        state = "ok" if self.ok else "CHANGED"
        text = f"{state:7s} {self.name}: {len(self.kept)} existing columns/keys identical"
        if self.added:
            shown = ", ".join(self.added[:8])
            more = f", ... ({len(self.added)} in all)" if len(self.added) > 8 else ""
            text += f"; added {shown}{more}"
        if self.problems:
            text += "; " + "; ".join(self.problems)
        return text


def _csv_columns(text: str) -> tuple[list[str], dict[str, list[str]]]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    if len(set(header)) != len(header):
        raise ValueError(f"duplicate column names in {header}")
    columns = {
        name: [row[i] if i < len(row) else None for row in body] for i, name in enumerate(header)
    }
    return header, columns


def compare_csv(old: Path, new: Path) -> FileCheck:
    """Compare a CSV with its earlier version column by column: every old column must be present
    with the same values; new columns are listed."""
    check = FileCheck(old.name)
    old_header, old_cols = _csv_columns(old.read_text())
    new_header, new_cols = _csv_columns(new.read_text())
    check.added = [c for c in new_header if c not in old_cols]
    for name in old_header:
        if name not in new_cols:
            check.problems.append(f"column {name!r} missing")
        elif old_cols[name] != new_cols[name]:
            a, b = old_cols[name], new_cols[name]
            rows = [i for i in range(min(len(a), len(b))) if a[i] != b[i]] or [min(len(a), len(b))]
            check.problems.append(f"column {name!r} differs (first at row {rows[0] + 1})")
        else:
            check.kept.append(name)
    return check


def compare_json(old: Path, new: Path) -> FileCheck:
    """Compare a JSON document with its earlier version key by key: every old key must hold the same
    value; new keys are listed."""
    check = FileCheck(old.name)
    before, after = json.loads(old.read_text()), json.loads(new.read_text())
    if not isinstance(before, dict) or not isinstance(after, dict):
        same = json.dumps(before) == json.dumps(after)
        (check.kept if same else check.problems).append("document" if same else "differs")
        return check
    check.added = [k for k in after if k not in before]
    for key, value in before.items():
        if key not in after:
            check.problems.append(f"key {key!r} missing")
        elif json.dumps(value, indent=2) != json.dumps(after[key], indent=2):
            check.problems.append(f"key {key!r} differs")
        else:
            check.kept.append(key)
    return check


def compare_parquet(old: Path, new: Path) -> FileCheck:
    """Compare a Parquet frame with its earlier version column by column (as
    :func:`compare_csv`)."""
    import pandas as pd  # heavy: imported only when a frame is built

    check = FileCheck(old.name)
    before, after = pd.read_parquet(old), pd.read_parquet(new)
    check.added = [c for c in after.columns if c not in before.columns]
    for name in before.columns:
        if name not in after.columns:
            check.problems.append(f"column {name!r} missing")
        elif not before[name].reset_index(drop=True).equals(after[name].reset_index(drop=True)):
            check.problems.append(f"column {name!r} differs")
        else:
            check.kept.append(name)
    return check


COMPARERS = {".csv": compare_csv, ".json": compare_json, ".parquet": compare_parquet}


def compare_reports(old_dir: str | Path, new_dir: str | Path) -> list[FileCheck]:
    """One check per table file of ``old_dir`` (a file missing from ``new_dir`` is a problem),
    then a line per table file that only ``new_dir`` has."""
    old_dir, new_dir = Path(old_dir), Path(new_dir)
    checks = []
    for old in sorted(p for p in old_dir.iterdir() if p.suffix in COMPARERS):
        new = new_dir / old.name
        if not new.is_file():
            checks.append(FileCheck(old.name, problems=["file missing"]))
            continue
        checks.append(COMPARERS[old.suffix](old, new))
    for new in sorted(p for p in new_dir.iterdir() if p.suffix in COMPARERS):
        if not (old_dir / new.name).exists():
            checks.append(FileCheck(new.name, added=["(new file)"]))
    return checks


def main(argv: list[str] | None = None) -> int:
    """``python -m randpos.results.report.compare OLD_DIR NEW_DIR``: print a line per file; exit
    code 0 when nothing changed, 1 otherwise, 2 for bad arguments."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m randpos.results.report.compare OLD_DIR NEW_DIR", file=sys.stderr)
        return 2
    checks = compare_reports(*args)
    for check in checks:
        print(check.line())
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
