"""pytest plugin (entry point ``pytest11``): artifact directory, thresholds, and recording of reports.

Registered options:
  --wm-artifacts DIR   where each run's directory of drift plots and reports is created (default runs)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .config import Thresholds, load_thresholds
from .fsio import new_run_dir
from .report import DriftReport

_WRITTEN = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("wmcore", "world-model drift benchmarks")
    g.addoption(
        "--wm-artifacts",
        default="runs",
        metavar="DIR",
        help="directory under which each run creates a fresh run-YYYYmmdd-HHMMSS/ with drift PNGs "
        "and DriftReport JSONs (default: runs)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_WRITTEN] = []


@pytest.fixture(scope="session")
def wm_run_dir(pytestconfig: pytest.Config) -> Path:
    """This session's fresh artifact directory (created on first use; never reused)."""
    return new_run_dir(Path(pytestconfig.getoption("wm_artifacts")))


@pytest.fixture(scope="session")
def wm_thresholds(pytestconfig: pytest.Config):
    """``wm_thresholds(model_name) -> Thresholds`` from the nearest pyproject's [tool.wmcore]."""

    def resolve(model: str | None = None, **overrides: Any) -> Thresholds:
        return load_thresholds(model, overrides=overrides)

    return resolve


@pytest.fixture
def wm_record(request: pytest.FixtureRequest, wm_run_dir: Path):
    """``wm_record(report, name, benchmark=None)``: write ``name.json`` and ``name.png`` into the run
    directory and put the curves, gates and metadata into the benchmark's ``extra_info``."""
    from .plot import plot_drift

    def record(report: DriftReport, name: str, benchmark: Any = None) -> dict[str, Path]:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        paths = {"json": report.save(wm_run_dir / f"{safe}.json"), "png": plot_drift(report, wm_run_dir / f"{safe}.png")}
        request.config.stash[_WRITTEN].extend(paths.values())
        if benchmark is not None:
            d = report.to_dict()
            benchmark.extra_info["wmcore"] = {k: d[k] for k in ("model", "data", "config", "thresholds", "summary", "gates", "passed", "chance_level", "chance_level_centred")}
            benchmark.extra_info["wmcore"]["curves"] = {k: v["cosine"] for k, v in d["loops"].items()}
        return paths

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    written = config.stash.get(_WRITTEN, [])
    if written:
        terminalreporter.section("wmcore artifacts")
        terminalreporter.write_line(f"run directory: {Path(written[0]).parent}")
        for p in written:
            terminalreporter.write_line(f"  {p}")
