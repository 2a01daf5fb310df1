"""The LeWM recipe (``--arch lewm``, the embedded pusht-lewm): LeWorldModel from pixels and actions,
MSE + SIGReg (``losses.lewm_loss``), BatchNorm statistics recalibrated before saving.

Pixels go through ``wmcore.models.lewm.preprocess``, the same function evaluation uses, and actions
through ``normalise_actions``, the same z-scoring ``LeWMWorldModel.predict`` applies.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from ..errors import WMError
from ..models.lewm import LeWMConfig, LeWorldModel, normalise_actions, preprocess, save_pretrained
from .losses import lewm_forward, lewm_loss, lewm_rollout_loss

__all__ = ["LeWMRecipe", "recalibrate_bn"]

CALIBRATION_BATCHES = 50  # batches of training windows whose average BatchNorm statistics are saved


class LeWMRecipe:
    """LeWorldModel's training recipe (the ``Recipe`` interface of ``wmcore.train.loop``)."""

    arch = "lewm"
    config = LeWMConfig
    help = "LeWorldModel (pusht-lewm)"

    def states(self, episodes, steps: int, cfg: LeWMConfig, source: str) -> None:
        """LeWM reads pixels and actions only."""
        return None

    def build(self, cfg: LeWMConfig, encoder_from: str = "") -> LeWorldModel:
        """A freshly initialised LeWorldModel (LeWM has no staged training: no ``encoder_from``)."""
        if encoder_from:
            raise WMError("--encoder-from: only --arch ac-tiny starts from another model's encoder")
        return LeWorldModel(cfg)

    def inputs(self, cfg: LeWMConfig, frames: Tensor, actions: Tensor, states: Tensor | None, device: torch.device,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Windows as recorded -> the model's inputs on ``device``: frames uint8 ``[B, W, H, W', 3]`` ->
        pixels ``[B, W, 3, S, S]``; action blocks ``[B, W, k*A]`` -> normalised. No randomness here."""
        return preprocess(frames.to(device), cfg), normalise_actions(actions, cfg).to(device)

    def loss(self, model: LeWorldModel, inputs: tuple[Tensor, Tensor],
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``losses.lewm_loss`` of (pixels ``[B, W, 3, S, S]``, actions ``[B, W, A]``): total, pred, sigreg."""
        return lewm_loss(model, *inputs, generator=generator)

    def validate(self, model: LeWorldModel, batches: list[tuple[Tensor, Tensor]]) -> dict[str, float]:
        """Mean held-out loss terms, teacher-forced next-embedding cosine and open-loop MSE (``val_rollout``)
        over ``batches`` of inputs."""
        pred = sig = cos = roll = 0.0
        for pix, act in batches:
            losses = lewm_loss(model, pix, act)
            emb = model.embed(pix)
            nxt = model.predict_next(emb, act)
            cos += float(torch.nn.functional.cosine_similarity(nxt[:, :-1], emb[:, 1:], dim=-1).mean())
            pred += float(losses["pred"])
            sig += float(losses["sigreg"])
            roll += float(lewm_rollout_loss(model, emb, act))
        n = len(batches)
        # val_rollout: open-loop MSE over the window from its first frame, whether or not it is trained on
        return {"val_pred": pred / n, "val_sigreg": sig / n, "val_cos": cos / n, "val_rollout": roll / n}

    def finish(self, model: LeWorldModel, sample: Callable[[], tuple[Tensor, Tensor]]) -> None:
        """Recalibrate the BatchNorm statistics on ``CALIBRATION_BATCHES`` batches of training inputs
        (``sample()``: a fresh one each call): the running averages lag the weights and would bias
        evaluation."""
        recalibrate_bn(model, (sample() for _ in range(CALIBRATION_BATCHES)))

    def save(self, model: LeWorldModel, directory) -> None:
        """config.json + model.safetensors (``wmcore.models.lewm.save_pretrained``)."""
        save_pretrained(model, directory)


@torch.no_grad()
def recalibrate_bn(model: LeWorldModel, batches: Iterable[Tensor | tuple[Tensor, Tensor]]) -> list[str]:
    """Re-estimate every BatchNorm's running statistics from ``batches``; returns the names redone.

    Running averages trail the weights they were collected under, so after training they can be
    far from what the final weights produce; evaluation must not use them. Each batch is pixels
    ``[B, T, 3, H, W]`` (reaches the projector's BatchNorm only) or ``(pixels, actions [B, T, A])``
    (reaches pred_proj's too, through the training forward). The statistics are reset and become the
    plain average over the batches (momentum None), collected with everything else in eval mode
    (no dropout) and without gradients. A BatchNorm that no batch reached keeps its old statistics.
    """
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    saved = {n: ({k: v.clone() for k, v in m.state_dict().items()}, m.momentum) for n, m in bns.items()}
    reached: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: reached.add(n)) for n, m in bns.items()]
    was_training = model.training
    model.eval()
    for m in bns.values():
        m.reset_running_stats()
        m.momentum = None
        m.train()
    count = 0
    try:
        for item in batches:
            if isinstance(item, (tuple, list)):
                lewm_forward(model, *item)
            else:
                model.embed(item)
            count += 1
    finally:
        for hk in hooks:
            hk.remove()
        for n, m in bns.items():
            state, momentum = saved[n]
            m.momentum = momentum
            if n not in reached or not count:
                m.load_state_dict(state)
        model.train(was_training)
    if not count:
        raise ValueError("recalibrate_bn: no batches given; BatchNorm statistics left as they were")
    return sorted(reached)
