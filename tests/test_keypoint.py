"""The keypoint world model (wmcore.models.keypoint, the embedded pusht-wm) and its recipe
(wmcore.train.keypoint): geometry with known answers, the predictor's equivariance, checkpoints,
training that resumes bit-exactly, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from wmcore.errors import WMError
from wmcore.models.keypoint import (
    CENTRE, SCALE, KeypointConfig, KeypointModel, KeypointWorldModel, block_pose, keypoints_from_state, load_checkpoint,
    load_world_model, save_pretrained, tiny_config,
)

pytestmark = pytest.mark.usefixtures("few_threads")


def _points(z: torch.Tensor) -> torch.Tensor:
    return z.reshape(*z.shape[:-1], -1, 2) * SCALE + CENTRE


@given(st.floats(0, 512), st.floats(0, 512), st.floats(60, 450), st.floats(60, 450), st.floats(-10, 10))
def test_block_pose_recovers_the_state_from_its_keypoints(ax, ay, bx, by, angle):
    cfg = KeypointConfig()
    s = torch.tensor([[ax, ay, bx, by, angle]], dtype=torch.float64)
    pts = _points(keypoints_from_state(s, cfg))
    assert torch.allclose(pts[0, 0], s[0, :2], atol=1e-9)  # the agent is the first point
    body = torch.tensor(cfg.body_points, dtype=torch.float64)
    centre, theta = block_pose(pts[:, 1:], body)
    d = (theta - angle) % (2 * math.pi)
    assert min(float(d), 2 * math.pi - float(d)) < 1e-9
    c, sn = math.cos(angle), math.sin(angle)
    m = body.mean(0)
    want = torch.tensor([bx + c * m[0] - sn * m[1], by + sn * m[0] + c * m[1]], dtype=torch.float64)
    assert torch.allclose(centre[0], want, atol=1e-9)


def test_keypoints_match_the_simulators_own_body_points():
    """The latent's body points are where pymunk puts them (local_to_world), for the recorded states."""
    from wmcore.control.sim.pusht import PushTSim

    cfg = KeypointConfig()
    with PushTSim() as sim:
        sim.reset_to([200.0, 300.0, 250.0, 220.0, 1.1], render=False)
        want = [sim.env.block.local_to_world(p) for p in cfg.body_points]
        pts = _points(keypoints_from_state(torch.tensor(sim.state, dtype=torch.float64), cfg))
    assert np.allclose(pts[1:].numpy(), [[w.x, w.y] for w in want], atol=1e-6)


def test_a_fresh_predictor_predicts_no_motion():
    cfg = tiny_config()
    model = KeypointModel(cfg)
    z = keypoints_from_state(torch.tensor([[100.0, 120.0, 300.0, 250.0, 0.4]]), cfg)
    out = model.predictor(z, torch.full((1, cfg.action_dim), 256.0))
    assert torch.allclose(out, z, atol=1e-5)


def _turn(z_or_pts: torch.Tensor, angle: float, shift: tuple[float, float]) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    r = torch.tensor([[c, -s], [s, c]])
    return z_or_pts @ r.T + torch.tensor(shift)


def test_the_predictor_is_equivariant_to_moving_and_turning_the_whole_scene():
    """Pushing a T looks the same wherever it lies and however it is turned: moving the agent, the
    block and the targets together moves the prediction the same way (random non-zero weights)."""
    cfg = tiny_config()
    torch.manual_seed(0)
    model = KeypointModel(cfg)
    for p in model.predictor.parameters():
        torch.nn.init.normal_(p, std=0.3)
    z = keypoints_from_state(torch.tensor([[230.0, 200.0, 260.0, 260.0, 0.3], [300.0, 310.0, 200.0, 240.0, 2.0]]), cfg)
    a = torch.rand(2, cfg.frameskip, 2) * 200 + 150
    angle, shift = 0.9, (40.0, -25.0)
    out = _points(model.predictor(z, a.flatten(1)))
    moved = _points(model.predictor(((_turn(_points(z), angle, shift) - CENTRE) / SCALE).flatten(1),
                                    _turn(a, angle, shift).flatten(1)))
    assert not torch.allclose(out, _points(z), atol=1.0)  # it does move things
    assert torch.allclose(moved, _turn(out, angle, shift), atol=1e-3)


def test_save_load_round_trip_and_fingerprint(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(1)
    model = KeypointModel(cfg)
    save_pretrained(model, tmp_path / "m")
    wm = load_world_model(tmp_path / "m")
    frames = torch.randint(0, 256, (2, 3, 48, 48, 3), dtype=torch.uint8)
    z = wm.encode(frames)
    assert z.shape == (2, 3, 1, cfg.latent_dim)
    assert torch.equal(z[:, :, 0], model.eval().embed(frames).detach())
    assert wm.fingerprint() == KeypointWorldModel(model).fingerprint()
    assert load_world_model(tmp_path / "m", name="other").fingerprint() == wm.fingerprint()  # the name is not in it
    nxt = wm.predict(z[:, :1], torch.full((2, 1, cfg.action_dim), 256.0))
    assert nxt.shape == (2, 1, cfg.latent_dim)
    with pytest.raises(WMError, match="exists already"):
        save_pretrained(model, tmp_path / "m")
    with pytest.raises(ValueError, match="actions: expected"):
        wm.predict(z[:, :1], torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match="frames: expected uint8"):
        wm.encode(frames.float())


def test_corrupt_and_mismatched_checkpoints_are_refused(tmp_path):
    cfg = tiny_config()
    save_pretrained(KeypointModel(cfg), tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(WMError, match="cannot read the weights"):
        load_checkpoint(tmp_path / "m")
    w.write_bytes(data)
    c = tmp_path / "m" / "config.json"
    doc = json.loads(c.read_text())
    doc["hidden"] = 64
    c.write_text(json.dumps(doc))
    with pytest.raises(WMError, match="does not match"):
        load_checkpoint(tmp_path / "m")
    doc["format"] = "something-else"
    c.write_text(json.dumps(doc))
    with pytest.raises(WMError, match="expected a 'wmcore-keypoint' config"):
        load_checkpoint(tmp_path / "m")
    with pytest.raises(WMError, match="expected config.json"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(WMError, match="channels"):
        KeypointConfig(channels=())


# --- the recipe ---------------------------------------------------------------------------------


def _recipe(tmp_path, **train):
    doc = {"model": {**tiny_config().to_json(), "rollout_steps": 2}, "train": {
        "encoder_steps": 6, "encoder_batch": 8, "predictor_steps": 6, "predictor_batch": 8, "val_episodes": 4,
        "min_episodes": 10, "val_every": 3, "warmup": 2, "seed": 0, "threads": 1, **train}}
    for k in ("format", "version"):
        doc["model"].pop(k)
    p = tmp_path / "recipe.json"
    p.write_text(json.dumps(doc))
    return str(p)


def test_training_runs_resumes_bit_exactly_and_never_overwrites(tmp_path):
    from wmcore.train.keypoint import run_recipe

    recipe = _recipe(tmp_path, snapshot_every=3)
    a = run_recipe(["wmcore/fixtures/pusht"], str(tmp_path / "a"), recipe, episodes=16, log=lambda s: None)
    assert (tmp_path / "a" / "snapshots" / "step-000003" / "model.safetensors").is_file()

    lines = []

    def stop_after_first_predictor_validation(s: str) -> None:
        lines.append(s)
        if s.startswith("predictor step 3/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_recipe(["wmcore/fixtures/pusht"], str(tmp_path / "b"), recipe, episodes=16, log=stop_after_first_predictor_validation)
    assert not (tmp_path / "b" / "model").exists()
    b = run_recipe(["wmcore/fixtures/pusht"], str(tmp_path / "b"), recipe, episodes=16, log=lines.append)
    assert any("predictor: resuming from step 3" in s for s in lines)
    wa, wb = (load_checkpoint(d).state_dict() for d in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(WMError, match="a finished model is already there"):
        run_recipe(["wmcore/fixtures/pusht"], str(tmp_path / "a"), recipe, episodes=16, log=lambda s: None)
    # a predictor-only run on the first one's encoder
    c = run_recipe(["wmcore/fixtures/pusht"], str(tmp_path / "c"), recipe, episodes=16, encoder_from=str(a), log=lambda s: None)
    wc = load_checkpoint(c).state_dict()
    assert all(torch.equal(wa[k], wc[k]) for k in wa if k.startswith("encoder."))


def test_training_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    from wmcore.cli import main

    recipe = _recipe(tmp_path, min_episodes=100)
    out = tmp_path / "out"
    assert main(["train-keypoint", "--data", "wmcore/fixtures/pusht", "--out", str(out), "--recipe", recipe]) == 2
    assert "32 episodes; the keypoint recipe needs at least 100" in capsys.readouterr().err
    assert not out.exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"hidden": 8}, "train": {"epochs": 3}}))
    assert main(["train-keypoint", "--data", "wmcore/fixtures/pusht", "--out", str(out), "--recipe", str(bad)]) == 2
    assert "unknown: ['epochs']" in capsys.readouterr().err
    assert main(["train-keypoint", "--data", "wmcore/fixtures/pusht", "--out", str(out), "--recipe", str(tmp_path / "none.json")]) == 2
    assert "not a readable JSON file" in capsys.readouterr().err
    assert not out.exists()
