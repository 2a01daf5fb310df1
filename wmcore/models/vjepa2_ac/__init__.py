"""V-JEPA 2-AC: the action-conditioned predictor of facebookresearch/vjepa2, as a wmcore WorldModel.

One module per part, read in this order:

- ``config``: ``ACPredictorConfig``, the official predictor's arguments;
- ``predictor``: ``ACPredictor`` (the official state-dict layout, block-causal frames, 3D RoPE) and its
  exact ``KVCache``;
- ``poses``: DROID end-effector poses (``compute_new_pose``, ``compose_pose_deltas``);
- ``adapter``: ``VJEPA2ACWorldModel``, the WorldModel around a predictor and an encoder, with the
  action/state codec it reads actions and states through (``PoseCodec`` for the official model);
  ``ac_preprocess``, the official frame transform;
- ``convert``: official checkpoints -> ``ACPredictor``, official encoder weights -> transformers'
  ``VJEPA2Model`` (``VJEPA2VideoEncoder``);
- ``spec``: the ``vjepa2-ac:CKPT[,encoder=DIR][,...]`` model spec (``load_world_model``, ``parse_spec``).

``wmcore.models.ac_tiny`` builds a small model of the same architecture trained from pixels.
"""

from __future__ import annotations

from .adapter import ACCodec, ACRolloutCache, PoseCodec, VJEPA2ACWorldModel, ac_preprocess, shape_of
from .config import ACPredictorConfig
from .convert import (
    ENCODER_HEADS, VJEPA2VideoEncoder, build_predictor, check_encoder_fits, clean_keys, encoder_from_official_state,
    infer_predictor_kwargs, load_official_checkpoint, load_predictor_state, load_vjepa2_encoder,
    official_encoder_to_vjepa2, read_official_checkpoint, vjepa2_encoder_config,
)
from .poses import POSE_DIM, compose_pose_deltas, compute_new_pose, euler_xyz_from_quat, quat_from_euler_xyz
from .predictor import ACAttention, ACBlock, ACPredictor, KVCache, MLP, SwiGLUFFN, rope_rotate, rope_tables
from .spec import SPEC_HELP, load_world_model, parse_spec

__all__ = [
    "ACAttention", "ACBlock", "ACCodec", "ACPredictor", "ACPredictorConfig", "ACRolloutCache", "ENCODER_HEADS",
    "KVCache", "MLP", "POSE_DIM", "PoseCodec", "SPEC_HELP", "SwiGLUFFN", "VJEPA2ACWorldModel", "VJEPA2VideoEncoder",
    "ac_preprocess", "build_predictor", "check_encoder_fits", "clean_keys", "compose_pose_deltas",
    "compute_new_pose", "encoder_from_official_state", "euler_xyz_from_quat", "infer_predictor_kwargs",
    "load_official_checkpoint", "load_predictor_state", "load_vjepa2_encoder", "load_world_model",
    "official_encoder_to_vjepa2", "parse_spec", "quat_from_euler_xyz", "read_official_checkpoint", "rope_rotate",
    "rope_tables", "shape_of", "vjepa2_encoder_config",
]
