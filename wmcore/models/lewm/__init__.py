"""LeWorldModel-style JEPA: a ViT encoder's CLS token and an action-conditioned causal predictor.

The model follows lucas-maes/le-wm (``jepa.py``, ``module.py``) closely enough that its checkpoints
load: the submodules are ``encoder`` (a transformers ``ViTModel``, no pooler, CLS token out),
``projector`` and ``pred_proj`` (Linear-BatchNorm1d-GELU-Linear), ``action_encoder`` (a 1x1 Conv1d
then an MLP) and ``predictor`` (a causal transformer over frame embeddings whose blocks are
modulated by the action embeddings, AdaLN-zero), and ``config.json`` has the same five sections.
The model is the network only: its objective (next-embedding MSE + lambda * SIGReg, no stop-gradient,
no EMA), SIGReg and the BatchNorm recalibration after training are ``wmcore.train``'s.

On disk (``save_pretrained``): ``config.json`` + ``model.safetensors``. ``load_checkpoint`` also
reads the release layout, ``config.json`` + ``weights.pt`` (a state dict). The published weights name
the ViT's parameters as transformers 4 did (``encoder.encoder.layer.N.attention.attention.query``);
transformers 5 renamed them (``encoder.layers.N.attention.q_proj``). Both load with either library;
files we write, and fingerprints, use the transformers-4 names so that they do not depend on the
installed version.

Frames are preprocessed as LeWM does: [0, 1], resized to ``image_size`` (antialiased bilinear),
normalised with ImageNet mean/std. One model step is ``frameskip`` recorded steps; its action is the
block of recorded actions, concatenated (LeWM's PushT: 5 x 2 = 10). LeWM trains on z-scored actions;
a checkpoint that needs that carries ``action_mean``/``action_std`` (per recorded action dimension)
in the ``wmcore`` section of its config.json, and ``predict`` applies them.

Modules: ``config`` (LeWMConfig, config.json), ``model`` (the network, ``preprocess``,
``normalise_actions``), ``checkpoint`` (key names, save and load), ``adapter`` (``LeWMWorldModel``, the
``lewm:DIR`` loader).
"""

from __future__ import annotations

from .adapter import LeWMWorldModel, load_world_model
from .checkpoint import (
    CONFIG_FILE, RELEASE_WEIGHTS_FILE, WEIGHTS_FILE, canonical_state_dict, load_checkpoint, rename_vit_keys,
    save_pretrained, vit_naming,
)
from .config import VIT_SIZES, LeWMConfig, fingerprint_config, tiny_config
from .model import ARPredictor, ConditionalBlock, Embedder, LeWorldModel, MLP, normalise_actions, preprocess

__all__ = [
    "ARPredictor", "CONFIG_FILE", "ConditionalBlock", "Embedder", "LeWMConfig", "LeWMWorldModel", "LeWorldModel",
    "MLP", "RELEASE_WEIGHTS_FILE", "VIT_SIZES", "WEIGHTS_FILE", "canonical_state_dict", "fingerprint_config",
    "load_checkpoint", "load_world_model", "normalise_actions", "preprocess", "rename_vit_keys", "save_pretrained",
    "tiny_config", "vit_naming",
]
