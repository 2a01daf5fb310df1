"""V-JEPA 2-AC: the official state-dict layout, block-causal frames, the KV cache against full
recompute in both rollout modes, the official RoPE (and its duplicated-frequency quirk), the official
pose update, and bad input.

The reference layout and the reference poses below were read off facebookresearch/vjepa2
(``src/models/ac_predictor.py``, ``src/models/utils/modules.py``, ``notebooks/utils/mpc_utils.py``);
every model is tiny and built here, nothing is downloaded.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wmcore.errors import WMError
from wmcore.models.vjepa2_ac import (
    ACPredictor,
    VJEPA2ACWorldModel,
    compute_new_pose,
    frame_causal_mask,
    load_official_checkpoint,
    load_predictor_state,
    rope_rotate,
)
from wmcore.protocol import IncrementalWorldModel, StatePropagator, WorldModel
from wmcore.rollout import closed_loop, open_loop

E, DP, A, DEPTH = 32, 32, 7, 2  # encoder width, predictor width, action width, blocks
N = 4  # 32 px / patch 16 -> 2 x 2 tokens per frame
TINY = dict(img_size=32, patch_size=16, num_frames=64, tubelet_size=2, embed_dim=E, predictor_embed_dim=DP,
            depth=DEPTH, num_heads=2, action_embed_dim=A)  # mask: 64 // 2 = 32 frames


def official_layout(depth: int = DEPTH, e: int = E, dp: int = DP, a: int = A, hidden: int = 4 * DP) -> dict:
    """``VisionTransformerPredictorAC(...).state_dict()`` key -> shape, in registration order.
    extrinsics_encoder is there even with use_extrinsics=False: the official __init__ always builds it."""
    lin = lambda out, inp: [("weight", (out, inp)), ("bias", (out,))]  # noqa: E731
    norm = [("weight", (dp,)), ("bias", (dp,))]
    mods = [("predictor_embed", lin(dp, e)), ("action_encoder", lin(dp, a)), ("state_encoder", lin(dp, a)),
            ("extrinsics_encoder", lin(dp, a - 1))]
    for i in range(depth):
        b = f"predictor_blocks.{i}"
        mods += [(f"{b}.norm1", norm), (f"{b}.attn.qkv", lin(3 * dp, dp)), (f"{b}.attn.proj", lin(dp, dp)),
                 (f"{b}.norm2", norm), (f"{b}.mlp.fc1", lin(hidden, dp)), (f"{b}.mlp.fc2", lin(dp, hidden))]
    mods += [("predictor_norm", norm), ("predictor_proj", lin(e, dp))]
    return {f"{m}.{leaf}": shape for m, leaves in mods for leaf, shape in leaves}


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * (0.5 if len(s) == 1 else s[-1] ** -0.5)
            for k, s in official_layout().items()}


@pytest.fixture(scope="module")
def predictor() -> ACPredictor:
    p = ACPredictor(**TINY)
    load_predictor_state(p, tiny_state())
    return p.eval()


@pytest.fixture(scope="module")
def model(predictor) -> VJEPA2ACWorldModel:
    return VJEPA2ACWorldModel(predictor, name="tiny-ac")


def episode(b: int = 2, t: int = 31, seed: int = 1):
    """Latents [B, T, N, E] (layer-normed, as encode gives them), pose deltas [B, T, 7], poses [B, T, 7]."""
    g = torch.Generator().manual_seed(seed)
    z = F.layer_norm(torch.randn(b, t, N, E, generator=g), (E,))
    a = torch.cat([torch.randn(b, t, 3, generator=g) * 0.05, torch.randn(b, t, 3, generator=g) * 0.2,
                   torch.randn(b, t, 1, generator=g) * 0.3], -1)
    s = torch.cat([torch.randn(b, t, 3, generator=g), torch.rand(b, t, 3, generator=g) * 2 - 1,
                   torch.rand(b, t, 1, generator=g)], -1)
    return z, a, s


# --------------------------------------------------------------------------------------------------
# layout and checkpoints


def test_state_dict_has_exactly_the_official_keys_and_shapes(predictor):
    layout = official_layout()
    sd = predictor.state_dict()
    assert list(sd) == list(layout)
    assert {k: tuple(v.shape) for k, v in sd.items()} == layout
    ref = tiny_state()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)  # strict load put every tensor in place


def test_released_configuration_has_the_released_shapes():
    with torch.device("meta"):  # ~300M parameters: shapes only
        p = ACPredictor()
    sd = p.state_dict()
    assert list(sd) == list(official_layout(depth=24, e=1408, dp=1024, a=7, hidden=4096))
    assert tuple(sd["predictor_blocks.23.attn.qkv.weight"].shape) == (3072, 1024)
    assert p.config.max_frames == 32 and p.config.tokens_per_frame == 256 and p.config.head_dim == 64


def test_missing_extra_and_misshapen_keys_are_listed(predictor):
    state = tiny_state()
    del state["predictor_blocks.1.attn.proj.bias"]
    state["predictor_pos_embed"] = torch.zeros(1)
    state["predictor_proj.bias"] = torch.zeros(E + 1)
    with pytest.raises(WMError) as e:
        load_predictor_state(ACPredictor(**TINY), state, source="ckpt")
    msg = str(e.value)
    assert "missing keys 1: predictor_blocks.1.attn.proj.bias" in msg
    assert "unexpected keys 1: predictor_pos_embed" in msg
    assert f"predictor_proj.bias ({E + 1},) (expected ({E},))" in msg


def test_official_checkpoint_file_loads_strictly(tmp_path):
    ckpt = {"encoder": {"module.backbone.patch_embed.proj.weight": torch.ones(2)},
            "predictor": {f"module.backbone.{k}": v for k, v in tiny_state(3).items()}, "epoch": 315}
    torch.save(ckpt, tmp_path / "ac.pt")
    pred, enc = load_official_checkpoint(tmp_path / "ac.pt", img_size=32, num_frames=64, num_heads=2)
    assert list(enc) == ["patch_embed.proj.weight"]
    assert (pred.config.embed_dim, pred.config.predictor_embed_dim, pred.config.depth) == (E, DP, DEPTH)
    assert all(torch.equal(pred.state_dict()[k], v) for k, v in tiny_state(3).items())

    bad = dict(ckpt, predictor={k: v for k, v in ckpt["predictor"].items() if "state_encoder.weight" not in k})
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(WMError, match=r"missing keys 1: state_encoder\.weight"):
        load_official_checkpoint(tmp_path / "bad.pt", img_size=32, num_heads=2)


def test_checkpoint_without_predictor_or_file_says_what_it_found(tmp_path):
    torch.save({"encoder": {}, "target_encoder": {}, "epoch": 1}, tmp_path / "enc.pt")
    with pytest.raises(WMError, match=r"'predictor'.*found keys \['encoder', 'epoch', 'target_encoder'\]"):
        load_official_checkpoint(tmp_path / "enc.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(WMError, match="found list"):
        load_official_checkpoint(tmp_path / "list.pt")
    with pytest.raises(WMError, match="no such file"):
        load_official_checkpoint(tmp_path / "absent.pt")


# --------------------------------------------------------------------------------------------------
# the predictor


def test_shapes_and_protocols(model, predictor):
    z, a, s = episode(t=5)
    out = predictor(z.flatten(1, 2), a, s)
    assert out.shape == (2, 5 * N, E)
    assert model.predict(z, a, s).shape == (2, N, E)
    assert isinstance(model, WorldModel) and isinstance(model, IncrementalWorldModel)
    assert isinstance(model, StatePropagator)
    assert (model.tokens_per_frame, model.max_context, model.action_dim, model.frameskip) == (N, 32, 7, 1)


@pytest.mark.parametrize("which", ["latents", "actions", "states"])
def test_frame_causal_later_inputs_leave_earlier_slots_bit_identical(predictor, which):
    z, a, s = episode(t=6)
    x = z.flatten(1, 2)
    base = predictor(x, a, s).view(2, 6, N, E)
    t = 3  # change frame t + 1 = 4
    x2, a2, s2 = x.clone(), a.clone(), s.clone()
    if which == "latents":
        x2[:, (t + 1) * N:(t + 2) * N] += 1.0
    elif which == "actions":
        a2[:, t + 1] += 1.0
    else:
        s2[:, t + 1] += 1.0
    out = predictor(x2, a2, s2).view(2, 6, N, E)
    assert torch.equal(out[:, : t + 1], base[:, : t + 1])
    assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-3


def test_output_matches_the_official_module_on_the_same_weights(predictor):
    z, a, s = episode(t=3)
    out = predictor(z.flatten(1, 2), a, s)
    # facebookresearch/vjepa2 vit_ac_predictor(**TINY) with tiny_state() loaded, on these inputs
    ref_first = [-1.8070430755615234, 0.21271011233329773, 0.7804281711578369, -0.33719903230667114,
                 -0.5263847708702087, 0.06711604446172714]
    ref_last = [-0.8122514486312866, -0.8717250823974609, -0.5077403783798218, -0.4673308730125427,
                0.38486266136169434, -0.6002745032310486]
    torch.testing.assert_close(out[0, 0, :6], torch.tensor(ref_first), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1, -1, -6:], torch.tensor(ref_last), rtol=0, atol=1e-5)
    assert out.double().pow(2).sum().item() == pytest.approx(335.7278684931513, rel=1e-6)


def test_rope_positions_follow_the_official_separate_positions():
    p = ACPredictor(**{**TINY, "img_size": (32, 64)})  # 2 x 4 patches; 2 conditioning tokens per frame
    pos = p.rope_positions(1, 2)
    cond = [0.0, 0.0]  # action and state tokens: only the frame part turns (row = col = 0 is the identity)
    assert pos.frame.tolist() == [1.0] * 10 + [2.0] * 10
    assert pos.row.tolist() == (cond + [0.0] * 4 + [1.0] * 4) * 2
    # the official code rescales columns to its grid_size (= grid height): col * 2 / 4
    assert pos.col.tolist() == (cond + [0.0, 0.5, 1.0, 1.5] * 2) * 2


def test_frame_mask_matches_the_official_construction():
    m = frame_causal_mask(3, 2, 2, add_tokens=2)  # 3 frames of 2 + 4 tokens
    assert m.shape == (18, 18)
    for q in range(18):
        for k in range(18):
            assert bool(m[q, k]) == (k // 6 <= q // 6)


def test_prediction_is_the_layer_normed_last_slot(model, predictor):
    z, a, s = episode(t=4)
    raw = predictor(z.flatten(1, 2), a, s)[:, -N:]
    pred = model.predict(z, a, s)
    torch.testing.assert_close(pred, F.layer_norm(raw, (E,)), rtol=0, atol=1e-6)
    torch.testing.assert_close(pred.mean(-1), torch.zeros(2, N), rtol=0, atol=1e-5)
    plain = VJEPA2ACWorldModel(predictor, normalize_reps=False)
    torch.testing.assert_close(plain.predict(z, a, s), raw, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# KV cache == full recompute


@pytest.mark.parametrize("window", [None, 5])
def test_cached_rollouts_equal_full_recompute_over_30_steps(model, window):
    z, a, s = episode(t=31)
    kw = dict(window=window)
    cl = [closed_loop(model, z, a, 30, states=s, use_cache=c, **kw) for c in (True, False)]
    ol = [open_loop(model, z[:, :1], a, 30, states=s[:, :1], use_cache=c, **kw) for c in (True, False)]
    assert cl[0].shape == ol[0].shape == (2, 30, N, E)
    assert (cl[0] - cl[1]).abs().max() <= 1e-5
    assert (ol[0] - ol[1]).abs().max() <= 1e-5
    assert (ol[0] - cl[0]).abs().max() > 1e-2  # the two modes differ: both paths were exercised


def test_cache_feeds_one_frame_per_step_until_the_window_slides(model):
    seen: list[int] = []
    hook = model.predictor.predictor_embed.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        z, a, s = episode(t=8)
        closed_loop(model, z, a, 7, states=s, window=4, use_cache=True)
    finally:
        hook.remove()
    # frames 0..3 one at a time, then the window of 4 is re-encoded from position 0 each step
    assert seen == [N, N, N, N, 4 * N, 4 * N, 4 * N]


# --------------------------------------------------------------------------------------------------
# RoPE


def test_rope_by_hand_official_duplicated_frequencies_and_true_pairs():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    p = 0.7
    f0, f1 = p * 1.0, p / 100.0  # 10000 ** (-j / 2), j = 0, 1
    c, s = math.cos, math.sin
    official = [1 * c(f0) - 2 * s(f0), 2 * c(f1) + 1 * s(f1), 3 * c(f0) - 4 * s(f0), 4 * c(f1) + 3 * s(f1)]
    fixed = [1 * c(f0) - 2 * s(f0), 2 * c(f0) + 1 * s(f0), 3 * c(f1) - 4 * s(f1), 4 * c(f1) + 3 * s(f1)]
    torch.testing.assert_close(rope_rotate(x, torch.tensor([p])), torch.tensor([official]), rtol=0, atol=1e-6)
    torch.testing.assert_close(rope_rotate(x, torch.tensor([p]), True), torch.tensor([fixed]), rtol=0, atol=1e-6)
    y = torch.randn(3, 5, 20)
    assert torch.equal(rope_rotate(y, torch.zeros(5)), y)  # position 0 is the identity, exactly


def test_rope_true_pairs_are_relative_and_the_official_layout_is_not():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(64, 20, generator=g), torch.randn(64, 20, generator=g)
    pq, pk = torch.randint(0, 16, (64,), generator=g).float(), torch.randint(0, 16, (64,), generator=g).float()

    def dots(fixed: bool, shift: float) -> torch.Tensor:
        return (rope_rotate(q, pq + shift, fixed) * rope_rotate(k, pk + shift, fixed)).sum(-1)

    torch.testing.assert_close(dots(True, 5.0), dots(True, 0.0), rtol=0, atol=1e-4)
    # the released weights were trained with the duplicated layout: q.k depends on absolute positions
    assert (dots(False, 5.0) - dots(False, 0.0)).abs().max() > 1e-2


# --------------------------------------------------------------------------------------------------
# poses


def test_pose_update_matches_the_official_compute_new_pose():
    pose = torch.tensor([[0.4, -0.1, 0.3, 3.0, -0.2, 1.2, 0.3],
                         [0.0, 0.0, 0.0, 0.1, 1.4, -2.9, 0.95],
                         [1.0, 2.0, 3.0, -1.0, 0.5, 2.5, 0.0]], dtype=torch.float64)
    act = torch.tensor([[0.01, 0.02, -0.03, 0.3, 0.2, 0.1, 0.5],
                        [0.0, -0.05, 0.0, -0.2, 0.4, 0.6, 0.2],
                        [0.05, 0.0, 0.01, 0.7, -0.3, 1.0, -0.4]], dtype=torch.float64)
    # notebooks/utils/mpc_utils.compute_new_pose (scipy 1.17.1) on these inputs
    ref = torch.tensor([[0.41, -0.08, 0.27, -2.964152918848689, -0.38982164192836977, 1.1757975091896127, 0.8],
                        [0.0, -0.05, 0.0, 0.24739015513789986, 0.9576810400871003, -2.119688885509208, 1.0],
                        [1.05, 2.0, 3.01, -1.760376731944063, 0.23705584863393847, -2.961378373285728, 0.0]],
                       dtype=torch.float64)
    torch.testing.assert_close(compute_new_pose(pose, act), ref, rtol=0, atol=1e-12)


def test_propagate_state_and_frameskip_composition(predictor, model):
    _, a, s = episode(b=3, t=2, seed=5)
    s0, a1, a2 = s[:, 0].double(), a[:, 0].double(), a[:, 1].double()
    torch.testing.assert_close(model.propagate_state(s0, torch.zeros_like(a1)), s0, rtol=0, atol=1e-12)
    two = VJEPA2ACWorldModel(predictor, frameskip=2)
    assert two.action_dim == 14
    s0[:, 6], a1[:, 6], a2[:, 6] = 0.5, 0.1, -0.05  # gripper stays inside [0, 1]: no clipping in between
    stepwise = model.propagate_state(model.propagate_state(s0, a1), a2)
    torch.testing.assert_close(two.propagate_state(s0, torch.cat([a1, a2], -1)), stepwise, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# encode, fingerprint


class PatchEncoder(nn.Module):
    """A one-layer stand-in for the video ViT: tubelet-patch conv, [B', 3, 2, S, S] -> [B', N, E]."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv3d(3, E, kernel_size=(2, 16, 16), stride=(2, 16, 16))
        self.inputs: list[torch.Tensor] = []

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        self.inputs.append(clip)
        return self.proj(clip).flatten(2).transpose(1, 2)


def test_encode_feeds_each_frame_as_a_tubelet_and_layer_norms(predictor):
    enc = PatchEncoder()
    m = VJEPA2ACWorldModel(predictor, enc)
    frames = torch.randint(0, 256, (2, 3, 40, 48, 3), dtype=torch.uint8)  # non-square: central square crop
    z = m.encode(frames)
    assert z.shape == (2, 3, N, E)
    clip = enc.inputs[0]
    assert clip.shape == (6, 3, 2, 32, 32) and torch.equal(clip[:, :, 0], clip[:, :, 1])
    torch.testing.assert_close(z.std(-1, correction=0), torch.ones(2, 3, N), rtol=0, atol=1e-3)
    with pytest.raises(WMError, match="no encoder"):
        VJEPA2ACWorldModel(predictor).encode(frames)


def test_fingerprint_follows_weights_and_settings(predictor):
    p2 = ACPredictor(**TINY)
    load_predictor_state(p2, tiny_state())
    a, b = VJEPA2ACWorldModel(predictor), VJEPA2ACWorldModel(p2)
    assert a.fingerprint() == b.fingerprint()
    assert VJEPA2ACWorldModel(p2, normalize_reps=False).fingerprint() != a.fingerprint()
    with torch.no_grad():
        p2.predictor_blocks[1].mlp.fc2.bias[0] += 1e-3
    assert b.fingerprint() != a.fingerprint()


# --------------------------------------------------------------------------------------------------
# bad input


def test_wrong_action_dimension_is_named(model, predictor):
    z, a, s = episode(t=3)
    with pytest.raises(WMError, match=r"action_dim 7, found shape \(2, 3, 6\)"):
        model.predict(z, a[..., :6], s)
    with pytest.raises(WMError, match=r"actions: expected \[B=2, T=3, 7\].*found \(2, 3, 8\)"):
        predictor(z.flatten(1, 2), torch.cat([a, a[..., :1]], -1), s)
    with pytest.raises(WMError, match=r"states: expected \[B=2, Tc=3, 7\], found \(2, 3, 5\)"):
        model.predict(z, a, s[..., :5])


def test_more_frames_than_the_mask_covers_are_refused(model, predictor):
    z, a, s = episode(b=1, t=33)
    with pytest.raises(WMError, match="33 frames exceed .* max_context 32"):
        model.predict(z, a, s)
    with pytest.raises(WMError, match=r"33 frames \(0 cached \+ 33 new\) exceed the 32"):
        predictor(z.flatten(1, 2), a, s)
    cache = predictor.new_cache(2)
    predictor.forward_frames(z[:, :2].flatten(1, 2), a[:, :2], s[:, :2], cache=cache)
    with pytest.raises(WMError, match=r"3 frames \(2 cached \+ 1 new\) exceed the 2"):
        predictor.forward_frames(z[:, 2:3].flatten(1, 2), a[:, 2:3], s[:, 2:3], cache=cache)
    with pytest.raises(WMError, match="window: expected 1..32"):
        model.start(1, 40)


def test_missing_states_are_explained(model):
    z, a, _ = episode(t=2)
    with pytest.raises(WMError, match="reads the end-effector state"):
        model.predict(z, a, None)
    with pytest.raises(WMError, match="reads the end-effector state"):
        closed_loop(model, z, a, 1)
