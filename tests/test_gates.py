"""Noise-aware gates: each shape gate fails a known violation and passes pure noise; the rules, their
option in every place a threshold is set, the CIs beside the threshold gates, and old reports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wmcore import gates as G
from wmcore import metrics as M
from wmcore.cli import main as cli_main
from wmcore.errors import WMError
from wmcore.evaluate import EvalConfig, build_report, prepare, rollouts
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes
from wmcore.report import DriftReport
from wmcore.settings import GATE_RULES, Thresholds, load_thresholds
from wmcore.stats import curve_ci, rise_statistic, skill_ci

pytest_plugins = ["pytester"]

H = 20
DECAY = np.linspace(0.95, 0.40, H)  # a monotone true curve


def noisy(n: int, sd: float, seed: int, base=DECAY) -> np.ndarray:
    """``n`` episodes of ``base`` plus independent noise: ``[n, H]``."""
    return base + np.random.default_rng(seed).normal(0, sd, (n, len(base)))


# --- statistics of mean curves --------------------------------------------------------------------


def test_rise_statistic_is_max_rise_without_the_clip():
    for c in ([0.9, 0.6, 0.7, 0.5, 0.65], [0.9, 0.8, 0.8, 0.5], list(DECAY)):
        assert max(0.0, float(rise_statistic(np.array(c)))) == pytest.approx(M.max_rise(torch.tensor(c))[0])
    assert rise_statistic(np.array([1.0, 0.7, 0.5])) == pytest.approx(-0.2)  # the smallest drop, signed
    batch = np.stack([DECAY, DECAY[::-1]])
    assert rise_statistic(batch).tolist() == pytest.approx([DECAY[1] - DECAY[0], DECAY[0] - DECAY[-1]])


def test_curve_ci_brackets_the_value_is_seeded_and_narrows_with_episodes():
    x = noisy(8, 0.1, 0)
    v, lo, hi = curve_ci([x], rise_statistic, 0.9, 500, seed=3)
    assert v == pytest.approx(float(rise_statistic(x.mean(0))))
    assert lo <= v <= hi and curve_ci([x], rise_statistic, 0.9, 500, seed=3) == (v, lo, hi)
    _, lo2, hi2 = curve_ci([noisy(128, 0.1, 0)], rise_statistic, 0.9, 500, seed=3)
    assert hi2 - lo2 < (hi - lo) / 2


def test_curve_ci_with_one_episode_or_identical_rows_has_nothing_to_resample():
    x = noisy(1, 0.1, 0)
    v = float(rise_statistic(x[0]))
    assert curve_ci([x], rise_statistic) == (v, v, v)
    same = np.repeat(x, 5, axis=0)
    assert curve_ci([same], rise_statistic) == pytest.approx((v, v, v))


def test_curve_ci_resamples_the_curves_jointly():
    # episodes differ by a large shared offset; closed is below open by 0.03 in every episode: the
    # paired difference is exact, so its interval is a point, though each loop alone is very noisy
    shift = np.random.default_rng(1).normal(0, 0.3, (10, 1))
    open_ = DECAY + shift
    closed = open_ - 0.03
    v, lo, hi = curve_ci([closed, open_], lambda c, o: (c - o).min(-1), 0.9, 500)
    assert (v, lo, hi) == pytest.approx((-0.03, -0.03, -0.03))
    _, lo1, hi1 = curve_ci([open_], lambda o: o[..., 0], 0.9, 500)
    assert hi1 - lo1 > 0.1


def test_skill_ci_is_the_skill_of_the_mean_errors_with_its_interval():
    m, b = np.abs(noisy(10, 0.3, 4, np.ones(H))), np.abs(noisy(10, 0.3, 5, np.full(H, 2.0)))
    v, lo, hi = skill_ci(m, b, 4, n_resamples=500)
    assert v == pytest.approx(float(M.skill(torch.tensor(m), torch.tensor(b))[:4].mean()))
    assert lo < v < hi
    z = np.zeros((3, H))
    assert skill_ci(z, z, 2) == (0.0, 0.0, 0.0)  # no error either way: skill 0, as metrics.skill


def test_curve_ci_refuses_ragged_episodes():
    with pytest.raises(ValueError, match="same n"):
        curve_ci([np.zeros((3, 4)), np.zeros((4, 4))], lambda a, b: a[..., 0])


# --- the monotone-decay gate ------------------------------------------------------------------------


def test_monotone_passes_one_odd_episode_that_the_mean_rule_fails():
    # 8 episodes of a decaying curve; one of them jumps back up by 0.6 from step 10 (noise: an episode
    # whose scene happens to return): the mean curve climbs 0.075 - 0.029 > 0.03, but not with confidence
    x = noisy(8, 0.01, 0)
    x[3, 9:] += 0.6
    mean = x.mean(0).tolist()
    assert M.max_rise(torch.tensor(mean))[0] > 0.03
    assert not G.gate_monotone(mean, 0.03).passed  # the mean rule (no episodes given)
    assert not G.gate_monotone(mean, 0.03, per_episode=x, rule="mean").passed
    g = G.gate_monotone(mean, 0.03, per_episode=x)  # ci: the default with episodes
    assert g.passed and g.lo <= 0.03 < g.measured <= g.hi
    assert "90% CI" in g.message and "0.0300" in g.message and "rule ci" in g.message


def test_monotone_fails_a_climb_that_every_episode_shows():
    x = noisy(8, 0.01, 0)
    x[:, 9:] += 0.1  # every episode climbs 0.1 at step 10
    g = G.gate_monotone(x.mean(0).tolist(), 0.03, per_episode=torch.tensor(x))
    assert not g.passed and g.lo > 0.03 and g.measured == pytest.approx(M.max_rise(torch.tensor(x.mean(0)))[0])
    assert "above the tolerance 0.0300 with 95% confidence" in g.message


def test_monotone_ci_passes_pure_noise_at_about_the_nominal_rate():
    # a monotone truth seen through noise of sd 0.1 per episode and step, 8 episodes: the mean curve
    # wiggles by several times the tolerance, so the mean rule fails most of these; the ci rule may
    # call a climb in about 5% (one-sided 95%), not more (measured: 7% over 60 seeds, 1 of these 20)
    fails = {"ci": 0, "mean": 0}
    for seed in range(20):
        x = noisy(8, 0.1, seed)
        for rule in fails:
            fails[rule] += not G.gate_monotone(x.mean(0).tolist(), 0.03, per_episode=x, rule=rule, n_resamples=500).passed
    assert fails["ci"] <= 2 and fails["mean"] >= 15, fails


def test_monotone_rule_checks():
    with pytest.raises(ValueError, match="needs the per-episode curves"):
        G.gate_monotone(list(DECAY), 0.02, rule="ci")
    with pytest.raises(ValueError, match="expected one of ci, mean"):
        G.gate_monotone(list(DECAY), 0.02, per_episode=noisy(3, 0.1, 0), rule="median")
    assert GATE_RULES == G.GATE_RULES == ("ci", "mean")


# --- the closed >= open gate ------------------------------------------------------------------------


def test_closed_ge_open_passes_one_odd_episode_and_fails_a_consistent_crossing():
    open_ = noisy(8, 0.05, 0)
    closed = open_ + 0.02  # closed above open in every episode
    closed[5] -= 0.4  # one episode where closed loop does far worse: mean gap -0.03
    c, o = closed.mean(0).tolist(), open_.mean(0).tolist()
    assert not G.gate_closed_ge_open(c, o, 0.01).passed
    g = G.gate_closed_ge_open(c, o, 0.01, closed_episodes=closed, open_episodes=open_)
    assert g.passed and g.lo <= g.measured < -0.01 <= g.hi and "rule ci" in g.message
    below = open_ - 0.03  # every episode's closed loop 0.03 below its open loop
    g = G.gate_closed_ge_open(below.mean(0).tolist(), o, 0.01, closed_episodes=below, open_episodes=open_)
    assert not g.passed and g.hi < -0.01 and "below -0.0100 with 95% confidence" in g.message
    g = G.gate_closed_ge_open(c, o, 0.01, closed_episodes=closed, open_episodes=open_, rule="mean")
    assert not g.passed and "rule mean" in g.message and g.lo is not None
    with pytest.raises(ValueError, match="or neither"):
        G.gate_closed_ge_open(c, o, 0.01, closed_episodes=closed)


# --- threshold gates: fail (rule ci) only when the value is below the limit with confidence ----------


def test_step1_gate_ci_is_the_t_interval_and_fails_only_with_confidence():
    from scipy.stats import t as student

    cos = noisy(8, 0.05, 0, base=np.full(H, 0.84))
    v = cos.mean(0)
    g = G.gate_step1(v.tolist(), 0.85, per_episode=cos)
    half = student.ppf(0.95, 7) * cos[:, 0].std(ddof=1) / np.sqrt(8)  # 90% t interval of the mean
    assert (g.lo, g.hi) == pytest.approx((v[0] - half, v[0] + half))
    assert g.measured < 0.85 <= g.hi  # below the limit, but the CI reaches it: passes under ci
    assert g.passed and "not with 95% confidence" in g.message and "90% CI" in g.message
    assert not G.gate_step1(v.tolist(), 0.85, per_episode=cos, rule="mean").passed
    low = cos - 0.2  # every episode far below: the CI's upper end too
    g = G.gate_step1(low.mean(0).tolist(), 0.85, per_episode=low)
    assert not g.passed and g.hi < 0.85 and "< min 0.8500 with 95% confidence" in g.message
    assert not G.gate_step1([0.8], 0.85).passed  # no episodes: the mean rule
    with pytest.raises(ValueError, match="needs the per-episode curves"):
        G.gate_step1([0.8], 0.85, rule="ci")


def test_skill_gates_resample_model_and_baseline_errors_together():
    err_b = np.abs(noisy(8, 0.5, 1, base=np.full(H, 2.0)))
    err_m = err_b * 0.5
    skill = M.skill(torch.tensor(err_m), torch.tensor(err_b)).tolist()
    g = G.gate_skill(skill, 0.3, errors=(err_m, err_b))
    assert g.passed and g.measured == pytest.approx(0.5) and g.lo == pytest.approx(0.5) == g.hi
    assert not G.gate_skill(skill, 0.6, errors=(err_m, err_b)).passed  # exactly 0.5 in every resample
    g = G.gate_mean_skill(skill, 5, 0.6, "copy_last", "closed loop", errors=(err_m * noisy(8, 0.2, 2, np.ones(H)), err_b))
    assert g.lo < g.hi and "1..5" in g.message and "+0.6000" in g.message
    assert G.gate_skill(skill, 0.3).lo is None  # without per-episode errors: no CI
    # a model of true skill 0.2 with noisy episodes, gated at 0.3: not shown below the limit by 8
    # episodes, shown by 64
    for n, passes in ((8, True), (64, False)):
        base = np.abs(noisy(n, 0.3, 4, base=np.full(H, 1.0)))
        model = base * np.abs(noisy(n, 0.3, 5, base=np.full(H, 0.8)))
        sk = M.skill(torch.tensor(model), torch.tensor(base)).tolist()
        g = G.gate_skill(sk, 0.3, errors=(model, base))
        assert g.measured < 0.3 and g.passed is passes, (n, g.message)
        assert not G.gate_skill(sk, 0.3, errors=(model, base), rule="mean").passed


def test_gates_of_old_reports_read_without_a_ci():
    old = {"name": "monotone_decay", "passed": True, "measured": 0.01, "limit": 0.02, "message": "m"}
    g = G.Gate(**old)
    assert (g.lo, g.hi) == (None, None) and dataclasses.asdict(g) == {**old, "lo": None, "hi": None}


# --- thresholds: the rule in every place a threshold is set ----------------------------------------


def test_gate_rule_from_pyproject_model_table_and_overrides(tmp_path):
    assert Thresholds().gate_rule == "ci"
    p = tmp_path / "pyproject.toml"
    p.write_text('[tool.wmcore]\ngate_rule = "mean"\n[tool.wmcore.models.m]\ngate_rule = "ci"\n')
    assert load_thresholds("x", pyproject=p).gate_rule == "mean"
    assert load_thresholds("m", pyproject=p).gate_rule == "ci"
    assert load_thresholds("m", pyproject=p, overrides={"gate_rule": "mean"}).gate_rule == "mean"
    p.write_text('[tool.wmcore]\ngate_rule = "median"\n')
    with pytest.raises(WMError, match="gate_rule='median': expected one of ci, mean"):
        load_thresholds(pyproject=p)
    with pytest.raises(WMError, match="expected one of ci, mean"):
        Thresholds(gate_rule="strict")


# --- the whole evaluation: the analytic world -------------------------------------------------------


@pytest.fixture(scope="module")
def analytic():
    cfg = AnalyticConfig(delta=0.1)
    model = AnalyticModel(cfg)
    ecfg = EvalConfig(horizon=16)
    prep = prepare(model, make_episodes(cfg, episodes=8, steps=17, seed=3), ecfg)
    return model, ecfg, prep, *rollouts(model, prep, ecfg)


def _gates(analytic, pred_open=None, pred_closed=None, rule="ci", **thresholds):
    model, ecfg, prep, op, cl = analytic
    t = Thresholds(bootstrap=300, gate_rule=rule, **thresholds)
    r = build_report(model, prep, op if pred_open is None else pred_open, cl if pred_closed is None else pred_closed, ecfg, t)
    return {g.name: g for g in r.gates}


def test_analytic_world_passes_and_one_odd_episode_is_noise(analytic):
    _, _, prep, pred_open, pred_closed = analytic
    assert all(g.passed for g in _gates(analytic).values())
    target = prep.latents[:, 1:17]
    odd = pred_open.clone()
    # one episode's open loop is upside down at steps 7-9 (cosine -1), then exact: its curve dips and
    # climbs by 2, the mean curve by about 0.2
    odd[2, 6:9], odd[2, 9:] = -target[2, 6:9], target[2, 9:]
    assert not _gates(analytic, odd, rule="mean")["monotone_decay"].passed
    g = _gates(analytic, odd)["monotone_decay"]
    assert g.passed and g.measured > 0.02 >= g.lo
    bad = pred_closed.clone()
    bad[5] = -target[5]  # one episode's closed loop predicts the opposite latent: cosine -1
    assert not _gates(analytic, pred_closed=bad, rule="mean")["closed_ge_open"].passed
    g = _gates(analytic, pred_closed=bad)["closed_ge_open"]
    assert g.passed and g.measured < -0.2 and g.hi >= -0.01


def test_analytic_world_that_really_climbs_fails_with_confidence(analytic):
    _, _, prep, pred_open, _ = analytic
    target = prep.latents[:, 1:17]
    back = pred_open.clone()
    back[:, 9:] = target[:, 9:]  # every episode's open loop snaps back: a real climb
    g = _gates(analytic, back)["monotone_decay"]
    assert not g.passed and g.lo > 0.02
    # open loop perfect at every step: the closed loop (cos 0.1 = 0.995 per step) is below it by
    # 0.005 in every episode, a crossing beyond a tolerance of 0.002 with confidence
    g = _gates(analytic, target.clone(), closed_open_tol=0.002)["closed_ge_open"]
    assert not g.passed and g.hi < -0.002 < -0.001 < g.measured + 0.006


def test_the_rule_is_recorded_and_chosen_on_the_command_line(tmp_path, capsys):
    cfg = AnalyticConfig(delta=0.05)
    from wmcore.data.episodes import save_episode, write_index

    eps = make_episodes(cfg, episodes=4, steps=12, seed=0)
    d = tmp_path / "data"
    d.mkdir()
    h, w = eps[0].frames.shape[1:3]
    write_index(d, {"fps": 10.0, "height": int(h), "width": int(w)}, [save_episode(d, i, e, seed=i) for i, e in enumerate(eps)])
    for rule in GATE_RULES:
        out = tmp_path / rule
        code = cli_main(["evaluate", "--model", "analytic", "--data", str(d), "--horizon", "10",
                         "--gate-rule", rule, "--out", str(out)])
        r = DriftReport.load(next(out.glob("*.json")))
        assert code == 0 and r.thresholds["gate_rule"] == rule
        assert f"rule {rule}" in {g.name: g for g in r.gates}["monotone_decay"].message
        assert json.loads(next(out.glob("*.json")).read_text())["gates"][1]["lo"] is not None
        assert len(list(out.glob("*-energy.png"))) == 1 and r.energy is not None  # beside the drift plot
    out = tmp_path / "no-energy"
    assert cli_main(["evaluate", "--model", "analytic", "--data", str(d), "--horizon", "10", "--no-energy",
                     "--out", str(out)]) == 0
    assert not list(out.glob("*-energy.png")) and DriftReport.load(next(out.glob("*.json"))).energy is None
    capsys.readouterr()


# --- the pytest plugin: --wm-gate-rule ---------------------------------------------------------------

BENCH = Path(__file__).resolve().parents[1] / "wmcore" / "suites" / "test_drift.py"


@pytest.mark.parametrize("args, rule", [([], "ci"), (["--wm-gate-rule", "mean"], "mean"),
                                        (["--wm-threshold", "gate_rule=mean"], "mean")])
def test_the_plugin_option_chooses_the_rule_and_the_report_records_it(pytester, tmp_path, args, rule):
    from wmcore.data.episodes import save_episode, write_index

    d = tmp_path / "data"
    d.mkdir()
    eps = make_episodes(AnalyticConfig(delta=0.05), episodes=3, steps=10, seed=3)
    write_index(d, {"fps": 10.0, "height": eps[0].frames.shape[1], "width": eps[0].frames.shape[2]},
                [save_episode(d, i, e, seed=i) for i, e in enumerate(eps)])
    pytester.makepyfile(test_drift=BENCH.read_text())
    bj = tmp_path / "bench.json"
    r = pytester.runpytest("--benchmark-only", "-p", "no:cacheprovider", "--wm-model", "analytic:delta=0.05",
                           "--wm-data", str(d), "--wm-actions", "recorded", "--wm-horizon", "8",
                           "--wm-artifacts", str(tmp_path / "art"), f"--benchmark-json={bj}", *args)
    r.assert_outcomes(passed=1)
    rec = json.loads(bj.read_text())["benchmarks"][0]["extra_info"]["wmcore"]
    assert rec["thresholds"]["gate_rule"] == rule


def test_the_plugin_refuses_an_unknown_rule(pytester):
    pytester.makepyfile(test_drift=BENCH.read_text())
    r = pytester.runpytest("--benchmark-only", "-p", "no:cacheprovider", "--wm-gate-rule", "median")
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "invalid choice: 'median'" in r.stderr.str()
