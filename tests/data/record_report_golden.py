"""Write the report of tests/report_fixture.py's store into tests/data/report_golden/ (only
the files that tests/results/test_report.py compares column by column). Recorded with the report
code of commit 502c6a9, before the seed statistics were added: ``python
tests/data/record_report_golden.py``. Re-running it with later code must leave the files'
existing columns as they are (tests/results/test_report.py checks that without re-running this).
"""

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report_fixture import GOLDEN_FILES, build_small_store  # noqa: E402

from randpos.results.report import write_report  # noqa: E402

OUT = Path(__file__).with_name("report_golden")

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        store, _ = build_small_store(Path(tmp) / "store.sqlite")
        write_report(store, Path(tmp) / "report", sweep="small", figures=False)
        OUT.mkdir(exist_ok=True)
        for name in GOLDEN_FILES:
            shutil.copyfile(Path(tmp) / "report" / name, OUT / name)
    print(f"wrote {', '.join(GOLDEN_FILES)} to {OUT}")
