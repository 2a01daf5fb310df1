"""The ``vjepa2-ac:CKPT[,encoder=DIR][,...]`` model spec: an official V-JEPA 2-AC checkpoint (and an
encoder) as a WorldModel. ``load_world_model`` puts the pieces together (``convert`` reads them,
``adapter`` wraps them); ``parse_spec`` reads the spec's options."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ...errors import WMError
from .adapter import VJEPA2ACWorldModel
from .convert import (
    VJEPA2VideoEncoder, build_predictor, check_encoder_fits, clean_keys, encoder_from_official_state,
    load_vjepa2_encoder, read_official_checkpoint,
)

__all__ = ["SPEC_HELP", "load_world_model", "parse_spec"]

def load_world_model(
    path: str | Path, device: str | torch.device = "cpu", name: str | None = None,
    encoder: Callable[[Tensor], Tensor] | None = None, *, encoder_dir: str | Path | None = None,
    encoder_heads: int | None = None, frameskip: int = 1, compile: bool = False, **predictor_kwargs: Any,
) -> VJEPA2ACWorldModel:
    """An official checkpoint as a WorldModel (the ``vjepa2-ac:CKPT[,encoder=DIR]`` model spec).

    The encoder: ``encoder`` (any callable, see ``VJEPA2ACWorldModel``) if given; else the transformers
    directory ``encoder_dir`` (it wins over the checkpoint's); else the checkpoint's ``"encoder"``,
    mapped onto transformers' VJEPA2Model (``encoder_heads`` heads, default by width:
    ``ENCODER_HEADS``); else none (the model then works on latents only).
    The predictor: shapes from its weights; ``predictor_kwargs`` (img_size, num_frames, num_heads, ...)
    for the rest; img_size, patch and tubelet default to the encoder's where it says them."""
    if encoder is not None and encoder_dir is not None:
        raise WMError("load_world_model: pass an encoder or an encoder_dir, not both")
    p, ckpt = read_official_checkpoint(path, device)
    enc: VJEPA2VideoEncoder | None = None
    enc_state: dict[str, Tensor] | None = None
    defaults: dict[str, Any] = {}
    if encoder is None and encoder_dir is not None:
        enc = load_vjepa2_encoder(encoder_dir, device)
        if encoder_heads is not None and encoder_heads != enc.config.num_attention_heads:
            raise WMError(
                f"encoder_heads {encoder_heads}: {encoder_dir} has {enc.config.num_attention_heads} heads "
                "(config.json); encoder_heads is for the checkpoint's own encoder"
            )
        defaults = {"img_size": enc.config.crop_size, "patch_size": enc.patch_size,
                    "tubelet_size": enc.config.tubelet_size}
    elif encoder is None and isinstance(ckpt.get("encoder"), dict):
        enc_state = clean_keys(ckpt["encoder"])
        w = enc_state.get("patch_embed.proj.weight")
        if isinstance(w, Tensor) and w.dim() == 5:
            defaults = {"patch_size": int(w.shape[-1]), "tubelet_size": int(w.shape[2])}
    predictor = build_predictor(p, ckpt["predictor"], {**defaults, **predictor_kwargs}).to(device).eval()
    cfg = predictor.config
    if enc_state is not None:
        if cfg.img_size[0] != cfg.img_size[1]:
            raise WMError(f"{p}: predictor img_size {cfg.img_size} is not square; the encoder's RoPE grid is")
        enc = encoder_from_official_state(enc_state, cfg.img_size[0], cfg.num_frames, encoder_heads, device,
                                          source=f"{p} ['encoder']")
    if enc is not None:
        check_encoder_fits(enc, cfg, str(encoder_dir) if encoder_dir is not None else f"{p} ['encoder']")
    return VJEPA2ACWorldModel(predictor, encoder if encoder is not None else enc,
                              name=name or f"vjepa2-ac[{p.name}]", frameskip=frameskip, compile=compile)


# option -> (load_world_model keyword, parser)
_SPEC_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "encoder": ("encoder_dir", str),
    "img_size": ("img_size", int),
    "num_frames": ("num_frames", int),
    "num_heads": ("num_heads", int),
    "encoder_heads": ("encoder_heads", int),
    "frameskip": ("frameskip", int),
    "compile": ("compile", lambda v: {"1": True, "true": True, "yes": True,
                                      "0": False, "false": False, "no": False}[v.lower()]),
}
SPEC_HELP = ("vjepa2-ac:CKPT[,encoder=DIR][,img_size=S][,num_frames=F][,num_heads=H][,encoder_heads=H]"
             "[,frameskip=f][,compile=0|1]")


def parse_spec(arg: str) -> tuple[str, dict[str, Any]]:
    """``"CKPT,encoder=DIR,num_heads=16"`` -> (CKPT, ``load_world_model`` keyword arguments)."""
    path, *items = [s.strip() for s in arg.split(",")]
    if not path or path.partition("=")[0] in _SPEC_OPTIONS:
        raise WMError(f"model spec 'vjepa2-ac:{arg}': the checkpoint path comes first: {SPEC_HELP}")
    kw: dict[str, Any] = {}
    for item in filter(None, items):
        key, sep, val = item.partition("=")
        if not sep or key not in _SPEC_OPTIONS or not val:
            raise WMError(
                f"model spec 'vjepa2-ac:{arg}': option {item!r}: expected key=value with key one of "
                f"{', '.join(_SPEC_OPTIONS)} ({SPEC_HELP})"
            )
        name, parse = _SPEC_OPTIONS[key]
        try:
            kw[name] = parse(val)
        except (ValueError, KeyError):
            want = "0 or 1" if key == "compile" else "a path" if key == "encoder" else "an integer"
            raise WMError(f"model spec 'vjepa2-ac:{arg}': option {key}={val!r}: expected {want}") from None
    return path, kw
