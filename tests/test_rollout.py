"""Rollouts against known answers: the analytic world (cosines in closed form) and a summing model
whose open loop yields powers of two (full history) or Fibonacci numbers (window of 2)."""

from __future__ import annotations

import pytest
import torch

from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes, world_latents
from wmcore.rollout import block_actions, closed_loop, make_actions, open_loop, subsample
from wmcore import metrics as M


class SumModel:
    """Next latent = sum of the context window's latents + the last action's sum, in every channel.

    Implements the incremental interface (the cache is the window of frames), so cached and full
    rollouts can be compared on a model whose output depends on the whole window.
    """

    name = "sum"
    frameskip = 1
    tokens_per_frame = 1

    def __init__(self, action_dim=1, max_context=None, use_states=False):
        self.action_dim, self.max_context, self.use_states = action_dim, max_context, use_states
        self.calls = 0

    def encode(self, frames):
        return frames.double().mean((-3, -2, -1))[..., None, None]

    def predict(self, context, actions, states=None):
        self.calls += 1
        out = context.sum(1) + actions[:, -1].sum(-1)[:, None, None]
        if self.use_states:
            out = out + states[:, -1].sum(-1)[:, None, None]
        return out

    def start(self, batch, window):
        return {"window": window, "frames": [], "states": []}

    def step(self, cache, latent, action, state=None):
        frames = (cache["frames"] + [latent])[-cache["window"] :] if cache["window"] else cache["frames"] + [latent]
        out = torch.stack(frames, 1).sum(1) + action.sum(-1)[:, None, None]
        if self.use_states:
            out = out + state.sum(-1)[:, None, None]
        return out, {**cache, "frames": frames}

    def fingerprint(self):
        return "0" * 64


class StatefulSum(SumModel):
    """SumModel that reads states and propagates them: s' = s + a."""

    def __init__(self):
        super().__init__(use_states=True)

    def propagate_state(self, state, action):
        return state + action


def ones(b=1, t=1):
    return torch.ones(b, t, 1, 1, dtype=torch.float64)


def zeros_actions(b=1, t=10, a=1):
    return torch.zeros(b, t, a, dtype=torch.float64)


# --- known answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("use_cache", [False, True])
def test_full_history_doubles_and_window_two_is_fibonacci(use_cache):
    m = SumModel()
    full = open_loop(m, ones(), zeros_actions(), 6, use_cache=use_cache)
    assert full[0, :, 0, 0].tolist() == [1, 2, 4, 8, 16, 32]
    fib = open_loop(m, ones(), zeros_actions(), 6, window=2, use_cache=use_cache)
    assert fib[0, :, 0, 0].tolist() == [1, 2, 3, 5, 8, 13]
    assert open_loop(m, ones(), zeros_actions(), 4, window=1, use_cache=use_cache)[0, :, 0, 0].tolist() == [1] * 4


def test_max_context_caps_the_default_window_and_rejects_larger():
    m = SumModel(max_context=2)
    assert open_loop(m, ones(), zeros_actions(), 5)[0, :, 0, 0].tolist() == [1, 2, 3, 5, 8]
    with pytest.raises(ValueError, match="exceeds model 'sum'.s max_context 2"):
        open_loop(m, ones(), zeros_actions(), 5, window=3)


@pytest.mark.parametrize("use_cache", [False, True])
def test_context_of_several_frames_and_action_alignment(use_cache):
    m = SumModel()
    ctx = torch.tensor([1.0, 10.0], dtype=torch.float64).view(1, 2, 1, 1)
    acts = torch.tensor([100.0, 0.5, 0.25, 0.125], dtype=torch.float64).view(1, 4, 1)
    # frame 2 = 1 + 10 + a1; frame 3 = 1 + 10 + f2 + a2; action a0 (100) is never the last one used
    got = open_loop(m, ctx, acts, 2, use_cache=use_cache)[0, :, 0, 0].tolist()
    assert got == [11.5, 1 + 10 + 11.5 + 0.25]


@pytest.mark.parametrize("window", [None, 1, 2, 3])
@pytest.mark.parametrize("context", [1, 2, 3])
def test_cached_rollout_equals_full_recompute(window, context):
    g = torch.Generator().manual_seed(window or 0)
    z = torch.rand(3, 12, 1, 1, generator=g, dtype=torch.float64)
    a = torch.rand(3, 12, 2, generator=g, dtype=torch.float64) * 0.1
    m = SumModel(action_dim=2)
    h = 12 - context
    for fn, src in ((open_loop, z[:, :context]), (closed_loop, z)):
        kw = {} if fn is open_loop else {"context": context}
        full = fn(m, src, a, h, window=window, use_cache=False, **kw)
        cached = fn(m, src, a, h, window=window, use_cache=True, **kw)
        assert torch.allclose(full, cached, rtol=1e-12), fn.__name__


def test_closed_loop_teacher_forces_from_real_latents():
    m = SumModel()
    z = torch.tensor([1.0, 5.0, 2.0, 7.0, 3.0], dtype=torch.float64).view(1, 5, 1, 1)
    got = closed_loop(m, z, zeros_actions(t=5), 4, window=2)[0, :, 0, 0].tolist()
    assert got == [1, 6, 7, 9]  # z0, z0+z1, z1+z2, z2+z3
    got = closed_loop(m, z, zeros_actions(t=5), 3, context=2, window=None)[0, :, 0, 0].tolist()
    assert got == [6, 8, 15]


def test_analytic_world_open_and_closed_loop_cosines_are_exact():
    cfg = AnalyticConfig(delta=0.07)
    z, a = world_latents(cfg, episodes=4, steps=20, seed=3)
    m = AnalyticModel(cfg)
    h = 20
    target = z[:, 1 : 1 + h]
    open_cos = M.curve(M.cosine(open_loop(m, z[:, :1], a.double(), h), target))
    closed_cos = M.curve(M.cosine(closed_loop(m, z, a.double(), h), target))
    k = torch.arange(1, h + 1, dtype=torch.float64)
    assert torch.allclose(open_cos, torch.cos(0.07 * k), atol=1e-10)
    assert torch.allclose(closed_cos, torch.full((h,), torch.cos(torch.tensor(0.07, dtype=torch.float64)).item(), dtype=torch.float64), atol=1e-10)
    assert M.drift_horizon(open_cos, 0.5) == int(torch.arccos(torch.tensor(0.5)) / 0.07) + 1


def test_analytic_world_with_zero_actions_matches_closed_form():
    cfg = AnalyticConfig(delta=0.0)  # a perfect model: all drift comes from the withheld actions
    z, a = world_latents(cfg, episodes=3, steps=15, seed=4)
    m = AnalyticModel(cfg)
    pred = open_loop(m, z[:, :1], make_actions("zeros", a).double(), 15)
    gain = torch.tensor(cfg.gain, dtype=torch.float64)
    err = -(a.double() @ gain).cumsum(1)  # angle error after k steps
    assert torch.allclose(M.cosine(pred, z[:, 1:16]), torch.cos(err), atol=1e-10)


def test_perfect_model_closed_loop_equals_open_loop():
    cfg = AnalyticConfig(delta=0.0)
    z, a = world_latents(cfg, episodes=2, steps=10, seed=5)
    m = AnalyticModel(cfg)
    o = open_loop(m, z[:, :1], a.double(), 10)
    c = closed_loop(m, z, a.double(), 10)
    assert torch.allclose(o, c, atol=1e-12) and torch.allclose(o, z[:, 1:11], atol=1e-12)
    s = M.loop_stats(o, z[:, 1:11], mean=M.latent_mean(z), n_boot=20)
    assert s.drift_horizon is None and min(s.cosine) > 1 - 1e-12


def test_frameskip_blocks_and_analytic_model_at_frameskip_two():
    rec = torch.arange(12, dtype=torch.float32).view(1, 6, 2)  # 6 steps x 2 dims
    blocks = block_actions(rec, 3)
    assert blocks.tolist() == [[[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]]
    assert block_actions(rec[:, :5], 2).shape == (1, 2, 4)  # trailing partial block dropped
    with pytest.raises(ValueError, match="fewer than one block"):
        block_actions(rec[:, :2], 3)

    cfg = AnalyticConfig(delta=0.05, frameskip=2)
    z, a = world_latents(cfg, episodes=2, steps=20, seed=6)
    m = AnalyticModel(cfg)
    zs, ab = subsample(z, 2), block_actions(a.double(), 2)
    assert zs.shape[1] == 11 and ab.shape == (2, 10, 4) and m.action_dim == 4
    cos = M.curve(M.cosine(open_loop(m, zs[:, :1], ab, 10), zs[:, 1:11]))
    assert torch.allclose(cos, torch.cos(0.05 * torch.arange(1, 11, dtype=torch.float64)), atol=1e-10)


@pytest.mark.parametrize("action_dim", [2, 7, 14])
def test_any_action_dimension(action_dim):
    m = SumModel(action_dim=action_dim)
    a = torch.full((2, 3, action_dim), 0.5, dtype=torch.float64)
    got = open_loop(m, ones(2), a, 3, window=1)
    assert got[:, :, 0, 0].tolist() == [[1 + action_dim / 2 * k for k in (1, 2, 3)]] * 2


def test_open_loop_propagates_states_instead_of_reading_recorded_ones():
    m = StatefulSum()
    states = torch.tensor([[[1.0], [99.0], [99.0]]], dtype=torch.float64)  # recorded states after frame 0 are poison
    a = torch.tensor([[[0.5], [0.25], [0.0]]], dtype=torch.float64)
    got = open_loop(m, ones(), a, 3, window=1, states=states)[0, :, 0, 0].tolist()
    # s0=1, s1=1.5, s2=1.75; z1 = 1 + a0 + s0 = 2.5; z2 = 2.5 + 0.25 + 1.5 = 4.25; z3 = 4.25 + 0 + 1.75 = 6
    assert got == [2.5, 4.25, 6.0]
    with pytest.raises(ValueError, match="no propagate_state"):
        open_loop(SumModel(use_states=True), ones(), a, 3, states=states)


# --- action sources ------------------------------------------------------------------------------


def test_action_sources():
    g = torch.Generator().manual_seed(0)
    rec = torch.randn(8, 200, 3, generator=g) * torch.tensor([1.0, 5.0, 0.0]) + torch.tensor([0.0, 2.0, 3.0])
    assert make_actions("recorded", rec) is rec
    assert not make_actions("zeros", rec).any()
    r1, r2, r3 = (make_actions("random", rec, seed=s) for s in (1, 1, 2))
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)
    assert r1.shape == rec.shape and r1.dtype == rec.dtype
    assert torch.allclose(r1.reshape(-1, 3).mean(0), torch.tensor([0.0, 2.0, 3.0]), atol=0.2)
    assert torch.allclose(r1.reshape(-1, 3).std(0), torch.tensor([1.0, 5.0, 1.0]), rtol=0.1)  # constant dim -> std 1
    assert not torch.allclose(r1, rec, atol=0.5)
    with pytest.raises(ValueError, match="action source must be one of"):
        make_actions("teleop", rec)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("horizon", [0, -3, 2.5])
def test_bad_horizon(horizon):
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        open_loop(SumModel(), ones(), zeros_actions(), horizon)


def test_fewer_actions_than_horizon():
    with pytest.raises(ValueError, match=r"horizon 12 after 1 context frame\(s\) needs 12 actions, found 10"):
        open_loop(SumModel(), ones(), zeros_actions(t=10), 12)
    with pytest.raises(ValueError, match="needs 13 frames, found 5"):
        closed_loop(SumModel(), ones(t=5), zeros_actions(t=20), 12, context=2)


def test_action_dimension_mismatch_names_both_and_hints_at_frameskip():
    with pytest.raises(ValueError, match="takes action_dim 1, found 3"):
        open_loop(SumModel(), ones(), zeros_actions(a=3), 2)
    m = AnalyticModel(AnalyticConfig(frameskip=5))
    z = torch.zeros(1, 1, m.tokens_per_frame, m.cfg.channels)
    with pytest.raises(ValueError, match=r"takes action_dim 10, found 2 \(recorded actions\? .*block_actions\(actions, 5\)"):
        open_loop(m, z, torch.zeros(1, 5, 2), 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_latents_and_actions(bad):
    z = ones(1, 3)
    z[0, 1, 0, 0] = bad
    with pytest.raises(ValueError, match=r"latents: contain NaN or inf \(first at index \[0, 1, 0, 0\]\)"):
        closed_loop(SumModel(), z, zeros_actions(), 2)
    a = zeros_actions()
    a[0, 0, 0] = bad
    with pytest.raises(ValueError, match="actions: contain NaN or inf"):
        open_loop(SumModel(), ones(), a, 2)


def test_wrong_ranks_and_batches():
    with pytest.raises(ValueError, match=r"context: expected rank 4 \[B, T, N, D\], found shape \(1, 1, 1\)"):
        open_loop(SumModel(), torch.ones(1, 1, 1), zeros_actions(), 2)
    with pytest.raises(ValueError, match=r"actions: expected rank 3"):
        open_loop(SumModel(), ones(), torch.zeros(10, 1), 2)
    with pytest.raises(ValueError, match="batch 2 does not match the latents' batch 1"):
        open_loop(SumModel(), ones(), zeros_actions(b=2), 2)
    with pytest.raises(ValueError, match="expected floating-point latents"):
        open_loop(SumModel(), torch.ones(1, 1, 1, 1, dtype=torch.long), zeros_actions(), 2)


def test_misbehaving_model_is_named():
    class Broken(SumModel):
        def predict(self, context, actions, states=None):
            return torch.full_like(context[:, -1], float("nan")) if context.shape[1] > 1 else context[:, -1]

    with pytest.raises(ValueError, match="model 'sum' predicted NaN or inf at step 2"):
        open_loop(Broken(), ones(), zeros_actions(), 3, use_cache=False)

    class Shape(SumModel):
        def predict(self, context, actions, states=None):
            return context

    with pytest.raises(ValueError, match=r"returned shape \(1, 1, 1, 1\) at step 1, expected \[B, N, D\]"):
        open_loop(Shape(), ones(), zeros_actions(), 3, use_cache=False)


def test_analytic_encode_rejects_bad_frames():
    m = AnalyticModel()
    frames = torch.stack([e.frames for e in make_episodes(m.cfg, 2, 3)])
    assert m.encode(frames).shape == (2, 4, 16, 48)
    with pytest.raises(ValueError, match=r"expected uint8 \[B, T, 16, 16, 3\], found \(4, 16, 16, 3\) torch.uint8"):
        m.encode(frames[0])
    with pytest.raises(ValueError, match="torch.float32"):
        m.encode(frames.float())
