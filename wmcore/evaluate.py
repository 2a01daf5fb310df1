"""One evaluation: episodes + model -> latents -> open and closed loop -> metrics (and the energy
landscape) -> DriftReport.

This is the glue that the pytest plugin, the CLI and the bench share; a user's script can call it
directly. ``EvalConfig`` and ``Thresholds`` (``wmcore.settings``) are re-exported here because every
call of ``evaluate`` takes them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from . import gates as G
from . import metrics as M
from .control.energy import energy_landscape
from .episode import Batch, Episode, content_sha256, stack, video_summary
from .errors import WMError
from .protocol import WorldModel
from .report import DriftReport, environment
from .rollout import block_actions, closed_loop, make_actions, open_loop, subsample
from .settings import EvalConfig, Thresholds

__all__ = [
    "EvalConfig",
    "Prepared",
    "Thresholds",
    "build_report",
    "check_actions",
    "check_episodes",
    "energy",
    "evaluate",
    "prepare",
    "rollouts",
]


def check_actions(model: WorldModel, width: int) -> None:
    """WMError unless recorded actions ``width`` wide make the model's action: one model step is
    ``frameskip`` recorded actions, concatenated, so ``width * frameskip`` must be ``action_dim``."""
    if width * model.frameskip != model.action_dim:
        raise WMError(
            f"the episodes' actions are {width} wide; model {model.name!r} takes {model.action_dim // model.frameskip}-wide "
            f"recorded actions (action_dim {model.action_dim} = {model.frameskip} recorded steps x "
            f"{model.action_dim // model.frameskip}); use data recorded for this model, or a model trained on this data"
        )


def check_episodes(model: WorldModel, episodes: Sequence[Episode]) -> None:
    """``check_actions`` for every distinct action width among ``episodes``."""
    for width in sorted({e.actions.shape[-1] for e in episodes}):
        check_actions(model, width)


@dataclass(frozen=True)
class Prepared:
    """Episodes seen at the model's step: latents ``[B, S+1, N, D]``, actions ``[B, S, A]`` (from the
    chosen source), states ``[B, S+1, St]`` or None, and what identifies the data; video: how the
    frames were decoded (``wmcore.data.video_summary``; None for frames that were no video file)."""

    latents: Tensor
    actions: Tensor
    states: Tensor | None
    ids: list[str]
    data_sha256: str
    fps: float
    video: dict | None = None


def prepare(model: WorldModel, episodes: Sequence[Episode] | Batch, cfg: EvalConfig) -> Prepared:
    """Subsample frames by the model's frameskip, block the actions, encode, pick the action source.

    ``episodes``: frames uint8 ``[B, T+1, H, W, 3]`` and recorded actions ``[B, T, a]`` (and states);
    the result holds latents ``[B, S+1, N, D]`` and model-step actions ``[B, S, a * frameskip]``, S
    model steps after ``cfg.start`` recorded steps are skipped."""
    batch = episodes if isinstance(episodes, Batch) else stack(episodes)
    if cfg.start:
        if cfg.start < 0 or cfg.start >= batch.actions.shape[1]:
            raise WMError(f"start {cfg.start}: expected 0 <= start < {batch.actions.shape[1]} (the episodes' recorded steps)")
        s0 = cfg.start
        batch = dataclasses.replace(
            batch, frames=batch.frames[:, s0:], actions=batch.actions[:, s0:],
            states=None if batch.states is None else batch.states[:, s0:],
        )
    check_actions(model, batch.actions.shape[-1])
    k = model.frameskip
    actions = block_actions(batch.actions, k)
    s = actions.shape[1]
    need = cfg.context + cfg.horizon
    if s + 1 < need:
        raise WMError(
            f"episodes have {batch.actions.shape[1]} recorded steps = {s} model steps at frameskip {k}; "
            f"horizon {cfg.horizon} after {cfg.context} context frame(s) needs {need - 1} model steps. "
            f"Use a horizon <= {s + 1 - cfg.context} (pytest --wm-horizon, wmcore evaluate --horizon) or longer episodes"
            + (f" (or a smaller start than {cfg.start})" if cfg.start else "")
        )
    frames = subsample(batch.frames, k)[:, : s + 1]
    states = subsample(batch.states, k)[:, : s + 1] if batch.states is not None else None
    dtype = getattr(torch, cfg.dtype)
    with torch.inference_mode():
        chunks = [
            model.encode(frames[i : i + cfg.batch_size].to(cfg.device)).to(dtype)
            for i in range(0, frames.shape[0], cfg.batch_size)
        ]
    latents = torch.cat(chunks)
    if not torch.isfinite(latents).all():
        raise WMError(f"model {model.name!r}: the encoder produced NaN or inf latents for this data")
    return Prepared(
        latents=latents,
        actions=make_actions(cfg.action_source, actions, cfg.seed).to(cfg.device, dtype),
        states=states.to(cfg.device, dtype) if states is not None else None,
        ids=batch.ids,
        data_sha256=content_sha256(batch.frames, batch.actions, batch.states),
        fps=batch.fps,
        video=video_summary(batch.videos),
    )


def rollouts(model: WorldModel, prep: Prepared, cfg: EvalConfig) -> tuple[Tensor, Tensor]:
    """Open- and closed-loop predictions, each ``[B, H, N, D]`` for frames C..C+H-1."""
    c, h, bs = cfg.context, cfg.horizon, cfg.batch_size
    opened, closed = [], []
    with torch.inference_mode():
        for i in range(0, prep.latents.shape[0], bs):
            z, a = prep.latents[i : i + bs], prep.actions[i : i + bs]
            st = prep.states[i : i + bs] if prep.states is not None else None
            # open loop gets states only when the model can propagate them
            st_open = st if st is not None and hasattr(model, "propagate_state") else None
            opened.append(open_loop(model, z[:, :c], a, h, window=cfg.window, states=st_open, use_cache=cfg.use_cache))
            closed.append(closed_loop(model, z, a, h, context=c, window=cfg.window, states=st, use_cache=cfg.use_cache))
    return torch.cat(opened), torch.cat(closed)


def energy(model: WorldModel, prep: Prepared, cfg: EvalConfig) -> dict | None:
    """The energy landscape of ``model`` on the prepared episodes (``control.energy``), as the report's
    ``energy`` section; None when ``cfg.energy`` is off or the actions are not the recorded ones (the
    landscape ranks the recorded actions: a zeros/random report would repeat the recorded one's).

    ``cfg.energy_k`` is clipped to the longest goal offset the episodes hold after the context (a
    short clip still gets a landscape); ``k_requested`` and ``note`` say so."""
    if not cfg.energy or cfg.action_source != "recorded":
        return None
    steps = int(prep.actions.shape[1])
    k = min(cfg.energy_k, steps - cfg.context + 1)  # >= horizon >= 1: prepare checked the episodes hold it
    land = energy_landscape(
        model, prep.latents, prep.actions, states=prep.states, k=k, starts=cfg.energy_starts,
        candidates=cfg.energy_candidates, scales=cfg.energy_scales, context=cfg.context, window=cfg.window,
        seed=cfg.seed, batch_size=cfg.energy_batch, use_cache=cfg.use_cache,
    )
    note = None
    if k < cfg.energy_k:
        note = (f"k clipped from {cfg.energy_k} to {k}: the episodes hold {steps} model steps after "
                f"{cfg.context} context frame(s)")
    return {**land.to_dict(), "k_requested": cfg.energy_k, "note": note}


def evaluate(
    model: WorldModel,
    episodes: Sequence[Episode] | Batch | Prepared,
    cfg: EvalConfig = EvalConfig(),
    thresholds: Thresholds = Thresholds(),
    *,
    spec: str | None = None,
    data_id: str = "episodes",
) -> DriftReport:
    """Run both loops and every metric and gate; return the DriftReport (nothing is written).

    ``episodes``: as for ``prepare``, or its result (latents already encoded)."""
    t0 = time.perf_counter()
    prep = episodes if isinstance(episodes, Prepared) else prepare(model, episodes, cfg)
    t1 = time.perf_counter()
    pred_open, pred_closed = rollouts(model, prep, cfg)
    t2 = time.perf_counter()
    return build_report(
        model, prep, pred_open, pred_closed, cfg, thresholds, spec=spec, data_id=data_id,
        timings={"encode_s": t1 - t0, "rollout_s": t2 - t1},
    )


def build_report(
    model: WorldModel,
    prep: Prepared,
    pred_open: Tensor,
    pred_closed: Tensor,
    cfg: EvalConfig,
    thresholds: Thresholds,
    *,
    spec: str | None = None,
    data_id: str = "episodes",
    timings: dict | None = None,
) -> DriftReport:
    """Metrics, baselines, chance level and gates from finished rollouts ``[B, H, N, D]``, and the energy
    landscape (``energy``; its time is ``timings["energy_s"]``)."""
    c, h = cfg.context, cfg.horizon
    timings = dict(timings or {})
    t0 = time.perf_counter()
    landscape = energy(model, prep, cfg)
    if landscape is not None:
        timings["energy_s"] = time.perf_counter() - t0
    # metrics on the CPU whatever device the model ran on: small tensors, one numerics for every run
    z, pred_open, pred_closed = prep.latents.cpu(), pred_open.cpu(), pred_closed.cpu()
    target = z[:, c : c + h]
    last, first = M.copy_last(z, h, c), M.copy_first(z, h, c)
    mean = M.latent_mean(z)
    common = dict(mean=mean, threshold=thresholds.threshold, n_boot=thresholds.bootstrap, seed=thresholds.seed)
    loops = {
        "open_loop": M.loop_stats(pred_open, target, baselines={"copy_first": first, "copy_last": last}, **common),
        "closed_loop": M.loop_stats(pred_closed, target, baselines={"copy_last": last}, **common),
        "copy_last": M.loop_stats(last, target, **common),
        "copy_first": M.loop_stats(first, target, **common),
    }
    cl, op = loops["closed_loop"], loops["open_loop"]
    t = thresholds
    # the gates resample the per-episode curves the report keeps (rows in episode order), so a reader
    # can recompute every CI from the JSON alone
    ep = {k: v.per_episode for k, v in loops.items()}
    boot = dict(rule=t.gate_rule, n_resamples=t.bootstrap, seed=t.seed)
    gates = [
        G.gate_step1(cl.cosine, t.step1_min, per_episode=ep["closed_loop"]["cosine"], **boot),
        G.gate_monotone(op.cosine, t.monotone_tol, per_episode=ep["open_loop"]["cosine"], **boot),
        G.gate_closed_ge_open(cl.cosine, op.cosine, t.closed_open_tol, closed_episodes=ep["closed_loop"]["cosine"],
                              open_episodes=ep["open_loop"]["cosine"], **boot),
        G.gate_skill(cl.skill["copy_last"], t.skill_min, errors=(ep["closed_loop"]["mse"], ep["copy_last"]["mse"]), **boot),
    ]
    if t.skill_mean_min is not None:
        gates.append(G.gate_mean_skill(cl.skill["copy_last"], t.skill_steps, t.skill_mean_min, "copy_last", "closed loop",
                                       errors=(ep["closed_loop"]["mse"], ep["copy_last"]["mse"]), **boot))
    if t.open_skill_mean_min is not None:
        gates.append(G.gate_mean_skill(op.skill["copy_first"], t.skill_steps, t.open_skill_mean_min, "copy_first", "open loop",
                                       errors=(ep["open_loop"]["mse"], ep["copy_first"]["mse"]), **boot))
    if t.horizon_min is not None:
        gates.append(G.gate_horizon(op.drift_horizon, t.horizon_min, h, t.threshold))
    fp = model.fingerprint()
    data = {
        "id": data_id,
        "sha256": prep.data_sha256,
        "episodes": len(prep.ids),
        "episode_ids": prep.ids,
        "model_steps": int(prep.actions.shape[1]),
        "fps": prep.fps,
    }
    if prep.video is not None:  # which reader decoded the frames, and their codec
        data["video"] = prep.video
    return DriftReport(
        model={
            "name": model.name,
            "spec": spec or model.name,
            "fingerprint": fp,
            "frameskip": model.frameskip,
            "action_dim": model.action_dim,
            "tokens_per_frame": model.tokens_per_frame,
            "max_context": model.max_context,
        },
        data=data,
        config=cfg.to_dict(),
        thresholds=thresholds.to_dict(),
        loops=loops,
        chance_level=M.chance_level(z, seed=thresholds.seed),
        chance_level_centred=M.chance_level(z.double() - mean, seed=thresholds.seed),
        gates=gates,
        environment=environment(cfg.device, cfg.dtype),
        timings=timings,
        energy=landscape,
    )
