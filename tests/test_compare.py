"""``wmcore compare``: pairing, the side-by-side table, regression rules and tolerances, the overlay
PNG, and bad input (exit 2, inputs untouched), on runs of the analytic model whose drift is known:
open-loop cosine cos(k delta), closed loop cos(delta) at every step."""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from wmcore.cli import main  # noqa: E402
from wmcore.settings import Thresholds  # noqa: E402
from wmcore.errors import WMError  # noqa: E402
from wmcore.evaluate import EvalConfig, evaluate  # noqa: E402
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes  # noqa: E402
from wmcore.plot import overlay_figure, plot_overlay  # noqa: E402
from wmcore.report import DriftReport  # noqa: E402
from wmcore.runs import benchmark_record  # noqa: E402

pytest_plugins = ["pytester"]

BENCH = Path(__file__).resolve().parents[1] / "wmcore" / "suites" / "test_drift.py"
H = 12
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GOOD, BAD = 0.05, 0.25  # cos(0.25) = 0.969: step 1 drops 0.03 > 0.02; cos(0.25 k) < 0.5 from k = 5


@functools.lru_cache(maxsize=None)
def _episodes(steps: int = 20, seed: int = 1):
    return make_episodes(AnalyticConfig(delta=GOOD), episodes=4, steps=steps, seed=seed)


@functools.lru_cache(maxsize=None)
def report(delta: float = GOOD, name: str = "analytic", spec: str | None = None, source: str = "recorded",
           horizon: int = H, threshold: float = 0.5, seed: int = 1) -> DriftReport:
    """The analytic model with angle error ``delta``; the world (and so the data) does not depend on it."""
    return evaluate(
        AnalyticModel(AnalyticConfig(delta=delta), name=name),
        _episodes(seed=seed),
        EvalConfig(horizon=horizon, action_source=source),
        Thresholds(bootstrap=50, threshold=threshold),
        spec=spec or f"analytic:delta={delta}",
        data_id="analytic-4ep",
    )


def bench_doc(*cases: tuple[DriftReport, float]) -> dict:
    """A pytest-benchmark JSON (layout of pytest-benchmark 5) of bench/test_drift.py with one
    benchmark per (report, median seconds)."""
    benchmarks = []
    for r, median in cases:
        spec, src = r.model["spec"], r.config["action_source"]
        benchmarks.append({
            "group": None,
            "name": f"test_drift[{spec}-{src}]",
            "fullname": f"bench/test_drift.py::test_drift[{spec}-{src}]",
            "params": {"wm_action_source": src, "wm_model_spec": spec},
            "param": f"{spec}-{src}",
            "extra_info": {"wmcore": benchmark_record(r), "rollout_steps_per_s": 1000.0},
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5, "max_time": 1.0,
                        "min_time": 5e-06, "precision": None, "confidence": None, "warmup": False},
            "stats": {"min": median * 0.9, "max": median * 1.2, "mean": median, "stddev": median * 0.1,
                      "rounds": 3, "median": median, "iqr": 0.0, "q1": median, "q3": median, "iqr_outliers": 0,
                      "stddev_outliers": 0, "outliers": "0;0", "ld15iqr": median, "hd15iqr": median,
                      "ops": 1 / median, "total": 3 * median, "data": [median] * 3, "iterations": 1},
        })
    return {
        "machine_info": {"node": "test", "processor": "x86_64", "machine": "x86_64", "python_implementation": "CPython",
                         "python_version": "3.11.7", "system": "Linux", "release": "6", "cpu": {}},
        "commit_info": {"id": "unversioned", "time": None, "author_time": None, "dirty": False,
                        "project": "main", "branch": "(unknown)"},
        "benchmarks": benchmarks,
        "datetime": "2026-01-01T00:00:00.000000+00:00",
        "version": "5.3.1",
    }


def write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    return path


def run_dir(path: Path, *reports: DriftReport) -> Path:
    path.mkdir()
    for r in reports:
        r.save(path / f"{r.model['name']}-{r.config['action_source']}.json")  # as wm_record names them
    return path


def compare(capsys, *args) -> tuple[int, str, str]:
    code = main(["compare", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, metric: str, pair: int = 1) -> list[str]:
    """The cells after ``metric`` in the table of pair ``pair``."""
    block = out.split(f"== pair {pair}:")[1].split("== pair")[0]
    line = next(ln for ln in block.splitlines() if ln.strip().startswith(metric))
    return line.strip()[len(metric):].split()


def snapshot(*paths: Path) -> dict:
    return {p: p.read_bytes() for p in paths}


@pytest.fixture()
def base(tmp_path) -> Path:
    return write(tmp_path / "0001_base.json", bench_doc((report(GOOD), 0.010)))


@pytest.fixture()
def degraded(tmp_path) -> Path:
    return write(tmp_path / "0002_new.json", bench_doc((report(BAD), 0.012)))


# --- verdicts ----------------------------------------------------------------------------------


def test_degraded_model_regresses_on_step1_auc_and_horizon(base, degraded, tmp_path, capsys):
    before = snapshot(base, degraded)
    png = tmp_path / "overlay.png"
    code, out, err = compare(capsys, base, degraded, "--out", png)
    assert code == 1, out + err
    assert "verdict: REGRESSION in 1 of 1 pair(s)" in out
    a, b = report(GOOD).loops["closed_loop"].cosine[0], report(BAD).loops["closed_loop"].cosine[0]
    assert b == pytest.approx(math.cos(BAD), abs=2e-3)
    # paired (schema-2 records): every episode turns by the model's angle error, so the CI is narrow
    assert f"closed-loop step-1 cosine dropped by {a - b:.4f} ({a:.4f} -> {b:.4f}; 95% CI of the change [" in out
    assert "open-loop AUC dropped by" in out
    # cos(0.05 k) >= 0.82 for k <= 12: never below 0.5 (counts as 13); cos(0.25 k) < 0.5 first at k = 5
    assert "open-loop drift horizon shortened by 8 steps (never -> 5" in out
    assert row(out, "open loop, drift horizon @0.5")[:3] == ["never", "5", "-8"]
    assert sum(ln.rstrip().endswith("REGRESSED") for ln in out.splitlines()) == 3
    assert "median time grew" not in out  # not gated by default
    assert png.read_bytes().startswith(PNG_MAGIC) and f"overlay: {png}" in out
    assert snapshot(base, degraded) == before


def test_same_run_is_no_regression(base, tmp_path, capsys):
    code, out, _ = compare(capsys, base, base, "--out", tmp_path / "o.png")
    assert code == 0
    assert "verdict: no regression in 1 pair(s)" in out and "REGRESSION" not in out
    assert row(out, "closed loop, step-1 cosine")[2] == "+0.0000"
    assert row(out, "open loop, drift horizon @0.5")[:3] == ["never", "never", "+0"]


def test_an_improvement_is_no_regression(base, degraded, tmp_path, capsys):
    code, out, _ = compare(capsys, degraded, base, "--out", tmp_path / "o.png")
    assert code == 0, out
    assert row(out, "open loop, drift horizon @0.5")[:3] == ["5", "never", "+8"]
    assert "verdict: no regression" in out


def test_table_shows_old_new_and_delta_of_every_metric(base, degraded, tmp_path, capsys):
    code, out, _ = compare(capsys, base, degraded, "--out", tmp_path / "o.png")
    assert code == 1
    old, new = report(GOOD), report(BAD)
    o, n = old.loops, new.loops
    for metric, a, b in [
        ("closed loop, step-1 cosine", o["closed_loop"].cosine[0], n["closed_loop"].cosine[0]),
        ("open loop, step-1 cosine", o["open_loop"].cosine[0], n["open_loop"].cosine[0]),
        ("open loop, step-10 cosine", o["open_loop"].cosine[9], n["open_loop"].cosine[9]),
        (f"open loop, step-{H} cosine", o["open_loop"].cosine[H - 1], n["open_loop"].cosine[H - 1]),
        ("open loop, AUC (mean cosine)", o["open_loop"].auc, n["open_loop"].auc),
    ]:
        assert row(out, metric)[:3] == [f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"], metric
    # the known answer: open loop at step 10 is cos(10 delta)
    assert float(row(out, "open loop, step-10 cosine")[1]) == pytest.approx(math.cos(10 * BAD), abs=5e-3)
    s_old, s_new = o["closed_loop"].skill["copy_last"][0], n["closed_loop"].skill["copy_last"][0]
    assert row(out, "closed loop, step-1 skill vs copy-last")[:3] == [f"{s_old:+.4f}", f"{s_new:+.4f}", f"{s_new - s_old:+.4f}"]
    assert row(out, "median time")[:5] == ["10", "ms", "12", "ms", "x1.20"]
    assert "old: analytic (analytic:delta=0.05)" in out and "new: analytic (analytic:delta=0.25)" in out
    assert "test_drift.py::test_drift [wm_action_source=recorded]" in out


def test_slowdown_is_gated_only_when_asked(tmp_path, capsys):
    a = write(tmp_path / "a.json", bench_doc((report(GOOD), 0.010)))
    b = write(tmp_path / "b.json", bench_doc((report(GOOD), 0.020)))
    assert compare(capsys, a, b, "--out", tmp_path / "1.png")[0] == 0
    code, out, _ = compare(capsys, a, b, "--out", tmp_path / "2.png", "--max-slowdown", "1.5")
    assert code == 1 and "median time grew x2.00 (10 ms -> 20 ms; tolerance x1.5)" in out
    assert compare(capsys, a, b, "--out", tmp_path / "3.png", "--max-slowdown", "2.5")[0] == 0


# --- tolerances --------------------------------------------------------------------------------


def test_tolerances_from_flags(base, degraded, tmp_path, capsys):
    loose = ["--max-step1-drop", "0.05", "--max-auc-drop", "1", "--max-horizon-drop", "9"]
    code, out, _ = compare(capsys, base, degraded, "--out", tmp_path / "1.png", *loose)
    assert code == 0, out
    # the horizon shortened by exactly 8: a tolerance of 8 steps is reached
    code, out, _ = compare(capsys, base, degraded, "--out", tmp_path / "2.png", *loose[:4], "--max-horizon-drop", "8")
    assert code == 1 and "drift horizon shortened by 8" in out and "AUC dropped" not in out
    code, out, _ = compare(capsys, base, degraded, "--out", tmp_path / "3.png", "--max-step1-drop", "0.01",
                           "--max-auc-drop", "1", "--max-horizon-drop", "9")
    assert code == 1 and "step-1 cosine dropped" in out and "horizon shortened" not in out


def _pyproject(path: Path, table: str) -> Path:
    path.write_text("[tool.wmcore]\nthreshold = 0.5\n\n[tool.wmcore.compare]\n" + table)
    return path


def test_tolerances_from_pyproject_and_flags_over_it(base, degraded, tmp_path, capsys):
    pp = _pyproject(tmp_path / "pyproject.toml", "step1_drop = 0.05\nauc_drop = 1.0\nhorizon_drop = 9\n")
    code, out, _ = compare(capsys, base, degraded, "--out", tmp_path / "1.png", "--pyproject", pp)
    assert code == 0, out
    assert f"pyproject: {pp}" in out and "step-1 cosine drop <= 0.05" in out
    code, out, _ = compare(capsys, base, degraded, "--out", tmp_path / "2.png", "--pyproject", pp, "--max-auc-drop", "0.02")
    assert code == 1 and "open-loop AUC dropped" in out and "step-1 cosine dropped" not in out


def test_nearest_pyproject_is_found_from_the_working_directory(base, degraded, tmp_path, capsys, monkeypatch):
    work = tmp_path / "proj" / "sub"
    work.mkdir(parents=True)
    _pyproject(tmp_path / "proj" / "pyproject.toml", "step1_drop = 0.05\nauc_drop = 1.0\nhorizon_drop = 9\n")
    monkeypatch.chdir(work)
    code, out, _ = compare(capsys, base, degraded, "--out", tmp_path / "1.png")
    assert code == 0, out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-horizon-drop", "0"], "horizon_drop=0: expected an integer number of steps >= 1"),
        (["--max-step1-drop", "-0.1"], "step1_drop=-0.1: expected a number >= 0"),
        (["--max-slowdown", "0.5"], "slowdown=0.5: expected a time ratio >= 1"),
        (["--max-auc-drop", "nan"], "auc_drop=nan"),
    ],
)
def test_bad_tolerance_flags(base, tmp_path, capsys, args, message):
    code, _, err = compare(capsys, base, base, "--out", tmp_path / "o.png", *args)
    assert code == 2 and err.startswith("wmcore compare: error: ") and message in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    "table, message",
    [
        ("step1_dorp = 0.1\n", "unknown key(s) ['step1_dorp'] in [tool.wmcore.compare]"),
        ("horizon_drop = 1.5\n", "horizon_drop=1.5: expected an integer"),
        ("auc_drop = 'big'\n", "auc_drop='big': expected a number"),
    ],
)
def test_bad_pyproject_tolerances(base, tmp_path, capsys, table, message):
    pp = _pyproject(tmp_path / "pyproject.toml", table)
    code, _, err = compare(capsys, base, base, "--out", tmp_path / "o.png", "--pyproject", pp)
    assert code == 2 and message in err and str(pp) in err


def test_missing_pyproject_is_an_error(base, tmp_path, capsys):
    code, _, err = compare(capsys, base, base, "--out", tmp_path / "o.png", "--pyproject", tmp_path / "none.toml")
    assert code == 2 and "no such pyproject.toml" in err


# --- run directories ---------------------------------------------------------------------------


def test_run_directories_of_drift_reports(tmp_path, capsys):
    a = run_dir(tmp_path / "run-a", report(GOOD), report(GOOD, source="zeros"))
    b = run_dir(tmp_path / "run-b", report(BAD), report(BAD, source="zeros"))
    before = snapshot(*a.iterdir(), *b.iterdir())
    code, out, _ = compare(capsys, a, b, "--out", tmp_path / "o.png")
    assert code == 1, out
    assert "(run directory, 2 entries)" in out and out.count("== pair") == 2
    assert "[wm_action_source=recorded]" in out and "[wm_action_source=zeros]" in out
    assert row(out, "median time")[:3] == ["n/a", "n/a", "n/a"] and "BASE is a run directory: no timings" in out
    assert snapshot(*a.iterdir(), *b.iterdir()) == before
    assert compare(capsys, a, a, "--out", tmp_path / "p.png")[0] == 0


def test_run_directory_against_a_benchmark_file(base, tmp_path, capsys):
    b = run_dir(tmp_path / "run-b", report(BAD))
    code, out, _ = compare(capsys, base, b, "--out", tmp_path / "o.png")
    assert code == 1 and out.count("== pair") == 1 and "NEW is a run directory: no timings" in out


def test_a_single_drift_report_file(tmp_path, capsys):
    a, b = report(GOOD).save(tmp_path / "a.json"), report(GOOD).save(tmp_path / "b.json")
    code, out, _ = compare(capsys, a, b, "--out", tmp_path / "o.png")
    assert code == 0 and "(drift report, 1 entries)" in out


# --- pairing -----------------------------------------------------------------------------------


def test_several_models_pair_by_model_name(tmp_path, capsys):
    a = write(tmp_path / "a.json", bench_doc(
        (report(GOOD, name="m1", spec="lewm:v1/m1"), 0.01), (report(GOOD, name="m2", spec="lewm:v1/m2"), 0.01)))
    # version 2 of both: m1 unchanged, m2 degraded; listed in the other order
    b = write(tmp_path / "b.json", bench_doc(
        (report(BAD, name="m2", spec="lewm:v2/m2"), 0.01), (report(GOOD, name="m1", spec="lewm:v2/m1"), 0.01)))
    code, out, _ = compare(capsys, a, b, "--out", tmp_path / "o.png")
    assert code == 1, out
    assert "== pair 1: test_drift.py::test_drift [wm_action_source=recorded]: m1 (lewm:v1/m1) -> m1 (lewm:v2/m1)" in out
    assert "== pair 2: test_drift.py::test_drift [wm_action_source=recorded]: m2 (lewm:v1/m2) -> m2 (lewm:v2/m2)" in out
    assert row(out, "closed loop, step-1 cosine", 1)[2] == "+0.0000"
    assert "REGRESSION in 1 of 2 pair(s)" in out and "recorded]: m2 (lewm:v1/m2) -> m2 (lewm:v2/m2):" in out


@pytest.fixture()
def renamed(tmp_path):
    """BASE has models m1, m2; NEW has m1-v2 (same as m1) and m2-v2 (degraded): no names in common."""
    a = write(tmp_path / "a.json", bench_doc((report(GOOD, name="m1"), 0.01), (report(GOOD, name="m2", spec="s2"), 0.01)))
    b = write(tmp_path / "b.json", bench_doc((report(GOOD, name="m1-v2", spec="s1-v2"), 0.01),
                                             (report(BAD, name="m2-v2", spec="s2-v2"), 0.01)))
    return a, b


def test_no_common_models_is_an_error_listing_both_sides(renamed, tmp_path, capsys):
    a, b = renamed
    code, out, err = compare(capsys, a, b, "--out", tmp_path / "o.png")
    assert code == 2 and out == ""
    assert "no common entries" in err and "--pair OLD=NEW" in err
    for name in ("model m1 (analytic:delta=0.05)", "model m2 (s2)", "model m1-v2 (s1-v2)", "model m2-v2 (s2-v2)"):
        assert name in err
    assert not (tmp_path / "o.png").exists()


def test_explicit_pairs_by_name_or_spec(renamed, tmp_path, capsys):
    a, b = renamed
    code, out, _ = compare(capsys, a, b, "--out", tmp_path / "o.png", "--pair", "m1=s1-v2", "--pair", "s2=m2-v2")
    assert code == 1 and out.count("== pair") == 2
    assert ": m1 -> m1-v2" in out and ": m2 -> m2-v2" in out and "REGRESSION in 1 of 2" in out
    # one pair given: the rest is unpaired, not an error
    code, out, _ = compare(capsys, a, b, "--out", tmp_path / "p.png", "--pair", "m1=m1-v2")
    assert code == 0 and out.count("== pair") == 1
    assert "unpaired, only in BASE:\n    test_drift.py::test_drift [wm_action_source=recorded] model m2 (s2)" in out
    assert "unpaired, only in NEW:\n    test_drift.py::test_drift [wm_action_source=recorded] model m2-v2 (s2-v2)" in out


def test_a_pair_of_specs_that_contain_equals_signs(tmp_path, capsys):
    a = write(tmp_path / "a.json", bench_doc((report(GOOD, name="x"), 0.01), (report(GOOD, name="y", spec="y"), 0.01)))
    b = write(tmp_path / "b.json", bench_doc((report(BAD, name="x2", spec="analytic:delta=0.25"), 0.01)))
    code, out, _ = compare(capsys, a, b, "--out", tmp_path / "o.png", "--pair", "analytic:delta=0.05=analytic:delta=0.25")
    assert code == 1 and ": x -> x2" in out and "model y" in out.split("unpaired, only in BASE:")[1]


@pytest.mark.parametrize(
    "pair, message",
    [
        ("m1", "--pair 'm1': expected OLD=NEW"),
        ("=m1-v2", "--pair '=m1-v2': expected OLD=NEW"),
        ("m1=", "--pair 'm1=': expected OLD=NEW"),
        ("nope=m1-v2", "--pair 'nope=m1-v2': names no model of BASE on the left and of NEW on the right; BASE"),
        ("m1-v2=m1", "names no model of BASE"),
    ],
)
def test_bad_pair(renamed, tmp_path, capsys, pair, message):
    a, b = renamed
    before = snapshot(a, b)
    code, out, err = compare(capsys, a, b, "--out", tmp_path / "o.png", "--pair", pair)
    assert code == 2 and err.startswith("wmcore compare: error: ") and message in err
    assert snapshot(a, b) == before and not (tmp_path / "o.png").exists()


def test_a_model_paired_twice_is_an_error(renamed, tmp_path, capsys):
    a, b = renamed
    code, _, err = compare(capsys, a, b, "--out", tmp_path / "o.png", "--pair", "m1=m1-v2", "--pair", "m1=m2-v2")
    assert code == 2 and "paired twice" in err


def test_entries_on_one_side_only_are_listed(tmp_path, capsys):
    a = write(tmp_path / "a.json", bench_doc((report(GOOD), 0.01), (report(GOOD, source="zeros"), 0.01)))
    b = write(tmp_path / "b.json", bench_doc((report(GOOD), 0.01)))
    code, out, _ = compare(capsys, a, b, "--out", tmp_path / "o.png")
    assert code == 0 and out.count("== pair") == 1
    assert "unpaired, only in BASE:\n    test_drift.py::test_drift [wm_action_source=zeros] model analytic" in out
    assert "only in NEW" not in out


def test_benchmarks_without_a_wmcore_record_are_skipped_and_named(tmp_path, capsys):
    doc = bench_doc((report(GOOD), 0.01))
    doc["benchmarks"].append({"name": "test_throughput", "fullname": "bench/t.py::test_throughput", "params": None,
                              "extra_info": {}, "stats": {"median": 0.001}})
    a = write(tmp_path / "a.json", doc)
    code, out, _ = compare(capsys, a, a, "--out", tmp_path / "o.png")
    assert code == 0 and "BASE: 1 benchmark(s) without a wmcore record, not compared: test_throughput" in out


def test_horizons_are_taken_at_the_base_threshold(tmp_path, capsys):
    # the same model, NEW recorded at threshold 0.9: its recorded drift horizon is earlier, but both are
    # measured at BASE's 0.5, so nothing regressed
    new = report(BAD, threshold=0.9)
    assert new.loops["open_loop"].drift_horizon == 2 and report(BAD).loops["open_loop"].drift_horizon == 5
    a = write(tmp_path / "a.json", bench_doc((report(BAD), 0.01)))
    b = write(tmp_path / "b.json", bench_doc((new, 0.01)))
    code, out, _ = compare(capsys, a, b, "--out", tmp_path / "o.png")
    assert code == 0 and row(out, "open loop, drift horizon @0.5")[:3] == ["5", "5", "+0"]
    assert "note: thresholds differ (BASE 0.5, NEW 0.9)" in out


# --- refused input -----------------------------------------------------------------------------


def test_different_horizons_are_refused(base, tmp_path, capsys):
    short = write(tmp_path / "short.json", bench_doc((report(GOOD, horizon=10), 0.01)))
    before = snapshot(base, short)
    code, out, err = compare(capsys, base, short, "--out", tmp_path / "o.png")
    assert code == 2 and out == ""
    assert "refusing to compare" in err and "horizon 12 vs 10 steps" in err and "--wm-horizon" in err
    assert snapshot(base, short) == before and not (tmp_path / "o.png").exists()


def test_different_data_is_refused(base, tmp_path, capsys):
    other = write(tmp_path / "other.json", bench_doc((report(GOOD, seed=2), 0.01)))
    code, _, err = compare(capsys, base, other, "--out", tmp_path / "o.png")
    sha_a, sha_b = report(GOOD).data["sha256"], report(GOOD, seed=2).data["sha256"]
    assert sha_a != sha_b
    assert code == 2 and f"data sha256 {sha_a[:12]} (analytic-4ep) vs {sha_b[:12]}" in err


def _tiny_benchmark(tmp_path) -> Path:
    doc = bench_doc((report(GOOD), 0.01))
    for b in doc["benchmarks"]:
        b["extra_info"] = {}
    return write(tmp_path / "plain.json", doc)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.json", "missing.json: no such file or directory; pass a pytest-benchmark JSON"),
        (lambda p: write(p / "cut.json", json.dumps(bench_doc((report(GOOD), 0.01)))[:500]), "cut.json: not valid JSON"),
        (lambda p: write(p / "blank.json", ""), "blank.json: not valid JSON"),
        (lambda p: write(p / "other.json", {"foo": 1}), "other.json: neither a pytest-benchmark JSON"),
        (lambda p: write(p / "list.json", [1, 2]), "list.json: neither a pytest-benchmark JSON"),
        (_tiny_benchmark, "plain.json: no benchmark carries wmcore's record (extra_info['wmcore']): its 1 benchmark(s)"),
        (lambda p: write(p / "empty.json", {"benchmarks": []}), "no benchmark carries wmcore's record"),
        (lambda p: (p / "emptydir").mkdir() or p / "emptydir", "emptydir: a directory without JSON files"),
        (lambda p: write((p / "d").mkdir() or p / "d" / "x.json", {"foo": 1}).parent, "not a wmcore drift report"),
        (lambda p: write((p / "b").mkdir() or p / "b" / "0001_x.json", bench_doc((report(GOOD), 0.01))).parent,
         "holds pytest-benchmark files, not DriftReports; pass one of them as a file"),
    ],
    ids=["missing", "truncated", "empty-file", "unrelated", "list", "no-wmcore", "no-benchmarks", "empty-dir",
         "dir-unrelated", "dir-of-benchmarks"],
)
def test_unusable_input_exits_2(base, tmp_path, capsys, make, message):
    bad = make(tmp_path)
    files = [f for f in ([bad] if bad.is_file() else bad.glob("*") if bad.is_dir() else [])]
    before = snapshot(base, *files)
    for args in ([bad, base], [base, bad]):
        code, out, err = compare(capsys, *args, "--out", tmp_path / "o.png")
        assert code == 2 and out == ""
        assert err.startswith("wmcore compare: error: ") and message in err, err
    assert snapshot(base, *files) == before and not (tmp_path / "o.png").exists()


def test_a_malformed_wmcore_record_exits_2(tmp_path, capsys):
    doc = bench_doc((report(GOOD), 0.01))
    del doc["benchmarks"][0]["extra_info"]["wmcore"]["curves"]
    a = write(tmp_path / "a.json", doc)
    code, _, err = compare(capsys, a, a, "--out", tmp_path / "o.png")
    assert code == 2 and "benchmark test_drift[analytic:delta=0.05-recorded]: extra_info['wmcore'] lacks field 'curves'" in err
    doc["benchmarks"][0]["extra_info"]["wmcore"]["curves"] = {"open_loop": [0.9, float("nan")], "closed_loop": [0.9, 0.9]}
    b = write(tmp_path / "b.json", doc)
    code, _, err = compare(capsys, b, b, "--out", tmp_path / "p.png")
    assert code == 2 and "curves.open_loop: expected a non-empty list of finite cosines" in err


def test_missing_argument_is_a_usage_error(base, capsys):
    code, _, err = compare(capsys, base)
    assert code == 2 and "wmcore compare: error: the following arguments are required: NEW" in err


# --- the overlay PNG ---------------------------------------------------------------------------


def test_existing_out_is_refused_and_untouched(base, degraded, tmp_path, capsys):
    out_png = write(tmp_path / "taken.png", "not mine")
    code, out, err = compare(capsys, base, degraded, "--out", out_png)
    assert code == 2 and "taken.png: exists already; wmcore never overwrites a file" in err and out == ""
    assert out_png.read_text() == "not mine"


def test_default_out_is_a_fresh_name_under_runs(base, degraded, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = []
    for _ in range(2):  # twice within a second: the second gets a new name
        code, out, _ = compare(capsys, base, degraded)
        assert code == 1
        paths.append(Path(re.search(r"^overlay: (.+)$", out, re.M).group(1)))
    assert paths[0] != paths[1]
    for p in paths:
        assert re.fullmatch(r"compare-\d{8}-\d{6}(-\d+)?\.png", p.name) and p.parent == Path("runs")
        assert (tmp_path / p).read_bytes().startswith(PNG_MAGIC)


def test_overlay_figure_draws_both_models_both_loops_and_the_threshold():
    old, new = report(GOOD), report(BAD)
    curves = [(f"old: {m}", r.loops["open_loop"].cosine, r.loops["closed_loop"].cosine)
              for m, r in (("m-old", old), ("m-new", new))]
    fig = overlay_figure([(curves, 0.6, "pair one"), (curves[:1], 0.5, "pair two"), (curves, 0.5, "pair three")])
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == 3
        ax = axes[0]
        assert ax.get_ylim() == (0, 1) and ax.get_title() == "pair one"
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        o_open, o_closed = lines["old: m-old, open loop"], lines["old: m-old, closed loop"]
        n_open, n_closed = lines["old: m-new, open loop"], lines["old: m-new, closed loop"]
        assert list(n_open.get_ydata()) == new.loops["open_loop"].cosine
        assert list(o_closed.get_ydata()) == old.loops["closed_loop"].cosine
        assert list(n_open.get_xdata()) == list(range(1, H + 1))
        assert o_open.get_linestyle() == "-" and o_closed.get_linestyle() == "--"
        assert n_open.get_linestyle() == "-" and n_closed.get_linestyle() == "--"
        assert o_open.get_color() == o_closed.get_color() != n_open.get_color() == n_closed.get_color()
        thr = lines["threshold 0.6"]
        assert list(thr.get_ydata()) == [0.6, 0.6]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "old: m-old, open loop" in legend and "old: m-new, closed loop" in legend and "threshold 0.6" in legend
    finally:
        plt.close(fig)


def test_plot_overlay_writes_a_png_and_never_overwrites(tmp_path):
    r = report(GOOD)
    panels = [([("m", r.loops["open_loop"].cosine, r.loops["closed_loop"].cosine)], 0.5, "t")]
    p = plot_overlay(panels, tmp_path / "o.png")
    data = p.read_bytes()
    assert data.startswith(PNG_MAGIC)
    with pytest.raises(WMError, match="exists already"):
        plot_overlay(panels, p)
    assert p.read_bytes() == data
    with pytest.raises(ValueError, match="no panels"):
        overlay_figure([])


def test_compare_png_has_one_panel_per_pair(tmp_path, capsys):
    a = run_dir(tmp_path / "a", report(GOOD), report(GOOD, source="zeros"), report(GOOD, name="m2", spec="s2"))
    code, out, _ = compare(capsys, a, a, "--out", tmp_path / "o.png")
    assert code == 0 and out.count("== pair") == 3
    import matplotlib.image as mpimg

    h, w = mpimg.imread(tmp_path / "o.png").shape[:2]
    assert w > 1.5 * 7.5 * 110 * 0.9 and h > 2 * 4.5 * 110 * 0.9  # a 2 x 2 grid (3 panels)


# --- end to end: files written by the real bench suite ------------------------------------------


@pytest.fixture(scope="module")
def analytic_set(tmp_path_factory) -> Path:
    from wmcore.data.episodes import save_episode, write_index

    d = tmp_path_factory.mktemp("data") / "analytic"
    d.mkdir()
    eps = make_episodes(AnalyticConfig(delta=GOOD), episodes=3, steps=H + 2, seed=3)
    entries = [save_episode(d, i, e, seed=i) for i, e in enumerate(eps)]
    write_index(d, {"fps": 10.0, "height": eps[0].frames.shape[1], "width": eps[0].frames.shape[2]}, entries)
    return d



def test_files_written_by_the_bench_suite(pytester, analytic_set, tmp_path, capsys):
    pytester.makepyfile(test_drift=BENCH.read_text())
    files = {}
    for delta in (GOOD, BAD):
        files[delta] = tmp_path / f"bench-{delta}.json"
        pytester.runpytest("--benchmark-only", "-p", "no:cacheprovider", "--wm-model", f"analytic:delta={delta}",
                           "--wm-data", str(analytic_set), "--wm-horizon", str(H), "--wm-actions", "recorded",
                           "--wm-artifacts", str(tmp_path / "art"), f"--benchmark-json={files[delta]}")
    capsys.readouterr()
    runs = sorted((tmp_path / "art").glob("run-*"))
    assert len(runs) == 2
    code, out, _ = compare(capsys, files[GOOD], files[BAD], "--out", tmp_path / "o.png")
    assert code == 1, out
    assert ": analytic[delta=0.05] -> analytic[delta=0.25]" in out
    assert "closed-loop step-1 cosine dropped" in out and "drift horizon shortened by 8 steps (never -> 5" in out
    assert row(out, "median time")[4].startswith("x")  # both files carry pytest-benchmark's timings
    assert compare(capsys, files[GOOD], files[GOOD], "--out", tmp_path / "p.png")[0] == 0
    # the run directories the same sessions wrote compare the same way
    assert compare(capsys, runs[0], runs[1], "--out", tmp_path / "q.png")[0] == 1


# --- the pure comparison (no command line) -------------------------------------------------------


def test_compare_runs_without_the_command(base, degraded):
    from wmcore.compare import compare_runs, overlay_panels, verdict_lines
    from wmcore.runs import load_run
    from wmcore.settings import Tolerances

    c = compare_runs(load_run(base), load_run(degraded), Tolerances())
    assert len(c.results) == 1 and c.regressed == list(c.results)
    assert len(c.regressed[0].regressions) == 3  # step-1 cosine, AUC, drift horizon
    assert verdict_lines(c)[0] == "verdict: REGRESSION in 1 of 1 pair(s)"
    loose = compare_runs(load_run(base), load_run(degraded), Tolerances(step1_drop=1, auc_drop=1, horizon_drop=9))
    assert loose.regressed == [] and verdict_lines(loose) == ["verdict: no regression in 1 pair(s)"]
    (curves, threshold, title), = overlay_panels(c)
    assert threshold == 0.5 and [label for label, *_ in curves] == ["old: analytic (analytic:delta=0.05)",
                                                                    "new: analytic (analytic:delta=0.25)"]
    assert curves[0][1] == tuple(report(GOOD).loops["open_loop"].cosine)
    # the per-episode spread travels with each side, and the overlay draws one thin line per episode
    assert [list(r) for r in curves[1][3]] == report(BAD).loops["open_loop"].per_episode["cosine"]
    from wmcore.plot import overlay_figure

    fig = overlay_figure(overlay_panels(c))
    thin = [ln for ln in fig.axes[0].get_lines() if ln.get_linewidth() < 1]
    assert len(thin) == 2 * len(report(GOOD).data["episode_ids"])


def test_the_step1_skill_is_read_from_the_record_not_from_a_gate(tmp_path, capsys):
    doc = bench_doc((report(GOOD), 0.01))
    rec = doc["benchmarks"][0]["extra_info"]["wmcore"]
    skill = report(GOOD).loops["closed_loop"].skill["copy_last"][0]
    assert rec["skill"]["closed_loop"]["copy_last"][0] == skill
    rec["gates"] = []  # a bench with other gates: the skill is still there
    a = write(tmp_path / "a.json", doc)
    code, out, _ = compare(capsys, a, a, "--out", tmp_path / "o.png")
    assert code == 0 and row(out, "closed loop, step-1 skill vs copy-last")[:3] == [f"{skill:+.4f}"] * 2 + ["+0.0000"]
    del rec["skill"]  # a record written before the skill curves were kept: shown as n/a, nothing gated on it
    b = write(tmp_path / "b.json", doc)
    code, out, _ = compare(capsys, b, b, "--out", tmp_path / "p.png")
    assert code == 0 and row(out, "closed loop, step-1 skill vs copy-last")[:3] == ["n/a", "n/a", "n/a"]


# --- paired statistics (DriftReport schema 2) ------------------------------------------------------


def _noisy(delta: float, noise: float, seed: int, name: str = "analytic") -> DriftReport:
    """The analytic model with angle error ``delta`` plus per-episode noise on its angle (known truth:
    two seeds with the same delta are the same version)."""
    cfg = AnalyticConfig(delta=delta)
    eps = make_episodes(cfg, episodes=12, steps=20, seed=1)

    class Jittered(AnalyticModel):  # each episode's model error differs: noise across episodes
        # rollouts go through step() (the analytic model is incremental); the noise is drawn per call
        # with the version's seed, one draw per episode row
        def step(self, cache, latent, action, state=None):
            z, cache = super().step(cache, latent, action, state)
            g = torch.Generator().manual_seed(seed + 1000 * cache["frames"])
            return z + noise * torch.randn(z.shape[0], 1, z.shape[2], generator=g, dtype=torch.float64).to(z.dtype), cache

    return evaluate(Jittered(cfg, name=name), eps, EvalConfig(horizon=H), Thresholds(bootstrap=50),
                    spec=f"analytic:delta={delta}", data_id="analytic-12ep")


def test_identical_runs_give_zero_deltas_and_no_interval_without_spread(base, tmp_path, capsys):
    code, out, _ = compare(capsys, base, base, "--out", tmp_path / "o.png")
    assert code == 0
    for metric in ("closed loop, step-1 cosine", "open loop, AUC (mean cosine)"):
        cells = row(out, metric)
        # every episode changed by 0: a zero-width "[+0.0000, +0.0000]" would say nothing more
        assert cells[2] == "+0.0000" and cells[3:6] == ["n/a:", "no", "spread"], cells
        assert out.split(metric)[1].splitlines()[0].rstrip().endswith("no significant change")


def test_version_1_runs_fall_back_to_the_rule_on_means_and_say_so(tmp_path, capsys):
    def v1(r: DriftReport, d: Path) -> Path:
        doc = json.loads(r.to_json())
        doc["schema_version"] = 1
        for loop in doc["loops"].values():
            del loop["per_episode"]
        d.mkdir()
        (d / "r.json").write_text(json.dumps(doc))
        return d

    code, out, _ = compare(capsys, v1(report(GOOD), tmp_path / "a"), v1(report(BAD), tmp_path / "b"),
                           "--out", tmp_path / "o.png")
    assert code == 1 and "no per-episode curves (written before DriftReport schema 2)" in out
    assert "closed-loop step-1 cosine dropped by" in out and "95% CI" not in out and "<< REGRESSION" in out


def test_means_flag_keeps_the_old_rule(base, degraded, tmp_path, capsys):
    code, out, _ = compare(capsys, base, degraded, "--means", "--out", tmp_path / "o.png")
    assert code == 1 and "95% CI" not in out and sum("<< REGRESSION" in ln for ln in out.splitlines()) == 3


def test_runs_over_different_episodes_are_refused(tmp_path, capsys):
    a = report(GOOD)
    doc = json.loads(a.to_json())
    doc["data"]["episode_ids"] = [f"other-{i}" for i in range(len(doc["data"]["episode_ids"]))]
    d = tmp_path / "b"
    d.mkdir()
    (d / "r.json").write_text(json.dumps(doc))
    code, _, err = compare(capsys, run_dir(tmp_path / "a", a), d, "--out", tmp_path / "o.png")
    assert code == 2 and "different episodes" in err and "other-0" in err


def test_same_version_with_episode_noise_is_no_regression_and_a_real_drop_is(tmp_path, capsys):
    # same expected drift, different noise draws: no alarm; the means may differ by chance
    a, b = _noisy(GOOD, 0.02, seed=1), _noisy(GOOD, 0.02, seed=2)
    code, out, _ = compare(capsys, run_dir(tmp_path / "a", a), run_dir(tmp_path / "b", b), "--out", tmp_path / "o.png")
    assert code == 0 and "REGRESSED" not in out
    worse = _noisy(0.12, 0.02, seed=3)  # a larger angle error: every episode drifts faster
    code, out, _ = compare(capsys, run_dir(tmp_path / "c", a), run_dir(tmp_path / "d", worse), "--out", tmp_path / "p.png")
    assert code == 1 and "open-loop AUC dropped by" in out and "excludes 0" in out
