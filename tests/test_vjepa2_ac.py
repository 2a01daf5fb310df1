"""V-JEPA 2-AC: the official state-dict layout, block-causal frames, the KV cache against full
recompute in both rollout modes, the official RoPE (and its duplicated-frequency quirk), the official
pose update, the encoder (transformers' VJEPA2Model, from the official checkpoint or a transformers
directory), the ``vjepa2-ac:`` model spec, precision, and bad input.

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
from wmcore.models import load as load_model
from wmcore.models.vjepa2_ac import (
    ACPredictor,
    VJEPA2ACWorldModel,
    VJEPA2VideoEncoder,
    ac_preprocess,
    compute_new_pose,
    load_official_checkpoint,
    load_predictor_state,
    official_encoder_to_vjepa2,
    parse_spec,
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


def official_mask(frames: int, per_frame: int) -> torch.Tensor:
    """``build_action_block_causal_attention_mask`` written out: bool ``[L, L]``, L = frames * per_frame
    (conditioning + patch tokens), True where token q may attend to token k (k's frame <= q's)."""
    n = frames * per_frame
    return torch.tensor([[k // per_frame <= q // per_frame for k in range(n)] for q in range(n)])


def test_predictor_mask_matches_the_official_construction(monkeypatch):
    p = ACPredictor(**{**TINY, "img_size": (32, 64)}).eval()  # 2 x 4 patches + 2 conditioning tokens per frame
    masks: list = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        masks.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    _, a, s = episode(b=1, t=3)
    p(torch.randn(1, 3 * 8, E), a, s)
    assert len(masks) == DEPTH
    assert all(m.dtype == torch.bool and torch.equal(m, official_mask(3, 10)) for m in masks)


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


# --------------------------------------------------------------------------------------------------
# the encoder: transformers' VJEPA2Model, from the checkpoint or a transformers directory


def tiny_vjepa2(seed: int, hidden: int = E) -> "VJEPA2Model":  # noqa: F821
    """A tiny transformers VJEPA2Model (32 px, patch 16, tubelet 2: 4 tokens per frame) with every
    parameter random, norms and biases included, so that any misplaced tensor shows in the output."""
    from transformers import VJEPA2Config, VJEPA2Model

    cfg = VJEPA2Config(crop_size=32, patch_size=16, frames_per_clip=2, tubelet_size=2, hidden_size=hidden,
                       num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4.0, pred_hidden_size=16,
                       pred_num_hidden_layers=1, pred_num_attention_heads=2, pred_num_mask_tokens=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = VJEPA2Model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in m.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.3)
    return m


def to_official(m) -> dict[str, torch.Tensor]:
    """VJEPA2Model's encoder -> the official VisionTransformer state dict (written here, as the inverse
    of transformers' convert_vjepa2_to_hf.py: query, key and value stacked back into qkv)."""
    sd, out = m.state_dict(), {}
    for k, v in sd.items():
        if not k.startswith("encoder."):
            continue
        o = (k.replace("encoder.embeddings.patch_embeddings.proj.", "patch_embed.proj.")
             .replace("encoder.layernorm.", "norm.").replace("encoder.layer.", "blocks.")
             .replace(".attention.proj.", ".attn.proj."))
        if ".attention.query." in o:
            out[o.replace(".attention.query.", ".attn.qkv.")] = torch.cat(
                [v, sd[k.replace(".query.", ".key.")], sd[k.replace(".query.", ".value.")]])
        elif ".attention." not in o:
            out[o] = v
    return out


def reference_features(m, frames: torch.Tensor) -> torch.Tensor:
    """What the official AC pipeline computes with transformers' model itself: each frame a 2-frame
    tubelet of itself, ``get_vision_features``, layer norm without affine -> ``[B, T, N, D]``."""
    b, t = frames.shape[:2]
    pix = ac_preprocess(frames, 32).flatten(0, 1).unsqueeze(1).repeat(1, 2, 1, 1, 1)  # [B*T, 2, 3, S, S]
    with torch.no_grad():
        h = m.get_vision_features(pix)
    return F.layer_norm(h, (h.shape[-1],)).reshape(b, t, N, -1)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """An official-layout checkpoint (encoder = VJEPA2Model A, converted back) and a transformers
    directory holding VJEPA2Model B."""
    d = tmp_path_factory.mktemp("vjepa2")
    a, b = tiny_vjepa2(10), tiny_vjepa2(11)
    official = to_official(a)
    torch.save({"encoder": {f"module.backbone.{k}": v for k, v in official.items()},
                "predictor": {f"module.backbone.{k}": v for k, v in tiny_state().items()}, "epoch": 315},
               d / "ac.pt")
    b.save_pretrained(d / "hf-b")
    return {"dir": d, "ckpt": d / "ac.pt", "hf_dir": d / "hf-b", "a": a, "b": b, "official": official}


def spec(ckpt, *opts: str) -> str:
    return ",".join([f"vjepa2-ac:{ckpt}", *opts])


FRAMES = torch.randint(0, 256, (2, 3, 40, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))


def test_official_encoder_names_map_onto_vjepa2model_names(released):
    a = released["a"]
    mapped = official_encoder_to_vjepa2(released["official"])
    ref = {k: v for k, v in a.state_dict().items() if k.startswith("encoder.")}
    assert sorted(mapped) == sorted(ref)
    assert all(torch.equal(mapped[k], ref[k]) for k in ref)
    qkv = released["official"]["blocks.1.attn.qkv.weight"]  # rows: query, key, value
    assert torch.equal(mapped["encoder.layer.1.attention.key.weight"], qkv[E:2 * E])
    assert official_encoder_to_vjepa2({"cls_token": torch.zeros(1)}) == {"cls_token": torch.zeros(1)}


def test_spec_loads_the_checkpoint_encoder_into_vjepa2model_and_encodes_like_it(released):
    from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2Encoder

    m = load_model(spec(released["ckpt"], "img_size=32", "num_heads=2", "encoder_heads=2"))
    assert isinstance(m, VJEPA2ACWorldModel) and isinstance(m, WorldModel)
    assert isinstance(m.encoder, VJEPA2VideoEncoder) and isinstance(m.encoder.encoder, VJEPA2Encoder)
    assert m.encoder.config.num_attention_heads == 2 and m.encoder.config.crop_size == 32
    assert all(torch.equal(m.predictor.state_dict()[k], v) for k, v in tiny_state().items())
    z = m.encode(FRAMES)
    assert z.shape == (2, 3, N, E) and z.dtype == torch.float32
    # the mapped official weights compute what transformers' model computes with them
    torch.testing.assert_close(z, reference_features(released["a"], FRAMES), rtol=0, atol=1e-5)
    _, a, s = episode(t=3)
    assert open_loop(m, z[:, :1], a, 2, states=s[:, :1]).shape == (2, 2, N, E)


def test_encoder_directory_wins_over_the_checkpoint_encoder(released):
    from_ckpt = load_model(spec(released["ckpt"], "img_size=32", "num_heads=2", "encoder_heads=2"))
    m = load_model(spec(released["ckpt"], f"encoder={released['hf_dir']}", "num_heads=2"))
    assert m.cfg.img_size == (32, 32)  # the image size comes from the directory's config.json
    torch.testing.assert_close(m.encode(FRAMES), reference_features(released["b"], FRAMES), rtol=0, atol=1e-5)
    assert m.fingerprint() != from_ckpt.fingerprint()
    assert m.config()["encoder"]["hidden_size"] == E


def test_missing_extra_and_misshapen_encoder_keys_are_listed(released, tmp_path):
    enc = dict(released["official"])
    del enc["blocks.1.attn.proj.bias"]
    enc["blocks.0.attn.q_norm.weight"] = torch.ones(16)
    enc["norm.weight"] = torch.ones(E + 1)
    torch.save({"encoder": enc, "predictor": tiny_state()}, tmp_path / "bad.pt")
    with pytest.raises(WMError) as e:
        load_model(spec(tmp_path / "bad.pt", "img_size=32", "num_heads=2", "encoder_heads=2"))
    msg = str(e.value)
    assert "['encoder']" in msg and "missing keys 1: blocks.1.attn.proj.bias" in msg
    assert "unexpected keys 1: blocks.0.attn.q_norm.weight" in msg
    assert f"norm.weight ({E + 1},) (expected ({E},))" in msg
    # the official loader leaves a pos_embed unused with RoPE: so does wmcore
    ok = dict(released["official"], pos_embed=torch.zeros(1, 4, E))
    torch.save({"encoder": ok, "predictor": tiny_state()}, tmp_path / "pos.pt")
    m = load_model(spec(tmp_path / "pos.pt", "img_size=32", "num_heads=2", "encoder_heads=2"))
    torch.testing.assert_close(m.encode(FRAMES), reference_features(released["a"], FRAMES), rtol=0, atol=1e-5)
    # the heads are not in the weights: width 32 is no official ViT, so they must be given
    with pytest.raises(WMError, match="width 32 .* pass encoder_heads=H"):
        load_model(spec(released["ckpt"], "img_size=32", "num_heads=2"))


def test_checkpoint_without_predictor_through_the_spec(released, tmp_path):
    torch.save({"encoder": released["official"], "target_encoder": {}}, tmp_path / "enc.pt")
    with pytest.raises(WMError, match=r"'predictor'.*found keys \['encoder', 'target_encoder'\]"):
        load_model(spec(tmp_path / "enc.pt"))
    with pytest.raises(WMError, match="needs an official checkpoint"):
        load_model("vjepa2-ac")


def test_encoder_directory_of_another_model_or_none(released, tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=16)).save_pretrained(tmp_path / "vit")
    with pytest.raises(WMError, match=r"config\.json: model_type 'vit' \(architectures \['ViTModel'\]\); "
                                      r"expected 'vjepa2'"):
        load_model(spec(released["ckpt"], f"encoder={tmp_path / 'vit'}", "num_heads=2"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WMError, match="no config.json"):
        load_model(spec(released["ckpt"], f"encoder={tmp_path / 'empty'}", "num_heads=2"))
    with pytest.raises(WMError, match="not a directory"):
        load_model(spec(released["ckpt"], f"encoder={tmp_path / 'absent'}", "num_heads=2"))


def test_encoder_that_does_not_fit_the_predictor(released, tmp_path):
    tiny_vjepa2(12, hidden=48).save_pretrained(tmp_path / "wide")
    with pytest.raises(WMError, match=f"encoder hidden_size 48 != predictor embed_dim {E}"):
        load_model(spec(released["ckpt"], f"encoder={tmp_path / 'wide'}", "num_heads=2"))
    with pytest.raises(WMError, match="encoder crop_size 32 != predictor img_size 64"):
        load_model(spec(released["ckpt"], f"encoder={released['hf_dir']}", "num_heads=2", "img_size=64"))


def test_wrong_action_dimension_on_a_loaded_model(released):
    m = load_model(spec(released["ckpt"], f"encoder={released['hf_dir']}", "num_heads=2"))
    z, a, s = episode(t=3)
    with pytest.raises(WMError, match=r"action_dim 7, found shape \(2, 3, 6\)"):
        m.predict(z, a[..., :6], s)
    with pytest.raises(ValueError, match="action_dim 7"):
        open_loop(m, z[:, :1], torch.cat([a, a[..., :1]], -1), 2, states=s[:, :1])
    two = load_model(spec(released["ckpt"], f"encoder={released['hf_dir']}", "num_heads=2", "frameskip=2"))
    assert two.action_dim == 14


def test_spec_options_are_parsed_and_bad_ones_named():
    assert parse_spec("a.pt, encoder=/d ,img_size=32,num_frames=16,num_heads=2,encoder_heads=22,frameskip=2,"
                      "compile=0") == ("a.pt", dict(encoder_dir="/d", img_size=32, num_frames=16, num_heads=2,
                                                    encoder_heads=22, frameskip=2, compile=False))
    with pytest.raises(WMError, match="option 'foo=1': expected key=value with key one of encoder, img_size"):
        parse_spec("a.pt,foo=1")
    with pytest.raises(WMError, match="option img_size='x': expected an integer"):
        parse_spec("a.pt,img_size=x")
    with pytest.raises(WMError, match="compile='maybe': expected 0 or 1"):
        parse_spec("a.pt,compile=maybe")
    with pytest.raises(WMError, match="the checkpoint path comes first"):
        parse_spec("encoder=/d,a.pt")


# --------------------------------------------------------------------------------------------------
# precision and attention kernels


def test_attention_is_sdpa_with_the_block_causal_mask_as_a_boolean_mask(released, monkeypatch):
    m = load_model(spec(released["ckpt"], f"encoder={released['hf_dir']}", "num_heads=2"))
    calls: list = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((q.shape[-2], k.shape[-2], attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    m.encode(FRAMES[:1, :1])
    assert [(c[0], c[1], c[2]) for c in calls] == [(N, N, None)] * 2  # transformers' "sdpa", both layers
    calls.clear()
    z, a, s = episode(t=3)
    m.predict(z, a, s)
    ref = official_mask(3, 2 + N)
    assert len(calls) == DEPTH and all(c[2].dtype == torch.bool and torch.equal(c[2], ref) for c in calls)
    calls.clear()
    cache = m.start(2, None)
    for i in range(3):
        m.step(cache, z[:, i], a[:, i], s[:, i])
    # one appended frame needs no mask; it attends to every cached key
    assert [(c[0], c[1], c[2]) for c in calls] == [(6, 6 * (i + 1), None) for i in range(3) for _ in range(DEPTH)]


def test_bfloat16_adapter_follows_the_float32_one(released):
    spec_b = spec(released["ckpt"], f"encoder={released['hf_dir']}", "num_heads=2")
    m32, m16 = load_model(spec_b), load_model(spec_b).to("cpu", torch.bfloat16)
    assert m16.predictor.predictor_embed.weight.dtype == torch.bfloat16
    assert next(m16.encoder.parameters()).dtype == torch.bfloat16
    z32, z16 = m32.encode(FRAMES), m16.encode(FRAMES)
    assert z16.dtype == torch.bfloat16
    assert F.cosine_similarity(z16.float(), z32, dim=-1).min() > 0.99
    _, a, s = episode(t=8)
    ol = [open_loop(m, z[:, :1], a, 6, states=s[:, :1], use_cache=c) for m, z in ((m16, z16), (m32, z32))
          for c in (True, False)]
    assert ol[0].dtype == torch.bfloat16 and ol[0].shape == (2, 6, N, E)
    assert F.cosine_similarity(ol[0].float(), ol[1].float(), dim=-1).min() > 0.99  # cache vs recompute
    assert F.cosine_similarity(ol[1].float(), ol[3], dim=-1).min() > 0.95  # bf16 vs fp32
