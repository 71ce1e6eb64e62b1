"""The committed studies in results/<study>/ regenerate from their stores: every text table
byte-identical and every parquet table equal in schema and every value (the report is a pure
function of the store, and the redesigns kept every run's config, id and numbers).

A parquet file's bytes also record the libraries that wrote it (pandas' schema metadata holds
the pandas version, the footer the Arrow writer's), so a new pandas release changes the bytes
and not the table: parquet files are compared as tables, read back, exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from randpos.results.report import write_report
from randpos.results.store import ResultsStore

RESULTS = Path(__file__).resolve().parents[2] / "results"
#: study -> (the store it is reported from, the sweep)
STUDIES = {
    "reproduction": ("reproduction", "repro_cpu"),
    "zoo": ("zoo", "zoo"),
    "decoder": ("zoo", "decoder"),
    "images": ("images", "images"),
    "arpg": ("arpg", "arpg"),
    "arithmetic": ("arithmetic", "arithmetic"),
    "long_context": ("long_context", "long_context"),
}
TABLES = ("*.csv", "*.tex", "*.json", "*.parquet")


@pytest.mark.parametrize("study", list(STUDIES))
def test_every_committed_report_table_regenerates_byte_identically(study, tmp_path):
    source, sweep = STUDIES[study]
    store = tmp_path / "store.sqlite"
    store.write_bytes((RESULTS / source / "store.sqlite").read_bytes())
    write_report(ResultsStore(store), tmp_path / "out", sweep=sweep, figures=False)
    committed = RESULTS / study
    written = {p.name for pattern in TABLES for p in (tmp_path / "out").glob(pattern)}
    # decode_steps.json (arpg) is written by examples/arpg_decode_steps.py, not by the report
    expected = {p.name for pattern in TABLES for p in committed.glob(pattern)} - {
        "decode_steps.json"
    }
    assert expected and expected <= written  # per_length.csv of reproduction was never committed
    for name in sorted(expected):
        assert_same_table(tmp_path / "out" / name, committed / name)


def assert_same_table(written: Path, committed: Path) -> None:
    """Text tables byte for byte; a parquet table as a table (columns, dtypes, every value
    exactly), since its bytes carry the writing libraries' versions."""
    if written.suffix == ".parquet":
        pd.testing.assert_frame_equal(
            pd.read_parquet(written), pd.read_parquet(committed), check_exact=True, obj=written.name
        )
    else:
        assert written.read_bytes() == committed.read_bytes(), written.name


def test_the_committed_reproduction_report_text_regenerates_byte_identically(tmp_path):
    """results/reproduction was written from its store before workloads existed (and written
    again, with its numbers unchanged, when the seed statistics and chance levels were added);
    the report of the same store must not change by a byte (figures aside: their pixels depend
    on the matplotlib and FreeType versions installed, not on randpos)."""
    committed = RESULTS / "reproduction"
    store = tmp_path / "store.sqlite"
    store.write_bytes((committed / "store.sqlite").read_bytes())
    write_report(ResultsStore(store), tmp_path / "out", sweep="repro_cpu")
    # the store's path is printed in the protocol: results/reproduction/store.sqlite
    for name in (
        "report.md",
        "report.html",
        "runs.csv",
        "table1.csv",
        "table1_seeds.csv",
        "table1_stats.csv",
        "chance.csv",
        "table1.tex",
        "headline.json",
        "per_length.parquet",
    ):
        if name.endswith(".parquet"):
            assert_same_table(tmp_path / "out" / name, committed / name)
            continue
        got = (tmp_path / "out" / name).read_bytes()
        if name.startswith("report."):
            got = got.replace(str(store).encode(), b"results/reproduction/store.sqlite")
            if name == "report.html":  # inlined figures: compare the text around them
                got, want = (_strip_images(x) for x in (got, (committed / name).read_bytes()))
                assert got == want, name
                continue
        assert got == (committed / name).read_bytes(), name


def _strip_images(html: bytes) -> bytes:
    return re.sub(rb"base64,[A-Za-z0-9+/=]+", b"base64,...", html)
