"""The small V-JEPA 2-AC trained from pixels (wmcore.models.ac_tiny): config, the action/state
convention for position targets, saving and loading, the KV-cached rollout on it, the loss, and the
``--arch ac-tiny`` training recipe. Models here are tiny and built by the tests themselves.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wmcore.data import Episode
from wmcore.data.episodes import save_episode, write_index
from wmcore.errors import WMError
from wmcore.models import load as load_model
from wmcore.models.ac_tiny import (
    ACJEPA, ACTinyConfig, PositionTargetCodec, load_checkpoint, load_world_model, normalise_actions,
    propagate_position, save_pretrained, state_tokens, tiny_config, training_state_tokens, world_model,
)
from wmcore.models.vjepa2_ac import VJEPA2ACWorldModel
from wmcore.rollout import closed_loop, open_loop
from wmcore.train import TrainConfig, train

K, W = 2, 2  # frameskip, recorded action width
CFG = tiny_config(frameskip=K, action_width=W, action_mean=(10.0, -5.0), action_std=(2.0, 4.0))


pytestmark = pytest.mark.usefixtures("few_threads")


def _module(cfg: ACTinyConfig = CFG, seed: int = 0) -> ACJEPA:
    torch.manual_seed(seed)
    return ACJEPA(cfg).eval()


@pytest.fixture(scope="module")
def module() -> ACJEPA:
    return _module()


@pytest.fixture(scope="module")
def wm(module) -> VJEPA2ACWorldModel:
    return world_model(module, name="tiny-ac")


def _inputs(b: int, t: int, seed: int = 1, s: int = 5):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, t, 20, 24, 3), generator=g, dtype=torch.uint8)
    actions = 10 + 3 * torch.randn(b, t, K * W, generator=g)
    states = 10 + 3 * torch.randn(b, t, s, generator=g)
    return frames, actions, states


# --- config


@pytest.mark.parametrize("change, says", [
    (dict(patch_size=5), "must divide"),
    (dict(state_columns=(0,)), "state_columns"),
    (dict(action_std=None), "both action_mean and action_std"),
    (dict(action_mean=(1.0,), action_std=(1.0,)), "entries"),
    (dict(predictor_heads=5), "multiple of predictor_heads"),
    (dict(state_mix=1.5), "state_mix"),
    (dict(max_frames=0), "positive integer"),
    (dict(pred_loss="huber"), "pred_loss"),
    (dict(inverse_dynamics=-1.0), "inverse_dynamics"),
    (dict(inverse_dynamics=1.0, freeze_encoder=True), "no use with freeze_encoder"),
])
def test_bad_config_says_what(change, says):
    with pytest.raises(WMError, match=says):
        dataclasses.replace(CFG, **change)


def test_config_json_round_trip_and_refusals():
    d = CFG.to_json()
    assert ACTinyConfig.from_json(json.loads(json.dumps(d))) == CFG
    with pytest.raises(WMError, match="format"):
        ACTinyConfig.from_json({**d, "format": "lewm"})
    with pytest.raises(WMError, match="version"):
        ACTinyConfig.from_json({**d, "version": 7})
    with pytest.raises(WMError, match=r"unknown keys \['colour'\]"):
        ACTinyConfig.from_json({**d, "colour": 1})


def test_predictor_follows_the_config():
    p = CFG.predictor_config()
    assert p.action_embed_dim == K * W and p.max_frames == CFG.max_frames
    assert p.embed_dim == CFG.encoder_hidden and p.tokens_per_frame == (CFG.image_size // CFG.patch_size) ** 2


# --- actions and states


def test_actions_are_normalised_per_recorded_dimension():
    a = torch.tensor([[12.0, -1.0, 8.0, -9.0]])  # two recorded steps of (x, y)
    assert torch.allclose(normalise_actions(a, CFG), torch.tensor([[1.0, 1.0, -1.0, -1.0]]))


def test_state_tokens_read_the_position_columns_normalised_and_tiled():
    cfg = dataclasses.replace(CFG, state_columns=(2, 0))
    s = torch.tensor([[[3.0, 99.0, 14.0, 77.0]]])  # columns 2, 0 = (14, 3)
    assert torch.allclose(state_tokens(s, cfg), torch.tensor([[[2.0, 2.0, 2.0, 2.0]]]))


def test_propagation_puts_the_agent_at_the_last_target_and_keeps_other_columns():
    s = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    a = torch.tensor([[10.0, 20.0, 30.0, 40.0]])  # targets (10, 20) then (30, 40)
    out = propagate_position(s, a, CFG)
    assert out.tolist() == [[30.0, 40.0, 3.0, 4.0, 5.0]]
    assert s.tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0]]  # not changed in place


def test_training_states_mix_recorded_and_propagated_positions():
    st = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    act = 100 + torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    mix = torch.tensor([True, False])
    got = training_state_tokens(st, act, CFG, mix)
    want_prop = st[0].clone()
    want_prop[1:, :2] = act[0, :-1, 2:]  # frames 1, 2: the last target of blocks 0, 1
    assert torch.allclose(got[0], state_tokens(want_prop, CFG))
    assert torch.allclose(got[1], state_tokens(st[1], CFG))
    assert torch.allclose(training_state_tokens(st, act, CFG, None), state_tokens(st, CFG))


# --- the world model


def test_encode_gives_layer_normed_tokens(wm):
    frames, _, _ = _inputs(2, 3)
    z = wm.encode(frames)
    n = (CFG.image_size // CFG.patch_size) ** 2
    assert z.shape == (2, 3, n, CFG.encoder_hidden)
    assert torch.allclose(z.mean(-1), torch.zeros(2, 3, n), atol=1e-5)
    assert not torch.allclose(z[:, 0], z[:, 1])  # different frames, different latents


@pytest.mark.parametrize("loop", ["open", "closed"])
def test_cached_rollout_equals_recompute_beyond_the_window(wm, loop):
    """12 steps with a 4-frame mask: the cache fills, then the window slides (re-encoded)."""
    frames, actions, states = _inputs(2, 13)
    z = wm.encode(frames)
    h = 12
    if loop == "open":
        run = lambda c: open_loop(wm, z[:, :1], actions, h, states=states[:, :1], use_cache=c)  # noqa: E731
    else:
        run = lambda c: closed_loop(wm, z, actions, h, states=states, use_cache=c)  # noqa: E731
    cached, full = run(True), run(False)
    assert cached.shape == (2, h, *z.shape[2:])
    assert (cached - full).abs().max() <= 1e-5


def test_open_loop_reads_no_recorded_state_after_the_context(wm):
    frames, actions, states = _inputs(1, 6)
    z = wm.encode(frames)
    other = states.clone()
    other[:, 1:] += 50.0
    a = open_loop(wm, z[:, :1], actions, 5, states=states)
    b = open_loop(wm, z[:, :1], actions, 5, states=other)
    assert torch.equal(a, b)
    c = closed_loop(wm, z, actions, 5, states=other)  # closed loop does read them
    assert not torch.allclose(c, closed_loop(wm, z, actions, 5, states=states))


def test_predictions_depend_on_actions_and_on_the_position(wm):
    frames, actions, states = _inputs(1, 2)
    z = wm.encode(frames)[:, :1]
    base = wm.predict(z, actions[:, :1], states[:, :1])
    assert not torch.allclose(base, wm.predict(z, actions[:, :1] + 5, states[:, :1]))
    moved = states[:, :1].clone()
    moved[..., 0] += 5
    assert not torch.allclose(base, wm.predict(z, actions[:, :1], moved))
    unread = states[:, :1].clone()
    unread[..., 4] += 5  # not a position column
    assert torch.equal(base, wm.predict(z, actions[:, :1], unread))


@pytest.mark.parametrize("states, says", [
    (None, "agent's position"),
    (torch.zeros(1, 1, 1), r"S >= 2"),
    (torch.full((1, 1, 5), float("nan")), "NaN"),
])
def test_bad_states_say_what(wm, states, says):
    z = torch.zeros(1, 1, wm.tokens_per_frame, CFG.encoder_hidden)
    with pytest.raises(WMError, match=says):
        wm.predict(z, torch.zeros(1, 1, K * W), states)


def test_wrong_action_width_names_the_convention(wm):
    z = torch.zeros(1, 1, wm.tokens_per_frame, CFG.encoder_hidden)
    with pytest.raises(WMError, match=r"action_dim 4 \(2 recorded 2-d position targets\)"):
        wm.predict(z, torch.zeros(1, 1, 7), torch.zeros(1, 1, 5))


def test_fingerprint_covers_weights_and_the_action_convention():
    a = world_model(_module())
    assert a.fingerprint() == world_model(_module()).fingerprint()
    assert a.fingerprint() != world_model(_module(seed=1)).fingerprint()
    other = _module()
    other.cfg = dataclasses.replace(CFG, action_mean=(0.0, 0.0))
    assert a.fingerprint() != world_model(other).fingerprint()
    assert a.config()["ac_tiny"]["action_std"] == [2.0, 4.0]


def test_the_world_model_is_the_ac_adapter_with_the_position_codec_and_one_frameskip(wm):
    """No subclass: the adapter reads actions and states through the codec it was given, and the
    frameskip it was given is the model's (the config's)."""
    assert type(wm) is VJEPA2ACWorldModel and isinstance(wm.codec, PositionTargetCodec)
    assert (wm.frameskip, wm.action_dim, wm.state_dim) == (K, K * W, 2)
    assert wm.codec.cfg == CFG
    with pytest.raises(WMError, match="frameskip 3"):
        VJEPA2ACWorldModel(wm.predictor, wm.encoder, frameskip=3, codec=PositionTargetCodec(CFG))


# --- loss


def test_predict_next_is_causal_over_frames():
    m = _module()
    emb = m.embed(torch.randn(1, 4, 3, CFG.image_size, CFG.image_size))
    act, st = torch.randn(1, 4, K * W), torch.randn(1, 4, K * W)
    a = m.predict_next(emb, act, st)
    emb2, act2 = emb.clone(), act.clone()
    emb2[:, 2:] += 1.0
    act2[:, 2:] += 1.0
    b = m.predict_next(emb2, act2, st)
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-6) and not torch.allclose(a[:, 2:], b[:, 2:])


def test_the_action_pathway_learns_a_global_action_effect():
    """What the PushT runs lacked (module docstring): there the trained predictor's output did not
    depend on its actions at all. On latents whose change is a global linear function of the action,
    the same predictor (official init, L1, AdamW) learns to use its action tokens within 150 steps:
    shuffling the actions across the batch then costs it its skill."""
    torch.manual_seed(0)
    m = ACJEPA(CFG).train()
    n, d = m.predictor.config.tokens_per_frame, CFG.encoder_hidden
    effect = torch.randn(K * W, d) * 0.3
    frames = torch.nn.functional.layer_norm(torch.randn(16, n, d), (d,))
    opt = torch.optim.AdamW(m.predictor.parameters(), lr=1e-3)

    def batch(b: int):
        emb = frames[torch.randint(0, 16, (b,))].unsqueeze(1)
        act, st = torch.randn(b, 1, K * W), torch.randn(b, 1, K * W)
        return emb, act, st, ACJEPA.norm(emb + (act @ effect)[:, :, None, :])

    def skill(emb, act, st, target) -> float:
        with torch.no_grad():
            err = (m.predict_next(emb, act, st) - target).square().mean()
            return float(1 - err / (emb - target).square().mean())

    for _ in range(150):
        emb, act, st, target = batch(32)
        loss = (m.predict_next(emb, act, st) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    emb, act, st, target = batch(256)
    learned, shuffled = skill(emb, act, st, target), skill(emb, act[torch.randperm(256)], st, target)
    assert learned > 0.3 and learned - shuffled > 0.3, (learned, shuffled)


# --- saving and loading


def test_save_load_round_trip_gives_the_same_predictions(tmp_path, module, wm):
    save_pretrained(module, tmp_path / "m")
    back = load_world_model(tmp_path / "m", name="back")
    assert back.fingerprint() == wm.fingerprint()
    frames, actions, states = _inputs(1, 3)
    z = wm.encode(frames)
    assert torch.equal(back.encode(frames), z)
    assert torch.equal(back.predict(z[:, :2], actions[:, :2], states[:, :2]), wm.predict(z[:, :2], actions[:, :2], states[:, :2]))
    assert load_model(f"ac-tiny:{tmp_path / 'm'}").fingerprint() == wm.fingerprint()
    before = (tmp_path / "m" / "config.json").read_bytes()
    with pytest.raises(WMError, match="never overwrites"):
        save_pretrained(module, tmp_path / "m")
    assert (tmp_path / "m" / "config.json").read_bytes() == before


def test_corrupt_or_mismatched_weights_are_refused(tmp_path, module):
    d = save_pretrained(module, tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(WMError, match="cannot read the weights"):
        load_checkpoint(d)
    d2 = save_pretrained(_module(dataclasses.replace(CFG, predictor_depth=1)), tmp_path / "m2")
    (d2 / "config.json").write_text(json.dumps(CFG.to_json()))  # config says 2 blocks, weights have 1
    with pytest.raises(WMError, match=r"missing keys .*predictor\.predictor_blocks\.1"):
        load_checkpoint(d2)
    with pytest.raises(WMError, match="expected config.json"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(WMError, match="ac-tiny:DIR"):
        load_model("ac-tiny")


# --- the training recipe


def _episode(steps: int, seed: int) -> Episode:
    """A square that goes where the (absolute) targets say, over noise; states = its position + extra."""
    g = np.random.default_rng(seed)
    size = 24
    targets = g.uniform(2, 16, size=(steps, 2)).astype(np.float32)
    pos = np.concatenate([[[8.0, 8.0]], targets], 0)
    frames = g.integers(0, 40, (steps + 1, size, size, 3), dtype=np.uint8)
    for t, (r, c) in enumerate(pos.astype(int)):
        frames[t, r : r + 6, c : c + 6] = 230
    states = np.concatenate([pos, np.zeros((steps + 1, 1))], 1).astype(np.float32)
    return Episode(torch.from_numpy(frames), torch.from_numpy(targets), torch.from_numpy(states), 10.0, f"sq-{seed}")


@pytest.fixture(scope="module")
def ac_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ac-data")
    write_index(d, {"fps": 10.0, "height": 24, "width": 24},
                [save_episode(d, i, _episode(16, i), seed=i) for i in range(5)])
    return d


TCFG = TrainConfig(steps=4, batch=3, window=3, val_every=2, log_every=1, val_episodes=2, warmup=1, seed=0)


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


def test_training_writes_a_loadable_model_deterministically(ac_data, tmp_path):
    cfg = tiny_config(frameskip=K)
    lines: list[str] = []
    final = train(str(ac_data), str(tmp_path / "a"), cfg, TCFG, device="cpu", log=lines.append)
    wm = load_world_model(final)
    assert wm.codec.cfg.action_mean is not None and len(wm.codec.cfg.action_mean) == W  # training-split statistics
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert [e["step"] for e in log] == [2, 4] and all(np.isfinite(e["val_cos"]) for e in log)
    train(str(ac_data), str(tmp_path / "b"), cfg, TCFG, device="cpu", log=lambda s: None)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    train(str(ac_data), str(tmp_path / "c"), cfg, dataclasses.replace(TCFG, seed=1), device="cpu", log=lambda s: None)
    wc = _weights(tmp_path / "c")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    frames = torch.stack([_episode(16, 0).frames[:3]])
    assert torch.isfinite(wm.encode(frames)).all()


def test_a_frozen_encoder_stage_starts_from_another_models_encoder(ac_data, tmp_path):
    """Stage 2 of the pusht-ac-tiny recipe: --encoder-from a stage-1 model with freeze_encoder; the
    encoder comes out bit-identical to stage 1's, the predictor trained afresh."""
    stage1 = train(str(ac_data), str(tmp_path / "s1"), tiny_config(frameskip=K, inverse_dynamics=1.0), TCFG,
                   device="cpu", log=lambda s: None)
    cfg2 = tiny_config(frameskip=K, freeze_encoder=True, pred_loss="mse")
    final = train(str(ac_data), str(tmp_path / "s2"), cfg2, dataclasses.replace(TCFG, encoder_from=str(stage1)),
                  device="cpu", log=lambda s: None)
    w1, w2 = _weights(tmp_path / "s1"), _weights(tmp_path / "s2")
    enc = [k for k in w2 if k.startswith("encoder.")]
    assert enc and all(torch.equal(w1[k], w2[k]) for k in enc)
    assert any(not torch.equal(w1[k], w2[k]) for k in w2 if k.startswith("predictor."))
    assert not any(k.startswith("inverse.") for k in w2) and any(k.startswith("inverse.") for k in w1)
    log1 = json.loads((tmp_path / "s1" / "train_log.json").read_text())
    assert all(np.isfinite(e["val_inverse"]) for e in log1)
    assert load_world_model(final).codec.cfg.pred_loss == "mse"
    with pytest.raises(WMError, match=r"encoder differs from this run's: patch_size 8 \(this run: 4\)"):
        train(str(ac_data), str(tmp_path / "s3"), tiny_config(frameskip=K, patch_size=4),
              dataclasses.replace(TCFG, encoder_from=str(stage1)), device="cpu", log=lambda s: None)
    assert not (tmp_path / "s3").exists()  # refused before anything was written
    with pytest.raises(WMError, match="only --arch ac-tiny"):
        from wmcore.models.lewm import tiny_config as lewm_tiny
        train(str(ac_data), str(tmp_path / "s4"), lewm_tiny(frameskip=K, action_dim=K * W),
              dataclasses.replace(TCFG, encoder_from=str(stage1)), device="cpu", log=lambda s: None)


def test_training_needs_states_for_the_position_token(tmp_path):
    d = tmp_path / "nostates"
    eps = [dataclasses.replace(_episode(16, i), states=None) for i in range(4)]
    write_index(d, {"fps": 10.0, "height": 24, "width": 24}, [save_episode(d, i, e, seed=i) for i, e in enumerate(eps)])
    with pytest.raises(WMError, match="episodes without states"):
        train(str(d), str(tmp_path / "out"), tiny_config(frameskip=K), TCFG, device="cpu", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_training_checks_the_state_columns(ac_data, tmp_path):
    with pytest.raises(WMError, match="state_columns"):
        train(str(ac_data), str(tmp_path / "out"), tiny_config(frameskip=K, state_columns=(0, 5)), TCFG,
              device="cpu", log=lambda s: None)


