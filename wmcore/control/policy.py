"""World-model-conditioned imitation policies: goal-conditioned behaviour cloning (GCBC) on a world
model's frozen encoder, and two ways to condition it on the world model.

Every variant maps the encoded current frame ``z_t`` and goal frame ``z_g`` (latents ``[N, D]``,
flattened and standardised) and the previous action ``a_prev`` (the command the agent is following:
proprioception, as the planner's candidates also start from it) to the next model step's action
block (``frameskip`` recorded actions), expressed as offsets from ``a_prev`` and standardised; the
imitation loss is the MSE to the recorded block. Training pairs come
from recorded episodes with hindsight goals: the goal of frame t is frame ``t + j * frameskip``,
``j`` drawn from ``goal_steps`` (1..5 model steps = 5..25 env steps: a task's goal is 25 steps away
at the start and nearer as the episode goes on, and the policy is asked again every model step).

Variants (``PolicyConfig.variant``):

- ``gcbc``: ``trunk(z_t, z_g) -> head -> a``. The LeWorldModel paper's GCBC baseline.
- ``imagined``: two passes. The first is the GCBC head's proposal ``a0``; the frozen world model
  imagines the next latent under it, ``z1 = WM.predict(z_t, a0)``; a refinement head reads
  ``(trunk features, z1)`` and gives the action. Why the proposal: the recorded action is future
  ground truth (at test time there is none), and any fixed action (e.g. "stay") would imagine the
  same thing for every goal; the proposal is what the policy intends, so ``z1`` shows it where that
  would lead. Both heads are trained on the recorded block; ``z1`` is computed without gradient
  (the world model is frozen) from the detached proposal, in training exactly as at test time.
- ``aux``: GCBC plus a dynamics head on the trunk, ``dyn(trunk features, a) -> next latent``,
  trained with weight ``aux_weight`` (lambda, 0..1) to match the world model's own prediction of the
  next latent under the recorded block: the head is *distilled towards the given world model's
  predictor* (not initialised from it: the architectures differ). It is not used to act; it shapes
  the trunk. ``aux_weight`` 0 is GCBC.

The policy reads the current frame, the goal frame and (for models that read one) the
proprioceptive state for the world model's prediction: never a future frame or action.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import WMError
from ..fsio import write_replace
from ..protocol import WorldModel

__all__ = [
    "VARIANTS", "PolicyConfig", "PolicyData", "PolicyNet", "PolicyController", "act", "embed_episodes", "encode",
    "load_policy", "progress_printer",
    "save_policy", "train_policy",
]

VARIANTS = ("gcbc", "imagined", "aux")
FORMAT = "wmcore.policy"
VERSION = 1


@dataclass(frozen=True)
class PolicyConfig:
    """A policy variant and how it is trained. ``steps`` optimiser steps of ``batch`` hindsight pairs."""

    variant: str = "gcbc"
    aux_weight: float = 0.0  # lambda of the auxiliary world-model loss (variant aux), in [0, 1]
    width: int = 256
    goal_steps: tuple[int, ...] = (1, 2, 3, 4, 5)  # hindsight goal offsets, in model steps
    steps: int = 3000
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_episodes: int = 12  # the last episodes of the data set: held-out action error
    val_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise WMError(f"policy variant {self.variant!r}: expected one of {', '.join(VARIANTS)}")
        lam = self.aux_weight
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or not 0 <= lam <= 1:
            raise WMError(f"policy aux weight (lambda) {lam!r}: must be a number in [0, 1] (the auxiliary "
                          "world-model loss is weighted 0..1 against the imitation loss; typical 0.1-0.5)")
        if lam and self.variant != "aux":
            raise WMError(f"policy aux weight {lam}: only the aux variant has an auxiliary loss; use --variant aux")
        if isinstance(self.goal_steps, list):
            object.__setattr__(self, "goal_steps", tuple(self.goal_steps))
        if not self.goal_steps or any(isinstance(j, bool) or not isinstance(j, int) or j < 1 for j in self.goal_steps):
            raise WMError(f"policy goal_steps {self.goal_steps!r}: expected positive whole model steps")
        for name in ("width", "steps", "batch", "val_episodes", "val_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WMError(f"policy {name}: expected a positive integer, found {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise WMError(f"policy lr: expected a number > 0, found {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise WMError(f"policy weight_decay: expected a number >= 0, found {self.weight_decay!r}")

    @property
    def label(self) -> str:
        """Short name for tables: gcbc, imagined, aux0.25."""
        return f"aux{self.aux_weight:g}" if self.variant == "aux" else self.variant

    def to_dict(self) -> dict:
        d = asdict(self)
        d["goal_steps"] = list(self.goal_steps)
        return d


# --------------------------------------------------------------------------------------------------
# data: a world model's latents of recorded episodes


@dataclass
class PolicyData:
    """Recorded episodes seen through a frozen world model.

    z ``[E, T+1, N, D]`` latents of every recorded frame; actions ``[E, T, A]`` recorded; states
    ``[E, T+1, S]`` or None; teacher ``[E, T+1-k, N, D]``: the world model's prediction of frame
    ``t+k`` from frame t under the recorded block (k = frameskip), for the aux loss (None until
    ``with_teacher``)."""

    z: Tensor
    actions: Tensor
    frameskip: int
    states: Tensor | None = None
    teacher: Tensor | None = None
    ids: list[str] = field(default_factory=list)

    @property
    def blocks(self) -> Tensor:
        """Action blocks ``[E, T+1-k, k*A]``: block t is recorded actions t..t+k-1."""
        k = self.frameskip
        return self.actions.unfold(1, k, 1).permute(0, 1, 3, 2).flatten(2)

    def with_teacher(self, model: WorldModel, batch: int = 512) -> "PolicyData":
        """Fill ``teacher`` (the world model's next-latent predictions under the recorded blocks)."""
        if self.teacher is None:
            e, t1 = self.z.shape[:2]
            n = t1 - self.frameskip
            ctx = self.z[:, :n].flatten(0, 1)[:, None]  # [E*n, 1, N, D]
            act = self.blocks[:, :n].flatten(0, 1)[:, None]
            st = None if self.states is None or not _reads_state(model) else self.states[:, :n].flatten(0, 1)[:, None]
            self.teacher = _predict(model, ctx, act, st, batch).reshape(e, n, *self.z.shape[2:])
        return self


def _reads_state(model) -> bool:
    return hasattr(model, "propagate_state")


def _predict(model: WorldModel, ctx: Tensor, act: Tensor, st: Tensor | None, batch: int) -> Tensor:
    """``model.predict`` over ``ctx [B, 1, N, D]``, ``act [B, 1, A]`` in chunks -> ``[B, N, D]`` (a normal tensor)."""
    out = []
    with torch.inference_mode():
        for i in range(0, ctx.shape[0], batch):
            out.append(model.predict(ctx[i: i + batch], act[i: i + batch], None if st is None else st[i: i + batch]).float())
    return torch.cat(out).clone()


def encode(model: WorldModel, frames, what: str = "the frames") -> Tensor:
    """uint8 frames ``[T, H, W, 3]`` -> latents ``[T, N, D]`` (float, CPU, a normal tensor); a model
    whose encoder cannot embed them (wrong size, channels, ...) raises WMError naming ``what``."""
    frames = torch.as_tensor(frames)
    try:
        with torch.inference_mode():
            z = model.encode(frames[None])[0].float().cpu()
    except (ValueError, RuntimeError) as err:
        raise WMError(f"model {model.name!r} cannot embed {what} (frames {tuple(frames.shape[1:])}): {err}; "
                      "a policy needs a world model whose encoder reads these frames") from None
    return z.clone()


def embed_episodes(model: WorldModel, episodes: Sequence, *, batch: int = 128,
                   progress: Callable[[int, int], None] | None = None) -> PolicyData:
    """Encode every frame of ``episodes`` (``wmcore.episode.Episode``, one length and action width) with
    the model's frozen encoder. Bad input (no actions, actions that do not fit the model, frames the
    encoder cannot embed) raises WMError."""
    if not episodes:
        raise WMError("policy data: no episodes")
    k = int(getattr(model, "frameskip", 1))
    widths = {int(e.actions.shape[-1]) if e.actions.dim() == 2 else 0 for e in episodes}
    if widths == {0} or any(e.actions.shape[0] == 0 for e in episodes):
        raise WMError("policy data: the episodes have no actions; behaviour cloning imitates recorded actions, "
                      "so give episodes with actions (wmcore make-fixtures pusht writes them)")
    if len(widths) != 1 or k * widths.pop() != model.action_dim:
        raise WMError(f"policy data: actions of width {sorted({int(e.actions.shape[-1]) for e in episodes})} do not fit "
                      f"model {model.name!r} ({model.action_dim}-d per model step = frameskip {k} x "
                      f"{model.action_dim // k}-d recorded actions)")
    steps = min(e.steps for e in episodes)
    if steps < 2 * k:
        raise WMError(f"policy data: episodes of {steps} steps are too short for a hindsight goal (need {2 * k})")
    zs = []
    for i, e in enumerate(episodes):
        frames = e.frames[: steps + 1]
        z = torch.cat([encode(model, frames[j: j + batch], e.id) for j in range(0, len(frames), batch)])
        zs.append(z)
        if progress:
            progress(i + 1, len(episodes))
    states = None
    if all(e.states is not None for e in episodes):
        states = torch.stack([e.states[: steps + 1].float() for e in episodes])
    return PolicyData(torch.stack(zs), torch.stack([e.actions[:steps].float() for e in episodes]), k, states,
                      ids=[e.id for e in episodes])


# --------------------------------------------------------------------------------------------------
# the network


def _mlp(a: int, w: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(a, w), nn.GELU(), nn.Linear(w, w), nn.GELU(), nn.Linear(w, b))


class PolicyNet(nn.Module):
    """``forward(z_t, z_g, prev)``: latents ``[B, N, D]``, previous action ``[B, A]`` -> (trunk features
    ``[B, W]``, proposal ``[B, k*A]`` standardised offsets from ``prev``). Buffers hold the
    standardisation of latents (per feature), of the previous action and of the offsets."""

    def __init__(self, cfg: PolicyConfig, features: int, action_dim: int, width: int,
                 z_mean: Tensor | None = None, z_std: Tensor | None = None, p_mean: Tensor | None = None,
                 p_std: Tensor | None = None, o_std: Tensor | None = None):
        super().__init__()
        w = cfg.width
        self.cfg, self.features, self.action_dim, self.width = cfg, features, action_dim, width
        self.k = action_dim // width
        self.register_buffer("z_mean", torch.zeros(features) if z_mean is None else z_mean.float())
        self.register_buffer("z_std", torch.ones(features) if z_std is None else z_std.float())
        self.register_buffer("p_mean", torch.zeros(width) if p_mean is None else p_mean.float())
        self.register_buffer("p_std", torch.ones(width) if p_std is None else p_std.float())
        self.register_buffer("o_std", torch.ones(action_dim) if o_std is None else o_std.float())
        self.proj = nn.Linear(features, w)  # shared by current, goal and imagined latents
        self.trunk = nn.Sequential(nn.Linear(2 * w + width, w), nn.GELU(), nn.Linear(w, w), nn.GELU())
        self.head = nn.Linear(w, action_dim)
        self.refine = _mlp(3 * w, w, action_dim) if cfg.variant == "imagined" else None
        self.dynamics = _mlp(w + action_dim, w, features) if cfg.variant == "aux" else None

    def norm_z(self, z: Tensor) -> Tensor:
        return (z.flatten(1) - self.z_mean) / self.z_std

    def forward(self, z_t: Tensor, z_g: Tensor, prev: Tensor) -> tuple[Tensor, Tensor]:
        p = (prev - self.p_mean) / self.p_std
        h = self.trunk(torch.cat([self.proj(self.norm_z(z_t)), self.proj(self.norm_z(z_g)), p], -1))
        return h, self.head(h)

    def refined(self, h: Tensor, z_img: Tensor, z_g: Tensor) -> Tensor:
        """The imagined variant's second pass: trunk features, the imagined next latent and the goal."""
        p = self.proj(self.norm_z(z_img))
        return self.refine(torch.cat([h, p, p - self.proj(self.norm_z(z_g))], -1))

    def to_action(self, a: Tensor, prev: Tensor) -> Tensor:
        """Standardised offsets ``[B, k*A]`` -> the action block in recorded units."""
        return a * self.o_std + prev.repeat(1, self.k)

    def from_action(self, block: Tensor, prev: Tensor) -> Tensor:
        return (block - prev.repeat(1, self.k)) / self.o_std


def act(net: PolicyNet, model: WorldModel, z_t: Tensor, z_g: Tensor, prev: Tensor, state: Tensor | None = None) -> Tensor:
    """The action block ``[B, k*A]`` (recorded units) for latents ``z_t``, ``z_g`` ``[B, N, D]`` and the
    previous action ``prev [B, A]``; ``state [B, S]`` for world models that read one (the imagined
    variant's prediction)."""
    with torch.no_grad():
        h, a0 = net(z_t, z_g, prev)
        if net.refine is None:
            return net.to_action(a0, prev)
        z1 = _predict(model, z_t[:, None], net.to_action(a0, prev)[:, None],
                      None if state is None or not _reads_state(model) else state[:, None], len(z_t))
        return net.to_action(net.refined(h, z1, z_g), prev)


# --------------------------------------------------------------------------------------------------
# training


def _pairs(n_ep: int, t_frames: int, k: int, goal_steps: Sequence[int], n: int,
           g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` hindsight pairs of episodes with frames 0..t_frames-1: episode index, frame t >= 1 (it has a
    previous action), goal frame t + j*k <= t_frames - 1 (so the block of t, recorded actions
    t..t+k-1, exists too)."""
    e = torch.randint(n_ep, (n,), generator=g)
    j = torch.as_tensor(goal_steps)[torch.randint(len(goal_steps), (n,), generator=g)]
    span = t_frames - 1 - j * k  # the last start with its goal inside the episode (frames 0..T)
    t = 1 + (torch.rand(n, generator=g) * span).floor().long().clamp(max=span - 1)
    return e, t, t + j * k


def train_policy(model: WorldModel, data: PolicyData, cfg: PolicyConfig,
                 log: Callable[[str], None] | None = None) -> tuple[PolicyNet, list[dict]]:
    """Train one policy on ``data`` (the last ``cfg.val_episodes`` held out) -> (net in eval mode, history).

    history: one entry before training (step 0) and one per ``val_every`` steps: step, imitation
    (training, running mean), aux (running mean; variant aux), val_action_mse (held-out, standardised
    action units, the acting head; predicting the mean offset scores about 1)."""
    e_all, t1 = data.z.shape[:2]
    if e_all <= cfg.val_episodes:
        raise WMError(f"policy data: {e_all} episodes; need more than the {cfg.val_episodes} held out")
    k = data.frameskip
    if t1 - 1 < k * max(cfg.goal_steps) + k:
        raise WMError(f"policy data: episodes of {t1 - 1} steps are shorter than the farthest hindsight goal "
                      f"({max(cfg.goal_steps)} model steps of {k}) plus one block")
    if cfg.variant == "aux":
        data.with_teacher(model)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    ntr = e_all - cfg.val_episodes
    blocks = data.blocks  # [E, T+1-k, k*A]
    flat = data.z.flatten(2)  # [E, T+1, F]
    z_mean, z_std = flat[:ntr].flatten(0, 1).mean(0), flat[:ntr].flatten(0, 1).std(0).clamp_min(1e-6)
    acts = data.actions  # [E, T, A]
    a_rec = acts[:ntr].flatten(0, 1)
    n_blk = blocks.shape[1] - 1  # starts t = 1..T-k: block t after previous action t-1
    offsets = blocks[:ntr, 1:] - acts[:ntr, :n_blk].repeat(1, 1, k)
    net = PolicyNet(cfg, flat.shape[-1], blocks.shape[-1], acts.shape[-1], z_mean, z_std, a_rec.mean(0),
                    a_rec.std(0).clamp_min(1e-6), offsets.flatten(0, 1).std(0).clamp_min(1e-6))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gv = torch.Generator().manual_seed(cfg.seed + 1)
    val = _pairs(cfg.val_episodes, t1, k, cfg.goal_steps, 2048, gv)  # a fixed held-out set
    val = (val[0] + ntr, val[1], val[2])
    z_state = data.states

    def batch_loss(e: Tensor, t: Tensor, tg: Tensor, train: bool) -> dict[str, Tensor]:
        z_t, z_g, prev = data.z[e, t], data.z[e, tg], acts[e, t - 1]
        target = net.from_action(blocks[e, t], prev)
        h, a0 = net(z_t, z_g, prev)
        out = {"imitation": (a0 - target).square().mean()}
        acting = a0
        if net.refine is not None:
            st = None if z_state is None else z_state[e, t]
            z1 = _predict(model, z_t[:, None], net.to_action(a0.detach(), prev)[:, None],
                          None if st is None or not _reads_state(model) else st[:, None], len(e))
            a1 = net.refined(h, z1, z_g)
            # the mean of both passes' losses: on the scale of the other variants' imitation loss
            out["imitation"] = 0.5 * (out["imitation"] + (a1 - target).square().mean())
            acting = a1
        if net.dynamics is not None and train:
            pred = net.dynamics(torch.cat([h, target], -1))
            out["aux"] = (pred - net.norm_z(data.teacher[e, t])).square().mean()
        out["action_mse"] = (acting - target).square().mean().detach()
        return out

    def held_out() -> float:
        net.eval()
        with torch.no_grad():
            return sum(float(batch_loss(*(x[i: i + 512] for x in val), False)["action_mse"]) * len(val[0][i: i + 512])
                       for i in range(0, len(val[0]), 512)) / len(val[0])

    history: list[dict] = [{"step": 0, "imitation": None, "aux": None, "val_action_mse": held_out(), "elapsed_s": 0.0}]
    run_im = run_aux = None
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for grp in opt.param_groups:
            grp["lr"] = lr
        net.train()
        e, t, tg = _pairs(ntr, t1, k, cfg.goal_steps, cfg.batch, g)
        losses = batch_loss(e, t, tg, True)
        total = losses["imitation"] + (cfg.aux_weight * losses["aux"] if "aux" in losses else 0.0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        im = float(losses["imitation"].detach())
        run_im = im if run_im is None else 0.95 * run_im + 0.05 * im
        if "aux" in losses:
            a = float(losses["aux"].detach())
            run_aux = a if run_aux is None else 0.95 * run_aux + 0.05 * a
        done = step + 1
        if done % cfg.val_every == 0 or done == cfg.steps:
            v = held_out()
            history.append({"step": done, "imitation": run_im, "aux": run_aux, "val_action_mse": v,
                            "elapsed_s": time.perf_counter() - t0})
            if log:
                log(f"  step {done}/{cfg.steps}  imitation {run_im:.4f}"
                    + (f"  aux {run_aux:.4f}" if run_aux is not None else "") + f"  held-out action mse {v:.4f}")
    net.eval()
    return net, history


# --------------------------------------------------------------------------------------------------
# acting in the simulator (a Controller of wmcore.control.run)


class PolicyController:
    """A trained policy acting closed loop: every model step, encode the frame, output one action block
    (``frameskip`` environment actions), clipped to the recorded action range."""

    def __init__(self, net: PolicyNet, model: WorldModel, *, low: Sequence[float], high: Sequence[float],
                 name: str | None = None):
        self.net, self.model = net.eval(), model
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        self.name = name or f"policy[{net.cfg.label}|{model.name}]"
        self.k = int(getattr(model, "frameskip", 1))

    def _encode(self, frame: np.ndarray) -> Tensor:
        return encode(self.model, np.asarray(frame)[None], "the task frames")

    def reset(self, task, start_frame, goal_frame) -> None:
        self.z_goal = self._encode(goal_frame)

    def act(self, frame, state, velocity, last) -> np.ndarray:
        st = torch.as_tensor(np.asarray(state), dtype=torch.float32)[None]
        prev = torch.as_tensor(np.asarray(last), dtype=torch.float32)[None]
        block = act(self.net, self.model, self._encode(frame), self.z_goal, prev, st)[0]
        out = block.double().numpy().reshape(self.k, -1)
        return np.clip(out, self.low, self.high)


# --------------------------------------------------------------------------------------------------
# files


def save_policy(net: PolicyNet, directory: Path, meta: dict) -> None:
    """``policy.safetensors`` + ``policy.json`` (format, config, shapes, ``meta``: model identity, data,
    training history) in a fresh ``directory``."""
    from safetensors.torch import save

    directory = Path(directory)
    if (directory / "policy.safetensors").exists():
        raise WMError(f"{directory}: a policy is already there; choose another --out (nothing is overwritten)")
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "version": VERSION, "config": net.cfg.to_dict(), "features": net.features,
           "action_dim": net.action_dim, "action_width": net.width, **meta}
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    write_replace(directory / "policy.safetensors", save(state))
    write_replace(directory / "policy.json", (json.dumps(doc, indent=1) + "\n").encode())


def load_policy(directory: str | Path) -> tuple[PolicyNet, dict]:
    """A saved policy -> (net in eval mode, its policy.json). Bad files raise WMError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    try:
        doc = json.loads((d / "policy.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WMError(f"{d}: not a policy directory (policy.json unreadable: {e}); write one with "
                      "wmcore policy train") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise WMError(f"{d}/policy.json: not a {FORMAT} v{VERSION} file")
    try:
        cfg = PolicyConfig(**{k: v for k, v in doc["config"].items()})
        net = PolicyNet(cfg, int(doc["features"]), int(doc["action_dim"]), int(doc["action_width"]))
        state = load_file(d / "policy.safetensors")
        net.load_state_dict(state)
    except (KeyError, TypeError, ValueError, OSError, RuntimeError, SafetensorError) as e:
        raise WMError(f"{d}: a broken policy ({type(e).__name__}: {e}); train it again with wmcore policy train") from None
    return net.eval(), doc


def progress_printer(what: str) -> Callable[[int, int], None]:
    """A progress callback that prints ``what i/n`` on stderr every tenth of the way."""
    def show(i: int, n: int) -> None:
        if i == n or i % max(1, n // 10) == 0:
            print(f"  {what} {i}/{n}", file=sys.stderr, flush=True)
    return show

