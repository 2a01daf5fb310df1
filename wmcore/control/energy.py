"""The offline energy landscape: does the model's latent goal energy prefer the actions that really
led to the goal? No simulator: any recorded episodes with actions will do (how V-JEPA 2-AC is judged
on robot data).

For a start frame t and the goal frame t + k (k model steps later), the energy of a candidate
sequence of k model-step actions ``a`` is

    E(a) = mean over tokens and dims of (open_loop(z_t, a)[k] - z_{t+k})^2,

the squared latent distance between the imagined frame after k steps and the real latent of the goal,
the cost a latent planner minimises. Candidates per (episode, start):

- the recorded actions (what really led to the goal);
- per scale s: ``candidates`` perturbations, recorded + s * std * Gaussian noise (std: the recorded
  actions' per-dimension std over the whole batch), so the curve shows how sharp the minimum is;
- ``candidates`` "random" sequences: recorded blocks of other episodes, or of other, non-overlapping
  times of the same one (none equal to the recorded block): real actions that did not lead to this goal.

The rank of the recorded sequence in a group is the fraction of the group's candidates with lower
energy, a tie counting half (0: recorded always best; 0.5: chance, e.g. a model that ignores its
actions). Per group: the mean rank over (episode, start); its 95% t interval over the per-episode mean
ranks (``stats.mean_ci``, clipped to [0, 1]: starts of one episode are not independent, episodes are);
the mean energy and its ratio to the recorded sequence's mean energy; per-episode values are kept.

The noise and the choice of unrelated blocks are seeded per episode (by ``seed`` and the episode's
index): an episode's candidates do not depend on how the episodes are chunked or shared out over
processes, and a streaming evaluation draws them a chunk at a time.

Pure: a model and tensors in, a frozen ``EnergyLandscape`` out.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import WMError
from ..protocol import StatePropagator, WorldModel
from ..rollout import open_loop
from ..stats import mean_ci

__all__ = ["RANDOM", "TIE_RTOL", "Candidates", "EnergyLandscape", "EnergyRow", "candidate_energies", "draw_candidates",
           "energy_landscape", "scale_name", "start_points", "summarise"]

RANDOM = "random"  # the name of the group of real but unrelated action sequences
# Two energies within this relative difference tie: float32 predictions of candidates that the model
# treats alike can differ in the last bits, and such a difference must not decide a rank.
TIE_RTOL = 1e-6


@dataclass(frozen=True)
class EnergyRow:
    """One candidate group: a perturbation scale (``scale`` in units of the recorded actions' std) or
    the random group (``scale`` None). ``rank``: mean rank of the recorded sequence, ``rank_lo`` /
    ``rank_hi`` its 95% CI over episodes; ``energy``: the candidates' mean energy, ``energy_ratio``:
    that over the recorded sequence's mean energy (inf when the recorded energy is 0); per-episode
    lists ``[B]`` in episode order (means over the episode's starts and candidates)."""

    name: str
    scale: float | None
    candidates: int
    rank: float
    rank_lo: float
    rank_hi: float
    energy: float
    energy_ratio: float
    per_episode_rank: list[float]
    per_episode_energy: list[float]


@dataclass(frozen=True)
class EnergyLandscape:
    """The energy landscape of one model on one batch of episodes.

    ``k``: model steps from start to goal; ``starts``: the start frames (model steps, the same in every
    episode); ``context``: real frames ending at the start that the rollout sees; ``action_std``
    ``[A]``: the std that scales the perturbations; ``energy_recorded`` and
    ``per_episode_energy_recorded`` ``[B]``: the recorded sequences' mean energy; ``rows``: the
    perturbation scales in increasing order, then the random group (absent when no unrelated block
    exists: one short episode)."""

    k: int
    context: int
    starts: list[int]
    episodes: int
    seed: int
    action_std: list[float]
    energy_recorded: float
    per_episode_energy_recorded: list[float]
    rows: list[EnergyRow]
    tie_rtol: float = TIE_RTOL

    def row(self, name: str) -> EnergyRow:
        """The row called ``name`` (``"x0.1"``, ..., ``"random"``); KeyError if absent."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scale_name(scale: float) -> str:
    """The row name of a perturbation scale: ``0.25 -> "x0.25"``."""
    return f"x{scale:g}"


def start_points(steps: int, k: int, starts: int, context: int = 1) -> list[int]:
    """Up to ``starts`` start frames evenly spread over an episode of ``steps`` model steps, each with
    ``context - 1`` earlier frames and ``k`` later ones: ``context - 1 <= t <= steps - k``.

    Evenly spread and deterministic (not drawn): the same frames in every run and every episode."""
    lo, hi = context - 1, steps - k
    if hi < lo:
        return []
    n = min(starts, hi - lo + 1)
    if n == 1:
        return [lo]
    return sorted({lo + round(i * (hi - lo) / (n - 1)) for i in range(n)})


def energy_landscape(
    model: WorldModel,
    latents: Tensor,
    actions: Tensor,
    *,
    k: int,
    starts: int,
    candidates: int,
    scales: Sequence[float],
    states: Tensor | None = None,
    context: int = 1,
    window: int | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    use_cache: bool = True,
) -> EnergyLandscape:
    """The energy landscape (module docstring) of ``model`` on recorded episodes.

    latents ``[B, S+1, N, D]`` (real latents at model steps); actions ``[B, S, A]`` (the recorded
    model-step actions, ``A = model.action_dim``); states ``[B, S+1, St]`` or None (read only when the
    model has ``propagate_state``, as the open loop of ``evaluate.rollouts``). ``k``: model steps from
    start to goal; ``starts``: start frames per episode (``start_points``); ``candidates``: per scale and
    for the random group; ``scales``: perturbation scales in units of the recorded actions' std
    (``EvalConfig`` holds the defaults: ``settings.ENERGY_SCALES``); ``batch_size``: rollouts per model
    call (memory, not results). Seeded: the same inputs give the same landscape whatever ``batch_size``.

    The three steps are public for a streaming evaluation: ``draw_candidates`` from every episode's
    actions (small), ``candidate_energies`` on one chunk of episodes at a time, ``summarise`` of the
    energies of all chunks in episode order.

    WMError for bad input: wrong ranks or widths, NaN or inf, episodes too short for ``k``."""
    _check_inputs(model, latents, actions, states, k, starts, candidates, scales, context, batch_size)
    draw = draw_candidates(actions, k=k, starts=starts, candidates=candidates, scales=scales, context=context, seed=seed)
    e = candidate_energies(model, latents, actions, states, draw.draw(range(actions.shape[0])), draw, window=window,
                           batch_size=batch_size, use_cache=use_cache)
    return summarise(draw, [e])


@dataclass(frozen=True)
class Candidates:
    """How to draw the candidates of any episode (``draw(r)``): every episode's recorded model-step
    actions ``actions [B, S, A]`` (float64, CPU: small), the start frames, ``std [A]`` the
    perturbations' scale (over all episodes), and the settings."""

    actions: Tensor
    starts: list[int]
    std: Tensor
    k: int
    context: int
    candidates: int
    scales: tuple[float, ...]
    seed: int

    def draw(self, r: range) -> Tensor:
        """The candidates of episodes ``r``: ``[b, P, M, k, A]`` float64 (candidate 0 the recorded
        sequence, then ``candidates`` per scale, then ``candidates`` unrelated blocks; M stops before
        the unrelated ones if some (episode, start) of ``r`` has none)."""
        rows = [_episode_candidates(self, e) for e in r]
        m = min(x.shape[1] for x in rows)
        return torch.stack([x[:, :m] for x in rows])


def draw_candidates(actions: Tensor, *, k: int, starts: int, candidates: int, scales: Sequence[float],
                    context: int = 1, seed: int = 0) -> Candidates:
    """The candidates' recipe (``energy_landscape``) from the recorded model-step actions ``[B, S, A]``
    of all episodes: the perturbation std and the pool of unrelated blocks depend on all of them."""
    s = actions.shape[1]
    ts = start_points(s, k, starts, context)
    if not ts:
        raise WMError(
            f"energy landscape: the episodes have {s} model steps; goals k={k} model steps after a start with "
            f"{context} context frame(s) need at least {k + context - 1}; use a smaller k (EvalConfig.energy_k) "
            "or longer episodes"
        )
    a64 = actions.detach().double().cpu()
    flat = a64.reshape(-1, a64.shape[-1])
    std = flat.std(0, correction=0) if flat.shape[0] > 1 else torch.ones(flat.shape[1], dtype=torch.float64)
    # a dimension that never varies gets unit noise, as rollout.make_actions' random source does
    std = torch.where(std > 0, std, torch.ones_like(std))
    return Candidates(actions=a64, starts=ts, std=std, k=k, context=context, candidates=candidates,
                      scales=tuple(float(x) for x in scales), seed=seed)


def _episode_candidates(d: Candidates, e: int) -> Tensor:
    """Episode ``e``'s candidates ``[P, M, k, A]`` from its own generator (seeded by ``d.seed`` and ``e``)."""
    a64, k, c = d.actions, d.k, d.candidates
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([d.seed, e]).generate_state(1)[0]))
    t_idx = torch.tensor(d.starts)
    recorded = a64[e, t_idx[:, None] + torch.arange(k)]  # [P, k, A]
    p, n_sc = len(d.starts), len(d.scales)
    noise = torch.randn(p, n_sc, c, k, a64.shape[-1], generator=gen, dtype=torch.float64)
    sc = torch.tensor(d.scales, dtype=torch.float64)
    perturbed = recorded[:, None, None] + sc[:, None, None, None] * d.std * noise  # [P, n_sc, C, k, A]
    groups = [recorded[:, None], perturbed.reshape(p, n_sc * c, k, -1)]
    unrelated = _unrelated_blocks(a64, e, d.starts, k, c, gen)
    if unrelated is not None:
        groups.append(unrelated)
    return torch.cat(groups, 1)


def candidate_energies(model: WorldModel, latents: Tensor, actions: Tensor, states: Tensor | None, cand: Tensor,
                       draw: Candidates, *, window: int | None = None, batch_size: int = 1024,
                       use_cache: bool = True) -> Tensor:
    """The energy of the candidates ``cand [b, P, M, k, A]`` (``draw.draw(r)`` for these episodes) on
    episodes ``latents [b, S+1, N, D]``, recorded ``actions [b, S, A]``, ``states`` -> ``[b, P, M]``
    float64 on the CPU."""
    b, p, m = cand.shape[:3]
    return _energies(model, latents, actions, states, draw.starts, cand, draw.k, draw.context, window,
                     batch_size, use_cache).reshape(b, p, m)


def summarise(draw: Candidates, energies: Sequence[Tensor]) -> EnergyLandscape:
    """The landscape from the energies ``[b, P, M]`` of every chunk's candidates (in episode order). The
    random group is reported only when every (episode, start) had unrelated blocks."""
    m = min(x.shape[2] for x in energies)
    e = torch.cat([x[:, :, :m] for x in energies])
    b = e.shape[0]
    c, n_sc, scales = draw.candidates, len(draw.scales), draw.scales
    random = m > 1 + n_sc * c
    e_rec = e[:, :, :1]

    def rank(group: Tensor) -> Tensor:  # [B, P, G] -> [B, P]
        tie = torch.isclose(group, e_rec.expand_as(group), rtol=TIE_RTOL, atol=0.0)
        lower = (group < e_rec) & ~tie
        return (lower.double() + 0.5 * tie.double()).mean(-1)

    rec_mean = float(e_rec.mean())
    rows = []
    spans = [(scale_name(float(x)), float(x), 1 + i * c) for i, x in enumerate(scales)]
    if random:
        spans.append((RANDOM, None, 1 + n_sc * c))
    for name, scale, lo in spans:
        group = e[:, :, lo : lo + c]
        per_rank = rank(group).mean(1).numpy()  # [B]: mean over the episode's starts
        r_lo, r_hi = mean_ci(per_rank)
        # a rank lies in [0, 1]: the t interval of a mean near an end would reach past it
        r_lo, r_hi = max(0.0, r_lo), min(1.0, r_hi)
        mean_e = float(group.mean())
        rows.append(EnergyRow(
            name=name, scale=scale, candidates=c, rank=float(per_rank.mean()), rank_lo=r_lo, rank_hi=r_hi,
            energy=mean_e, energy_ratio=_ratio(mean_e, rec_mean), per_episode_rank=per_rank.tolist(),
            per_episode_energy=group.mean((1, 2)).tolist(),
        ))
    rows.sort(key=lambda r: (r.scale is None, r.scale or 0.0))
    return EnergyLandscape(
        k=draw.k, context=draw.context, starts=draw.starts, episodes=b, seed=draw.seed, action_std=draw.std.tolist(),
        energy_recorded=rec_mean, per_episode_energy_recorded=e_rec.mean((1, 2)).tolist(), rows=rows,
    )


def _ratio(x: float, ref: float) -> float:
    if ref > 0:
        return x / ref
    return math.inf if x > 0 else 1.0


def _unrelated_blocks(a64: Tensor, e: int, ts: list[int], k: int, c: int, gen: torch.Generator) -> Tensor | None:
    """``c`` recorded k-blocks for each start of episode ``e``, drawn with replacement from the blocks of
    other episodes and of other, non-overlapping times of the same episode, leaving out any block equal
    to the recorded one (saturated actions repeat exactly; such a block is no alternative):
    ``[P, C, k, A]`` (None if no such block exists for some start)."""
    b, s, _ = a64.shape
    windows = a64.unfold(1, k, 1)  # [B, W, A, k]: every block start, a view (no copy)
    w = windows.shape[1]
    pe, pt = torch.arange(b)[:, None], torch.arange(w)[None]
    out = []
    for t in ts:
        same = (windows == a64[e, t : t + k].T).flatten(2).all(2)  # [B, W]
        ok = ((pe != e) | ((pt - t).abs() >= k)) & ~same
        if not ok.any():
            return None
        pick = torch.multinomial(ok.flatten().double(), c, replacement=True, generator=gen)
        out.append(a64[(pick // w)[:, None], (pick % w)[:, None] + torch.arange(k)])  # [C, k, A]
    return torch.stack(out)


def _energies(
    model: WorldModel, latents: Tensor, actions: Tensor, states: Tensor | None, ts: list[int], cand: Tensor,
    k: int, context: int, window: int | None, batch_size: int, use_cache: bool,
) -> Tensor:
    """Energy of every candidate ``cand [B, P, M, k, A]`` -> ``[B*P*M]`` float64 on the CPU."""
    b, p, m = cand.shape[:3]
    dev, dtype = latents.device, actions.dtype
    # rollout rows: (episode, start, candidate) flattened in that order
    rows = torch.arange(b * p * m)
    ep, st = rows // (p * m), (rows // m) % p
    t_of = torch.tensor(ts)[st]
    ctx_t = t_of[:, None] + torch.arange(1 - context, 1)  # [R, C]: the real frames ending at the start
    flat_cand = cand.reshape(b * p * m, k, -1)
    a_cpu = actions.detach().double().cpu()
    use_states = states is not None and isinstance(model, StatePropagator)
    out = []
    with torch.inference_mode():
        for lo in range(0, len(rows), batch_size):
            sl = slice(lo, lo + batch_size)
            e_i, c_t, t_i = ep[sl], ctx_t[sl], t_of[sl]
            ctx = latents[e_i.to(dev)[:, None], c_t.to(dev)]  # [r, C, N, D]
            # the context frames' own actions are the recorded ones; the candidate starts at the start frame
            before = a_cpu[e_i[:, None], c_t[:, :-1]]  # [r, C-1, A]
            acts = torch.cat([before, flat_cand[sl]], 1).to(dev, dtype)
            st_ctx = states[e_i.to(dev)[:, None], c_t.to(dev)] if use_states else None
            pred = open_loop(model, ctx, acts, k, window=window, states=st_ctx, use_cache=use_cache)[:, -1]
            goal = latents[e_i.to(dev), (t_i + k).to(dev)]
            out.append((pred.double() - goal.double()).pow(2).mean((-2, -1)).cpu())
    return torch.cat(out)


def _check_inputs(
    model: WorldModel, latents: Tensor, actions: Tensor, states: Tensor | None, k: int, starts: int,
    candidates: int, scales: Sequence[float], context: int, batch_size: int,
) -> None:
    where = "energy landscape"
    for name, v in (("k", k), ("starts", starts), ("candidates", candidates), ("context", context),
                    ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise WMError(f"{where}: {name} must be an integer >= 1, found {v!r}")
    if len(scales) == 0 or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)
                               or x <= 0 for x in scales):
        raise WMError(f"{where}: scales must be one or more finite numbers > 0 (multiples of the actions' std), "
                      f"found {list(scales)!r}")
    if not isinstance(latents, Tensor) or latents.dim() != 4 or not latents.is_floating_point():
        found = f"shape {tuple(latents.shape)} {latents.dtype}" if isinstance(latents, Tensor) else type(latents).__name__
        raise WMError(f"{where}: latents must be a floating-point tensor [B, S+1, N, D], found {found}")
    if not isinstance(actions, Tensor) or actions.dim() != 3:
        found = f"shape {tuple(actions.shape)}" if isinstance(actions, Tensor) else type(actions).__name__
        raise WMError(f"{where}: actions must be a tensor [B, S, A] of model-step actions, found {found}")
    b, s1 = latents.shape[:2]
    if actions.shape[0] != b or actions.shape[1] != s1 - 1:
        raise WMError(f"{where}: actions {tuple(actions.shape)} do not fit latents {tuple(latents.shape)}: expected "
                      f"[B={b}, S={s1 - 1}, A] (one action per model step between the frames)")
    if actions.shape[2] != model.action_dim:
        hint = ""
        if model.frameskip > 1 and actions.shape[2] * model.frameskip == model.action_dim:
            hint = f"; these look like recorded actions: group them with rollout.block_actions(actions, {model.frameskip})"
        raise WMError(f"{where}: model {model.name!r} takes {model.action_dim}-wide model-step actions, "
                      f"found {actions.shape[2]}{hint}")
    for name, x in (("latents", latents), ("actions", actions)):
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).nonzero()[0].tolist()
            raise WMError(f"{where}: {name} contain NaN or inf (first at index {bad}); the "
                          f"{'encoder or the data' if name == 'latents' else 'action file'} is broken: clean it")
    if states is not None:
        if not isinstance(states, Tensor) or states.dim() != 3 or states.shape[0] != b or states.shape[1] < s1:
            found = tuple(states.shape) if isinstance(states, Tensor) else type(states).__name__
            raise WMError(f"{where}: states must be [B={b}, >= {s1}, St] or None, found {found}")
        if isinstance(model, StatePropagator) and not torch.isfinite(states).all():
            raise WMError(f"{where}: states contain NaN or inf; clean the state file")

