"""LeWorldModel: shapes, causality, checkpoints in our layout and in LeWM's release layout (both
transformers namings of the ViT), bad checkpoints, the WorldModel protocol, preprocessing; and its
training side (``wmcore.train``): the objective, SIGReg, BatchNorm recalibration.

Every model here is tiny and built by the test; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from wmcore.errors import WMError
from wmcore.models import load
from wmcore.models.lewm import (
    LeWMConfig,
    LeWMWorldModel,
    LeWorldModel,
    canonical_state_dict,
    load_checkpoint,
    fingerprint_config,
    normalise_actions,
    preprocess,
    rename_vit_keys,
    save_pretrained,
    tiny_config,
    vit_naming,
)
from wmcore.protocol import WorldModel, fingerprint
from wmcore.rollout import closed_loop, open_loop
from wmcore.train import lewm_forward, lewm_loss, lewm_open_loop, lewm_rollout_loss, recalibrate_bn, sigreg
from wmcore.video import IMAGENET_MEAN, IMAGENET_STD

# PushT-like actions (2 recorded dims x frameskip 5), so a release config (no wmcore section) fits
TINY = tiny_config(image_size=32, encoder_layers=2, action_dim=10, frameskip=5, predictor_hidden=16, predictor_depth=2,
                   predictor_dim_head=8, predictor_mlp=32, sigreg_num_proj=64)
T4_QUERY = "encoder.encoder.layer.0.attention.attention.query.weight"


pytestmark = pytest.mark.usefixtures("few_threads")


def make_model(cfg: LeWMConfig = TINY, seed: int = 0) -> LeWorldModel:
    """A tiny model whose every part matters: AdaLN-zero blocks (identity at init, so actions would
    not reach the output) and BatchNorm statistics (zero/one at init) get random values."""
    torch.manual_seed(seed)
    m = LeWorldModel(cfg)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for blk in m.predictor.transformer.layers:
            for p in blk.adaLN_modulation[-1].parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        for bn in (m.projector.net[1], m.pred_proj.net[1]):
            bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g))
    return m.eval()


@pytest.fixture(scope="module")
def model():
    """Shared by the module's tests, so built frozen: the state LeWMWorldModel(model) leaves it in
    (eval, requires_grad False), whichever test wraps it first and in whatever order they run."""
    return make_model().requires_grad_(False)


def pixels(b=2, t=4, size=32, seed=0):
    return torch.randn(b, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


def actions(b=2, t=4, a=10, seed=1):
    return torch.randn(b, t, a, generator=torch.Generator().manual_seed(seed))


def frames(b=2, t=4, h=32, w=32, seed=2):
    return torch.randint(0, 256, (b, t, h, w, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def outputs(m: LeWorldModel) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        emb = m.eval().embed(pixels())
        return emb, m.predict_next(emb, actions())


# ------------------------------------------------------------------------------------------------
# the model


def test_shapes_loss_and_gradients_in_every_part():
    m = make_model().train()
    emb = m.embed(pixels())
    assert emb.shape == (2, 4, 16)
    assert m.predict_next(emb, actions()).shape == (2, 4, 16)
    losses = lewm_loss(m, pixels(), actions())
    assert set(losses) == {"total", "pred", "sigreg"} and all(v.dim() == 0 for v in losses.values())
    assert all(torch.isfinite(v) for v in losses.values())
    assert torch.allclose(losses["total"], losses["pred"] + TINY.sigreg_lambda * losses["sigreg"])
    losses["total"].backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for part in ("encoder", "projector", "action_encoder", "predictor", "pred_proj"):
        norm = sum(float(p.grad.norm()) for p in getattr(m, part).parameters())
        assert norm > 0, f"{part} receives no gradient"


def test_training_open_loop_is_the_harness_open_loop():
    """The rollout loss rolls out as the planner and the drift metrics do (wmcore.rollout.open_loop through
    the adapter), sliding windows past the history included: same numbers."""
    m = make_model().eval()
    pix, act = pixels(t=6), actions(t=6)
    with torch.no_grad():
        emb = m.embed(pix)
        mine = lewm_open_loop(m, emb, act)
    harness = open_loop(LeWMWorldModel(m), emb[:, :1, None], act, 5)
    assert mine.shape == (2, 5, 16)
    torch.testing.assert_close(mine, harness[:, :, 0], rtol=1e-5, atol=1e-6)
    # and it is open loop: changing a later real embedding changes nothing
    emb2 = emb.clone()
    emb2[:, 3] += 1.0
    torch.testing.assert_close(lewm_open_loop(m, emb2, act), mine)


def test_rollout_loss_term_and_its_detached_targets():
    cfg = dataclasses.replace(TINY, rollout_weight=0.5)
    m = make_model(cfg).train()
    torch.manual_seed(0)
    losses = lewm_loss(m, pixels(t=6), actions(t=6))
    assert set(losses) == {"total", "pred", "sigreg", "rollout"} and float(losses["rollout"].detach()) > 0
    torch.testing.assert_close(losses["total"], losses["pred"] + cfg.sigreg_lambda * losses["sigreg"] + 0.5 * losses["rollout"])
    assert "rollout" not in lewm_loss(make_model(), pixels(), actions())  # off by default
    emb = torch.randn(2, 6, 16, requires_grad=True)
    lewm_rollout_loss(m, emb, actions(t=6)).backward()
    assert float(emb.grad[:, 0].abs().sum()) > 0  # the context frame it starts from
    assert float(emb.grad[:, 1:].abs().sum()) == 0  # the targets: detached


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "1", True])
def test_rollout_weight_must_be_a_number_at_least_zero(bad):
    with pytest.raises(WMError, match="rollout_weight"):
        dataclasses.replace(TINY, rollout_weight=bad)


def test_rollout_weight_survives_config_json_and_leaves_the_fingerprint():
    cfg = dataclasses.replace(TINY, rollout_weight=0.25)
    assert LeWMConfig.from_json(json.loads(json.dumps(cfg.to_json()))).rollout_weight == 0.25
    assert fingerprint_config(cfg) == fingerprint_config(TINY)


def test_prediction_loss_has_no_stop_gradient():
    """LeWM trains end to end: the target embeddings get gradient too (no EMA, no detach)."""
    m = make_model().train()
    w = m.projector.net[3].weight

    def grad(detach_target: bool | None) -> torch.Tensor:
        torch.manual_seed(0)  # the same dropout masks each time
        if detach_target is None:
            loss = lewm_loss(m, pixels(), actions())["pred"]
        else:
            emb = m.embed(pixels())
            tgt = emb[:, 1:].detach() if detach_target else emb[:, 1:]
            loss = (m.predict_next(emb[:, :-1], actions()[:, :3]) - tgt).square().mean()
        return torch.autograd.grad(loss, w)[0]

    g = grad(None)
    torch.testing.assert_close(g, grad(False))
    assert (g - grad(True)).abs().max() > 1e-4 * g.abs().max()


def test_loss_reads_t_minus_one_actions_and_rejects_bad_shapes(model):
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    full = lewm_loss(model, pixels(), actions(), generator=g())
    short = lewm_loss(model, pixels(), actions()[:, :3], generator=g())
    assert torch.equal(full["total"], short["total"])
    with pytest.raises(ValueError, match="actions"):
        lewm_loss(model, pixels(), actions(t=2))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        model.embed(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="A=10"):
        model.predict_next(torch.zeros(2, 3, 16), torch.zeros(2, 3, 4))


def test_predictor_is_causal_and_conditioned_on_actions(model):
    g = torch.Generator().manual_seed(3)  # not the global RNG: its state depends on the tests run before
    emb = torch.randn(2, 5, 16, generator=g)
    act = actions(t=5)
    with torch.no_grad():
        base = model.predict_next(emb, act)
        e2, a2 = emb.clone(), act.clone()
        e2[:, 3] += torch.randn(2, 16, generator=g)  # not a constant shift: the predictor's LayerNorms would hide that
        moved_frame = model.predict_next(e2, act)
        a2[:, 3] += 1.0
        moved_action = model.predict_next(emb, a2)
        window = model.predict_next(emb[:, 2:5], act[:, 2:5])
        e3 = emb.clone()
        e3[:, 1] += torch.randn(2, 16, generator=g)
        moved_early = model.predict_next(e3, act)
    for moved in (moved_frame, moved_action):
        torch.testing.assert_close(moved[:, :3], base[:, :3], rtol=0, atol=1e-6)  # slots <= 2 ignore frame 3
        assert (moved[:, 3] - base[:, 3]).abs().max() > 1e-3  # slot 3 reads frame 3 and its action
    # within one pass of the predictor too: slot 0 ignores frame 1, slots 1..3 read it
    torch.testing.assert_close(moved_early[:, 0], base[:, 0], rtol=0, atol=1e-6)
    assert all((moved_early[:, t] - base[:, t]).abs().max() > 1e-3 for t in (1, 2, 3))
    # beyond the history, slot t sees the window of frames t-2..t, as in a rollout
    torch.testing.assert_close(base[:, 4], window[:, 2], rtol=1e-5, atol=1e-6)


def test_outputs_do_not_depend_on_requires_grad():
    """A frozen model (requires_grad_(False), as LeWMWorldModel leaves its module) computes the same
    bits as the trainable one. The action encoder's MLP once took strided [B, T, C] input, on which
    torch.matmul picks mm (weight requires grad) or bmm (frozen): two kernels that can round apart (here,
    MKL on AVX-512, at T = 3: the history length), so a test comparing a wrapped model with a freshly
    loaded copy passed or failed depending on which tests had wrapped the shared one before."""
    m = make_model()
    frozen = make_model().requires_grad_(False)
    wm_a, wm_b = LeWMWorldModel(make_model()), LeWMWorldModel(make_model())
    wm_a.model.requires_grad_(True)
    for b, t in [(2, 3), (1, 3), (2, 4), (3, 5)]:
        with torch.no_grad():
            ea, eb = m.embed(pixels(b=b, t=t)), frozen.embed(pixels(b=b, t=t))
            assert torch.equal(ea, eb)
            assert torch.equal(m.predict_next(ea, actions(b=b, t=t)), frozen.predict_next(eb, actions(b=b, t=t)))
        ctx = torch.randn(b, t, 1, 16, generator=torch.Generator().manual_seed(t))
        assert torch.equal(wm_a.predict(ctx, actions(b=b, t=t)), wm_b.predict(ctx, actions(b=b, t=t)))
    assert all(p.requires_grad for p in m.parameters()) and not any(p.requires_grad for p in frozen.parameters())


def test_sigreg_is_small_for_gaussians_and_large_otherwise():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    z = torch.randn(256, 16, generator=g(1))
    gauss = float(sigreg(z, 256, generator=g(0)))
    collapsed = float(sigreg(z[:1].expand(256, 16), 256, generator=g(0)))
    anisotropic = float(sigreg(z * torch.tensor([4.0] + [0.25] * 15), 256, generator=g(0)))
    assert 0.2 < gauss < 3
    # all at the origin: N * integral over [-3, 3] of exp(-t^2/2) (1 - exp(-t^2/2))^2 (the test
    # statistic's Gaussian weight and squared distance of the characteristic functions)
    t = torch.linspace(-3, 3, 60001, dtype=torch.float64)
    want = 256 * torch.trapezoid(torch.exp(-t**2 / 2) * (1 - torch.exp(-t**2 / 2)) ** 2, t)
    torch.testing.assert_close(sigreg(torch.zeros(256, 16), 8).double(), want, rtol=0.002, atol=0)
    assert collapsed > 50 * gauss and anisotropic > 10 * gauss
    assert sigreg(z, 256, generator=g(0)) == sigreg(z, 256, generator=g(0))  # seeded: deterministic
    assert sigreg(z, 256, generator=g(0)) != sigreg(z, 256, generator=g(9))
    # leading dimensions are separate tests, averaged: [2, N, D] of the same sample equals [N, D]
    torch.testing.assert_close(sigreg(torch.stack([z, z]), 256, generator=g(0)), sigreg(z, 256, generator=g(0)))
    with pytest.raises(ValueError, match="N >= 2"):
        sigreg(z[:1], 8)


# ------------------------------------------------------------------------------------------------
# configuration and checkpoints


def test_config_round_trips_and_matches_the_published_pusht_layout():
    assert LeWMConfig.from_json(json.loads(json.dumps(TINY.to_json()))) == TINY
    # the published PushT config.json (sections as lucas-maes/le-wm's hydra file resolves them)
    published = {
        "_target_": "jepa.JEPA",
        "embed_dim": 192,
        "history_size": 3,
        "encoder": {"_target_": "stable_pretraining.backbone.utils.vit_hf", "size": "tiny", "patch_size": 14,
                    "image_size": 224, "pretrained": False, "use_mask_token": False},
        "predictor": {"_target_": "module.ARPredictor", "num_frames": 3, "input_dim": 192, "hidden_dim": 192,
                      "output_dim": 192, "depth": 6, "heads": 16, "mlp_dim": 2048, "dim_head": 64,
                      "dropout": 0.1, "emb_dropout": 0.0},
        "action_encoder": {"_target_": "module.Embedder", "input_dim": 10, "emb_dim": 192},
        "projector": {"_target_": "module.MLP", "input_dim": 192, "output_dim": 192, "hidden_dim": 2048,
                      "norm_fn": {"_target_": "torch.nn.BatchNorm1d", "_partial_": True}},
        "pred_proj": {"_target_": "module.MLP", "input_dim": 192, "output_dim": 192, "hidden_dim": 2048,
                      "norm_fn": {"_target_": "torch.nn.BatchNorm1d", "_partial_": True}},
    }
    pusht = LeWMConfig(  # the published PushT architecture: ViT-tiny at 224 px, patch 14
        name="lewm-pusht", image_size=224, patch_size=14, encoder_hidden=192, encoder_layers=12, encoder_heads=3,
        encoder_mlp=768, embed_dim=192, projector_hidden=2048, pred_proj_hidden=2048, action_dim=10, frameskip=5,
        predictor_hidden=192, predictor_depth=6, predictor_heads=16, predictor_dim_head=64, predictor_mlp=2048,
    )
    assert LeWMConfig.from_json(published, name="lewm-pusht") == pusht
    with torch.device("meta"):  # shapes only: the published architecture, without allocating it
        big = LeWorldModel(pusht)
    assert 17e6 < sum(p.numel() for p in big.parameters()) < 19e6
    assert big.action_encoder.patch_embed.weight.shape == (10, 10, 1)  # le-wm's smoothed_dim default
    bad = json.loads(json.dumps(published))
    bad["predictor"]["rotary"] = True
    with pytest.raises(WMError, match="rotary"):
        LeWMConfig.from_json(bad)
    del bad["pred_proj"]
    with pytest.raises(WMError, match="pred_proj"):
        LeWMConfig.from_json(bad)


def test_save_load_round_trip_is_exact_and_never_overwrites(model, tmp_path):
    d = save_pretrained(model, tmp_path / "ck")
    written = {p.name: p.read_bytes() for p in d.iterdir()}
    assert set(written) == {"config.json", "model.safetensors"}
    loaded = load_checkpoint(d)
    for a, b in zip(outputs(model), outputs(loaded)):
        assert torch.equal(a, b)
    wm_a, wm_b = LeWMWorldModel(model), load("lewm:" + str(d))
    assert wm_a.fingerprint() == wm_b.fingerprint()
    assert wm_b.name == "tiny"
    from safetensors.torch import load_file

    assert T4_QUERY in load_file(d / "model.safetensors")  # the published names, whatever is installed
    # the fingerprint is taken over the published names (as on disk), whatever transformers is installed
    assert wm_a.fingerprint() == fingerprint(load_file(d / "model.safetensors"), fingerprint_config(model.cfg))
    with pytest.raises(WMError, match="exists"):
        save_pretrained(model, d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == written
    other = make_model(seed=1)
    assert LeWMWorldModel(other).fingerprint() != wm_a.fingerprint()


def release_dir(path, model, naming, wrap=False):
    """A LeWM release-layout directory as a user downloads it: hydra-style config.json (no wmcore
    section) and weights.pt, a torch.save'd state dict in the given transformers naming."""
    path.mkdir()
    cfg = model.cfg.to_json()
    cfg.pop("wmcore")
    cfg["_target_"] = "jepa.JEPA"
    cfg["predictor"]["_target_"] = "module.ARPredictor"
    cfg["action_encoder"]["_target_"] = "module.Embedder"
    (path / "config.json").write_text(json.dumps(cfg))
    state = rename_vit_keys({k: v.clone() for k, v in model.state_dict().items()}, naming)
    torch.save({"state_dict": state} if wrap else state, path / "weights.pt")
    return state


# one ViT layer's parameters in each naming (transformers 4: the published LeWM weights; 5: renamed)
T4_LAYER = [f"encoder.encoder.layer.1.{p}.{w}" for p in (
    "attention.attention.query", "attention.attention.key", "attention.attention.value", "attention.output.dense",
    "intermediate.dense", "output.dense", "layernorm_before", "layernorm_after") for w in ("weight", "bias")]
T5_LAYER = [f"encoder.layers.1.{p}.{w}" for p in (
    "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
    "mlp.fc1", "mlp.fc2", "layernorm_before", "layernorm_after") for w in ("weight", "bias")]


def test_release_layout_loads_in_both_transformers_namings(model, tmp_path):
    s4 = release_dir(tmp_path / "t4", model, "t4")
    s5 = release_dir(tmp_path / "t5", model, "t5", wrap=True)
    assert sorted(k for k in s4 if k.startswith("encoder.encoder.layer.1.")) == sorted(T4_LAYER)
    assert sorted(k for k in s5 if k.startswith("encoder.layers.1.")) == sorted(T5_LAYER)
    assert vit_naming(s4) == "t4" and vit_naming(s5) == "t5"
    assert not any(k.startswith("encoder.layers.") for k in s4) and not any(".layer." in k for k in s5)
    # same tensors under the two names: query is q_proj, output.dense (the MLP's second half) is fc2
    for old, new in [("attention.attention.query.weight", "attention.q_proj.weight"),
                     ("output.dense.weight", "mlp.fc2.weight"),
                     ("attention.output.dense.bias", "attention.o_proj.bias")]:
        assert torch.equal(s4[f"encoder.encoder.layer.1.{old}"], s5[f"encoder.layers.1.{new}"])
    m4, m5 = load_checkpoint(tmp_path / "t4"), load_checkpoint(tmp_path / "t5")
    # a release config has no wmcore section: the name is the folder's, the loss settings LeWM's
    assert m4.cfg == dataclasses.replace(TINY, name="lewm[t4]", sigreg_num_proj=1024)
    for a, b, c in zip(outputs(model), outputs(m4), outputs(m5)):
        assert torch.equal(a, b) and torch.equal(a, c)
    fps = {LeWMWorldModel(m).fingerprint() for m in (m4, m5, model)}
    assert len(fps) == 1
    assert rename_vit_keys(rename_vit_keys(s4, "t5"), "t4").keys() == s4.keys()
    assert canonical_state_dict(m5).keys() == s4.keys()


@pytest.mark.parametrize(
    "damage, expect",
    [
        (lambda s: s.pop("predictor.pos_embedding"), r"missing keys 1: predictor\.pos_embedding"),
        (lambda s: s.__setitem__("predictor.extra.weight", torch.zeros(2)),
         r"unexpected keys 1: predictor\.extra\.weight"),
        (lambda s: s.__setitem__("pred_proj.net.0.weight", torch.zeros(3, 3)),
         r"pred_proj\.net\.0\.weight \(3, 3\) \(config wants \(32, 16\)\)"),
        (lambda s: [s.pop(k) for k in [k for k in list(s) if k.startswith("encoder.")]],
         r"missing keys \d+: .*\(\d+ more\)"),
    ],
    ids=["missing", "extra", "shape", "many-missing"],
)
def test_mismatched_weights_are_listed(model, tmp_path, damage, expect):
    d = tmp_path / "ck"
    state = release_dir(d, model, "t4")
    damage(state)
    (d / "weights.pt").unlink()
    torch.save(state, d / "weights.pt")
    with pytest.raises(WMError, match=expect) as e:
        load_checkpoint(d)
    assert str(d / "weights.pt") in str(e.value)


class NotATensor:
    pass


@pytest.mark.parametrize(
    "write, expect",
    [
        (lambda d: (d / "weights.pt").write_bytes(b"\x80\x04 not a checkpoint"), r"weights\.pt: cannot read"),
        (lambda d: (d / "weights.pt").write_bytes(b""), r"weights\.pt: cannot read"),
        (lambda d: torch.save({"x": NotATensor()}, d / "weights.pt"), r"weights\.pt: cannot read"),  # no pickled code
        (lambda d: torch.save([1, 2], d / "weights.pt"), r"weights\.pt: expected a state dict"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), r"model\.safetensors: cannot read"),
        (lambda d: (d / "config.json").unlink(), r"no config\.json.*config\.json \+ weights\.pt"),
        (lambda d: (d / "config.json").write_text("{not json"), r"config\.json: not readable JSON"),
        (lambda d: (d / "weights.pt").unlink(), r"expected weights in model\.safetensors .* or weights\.pt"),
    ],
    ids=["corrupt", "empty", "pickled-object", "not-a-dict", "corrupt-safetensors", "no-config", "bad-json",
         "no-weights"],
)
def test_unreadable_checkpoints_raise_wmerror_naming_the_file(model, tmp_path, write, expect):
    d = tmp_path / "ck"
    release_dir(d, model, "t4")
    write(d)
    with pytest.raises(WMError, match=expect):
        load_checkpoint(d)


def test_registry_errors(tmp_path):
    with pytest.raises(WMError, match="lewm:DIR"):
        load("lewm")
    with pytest.raises(WMError, match="not a directory"):
        load(f"lewm:{tmp_path / 'absent'}")


# ------------------------------------------------------------------------------------------------
# the WorldModel protocol


def test_adapter_implements_the_protocol(model):
    wm = LeWMWorldModel(model)
    assert isinstance(wm, WorldModel)
    assert (wm.name, wm.action_dim, wm.frameskip, wm.tokens_per_frame, wm.max_context) == ("tiny", 10, 5, 1, 3)
    f = frames()
    z = wm.encode(f)
    assert z.shape == (2, 4, 1, 16) and not z.requires_grad
    with torch.no_grad():  # LeWM's preprocessing: [0, 1], ImageNet mean/std
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        manual = ((f.permute(0, 1, 4, 2, 3).float() / 255 - mean[:, None, None]) / std[:, None, None])
        torch.testing.assert_close(z[:, :, 0], model.embed(manual))
    # other resolutions are resized (antialiased bilinear) to image_size
    big = frames(h=64, w=48)
    assert wm.encode(big).shape == (2, 4, 1, 16)
    assert preprocess(big, TINY).shape == (2, 4, 3, 32, 32)
    # antialiased: a period-4 pattern of one bright column in four, shrunk 4x, is a quarter grey
    # everywhere (point-sampling bilinear would see only dark columns)
    stripes = torch.zeros(1, 1, 128, 128, 3, dtype=torch.uint8)
    stripes[..., ::4, :] = 255
    x = preprocess(stripes, TINY) * std[:, None, None] + mean[:, None, None]
    assert (x[..., 1:-1] - 0.25).abs().max() < 0.01  # the border column sees less of the pattern
    up = frames(h=16, w=16).repeat_interleave(2, 2).repeat_interleave(2, 3)  # 2x nearest upsample
    assert (wm.encode(up) - wm.encode(frames(h=16, w=16))).abs().max() < 0.2 * z.abs().max()


@pytest.mark.parametrize("h, w", [(32, 32), (64, 64), (16, 16), (48, 40)], ids=["same", "down", "up", "non-square"])
def test_preprocess_keeps_a_constant_colour_exactly(h, w):
    """Whatever the resize, a flat colour stays that colour (the antialiased weights sum to one),
    normalised with the ImageNet statistics."""
    colour = torch.tensor([200, 17, 90], dtype=torch.uint8)
    x = preprocess(colour.expand(2, 3, h, w, 3).clone(), TINY)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    want = ((colour.float() / 255 - mean) / std).view(3, 1, 1).expand(2, 3, 3, 32, 32)
    torch.testing.assert_close(x, want, rtol=0, atol=1e-5)


def test_one_definition_of_the_imagenet_statistics():
    assert (TINY.image_mean, TINY.image_std) == (IMAGENET_MEAN, IMAGENET_STD) == (LeWMConfig().image_mean,
                                                                               LeWMConfig().image_std)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


def test_normalise_actions_z_scores_each_recorded_step_of_a_block():
    cfg = dataclasses.replace(TINY, action_mean=(1.0, -2.0), action_std=(2.0, 0.5))
    block = torch.tensor([[3.0, -1.0] * 5])  # frameskip 5 recorded (2-d) actions, in time order
    assert normalise_actions(block, cfg).tolist() == [[1.0, 2.0] * 5]
    assert torch.equal(normalise_actions(block, TINY), block)  # no statistics: unchanged


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(2, 4, 32, 32, 3), torch.zeros(4, 32, 32, 3, dtype=torch.uint8),
     torch.zeros(2, 4, 3, 32, 32, dtype=torch.uint8)],
    ids=["float", "rank4", "channels-first"],
)
def test_encode_rejects_bad_frames(model, bad):
    with pytest.raises(ValueError, match=r"uint8 \[B, T, H, W, 3\], found \(" + ", ".join(map(str, bad.shape))):
        LeWMWorldModel(model).encode(bad)


def test_predict_uses_only_the_last_history_frames(model):
    wm = LeWMWorldModel(model)
    g = torch.Generator().manual_seed(4)
    ctx = torch.randn(2, 5, 1, 16, generator=g)
    act = actions(t=5)
    out = wm.predict(ctx, act)
    assert out.shape == (2, 1, 16)
    ctx2, act2 = ctx.clone(), act.clone()
    ctx2[:, :2] += 5.0
    act2[:, :2] += 5.0
    assert torch.equal(wm.predict(ctx2, act2), out)
    ctx2[:, 2] += torch.randn(2, 1, 16, generator=g)
    assert (wm.predict(ctx2, act2) - out).abs().max() > 1e-3
    with torch.no_grad():
        torch.testing.assert_close(out[:, 0], model.predict_next(ctx[:, 2:, 0], act[:, 2:])[:, -1])
    with pytest.raises(ValueError, match=r"context: expected \[B, Tc >= 1, 1, 16\]"):
        wm.predict(ctx[:, :, 0], act)
    with pytest.raises(ValueError, match=r"A=10"):
        wm.predict(ctx, act[..., :4])


def test_rollouts_run_on_the_adapter(model):
    wm = LeWMWorldModel(model)
    z = wm.encode(frames(t=6))
    act = actions(t=6)
    op = open_loop(wm, z[:, :1], act, 5)
    cl = closed_loop(wm, z, act, 5)
    assert op.shape == cl.shape == (2, 5, 1, 16)
    torch.testing.assert_close(op[:, 0], cl[:, 0])  # step 1 sees the same real frame


def test_action_statistics_are_applied(tmp_path):
    m = make_model()
    mean, std = (0.5, -1.0), (2.0, 0.5)
    norm = LeWMWorldModel(make_model(dataclasses.replace(TINY, action_mean=mean, action_std=std)))
    ctx, act = torch.randn(2, 3, 1, 16, generator=torch.Generator().manual_seed(6)), actions(t=3)
    want = LeWMWorldModel(m).predict(ctx, (act - torch.tensor(mean).repeat(5)) / torch.tensor(std).repeat(5))
    torch.testing.assert_close(norm.predict(ctx, act), want)
    d = save_pretrained(norm, tmp_path / "ck")
    assert load_checkpoint(d).cfg.action_mean == mean


# ------------------------------------------------------------------------------------------------
# BatchNorm


def test_recalibrate_bn_restores_batch_statistics():
    m = make_model()
    pix, act = pixels(b=8, seed=7), actions(b=8, seed=8)

    def rel_err():  # eval (running statistics) against train mode (this batch's statistics), no dropout
        with torch.no_grad():
            m.eval()
            ev = lewm_forward(m, pix, act)
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm1d):
                    mod.train()
            bs = lewm_forward(m, pix, act)
            m.eval()
        return max(float((a - b).norm() / b.norm()) for a, b in zip(ev, bs))

    with torch.no_grad():  # stale statistics, as after training with a high learning rate
        for bn in (m.projector.net[1], m.pred_proj.net[1]):
            bn.running_mean.fill_(3.0)
            bn.running_var.fill_(0.01)
    before = rel_err()
    stale_pp = m.pred_proj.net[1].running_mean.clone()
    assert recalibrate_bn(m, [pix]) == ["projector.net.1"]  # pixels alone reach the projector only
    assert torch.equal(m.pred_proj.net[1].running_mean, stale_pp)
    assert recalibrate_bn(m, [(pix[:4], act[:4]), (pix[4:], act[4:])]) == ["pred_proj.net.1", "projector.net.1"]
    assert rel_err() < 0.2  # two half batches: their average statistics, near the whole batch's
    recalibrate_bn(m, [(pix, act)])
    after = rel_err()  # the batch's own mean; unbiased rather than biased variance (n = 24 or 32)
    assert before > 0.5 and after < 0.05, (before, after)
    assert not m.training and all(p.grad is None for p in m.parameters())
    assert m.projector.net[1].momentum == 0.1  # restored
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(m, [])
