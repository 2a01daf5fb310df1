"""One evaluation: episodes + model -> latents -> open and closed loop -> metrics (and the energy
landscape) -> DriftReport.

This is the glue that the pytest plugin, the CLI and the bench share; a user's script can call it
directly. ``EvalConfig`` and ``Thresholds`` (``wmcore.settings``) are re-exported here because every
call of ``evaluate`` takes them, and so are the pieces of ``wmcore.drift`` (``prepare``,
``rollouts``, ``build_report``: one batch held in memory).

``evaluate`` streams. The episodes are cut into whole chunks of ``batch_size`` and each chunk is
read, encoded, rolled out and reduced to per-episode rows before the next is read; what is kept is
per-episode (rows of curves, model-step actions and states, content digests) or bounded (a float64
running sum for the mean latent, the seeded sample of frames the chance level pairs, latents of up
to ``KEEP_LATENTS_BYTES`` between the two passes). Memory is flat in the number of episodes.

Two passes, because the centred cosine needs the mean latent of every episode before any centred
value: pass 1 encodes each chunk (running sum, chance-level frames, digests, actions); pass 2 rolls
each chunk out (re-encoding those chunks whose latents were not kept) and reduces it. The energy
landscape's candidates are drawn from every episode's actions between the passes and scored per
chunk in pass 2.

Under ``torchrun`` (a process group, ``wmcore.dist``) every rank takes the chunks ``c`` with
``c % world == rank``, gathers the per-chunk results in chunk order after each pass and builds the
same report; each chunk is computed exactly as by one process, so the report equals the
one-process report (timings aside). Rank 0 alone writes (the caller's job).
"""

from __future__ import annotations

import ctypes
import time
from typing import Any, Callable, Sequence

import torch

from . import dist
from . import metrics as M
from .control.energy import candidate_energies, draw_candidates, summarise
from .drift import (
    Prepared, assemble, build_report, check_actions, check_episodes, chunk_rollouts, cut_start, data_section,
    encode_chunk, energy, loop_rows, model_step_inputs, model_steps, prepare, rollouts,
)
from .episode import Batch, Episode, EpisodeSet, episode_digests, episodes_sha256, stack, video_summary
from .errors import WMError
from .protocol import WorldModel
from .report import DriftReport
from .rollout import make_actions
from .settings import EvalConfig, Thresholds, apply_think

__all__ = [
    "KEEP_LATENTS_BYTES",
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

# Latents kept from pass 1 for pass 2 (per process), so that a small evaluation encodes once; the
# chunks beyond it are encoded again. The bound, not the number of episodes, sets the memory.
KEEP_LATENTS_BYTES = 256 * 2**20


def evaluate(
    model: WorldModel,
    episodes: Sequence[Episode] | EpisodeSet | Batch | Prepared,
    cfg: EvalConfig = EvalConfig(),
    thresholds: Thresholds = Thresholds(),
    *,
    spec: str | None = None,
    data_id: str = "episodes",
    progress: Callable[[str, int, int], None] | None = None,
) -> DriftReport:
    """Run both loops and every metric and gate; return the DriftReport (nothing is written).

    ``episodes``: a list of episodes or an ``EpisodeSet`` (``wmcore.data.open_set``): streamed a chunk
    at a time, sharded over the ranks of a process group; a ``Batch`` or ``prepare``'s result: one
    batch in memory (one process). ``progress(phase, done, total)``: called after each of this
    process's chunks (phase ``"encode"`` then ``"rollout"``). ``cfg.think``: the thinking budget
    the model spends (``settings.apply_think``: refused before any work if the model cannot)."""
    apply_think(model, cfg.think)
    if isinstance(episodes, (Batch, Prepared)):
        t0 = time.perf_counter()
        prep = episodes if isinstance(episodes, Prepared) else prepare(model, episodes, cfg)
        t1 = time.perf_counter()
        pred_open, pred_closed = rollouts(model, prep, cfg)
        t2 = time.perf_counter()
        return build_report(model, prep, pred_open, pred_closed, cfg, thresholds, spec=spec, data_id=data_id,
                            timings={"encode_s": t1 - t0, "rollout_s": t2 - t1})
    src = episodes if isinstance(episodes, EpisodeSet) else EpisodeSet.of(episodes)
    return _stream(model, src, cfg, thresholds, spec, data_id, progress or (lambda phase, done, total: None))


def _stream(model: WorldModel, src: EpisodeSet, cfg: EvalConfig, thresholds: Thresholds, spec: str | None,
            data_id: str, progress: Callable[[str, int, int], None]) -> DriftReport:
    n = len(src)
    if n == 0:
        raise WMError("no episodes to evaluate: the data set is empty")
    steps = min(src.steps)  # every episode is cut to the shortest one's length, as stack does
    if cfg.start and not 0 <= cfg.start < steps:
        raise WMError(f"start {cfg.start}: expected 0 <= start < {steps} (the episodes' recorded steps)")
    s = model_steps(model, steps - cfg.start, cfg)
    chunks = dist.chunks(n, cfg.batch_size)
    mine = dist.my_chunks(n, cfg.batch_size)
    world = dist.world()[1]
    pairs = M.chance_pairs(n, s + 1, seed=thresholds.seed)
    wanted = sorted({(int(e), int(t)) for e, t in zip(torch.cat(pairs[0::2]).tolist(), torch.cat(pairs[1::2]).tolist())})

    def read(r: range) -> Batch:
        batch = cut_start(stack(src.read(r), steps), cfg.start)
        check_actions(model, batch.actions.shape[-1])
        return batch

    # pass 1: encode every chunk; keep sums, the chance level's frames, digests, actions and states
    t0 = time.perf_counter()
    kept: dict[int, torch.Tensor] = {}
    kept_bytes, first = 0, []
    with dist.together():  # an error on any rank stops every rank here
        for i, r in enumerate(mine):
            batch = read(r)
            z = encode_chunk(model, batch.frames, s, cfg)
            actions, states = model_step_inputs(model, batch, s)
            zc = z.cpu()
            first.append({
                "sum": zc.double().sum((0, 1)), "count": zc.shape[0] * zc.shape[1],
                "frames": {(e, t): zc[e - r.start, t].clone() for e, t in wanted if e in r},
                "digests": episode_digests(batch), "actions": actions, "states": states, "videos": batch.videos,
                "fps": batch.fps, "shape": (tuple(batch.frames.shape[2:]), batch.states is not None),
            })
            if kept_bytes + z.nbytes <= KEEP_LATENTS_BYTES:
                kept[r.start], kept_bytes = z, kept_bytes + z.nbytes
            del batch, z, zc
            _release()
            progress("encode", i + 1, len(mine))
    encoded = dist.gather_ordered(first, len(chunks))
    t1 = time.perf_counter()
    _check_alike(encoded, chunks, src)
    mean = sum((c["sum"] for c in encoded[1:]), encoded[0]["sum"].clone()) / sum(c["count"] for c in encoded)
    frames = {k: v for c in encoded for k, v in c.pop("frames").items()}
    a_chance, z_chance = (torch.stack([frames[(int(e), int(t))] for e, t in zip(pairs[i], pairs[i + 1])]) for i in (0, 2))
    chance = (M.pair_cosine(a_chance, z_chance), M.pair_cosine(a_chance.double() - mean, z_chance.double() - mean))
    del frames, a_chance, z_chance
    dtype = getattr(torch, cfg.dtype)
    recorded = torch.cat([c["actions"] for c in encoded])
    actions = make_actions(cfg.action_source, recorded, cfg.seed).to(dtype)
    states = torch.cat([c["states"] for c in encoded]).to(dtype) if encoded[0]["states"] is not None else None
    draw, k_energy = None, min(cfg.energy_k, s - cfg.context + 1)
    if cfg.energy and cfg.action_source == "recorded":
        draw = draw_candidates(actions, k=k_energy, starts=cfg.energy_starts, candidates=cfg.energy_candidates,
                               scales=cfg.energy_scales, context=cfg.context, seed=cfg.seed)

    # pass 2: roll out every chunk and keep its per-episode rows (and its candidates' energies)
    second, t_roll, t_energy = [], 0.0, 0.0
    with dist.together():
        for i, r in enumerate(mine):
            z = kept.pop(r.start, None)
            if z is None:
                z = encode_chunk(model, read(r).frames, s, cfg)
            a = actions[r.start : r.stop].to(cfg.device)
            st = None if states is None else states[r.start : r.stop].to(cfg.device)
            ta = time.perf_counter()
            pred_open, pred_closed = chunk_rollouts(model, z, a, st, cfg)
            tb = time.perf_counter()
            out: dict[str, Any] = {"rows": loop_rows(z, pred_open, pred_closed, mean, cfg)}
            if draw is not None:
                out["energy"] = candidate_energies(model, z, a, st, draw.draw(r), draw, window=cfg.window,
                                                   batch_size=cfg.energy_batch, use_cache=cfg.use_cache)
            t_roll, t_energy = t_roll + tb - ta, t_energy + time.perf_counter() - tb
            second.append(out)
            del z, pred_open, pred_closed
            _release()
            progress("rollout", i + 1, len(mine))
    reduced = dist.gather_ordered(second, len(chunks))
    rows = {loop: {m: torch.cat([c["rows"][loop][m] for c in reduced]) for m in reduced[0]["rows"][loop]}
            for loop in reduced[0]["rows"]}
    landscape, timings = None, {"encode_s": t1 - t0, "rollout_s": t_roll, "processes": world}
    if draw is not None:
        note = None
        if k_energy < cfg.energy_k:
            note = (f"k clipped from {cfg.energy_k} to {k_energy}: the episodes hold {s} model steps after "
                    f"{cfg.context} context frame(s)")
        landscape = {**summarise(draw, [c["energy"] for c in reduced]).to_dict(),
                     "k_requested": cfg.energy_k, "note": note}
        timings["energy_s"] = t_energy
    timings["wall_s"] = time.perf_counter() - t0  # both passes and the gathers: what a sharded run waits
    data = data_section(data_id, episodes_sha256([d for c in encoded for d in c["digests"]]), list(src.ids), s,
                        encoded[0]["fps"], video_summary([v for c in encoded for v in (c["videos"] or [])]))
    return assemble(model, rows, cfg, thresholds, chance=chance, data=data, spec=spec, timings=timings,
                    landscape=landscape)


def _release() -> None:
    """Give the freed pages of a finished chunk back to the system (glibc's ``malloc_trim``). A chunk's
    frames are large, short-lived buffers; between them live small per-episode results, and glibc
    (whose mmap threshold rises to the size of freed buffers) then serves later chunks from a heap
    whose freed holes it keeps: resident memory grew by ~0.4 MB per episode without this. Elsewhere
    than glibc: nothing."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


def _check_alike(encoded: list[dict], chunks: list[range], src: EpisodeSet) -> None:
    """WMError unless every chunk has the same frame size and the same presence of states (``stack``
    checks it within a chunk; a streamed set is checked across chunks here)."""
    shapes = {c["shape"][0] for c in encoded}
    if len(shapes) > 1:
        raise WMError(f"episodes have different frame sizes {sorted(shapes)}; resize them to one size")
    with_states = [c["shape"][1] for c in encoded]
    if len(set(with_states)) > 1:
        without = [src.ids[r.start] for r, w in zip(chunks, with_states) if not w]
        raise WMError(f"some episodes have states and others not (e.g. the chunk of {without[0]!r} has none); "
                      "give states for every episode or for none")
