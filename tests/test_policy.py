"""World-model-conditioned policies (wmcore.control.policy): the known answer of a world whose goal
frame reveals the action, each variant's mechanics, files, the closed loop in PushT, the command
line and bad input.

The position world below is a test world, not a stand-in for our code: its frames show a point, its
latent is the point, its action is where the point goes next; so with a goal one step ahead the
recorded action is a linear function of the goal latent, and a working pipeline must learn it.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from wmcore.control.policy import (
    PolicyConfig, PolicyController, PolicyData, act, embed_episodes, load_policy, save_policy, train_policy,
)
from wmcore.episode import Episode
from wmcore.errors import WMError


class PositionWorld:
    """Frames ``[8, 8, 3]`` uint8 showing a point (x, y) in [0, 1]^2 as the red and green levels; the
    latent ``[1, 2]`` is the point; the action is the next point (clamped to the square)."""

    name = "position-world"
    frameskip = 1
    action_dim = 2
    tokens_per_frame = 1
    max_context = None

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5 or tuple(frames.shape[2:]) != (8, 8, 3):
            raise ValueError(f"frames: expected [B, T, 8, 8, 3], found {tuple(frames.shape)}")
        return frames[..., :2].float().mean((2, 3))[:, :, None] / 255

    def predict(self, context, actions, states=None):
        return actions[:, -1:].clamp(0, 1).float()

    def fingerprint(self) -> str:
        return "position-world"


def position_episodes(n: int = 24, steps: int = 40, seed: int = 0) -> list[Episode]:
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = [g.uniform(0.2, 0.8, 2)]
        acts = []
        for _ in range(steps):
            acts.append(np.clip(p[-1] + g.normal(0, 0.08, 2), 0, 1))
            p.append(acts[-1])
        pts = np.round(np.stack(p) * 255) / 255  # what the frames can show
        frames = np.zeros((steps + 1, 8, 8, 3), np.uint8)
        frames[..., 0] = np.round(pts[:, 0] * 255)[:, None, None]
        frames[..., 1] = np.round(pts[:, 1] * 255)[:, None, None]
        out.append(Episode(torch.from_numpy(frames), torch.tensor(np.stack(acts), dtype=torch.float32),
                           id=f"pos-{i:03d}"))
    return out


WORLD = PositionWorld()
FAST = PolicyConfig(goal_steps=(1,), steps=300, batch=128, val_episodes=4, val_every=100, width=64, lr=3e-3)


@pytest.fixture(scope="module")
def data() -> PolicyData:
    return embed_episodes(WORLD, position_episodes())


def test_embedding_keeps_every_frame_and_the_recorded_actions(data):
    assert data.z.shape == (24, 41, 1, 2) and data.actions.shape == (24, 40, 2)
    torch.testing.assert_close(data.z[:, 1:, 0], data.actions, atol=1 / 255, rtol=0)  # the point goes where told
    assert data.blocks.shape == (24, 40, 2)


def test_gcbc_learns_the_action_the_goal_reveals_and_not_one_it_does_not(data):
    """Goal one step ahead: the action is the goal's point, so the held-out error must fall near 0.
    The same actions shuffled across episodes (the frames no longer show them) stay unpredictable."""
    _, hist = train_policy(WORLD, data, FAST)
    assert hist[0]["step"] == 0 and hist[0]["val_action_mse"] > 0.5  # untrained
    assert hist[-1]["val_action_mse"] < 0.05, hist
    g = torch.Generator().manual_seed(0)
    shuffled = dataclasses.replace(data, actions=data.actions[torch.randperm(24, generator=g)])
    _, hist_s = train_policy(WORLD, shuffled, FAST)
    assert hist_s[-1]["val_action_mse"] > 0.5, hist_s


def test_imagined_variant_acts_through_the_world_model(data):
    net, hist = train_policy(WORLD, data, dataclasses.replace(FAST, variant="imagined"))
    assert hist[-1]["val_action_mse"] < 0.1, hist
    z_t, z_g, prev = data.z[:4, 5], data.z[:4, 6], data.actions[:4, 4]
    a = act(net, WORLD, z_t, z_g, prev)
    assert a.shape == (4, 2)

    class Frozen(PositionWorld):  # another world model: imagines that nothing moves
        def predict(self, context, actions, states=None):
            return context[:, -1:].float()

    assert not torch.allclose(act(net, Frozen(), z_t, z_g, prev), a)  # the imagined latent is read
    net_g, _ = train_policy(WORLD, data, FAST)
    torch.testing.assert_close(act(net_g, Frozen(), z_t, z_g, prev), act(net_g, WORLD, z_t, z_g, prev))  # gcbc: not


def test_aux_head_learns_the_world_models_prediction(data):
    net, hist = train_policy(WORLD, data, dataclasses.replace(FAST, variant="aux", aux_weight=0.5))
    assert data.teacher is not None and data.teacher.shape == (24, 40, 1, 2)
    torch.testing.assert_close(data.teacher[:, :, 0], data.actions, atol=1e-6, rtol=0)  # this world's prediction
    assert hist[0]["step"] == 0 and hist[0]["aux"] is None  # before training
    assert hist[-1]["aux"] < 0.2 * hist[1]["aux"], hist
    assert all(h["aux"] is None for h in train_policy(WORLD, data, FAST)[1])


def test_same_seed_same_policy_other_seed_other_policy(data):
    a, _ = train_policy(WORLD, data, dataclasses.replace(FAST, steps=20))
    b, _ = train_policy(WORLD, data, dataclasses.replace(FAST, steps=20))
    c, _ = train_policy(WORLD, data, dataclasses.replace(FAST, steps=20, seed=1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_saved_policy_loads_to_the_same_actions_and_is_never_overwritten(data, tmp_path):
    net, hist = train_policy(WORLD, data, dataclasses.replace(FAST, variant="imagined", steps=20))
    save_policy(net, tmp_path / "p", {"history": hist})
    back, doc = load_policy(tmp_path / "p")
    assert doc["config"]["variant"] == "imagined" and doc["history"] == json.loads(json.dumps(hist))
    z_t, z_g, prev = data.z[:3, 2], data.z[:3, 3], data.actions[:3, 1]
    torch.testing.assert_close(act(back, WORLD, z_t, z_g, prev), act(net, WORLD, z_t, z_g, prev))
    with pytest.raises(WMError, match="already there"):
        save_policy(net, tmp_path / "p", {})


def test_broken_policy_files_are_clear_errors(data, tmp_path):
    with pytest.raises(WMError, match="not a policy directory"):
        load_policy(tmp_path)
    net, _ = train_policy(WORLD, data, dataclasses.replace(FAST, steps=2))
    save_policy(net, tmp_path / "p", {})
    (tmp_path / "p" / "policy.safetensors").write_bytes(b"garbage")
    with pytest.raises(WMError, match="broken policy"):
        load_policy(tmp_path / "p")


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan"), "0.3"])
def test_lambda_outside_zero_one_is_refused(lam):
    with pytest.raises(WMError, match=r"must be a number in \[0, 1\]"):
        PolicyConfig(variant="aux", aux_weight=lam)


@pytest.mark.parametrize("change, says", [
    ({"variant": "dreamer"}, "expected one of gcbc, imagined, aux"),
    ({"aux_weight": 0.25}, "only the aux variant"),
    ({"goal_steps": ()}, "goal_steps"),
    ({"steps": 0}, "steps"),
])
def test_bad_policy_config(change, says):
    with pytest.raises(WMError, match=says):
        PolicyConfig(**change)


def test_data_without_actions_is_refused():
    eps = [dataclasses.replace(e, actions=torch.zeros(40, 0)) for e in position_episodes(2)]
    with pytest.raises(WMError, match="have no actions"):
        embed_episodes(WORLD, eps)
    with pytest.raises(WMError, match="do not fit model"):
        embed_episodes(WORLD, [dataclasses.replace(e, actions=torch.zeros(40, 3)) for e in position_episodes(2)])


def test_a_model_whose_encoder_cannot_embed_the_frames_is_refused():
    from wmcore.models.analytic import AnalyticModel

    with pytest.raises(WMError, match="cannot embed"):
        embed_episodes(AnalyticModel(), position_episodes(2))


# --------------------------------------------------------------------------------------------------
# PushT: the closed loop, the command line, replay


@pytest.fixture(scope="module")
def pusht_train(tmp_path_factory):
    from wmcore.data.pusht import generate

    d = tmp_path_factory.mktemp("pusht") / "train"
    generate(d, episodes=6, steps=60, seed=0, progress=False)
    return d


def test_policy_train_and_evaluate_on_pusht_write_a_replayable_report(pusht_train, tmp_path, capsys):
    from wmcore.cli import main

    out = tmp_path / "p"
    assert main(["policy", "train", "--model", "pusht-lewm", "--train-data", str(pusht_train), "--steps", "30", "--val-episodes", "2",
                 "--variant", "aux", "--aux-weight", "0.25", "--out", str(out)]) == 0
    assert (out / "policy.safetensors").exists() and (out / "policy-curves.png").stat().st_size > 10_000
    doc = json.loads((out / "policy.json").read_text())
    assert doc["config"]["aux_weight"] == 0.25 and doc["model"]["name"] == "pusht-lewm"
    ev = tmp_path / "e"
    assert main(["policy", "evaluate", "--model", "pusht-lewm", "--policy", str(out), "--limit", "2",
                 "--out", str(ev)]) == 0
    report = json.loads((ev / "control-policy-aux0.25-pusht-lewm.json").read_text())
    assert report["controller"]["kind"] == "policy" and len(report["results"]) == 2
    assert all(len(r["actions"]) > 0 for r in report["results"])
    assert main(["replay", str(ev / "control-policy-aux0.25-pusht-lewm.json")]) == 0
    assert "all 2 tasks reproduced" in capsys.readouterr().out
    # the policy belongs to pusht-lewm's latents: another model is refused
    assert main(["policy", "evaluate", "--model", "pusht-ac-tiny", "--policy", str(out), "--limit", "1",
                 "--out", str(tmp_path / "x")]) == 2
    assert "trained on the latents of model 'pusht-lewm'" in capsys.readouterr().err


def test_policy_evaluate_without_a_policy_trains_the_variant_it_names(pusht_train, tmp_path):
    from wmcore.cli import main

    assert main(["policy", "evaluate", "--model", "pusht-lewm", "--train-data", str(pusht_train), "--steps", "10", "--val-episodes", "2",
                 "--limit", "1", "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "policy-gcbc" / "policy.json").exists()
    assert (tmp_path / "e" / "control-policy-gcbc-pusht-lewm.json").exists()


@pytest.mark.parametrize("args, says", [
    (["train", "--model", "pusht-lewm", "--variant", "aux", "--aux-weight", "1.5"], "must be a number in [0, 1]"),
    (["train", "--model", "pusht-lewm", "--train-data", "no/such/dir"], "make pusht-data"),
    (["evaluate", "--model", "pusht-lewm", "--policy", "no/such/dir"], "not a policy directory"),
    (["train", "--model", "analytic", "--train-data", "TRAIN"], "cannot embed"),
])
def test_policy_command_bad_input_exits_2(pusht_train, tmp_path, capsys, args, says):
    from wmcore.cli import main

    args = [str(pusht_train) if a == "TRAIN" else a for a in args]
    assert main(["policy", *args, "--out", str(tmp_path / "o")]) == 2
    assert says in capsys.readouterr().err


def test_controller_output_is_a_clipped_chunk_of_frameskip_actions(data):
    net, _ = train_policy(WORLD, data, dataclasses.replace(FAST, steps=5))
    ctrl = PolicyController(net, WORLD, low=[0.25, 0.25], high=[0.5, 0.5])
    frames = position_episodes(1)[0].frames
    ctrl.reset(None, frames[0].numpy(), frames[5].numpy())
    chunk = ctrl.act(frames[0].numpy(), np.zeros(5), None, np.array([0.9, 0.9]))
    assert chunk.shape == (1, 2) and (chunk >= 0.25).all() and (chunk <= 0.5).all()
