"""``ACPredictorConfig``: the arguments of the official ``VisionTransformerPredictorAC`` (official names)
and the sizes derived from them (patch grid, tokens per frame, conditioning tokens, frames the mask
covers). Kept apart from the modules, as transformers keeps ``configuration_*`` apart from ``modeling_*``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...errors import WMError

__all__ = ["ACPredictorConfig"]



@dataclass(frozen=True)
class ACPredictorConfig:
    """``VisionTransformerPredictorAC``'s arguments (official names), defaults as the released
    ViT-g AC predictor built by ``vjepa2_ac_vit_giant`` (hub: img 256, 64 frames -> 32 predictor frames).

    Training-only arguments of the official signature (dropouts, drop path, activation checkpointing,
    ``use_sdpa``, ``uniform_power``) are accepted by ``ACPredictor`` and not stored: inference does
    not read them. ``rope_fixed_pairs`` is ours (see the module docstring).
    """

    img_size: tuple[int, int] = (256, 256)
    patch_size: int = 16
    num_frames: int = 64
    tubelet_size: int = 2
    embed_dim: int = 1408
    predictor_embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6  # vit_ac_predictor's partial(nn.LayerNorm, eps=1e-6)
    init_std: float = 0.02
    use_silu: bool = False
    wide_silu: bool = True
    is_frame_causal: bool = True
    use_rope: bool = True
    action_embed_dim: int = 7
    use_extrinsics: bool = False
    rope_fixed_pairs: bool = False

    def __post_init__(self) -> None:
        size = self.img_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if not (isinstance(size, (tuple, list)) and len(size) == 2):
            raise WMError(f"ACPredictorConfig.img_size: expected an int or (height, width), found {self.img_size!r}")
        object.__setattr__(self, "img_size", tuple(int(s) for s in size))
        for key in ("patch_size", "num_frames", "tubelet_size", "embed_dim", "predictor_embed_dim", "depth",
                    "num_heads", "action_embed_dim"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WMError(f"ACPredictorConfig.{key}: expected a positive int, found {v!r}")
        h, w = self.img_size
        if h % self.patch_size or w % self.patch_size:
            raise WMError(f"ACPredictorConfig: patch_size {self.patch_size} must divide img_size {self.img_size}")
        if self.predictor_embed_dim % self.num_heads:
            raise WMError(
                f"ACPredictorConfig: predictor_embed_dim {self.predictor_embed_dim} must be a multiple of "
                f"num_heads {self.num_heads}"
            )
        if self.num_frames < self.tubelet_size:
            raise WMError(
                f"ACPredictorConfig: num_frames {self.num_frames} < tubelet_size {self.tubelet_size} leaves the "
                "frame mask empty (it covers num_frames // tubelet_size frames)"
            )
        if not self.is_frame_causal:
            raise WMError(
                "ACPredictorConfig: is_frame_causal=False is not supported: the official forward slices its "
                "frame-causal mask unconditionally (it fails without one), and a rollout needs causality"
            )
        if self.use_extrinsics and self.action_embed_dim < 2:
            raise WMError("ACPredictorConfig: use_extrinsics needs action_embed_dim >= 2 (extrinsics are A - 1 wide)")
        if self.mlp_ratio <= 0:
            raise WMError(f"ACPredictorConfig.mlp_ratio: expected > 0, found {self.mlp_ratio!r}")

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def cond_tokens(self) -> int:
        return 3 if self.use_extrinsics else 2

    @property
    def max_frames(self) -> int:
        """Frames the official block-causal mask covers: ``num_frames // tubelet_size``."""
        return self.num_frames // self.tubelet_size

    @property
    def head_dim(self) -> int:
        return self.predictor_embed_dim // self.num_heads

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        return d

