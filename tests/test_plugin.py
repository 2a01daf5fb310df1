"""The pytest plugin end to end (pytester): options, usage errors, the bench suite on a model with a
known answer, its artifacts and the pytest-benchmark record, and a degraded model failing the gates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wmcore.data.episodes import save_episode, write_index
from wmcore.models.analytic import AnalyticConfig, make_episodes

pytest_plugins = ["pytester"]

BENCH = Path(__file__).resolve().parents[1] / "wmcore" / "suites" / "test_drift.py"
HORIZON = 12


@pytest.fixture(scope="module")
def analytic_set(tmp_path_factory) -> Path:
    """Episodes of the analytic world written in the episode format (lossless: the model reads back
    exactly the latents it would have computed)."""
    d = tmp_path_factory.mktemp("data") / "analytic"
    d.mkdir()
    eps = make_episodes(AnalyticConfig(delta=0.05), episodes=4, steps=HORIZON + 4, seed=3)
    entries = [save_episode(d, i, e, seed=i) for i, e in enumerate(eps)]
    write_index(d, {"fps": 10.0, "height": eps[0].frames.shape[1], "width": eps[0].frames.shape[2]}, entries)
    return d


@pytest.fixture
def bench(pytester):
    pytester.makepyfile(test_drift=BENCH.read_text())
    return pytester


def _run(bench, *args):
    return bench.runpytest("--benchmark-only", "-p", "no:cacheprovider", *args)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--wm-model", "nope"], "--wm-model 'nope': unknown model spec"),
        (["--wm-model", "lewn:/x"], "unknown model spec"),
        (["--wm-actions", "sideways"], "--wm-actions 'sideways': expected one of recorded, zeros, random"),
        (["--wm-dtype", "float8"], "--wm-dtype 'float8'"),
        (["--wm-data", "/no/such/dir"], "--wm-data '/no/such/dir': no such file or directory"),
        (["--wm-horizon", "0"], "--wm-horizon must be >= 1"),
        (["--wm-threshold", "step1_min"], "--wm-threshold 'step1_min': expected KEY=VALUE"),
        (["--wm-threshold", "nope=1"], "unknown threshold(s) ['nope']"),
        (["--wm-threshold", "step1_min=high"], "step1_min='high': expected a number"),
    ],
)
def test_bad_options_are_usage_errors(bench, args, message):
    r = _run(bench, *args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert message in r.stderr.str()


def test_suite_on_a_known_model_records_everything(bench, analytic_set, tmp_path):
    bj = tmp_path / "bench.json"
    r = _run(bench, "--wm-model", "analytic:delta=0.05", "--wm-data", str(analytic_set),
             "--wm-horizon", str(HORIZON), "--wm-artifacts", str(tmp_path / "art"), f"--benchmark-json={bj}")
    r.assert_outcomes(passed=2)  # recorded and random actions
    doc = json.loads(bj.read_text())
    by = {b["param"]: b for b in doc["benchmarks"]}
    assert set(by) == {"analytic:delta=0.05-recorded", "analytic:delta=0.05-random"}
    rec = by["analytic:delta=0.05-recorded"]["extra_info"]["wmcore"]
    assert rec["passed"] and rec["config"]["horizon"] == HORIZON and rec["config"]["action_source"] == "recorded"
    assert len(rec["curves"]["open_loop"]) == HORIZON and rec["thresholds"]["step1_min"] == 0.85
    assert rec["data"]["episodes"] == 4 and rec["model"]["spec"] == "analytic:delta=0.05"
    # the analytic answer: closed loop is off by delta at every step, so its cosine is cos(0.05)
    assert rec["curves"]["closed_loop"][0] == pytest.approx(0.99875, abs=2e-3)
    runs = list((tmp_path / "art").glob("run-*"))
    assert len(runs) == 1
    names = sorted(p.name for p in runs[0].iterdir())
    assert len([n for n in names if n.endswith(".json")]) == 2
    # the energy landscape is measured with recorded actions only: one energy plot, beside their drift plot
    # and, with recorded actions, the filmstrip of what the model imagines
    assert sorted(n for n in names if n.endswith(".png")) == [
        "analytic_delta_0.05_-filmstrip.png", "analytic_delta_0.05_-random.png", "analytic_delta_0.05_-recorded-energy.png",
        "analytic_delta_0.05_-recorded.png", "overlay.png"]
    out = r.stdout.str()
    assert "wmcore artifacts" in out and "wmcore drift summary" in out
    assert "energy landscape: rank of the recorded actions" in out
    row = next(line for line in out.splitlines() if line.startswith("analytic:delta=0.05") and "recorded" in line)
    assert row.split()[2] == f"{rec['curves']['closed_loop'][0]:.3f}" and row.endswith("PASS")


def test_no_energy_switches_the_energy_landscape_off(bench, analytic_set, tmp_path):
    r = _run(bench, "--wm-model", "analytic:delta=0.05", "--wm-data", str(analytic_set), "--wm-actions", "recorded",
             "--wm-horizon", str(HORIZON), "--wm-artifacts", str(tmp_path / "art"), "--wm-no-energy",
             "--wm-no-filmstrip")
    r.assert_outcomes(passed=1)
    (run,) = (tmp_path / "art").glob("run-*")
    assert sorted(p.name for p in run.glob("*.png")) == ["analytic_delta_0.05_-recorded.png", "overlay.png"]
    (report,) = run.glob("*.json")
    doc = json.loads(report.read_text())
    assert doc["energy"] is None and doc["config"]["energy"] is False
    assert "energy landscape" not in r.stdout.str()


def test_thresholds_from_the_command_line_are_applied_and_recorded(bench, analytic_set, tmp_path):
    bj = tmp_path / "bench.json"
    r = _run(bench, "--wm-model", "analytic:delta=0.05", "--wm-data", str(analytic_set), "--wm-actions", "recorded",
             "--wm-horizon", str(HORIZON), "--wm-artifacts", str(tmp_path / "art"), "--wm-threshold", "step1_min=0.9995",
             f"--benchmark-json={bj}")
    r.assert_outcomes(failed=1)  # cos(0.05) = 0.99875 < 0.9995
    assert "< min 0.9995" in r.stdout.str()
    rec = json.loads(bj.read_text())["benchmarks"][0]["extra_info"]["wmcore"]
    assert rec["thresholds"]["step1_min"] == 0.9995 and not rec["passed"]


def test_a_degraded_model_fails_with_a_readable_message(bench, analytic_set, tmp_path):
    r = _run(bench, "--wm-model", "analytic:delta=1.2", "--wm-data", str(analytic_set), "--wm-actions", "recorded",
             "--wm-horizon", str(HORIZON), "--wm-artifacts", str(tmp_path / "art"))
    r.assert_outcomes(failed=1)
    out = r.stdout.str()
    assert "gates failed" in out and "closed loop step-1 cosine 0.36" in out and "< min 0.8500" in out


NOACT_CONFTEST = """
import torch
from wmcore.models import FAMILIES
from wmcore.models.analytic import AnalyticModel, parse_spec


class IgnoresActions(AnalyticModel):
    def predict(self, context, actions, states=None):
        return super().predict(context, torch.zeros_like(actions), states)

    def step(self, cache, latent, action, state=None):  # the KV-cache path of the rollouts
        return super().step(cache, latent, torch.zeros_like(action), state)


FAMILIES["noact"] = lambda arg: IgnoresActions(parse_spec(arg), name="noact")
"""


def test_a_model_that_ignores_its_actions_fails_the_action_check(bench, analytic_set, tmp_path):
    bench.makeconftest(NOACT_CONFTEST)  # a user's own model family, registered from a conftest
    r = _run(bench, "--wm-model", "noact:delta=0.05", "--wm-data", str(analytic_set),
             "--wm-horizon", str(HORIZON), "--wm-artifacts", str(tmp_path / "art"), "--wm-actions", "random")
    r.assert_outcomes(failed=1)
    assert "the model ignores its actions" in r.stdout.str()


def test_the_action_check_passes_in_either_order(bench, analytic_set, tmp_path):
    """Random actions before recorded ones: the reference (recorded actions) is evaluated by
    wm_reference when no test recorded it yet, so the outcome does not depend on the order."""
    for order in (["random", "recorded"], ["recorded", "random"]):
        args = [a for source in order for a in ("--wm-actions", source)]
        # the order of the options, not pytest-randomly's (pytester's run has no pyproject addopts)
        r = _run(bench, "--wm-model", "analytic:delta=0.05", "--wm-data", str(analytic_set), *args,
                 "--wm-horizon", str(HORIZON), "--wm-artifacts", str(tmp_path / "art"), "-v", "-p", "no:randomly")
        r.assert_outcomes(passed=2)
        ran = [ln.split("[")[1].split("]")[0] for ln in r.stdout.lines if "::test_drift[" in ln and "PASSED" in ln]
        assert ran == [f"analytic:delta=0.05-{s}" for s in order]
    # a model that ignores its actions still fails when the random case runs first
    bench.makeconftest(NOACT_CONFTEST)
    r = _run(bench, "--wm-model", "noact:delta=0.05", "--wm-data", str(analytic_set), "--wm-actions", "random",
             "--wm-actions", "recorded", "--wm-horizon", str(HORIZON), "--wm-artifacts", str(tmp_path / "art2"),
             "-p", "no:randomly")
    r.assert_outcomes(passed=1, failed=1)
    assert "the model ignores its actions" in r.stdout.str()


CONTROL_CASE = '''
from wmcore.control.command import controller_meta, make_controller
from wmcore.control.planners import ActionPrior, CEMConfig
from wmcore.control.report import ControlReport
from wmcore.control.run import run_sharded
from wmcore.control.tasks import build
from wmcore.data import load


def test_control(benchmark, wm_record_control):
    episodes = load("pusht", limit=4)
    ts = build(episodes, data_id="pusht")
    prior = ActionPrior.from_actions([e.actions for e in episodes])
    ctrl = make_controller("drive", prior, CEMConfig())
    tasks = ts.tasks[:3]
    results = benchmark.pedantic(run_sharded, args=(tasks, ctrl), rounds=1, iterations=1)
    report = ControlReport.build(controller_meta(ctrl, "drive", CEMConfig()), ts, tasks, results, success_min=0.0)
    wm_record_control(report, "control-drive", benchmark)
'''


def test_the_summary_shows_control_runs_and_lists_their_reports(pytester, tmp_path):
    pytester.makepyfile(test_wm_control_summary=CONTROL_CASE)  # a name no module of tests/ has
    art = tmp_path / "art"
    r = pytester.runpytest("--benchmark-only", "-p", "no:cacheprovider", "--wm-artifacts", str(art),
                           f"--benchmark-json={tmp_path / 'b.json'}")
    assert r.ret == 0, r.stdout.str()[-3000:]
    out = r.stdout.str()
    assert "wmcore control summary" in out and "drive" in out and "/3" in out
    run = next(art.iterdir())
    assert str(run / "control-drive.json") in out and (run / "control-drive.json").is_file()
    info = json.loads((tmp_path / "b.json").read_text())["benchmarks"][0]["extra_info"]
    assert info["wmcore_control"]["tasks"] == 3 and "seconds_per_action" in info


def test_wm_baseline_fails_a_regressed_model_and_passes_the_same_one(bench, analytic_set, tmp_path):
    common = ["--wm-data", str(analytic_set), "--wm-actions", "recorded", "--wm-horizon", str(HORIZON),
              "--wm-artifacts", str(tmp_path / "art"), "--wm-no-energy"]
    base = tmp_path / "base.json"
    r = _run(bench, "--wm-model", "analytic:delta=0.05", *common, f"--benchmark-json={base}")
    assert r.ret == 0
    same = _run(bench, "--wm-model", "analytic:delta=0.05", *common, "--wm-baseline", str(base))
    assert same.ret == 0, same.stdout.str()[-3000:]
    out = same.stdout.str()
    assert "wmcore comparison with the baseline" in out and "no significant change" in out
    # a model that drifts faster: its own gates pass, the comparison with the baseline fails the session
    worse = _run(bench, "--wm-model", "analytic:delta=0.09", *common, "--wm-baseline", str(base))
    assert worse.ret == 1, worse.stdout.str()[-3000:]
    worse.assert_outcomes(passed=1)
    assert "REGRESS" in worse.stdout.str()
    # the baseline is a run directory as well (the bench's own, control reports and all)
    # (one of delta=0.05's own run directories; glob order is the file system's, so pick by content)
    run_dir = next((tmp_path / "art").glob("run-*/analytic_delta_0.05_-recorded.json")).parent
    assert _run(bench, "--wm-model", "analytic:delta=0.09", *common, "--wm-baseline", str(run_dir)).ret == 1


def test_wm_baseline_over_other_episodes_or_missing_is_a_usage_error(bench, analytic_set, tmp_path):
    common = ["--wm-model", "analytic:delta=0.05", "--wm-data", str(analytic_set), "--wm-actions", "recorded",
              "--wm-horizon", str(HORIZON), "--wm-no-energy", "--wm-artifacts", str(tmp_path / "art")]
    base = tmp_path / "base.json"
    assert _run(bench, *common, "--wm-episodes", "2", f"--benchmark-json={base}").ret == 0
    r = _run(bench, *common, "--wm-baseline", str(base))
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "ran over other episodes" in r.stderr.str()
    r = _run(bench, *common, "--wm-baseline", str(tmp_path / "nope.json"))
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "--wm-baseline" in r.stderr.str()
