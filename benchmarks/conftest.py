"""Collects the median times of one benchmark run and reports the ratios reference / larbed.

At the end of the session the ratios are printed as a markdown table and written as JSON to
``.benchmarks/larbed_ratios.json`` (or the path in ``LARBED_BENCH_JSON``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _cases import markdown_table, one_blas_thread  # noqa: E402
from _machine import cpu_model  # noqa: E402

_TIMES: dict[str, dict] = {}


@pytest.fixture(scope="session", autouse=True)
def _one_blas_thread():
    """One BLAS thread for the whole run (SPEC §10), set once outside every timing."""
    with one_blas_thread():
        yield


@pytest.fixture(scope="session")
def timings() -> dict[str, dict]:
    """case id → {'preset', 'ug', 'shape', impl: median seconds}."""
    return _TIMES


def _with_ratios(row: dict) -> dict:
    out = {**row, "ratio": row["reference"] / row["larbed"]}
    if "larbed_1thread" in row:
        out["ratio_1thread"] = row["reference"] / row["larbed_1thread"]
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = [r for r in _TIMES.values() if "reference" in r and "larbed" in r]
    if not rows:
        return
    table = markdown_table(rows)
    info = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "rows": [_with_ratios(r) for r in rows],
        "table": table,
    }
    default = Path(config.rootpath) / ".benchmarks" / "larbed_ratios.json"
    path = Path(os.environ.get("LARBED_BENCH_JSON", default))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=1), encoding="utf-8")
    terminalreporter.section("larbed vs NumPy reference: ratios of median times")
    terminalreporter.write_line(f"{info['cpu']}, {info['cpus']} CPUs")
    terminalreporter.write_line(table)
    terminalreporter.write_line(f"written to {path}")
