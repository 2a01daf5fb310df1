"""Thinking suite: each embedded thinking model (pusht-refine, ``wmcore.models.refine``; pusht-thinker,
``wmcore.models.thinker``) along its thinking budget K, on the held-out PushT episodes and the first
tasks of the planning task set.

For every K (``--wm-think``, default ``WMCORE_THINK_BUDGETS``: 1,2,4 for pusht-refine, 1,4 for the
costlier pusht-thinker, whose FiLM makes a step about 3 times as slow): open-loop AUC with its CI and
the paired change against K = 1, drift horizon, step-1 skill, energy ranks, time per predicted step,
the refinement's inner residuals, and planning success on ``WMCORE_THINK_TASKS`` (default 4) tasks
(``wmcore.thinking.curve``). The case writes ``thinking-MODEL.json`` and ``.png`` into the run
directory (``wm_record_thinking``: the table in the summary, the rows in ``extra_info["thinking"]``),
and the control report of each K (``control-MODEL-thinkK.json``, in the control table). Asserted: at K = 1 the model is its base (pusht-wm) bit for
bit on the same episodes; the ``think_no_worse`` gate where the model's thresholds ask for it; the
saved plans replay. ``scripts/thinking_curve.py`` draws the whole curve (K = 1, 2, 4, 8, 64 tasks).
"""

from __future__ import annotations

import os

import pytest

from wmcore.control.command import controller_meta, make_controller
from wmcore.control.planners import ActionPrior, CEMConfig, preset
from wmcore.control.report import ControlReport, replay_report
from wmcore.control.run import run_sharded
from wmcore.control.tasks import build
from wmcore.data import load as load_data
from wmcore.evaluate import evaluate
from wmcore.models import load as load_model
from wmcore.settings import apply_think, resolve
from wmcore.thinking import curve

MODELS = {"pusht-refine": "pusht-wm", "pusht-thinker": "pusht-wm"}  # thinking model -> its base, which K = 1 must equal
_ENV = os.environ.get("WMCORE_THINK_BUDGETS")
BUDGETS = {m: tuple(int(k) for k in (_ENV or default).split(",")) for m, default in
           (("pusht-refine", "1,2,4"), ("pusht-thinker", "1,4"))}
TASKS = int(os.environ.get("WMCORE_THINK_TASKS", "4"))


@pytest.fixture(scope="module")
def held_out():
    episodes = load_data("pusht")
    return episodes, build(episodes, data_id="pusht"), ActionPrior.from_actions([e.actions for e in episodes])


@pytest.mark.parametrize("spec", list(MODELS))
def test_thinking_curve(benchmark, spec, held_out, wm_settings, wm_record_thinking, wm_record_control):
    episodes, taskset, prior = held_out
    model = load_model(spec)
    ks = sorted(set(wm_settings.think or BUDGETS[spec]) | {1})
    cfg, thresholds = resolve(model.name)
    planner = preset(thresholds.planner, model.frameskip) if thresholds.planner else CEMConfig()
    tasks = taskset.tasks[:TASKS]
    controls = {}

    def plan(k: int) -> ControlReport:
        apply_think(model, k)
        ctrl = make_controller("cem", prior, planner, model)
        results = run_sharded(tasks, ctrl)
        report = ControlReport.build(controller_meta(ctrl, "cem", planner, model, spec, prior), taskset, tasks, results,
                                     success_min=None, rule=thresholds.gate_rule)
        controls[k] = report
        return report

    doc = benchmark.pedantic(curve, args=(model, episodes, ks, cfg, thresholds),
                             kwargs={"spec": spec, "data_id": "pusht", "plan": plan}, rounds=1, iterations=1)
    rows = doc["rows"]
    wm_record_thinking(doc, f"thinking-{spec}", benchmark)
    for k, report in controls.items():
        wm_record_control(report, f"control-{spec}-think{k}", videos=0)
        assert not replay_report(report), f"K={k}: saved actions did not replay to the same outcome"

    # K = 1 is the base model's own path, bit for bit, on the same episodes
    base = evaluate(load_model(MODELS[spec]), episodes, cfg, thresholds)
    assert doc["reports"][1].loops == base.loops, f"{spec} at K=1 differs from {MODELS[spec]}"
    if thresholds.think_no_worse:
        worse = [f"K={r['think']}: AUC {r['vs_k1']['delta']:+.4f} [{r['vs_k1']['lo']:+.4f}, {r['vs_k1']['hi']:+.4f}]"
                 for r in rows if "vs_k1" in r and not r["vs_k1"]["passed"]]
        assert not worse, f"{spec}: think_no_worse failed: more thinking is significantly worse than K=1: {worse}"
