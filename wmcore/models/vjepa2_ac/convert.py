"""Official V-JEPA 2-AC checkpoints -> wmcore's predictor and transformers' encoder.

Kept apart from the modules, as transformers keeps ``convert_*`` apart from ``modeling_*``.

The predictor: ``vjepa2-ac-vitg.pt`` is a dict with ``"encoder"`` and ``"predictor"`` state dicts under
``module.backbone.`` names; ``clean_keys`` removes those prefixes, and the predictor's keys are then
exactly ``ACPredictor``'s (``load_predictor_state``). Its architecture comes from the weights' shapes
(``infer_predictor_kwargs``) and, for what they do not fix, from keyword arguments.

The encoder is transformers' ``VJEPA2Model`` (its video ViT; its own masked predictor is not used),
wrapped as ``VJEPA2VideoEncoder``. It comes either from the official checkpoint's ``"encoder"`` (the
ViT-g: width 1408, 40 blocks, 22 heads, MLP ratio 48/11, patch 16, tubelet 2, RoPE), renamed as
transformers' ``convert_vjepa2_to_hf.py`` does (``official_encoder_to_vjepa2``: qkv split into
query/key/value), or from a transformers directory (``load_vjepa2_encoder``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ...errors import WMError
from ..checkpoint import key_list, meta_state_dict, read_json, require_match, torch_load
from .config import ACPredictorConfig
from .predictor import ACPredictor

__all__ = [
    "ENCODER_HEADS", "VJEPA2VideoEncoder", "build_predictor", "check_encoder_fits", "clean_keys",
    "encoder_from_official_state", "infer_predictor_kwargs", "load_official_checkpoint", "load_predictor_state",
    "load_vjepa2_encoder", "official_encoder_to_vjepa2", "read_official_checkpoint", "vjepa2_encoder_config",
]

# --------------------------------------------------------------------------------------------------
# official checkpoints


def clean_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The official ``_clean_backbone_key``: drop every ``module.`` and ``backbone.`` in the names."""
    return {k.replace("module.", "").replace("backbone.", ""): v for k, v in state.items()}


def load_predictor_state(
    predictor: ACPredictor, state: Mapping[str, Tensor], source: str = "state dict"
) -> ACPredictor:
    """Load ``state`` into ``predictor`` strictly; missing, unexpected or misshapen tensors raise
    WMError listing them (names after ``clean_keys``)."""
    state = clean_keys(state)
    require_match(state, predictor.state_dict(), source, "the V-JEPA 2-AC predictor")
    predictor.load_state_dict(state, strict=True)
    return predictor


def infer_predictor_kwargs(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """What a predictor state dict fixes: embed_dim, predictor_embed_dim, action_embed_dim, depth,
    mlp_ratio, use_silu, qkv_bias (image size, frames and heads are not in the weights)."""
    state = clean_keys(state)
    kw: dict[str, Any] = {}
    if isinstance(state.get("predictor_embed.weight"), Tensor) and state["predictor_embed.weight"].dim() == 2:
        kw["predictor_embed_dim"], kw["embed_dim"] = state["predictor_embed.weight"].shape
    if isinstance(state.get("action_encoder.weight"), Tensor) and state["action_encoder.weight"].dim() == 2:
        kw["action_embed_dim"] = state["action_encoder.weight"].shape[1]
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("predictor_blocks.") and k.split(".")[1].isdigit()}
    if blocks:
        kw["depth"] = max(blocks) + 1
    kw["use_silu"] = "predictor_blocks.0.mlp.fc3.weight" in state
    fc1 = state.get("predictor_blocks.0.mlp.fc1.weight")
    if isinstance(fc1, Tensor) and fc1.dim() == 2 and not kw["use_silu"]:
        kw["mlp_ratio"] = fc1.shape[0] / fc1.shape[1]
    if blocks:
        kw["qkv_bias"] = "predictor_blocks.0.attn.qkv.bias" in state
    return kw


def read_official_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[Path, dict]:
    """(path, the checkpoint dict) of an official file, its ``"predictor"`` checked to be a state dict
    (names -> tensors). Read with ``torch.load(weights_only=True)``: no pickled code runs."""
    p = Path(path)
    if not p.is_file():
        raise WMError(
            f"{p}: no such file; expected an official V-JEPA 2-AC checkpoint (.pt with 'encoder' and 'predictor')"
        )
    ckpt = torch_load(p, device, "the checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("predictor"), dict):
        found = sorted(map(str, ckpt))[:20] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WMError(
            f"{p}: expected a dict with a 'predictor' state dict (and 'encoder'), as the official "
            f"vjepa2-ac-vitg.pt; found {'keys ' + str(found) if isinstance(ckpt, dict) else found}"
        )
    bad = [k for k, v in ckpt["predictor"].items() if not isinstance(v, Tensor)]
    if bad:
        raise WMError(f"{p}: 'predictor' holds non-tensor entries {key_list(sorted(map(str, bad)))}")
    return p, ckpt


def build_predictor(p: Path, pred_state: Mapping[str, Tensor], kwargs: Mapping[str, Any]) -> ACPredictor:
    """The predictor of checkpoint ``p`` with ``pred_state`` loaded strictly: its shapes from the weights
    (``infer_predictor_kwargs``), the rest from ``kwargs``. The weights are checked against the
    predictor built on the meta device first: a mismatch allocates nothing."""
    kw = {**infer_predictor_kwargs(pred_state), **kwargs}
    source = f"{p} ['predictor']"
    try:
        expected = meta_state_dict(lambda: ACPredictor(**kw))
    except TypeError as e:
        raise WMError(f"{p}: bad predictor arguments ({e})") from None
    require_match(clean_keys(pred_state), expected, source, "the V-JEPA 2-AC predictor")
    return load_predictor_state(ACPredictor(**kw), pred_state, source=source)


def load_official_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", **predictor_kwargs: Any
) -> tuple[ACPredictor, dict[str, Tensor] | None]:
    """An official V-JEPA 2-AC checkpoint (``vjepa2-ac-vitg.pt``: a dict with ``"encoder"`` and
    ``"predictor"`` state dicts) -> (predictor loaded strictly, in eval mode; the encoder's state dict
    with ``module.``/``backbone.`` removed, or None if the file has none).

    The predictor's architecture comes from the weights' shapes (``infer_predictor_kwargs``) and, for
    what they do not fix, from ``predictor_kwargs`` or the released defaults (256 px, patch 16,
    num_frames 64, tubelet 2, 16 heads). Read with ``torch.load(weights_only=True)``: no pickled code runs.
    """
    p, ckpt = read_official_checkpoint(path, device)
    predictor = build_predictor(p, ckpt["predictor"], predictor_kwargs)
    enc = ckpt.get("encoder")
    enc_state = clean_keys(enc) if isinstance(enc, dict) else None
    return predictor.to(device).eval(), enc_state


# --------------------------------------------------------------------------------------------------
# the encoder: transformers' VJEPA2Model (its video ViT; the HF predictor is not used)

# Heads of the official video ViTs by width (``src/models/vision_transformer.py``); the weights do not
# say. vit_large and vit_huge: 16; vit_giant_xformers, the ViT-g of V-JEPA 2 and of 2-AC (hub
# ``ARCH_NAME_MAP["vit_ac_giant"]``, and transformers' converter for vit_giant): 22; vit_gigantic_xformers: 26.
ENCODER_HEADS: dict[int, int] = {1024: 16, 1280: 16, 1408: 22, 1664: 26}

# Official names inside block i -> VJEPA2Model's inside encoder.layer.i (qkv is split, see below).
_BLOCK_NAMES = {"norm1": "norm1", "attn.proj": "attention.proj", "norm2": "norm2", "mlp.fc1": "mlp.fc1",
                "mlp.fc2": "mlp.fc2"}
# Official keys that the official AC loader (``encoder.load_state_dict(..., strict=False)`` with
# use_rope=True) leaves unused: a position table from a pretraining without RoPE.
_IGNORED_ENCODER_KEYS = ("pos_embed",)


class VJEPA2VideoEncoder(nn.Module):
    """The encoder half of transformers' ``VJEPA2Model`` as the adapter's encoder: clips
    ``[B', 3, T, S, S]`` (the official layout) -> last hidden state ``[B', (T / tubelet) (S / p)^2, D]``,
    after the final layer norm, as the official ``VisionTransformer`` returns it.

    ``encoder`` is ``VJEPA2Model(config).encoder``, so the state-dict names are VJEPA2Model's
    (``encoder.embeddings.patch_embeddings.proj``, ``encoder.layer.{i}.attention.query``, ...).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.config = model.config
        self.encoder = model.encoder

    @classmethod
    def from_config(cls, config: Any) -> "VJEPA2VideoEncoder":
        """A fresh encoder (transformers' initialisation) of a ``VJEPA2Config``, built without
        transformers' load report (on the current default device: ``torch.device("meta")`` gives shapes only)."""
        from transformers import VJEPA2Model

        with _quiet_transformers():
            return cls(VJEPA2Model(config))

    @property
    def patch_size(self) -> int | tuple:
        """The config's patch size, an int when square."""
        return _patch(self.config)

    def forward(self, clip: Tensor) -> Tensor:
        # transformers reads [B, T, C, H, W] and permutes back to the Conv3d's [B, C, T, H, W]
        return self.encoder(pixel_values_videos=clip.transpose(1, 2)).last_hidden_state

    def describe(self) -> dict:
        c = self.config
        return {"class": "transformers.VJEPA2Model.encoder", "hidden_size": c.hidden_size,
                "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
                "mlp_ratio": c.mlp_ratio, "patch_size": self.patch_size, "tubelet_size": c.tubelet_size,
                "crop_size": c.crop_size, "layer_norm_eps": c.layer_norm_eps, "qkv_bias": c.qkv_bias,
                "hidden_act": c.hidden_act}


def _patch(c: Any) -> int | tuple:
    p = c.patch_size
    if isinstance(p, (list, tuple)):
        return int(p[0]) if len(p) == 2 and p[0] == p[1] else tuple(p)
    return p


@contextlib.contextmanager
def _quiet_transformers():
    """No load report or progress bar from transformers: wmcore reports what is missing itself."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def official_encoder_to_vjepa2(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official encoder names (after ``clean_keys``) -> transformers VJEPA2Model names, as transformers'
    ``convert_vjepa2_to_hf.py`` maps them:

        patch_embed.proj.*          -> encoder.embeddings.patch_embeddings.proj.*
        blocks.{i}.attn.qkv.*       -> encoder.layer.{i}.attention.{query,key,value}.* (rows [0:D], [D:2D], [2D:3D])
        blocks.{i}.attn.proj.*      -> encoder.layer.{i}.attention.proj.*
        blocks.{i}.{norm1,norm2,mlp.fc1,mlp.fc2}.* -> encoder.layer.{i}.(same).*
        norm.*                      -> encoder.layernorm.*

    Names without a counterpart are kept as they are (a strict load then lists them)."""
    out: dict[str, Tensor] = {}
    for key, v in state.items():
        parts = key.split(".")
        leaf = parts[-1]
        if key.startswith("patch_embed.proj."):
            out["encoder.embeddings.patch_embeddings.proj." + leaf] = v
        elif parts[0] == "norm" and len(parts) == 2:
            out["encoder.layernorm." + leaf] = v
        elif parts[0] == "blocks" and len(parts) >= 4 and parts[1].isdigit():
            inner = ".".join(parts[2:-1])
            base = f"encoder.layer.{parts[1]}."
            if inner == "attn.qkv" and v.shape[0] % 3 == 0:
                for name, chunk in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                    out[f"{base}attention.{name}.{leaf}"] = chunk
            elif inner in _BLOCK_NAMES:
                out[f"{base}{_BLOCK_NAMES[inner]}.{leaf}"] = v
            else:
                out[key] = v
        else:
            out[key] = v
    return out


def _official_encoder_layout(expected: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """VJEPA2Model encoder state (names -> tensors) -> the official key -> shape it corresponds to."""
    rev_block = {v: k for k, v in _BLOCK_NAMES.items()}
    out: dict[str, tuple[int, ...]] = {}
    for key, v in expected.items():
        parts = key.split(".")
        leaf, shape = parts[-1], tuple(v.shape)
        if key.startswith("encoder.embeddings.patch_embeddings.proj."):
            out["patch_embed.proj." + leaf] = shape
        elif key.startswith("encoder.layernorm."):
            out["norm." + leaf] = shape
        elif key.startswith("encoder.layer."):
            inner = ".".join(parts[3:-1])
            base = f"blocks.{parts[2]}."
            if inner == "attention.query":
                out[f"{base}attn.qkv.{leaf}"] = (3 * shape[0], *shape[1:])
            elif inner in ("attention.key", "attention.value"):
                continue
            else:
                out[f"{base}{rev_block[inner]}.{leaf}"] = shape
        else:  # pragma: no cover - a transformers version with other names
            raise WMError(f"transformers VJEPA2Model has an encoder tensor wmcore cannot map: {key}")
    return out


def vjepa2_encoder_config(
    state: Mapping[str, Tensor], img_size: int, num_frames: int = 64, num_heads: int | None = None,
    source: str = "encoder state dict",
):
    """The ``VJEPA2Config`` of an official encoder state dict (names after ``clean_keys``): width, input
    channels, tubelet and patch from ``patch_embed.proj.weight`` ``[D, C, tubelet, p, p]``, depth from
    the ``blocks.{i}``, MLP ratio from ``blocks.0.mlp.fc1``, qkv bias; what the weights do not fix:
    ``img_size`` (the RoPE grid), ``num_frames``, and the heads (``num_heads``, else ``ENCODER_HEADS``
    by width). RoPE, GELU, LayerNorm eps 1e-6: as the official video ViTs."""
    from transformers import VJEPA2Config

    w = state.get("patch_embed.proj.weight")
    if not isinstance(w, Tensor) or w.dim() != 5 or w.shape[3] != w.shape[4]:
        found = tuple(w.shape) if isinstance(w, Tensor) else "nothing"
        raise WMError(
            f"{source}: cannot tell the encoder's shape: expected patch_embed.proj.weight [D, 3, tubelet, p, p] "
            f"(an official video ViT), found {found}; keys: {key_list(sorted(state), 6)}"
        )
    hidden, chans, tubelet, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2]), int(w.shape[3])
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    depth = max(blocks) + 1 if blocks else 0
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / hidden if isinstance(fc1, Tensor) and fc1.dim() == 2 else 4.0
    if int(hidden * mlp_ratio) != round(hidden * mlp_ratio):  # transformers takes int(hidden * ratio)
        mlp_ratio = (round(hidden * mlp_ratio) + 0.5) / hidden
    if num_heads is None:
        if hidden not in ENCODER_HEADS:
            raise WMError(
                f"{source}: an encoder of width {hidden} is none of the official video ViTs "
                f"{sorted(ENCODER_HEADS)}; its number of heads is not in the weights: pass encoder_heads=H"
            )
        num_heads = ENCODER_HEADS[hidden]
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or hidden % num_heads:
        raise WMError(f"{source}: encoder heads must be a positive divisor of the width {hidden}, found {num_heads!r}")
    return VJEPA2Config(
        crop_size=int(img_size), patch_size=patch, frames_per_clip=int(num_frames), tubelet_size=tubelet,
        in_chans=chans, hidden_size=hidden, num_attention_heads=num_heads, num_hidden_layers=depth,
        mlp_ratio=float(mlp_ratio), qkv_bias="blocks.0.attn.qkv.bias" in state or not blocks,
        layer_norm_eps=1e-6, hidden_act="gelu",
    )


def encoder_from_official_state(
    state: Mapping[str, Tensor], img_size: int = 256, num_frames: int = 64, num_heads: int | None = None,
    device: str | torch.device = "cpu", source: str = "encoder state dict",
) -> VJEPA2VideoEncoder:
    """An official encoder state dict (``vjepa2-ac-vitg.pt``'s ``"encoder"``; ``module.``/``backbone.``
    are removed) -> transformers' VJEPA2Model encoder with those weights (``official_encoder_to_vjepa2``),
    in eval mode. Strict: missing, unexpected or misshapen tensors raise WMError listing them under
    their official names; ``pos_embed`` alone is ignored, as the official loader does with RoPE."""
    state = {k: v for k, v in clean_keys(state).items() if k not in _IGNORED_ENCODER_KEYS}
    bad = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    if bad:
        raise WMError(f"{source}: holds non-tensor entries {key_list(bad)}")
    config = vjepa2_encoder_config(state, img_size, num_frames, num_heads, source)
    with torch.device("meta"):  # shapes only: no init of ~1B parameters
        encoder = VJEPA2VideoEncoder.from_config(config)
    looks_like = f"the official video ViT it looks like (width {config.hidden_size}, {config.num_hidden_layers} blocks)"
    require_match(state, _official_encoder_layout(encoder.state_dict()), source, looks_like)
    encoder.to_empty(device=device)
    encoder.load_state_dict(official_encoder_to_vjepa2(state), strict=True)
    return encoder.eval()


def load_vjepa2_encoder(directory: str | Path, device: str | torch.device = "cpu") -> VJEPA2VideoEncoder:
    """A transformers-format directory (``config.json`` with model_type "vjepa2" + weights, e.g.
    ``facebook/vjepa2-vitg-fpc64-256`` saved with ``save_pretrained``) -> its VJEPA2Model encoder,
    float32, eval mode. Read with ``from_pretrained(local_files_only=True)``; encoder tensors missing
    from the weights (which transformers would initialise at random) raise WMError listing them."""
    d = Path(directory)
    want = "a transformers VJEPA2Model directory (config.json with model_type 'vjepa2' + weights)"
    if not d.is_dir():
        raise WMError(f"{d}: not a directory; expected {want}")
    cpath = d / "config.json"
    if not cpath.is_file():
        raise WMError(f"{d}: no config.json; expected {want}")
    raw = read_json(cpath)
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type != "vjepa2":
        arch = raw.get("architectures") if isinstance(raw, dict) else None
        raise WMError(
            f"{cpath}: model_type {model_type!r}" + (f" (architectures {arch})" if arch else "")
            + f"; expected 'vjepa2': {want}"
        )
    from transformers import VJEPA2Model

    try:
        with _quiet_transformers():
            model, info = VJEPA2Model.from_pretrained(
                d, local_files_only=True, output_loading_info=True, dtype=torch.float32
            )
    except Exception as e:  # noqa: BLE001 - whatever transformers objects to is the directory's fault
        raise WMError(
            f"{d}: transformers cannot load it as a VJEPA2Model ({type(e).__name__}: {str(e)[:300]})"
        ) from None
    missing = sorted(str(k) for k in info.get("missing_keys", ()) if str(k).startswith("encoder."))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()) if "encoder." in str(k))
    if missing or mismatched:
        parts = [f"missing encoder keys {key_list(missing)}" if missing else "",
                 f"misshapen encoder keys {key_list(mismatched)}" if mismatched else ""]
        raise WMError(f"{d}: the weights do not match config.json — " + "; ".join(x for x in parts if x))
    return VJEPA2VideoEncoder(model).to(device).eval()


def check_encoder_fits(encoder: VJEPA2VideoEncoder, cfg: ACPredictorConfig, source: str) -> None:
    """WMError (naming ``source``) unless the encoder's width, patch, tubelet and image size are the predictor's."""
    c = encoder.config
    pairs = [("hidden_size", c.hidden_size, "embed_dim", cfg.embed_dim),
             ("patch_size", encoder.patch_size, "patch_size", cfg.patch_size),
             ("tubelet_size", c.tubelet_size, "tubelet_size", cfg.tubelet_size),
             ("crop_size", c.crop_size, "img_size", cfg.img_size[0])]
    bad = [f"encoder {a} {x} != predictor {b} {y}" for a, x, b, y in pairs if x != y]
    if cfg.img_size[0] != cfg.img_size[1]:
        bad.append(f"predictor img_size {cfg.img_size} is not square (the encoder's RoPE grid is)")
    if bad:
        raise WMError(f"{source}: the encoder does not fit the predictor: " + "; ".join(bad))
