"""Statistics that know their sample size: with 1 episode (or task) no interval is printed or stored
and no gate claims confidence; with 2 there is an interval. Every path that prints a CI: the drift
gates, the report's text (energy ranks), control reports and their gate, wmcore compare."""

from __future__ import annotations

import re

import pytest

from wmcore.control.report import ControlReport, control_table
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes
from wmcore.report import render_text
from wmcore.settings import Thresholds

# an interval whose two ends print the same: "[0.8349, 0.8349]", "[+0.12, +0.12]", "[50.0%, 50.0%]"
DEGENERATE = re.compile(r"\[\s*([+-]?\d+(?:\.\d+)?%?),\s*\1\s*\]")
T = Thresholds(bootstrap=200, skill_mean_min=0.0, open_skill_mean_min=0.0, horizon_min=1)


@pytest.fixture(scope="module")
def reports():
    cfg = AnalyticConfig(delta=0.05)
    model, eps = AnalyticModel(cfg), make_episodes(cfg, episodes=2, steps=16, seed=5)
    return {n: evaluate(model, eps[:n], EvalConfig(horizon=10), T, data_id=f"n{n}") for n in (1, 2)}


def test_one_episode_gives_no_interval_and_no_claim_of_confidence(reports):
    r = reports[1]
    text = render_text([r])
    assert not DEGENERATE.search(text), DEGENERATE.search(text).group(0)
    for g in r.gates:
        assert g.lo is None and g.hi is None, g.name
        if g.name != "drift_horizon":  # a step count of the mean curve: never had an interval
            assert "n/a: 1 episode" in g.message and "judged on the value alone" in g.message, g.message
            assert "confidence" not in g.message, g.message
    assert "rank" in text and "(n/a: 1 episode)" in text  # the energy landscape's ranks


def test_two_episodes_give_intervals(reports):
    r = reports[2]
    for g in r.gates:
        if g.name != "drift_horizon":
            assert g.lo is not None and g.hi is not None and "90% CI [" in g.message, g.message
            assert "n/a" not in g.message
    assert "n/a" not in render_text([r])


def _control(n: int) -> ControlReport:
    from wmcore.control.command import controller_meta, make_controller
    from wmcore.control.planners import ActionPrior, CEMConfig
    from wmcore.control.run import run_tasks
    from wmcore.control.tasks import build
    from wmcore.data import load

    episodes = load("pusht", limit=3)
    ts = build(episodes, data_id="pusht")
    ctrl = make_controller("drive", ActionPrior.from_actions([e.actions for e in episodes]), CEMConfig())
    tasks = ts.tasks[:n]
    return ControlReport.build(controller_meta(ctrl, "drive", CEMConfig()), ts, tasks, run_tasks(tasks, ctrl),
                               success_min=0.5)


@pytest.mark.parametrize("n", [1, 2])
def test_control_reports_know_their_number_of_tasks(n):
    r = _control(n)
    text = r.render_text() + "\n" + control_table([("c", r)])
    gate = r.gates[0]
    if n == 1:
        assert "n/a: 1 task" in text and "95% CI" not in r.render_text()
        assert gate.lo is None and "judged on the value alone" in gate.message and "confidence" not in gate.message
    else:
        assert "95% CI [" in text and "n/a" not in text and gate.lo is not None
    assert not DEGENERATE.search(text), text


@pytest.mark.parametrize("n", [1, 2])
def test_compare_knows_its_number_of_episodes(reports, n, tmp_path, capsys):
    """A faster-drifting model against the base: a regression either way, but one episode shows no
    interval and claims no confidence (it is judged on the values alone)."""
    from wmcore.cli import main

    cfg = AnalyticConfig(delta=0.08)
    worse = evaluate(AnalyticModel(cfg), make_episodes(AnalyticConfig(delta=0.05), episodes=2, steps=16, seed=5)[:n],
                     EvalConfig(horizon=10), T, data_id=f"n{n}")
    reports[n].save(tmp_path / "old.json")
    worse.save(tmp_path / "new.json")
    code = main(["compare", str(tmp_path / "old.json"), str(tmp_path / "new.json"), "--out", str(tmp_path / "o.png")])
    out = capsys.readouterr().out
    assert code == 1, out  # the open-loop AUC drops by 0.07, past the tolerance of 0.02
    assert not DEGENERATE.search(out), DEGENERATE.search(out).group(0)
    if n == 1:
        assert "n/a: 1 episode, no confidence interval" in out and "excludes 0" not in out
    else:
        assert "excludes 0" in out and "n/a: 1 episode" not in out


@pytest.mark.parametrize("n", [1, 2])
def test_control_compare_knows_its_number_of_tasks(n, tmp_path, capsys):
    from wmcore.cli import main

    for planner in ("drive", "stay"):
        assert main(["plan", "--planner", planner, "--limit", str(n), "--out", str(tmp_path / planner),
                     "--success-min", "0"]) == 0
    capsys.readouterr()
    main(["compare", str(tmp_path / "drive" / "control-drive.json"), str(tmp_path / "stay" / "control-stay.json")])
    out = capsys.readouterr().out
    assert "score" in out and not DEGENERATE.search(out), out
    assert ("n/a: 1 task" in out and "judged on the value alone" in out) == (n == 1), out
