"""PushT: the committed evaluation set (always), the exploration policy (pure numpy, always) and the
generator (only where gym-pusht, the [sim] extra, is installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wmcore.data import stack
from wmcore.data.episodes import load_episodes, read_index
from wmcore.data.pusht import (
    ACTION_DIM,
    STATE_DIM,
    WORKSPACE,
    ExplorationPolicy,
    PolicyConfig,
    block_moved,
    make_env,
)
from wmcore.errors import WMError

FIXTURE = Path(__file__).resolve().parents[1] / "wmcore" / "fixtures" / "pusht"
FRAMESKIP = 5


# -- the committed evaluation set: must never skip ------------------------------------------------


@pytest.fixture(scope="module")
def fixture_set():
    return read_index(FIXTURE), load_episodes(FIXTURE)


def test_fixture_count_lengths_and_size(fixture_set):
    doc, eps = fixture_set
    assert len(eps) >= 16 and len(eps) == len(doc["episodes"])
    assert all(e.steps >= 160 for e in eps), "need >= 160 environment steps (32 steps at frameskip 5)"
    assert all(e.steps // FRAMESKIP >= 32 for e in eps)
    total = sum(p.stat().st_size for p in FIXTURE.iterdir())
    assert total <= 8 * 2**20, f"wmcore/fixtures/pusht is {total / 2**20:.2f} MiB, the limit is 8 MiB"
    assert not [p.name for p in FIXTURE.iterdir() if p.name.startswith(".")], "temporary files committed"


def test_fixture_shapes_and_semantics(fixture_set):
    doc, eps = fixture_set
    assert doc["frameskip"] == FRAMESKIP and doc["fps"] == 10.0
    assert doc["actions"]["dim"] == ACTION_DIM and doc["states"]["dim"] == STATE_DIM
    size = doc["height"]
    for e in eps:
        assert e.frames.shape == (e.steps + 1, size, size, 3) and e.frames.dtype == torch.uint8
        assert e.actions.shape == (e.steps, 2) and e.states.shape == (e.steps + 1, 5)
        assert float(e.actions.min()) >= 0 and float(e.actions.max()) <= WORKSPACE
        assert float(e.states[:, 4].min()) >= 0 and float(e.states[:, 4].max()) < 2 * np.pi
    batch = stack(eps)
    assert batch.frames.shape[0] == len(eps)


def test_fixture_seeds_are_held_out(fixture_set):
    doc, _ = fixture_set
    seeds = [e["seed"] for e in doc["episodes"]]
    assert len(set(seeds)) == len(seeds)
    assert min(seeds) >= 10_000, "training sets are generated from seeds below 10000"


def test_fixture_block_moves_often(fixture_set):
    _, eps = fixture_set
    moved = np.concatenate([block_moved(e.states.numpy()) for e in eps])
    assert 0.2 < moved.mean() < 0.9, f"block moved in {moved.mean():.2f} of the steps"
    assert all(block_moved(e.states.numpy()).any() for e in eps)


def test_fixture_video_matches_states(fixture_set):
    # The agent (blue disc) is drawn where states say it is: video and npz belong together.
    doc, eps = fixture_set
    size = doc["height"]
    for e in eps[:8]:
        for t in range(0, e.steps + 1, 25):
            x, y = (e.states[t, :2].numpy() * size / WORKSPACE).astype(int)
            r, g, b = e.frames[t, y, x].int().tolist()
            assert b > r + 60 and b > g + 40, f"{e.id} frame {t}: no agent at ({x}, {y}): rgb {r, g, b}"


# -- the policy: pure numpy, no simulator ---------------------------------------------------------


def _t_outline(com: np.ndarray) -> np.ndarray:
    # An upright T: bar 120 x 30 on top, stem 30 x 90 below, centre of mass 45 below the top edge.
    top = com - [0, 45]
    bar = [[-60, 0], [60, 0], [60, 30], [-60, 30]]
    stem = [[-15, 30], [-15, 120], [15, 120], [15, 30]]
    return top + np.array(bar + stem, dtype=float)


@pytest.mark.parametrize("com", [(256.0, 256.0), (60.0, 60.0), (470.0, 250.0)])
def test_policy_smooth_and_in_bounds(com):
    cfg = PolicyConfig()
    com = np.array(com)
    pi = ExplorationPolicy(np.random.default_rng(0), start=np.array([100.0, 400.0]), config=cfg)
    acts = np.stack([pi.act(com, _t_outline(com)) for _ in range(400)])
    assert acts.min() >= cfg.margin and acts.max() <= WORKSPACE - cfg.margin
    jumps = np.hypot(*np.diff(acts, axis=0).T)
    assert jumps.max() <= cfg.max_speed + 1e-9, "consecutive targets must not jump"
    assert np.hypot(*(acts[0] - [100.0, 400.0])) <= cfg.max_speed
    assert acts.std(0).min() > 20, "the target should explore, not sit still"


def test_policy_heads_for_the_block():
    com = np.array([256.0, 256.0])
    pi = ExplorationPolicy(np.random.default_rng(1), start=np.array([60.0, 60.0]))
    acts = np.stack([pi.act(com, _t_outline(com)) for _ in range(600)])
    near = np.hypot(*(acts - com).T) < 90
    assert near.mean() > 0.2, f"the target came near the block in only {near.mean():.2f} of the steps"


def test_policy_seeded():
    com = np.array([200.0, 300.0])
    runs = [
        np.stack([p.act(com, _t_outline(com)) for _ in range(50)])
        for p in (ExplorationPolicy(np.random.default_rng(s), np.array([256.0, 100.0])) for s in (5, 5, 6))
    ]
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_block_moved():
    s = np.zeros((4, 5))
    s[2, 2] = 1.0  # moved in transition 1 (1 -> 2)
    s[3, 2] = 1.0
    s[3, 4] = 2 * np.pi - 1e-4  # a wrap of the angle is no movement
    assert block_moved(s).tolist() == [False, True, False]


def test_bad_render_size():
    with pytest.raises(WMError, match="even number of pixels"):
        make_env(95)


def test_missing_simulator_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "gym_pusht", None)  # import gym_pusht now raises ImportError
    with pytest.raises(WMError, match="--no-deps gym-pusht"):
        make_env(64)


def test_cli_help(capsys):
    from wmcore.cli import main

    assert main(["make-fixtures", "pusht", "--help"]) == 0 and "--episodes" in capsys.readouterr().out


# -- the simulator (the [sim] extra) --------------------------------------------------------------


@pytest.fixture(scope="module")
def sim():
    pytest.importorskip("gym_pusht")
    from wmcore.data.pusht import rollout

    return rollout


def test_rollout_shapes_and_bounds(sim):
    frames, actions, states = sim(0, 40, size=64)
    assert frames.shape == (41, 64, 64, 3) and frames.dtype == np.uint8
    assert actions.shape == (40, 2) and actions.dtype == np.float32
    assert states.shape == (41, 5) and states.dtype == np.float32
    margin = PolicyConfig().margin
    assert actions.min() >= margin and actions.max() <= WORKSPACE - margin
    assert np.hypot(*np.diff(actions, axis=0).T).max() <= PolicyConfig().max_speed + 1e-3


def test_rollout_deterministic(sim):
    a = sim(3, 30, size=64)
    b = sim(3, 30, size=64)
    c = sim(4, 30, size=64)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[2][0], c[2][0])


def test_block_moves_and_agent_follows(sim):
    moved = []
    for seed in (0, 1):
        frames, actions, states = sim(seed, 40, size=64)
        moved.append(block_moved(states))
        # the PD-controlled agent trails its target by a step or two, never far
        assert np.hypot(*(states[1:, :2] - actions).T).mean() < 40
    assert np.concatenate(moved).sum() >= 3, "the policy should push the block within 40 steps"


def test_frames_show_the_agent_where_the_state_says(sim):
    frames, _, states = sim(2, 20, size=96)
    for t in (0, 10, 20):
        x, y = (states[t, :2] * 96 / WORKSPACE).astype(int)
        r, g, b = frames[t, y, x].astype(int)
        assert b > r + 60, f"frame {t}: no agent at ({x}, {y})"


def test_generate_round_trip(sim, tmp_path, capsys):
    from wmcore.cli import main
    from wmcore.data.pusht import generate

    out = tmp_path / "set"
    doc = generate(out, episodes=2, steps=20, seed=7, render_size=64, progress=False)
    assert [e["seed"] for e in doc["episodes"]] == [7, 8]
    assert doc["summary"]["episodes"] == 2 and doc["video"]["codec"] == "h264"
    assert doc["video"]["mean_abs_error"] < 2.0
    eps = load_episodes(out)
    _, actions, states = sim(8, 20, size=64)
    assert torch.equal(eps[1].actions, torch.from_numpy(actions))
    assert torch.equal(eps[1].states, torch.from_numpy(states))
    assert eps[1].frames.shape == (21, 64, 64, 3)
    with pytest.raises(WMError, match="not empty"):
        generate(out, episodes=1, steps=5, seed=0, progress=False)
    pusht = ["make-fixtures", "pusht"]
    assert main([*pusht, "--out", str(out), "--episodes", "1", "--steps", "5", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([*pusht, "--out", str(tmp_path / "x"), "--steps", "0", "--quiet"]) == 2


def test_recorded_actions_replay_to_the_recorded_states(sim):
    # The stored float32 actions are exactly what the environment executed.
    from wmcore.data.pusht import env_state

    _, actions, states = sim(5, 30, size=64)
    env = make_env(64)
    env.reset(seed=5)
    replay = [env_state(env)]
    for a in actions:
        env.step(a.astype(np.float64))
        replay.append(env_state(env))
    env.close()
    assert np.array_equal(np.array(replay, dtype=np.float32), states)


def test_generator_reproduces_the_committed_set(sim, fixture_set):
    # The committed set is what this code makes with the recorded command (first episode checked).
    from wmcore.data.pusht import simulator_versions

    doc, eps = fixture_set
    if simulator_versions() != doc["generator"]["versions"]:
        pytest.skip(f"simulator versions {simulator_versions()} differ from the set's {doc['generator']['versions']}")
    _, actions, states = sim(doc["episodes"][0]["seed"], doc["steps"], size=doc["height"])
    assert np.array_equal(actions, eps[0].actions.numpy())
    assert np.array_equal(states, eps[0].states.numpy())
