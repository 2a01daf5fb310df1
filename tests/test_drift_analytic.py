"""The whole evaluation on the analytic world model, whose drift is known in closed form.

Each case rolls out open and closed loop, builds, saves and plots the DriftReport, and checks the
measured curves against the analytic answer (see wmcore.models.analytic): the harness measuring
itself. (This was the first bench suite; the bench now measures the embedded PushT model.)
"""

from __future__ import annotations

import pytest
import torch

from wmcore.settings import load_thresholds
from wmcore.evaluate import EvalConfig, build_report, prepare, rollouts
from wmcore.plot import plot_drift
from wmcore.report import DriftReport
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes

HORIZON = 30
EPISODES = 16
# quantising latents to uint8 frames moves each channel by <= 1/255; cosines move by less than this
QUANT_TOL = 0.01

CASES = {
    "analytic": AnalyticConfig(delta=0.05),
    "analytic-offset": AnalyticConfig(delta=0.05, offset=0.35, radius=0.5),
    "analytic-frameskip2": AnalyticConfig(delta=0.08, frameskip=2),
}


def expected_cosine(cfg: AnalyticConfig, actions: torch.Tensor, source: str, loop: str) -> torch.Tensor:
    """Known answer per episode and step ``[B, H]`` for recorded ``actions [B, T, A]`` (recorded steps).

    The model's angle error at a model step is ``delta + b . (fed block - true block)``; open loop sums
    it over the steps, closed loop takes each step's own.
    """
    k = cfg.frameskip
    b = actions.shape[0]
    true = actions[:, : HORIZON * k].double().reshape(b, HORIZON, k, -1).sum(2) @ torch.tensor(cfg.gain, dtype=torch.float64)
    fed = torch.zeros_like(true) if source == "zeros" else true
    err = cfg.delta + fed - true
    return torch.cos(err.cumsum(1) if loop == "open_loop" else err)


@pytest.mark.parametrize("source", ["recorded", "zeros"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_analytic_drift(tmp_path, case, source):
    cfg = CASES[case]
    model = AnalyticModel(cfg, name=case)
    episodes = make_episodes(cfg, episodes=EPISODES, steps=HORIZON * cfg.frameskip + cfg.frameskip, seed=1)
    ecfg = EvalConfig(horizon=HORIZON, action_source=source)
    thresholds = load_thresholds("analytic")
    prep = prepare(model, episodes, ecfg)

    pred_open, pred_closed = rollouts(model, prep, ecfg)
    report = build_report(model, prep, pred_open, pred_closed, ecfg, thresholds, spec=f"analytic:{case}", data_id=f"analytic-seed1-{EPISODES}ep")
    saved = report.save(tmp_path / f"{case}-{source}.json")
    assert DriftReport.load(saved).to_dict() == report.to_dict()
    assert plot_drift(report, tmp_path / f"{case}-{source}.png").stat().st_size > 0

    actions = torch.stack([e.actions for e in episodes])
    for loop in ("open_loop", "closed_loop"):
        want = expected_cosine(cfg, actions, source, loop).mean(0)
        got = torch.tensor(report.loops[loop].centred_cosine if cfg.offset else report.loops[loop].cosine)
        # the centred cosine subtracts the data set's mean latent, which is the offset only on average
        tol = QUANT_TOL if not cfg.offset else 0.05
        assert torch.allclose(got, want.float(), atol=tol), (
            f"{case}/{source} {loop}: measured {got[:5].tolist()} vs analytic {want[:5].tolist()}"
        )
    if source == "recorded":
        failed = [g.message for g in report.gates if not g.passed]
        assert not failed, "gates failed:\n" + "\n".join(failed)
    if cfg.offset:
        # the shared offset inflates the raw cosine of unrelated frames; centring removes it
        assert report.chance_level > 0.3 > abs(report.chance_level_centred)
