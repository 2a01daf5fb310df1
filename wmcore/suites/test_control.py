"""Control suite: plan to goals in the PushT simulator with each embedded world model (CEM on its
latent goal cost), the oracle (the simulator as the model) and the baselines, on the first tasks of
the seeded task set cut from the held-out episodes (wmcore/fixtures/pusht).

Each case times the whole run with pytest-benchmark (one round: planning is seconds per task), writes
the replayable control report into the run directory, checks that its actions replay to the same
outcome, records the success rate (Wilson CI), score and time per planned action in ``extra_info``,
and asserts the model's ``success_min`` gate where pyproject sets one.

``WMCORE_CONTROL_TASKS`` (default 8) sets how many tasks; ``make bench-control`` runs all 64
(the oracle, at ~10 s per task, gets at most ``WMCORE_ORACLE_TASKS``, default 4).

With ``--wm-think 1,2,4`` (and thinking ``--wm-model`` specs, e.g. pusht-thinker), ``test_control_along_k``
plans the same tasks with each model at each budget K (``control-MODEL-thinkK.json``); without
``--wm-think`` it is deselected.
"""

from __future__ import annotations

import os

import pytest

from wmcore.control.command import controller_meta, make_controller
from wmcore.control.planners import ActionPrior, CEMConfig, preset
from wmcore.control.report import ControlReport, replay_report
from wmcore.control.run import run_sharded
from wmcore.dist import is_main
from wmcore.control.tasks import build
from wmcore.data import load as load_data
from wmcore.models import load as load_model
from wmcore.settings import apply_think

TASKS = int(os.environ.get("WMCORE_CONTROL_TASKS", "8"))
ORACLE_TASKS = min(TASKS, int(os.environ.get("WMCORE_ORACLE_TASKS", "4")))
CASES = [("cem", "pusht-wm"), ("cem", "pusht-lewm"), ("cem", "pusht-ac-tiny"), ("oracle", None), ("stay", None),
         ("random", None), ("drive", None)]
# CEM budgets: a model's own planner preset where pyproject.toml names one (pusht-wm: lewm, le-wm's
# published evaluation), else these; the default for pusht-lewm (a CLS token: 256 candidates cost ~0.1 s per iteration on
# 2 cores); pusht-ac-tiny predicts 64 tokens per frame, ~15x slower per candidate, so fewer candidates
# and iterations; the oracle simulates every candidate (~4 ms per 25-step candidate)
PLANNERS = {"pusht-ac-tiny": CEMConfig(samples=64, elites=8, iterations=3),
            "oracle": CEMConfig(samples=64, elites=8, iterations=4, init_std=2.0)}


def planner_config(name: str, model, model_preset: str = "") -> CEMConfig:
    """The CEM settings a model is planned with here (and in scripts/drift_vs_control.py)."""
    if model is not None and model_preset:
        return preset(model_preset, model.frameskip)
    return PLANNERS.get(name, CEMConfig())


@pytest.fixture(scope="module")
def held_out():
    episodes = load_data("pusht")
    return episodes, build(episodes, data_id="pusht"), ActionPrior.from_actions([e.actions for e in episodes])


@pytest.mark.parametrize("kind, spec", CASES, ids=[s or k for k, s in CASES])
def test_control(benchmark, held_out, kind, spec, wm_record_control, wm_thresholds):
    episodes, taskset, prior = held_out
    model = load_model(spec) if spec else None
    t = wm_thresholds(model.name if model else kind)
    cfg = planner_config(spec or kind, model, t.planner)
    tasks = taskset.tasks[: ORACLE_TASKS if kind == "oracle" else TASKS]
    ctrl = make_controller(kind, prior, cfg, model)
    # under torchrun the tasks are shared out over the ranks and gathered back in order
    results = benchmark.pedantic(run_sharded, args=(tasks, ctrl), rounds=1, iterations=1)
    controller = controller_meta(ctrl, kind, cfg, model, spec, prior)
    report = ControlReport.build(controller, taskset, tasks, results, success_min=t.success_min, rule=t.gate_rule)
    wm_record_control(report, f"control-{spec or kind}", benchmark)
    if is_main():
        print("\n" + report.render_text())
    assert not replay_report(report), "saved actions did not replay to the same outcome"
    failed = [g.message for g in report.gates if not g.passed]
    assert not failed, failed


@pytest.mark.wm_think_only
def test_control_along_k(benchmark, held_out, wm_model, wm_think, wm_record_control, wm_thresholds):
    """CEM with a ``--wm-model`` thinking model at budget K (``--wm-think``), as test_control plans pusht-wm."""
    episodes, taskset, prior = held_out
    t = wm_thresholds(wm_model.name)
    cfg = planner_config(wm_model.name, wm_model, t.planner)
    apply_think(wm_model, wm_think, "--wm-think")
    try:
        ctrl = make_controller("cem", prior, cfg, wm_model)
        results = benchmark.pedantic(run_sharded, args=(taskset.tasks[:TASKS], ctrl), rounds=1, iterations=1)
        controller = controller_meta(ctrl, "cem", cfg, wm_model, wm_model.name, prior)
    finally:
        apply_think(wm_model, 1)
    report = ControlReport.build(controller, taskset, taskset.tasks[:TASKS], results, success_min=t.success_min,
                                 rule=t.gate_rule)
    wm_record_control(report, f"control-{wm_model.name}-think{wm_think}", benchmark)
    assert report.controller["model"]["think"] == wm_think
    assert not replay_report(report), "saved actions did not replay to the same outcome"
    failed = [g.message for g in report.gates if not g.passed]
    assert not failed, failed
