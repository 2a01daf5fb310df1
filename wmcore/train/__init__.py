"""Training the embedded models: a JEPA from pixels on PushT episodes.

``--arch lewm`` (the default model pusht-lewm: LeWorldModel, CLS embedding, MSE + SIGReg) or
``--arch ac-tiny`` (a small V-JEPA 2-AC, patch tokens, L1 + SIGReg, optionally inverse dynamics; the
embedded pusht-ac-tiny takes two runs, the second on the first's frozen encoder (``--encoder-from``):
``make train-ac-tiny``, and ``wmcore.models.ac_tiny`` says why).

``wmcore train --data DIR --out DIR`` (its options: ``wmcore.cli``). Seeded, resumable (a checkpoint
every ``--val-every`` steps; rerunning the same command continues), a held-out validation curve, a
progress line per validation, BatchNorm statistics recalibrated at the end (the running averages
lag the weights and would bias evaluation), then ``config.json`` + ``model.safetensors``.

Modules: ``loop`` (the one training loop, ``TrainConfig``, the ``Recipe`` interface), ``losses``
(SIGReg, prediction and inverse-dynamics losses, the LeWM and ac-tiny objectives), one recipe per
architecture (``lewm``, ``ac_tiny``: build, inputs, loss, validate, finish, save) and ``command``
(``run``: what ``wmcore train`` does with its options).
"""

from __future__ import annotations

from .ac_tiny import ACTinyRecipe
from .command import model_config, run
from .lewm import LeWMRecipe, recalibrate_bn
from .loop import RECIPES, Recipe, TrainConfig, Windows, lr_at, recipe_for, train
from .losses import (
    PREDICTION_LOSSES, ac_tiny_loss, inverse_dynamics, lewm_forward, lewm_loss, lewm_open_loop, lewm_rollout_loss, sigreg,
)

__all__ = [
    "ACTinyRecipe", "LeWMRecipe", "PREDICTION_LOSSES", "RECIPES", "Recipe", "TrainConfig", "Windows",
    "ac_tiny_loss", "inverse_dynamics", "lewm_forward", "lewm_loss", "lewm_open_loop", "lewm_rollout_loss", "lr_at",
    "model_config", "recalibrate_bn", "recipe_for", "run", "sigreg", "train",
]
