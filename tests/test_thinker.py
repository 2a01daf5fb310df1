"""The ThinkJEPA-style thinker model (wmcore.models.thinker): K = 1 is the base path bit for bit; FiLM
gates at 0 reproduce the base predictor at every K; the thinker reads exactly the sparse past frames
its budget allows; precomputed thinker features of the wrong shape are refused; the ablations; the
training is seeded; planners give it the frames they saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wmcore.cli import main
from wmcore.errors import WMError
from wmcore.models import load
from wmcore.models.keypoint import KeypointModel, KeypointWorldModel, tiny_config
from wmcore.models.keypoint import save_pretrained as save_keypoint
from wmcore.models.thinker import ThinkerConfig, ThinkerModel, ThinkerWorldModel, save_pretrained
from wmcore.rollout import open_loop
from wmcore.settings import apply_think
from wmcore.train.keypoint import KeypointTrainConfig
from wmcore.train.thinker import train_thinker

PUSHT = str(Path(__file__).resolve().parents[1] / "wmcore" / "fixtures" / "pusht")
pytest_plugins = ["pytester"]


def _thinker(seed: int = 0, gate: float | None = 0.8, past: bool = True, **kw) -> ThinkerModel:
    torch.manual_seed(seed)
    base = KeypointModel(tiny_config(image_size=32))
    for p in base.predictor.mlp[-1].parameters():  # the base predictor starts at zero: give it a motion
        torch.nn.init.normal_(p, std=0.05)
    fields = dict(name="t-tiny", stride=2, max_think=4, train_max_think=4, layers=2, width=8, fuse_hidden=16, past=past)
    m = ThinkerModel(ThinkerConfig(base=base.cfg.to_json(), **{**fields, **kw}))
    m.base.load_state_dict(base.state_dict())
    if gate is not None:
        with torch.no_grad():
            m.head.gate.fill_(gate)
    return m.eval()


def _inputs(m: ThinkerModel, b: int = 5, t: int | None = None, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    t = t or m.cfg.max_context
    z = torch.randn(b, t, 1, m.base.cfg.latent_dim, generator=g) * 0.3
    a = torch.rand(b, t, m.base.cfg.action_dim, generator=g) * 512
    return z, a


def test_k1_is_the_base_path_and_the_thinker_acts_above_it():
    m = _thinker()
    wm, base = ThinkerWorldModel(m), KeypointWorldModel(m.base)
    assert wm.max_context == 1 + 2 * 3 and wm.max_think == 4 and wm.think == 1
    z, a = _inputs(m)
    assert torch.equal(wm.predict(z, a), base.predict(z, a))
    for k in (2, 3, 4):
        wm.think = k
        assert not torch.equal(wm.predict(z, a), base.predict(z, a)), k


def test_zero_gates_reproduce_the_base_predictor_at_every_budget():
    m = _thinker(gate=None)  # as built: gates 0, the thinker's and the fusion's weights random
    assert torch.equal(m.head.gate.detach(), torch.zeros(m.base.cfg.layers))
    wm, base = ThinkerWorldModel(m), KeypointWorldModel(m.base)
    z, a = _inputs(m)
    for k in (1, 2, 3, 4):
        wm.think = k
        assert torch.equal(wm.predict(z, a), base.predict(z, a)), k
        assert torch.equal(open_loop(wm, z[:, :1], a, 6), open_loop(base, z[:, :1], a, 6)), k


def test_the_thinker_reads_exactly_the_sparse_frames_of_its_budget():
    m = _thinker()
    wm = ThinkerWorldModel(m)
    z, a = _inputs(m)  # 7 frames: the current one is index 6; stride 2 -> K = 2 reads 4, K = 3 also 2, K = 4 also 0
    for k, read in ((2, {4}), (3, {4, 2}), (4, {4, 2, 0})):
        wm.think = k
        ref = wm.predict(z, a)
        for i in range(6):
            z2 = z.clone()
            z2[:, i] += 0.2
            assert torch.equal(wm.predict(z2, a), ref) == (i not in read), (k, i)
    wm.think = 4  # frames a short context does not hold are masked out, not read as zeros or repeated
    short = wm.predict(z[:, -3:], a[:, -3:])
    wm.think = 2  # (equal up to float rounding: the thinker's matrices have other shapes)
    assert torch.allclose(short, wm.predict(z[:, -3:], a[:, -3:]), atol=1e-6, rtol=0)
    wm.think = 4
    with pytest.raises(ValueError, match="at most 7"):
        wm.predict(torch.cat([z, z], 1), torch.cat([a, a], 1))


def test_the_control_reads_the_current_frame_only_and_has_no_budget():
    m = _thinker(past=False)
    wm = ThinkerWorldModel(m)
    assert wm.max_context == 1 and not hasattr(wm, "think")
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in _thinker().parameters())
    z, a = _inputs(m, t=1)
    assert not torch.equal(wm.predict(z, a), KeypointWorldModel(m.base).predict(z, a))
    with pytest.raises(WMError, match="cannot think"):
        apply_think(wm, 2)


def test_thinker_features_of_the_wrong_shape_are_refused():
    m = _thinker()
    wm = ThinkerWorldModel(m)
    z, a = _inputs(m, b=3)
    for bad, words in ((torch.zeros(3, 2, 8), "float tensor"), (torch.zeros(3, 3, 1, 8), "L=2"),
                       (torch.zeros(3, 2, 1, 9), "F=8"), (torch.zeros(3, 2, 0, 8), "T >= 1"),
                       (torch.zeros(3, 2, 1, 8, dtype=torch.long), "float"), (np.zeros((3, 2, 1, 8)), "ndarray"),
                       (torch.full((3, 2, 1, 8), float("nan")), "NaN")):
        with pytest.raises(WMError, match=words):
            wm.use_features(bad)
    wm.think = 2
    feats = torch.randn(3, 2, 5, 8, generator=torch.Generator().manual_seed(0))
    wm.use_features(feats)
    own = wm.predict(z, a)
    wm.use_features(feats * 2)
    assert not torch.equal(wm.predict(z, a), own)  # the external features are what the fusion reads
    wm.use_features(torch.zeros(4, 2, 1, 8))
    with pytest.raises(WMError, match="batch of 4"):
        wm.predict(z, a)
    wm.use_features(None)
    wm.think = 1
    assert torch.equal(wm.predict(z, a), KeypointWorldModel(m.base).predict(z, a))


def test_the_ablations_zero_and_shuffle_the_thinking():
    m = _thinker()
    wm = ThinkerWorldModel(m)
    wm.think = 4
    z, a = _inputs(m, b=4)
    ref = wm.predict(z, a)
    wm.ablation = "zero"
    zeroed = wm.predict(z, a)
    assert not torch.equal(zeroed, ref)
    wm.use_features(torch.randn(4, 2, 3, 8))  # the zeroed features are the same whatever the thinker said
    assert torch.equal(wm.predict(z, a), zeroed)
    wm.use_features(None)
    wm.ablation = "shuffle"
    shuffled = wm.predict(z, a)
    assert not torch.equal(shuffled, ref)
    feats, mask = m.features(z[:, :, 0], 4)  # a full context: every frame the budget asks for is there
    assert bool(mask.all())
    wm.ablation = None
    wm.use_features(feats.roll(1, 0))  # episode b conditioned on episode b - 1's thinking
    assert torch.equal(wm.predict(z, a), shuffled)
    wm.use_features(None)
    wm.ablation = "noise"
    with pytest.raises(WMError, match="ablation"):
        wm.predict(z, a)


def test_a_thinker_checkpoint_round_trips_and_bad_budgets_exit_2(tmp_path, capsys):
    m = _thinker()
    d = save_pretrained(m, tmp_path / "t")
    wm = load(f"thinker:{d}")
    assert wm.fingerprint() == ThinkerWorldModel(m).fingerprint() and wm.max_think == 4
    z, a = _inputs(m)
    wm.think = 3
    ref = ThinkerWorldModel(m)
    ref.think = 3
    assert torch.equal(wm.predict(z, a), ref.predict(z, a))
    out = tmp_path / "out"
    for k, words in (("5", "1..4"), ("0", "--think")):
        assert main(["evaluate", "--model", f"thinker:{d}", "--data", PUSHT, "--think", k, "--out", str(out)]) == 2
        assert words in capsys.readouterr().err
        assert not out.exists()
    cfg = json.loads((d / "config.json").read_text())
    cfg["train_max_think"] = 9
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WMError, match="train_max_think"):
        load(f"thinker:{d}")
    with pytest.raises(WMError, match="thinker:DIR"):
        load("thinker")


def test_training_is_seeded_and_opens_the_gates(tmp_path):
    torch.manual_seed(0)
    base = KeypointModel(tiny_config(image_size=32))
    for p in base.predictor.mlp[-1].parameters():  # a predictor whose hidden blocks reach its output
        torch.nn.init.normal_(p, std=0.05)
    save_keypoint(base, tmp_path / "base")
    cfg = KeypointTrainConfig(predictor_steps=4, predictor_batch=8, val_episodes=2, min_episodes=4, val_every=2, warmup=1)
    fields = {"name": "t", "stride": 1, "max_think": 3, "train_max_think": 3, "layers": 1, "width": 8, "fuse_hidden": 8}
    lines: list[str] = []
    dirs = [train_thinker([PUSHT], str(tmp_path / f"out{i}"), str(tmp_path / "base"), fields, cfg, log=lines.append,
                          limit=6) for i in (0, 1)]
    a, b = (load(f"thinker:{d}") for d in dirs)
    assert a.fingerprint() == b.fingerprint()  # same seed, same weights
    assert float(a.full.head.gate.detach().abs().max()) > 0 and any("val_h2_k2" in x for x in lines)
    with pytest.raises(WMError, match="already there"):
        train_thinker([PUSHT], str(tmp_path / "out0"), str(tmp_path / "base"), fields, cfg, limit=6)


def test_train_thinker_bad_input_exits_2(tmp_path, capsys):
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "pusht-thinker.json"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"depth": 3}}))
    out = tmp_path / "out"
    for argv, words in (
        (["--base", "pusht-lewm", "--recipe", str(recipe)], "keypoint model"),
        (["--base", str(tmp_path / "none"), "--recipe", str(recipe)], "no such keypoint model directory"),
        (["--recipe", str(bad)], "\"model\" must be an object of"),
    ):
        assert main(["train-thinker", "--data", PUSHT, "--out", str(out), *argv]) == 2, argv
        assert words in capsys.readouterr().err, argv
        assert not out.exists()


class _Seen:
    """A fake simulator's frames: frame i is filled with i (so its latent says which frame it was)."""

    @staticmethod
    def frame(i: int) -> np.ndarray:
        return np.full((32, 32, 3), i, dtype=np.uint8)


def test_planners_give_a_history_model_the_frames_they_saw():
    from wmcore.control.planners import LatentGoalCost

    m = _thinker()
    wm = ThinkerWorldModel(m)
    wm.think = 4
    k = wm.frameskip
    cost = LatentGoalCost(wm, _Seen.frame(200), device="cpu")
    assert cost.history == wm.max_context
    cost.observe(_Seen.frame(0))
    assert cost.z0.shape[1] == 1
    executed = np.random.default_rng(0).uniform(0, 512, (2 * k, 2)).astype(np.float32)
    seen = [_Seen.frame(i + 1) for i in range(2 * k)]
    cost.observe(seen[-1], executed=executed, seen=seen)
    frames = np.stack([_Seen.frame(0), seen[k - 1], seen[-1]])
    want = wm.encode(torch.as_tensor(frames)[None])
    assert torch.allclose(cost.z0, want, atol=1e-5) and torch.equal(cost.past_blocks, torch.as_tensor(executed).reshape(2, k * 2))
    cand = np.random.default_rng(1).uniform(0, 512, (3, 2 * k, 2))
    blocks = torch.as_tensor(cand, dtype=torch.float32).reshape(3, 2, 2 * k)
    z = open_loop(wm, cost.z0.expand(3, -1, -1, -1), torch.cat([cost.past_blocks[None].expand(3, -1, -1), blocks], 1), 2)
    assert np.allclose(cost.terms(cand)["latent"], (z.float() - cost.z_goal[:, None]).pow(2).mean((-2, -1))[:, -1].double().numpy())
    cost.observe(_Seen.frame(9), executed=executed[:3], seen=seen[:3])  # not whole model steps: start again
    assert cost.z0.shape[1] == 1 and len(cost.past_blocks) == 0
    plain = LatentGoalCost(KeypointWorldModel(m.base), _Seen.frame(200), device="cpu")
    plain.observe(_Seen.frame(0))
    plain.observe(seen[-1], executed=executed, seen=seen)
    assert plain.history == 1 and plain.z0.shape[1] == 1  # a one-frame model plans as before


def test_a_thinker_plans_in_the_simulator_from_what_it_saw_and_the_plan_replays():
    from wmcore.control.planners import ActionPrior, CEMConfig
    from wmcore.control.run import WorldModelCEM, replay, run_task
    from wmcore.control.sim.pusht import PushTSim
    from wmcore.control.tasks import build
    from wmcore.data import load as load_data

    episodes = load_data(PUSHT, limit=2)
    task = build(episodes, data_id="pusht").tasks[0]
    wm = ThinkerWorldModel(_thinker())
    wm.think = 4
    cfg = CEMConfig(samples=8, elites=2, iterations=1, horizon=10, execute=5)
    ctrl = WorldModelCEM(wm, ActionPrior.from_actions([e.actions for e in episodes]), cfg, fidelity=False)
    with PushTSim() as sim:
        res = run_task(sim, task, ctrl)
        ok, final = replay(task.start, task.goal, res.actions, sim=sim)
    assert res.steps > 5 * wm.max_context  # long enough for a full history
    assert ctrl.cost.z0.shape[1] == wm.max_context and ctrl.cost.past_blocks.shape == (wm.max_context - 1, wm.action_dim)
    assert ok == res.success and np.allclose(final, res.final)


def test_the_ablation_table_pairs_each_variant_with_the_intact_thinker():
    from wmcore.data import load as load_data
    from wmcore.drift import prepare
    from wmcore.evaluate import EvalConfig
    from wmcore.settings import Thresholds
    from wmcore.thinking import ablations, control_row, curve, render_ablations

    episodes = load_data(PUSHT, limit=4)
    cfg, th = EvalConfig(horizon=4, start=0, energy=False, batch_size=4), Thresholds(bootstrap=20)
    wm = ThinkerWorldModel(_thinker())
    prep = prepare(wm, episodes, cfg)
    doc = curve(wm, prep, [1, 4], cfg, th, spec="t", data_id="pusht[:4]")
    rows = ablations(wm, prep, doc["reports"], cfg, th, spec="t", data_id="pusht[:4]")
    assert [(r["variant"], r["think"]) for r in rows] == [("zero", 4), ("shuffle", 4)] and wm.ablation is None
    for r in rows:  # an ablation changes what the thinker says, so the drift moves
        assert r["vs_intact"]["delta"] != 0 and r["vs_intact"]["episodes"] == 4
    ctl = ThinkerWorldModel(_thinker(past=False))
    from wmcore.evaluate import evaluate

    other = evaluate(ctl, prepare(ctl, episodes, cfg), cfg, th)
    row = control_row(other, doc["reports"][4], "control")
    assert row["think"] == 4 and row["auc"] == pytest.approx(float(np.mean(other.loops["open_loop"].per_episode["cosine"])), abs=1e-6)
    table = render_ablations([*rows, row])
    assert "shuffle" in table and "control" in table
    with pytest.raises(WMError, match="no thinker to ablate"):
        ablations(KeypointWorldModel(_thinker().base), prep, doc["reports"], cfg, th, spec="k", data_id="x")


def test_the_control_suite_plans_along_k_only_when_asked(pytester, tmp_path, monkeypatch):
    suite = Path(__file__).resolve().parents[1] / "wmcore" / "suites" / "test_control.py"
    pytester.makepyfile(test_think_control=suite.read_text())  # a name no module of tests/ has
    monkeypatch.setenv("WMCORE_CONTROL_TASKS", "1")
    d = save_pretrained(_thinker(), tmp_path / "thinker")
    common = ["--benchmark-only", "-p", "no:cacheprovider", "--wm-artifacts", str(tmp_path / "art"),
              "--wm-model", f"thinker:{d}", "-k", "along_k"]
    r = pytester.runpytest(*common)
    assert r.ret == pytest.ExitCode.NO_TESTS_COLLECTED and "deselected" in r.stdout.str()
    r = pytester.runpytest(*common, "--wm-think", "1,3", f"--benchmark-json={tmp_path / 'b.json'}")
    assert r.ret == 0, r.stdout.str()[-2000:]  # no success_min for this model: the plans ran and replayed
    names = sorted(b["name"] for b in json.loads((tmp_path / "b.json").read_text())["benchmarks"])
    assert names == [f"test_control_along_k[thinker:{d}-think1]", f"test_control_along_k[thinker:{d}-think3]"], names
    (run,) = (tmp_path / "art").glob("run-*")
    k3 = json.loads((run / "control-t-tiny-think3.json").read_text())
    assert k3["controller"]["model"]["think"] == 3 and len(k3["results"]) == 1
