"""The pieces of one evaluation, on a chunk of episodes or a batch held in memory: prepare (cut,
encode, block the actions), the two loops, per-episode rows, the energy landscape, and the assembly
of rows into a DriftReport (loop statistics, chance level, gates).

``wmcore.evaluate`` puts them together: streaming a chunk at a time (``evaluate``), or on a whole
batch (``prepare`` -> ``rollouts`` -> ``build_report``, which the bench times). Both give the
same report.
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
from .episode import Batch, Episode, EpisodeSet, episode_digests, episodes_sha256, stack, video_summary
from .errors import WMError
from .protocol import WorldModel
from .report import DriftReport, environment
from .rollout import block_actions, closed_loop, make_actions, open_loop, subsample
from .settings import EvalConfig, Thresholds, apply_think

__all__ = [
    "Prepared",
    "assemble",
    "build_report",
    "check_actions",
    "check_episodes",
    "chunk_rollouts",
    "cut_start",
    "data_section",
    "encode_chunk",
    "energy",
    "loop_rows",
    "model_step_inputs",
    "model_steps",
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
    batch = cut_start(episodes if isinstance(episodes, Batch) else stack(episodes), cfg.start)
    check_actions(model, batch.actions.shape[-1])
    s = model_steps(model, batch.actions.shape[1], cfg)
    latents = torch.cat([encode_chunk(model, batch.frames[i : i + cfg.batch_size], s, cfg)
                         for i in range(0, batch.frames.shape[0], cfg.batch_size)])
    actions, states = model_step_inputs(model, batch, s)
    dtype = getattr(torch, cfg.dtype)
    return Prepared(
        latents=latents,
        actions=make_actions(cfg.action_source, actions, cfg.seed).to(cfg.device, dtype),
        states=states.to(cfg.device, dtype) if states is not None else None,
        ids=batch.ids,
        data_sha256=episodes_sha256(episode_digests(batch)),
        fps=batch.fps,
        video=video_summary(batch.videos),
    )


def cut_start(batch: Batch, start: int) -> Batch:
    """The batch without its first ``start`` recorded steps (``EvalConfig.start``)."""
    if not start:
        return batch
    if start < 0 or start >= batch.actions.shape[1]:
        raise WMError(f"start {start}: expected 0 <= start < {batch.actions.shape[1]} (the episodes' recorded steps)")
    return dataclasses.replace(
        batch, frames=batch.frames[:, start:], actions=batch.actions[:, start:],
        states=None if batch.states is None else batch.states[:, start:],
    )


def model_steps(model: WorldModel, recorded: int, cfg: EvalConfig) -> int:
    """Model steps S in episodes of ``recorded`` steps (after the start), checked to hold the context
    and the horizon."""
    k = model.frameskip
    s = recorded // k
    need = cfg.context + cfg.horizon
    if s + 1 < need:
        raise WMError(
            f"episodes have {recorded} recorded steps = {s} model steps at frameskip {k}; "
            f"horizon {cfg.horizon} after {cfg.context} context frame(s) needs {need - 1} model steps. "
            f"Use a horizon <= {s + 1 - cfg.context} (pytest --wm-horizon, wmcore evaluate --horizon) or longer episodes"
            + (f" (or a smaller start than {cfg.start})" if cfg.start else "")
        )
    return s


def encode_chunk(model: WorldModel, frames: Tensor, s: int, cfg: EvalConfig) -> Tensor:
    """Latents ``[b, S+1, N, D]`` (on the device, in the dtype) of recorded frames ``[b, T+1, H, W, 3]``
    at the model's steps; WMError if the encoder returns NaN or inf."""
    with torch.inference_mode():
        z = model.encode(subsample(frames, model.frameskip)[:, : s + 1].to(cfg.device)).to(getattr(torch, cfg.dtype))
    if not torch.isfinite(z).all():
        raise WMError(f"model {model.name!r}: the encoder produced NaN or inf latents for this data")
    # an encoder that returns a view (the CLS token of all its hidden states) would keep every token
    # alive as long as the latents are kept: own a compact copy instead
    return z.clone() if z.untyped_storage().nbytes() > z.nbytes else z


def model_step_inputs(model: WorldModel, batch: Batch, s: int) -> tuple[Tensor, Tensor | None]:
    """Recorded actions in model-step blocks ``[b, S, A]`` and states at model steps ``[b, S+1, St]``
    (or None), on the CPU."""
    k = model.frameskip
    actions = block_actions(batch.actions, k)[:, :s]
    states = subsample(batch.states, k)[:, : s + 1] if batch.states is not None else None
    return actions, states


def rollouts(model: WorldModel, prep: Prepared, cfg: EvalConfig) -> tuple[Tensor, Tensor]:
    """Open- and closed-loop predictions, each ``[B, H, N, D]`` for frames C..C+H-1."""
    bs = cfg.batch_size
    outs = [chunk_rollouts(model, prep.latents[i : i + bs], prep.actions[i : i + bs],
                           None if prep.states is None else prep.states[i : i + bs], cfg)
            for i in range(0, prep.latents.shape[0], bs)]
    return torch.cat([o for o, _ in outs]), torch.cat([c for _, c in outs])


def chunk_rollouts(model: WorldModel, z: Tensor, a: Tensor, st: Tensor | None, cfg: EvalConfig) -> tuple[Tensor, Tensor]:
    """Open and closed loop of one chunk of episodes: latents ``[b, S+1, N, D]``, actions ``[b, S, A]``,
    states ``[b, S+1, St]`` or None -> two ``[b, H, N, D]``."""
    c, h = cfg.context, cfg.horizon
    apply_think(model, cfg.think)  # the budget every prediction of this run spends
    # open loop gets states only when the model can propagate them
    st_open = st if st is not None and hasattr(model, "propagate_state") else None
    with torch.inference_mode():
        return (open_loop(model, z[:, :c], a, h, window=cfg.window, states=st_open, use_cache=cfg.use_cache),
                closed_loop(model, z, a, h, context=c, window=cfg.window, states=st, use_cache=cfg.use_cache))


def loop_rows(z: Tensor, pred_open: Tensor, pred_closed: Tensor, mean: Tensor, cfg: EvalConfig) -> dict[str, dict[str, Tensor]]:
    """Per-episode rows (``metrics.loop_rows``, float64 ``[b, H]`` on the CPU) of the two loops and the
    two persistence baselines, for latents ``z [b, S+1, N, D]`` and predictions ``[b, H, N, D]``."""
    c, h = cfg.context, cfg.horizon
    # metrics on the CPU whatever device the model ran on: small tensors, one numerics for every run
    z = z.cpu()
    target = z[:, c : c + h]
    preds = {"open_loop": pred_open.cpu(), "closed_loop": pred_closed.cpu(), "copy_last": M.copy_last(z, h, c),
             "copy_first": M.copy_first(z, h, c)}
    return {name: M.loop_rows(p, target, mean) for name, p in preds.items()}


def energy(model: WorldModel, prep: Prepared, cfg: EvalConfig) -> dict | None:
    """The energy landscape of ``model`` on the prepared episodes (``control.energy``), as the report's
    ``energy`` section; None when ``cfg.energy`` is off or the actions are not the recorded ones (the
    landscape ranks the recorded actions: a zeros/random report would repeat the recorded one's).

    ``cfg.energy_k`` is clipped to the longest goal offset the episodes hold after the context (a
    short clip still gets a landscape); ``k_requested`` and ``note`` say so."""
    if not cfg.energy or cfg.action_source != "recorded":
        return None
    apply_think(model, cfg.think)
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
    timings = dict(timings or {})
    t0 = time.perf_counter()
    landscape = energy(model, prep, cfg)
    if landscape is not None:
        timings["energy_s"] = time.perf_counter() - t0
    z = prep.latents.cpu()
    mean = M.latent_mean(z)
    return assemble(
        model, loop_rows(z, pred_open, pred_closed, mean, cfg), cfg, thresholds,
        chance=(M.chance_level(z, seed=thresholds.seed), M.chance_level(z.double() - mean, seed=thresholds.seed)),
        data=data_section(data_id, prep.data_sha256, prep.ids, int(prep.actions.shape[1]), prep.fps, prep.video),
        spec=spec, timings=timings, landscape=landscape,
    )


def data_section(data_id: str, sha256: str, ids: list[str], model_steps: int, fps: float, video: dict | None) -> dict:
    """A report's ``data``: what identifies the episodes (``sha256``: ``episode.episodes_sha256``)."""
    data = {"id": data_id, "sha256": sha256, "sha256_of": "episodes", "episodes": len(ids), "episode_ids": ids,
            "model_steps": model_steps, "fps": fps}
    if video is not None:  # which reader decoded the frames, and their codec
        data["video"] = video
    return data


def assemble(
    model: WorldModel,
    rows: dict[str, dict[str, Tensor]],
    cfg: EvalConfig,
    thresholds: Thresholds,
    *,
    chance: tuple[float, float],
    data: dict,
    spec: str | None,
    timings: dict,
    landscape: dict | None,
) -> DriftReport:
    """The DriftReport from the per-episode rows of every episode (``loop_rows``, concatenated in
    episode order), the chance levels (plain, centred) and the data section: loop statistics and gates."""
    t = thresholds
    common = dict(threshold=t.threshold, n_boot=t.bootstrap, seed=t.seed)
    mse = {k: v["mse"] for k, v in rows.items()}
    loops = {
        "open_loop": M.loop_stats_from_rows(rows["open_loop"], {"copy_first": mse["copy_first"], "copy_last": mse["copy_last"]}, **common),
        "closed_loop": M.loop_stats_from_rows(rows["closed_loop"], {"copy_last": mse["copy_last"]}, **common),
        "copy_last": M.loop_stats_from_rows(rows["copy_last"], **common),
        "copy_first": M.loop_stats_from_rows(rows["copy_first"], **common),
    }
    cl, op = loops["closed_loop"], loops["open_loop"]
    h = cfg.horizon
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
    return DriftReport(
        model={
            "name": model.name,
            "spec": spec or model.name,
            "fingerprint": model.fingerprint(),
            "frameskip": model.frameskip,
            "action_dim": model.action_dim,
            "tokens_per_frame": model.tokens_per_frame,
            "max_context": model.max_context,
        },
        data=data,
        config=cfg.to_dict(),
        thresholds=thresholds.to_dict(),
        loops=loops,
        chance_level=chance[0],
        chance_level_centred=chance[1],
        gates=gates,
        environment=environment(cfg.device, cfg.dtype),
        timings=timings,
        energy=landscape,
    )
