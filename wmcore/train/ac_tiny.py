"""The ac-tiny recipe (``--arch ac-tiny``, the embedded pusht-ac-tiny): a small V-JEPA 2-AC from pixels,
actions and the agent's position, L1 or MSE + SIGReg (+ inverse dynamics) (``losses.ac_tiny_loss``);
optionally a predictor-only stage on another run's frozen encoder (``--encoder-from``).

Pixels go through ``wmcore.models.vjepa2_ac.ac_preprocess`` and actions and states through
``ac_tiny.normalise_actions`` / ``state_tokens``: the functions evaluation uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import WMError
from ..models import ac_tiny
from ..models.ac_tiny import ACJEPA, ACTinyConfig
from ..models.vjepa2_ac import ac_preprocess
from .losses import ac_tiny_loss

__all__ = ["ACTinyRecipe"]


class ACTinyRecipe:
    """ac-tiny's training recipe (the ``Recipe`` interface of ``wmcore.train.loop``)."""

    arch = "ac-tiny"
    config = ACTinyConfig
    help = "small V-JEPA 2-AC"

    def states(self, episodes, steps: int, cfg: ACTinyConfig, source: str) -> Tensor:
        """The episodes' states ``[E, steps+1, S]``: the predictor reads the agent's position from them."""
        if any(e.states is None for e in episodes):
            raise WMError(
                f"{source}: episodes without states; --arch ac-tiny reads the agent's position (state columns "
                f"{list(cfg.state_columns)}) of every frame: use episodes that record states (wmcore make-fixtures pusht)"
            )
        width = min(int(e.states.shape[1]) for e in episodes)
        if max(cfg.state_columns) >= width:
            raise WMError(f"{source}: states have {width} columns; state_columns {list(cfg.state_columns)} do not fit")
        return torch.stack([e.states[: steps + 1, :width].float() for e in episodes])

    def build(self, cfg: ACTinyConfig, encoder_from: str = "") -> ACJEPA:
        """A fresh ACJEPA; with ``encoder_from``, its encoder copied from that ac-tiny model directory."""
        model = ACJEPA(cfg)
        if encoder_from:
            ac_tiny.copy_encoder(model, encoder_from)
        return model

    def inputs(self, cfg: ACTinyConfig, frames: Tensor, actions: Tensor, states: Tensor, device: torch.device,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Windows as recorded -> the model's inputs on ``device``: frames uint8 ``[B, W, H, W', 3]`` ->
        pixels ``[B, W, 3, S, S]``; action blocks ``[B, W, k*A]`` and states ``[B, W, S]`` -> the
        predictor's normalised inputs ``[B, W, action_dim]``. With a ``generator`` (training), each
        window reads propagated positions with probability ``state_mix``; without (validation), the
        recorded ones."""
        mix = None if generator is None else torch.rand(frames.shape[0], generator=generator) < cfg.state_mix
        return (ac_preprocess(frames.to(device), cfg.image_size), ac_tiny.normalise_actions(actions, cfg).to(device),
                ac_tiny.training_state_tokens(states, actions, cfg, mix).to(device))

    def loss(self, model: ACJEPA, inputs: tuple[Tensor, Tensor, Tensor],
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``losses.ac_tiny_loss`` of (pixels ``[B, W, 3, S, S]``, actions, states ``[B, W, action_dim]``)."""
        return ac_tiny_loss(model, *inputs, generator=generator)

    def validate(self, model: ACJEPA, batches: list[tuple[Tensor, Tensor, Tensor]]) -> dict[str, float]:
        """Mean held-out loss terms, next-latent cosine and MSE skill against copying the previous frame."""
        pred = sig = cos = skill = inverse = 0.0
        for inputs in batches:
            losses = ac_tiny_loss(model, *inputs)
            pred, sig, cos = pred + float(losses["pred"]), sig + float(losses["sigreg"]), cos + float(losses["cos"])
            skill += float(losses["skill"])
            inverse += float(losses.get("inverse", 0.0))
        n = len(batches)
        out = {"val_pred": pred / n, "val_sigreg": sig / n, "val_cos": cos / n, "val_skill": skill / n}
        if model.cfg.inverse_dynamics:
            out["val_inverse"] = inverse / n
        return out

    def finish(self, model: ACJEPA, sample) -> None:
        """Nothing to recalibrate: neither the encoder nor the predictor has running statistics."""

    def save(self, model: ACJEPA, directory) -> None:
        """config.json + model.safetensors (``wmcore.models.ac_tiny.save_pretrained``)."""
        ac_tiny.save_pretrained(model, directory)
