"""Training objectives: SIGReg, the prediction losses, inverse dynamics, and the two objectives built
from them (LeWM's and ac-tiny's), each a function of a model and a batch of model inputs.

The models (``wmcore.models``) hold the networks only; what they are trained to minimise is here, so a
reader finds every loss of the project in one file. All losses are scalars.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import WMError
from ..models.ac_tiny import ACJEPA
from ..models.lewm import LeWorldModel

__all__ = [
    "PREDICTION_LOSSES", "ac_tiny_loss", "inverse_dynamics", "lewm_forward", "lewm_loss", "lewm_open_loop",
    "lewm_rollout_loss", "sigreg",
]

# of prediction - target; the keys are ACTinyConfig.pred_loss's choices
PREDICTION_LOSSES: dict[str, Callable[[Tensor], Tensor]] = {
    "l1": lambda d: d.abs().mean(),
    "mse": lambda d: d.square().mean(),
}


def sigreg(z: Tensor, num_proj: int = 1024, knots: int = 17, generator: torch.Generator | None = None) -> Tensor:
    """SIGReg: how far embeddings ``z [..., N, D]`` are from an isotropic standard Gaussian -> scalar.

    Along ``num_proj`` random unit directions (shared by all leading indices), the Epps-Pulley
    statistic compares the empirical characteristic function of the N projected samples with the
    Gaussian's ``exp(-t^2/2)``, integrated over t in [-3, 3] (trapezoid on ``knots`` points of [0, 3],
    doubled by symmetry, weighted by ``exp(-t^2/2)``) and scaled by N. It is O(1) for Gaussian
    samples and grows with N for anything else. Averaged over directions and leading indices (LeWM
    passes ``[T, B, D]``: one test per time step across the batch).
    """
    if z.dim() < 2 or z.shape[-2] < 2:
        raise ValueError(f"sigreg: expected embeddings [..., N >= 2, D], found {tuple(z.shape)}")
    dev = generator.device if generator is not None else z.device
    a = torch.randn(z.shape[-1], num_proj, generator=generator, device=dev, dtype=torch.float32).to(z)
    a = a / a.norm(dim=0, keepdim=True)
    t = torch.linspace(0, 3, knots, device=z.device, dtype=z.dtype)
    dt = 3 / (knots - 1)
    w = torch.full((knots,), 2 * dt, device=z.device, dtype=z.dtype)
    w[0] = w[-1] = dt
    phi = torch.exp(-t.square() / 2)
    xt = (z @ a).unsqueeze(-1) * t  # [..., N, P, K]
    err = (xt.cos().mean(-3) - phi).square() + xt.sin().mean(-3).square()  # [..., P, K]
    return ((err @ (w * phi)) * z.shape[-2]).mean()


def inverse_dynamics(head: nn.Module, emb: Tensor, actions: Tensor) -> Tensor:
    """MSE of the action blocks that ``head`` guesses from the mean tokens of consecutive frames.

    emb ``[B, T, N, D]`` (layer-normed latents), actions ``[B, T-1 or more, A]`` (block t leads from
    frame t to t+1); ``head`` maps ``[..., 2 D]`` to ``[..., A]``.
    """
    m = emb.mean(2)  # [B, T, D]
    guess = head(torch.cat([m[:, :-1], m[:, 1:]], -1))  # [B, T-1, A]
    return (guess - actions[:, : emb.shape[1] - 1]).square().mean()


# --------------------------------------------------------------------------------------------------
# LeWM


def lewm_forward(model: LeWorldModel, pixels: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """The training forward: pixels ``[B, T, 3, H, W]`` (``preprocess``ed), action blocks ``[B, T-1 or T, A]``
    -> embeddings ``[B, T, D]`` and teacher-forced predictions ``[B, T-1, D]`` (slot t predicts frame t+1)."""
    t = pixels.shape[1]
    if t < 2:
        raise ValueError(f"pixels: need at least 2 frames [B, T >= 2, 3, H, W], found {tuple(pixels.shape)}")
    if actions.dim() != 3 or actions.shape[1] not in (t - 1, t):
        raise ValueError(
            f"actions: expected [B, T-1 or T, A] for T={t} frames (the last block is unused), "
            f"found {tuple(actions.shape)}"
        )
    emb = model.embed(pixels)
    return emb, model.predict_next(emb[:, :-1], actions[:, : t - 1])


def lewm_loss(model: LeWorldModel, pixels: Tensor, actions: Tensor,
              generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """LeWM's objective on pixels ``[B, T, 3, H, W]`` and action blocks ``[B, T, A]`` (or T-1).

    pred: MSE of the predicted against the encoded next embeddings (gradient through both);
    sigreg: SIGReg of the embeddings, one test per time step across the batch;
    total: pred + sigreg_lambda * sigreg (+ rollout_weight * rollout, the multi-step term
    ``lewm_rollout_loss``, when the config's rollout_weight is above 0). All scalars.
    """
    cfg = model.cfg
    emb, pred = lewm_forward(model, pixels, actions)
    pred_loss = (pred - emb[:, 1:]).square().mean()
    sig = sigreg(emb.transpose(0, 1), cfg.sigreg_num_proj, cfg.sigreg_knots, generator)
    out = {"total": pred_loss + cfg.sigreg_lambda * sig, "pred": pred_loss, "sigreg": sig}
    if cfg.rollout_weight > 0:
        out["rollout"] = lewm_rollout_loss(model, emb, actions)
        out["total"] = out["total"] + cfg.rollout_weight * out["rollout"]
    return out


def lewm_open_loop(model: LeWorldModel, emb: Tensor, actions: Tensor) -> Tensor:
    """Open loop from the first embedding of ``emb [B, T, D]``: predictions ``[B, T-1, D]`` of frames
    1..T-1, each from the previous predictions (at most ``history`` of them, as the harness rolls out)
    and the action blocks ``actions [B, T-1 or T, A]`` - never from a later real embedding."""
    h = model.cfg.history
    seq = emb[:, :1]
    for t in range(1, emb.shape[1]):
        start = max(0, t - h)
        nxt = model.predict_next(seq[:, start:t], actions[:, start:t])[:, -1:]
        seq = torch.cat([seq, nxt], 1)
    return seq[:, 1:]


def lewm_rollout_loss(model: LeWorldModel, emb: Tensor, actions: Tensor) -> Tensor:
    """The multi-step term (V-JEPA 2-AC's rollout loss): MSE of the open loop from frame 0 against the
    encoded frames 1..T-1, the targets detached (the term shapes the predictor, and the encoder only
    through the context frame it starts from). The planner rolls out exactly this way."""
    return (lewm_open_loop(model, emb, actions) - emb[:, 1:].detach()).square().mean()


# --------------------------------------------------------------------------------------------------
# ac-tiny


def ac_tiny_loss(model: ACJEPA, pixels: Tensor, actions: Tensor, states: Tensor,
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """ac-tiny's objective on pixels ``[B, T, 3, S, S]`` (``ac_preprocess``ed) and the predictor's
    normalised action and state inputs ``[B, T, action_dim]`` (the last of the T is unused).

    pred: teacher-forced ``pred_loss`` (L1 or MSE) of the predictions against the next frames'
    latents; sigreg: SIGReg of the raw tokens, one test per time step on ``sigreg_tokens`` tokens drawn
    from all samples and patch positions (LeWM tests its CLS embedding per time step across the
    batch); inverse: with ``inverse_dynamics``, the MSE of the action blocks predicted from the mean
    tokens of consecutive frames; total: pred + sigreg_lambda * sigreg + inverse_dynamics * inverse
    (pred alone with ``freeze_encoder``). Diagnostics (no gradient): cos, the predictions' mean token
    cosine; skill, 1 - MSE(pred) / MSE(copy the previous frame).

    ``wmcore.models.ac_tiny``'s docstring says what each variant did on PushT.
    """
    cfg = model.cfg
    t = pixels.shape[1]
    if t < 2:
        raise WMError(f"pixels: need at least 2 frames [B, T >= 2, 3, S, S], found {tuple(pixels.shape)}")
    with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.freeze_encoder):
        raw = model.encode_raw(pixels)
    emb = model.norm(raw)
    pred = model.predict_next(emb[:, :-1], actions[:, : t - 1], states[:, : t - 1])
    target = emb[:, 1:]
    lp = PREDICTION_LOSSES[cfg.pred_loss](pred - target)
    # one SIGReg test per time step on tokens drawn from all of the batch's frames and positions
    pool = raw.transpose(0, 1).flatten(1, 2)  # [T, B*N, D]
    pick = torch.randperm(pool.shape[1], generator=generator)[: cfg.sigreg_tokens].to(pool.device)
    sig = sigreg(pool[:, pick], cfg.sigreg_num_proj, cfg.sigreg_knots, generator)
    out = {"pred": lp, "sigreg": sig}
    total = lp if cfg.freeze_encoder else lp + cfg.sigreg_lambda * sig  # sig: a diagnostic then
    if cfg.inverse_dynamics:
        out["inverse"] = inverse_dynamics(model.inverse, emb, actions)
        total = total + cfg.inverse_dynamics * out["inverse"]
    with torch.no_grad():
        cos = F.cosine_similarity(pred, target, dim=-1).mean()
        copy = (emb[:, :-1] - target).square().mean()
        skill = 1 - (pred - target).square().mean() / copy.clamp_min(1e-12)
    return {"total": total, **out, "cos": cos, "skill": skill}
