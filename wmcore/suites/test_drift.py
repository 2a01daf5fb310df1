"""Drift suite: each model (``--wm-model``, default every embedded model: pusht-lewm, pusht-ac-tiny) on
the episodes of ``--wm-data`` (default the held-out PushT set in wmcore/fixtures/pusht), per action source.

Each case times the open- plus closed-loop rollout with pytest-benchmark, writes the drift plot and
the DriftReport into the run directory, and records the curves, gates and metadata in the
benchmark's ``extra_info``; with recorded actions also the filmstrip of what the model imagines
(``MODEL-filmstrip.png``, ``--wm-no-filmstrip`` to skip it). With recorded actions the gates of ``[tool.wmcore]`` (and the model's own
table) must hold; other action sources are measured and recorded, and must do worse than recorded
actions in closed loop: a model that ignores its actions has not learned action-conditioned dynamics.
The cases share nothing but the plugin's session caches, so they pass in any order. With
``--wm-think 1,2,4`` every case also runs at each thinking budget K (``-thinkK`` in the record's
name; a model that cannot think is refused at start-up for K != 1).

Under torchrun (``torchrun --nproc-per-node=N -m wmcore bench``) each case times the
whole streaming evaluation (``wmcore.evaluate.evaluate``), whose chunks of episodes are shared out
over the ranks; every rank gets the same report, rank 0 writes it.
"""

from __future__ import annotations

import dataclasses

from wmcore.dist import world
from wmcore.evaluate import build_report, evaluate, rollouts


def test_drift(benchmark, wm_model, wm_model_spec, wm_action_source, wm_prepared, wm_thresholds, wm_record,
               wm_settings, wm_reference, wm_eval_config, wm_episodes, wm_filmstrip, wm_think):
    thresholds = wm_thresholds(wm_model.name)
    if world()[1] > 1:  # sharded: time the whole evaluation, each rank on its chunks
        cfg = dataclasses.replace(wm_eval_config(wm_model.name, wm_action_source), think=wm_think)
        report = benchmark.pedantic(evaluate, args=(wm_model, wm_episodes, cfg, thresholds), rounds=1, iterations=1,
                                    kwargs={"spec": wm_model_spec, "data_id": wm_settings.data_id})
        benchmark.extra_info["episodes_per_s"] = len(wm_episodes) / benchmark.stats.stats.median
        benchmark.extra_info["processes"] = world()[1]
    else:
        cfg, prep = wm_prepared(wm_action_source)
        cfg = dataclasses.replace(cfg, think=wm_think)  # the latents do not depend on K: encoded once
        pred_open, pred_closed = benchmark.pedantic(rollouts, args=(wm_model, prep, cfg), rounds=3, warmup_rounds=1)
        report = build_report(wm_model, prep, pred_open, pred_closed, cfg, thresholds, spec=wm_model_spec,
                              data_id=wm_settings.data_id)
        benchmark.extra_info["rollout_steps_per_s"] = 2 * cfg.horizon * len(prep.ids) / benchmark.stats.stats.median
    wm_record(report, f"{wm_model.name}-{wm_action_source}" + (f"-think{wm_think}" if wm_think != 1 else ""), benchmark)
    if wm_action_source == "recorded" and wm_think == 1:  # what the model imagines: its open loop, as real frames
        wm_filmstrip()

    if wm_action_source == "recorded":
        failed = [f"{g.name}: {g.message}" for g in report.gates if not g.passed]
        assert not failed, f"{wm_model.name} on {wm_settings.data_id}: gates failed:\n" + "\n".join(failed)
    else:
        got = report.loops["closed_loop"].skill["copy_last"]
        want = wm_reference("recorded", wm_think).loops["closed_loop"].skill["copy_last"]
        n = min(10, len(got))
        assert sum(got[:n]) / n < sum(want[:n]) / n, (
            f"{wm_model.name}: closed-loop skill vs copy-last over steps 1..{n} with {wm_action_source} actions "
            f"({sum(got[:n]) / n:+.3f}) is not below that with recorded actions ({sum(want[:n]) / n:+.3f}): "
            "the model ignores its actions"
        )
