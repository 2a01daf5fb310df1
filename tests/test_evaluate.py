"""The whole evaluation on frames of the analytic world, episodes, the model registry and protocol."""

from __future__ import annotations

import pytest
import torch

from wmcore.settings import Thresholds
from wmcore.data import Episode, content_sha256, stack
from wmcore.episode import episodes_sha256
from wmcore.errors import WMError
from wmcore.evaluate import EvalConfig, evaluate, prepare, rollouts
from wmcore.models import load
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, expected_open_cosine, make_episodes
from wmcore.protocol import IncrementalWorldModel, WorldModel

FAST = Thresholds(bootstrap=200)


@pytest.fixture(scope="module")
def analytic():
    cfg = AnalyticConfig(delta=0.06)
    return cfg, AnalyticModel(cfg), make_episodes(cfg, episodes=6, steps=24, seed=2)


def test_evaluate_recovers_the_analytic_drift_from_frames(analytic):
    cfg, model, episodes = analytic
    r = evaluate(model, episodes, EvalConfig(horizon=15), FAST, spec="analytic", data_id="t")
    want = expected_open_cosine(cfg, 15)
    # frames quantise the latents to 1/255: the cosines move by far less than 0.01
    assert torch.allclose(torch.tensor(r.loops["open_loop"].cosine, dtype=torch.float64), want, atol=0.01)
    assert r.loops["open_loop"].drift_horizon is None  # cos(15 * 0.06) = 0.62 stays above 0.5
    assert r.passed, [g.message for g in r.gates if not g.passed]


def test_drift_horizon_of_the_analytic_world(analytic):
    cfg, model, episodes = analytic
    r = evaluate(model, episodes, EvalConfig(horizon=23), FAST)
    # cos(k * 0.06) < 0.5 first at k = floor(acos(0.5) / 0.06) + 1 = 18
    assert r.loops["open_loop"].drift_horizon == 18
    s = r.summary()["open_loop"]
    assert s["step1"] == r.loops["open_loop"].cosine[0] and s["drift_horizon"] == 18


def test_optional_gates_join_the_report_when_configured(analytic):
    cfg, model, episodes = analytic
    plain = evaluate(model, episodes, EvalConfig(horizon=23), FAST)
    names = {g.name for g in plain.gates}
    assert "drift_horizon" not in names and not any(n.startswith("mean_skill") for n in names)
    t = Thresholds(bootstrap=200, skill_mean_min=0.0, open_skill_mean_min=0.0, horizon_min=18)
    r = evaluate(model, episodes, EvalConfig(horizon=23), t)
    by = {g.name: g for g in r.gates}
    assert by["drift_horizon"].passed and by["drift_horizon"].measured == 18  # see the test above
    assert {"mean_skill_closed_loop_vs_copy_last", "mean_skill_open_loop_vs_copy_first"} <= set(by)
    late = evaluate(model, episodes, EvalConfig(horizon=23), Thresholds(bootstrap=200, horizon_min=19))
    assert not late.passed and not {g.name: g for g in late.gates}["drift_horizon"].passed


def test_report_metadata_and_baselines(analytic):
    cfg, model, episodes = analytic
    r = evaluate(model, episodes, EvalConfig(horizon=10, action_source="zeros", seed=7), FAST, spec="analytic:x", data_id="d")
    assert r.model["spec"] == "analytic:x" and len(r.model["fingerprint"]) == 64
    # schema 4: the sha256 of the episodes' own digests, in order (shards can compute it together)
    assert r.data["sha256"] == episodes_sha256([content_sha256(e.frames, e.actions, None) for e in episodes])
    assert r.data["sha256_of"] == "episodes"
    assert r.config["action_source"] == "zeros" and r.config["seed"] == 7 and r.config["horizon"] == 10
    assert {"torch", "transformers", "device", "dtype", "python"} <= set(r.environment)
    assert set(r.loops) == {"open_loop", "closed_loop", "copy_last", "copy_first"}
    # copy-first at step 1 is copy-last at step 1 (both predict frame 1 by frame 0)
    assert r.loops["copy_first"].cosine[0] == pytest.approx(r.loops["copy_last"].cosine[0])
    assert set(r.loops["open_loop"].skill) == {"copy_first", "copy_last"}


def test_open_loop_reads_no_ground_truth_after_the_context(analytic):
    cfg, model, episodes = analytic
    ecfg = EvalConfig(horizon=10)
    prep = prepare(model, episodes, ecfg)
    o1, c1 = rollouts(model, prep, ecfg)
    poisoned = [
        Episode(torch.cat([e.frames[:1], 255 - e.frames[1:]]), e.actions, id=e.id) for e in episodes
    ]
    prep2 = prepare(model, poisoned, ecfg)
    o2, c2 = rollouts(model, prep2, ecfg)
    assert torch.equal(o1, o2)
    assert not torch.allclose(c1, c2)  # closed loop does read them


def test_frameskip_model_sees_blocks(analytic):
    cfg = AnalyticConfig(delta=0.05, frameskip=3)
    model = AnalyticModel(cfg)
    eps = make_episodes(cfg, episodes=4, steps=31, seed=1)  # 31 recorded steps = 10 model steps
    prep = prepare(model, eps, EvalConfig(horizon=10))
    assert prep.latents.shape[1] == 11 and prep.actions.shape[-1] == 6
    r = evaluate(model, eps, EvalConfig(horizon=10), FAST)
    assert torch.allclose(torch.tensor(r.loops["open_loop"].cosine, dtype=torch.float64), expected_open_cosine(cfg, 10), atol=0.01)
    with pytest.raises(WMError, match=r"31 recorded steps = 10 model steps at frameskip 3; horizon 11 .* needs 11 model steps"):
        prepare(model, eps, EvalConfig(horizon=11))


def test_bad_input_writes_nothing(analytic, tmp_path):
    cfg, model, episodes = analytic
    with pytest.raises(WMError, match="needs"):
        evaluate(model, episodes, EvalConfig(horizon=500), FAST).save(tmp_path / "r.json")
    with pytest.raises(WMError, match="EvalConfig.horizon: expected an integer >= 1, found 0"):
        evaluate(model, episodes, EvalConfig(horizon=0), FAST).save(tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


# --- episodes ------------------------------------------------------------------------------------


def frames(t=3, h=4, w=4):
    return torch.zeros(t, h, w, 3, dtype=torch.uint8)


def test_episode_validation():
    Episode(frames(), torch.zeros(2, 2))
    with pytest.raises(WMError, match=r"3 frames need 2 actions .* found 4"):
        Episode(frames(), torch.zeros(4, 2), id="ep7")
    with pytest.raises(WMError, match=r"frames must be uint8 \[T\+1, H, W, 3\], found \(3, 4, 4, 3\) torch.float32"):
        Episode(frames().float(), torch.zeros(2, 2))
    with pytest.raises(WMError, match=r"found \(4, 4, 3\)"):
        Episode(frames()[0], torch.zeros(2, 2))
    with pytest.raises(WMError, match="actions contain NaN"):
        Episode(frames(), torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(WMError, match=r"states must be \[T\+1=3, S\], found \(2, 5\)"):
        Episode(frames(), torch.zeros(2, 2), states=torch.zeros(2, 5))
    with pytest.raises(WMError, match="actions must be float"):
        Episode(frames(), torch.zeros(2, 2, dtype=torch.long))


def test_stack_cuts_to_common_length_and_checks_compatibility():
    a = Episode(frames(5), torch.ones(4, 2), id="a")
    b = Episode(frames(3), torch.ones(2, 2), id="b")
    s = stack([a, b])
    assert s.frames.shape == (2, 3, 4, 4, 3) and s.actions.shape == (2, 2, 2) and s.ids == ["a", "b"]
    with pytest.raises(WMError, match=r"episodes \['b'\] have fewer than the 4 steps"):
        stack([a, b], steps=4)
    with pytest.raises(WMError, match="different frame sizes"):
        stack([a, Episode(frames(3, 8, 8), torch.ones(2, 2))])
    with pytest.raises(WMError, match="different action dimensions"):
        stack([a, Episode(frames(3), torch.ones(2, 7))])
    with pytest.raises(WMError, match="data set is empty"):
        stack([])


def test_content_hash_sees_every_change():
    x = torch.zeros(2, 3)
    h = content_sha256(x, None)
    assert h == content_sha256(x.clone(), None)
    y = x.clone()
    y[1, 2] = 1e-7
    assert h != content_sha256(y, None)
    assert h != content_sha256(x.double(), None) and h != content_sha256(x.view(3, 2), None)
    assert h != content_sha256(x, torch.zeros(1))


# --- registry and protocol -----------------------------------------------------------------------


def test_registry_and_protocol():
    m = load("analytic")
    assert isinstance(m, WorldModel) and isinstance(m, IncrementalWorldModel)
    m2 = load("analytic:delta=0.2,frameskip=5")
    assert m2.cfg.delta == 0.2 and m2.frameskip == 5 and m2.action_dim == 10
    assert m.fingerprint() != m2.fingerprint() and m.fingerprint() == load("analytic").fingerprint()
    with pytest.raises(WMError, match=r"unknown model spec 'nope:x'.*'analytic'"):
        load("nope:x")
    with pytest.raises(WMError, match="key=value with key one of"):
        load("analytic:speed=3")
    with pytest.raises(WMError, match="expected a number"):
        load("analytic:delta=fast")
