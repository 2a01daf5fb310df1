"""Control foundations: the simulator's exact reset and replay, the success rule, task sets, the CEM
planner on a problem with a known answer, and the controllers' replayable episodes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wmcore.control import tasks as T
from wmcore.control.oracle import distance
from wmcore.control.planners import ActionPrior, CEMConfig, CEMPlanner, LatentGoalCost
from wmcore.control.run import DriveToGoal, OracleCEM, RandomSmooth, Stay, replay, run_task
from wmcore.control.sim.pusht import ANGLE_TOL, PushTSim, angle_error, success
from wmcore.data import load as load_data
from wmcore.data.pusht import rollout
from wmcore.episode import Episode
from wmcore.errors import WMError


@pytest.fixture(scope="module")
def recorded():
    return rollout(10000, 60)  # frames [61, 96, 96, 3], actions [60, 2], states [61, 5] (float32, as saved)


@pytest.fixture(scope="module")
def sim():
    s = PushTSim()
    yield s
    s.close()


@pytest.fixture(scope="module")
def fixture_tasks():
    eps = load_data("pusht")
    return eps, T.build(eps, data_id="pusht")


# --- the simulator ---------------------------------------------------------------------------------


def test_exact_reset_reproduces_the_recorded_frame_bit_exactly(sim, recorded):
    frames, _, states = recorded
    for t in range(0, 61, 6):
        assert np.array_equal(sim.reset_to(states[t]), frames[t]), t
        assert np.abs(sim.state - states[t]).max() < 1e-4


def test_gym_pushts_own_reset_lands_elsewhere(sim, recorded):
    """The reason for reset_to: position before angle rotates the T about its centre of gravity."""
    frames, _, states = recorded
    env = sim.env
    env.reset(options={"reset_to_state": states[30].astype(np.float64)})
    assert np.abs(np.array(env.block.position) - states[30][2:4]).max() > 1.0
    assert not np.array_equal(env._render(), frames[30])


def test_replaying_the_recorded_actions_reproduces_the_recorded_states(sim, recorded):
    _, actions, states = recorded
    sim.reset_to(states[0], render=False)
    worst = 0.0
    for t, a in enumerate(actions):
        sim.step(a, render=False)
        worst = max(worst, float(np.abs(sim.state - states[t + 1])[:4].max()))
    assert worst < 0.1


def test_reset_and_step_refuse_bad_input(sim):
    with pytest.raises(WMError, match=r"expected a PushT state \[5\]"):
        sim.reset_to([1.0, 2.0])
    with pytest.raises(WMError, match="not finite"):
        sim.reset_to([1.0, 2.0, 3.0, float("nan"), 0.0])
    with pytest.raises(WMError, match="finite PushT target"):
        sim.step([1.0, 2.0, 3.0])


# --- the success rule (stable-worldmodel's PushT eval_state) -----------------------------------------


def test_success_rule_on_known_cases():
    g = np.array([100.0, 100.0, 200.0, 200.0, 0.1])
    assert success(g, g)
    assert success(g + [11, 0, 0, 11, 0], g)  # norm of the 4-d difference 15.6 < 20
    assert not success(g + [15, 0, 0, 15, 0], g)  # 21.2: agent and block errors add up
    assert success(g + [0, 0, 0, 0, ANGLE_TOL * 0.99], g) and not success(g + [0, 0, 0, 0, ANGLE_TOL * 1.01], g)
    wrapped = g.copy()
    wrapped[4] = 2 * math.pi - 0.05  # 0.15 rad from 0.1 across the wrap
    assert success(wrapped, g) and angle_error(wrapped[4], g[4]) == pytest.approx(0.15)
    assert distance(g, g) == 0 and distance(g + [20, 0, 0, 0, 0], g) == pytest.approx(1.0)


# --- task sets -------------------------------------------------------------------------------------


def test_task_set_from_the_fixtures(fixture_tasks, tmp_path):
    eps, ts = fixture_tasks
    assert len(ts.tasks) == 64 and len({t.id for t in ts.tasks}) == 64
    by_id = {e.id: e for e in eps}
    for t in ts.tasks:
        e = by_id[t.episode]
        assert t.goal_step - t.start_step == 25 and t.budget == 50 and t.start_step >= 10
        assert np.allclose(t.start, e.states[t.start_step].double()) and np.allclose(t.goal, e.states[t.goal_step].double())
        assert T.block_must_move(t.start, t.goal) and not success(t.start, t.goal)
        assert len(t.actions) == 25
    assert T.build(eps, data_id="pusht").tasks == ts.tasks  # seeded
    assert T.build(eps, T.TaskSpec(seed=1)).tasks != ts.tasks
    p = ts.save(tmp_path / "tasks.json")
    assert T.load(p).tasks == ts.tasks
    with pytest.raises(WMError, match="never overwrites"):
        ts.save(p)


def test_task_set_bad_input(fixture_tasks, tmp_path):
    eps, _ = fixture_tasks
    no_states = [Episode(frames=e.frames, actions=e.actions, id=e.id) for e in eps[:2]]
    with pytest.raises(WMError, match="no recorded states"):
        T.build(no_states)
    with pytest.raises(WMError, match="goal offset 400"):
        T.build(eps[:2], T.TaskSpec(goal_offset=400))
    with pytest.raises(WMError, match="expected an int >= 1"):
        T.TaskSpec(count=0)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something"}')
    with pytest.raises(WMError, match="not a wmcore task set"):
        T.load(bad)


# --- the planner on a problem with a known answer ------------------------------------------------------


def test_cem_finds_the_minimum_of_a_known_cost():
    """The cost is the distance of the last action to a target 60 units away: CEM must get there with
    smooth candidates (every change within a few prior steps)."""
    prior = ActionPrior(low=[0.0, 0.0], high=[512.0, 512.0], step_std=[5.0, 5.0])
    target = np.array([160.0, 140.0])
    planner = CEMPlanner(prior, CEMConfig(samples=128, elites=12, iterations=8, horizon=20, execute=5, init_std=2.0))
    start = np.array([100.0, 100.0])
    plan, c = planner.plan(lambda a: np.linalg.norm(a[:, -1] - target, axis=-1), start)
    assert plan.shape == (20, 2) and c < 5.0
    assert np.abs(np.diff(np.concatenate([start[None], plan]), axis=0)).max() < 40  # no jumps
    with pytest.raises(WMError, match="finite costs"):
        planner.plan(lambda a: np.full(len(a), np.nan), start)


def test_action_prior_from_recorded_actions():
    a = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 2.0]])
    p = ActionPrior.from_actions([a])
    assert p.low == [0.0, 0.0] and p.high == [3.0, 2.0]
    assert p.step_std == pytest.approx([math.sqrt(0.5), math.sqrt(2.0)])
    with pytest.raises(WMError):
        ActionPrior.from_actions([a[:1]])


# --- controllers: baselines, the oracle, replay ------------------------------------------------------


def test_baselines_are_replayable_and_stay_stays(sim, fixture_tasks):
    eps, ts = fixture_tasks
    prior = ActionPrior.from_actions([e.actions for e in eps])
    task = ts.tasks[0]
    for ctrl in (Stay(), RandomSmooth(prior), DriveToGoal()):
        r = run_task(sim, task, ctrl)
        ok, final = replay(task.start, task.goal, r.actions, sim=sim)
        assert ok == r.success and np.array_equal(final, np.asarray(r.final))
        assert r.steps == len(r.actions) <= task.budget
    r = run_task(sim, task, Stay())
    assert not r.success and r.score == pytest.approx(1.0, abs=1e-3)  # nothing moved


def test_oracle_planner_reaches_a_goal(sim, fixture_tasks):
    """The simulator as the model: CEM with perfect foresight must reach goals (validates planner and
    tasks); one task here, the rate over the set is measured by the control benchmark."""
    eps, ts = fixture_tasks
    prior = ActionPrior.from_actions([e.actions for e in eps])
    ctrl = OracleCEM(prior, CEMConfig(samples=64, elites=8, iterations=4))
    task = ts.tasks[0]
    r = run_task(sim, task, ctrl)
    assert r.success and r.final_distance < 2
    assert replay(task.start, task.goal, r.actions, sim=sim)[0]


def test_latent_goal_cost_ranks_the_true_actions_first_under_the_analytic_model():
    """The analytic world with an exact model (delta 0): the recorded actions that led from frame 0 to
    frame 3 cost ~0 (frames are quantised), any perturbation of them costs more, the larger the more."""
    from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes

    cfg = AnalyticConfig(delta=0.0)
    model = AnalyticModel(cfg)
    ep = make_episodes(cfg, episodes=1, steps=6, seed=1)[0]
    k = model.frameskip
    cost = LatentGoalCost(model, ep.frames[3 * k].numpy())
    cost.observe(ep.frames[0].numpy())
    true = ep.actions[: 3 * k].double().numpy()
    cands = np.stack([true, true + 0.2, true + 0.5, true - 1.0])
    c = cost(cands)
    assert c[0] < 1e-3 and c[0] < c[1] < c[2] and c[0] < c[3]
    assert LatentGoalCost(model, ep.frames[3 * k].numpy(), cost="all") is not None
    with pytest.raises(RuntimeError, match="observe"):
        LatentGoalCost(model, ep.frames[1].numpy())(cands)


# --- wmcore plan / wmcore replay ------------------------------------------------------------------


def test_plan_writes_a_replayable_report_and_replay_checks_it(tmp_path, capsys):
    import json

    from wmcore.cli import main

    out = tmp_path / "run"
    assert main(["plan", "--planner", "drive", "--limit", "2", "--out", str(out), "--success-min", "0.0"]) == 0
    report = out / "control-drive.json"
    assert (out / "tasks.json").is_file() and report.is_file()
    d = json.loads(report.read_text())
    assert d["format"] == "wmcore.control" and d["summary"]["tasks"] == 2 and d["gates"][0]["name"] == "success_rate"
    assert len(d["results"][0]["actions"]) == d["results"][0]["steps"]
    assert main(["replay", str(report)]) == 0 and "all 2 tasks reproduced" in capsys.readouterr().out
    d["results"][0]["actions"][3] = [0.0, 0.0]  # tampered: the agent goes elsewhere
    (tmp_path / "bad.json").write_text(json.dumps(d))
    assert main(["replay", str(tmp_path / "bad.json")]) == 1 and "did not reproduce" in capsys.readouterr().out
    # the saved task set runs again, and nothing is overwritten
    assert main(["plan", "--planner", "stay", "--tasks", str(out / "tasks.json"), "--limit", "1", "--out", str(out)]) == 0
    assert main(["plan", "--planner", "stay", "--limit", "1", "--out", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err


def test_plan_gate_fails_with_exit_1(tmp_path, capsys):
    from wmcore.cli import main

    assert main(["plan", "--planner", "stay", "--limit", "8", "--out", str(tmp_path / "r"), "--success-min", "0.9"]) == 1
    assert "[FAIL] success_rate: success 0/8" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--planner", "cem"], "needs --model SPEC"),
    (["--model", "analytic", "--planner", "cem"], "frames: expected uint8 [B, T, 16, 16, 3]"),  # cannot embed PushT frames
    (["--planner", "stay", "--tasks", "nope.json"], "no such task-set file"),
    (["--planner", "stay", "--goal-offset", "400"], "goal offset 400"),
    (["--model", "pusht-lewm", "--planner", "cem", "--horizon", "12"], "multiple of the model's frameskip 5"),
])
def test_plan_bad_input(tmp_path, capsys, args, message):
    from wmcore.cli import main

    assert main(["plan", *args, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_a_model_whose_actions_do_not_fit_pusht_is_refused():
    from wmcore.control.command import check_model
    from wmcore.models.analytic import AnalyticConfig, AnalyticModel

    with pytest.raises(WMError, match="takes 3-d actions per model step .* needs 2"):
        check_model(AnalyticModel(AnalyticConfig(action_dim=3, gain=(0.1, 0.1, 0.1))), 25, 5)
    check_model(AnalyticModel(AnalyticConfig()), 25, 5)  # 2-d targets, frameskip 1: fits


def test_plan_refuses_data_without_states(tmp_path, capsys):
    from wmcore.cli import main
    from wmcore.data.episodes import save_episode, write_index
    from wmcore.models.analytic import AnalyticConfig, make_episodes

    eps = make_episodes(AnalyticConfig(delta=0.05), episodes=2, steps=40, seed=0)
    d = tmp_path / "data"
    d.mkdir()
    h, w = eps[0].frames.shape[1:3]
    write_index(d, {"fps": 10.0, "height": int(h), "width": int(w)}, [save_episode(d, i, e, seed=i) for i, e in enumerate(eps)])
    assert main(["plan", "--planner", "stay", "--data", str(d), "--out", str(tmp_path / "r")]) == 2
    assert "no recorded states" in capsys.readouterr().err


def test_compare_flags_a_significant_success_drop_over_the_same_tasks(tmp_path, capsys):
    """Paired over the same tasks: the oracle-like BASE (every task a success) against a NEW that
    fails most of them regresses; identical reports give delta 0; different tasks are refused."""
    import json

    from wmcore.cli import main

    out = tmp_path / "a"
    assert main(["plan", "--planner", "stay", "--limit", "12", "--out", str(out)]) == 0
    d = json.loads((out / "control-stay.json").read_text())
    good = json.loads(json.dumps(d))
    for r in good["results"]:
        r["success"], r["score"] = True, 0.1
    good["summary"].update(successes=12, success_rate=1.0, score_mean=0.1)
    (tmp_path / "good.json").write_text(json.dumps(good))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "good.json"), str(out / "control-stay.json")]) == 1
    text = capsys.readouterr().out
    assert "success_rate" in text and "regressed" in text and "REGRESSION" in text
    assert main(["compare", str(out / "control-stay.json"), str(out / "control-stay.json")]) == 0
    assert "+0.000" in capsys.readouterr().out
    fewer = json.loads(json.dumps(d))
    fewer["results"] = fewer["results"][:5]
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    assert main(["compare", str(out / "control-stay.json"), str(tmp_path / "fewer.json")]) == 2
    assert "ran different tasks" in capsys.readouterr().err


def test_encoder_oracle_plans_with_the_simulator_and_the_models_encoder(tmp_path, capsys):
    """--planner encoder-oracle: perfect dynamics, the model's latent distance as the cost. With the
    analytic model (it cannot embed PushT frames) it is refused; with pusht-lewm it runs, records the
    model, and its report replays."""
    from wmcore.cli import main

    assert main(["plan", "--planner", "encoder-oracle", "--out", str(tmp_path / "a")]) == 2
    assert "needs --model SPEC" in capsys.readouterr().err
    out = tmp_path / "r"
    assert main(["plan", "--planner", "encoder-oracle", "--model", "pusht-lewm", "--limit", "1", "--samples", "8",
                 "--elites", "2", "--iterations", "1", "--out", str(out)]) in (0, 1)
    report = json.loads((out / "control-encoder-oracle-pusht-lewm.json").read_text())
    assert report["controller"]["kind"] == "encoder-oracle" and report["controller"]["model"]["name"] == "pusht-lewm"
    assert report["controller"]["name"] == "cem[simulator + pusht-lewm encoder]"
    assert main(["replay", str(out / "control-encoder-oracle-pusht-lewm.json")]) == 0


# --- planner presets, the proprio term, ranking fidelity --------------------------------------------


def test_the_lewm_preset_is_le_wms_published_evaluation():
    from wmcore.control.planners import PRESETS, preset

    c = preset("lewm", 5, seed=3)
    assert (c.samples, c.elites, c.iterations, c.horizon, c.execute, c.seed, c.preset) == (300, 30, 30, 25, 25, 3, "lewm")
    assert preset("lewm", 1).horizon == 5  # 5 model steps, whatever the frameskip
    assert c.to_dict()["preset"] == "lewm"  # recorded in every report's planner settings
    assert set(PRESETS) == {"lewm"}
    with pytest.raises(WMError, match="planner preset 'nope': expected one of lewm"):
        preset("nope", 5)
    with pytest.raises(WMError, match="planner preset"):
        CEMConfig(preset="nope")
    with pytest.raises(WMError, match="proprio_weight"):
        CEMConfig(proprio_weight=-1.0)


def test_the_proprio_term_is_the_propagated_agent_positions_distance_to_the_goals():
    """pusht-ac-tiny propagates the agent to the last target of each block (its PositionTargetCodec), so
    the proprio term has a known answer: |last target - goal agent position|^2 / 512^2."""
    from wmcore.control.planners import PROPRIO_SCALE
    from wmcore.models import load as load_model

    model = load_model("pusht-ac-tiny")
    ep = load_data("pusht", limit=1)[0]
    goal = np.array([300.0, 200.0])
    cost = LatentGoalCost(model, ep.frames[25].numpy(), proprio_weight=2.0, goal_proprio=goal)
    cost.observe(ep.frames[0].numpy(), ep.states[0].numpy())
    rng = np.random.default_rng(0)
    cands = rng.uniform(50, 450, (6, 10, 2))
    t = cost.terms(cands)
    want = (((cands[:, -1] - goal) / PROPRIO_SCALE) ** 2).sum(-1)
    assert np.allclose(t["proprio"], want, atol=1e-6)
    assert np.allclose(cost(cands), t["latent"] + 2.0 * t["proprio"])
    with pytest.raises(WMError, match="current proprioceptive state"):
        LatentGoalCost(model, ep.frames[25].numpy(), proprio_weight=1.0, goal_proprio=goal).observe(ep.frames[0].numpy())
    lewm = load_model("pusht-lewm")
    with pytest.raises(WMError, match="reads frames and actions only"):
        LatentGoalCost(lewm, ep.frames[25].numpy(), proprio_weight=1.0, goal_proprio=goal)


def test_ranking_fidelity_on_known_rankings():
    from wmcore.control.fidelity import compare_rankings, summarise_fidelity

    x = np.arange(20.0)
    same = compare_rankings({"latent": x}, {"latent": 3 * x + 1}, k=4)
    assert same["latent"] == {"spearman": 1.0, "topk_overlap": 1.0} and same["candidates"] == 20
    rev = compare_rankings({"latent": x, "proprio": x}, {"latent": -x}, k=4)
    assert rev["latent"] == {"spearman": -1.0, "topk_overlap": 0.0} and "proprio" not in rev  # no oracle term
    s = summarise_fidelity([same, None, rev])
    assert s["tasks"] == 2 and s["latent"]["spearman"]["mean"] == 0.0 and s["topk_chance"] == 4 / 20
    assert s["latent"]["spearman"]["lo"] <= 0.0 <= s["latent"]["spearman"]["hi"]
    assert summarise_fidelity([None, None]) is None


def test_plan_records_ranking_fidelity_and_the_proprio_term(tmp_path, capsys):
    from wmcore.cli import main

    out = tmp_path / "r"
    assert main(["plan", "--model", "pusht-ac-tiny", "--proprio-weight", "0.5", "--limit", "1", "--samples", "8",
                 "--elites", "2", "--iterations", "1", "--out", str(out)]) in (0, 1)
    d = json.loads((out / "control-pusht-ac-tiny.json").read_text())
    assert d["controller"]["planner"]["proprio_weight"] == 0.5
    f = d["summary"]["ranking_fidelity"]
    assert f["tasks"] == 1 and f["candidates"] == 8 and f["k"] == 2 and {"latent", "proprio"} <= set(f)
    assert -1 <= d["results"][0]["fidelity"]["proprio"]["spearman"] <= 1
    assert "ranking fidelity (proprio" in capsys.readouterr().out
    assert main(["replay", str(out / "control-pusht-ac-tiny.json")]) == 0


@pytest.mark.parametrize("args, message", [
    (["--model", "pusht-lewm", "--proprio-weight", "1"], "reads no proprioception"),
    (["--model", "pusht-lewm", "--preset", "lewm", "--samples", "3"], "--preset lewm sets --samples itself"),
    (["--planner", "stay", "--proprio-weight", "1"], "--proprio-weight is a setting of --planner cem"),
    (["--model", "pusht-lewm", "--preset", "nope"], "invalid choice: 'nope'"),
])
def test_plan_refuses_bad_planner_options_and_writes_nothing(tmp_path, capsys, args, message):
    from wmcore.cli import main

    assert main(["plan", *args, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_show_reads_a_control_report_and_its_table_knows_small_samples(tmp_path, capsys):
    from wmcore.cli import main
    from wmcore.control.report import ControlReport, control_table

    for n in (1, 2):
        out = tmp_path / f"n{n}"
        assert main(["plan", "--planner", "drive", "--limit", str(n), "--out", str(out), "--success-min", "0.0"]) == 0
        capsys.readouterr()
        assert main(["show", str(out / "control-drive.json")]) == 0
        text = capsys.readouterr().out
        r = ControlReport.load(out / "control-drive.json")
        k = r.summary["successes"]
        assert f"{k}/{n}" in text and "drive" in text and "pass" in text
        table = control_table([("control-drive", r)])
        if n == 1:  # one task: no interval, and it says why
            assert "n/a: 1 task" in table
        else:
            assert f"[{r.summary['success_lo']:.0%}, {r.summary['success_hi']:.0%}]" in table
    assert main(["plan", "--planner", "stay", "--limit", "1", "--out", str(tmp_path / "g"), "--success-min", "1.0"]) == 1
    capsys.readouterr()
    assert main(["show", str(tmp_path / "g" / "control-stay.json")]) == 1
    assert "FAIL success_rate" in capsys.readouterr().out
