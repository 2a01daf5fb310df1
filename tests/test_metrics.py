"""Every metric against hand-computed values, plus hypothesis properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wmcore import gates as G
from wmcore import metrics as M


def lat(values) -> torch.Tensor:
    """Nested lists [B][H][N][D] -> float64 tensor."""
    return torch.tensor(values, dtype=torch.float64)


# --- per-step similarity and error, by hand ------------------------------------------------------


def test_cosine_by_hand():
    # one episode, two steps, two tokens: token cosines (1, 0) and (-1, cos 45deg)
    pred = lat([[[[1, 0], [1, 0]], [[1, 0], [1, 1]]]])
    target = lat([[[[2, 0], [0, 3]], [[-1, 0], [1, 0]]]])
    got = M.cosine(pred, target)
    assert got.shape == (1, 2)
    assert got[0, 0].item() == pytest.approx(0.5)  # mean of 1 and 0
    assert got[0, 1].item() == pytest.approx((-1 + math.sqrt(0.5)) / 2)


def test_l1_mse_by_hand():
    pred = lat([[[[1, 2]], [[0, 0]]]])
    target = lat([[[[0, 0]], [[3, -1]]]])
    assert M.l1(pred, target)[0].tolist() == pytest.approx([1.5, 2.0])
    assert M.mse(pred, target)[0].tolist() == pytest.approx([2.5, 5.0])


def test_cosine_of_zero_vector_is_zero_not_nan():
    z = torch.zeros(1, 1, 1, 3)
    assert M.cosine(z, torch.ones(1, 1, 1, 3)).item() == 0.0


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match=r"same shape.*\(1, 2, 1, 3\).*\(1, 3, 1, 3\)"):
        M.cosine(torch.ones(1, 2, 1, 3), torch.ones(1, 3, 1, 3))


def test_centred_cosine_removes_shared_offset():
    offset = torch.tensor([10.0, 10.0, 10.0])
    a = offset + torch.tensor([1.0, 0, 0])
    b = offset + torch.tensor([0.0, 1, 0])
    pred, target = a.view(1, 1, 1, 3), b.view(1, 1, 1, 3)
    assert M.cosine(pred, target).item() > 0.99  # raw: unrelated but "similar"
    assert M.centred_cosine(pred, target, offset).item() == pytest.approx(0.0, abs=1e-12)


# --- baselines and skill -------------------------------------------------------------------------


def test_persistence_baselines_pick_the_right_frames():
    z = torch.arange(6, dtype=torch.float64).view(1, 6, 1, 1).expand(1, 6, 1, 2)
    # context 2: predictions of frames 2, 3, 4
    assert M.copy_last(z, 3, context=2)[0, :, 0, 0].tolist() == [1, 2, 3]
    assert M.copy_first(z, 3, context=2)[0, :, 0, 0].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="needs"):
        M.copy_last(z, 5, context=2)


def test_skill_by_hand():
    model = torch.tensor([[1.0, 2.0], [3.0, 2.0]])  # episode means 2, 2
    base = torch.tensor([[4.0, 1.0], [4.0, 3.0]])  # episode means 4, 2
    assert M.skill(model, base).tolist() == pytest.approx([0.5, 0.0])
    # a baseline with zero error: a perfect model ties (0), an imperfect one is infinitely worse
    s = M.skill(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]))
    assert s[0].item() == 0.0 and s[1].item() == -math.inf


# --- curve summaries -----------------------------------------------------------------------------


def test_drift_horizon_first_step_below_and_none_when_never():
    c = torch.tensor([0.9, 0.6, 0.49, 0.7, 0.2])
    assert M.drift_horizon(c, 0.5) == 3
    assert M.drift_horizon(c, 0.65) == 2
    assert M.drift_horizon(c, 0.1) is None  # never below: distinct from H
    assert M.drift_horizon(c, 0.95) == 1


def test_max_rise_and_monotone_definition():
    assert M.max_rise(torch.tensor([0.9, 0.8, 0.8, 0.5])) == (0.0, None)
    rise, step = M.max_rise(torch.tensor([0.9, 0.6, 0.7, 0.5, 0.65]))
    # step 3 rises 0.1 above step 2, step 5 rises 0.15 above step 4: the worst counts
    assert rise == pytest.approx(0.15) and step == 5
    # a slow staircase climbs 0.01 per step: each step is within 0.02, the total climb is not
    stair = torch.linspace(0.5, 0.6, 11)
    rise, _ = M.max_rise(stair)
    assert rise == pytest.approx(0.1)
    assert not G.gate_monotone(stair.tolist(), tol=0.02).passed
    assert G.gate_monotone([0.9, 0.8, 0.81, 0.7], tol=0.02).passed


def test_worst_gap_and_gate():
    gap, step = M.worst_gap(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.85, 0.82, 0.6]))
    assert gap == pytest.approx(-0.02) and step == 2
    assert not G.gate_closed_ge_open([0.9, 0.8, 0.7], [0.85, 0.82, 0.6], tol=0.01).passed
    assert G.gate_closed_ge_open([0.9, 0.8, 0.7], [0.85, 0.82, 0.6], tol=0.03).passed


def test_auc_is_mean_of_curve():
    assert M.auc(torch.tensor([1.0, 0.5, 0.0])) == pytest.approx(0.5)


def test_gate_messages_show_measurement_and_limit():
    g = G.gate_step1([0.8, 0.7], 0.85)
    assert not g.passed and "0.8000" in g.message and "0.8500" in g.message and g.measured == 0.8
    g = G.gate_skill([0.4, 0.1], 0.3)
    assert g.passed and g.name == "skill_vs_copy_last"


def test_mean_skill_gate_averages_the_first_steps():
    curve = [0.6, 0.2, -0.1, -0.3, -5.0]  # mean of the first 4 = 0.1; with step 5 it turns negative
    g = G.gate_mean_skill(curve, 4, 0.0, "copy_first", "open loop")
    assert g.passed and g.measured == pytest.approx(0.1) and g.name == "mean_skill_open_loop_vs_copy_first"
    assert "1..4" in g.message and "+0.1000" in g.message
    g = G.gate_mean_skill(curve, 10, 0.0, "copy_first", "open loop")  # fewer steps than asked: all of them
    assert not g.passed and g.measured == pytest.approx(sum(curve) / 5) and "1..5" in g.message


def test_horizon_steps_counts_never_as_one_beyond_the_horizon():
    assert M.horizon_steps(None, 30) == 31 and M.horizon_steps(30, 30) == 30 and M.horizon_steps(1, 30) == 1
    # never reached ranks above reaching at the last step: "still above at step H" is not "fell at H"
    assert M.horizon_steps(None, 12) > M.horizon_steps(M.drift_horizon([0.9] * 11 + [0.4], 0.5), 12)


def test_horizon_gate_treats_never_as_beyond_the_horizon():
    assert G.gate_horizon(None, 30, 30, 0.5).passed  # never fell below 0.5 within 30 steps
    assert G.gate_horizon(None, 30, 30, 0.5).measured == 31
    g = G.gate_horizon(7, 10, 30, 0.5)
    assert not g.passed and "step 7" in g.message and "10" in g.message
    assert G.gate_horizon(10, 10, 30, 0.5).passed


# --- confidence intervals ------------------------------------------------------------------------


def test_bootstrap_ci_brackets_mean_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64) + torch.tensor([0.0, 1.0, 2.0])
    lo, hi = M.bootstrap_ci(x, n_boot=2000, seed=1)
    mean = x.mean(0)
    assert (lo < mean).all() and (mean < hi).all()
    # width close to the normal-theory 2 * 1.96 * s / sqrt(n)
    width = 2 * 1.96 * x.std(0) / math.sqrt(40)
    assert torch.allclose(hi - lo, width, rtol=0.2)
    lo2, hi2 = M.bootstrap_ci(x, n_boot=2000, seed=1)
    assert torch.equal(lo, lo2) and torch.equal(hi, hi2)
    lo3, _ = M.bootstrap_ci(x, n_boot=2000, seed=2)
    assert not torch.equal(lo, lo3)


def test_bootstrap_ci_collapses_for_identical_episodes():
    x = torch.tensor([[0.7, 0.5]] * 5, dtype=torch.float64)
    lo, hi = M.bootstrap_ci(x)
    assert torch.allclose(lo, x[0]) and torch.allclose(hi, x[0])


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[B, H\]"):
        M.bootstrap_ci(torch.zeros(3))
    with pytest.raises(ValueError, match="level"):
        M.bootstrap_ci(torch.zeros(3, 2), level=1.5)


# --- chance level --------------------------------------------------------------------------------


def test_chance_level_orthogonal_episodes_is_zero():
    # episode e's frames all point along axis e: frames of different episodes are orthogonal
    z = torch.eye(4, dtype=torch.float64).view(4, 1, 1, 4).expand(4, 5, 1, 4)
    assert M.chance_level(z) == pytest.approx(0.0)


def test_chance_level_reveals_shared_offset():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(6, 8, 4, 16, generator=g, dtype=torch.float64)
    assert abs(M.chance_level(u)) < 0.1
    shifted = u + 5.0  # every latent shares a large offset
    assert M.chance_level(shifted) > 0.9
    assert abs(M.chance_level(shifted - M.latent_mean(shifted))) < 0.1


def test_chance_level_single_episode_uses_distant_frames():
    # frame t is a unit vector at angle t*pi/10: frames >= 5 apart have cosine <= 0
    ang = torch.arange(11, dtype=torch.float64) * math.pi / 10
    z = torch.stack((ang.cos(), ang.sin()), -1).view(1, 11, 1, 2)
    assert M.chance_level(z, n_pairs=500) <= 1e-9
    with pytest.raises(ValueError, match="chance level needs"):
        M.chance_level(torch.ones(1, 1, 1, 2))


def test_latent_mean_per_token():
    z = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]], [[[3.0, 0.0], [0.0, 4.0]]]])  # [B=2, T=1, N=2, D=2]
    assert M.latent_mean(z).tolist() == [[2.0, 0.0], [0.0, 3.0]]


# --- hypothesis properties -----------------------------------------------------------------------

# |v| > 1e-100 or 0: scaled by 1e-3 a value stays far from underflow (a vector scaled to exactly 0
# has cosine 0 by definition, which is no failure of scale invariance; hypothesis found 5e-324 * 0.5)
finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=64).filter(lambda v: v == 0 or abs(v) > 1e-100)
latents = arrays("float64", st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 5)), elements=finite)


@settings(max_examples=60, deadline=None)
@given(latents, st.floats(1e-3, 1e3))
def test_cosine_with_itself_is_one_and_scale_invariant(x, scale):
    t = torch.from_numpy(x)
    t = t + (t.norm(dim=-1, keepdim=True) == 0).double()  # no zero vectors: their cosine is 0 by definition
    assert torch.allclose(M.cosine(t, t), torch.ones(t.shape[:2], dtype=torch.float64))
    other = t.flip(-1) + 0.5
    assert torch.allclose(M.cosine(t * scale, other), M.cosine(t, other), atol=1e-9)
    assert torch.allclose(M.cosine(t, other), M.cosine(other, t))
    assert (M.cosine(t, other).abs() <= 1 + 1e-12).all()


curves = st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(curves, st.floats(-1, 1), st.floats(-1, 1))
def test_drift_horizon_is_monotone_in_threshold(c, t1, t2):
    lo, hi = sorted((t1, t2))
    h_lo, h_hi = M.drift_horizon(c, lo), M.drift_horizon(c, hi)
    # a higher threshold is crossed no later (None = never = later than any step)
    inf = len(c) + 1
    assert (h_hi or inf) <= (h_lo or inf)
    if h_hi is not None:
        assert c[h_hi - 1] < hi and all(v >= hi for v in c[: h_hi - 1])


@settings(max_examples=100, deadline=None)
@given(curves, st.floats(0, 0.5))
def test_monotone_gate_matches_its_definition(c, tol):
    ok = all(c[j] <= c[i] + tol + 1e-12 for i in range(len(c)) for j in range(i + 1, len(c)))
    assert G.gate_monotone(c, tol).passed == ok or abs(M.max_rise(c)[0] - tol) < 1e-9


@settings(max_examples=40, deadline=None)
@given(latents)
def test_perfect_prediction_has_cosine_one_and_no_drift_horizon(x):
    t = torch.from_numpy(x) + 1000.0  # nonzero everywhere
    s = M.loop_stats(t, t.clone(), mean=M.latent_mean(t), n_boot=50)
    assert s.cosine == pytest.approx([1.0] * t.shape[1])
    assert s.drift_horizon is None and s.auc == pytest.approx(1.0)
    assert s.mse == [0.0] * t.shape[1] and s.l1 == [0.0] * t.shape[1]
