"""The recipe that trains the embedded models: a JEPA from pixels on PushT episodes.

``--arch lewm`` (the default model pusht-lewm: LeWorldModel, CLS embedding, MSE + SIGReg) or
``--arch ac-tiny`` (a small V-JEPA 2-AC, patch tokens, L1 + SIGReg, optionally inverse dynamics; the
embedded pusht-ac-tiny takes two runs, the second on the first's frozen encoder (``--encoder-from``):
``make train-ac-tiny``, and ``wmcore.models.ac_tiny`` says why).

``wmcore train --data DIR --out DIR`` (or ``python -m wmcore.train``). Seeded, resumable (a checkpoint
every ``--val-every`` steps; rerunning the same command continues), a held-out validation curve, a
progress line per validation, BatchNorm statistics recalibrated at the end (the running averages
lag the weights and would bias evaluation), then ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .data.episodes import load_episodes
from .errors import WMError, run_command
from .fsio import write_replace
from .models import ac_tiny
from .models.checkpoint import read_error
from .models.ac_tiny import ACJEPA, ACTinyConfig
from .models.lewm import LeWMConfig, LeWorldModel, recalibrate_bn, save_pretrained
from .models.vjepa2_ac import ac_preprocess

ARCHS = {"lewm": LeWMConfig, "ac-tiny": ACTinyConfig}
TRAIN_HELP = {"encoder_from": "an ac-tiny model directory whose encoder weights start this run (its encoder "
                              "config must match); with freeze_encoder in --model-config, a predictor-only stage"}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the model's own live in LeWMConfig."""

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
    encoder_from: str = ""  # ac-tiny: a model directory whose encoder starts this run (see TRAIN_HELP)

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
        for name in ("weight_decay", "warmup", "seed", "threads", "time_limit_min"):
            if getattr(self, name) < 0:
                raise bad(name, "a value >= 0")


class Windows:
    """Training windows: ``window`` frames ``frameskip`` recorded steps apart, at any start offset.

    frames uint8 ``[E, T+1, ...]`` (one frame's layout is the model's business), actions ``[E, T, A]``
    and optional states ``[E, T+1, S]``; a window yields pixels ``[W, ...]``, action blocks
    ``[W, frameskip * A]`` (block t is the k recorded actions that lead from window frame t to t+1;
    the last block is unused by the loss) and states ``[W, S]`` (or None).
    """

    def __init__(self, frames: torch.Tensor, actions: torch.Tensor, window: int, frameskip: int,
                 states: torch.Tensor | None = None):
        self.frames, self.actions, self.window, self.k, self.states = frames, actions, window, frameskip, states
        span = (window - 1) * frameskip + frameskip  # last block needs k actions after the last frame
        self.starts = actions.shape[1] - span + 1
        if self.starts < 1:
            raise WMError(
                f"episodes have {actions.shape[1]} steps; a window of {window} model steps at frameskip "
                f"{frameskip} needs {span}: generate longer episodes"
            )

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        e = torch.randint(0, self.frames.shape[0], (n,), generator=g)
        s = torch.randint(0, self.starts, (n,), generator=g)
        return self.take(e, s)

    def take(self, e: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        idx = s[:, None] + self.k * torch.arange(self.window)  # [n, W] frame indices
        pix = self.frames[e[:, None], idx]  # [n, W, ...] uint8
        aidx = idx[..., None] + torch.arange(self.k)  # [n, W, k]
        act = self.actions[e[:, None, None], aidx]  # [n, W, k, A]
        st = None if self.states is None else self.states[e[:, None], idx]  # [n, W, S]
        return pix, act.flatten(2), st


def to_model_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, 3, size, size]`` (antialiased bilinear resize)."""
    x = frames.permute(0, 3, 1, 2).float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train(data_dir: str, out_dir: str, model_cfg: LeWMConfig | ACTinyConfig, cfg: TrainConfig, device: str = "auto",
          log=print) -> Path:
    """Train, checkpointing into ``out_dir``; returns the directory of the finished model.
    The architecture follows the config's type: LeWMConfig or ACTinyConfig."""
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
    ac = isinstance(model_cfg, ACTinyConfig)
    steps = min(e.steps for e in episodes)
    states = None
    if ac:  # frames stay as recorded: ac_preprocess (the official transform) runs per batch
        frames = torch.stack([e.frames[: steps + 1] for e in episodes])
        states = _ac_train_states(episodes, steps, model_cfg, data_dir)
    else:
        frames = torch.stack([to_model_frames(e.frames[: steps + 1], model_cfg.image_size) for e in episodes])
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
    amean = torch.tensor(model_cfg.action_mean).repeat(k)
    astd = torch.tensor(model_cfg.action_std).repeat(k)
    train_w = Windows(frames[:ntr], actions[:ntr], cfg.window, k, None if states is None else states[:ntr])
    val_w = Windows(frames[ntr:], actions[ntr:], cfg.window, k, None if states is None else states[ntr:])
    gv = torch.Generator().manual_seed(cfg.seed + 1)
    val_batches = [(p, (a - amean) / astd, st) for p, a, st in (val_w.sample(cfg.batch, gv) for _ in range(4))]

    model = ACJEPA(model_cfg) if ac else LeWorldModel(model_cfg)
    if cfg.encoder_from:
        if not ac:
            raise WMError("--encoder-from: only --arch ac-tiny starts from another model's encoder")
        ac_tiny.copy_encoder(model, cfg.encoder_from)
    model = model.to(dev)
    out.mkdir(parents=True, exist_ok=True)  # only once the input is known to be usable
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    start, history = 0, []
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
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
        start, history = int(state["step"]), json.loads(state["history"])
        log(f"resuming from step {start}")

    n_params = sum(p.numel() for p in model.parameters())
    log(f"training {n_params / 1e6:.2f}M parameters on {ntr} episodes ({cfg.val_episodes} held out), device {dev}")
    t0, step = time.perf_counter(), start
    mean_loss = history[-1]["train_loss"] if history else None  # the running average goes on
    for step in range(start, cfg.steps):
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, cfg)
        pix, act, st = train_w.sample(cfg.batch, g)
        model.train()
        if ac:
            mix = torch.rand(cfg.batch, generator=g) < model_cfg.state_mix
            losses = model.loss(_ac_pixels(pix, dev, model_cfg), ((act - amean) / astd).to(dev),
                                _ac_states(st, act, model_cfg, mix).to(dev), generator=g)
        else:
            losses = model.loss(_pixels(pix, dev, model_cfg), ((act - amean) / astd).to(dev), generator=g)
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
            val = _validate(model, val_batches, dev, model_cfg)
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
        if over_time:
            log(f"time limit of {cfg.time_limit_min} min reached at step {done}")
            break

    if ac:
        model.eval()
        ac_tiny.save_pretrained(model.cpu(), final)
    else:
        gb = torch.Generator().manual_seed(cfg.seed + 2)
        calib = [train_w.sample(cfg.batch, gb)[:2] for _ in range(50)]
        recalibrate_bn(model, [(_pixels(p, dev, model_cfg), ((a - amean) / astd).to(dev)) for p, a in calib])
        model.eval()
        save_pretrained(model.cpu(), final)
    log(f"saved {final}")
    return final


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


def _pixels(pix: torch.Tensor, dev: torch.device, cfg: LeWMConfig) -> torch.Tensor:
    """uint8 ``[B, W, 3, S, S]`` -> normalised float on the device."""
    mean = torch.tensor(cfg.image_mean, device=dev).view(1, 1, 3, 1, 1)
    std = torch.tensor(cfg.image_std, device=dev).view(1, 1, 3, 1, 1)
    return (pix.to(dev).float() / 255 - mean) / std


def _ac_train_states(episodes, steps: int, cfg: ACTinyConfig, data_dir: str) -> torch.Tensor:
    """The episodes' states ``[E, steps+1, S]``; the AC recipe reads the agent's position from them."""
    if any(e.states is None for e in episodes):
        raise WMError(
            f"{data_dir}: episodes without states; --arch ac-tiny reads the agent's position (state columns "
            f"{list(cfg.state_columns)}) of every frame: use episodes that record states (wmcore make-fixtures pusht)"
        )
    width = min(int(e.states.shape[1]) for e in episodes)
    if max(cfg.state_columns) >= width:
        raise WMError(f"{data_dir}: states have {width} columns; state_columns {list(cfg.state_columns)} do not fit")
    return torch.stack([e.states[: steps + 1, :width].float() for e in episodes])


def _ac_pixels(pix: torch.Tensor, dev: torch.device, cfg: ACTinyConfig) -> torch.Tensor:
    """uint8 ``[B, W, H, W', 3]`` (as recorded) -> the official AC transform ``[B, W, 3, S, S]`` on the device."""
    return ac_preprocess(pix.to(dev), cfg.image_size)


def _ac_states(st: torch.Tensor, act: torch.Tensor, cfg: ACTinyConfig, mix: torch.Tensor | None) -> torch.Tensor:
    """The predictor's state input for windows: states ``[n, W, S]`` as recorded, or (where ``mix``)
    with the agent's position after frame 0 propagated from the raw actions ``[n, W, k*A]`` as open
    loop does it (``ac_tiny.propagate_position``)."""
    if mix is not None and bool(mix.any()):
        prop = torch.cat([st[:, :1], ac_tiny.propagate_position(st[:, 1:], act[:, :-1], cfg)], 1)
        st = torch.where(mix[:, None, None], prop, st)
    return ac_tiny.state_tokens(st, cfg)


@torch.no_grad()
def _validate(model: LeWorldModel | ACJEPA, batches, dev, cfg: LeWMConfig | ACTinyConfig) -> dict:
    """Held-out loss terms and teacher-forced next-embedding cosine, with the training-mode BN
    statistics of the batch itself (the running averages are only fixed at the end). The AC model
    reads the recorded states here."""
    model.train()  # BN in batch-statistics mode, no parameter changes under no_grad
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()  # but a deterministic predictor
    pred = sig = cos = skill = inverse = 0.0
    for pix, act, st in batches:
        if isinstance(cfg, ACTinyConfig):
            losses = model.loss(_ac_pixels(pix, dev, cfg), act.to(dev), _ac_states(st, act, cfg, None).to(dev))
            pred, sig, cos = pred + float(losses["pred"]), sig + float(losses["sigreg"]), cos + float(losses["cos"])
            skill += float(losses["skill"])
            inverse += float(losses.get("inverse", 0.0))
            continue
        p = _pixels(pix, dev, cfg)
        losses = model.loss(p, act.to(dev))
        emb = model.embed(p)
        nxt = model.predict_next(emb, act.to(dev))
        cos += float(torch.nn.functional.cosine_similarity(nxt[:, :-1], emb[:, 1:], dim=-1).mean())
        pred += float(losses["pred"])
        sig += float(losses["sigreg"])
    n = len(batches)
    out = {"val_pred": pred / n, "val_sigreg": sig / n, "val_cos": cos / n}
    if isinstance(cfg, ACTinyConfig):  # MSE skill against copying the previous frame
        out["val_skill"] = skill / n
        if cfg.inverse_dynamics:
            out["val_inverse"] = inverse / n
    return out


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wmcore train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="directory of episodes (python -m wmcore.data.pusht)")
    p.add_argument("--out", required=True, help="training directory: checkpoint, log, and model/ at the end")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0, ...")
    for f in dataclasses.fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"(default {f.default!r})" + (f": {TRAIN_HELP[f.name]}" if f.name in TRAIN_HELP else ""))
    p.add_argument("--arch", choices=sorted(ARCHS), default="lewm",
                   help="lewm: LeWorldModel (pusht-lewm); ac-tiny: small V-JEPA 2-AC (default lewm)")
    p.add_argument("--name", help="the model's name in reports and plots (default: the architecture's)")
    p.add_argument("--model-config", help="JSON file of the architecture's config fields (LeWMConfig, ACTinyConfig)")
    return p


def _model_overrides(path: str, cls=LeWMConfig) -> dict:
    """The ``--model-config`` JSON: an object of ``cls`` fields."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WMError(f"--model-config {path}: not a readable JSON file ({e})") from None
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known) if isinstance(d, dict) else None
    if unknown is None or unknown:
        raise WMError(
            f"--model-config {path}: expected a JSON object of {cls.__name__} fields; "
            f"unknown: {unknown if unknown is not None else type(d).__name__}; known: {sorted(known)}"
        )
    return d


def main(argv: list[str] | None = None) -> int:
    """``wmcore train``; exit codes as in ``wmcore.errors``."""
    return run_command("wmcore train", lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    tcfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    cls = ARCHS[args.arch]
    overrides = _model_overrides(args.model_config, cls) if args.model_config else {}
    if args.name:
        overrides["name"] = args.name
    try:
        mcfg = cls(**overrides)
    except TypeError as e:  # a JSON value of the wrong type that a comparison in the config's checks trips on
        raise WMError(f"--model-config {args.model_config}: a value has the wrong type ({e})") from None
    train(args.data, args.out, mcfg, tcfg, device=args.device, log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
