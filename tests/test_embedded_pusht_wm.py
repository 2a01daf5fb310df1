"""The third embedded model (wmcore/fixtures/models/pusht-wm, the keypoint world model that plans) on the
committed held-out set (wmcore/fixtures/pusht): it loads offline by name, its encoder reads the held-out
frames' state, it passes its own drift gates, it depends on its actions, and it ranks a planner's
candidates as the simulator does (ranking fidelity)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from wmcore.control.planners import ActionPrior, preset
from wmcore.control.run import WorldModelCEM
from wmcore.control.sim.pusht import PushTSim
from wmcore.control.tasks import build
from wmcore.data import load as load_data
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.models import load
from wmcore.models.keypoint import SCALE, KeypointWorldModel, keypoints_from_state
from wmcore.paths import fixtures_dir
from wmcore.settings import load_thresholds

NAME = "pusht-wm"
pytestmark = pytest.mark.usefixtures("few_threads")


@pytest.fixture(scope="module")
def model():
    return load(NAME)


@pytest.fixture(scope="module")
def episodes():
    return load_data("pusht")


@pytest.fixture(scope="module")
def thresholds():
    return load_thresholds(NAME, overrides={"bootstrap": 200})


@pytest.fixture(scope="module")
def cfg(thresholds):
    return EvalConfig(horizon=30, start=thresholds.start)


@pytest.fixture(scope="module")
def report(model, episodes, thresholds, cfg):
    return evaluate(model, episodes, cfg, thresholds, spec=NAME, data_id="pusht")


def test_shipped_files_and_model_card():
    d = fixtures_dir() / "models" / NAME
    assert {"config.json", "model.safetensors", "MODEL_CARD.md", "drift.png"} <= {p.name for p in d.iterdir()}
    assert (d / "model.safetensors").stat().st_size <= 5 * 2**20
    card = (d / "MODEL_CARD.md").read_text()
    for text in ("make train-wm", "recipes/pusht-wm.json", "seed 0", "encoder oracle", "privileged"):
        assert text in card
    c = json.loads((d / "config.json").read_text())
    assert c["name"] == NAME and c["frameskip"] == 5 and c["format"] == "wmcore-keypoint"
    assert load_thresholds(NAME).planner == "lewm"


def test_its_encoder_reads_the_held_out_state(model, episodes):
    """The latent is the agent and three body points of the T: on the held-out frames (never trained
    on) the encoder finds them within a few workspace units (the workspace is 512 wide)."""
    assert isinstance(model, KeypointWorldModel)
    frames = torch.stack([e.frames[::25] for e in episodes[:16]])  # [16, 11, 96, 96, 3]
    states = torch.stack([e.states[::25] for e in episodes[:16]])
    z = model.encode(frames)[:, :, 0]
    err = (z - keypoints_from_state(states.double(), model.cfg).float()).reshape(*z.shape[:2], -1, 2) * SCALE
    rms = err.pow(2).sum(-1).mean((0, 1)).sqrt()  # per point
    assert float(rms[0]) < 5.0 and float(rms[1:].max()) < 10.0, rms


def test_the_embedded_model_passes_its_gates(report, model):
    assert model.name == NAME and model.action_dim == 10
    failed = [g.message for g in report.gates if not g.passed]
    assert not failed, failed
    cl, op = report.loops["closed_loop"], report.loops["open_loop"]
    assert cl.skill["copy_last"][0] > 0.3
    assert op.auc < cl.auc


def test_it_uses_its_actions(report, model, episodes, thresholds, cfg):
    """Random actions (recorded scale, wrong content) must cost the closed loop its skill."""
    shuffled = evaluate(model, episodes, dataclasses.replace(cfg, action_source="random"), thresholds)
    got = shuffled.loops["closed_loop"].skill["copy_last"][:10]
    want = report.loops["closed_loop"].skill["copy_last"][:10]
    assert sum(want) / 10 - sum(got) / 10 > 0.3, (want, got)


def test_it_ranks_candidates_as_the_simulator_does(model, episodes):
    """Ranking fidelity at the start of the first tasks: the model's costs of one draw of first-iteration
    candidates against the encoder oracle's (simulated, then encoded by the same encoder)."""
    taskset = build(episodes, data_id="pusht")
    prior = ActionPrior.from_actions([e.actions for e in episodes])
    ctrl = WorldModelCEM(model, prior, preset("lewm", model.frameskip))
    rhos = []
    with PushTSim() as sim:
        for task in taskset.tasks[:3]:
            goal_frame = sim.reset_to(task.goal)
            ctrl.reset(task, sim.reset_to(task.start), goal_frame)
            ctrl.cost.observe(sim.render())
            f = ctrl.ranking_fidelity(np.concatenate([sim.state, sim.velocity]), np.asarray(task.start[:2]))
            assert f["candidates"] == 64 and f["k"] == 6 and "proprio" not in f
            rhos.append(f["latent"]["spearman"])
    assert min(rhos) > 0.8, rhos
