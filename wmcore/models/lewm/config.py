"""LeWM's configuration: ``LeWMConfig`` (architecture, preprocessing, loss settings), reading and
writing le-wm's five-section ``config.json``, and the entries that enter the fingerprint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ...errors import WMError
from ...video import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["VIT_SIZES", "LeWMConfig", "fingerprint_config", "tiny_config"]

# stable_pretraining's vit_hf presets (intermediate size = 4 x hidden); LeWM uses "tiny"
VIT_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}


@dataclass(frozen=True)
class LeWMConfig:
    """Everything that fixes the architecture, the preprocessing and the loss.

    The defaults are the small model that wmcore trains (about 1.7M parameters at 64 px); the
    published PushT model is ViT-tiny at 224 px, patch 14, about 18M (its config.json reads with
    ``from_json``).
    """

    name: str = "lewm"
    # encoder: transformers ViTModel, CLS token
    image_size: int = 64
    patch_size: int = 8
    encoder_hidden: int = 128
    encoder_layers: int = 4
    encoder_heads: int = 4
    encoder_mlp: int = 512
    encoder_mask_token: bool = False  # LeWM builds its ViT without one
    # latent
    embed_dim: int = 128  # D: projector output, predictor input/output
    projector_hidden: int = 512
    pred_proj_hidden: int = 512
    # actions: one model step = frameskip recorded steps
    action_dim: int = 10  # per model step (recorded width x frameskip)
    frameskip: int = 5
    action_smoothed_dim: int = 10  # le-wm's Embedder default, kept whatever the action width
    action_mlp_scale: int = 4
    # predictor
    history: int = 3  # frames the predictor sees (its positional table)
    predictor_hidden: int = 128
    predictor_depth: int = 2
    predictor_heads: int = 4
    predictor_dim_head: int = 32
    predictor_mlp: int = 512
    predictor_dropout: float = 0.1
    predictor_emb_dropout: float = 0.0
    # loss
    sigreg_lambda: float = 0.09
    sigreg_num_proj: int = 1024
    sigreg_knots: int = 17
    # multi-step rollout loss (V-JEPA 2-AC trains with one): weight of the open-loop term, 0 = off
    rollout_weight: float = 0.0
    # preprocessing
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    action_mean: tuple[float, ...] | None = None  # per recorded action dimension, or None
    action_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise WMError(f"LeWMConfig.{f.name}: expected a positive integer, found {v!r}")
        for key in ("image_mean", "image_std", "action_mean", "action_std"):
            v = getattr(self, key)
            if isinstance(v, list):  # from JSON
                object.__setattr__(self, key, tuple(float(x) for x in v))
        if self.image_size % self.patch_size:
            raise WMError(f"LeWMConfig: patch_size {self.patch_size} must divide image_size {self.image_size}")
        if self.encoder_hidden % self.encoder_heads:
            raise WMError(
                f"LeWMConfig: encoder_hidden {self.encoder_hidden} must be a multiple of "
                f"encoder_heads {self.encoder_heads}"
            )
        if self.action_dim % self.frameskip:
            raise WMError(
                f"LeWMConfig: action_dim {self.action_dim} (per model step) must be a multiple of "
                f"frameskip {self.frameskip}"
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise WMError("LeWMConfig: image_mean and image_std need 3 entries (RGB)")
        if (self.action_mean is None) != (self.action_std is None):
            raise WMError("LeWMConfig: give both action_mean and action_std, or neither")
        if self.action_mean is not None:
            w = self.action_dim // self.frameskip
            if len(self.action_mean) != w or len(self.action_std) != w or min(self.action_std) <= 0:
                raise WMError(
                    f"LeWMConfig: action_mean/action_std need {w} entries (one per recorded action dimension) "
                    "and positive stds"
                )
        if not 0 <= self.predictor_dropout < 1 or not 0 <= self.predictor_emb_dropout < 1:
            raise WMError("LeWMConfig: dropout rates must be in [0, 1)")
        if self.sigreg_lambda < 0 or self.sigreg_knots < 2:
            raise WMError("LeWMConfig: sigreg_lambda must be >= 0 and sigreg_knots >= 2")
        if isinstance(self.rollout_weight, bool) or not isinstance(self.rollout_weight, (int, float)) \
                or not math.isfinite(self.rollout_weight) or self.rollout_weight < 0:
            raise WMError(f"LeWMConfig: rollout_weight must be a finite number >= 0, found {self.rollout_weight!r}")

    def vit_config(self):
        """The transformers ``ViTConfig`` of the encoder (as stable_pretraining's ``vit_hf`` builds it)."""
        from transformers import ViTConfig

        return ViTConfig(
            hidden_size=self.encoder_hidden,
            num_hidden_layers=self.encoder_layers,
            num_attention_heads=self.encoder_heads,
            intermediate_size=self.encoder_mlp,
            image_size=self.image_size,
            patch_size=self.patch_size,
        )

    def to_json(self) -> dict:
        """The release-style config.json: le-wm's five sections plus a ``wmcore`` section."""
        dims = (self.encoder_hidden, self.encoder_layers, self.encoder_heads)
        size = next((k for k, v in VIT_SIZES.items() if v == dims), "tiny")  # the dims are written out anyway
        d, h = self.embed_dim, self.history
        mlp = lambda hidden, inp: {  # noqa: E731
            "input_dim": inp,
            "hidden_dim": hidden,
            "output_dim": d,
            "norm_fn": {"_target_": "torch.nn.BatchNorm1d", "_partial_": True},
        }
        return {
            "embed_dim": d,
            "history_size": h,
            "encoder": {
                "size": size,
                "patch_size": self.patch_size,
                "image_size": self.image_size,
                "pretrained": False,
                "use_mask_token": self.encoder_mask_token,
                "hidden_size": self.encoder_hidden,
                "num_hidden_layers": self.encoder_layers,
                "num_attention_heads": self.encoder_heads,
                "intermediate_size": self.encoder_mlp,
            },
            "predictor": {
                "num_frames": h,
                "input_dim": d,
                "hidden_dim": self.predictor_hidden,
                "output_dim": d,
                "depth": self.predictor_depth,
                "heads": self.predictor_heads,
                "mlp_dim": self.predictor_mlp,
                "dim_head": self.predictor_dim_head,
                "dropout": self.predictor_dropout,
                "emb_dropout": self.predictor_emb_dropout,
            },
            "action_encoder": {
                "input_dim": self.action_dim,
                "smoothed_dim": self.action_smoothed_dim,
                "emb_dim": d,
                "mlp_scale": self.action_mlp_scale,
            },
            "projector": mlp(self.projector_hidden, self.encoder_hidden),
            "pred_proj": mlp(self.pred_proj_hidden, d),
            "wmcore": {
                "format": 1,
                "name": self.name,
                "frameskip": self.frameskip,
                "sigreg_lambda": self.sigreg_lambda,
                "sigreg_num_proj": self.sigreg_num_proj,
                "sigreg_knots": self.sigreg_knots,
                "rollout_weight": self.rollout_weight,
                "image_mean": list(self.image_mean),
                "image_std": list(self.image_std),
                "action_mean": None if self.action_mean is None else list(self.action_mean),
                "action_std": None if self.action_std is None else list(self.action_std),
            },
        }

    @classmethod
    def from_json(cls, d: Any, source: str = "config.json", name: str | None = None) -> "LeWMConfig":
        """Read a config.json (ours or a LeWM release's); bad content raises WMError naming ``source``.

        Keys that le-wm's constructors give defaults to take le-wm's defaults, not ours (a release
        config lists only what its hydra file set). ``name`` is used when the file has no wmcore name.
        """
        return _config_from_json(cls, d, source, name)


def tiny_config(**overrides) -> LeWMConfig:
    """A few-thousand-parameter LeWMConfig at 16 px for tests and smoke runs (fields overridable)."""
    base = dict(
        name="tiny", image_size=16, patch_size=8, encoder_hidden=32, encoder_layers=1, encoder_heads=2,
        encoder_mlp=64, embed_dim=16, projector_hidden=32, pred_proj_hidden=32, predictor_hidden=32,
        predictor_depth=1, predictor_heads=2, predictor_dim_head=16, predictor_mlp=64, sigreg_num_proj=32,
    )
    return LeWMConfig(**{**base, **overrides})


_SECTION_KEYS = {
    "encoder": {"_target_", "size", "patch_size", "image_size", "pretrained", "use_mask_token",
                "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"},
    "predictor": {"_target_", "num_frames", "input_dim", "hidden_dim", "output_dim", "depth", "heads",
                  "mlp_dim", "dim_head", "dropout", "emb_dropout"},
    "action_encoder": {"_target_", "input_dim", "smoothed_dim", "emb_dim", "mlp_scale"},
    "projector": {"_target_", "input_dim", "hidden_dim", "output_dim", "norm_fn"},
    "pred_proj": {"_target_", "input_dim", "hidden_dim", "output_dim", "norm_fn"},
    "wmcore": {"format", "name", "frameskip", "sigreg_lambda", "sigreg_num_proj", "sigreg_knots", "rollout_weight",
               "image_mean", "image_std", "action_mean", "action_std"},
}


def _config_from_json(cls, d: Any, source: str, name: str | None) -> LeWMConfig:
    if not isinstance(d, dict):
        raise WMError(f"{source}: expected a JSON object with LeWM's config sections, found {type(d).__name__}")
    absent = [s for s in _SECTION_KEYS if s != "wmcore" and not isinstance(d.get(s), dict)]
    if absent:
        raise WMError(
            f"{source}: missing section(s) {absent}; a LeWM config.json has encoder, predictor, action_encoder, "
            "projector and pred_proj"
        )
    for sec, known in _SECTION_KEYS.items():
        extra = sorted(set(d.get(sec) or {}) - known)
        if extra:
            raise WMError(f"{source}: section {sec!r} has unsupported key(s) {extra}; known: {sorted(known)}")
    enc, pred, act, proj, pp = (d[s] for s in ("encoder", "predictor", "action_encoder", "projector", "pred_proj"))
    wm = d.get("wmcore") or {}

    def need(sec: str, key: str) -> Any:
        if key not in d[sec]:
            raise WMError(f"{source}: section {sec!r} lacks {key!r}")
        return d[sec][key]

    for sec in ("projector", "pred_proj"):
        norm = d[sec].get("norm_fn")  # absent: the release loaders build BatchNorm1d anyway
        target = norm.get("_target_", "") if isinstance(norm, dict) else norm
        if norm is not None and not str(target).endswith("BatchNorm1d"):
            raise WMError(f"{source}: {sec}.norm_fn must be BatchNorm1d (as in LeWM), found {norm!r}")
    size = enc.get("size", "tiny")
    if size not in VIT_SIZES:
        raise WMError(f"{source}: encoder.size {size!r} is not one of {sorted(VIT_SIZES)}")
    hidden, layers, heads = VIT_SIZES[size]
    hidden = enc.get("hidden_size", hidden)
    emb = need("predictor", "input_dim")
    history = need("predictor", "num_frames")
    if "history_size" in d and d["history_size"] != history:
        raise WMError(f"{source}: history_size {d['history_size']} differs from predictor.num_frames {history}")
    # wmcore supports the layouts in which the widths agree (every published LeWM does)
    agree = {
        "predictor.output_dim": pred.get("output_dim", emb),
        "action_encoder.emb_dim": act.get("emb_dim", 10),
        "projector.output_dim": proj.get("output_dim", proj.get("input_dim")),
        "pred_proj.input_dim": need("pred_proj", "input_dim"),
        "pred_proj.output_dim": pp.get("output_dim", pp.get("input_dim")),
    }
    if "embed_dim" in d:
        agree["embed_dim"] = d["embed_dim"]
    bad = {k: v for k, v in agree.items() if v != emb}
    if bad:
        raise WMError(f"{source}: widths must all equal predictor.input_dim = {emb}, found {bad}")
    if need("projector", "input_dim") != hidden:
        raise WMError(f"{source}: projector.input_dim {proj['input_dim']} must equal the encoder width {hidden}")
    kw = dict(
        name=wm.get("name") or name or "lewm",
        image_size=enc.get("image_size", 224),  # vit_hf's defaults
        patch_size=enc.get("patch_size", 16),
        encoder_hidden=hidden,
        encoder_layers=enc.get("num_hidden_layers", layers),
        encoder_heads=enc.get("num_attention_heads", heads),
        encoder_mlp=enc.get("intermediate_size", 4 * hidden),
        # vit_hf defaults to a mask token, but LeWM's config and both of its loaders say False
        encoder_mask_token=bool(enc.get("use_mask_token", False)),
        embed_dim=emb,
        projector_hidden=need("projector", "hidden_dim"),
        pred_proj_hidden=need("pred_proj", "hidden_dim"),
        action_dim=need("action_encoder", "input_dim"),
        action_smoothed_dim=act.get("smoothed_dim", 10),
        action_mlp_scale=act.get("mlp_scale", 4),
        history=history,
        predictor_hidden=pred.get("hidden_dim", emb),
        predictor_depth=need("predictor", "depth"),
        predictor_heads=need("predictor", "heads"),
        predictor_dim_head=pred.get("dim_head", 64),
        predictor_mlp=need("predictor", "mlp_dim"),
        predictor_dropout=pred.get("dropout", 0.0),
        predictor_emb_dropout=pred.get("emb_dropout", 0.0),
    )
    for key in ("frameskip", "sigreg_lambda", "sigreg_num_proj", "sigreg_knots", "rollout_weight", "image_mean", "image_std",
                "action_mean", "action_std"):
        if wm.get(key) is not None:
            kw[key] = wm[key]
    try:
        return cls(**kw)
    except (ValueError, TypeError) as e:
        raise WMError(f"{source}: {e}") from None


# a label and training-only settings: they do not change a single prediction
_NOT_FINGERPRINTED = (
    "name", "sigreg_lambda", "sigreg_num_proj", "sigreg_knots", "rollout_weight", "predictor_dropout", "predictor_emb_dropout"
)


def fingerprint_config(cfg: LeWMConfig) -> dict:
    """The config entries that enter a model's fingerprint: all but the name and the training-only ones."""
    d = dataclasses.asdict(cfg)
    for k in _NOT_FINGERPRINTED:
        d.pop(k)
    return d
