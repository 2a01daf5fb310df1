"""The one training loop: training windows from an episode set, AdamW with warm-up and cosine decay,
held-out validation, resumable checkpoints, progress lines, and the finished model.

What differs between architectures is a ``Recipe`` (``wmcore.train.lewm``, ``wmcore.train.ac_tiny``):
how to build the model from its config, turn a batch of windows into the model's inputs, compute
its loss, validate, finish (BatchNorm recalibration) and save. The loop picks the recipe by the type
of the model config and never asks which architecture it runs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from ..data.episodes import load_episodes
from ..errors import WMError
from ..fsio import write_replace
from ..models.checkpoint import read_error
from .ac_tiny import ACTinyRecipe
from .lewm import LeWMRecipe

__all__ = ["RECIPES", "Recipe", "TrainConfig", "Windows", "lr_at", "recipe_for", "train"]


class Recipe(Protocol):
    """What the loop needs to know of an architecture. ``inputs`` is the model's inputs as a tuple,
    whatever the architecture makes of a window; the loop only hands it back to ``loss``/``validate``."""

    arch: str  # the --arch name
    config: type  # its model config class; has name, frameskip, action_dim, action_mean, action_std
    help: str  # one line for --arch's help

    def states(self, episodes: list, steps: int, cfg: Any, source: str) -> Tensor | None:
        """The states ``[E, steps+1, S]`` the model reads (WMError if the episodes lack them), or None."""

    def build(self, cfg: Any, encoder_from: str = "") -> nn.Module:
        """A fresh model from its config (``encoder_from``: a model directory to start the encoder from)."""

    def inputs(self, cfg: Any, frames: Tensor, actions: Tensor, states: Tensor | None, device: torch.device,
               generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """A batch of windows as recorded (frames uint8 ``[B, W, H, W', 3]``, raw action blocks
        ``[B, W, k*A]``, states ``[B, W, S]`` or None) -> the model's inputs on ``device``.
        ``generator``: for the training-time draws; None for validation and calibration."""

    def loss(self, model: nn.Module, inputs: tuple[Tensor, ...],
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The loss terms of a batch; ``total`` is minimised."""

    def validate(self, model: nn.Module, batches: list[tuple[Tensor, ...]]) -> dict[str, float]:
        """Held-out means (called under no_grad): at least val_pred, val_sigreg, val_cos."""

    def finish(self, model: nn.Module, sample: Callable[[], tuple[Tensor, ...]]) -> None:
        """After the last step, before saving (``sample()``: a fresh batch of training inputs)."""

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the finished model (on the CPU, in eval mode) into ``directory``."""


RECIPES: dict[str, Recipe] = {r.arch: r for r in (LeWMRecipe(), ACTinyRecipe())}


def recipe_for(model_cfg: Any) -> Recipe:
    """The recipe whose config class ``model_cfg`` is an instance of."""
    for r in RECIPES.values():
        if isinstance(model_cfg, r.config):
            return r
    known = ", ".join(r.config.__name__ for r in RECIPES.values())
    raise WMError(f"no training recipe for a {type(model_cfg).__name__}; expected one of {known}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the model's own live in its config (LeWMConfig, ACTinyConfig)."""

    steps: int = 5000  # optimiser steps (about 45 min on 2 CPU cores)
    batch: int = 32  # windows per step
    window: int = 4  # model steps per training window (history + 1)
    lr: float = 5e-4
    weight_decay: float = 1e-3
    warmup: int = 200
    val_every: int = 250
    log_every: int = 50
    val_episodes: int = 12  # the last episodes of the data set, never trained on
    seed: int = 0
    threads: int = 0  # 0 = torch's default
    time_limit_min: float = 0.0  # 0 = none; stops cleanly (and saves) when exceeded
    encoder_from: str = ""  # ac-tiny: a model directory whose encoder starts this run (see command.TRAIN_HELP)
    snapshot_every: int = 0  # 0 = none; else the finished model as of every this many steps, in snapshots/

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> WMError:
            return WMError(f"TrainConfig.{name}: expected {want}, found {getattr(self, name)!r}")

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int)):
                raise bad(f.name, "an integer")
            if f.type in ("float", float) and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise bad(f.name, "a finite number")
        for name in ("steps", "batch", "val_every", "log_every", "val_episodes"):
            if getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        if self.window < 2:
            raise bad("window", "at least 2 model steps (a frame and the next one it predicts)")
        if self.lr <= 0:
            raise bad("lr", "a learning rate > 0")
        for name in ("weight_decay", "warmup", "seed", "threads", "time_limit_min", "snapshot_every"):
            if getattr(self, name) < 0:
                raise bad(name, "a value >= 0")


class Windows:
    """Training windows: ``window`` frames ``frameskip`` recorded steps apart, at any start offset.

    frames uint8 ``[E, T+1, H, W, 3]`` as recorded, actions ``[E, T, A]`` and optional states
    ``[E, T+1, S]``; a window yields frames ``[W, H, W', 3]``, action blocks ``[W, frameskip * A]``
    (block t is the k recorded actions that lead from window frame t to t+1; the last block is unused
    by the loss) and states ``[W, S]`` (or None).
    """

    def __init__(self, frames: Tensor, actions: Tensor, window: int, frameskip: int, states: Tensor | None = None):
        self.frames, self.actions, self.window, self.k, self.states = frames, actions, window, frameskip, states
        span = (window - 1) * frameskip + frameskip  # last block needs k actions after the last frame
        self.starts = actions.shape[1] - span + 1
        if self.starts < 1:
            raise WMError(
                f"episodes have {actions.shape[1]} steps; a window of {window} model steps at frameskip "
                f"{frameskip} needs {span}: generate longer episodes"
            )

    def sample(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None]:
        """``n`` windows at random episodes and starts: frames ``[n, W, ...]``, actions ``[n, W, k*A]``,
        states ``[n, W, S]`` or None."""
        e = torch.randint(0, self.frames.shape[0], (n,), generator=g)
        s = torch.randint(0, self.starts, (n,), generator=g)
        return self.take(e, s)

    def take(self, e: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The windows of episodes ``e [n]`` starting at recorded steps ``s [n]`` (as ``sample``)."""
        idx = s[:, None] + self.k * torch.arange(self.window)  # [n, W] frame indices
        pix = self.frames[e[:, None], idx]  # [n, W, ...] uint8
        aidx = idx[..., None] + torch.arange(self.k)  # [n, W, k]
        act = self.actions[e[:, None, None], aidx]  # [n, W, k, A]
        st = None if self.states is None else self.states[e[:, None], idx]  # [n, W, S]
        return pix, act.flatten(2), st


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train(data_dir: str, out_dir: str, model_cfg: Any, cfg: TrainConfig, device: str = "auto", log=print) -> Path:
    """Train, checkpointing into ``out_dir``; returns the directory of the finished model.
    The architecture follows the config's type (``recipe_for``): LeWMConfig or ACTinyConfig."""
    recipe = recipe_for(model_cfg)
    out = Path(out_dir)
    final = out / "model"
    if (final / "model.safetensors").exists():
        raise WMError(f"{final}: a finished model is already there; choose another --out (nothing is overwritten)")
    dev = _device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    episodes = load_episodes(data_dir)
    if len(episodes) <= cfg.val_episodes:
        raise WMError(f"{data_dir}: {len(episodes)} episodes; need more than the {cfg.val_episodes} held out for validation")
    widths = sorted({int(e.actions.shape[-1]) for e in episodes})
    if len(widths) > 1:
        raise WMError(f"{data_dir}: episodes have different action widths {widths}; a data set needs one")
    sizes = sorted({tuple(e.frames.shape[1:]) for e in episodes})
    if len(sizes) > 1:
        raise WMError(f"{data_dir}: episodes have different frame sizes {sizes}; a data set needs one")
    steps = min(e.steps for e in episodes)
    # frames stay as recorded: the recipe preprocesses each batch as evaluation does
    frames = torch.stack([e.frames[: steps + 1] for e in episodes])
    states = recipe.states(episodes, steps, model_cfg, data_dir)
    actions = torch.stack([e.actions[:steps].float() for e in episodes])
    ntr = len(episodes) - cfg.val_episodes
    if actions.shape[-1] * model_cfg.frameskip != model_cfg.action_dim:
        raise WMError(
            f"{data_dir}: actions have {actions.shape[-1]} dimensions; the model expects "
            f"{model_cfg.action_dim // model_cfg.frameskip} per recorded step (action_dim / frameskip)"
        )
    if model_cfg.action_mean is None:  # normalise by the training split; stored in config.json
        flat = actions[:ntr].reshape(-1, actions.shape[-1]).double()
        model_cfg = dataclasses.replace(
            model_cfg,
            action_mean=tuple(float(x) for x in flat.mean(0)),
            action_std=tuple(float(x) for x in flat.std(0).clamp_min(1e-6)),
        )
    k = model_cfg.frameskip
    train_w = Windows(frames[:ntr], actions[:ntr], cfg.window, k, None if states is None else states[:ntr])
    val_w = Windows(frames[ntr:], actions[ntr:], cfg.window, k, None if states is None else states[ntr:])
    gv = torch.Generator().manual_seed(cfg.seed + 1)
    val_batches = [recipe.inputs(model_cfg, *val_w.sample(cfg.batch, gv), dev) for _ in range(4)]

    model = recipe.build(model_cfg, cfg.encoder_from).to(dev)
    out.mkdir(parents=True, exist_ok=True)  # only once the input is known to be usable
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    ckpt = out / "checkpoint.pt"
    start, history = _resume(ckpt, model, opt, g, dev, model_cfg, cfg, log) if ckpt.exists() else (0, [])

    n_params = sum(p.numel() for p in model.parameters())
    log(f"training {n_params / 1e6:.2f}M parameters on {ntr} episodes ({cfg.val_episodes} held out), device {dev}")
    t0 = time.perf_counter()
    mean_loss = history[-1]["train_loss"] if history else None  # the running average goes on
    for step in range(start, cfg.steps):
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, cfg)
        window = train_w.sample(cfg.batch, g)
        model.train()
        losses = recipe.loss(model, recipe.inputs(model_cfg, *window, dev, generator=g), generator=g)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        v = float(losses["total"].detach())
        mean_loss = v if mean_loss is None else 0.98 * mean_loss + 0.02 * v
        done = step + 1
        over_time = cfg.time_limit_min and (time.perf_counter() - t0) > 60 * cfg.time_limit_min
        validate = done % cfg.val_every == 0 or done == cfg.steps or over_time
        if done % cfg.log_every == 0 and not validate:  # a validation step prints its own line
            rate = (done - start) / (time.perf_counter() - t0)
            log(f"step {done}/{cfg.steps}  train {mean_loss:.4f}  {rate:.2f} it/s  eta {(cfg.steps - done) / rate / 60:.1f} min")
        if validate:
            val = _validate(recipe, model, val_batches)
            history.append({"step": done, "train_loss": mean_loss, **val, "elapsed_s": time.perf_counter() - t0})
            rate = (done - start) / (time.perf_counter() - t0)
            eta = (cfg.steps - done) / max(rate, 1e-9)
            log(
                f"step {done}/{cfg.steps}  train {mean_loss:.4f}  val pred {val['val_pred']:.4f} "
                f"sigreg {val['val_sigreg']:.3f} cos {val['val_cos']:.3f}"
                + (f" skill {val['val_skill']:+.3f}" if "val_skill" in val else "")
                + (f" inverse {val['val_inverse']:.3f}" if "val_inverse" in val else "")
                + f"  {rate:.2f} it/s  eta {eta / 60:.1f} min"
            )
            _save_checkpoint(ckpt, model, opt, g, done, history, model_cfg, cfg)
            write_replace(out / "train_log.json", json.dumps(history, indent=1).encode())
        if cfg.snapshot_every and done % cfg.snapshot_every == 0 and done < cfg.steps:
            gs = torch.Generator().manual_seed(cfg.seed + 3 + done)  # per snapshot: a resumed run writes the same
            _snapshot(recipe, model, out / "snapshots" / f"step-{done:06d}",
                      lambda: recipe.inputs(model_cfg, *train_w.sample(cfg.batch, gs), dev))
            log(f"snapshot of step {done} saved in {out / 'snapshots'}")
        if over_time:
            log(f"time limit of {cfg.time_limit_min} min reached at step {done}")
            break

    gb = torch.Generator().manual_seed(cfg.seed + 2)
    recipe.finish(model, lambda: recipe.inputs(model_cfg, *train_w.sample(cfg.batch, gb), dev))
    model.eval()
    recipe.save(model.cpu(), final)
    log(f"saved {final}")
    return final


def _snapshot(recipe: Recipe, model: nn.Module, directory: Path, sample: Callable[[], tuple[Tensor, ...]]) -> None:
    """The model as it would be finished now (a copy: ``finish`` on it, then ``save``), for studies of a
    run's checkpoints (e.g. scripts/drift_vs_control.py); the training model and its RNGs are untouched."""
    if (directory / "model.safetensors").exists():
        return  # written before a resume: the same weights
    twin = copy.deepcopy(model)
    rng = torch.get_rng_state()
    recipe.finish(twin, sample)
    torch.set_rng_state(rng)
    twin.eval()
    recipe.save(twin.cpu(), directory)


def _device(device: str) -> torch.device:
    """``auto`` (cuda if available, else cpu) or a torch device string that this machine has."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise WMError(f"device {device!r} is not a torch device ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WMError(f"device {device!r}: CUDA is not available here; use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise WMError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


@torch.no_grad()
def _validate(recipe: Recipe, model: nn.Module, batches: list[tuple[Tensor, ...]]) -> dict[str, float]:
    """The recipe's held-out means, with the training-mode BatchNorm statistics of each batch itself
    (the running averages are only fixed at the end) and a deterministic (dropout-free) model."""
    model.train()  # BN in batch-statistics mode, no parameter changes under no_grad
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    return recipe.validate(model, batches)


def _resume(ckpt: Path, model, opt, g: torch.Generator, dev: torch.device, model_cfg, cfg: TrainConfig,
            log) -> tuple[int, list[dict]]:
    """Restore model, optimiser and RNG states from the resume checkpoint -> (step, history)."""
    # on the CPU: the RNG states must stay CPU ByteTensors; load_state_dict moves the rest
    # weights_only: tensors and plain containers only; a pickle that would run code is refused
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the file's fault
        raise WMError(f"{read_error(ckpt, e, 'the resume checkpoint')}; delete it to start afresh, "
                      "or use another --out") from None
    want = ("model_config", "train_config", "model", "opt", "rng", "torch_rng", "step", "history")
    if not isinstance(state, dict) or any(k not in state for k in want):
        found = sorted(map(str, state))[:20] if isinstance(state, dict) else type(state).__name__
        raise WMError(f"{ckpt}: not a wmcore resume checkpoint (expected keys {list(want)}, found {found}); "
                      "delete it to start afresh, or use another --out")
    if state["model_config"] != dataclasses.asdict(model_cfg) or state["train_config"] != dataclasses.asdict(cfg):
        raise WMError(f"{ckpt}: was written with other settings; use the same command or another --out")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    g.set_state(state["rng"])
    torch.set_rng_state(state["torch_rng"])  # dropout draws from the global generator
    if dev.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], dev)  # ... which is the CUDA one on a GPU
    log(f"resuming from step {int(state['step'])}")
    return int(state["step"]), json.loads(state["history"])


def _save_checkpoint(path: Path, model, opt, g, step, history, model_cfg, cfg) -> None:
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "rng": g.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(next(model.parameters()).device)
        if next(model.parameters()).is_cuda else None,
        "step": step,
        "history": json.dumps(history),
        "model_config": dataclasses.asdict(model_cfg),
        "train_config": dataclasses.asdict(cfg),
    }
    # the checkpoint is ours to replace: written beside it, then renamed over it (a crash mid-write
    # leaves the old one, never a partial file), with the umask's mode
    write_replace(path, lambda f: torch.save(state, f))
