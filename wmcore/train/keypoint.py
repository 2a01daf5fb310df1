"""The keypoint recipe (``--arch keypoint``, the embedded pusht-wm): two stages on one pass over the data.

1. Encoder: frames -> the agent's position and three body points of the T (``wmcore.models.keypoint``),
   fitted by MSE to the points computed from the recorded simulator state (a privileged training
   signal: the model reads only frames at test time).
2. Predictor, on the frozen encoder's latents of every recorded frame: the one-step error (teacher
   forced) plus the open-loop error over ``rollout_steps`` model steps from the first frame of a
   window, exactly as the planner rolls out (JEPA-style: the targets are the encoder's latents).

Episodes are streamed once and kept resized to the encoder's input size (uint8), so 1 000 episodes
of 300 steps take ~3.7 GB at 64 px. Each stage checkpoints into ``OUT/<stage>.pt`` every
``val_every`` steps and resumes from it when the same command is rerun; a finished stage is not
redone. The same seed, data and thread count give the same weights bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from ..data.episodes import iter_episodes, read_index
from ..errors import WMError
from ..fsio import write_replace
from ..models.checkpoint import read_error
from ..models.keypoint import SCALE, KeypointConfig, KeypointModel, keypoints_from_state, load_checkpoint, pixels, save_pretrained

__all__ = ["KeypointData", "KeypointTrainConfig", "load_data", "recipe_document", "start_run", "train_keypoint"]


@dataclass(frozen=True)
class KeypointTrainConfig:
    """Optimisation settings of both stages (steps, batch sizes, learning rates) and the split."""

    encoder_steps: int = 4000
    encoder_batch: int = 64
    encoder_lr: float = 2e-3
    predictor_steps: int = 12000
    predictor_batch: int = 256
    predictor_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    val_episodes: int = 20  # the last episodes, never trained on
    min_episodes: int = 100  # fewer is refused: the recipe's figures need a data set this large at least
    val_every: int = 500
    seed: int = 0
    threads: int = 0  # 0 = torch's default
    snapshot_every: int = 0  # 0 = none; else the finished model every this many predictor steps, in snapshots/

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise WMError(f"KeypointTrainConfig.{f.name}: expected a number, found {v!r}")
            if v < 0 or (v == 0 and f.name not in ("weight_decay", "warmup", "seed", "threads", "snapshot_every")):
                raise WMError(f"KeypointTrainConfig.{f.name}: expected a positive value, found {v!r}")


@dataclass
class KeypointData:
    """A training set in memory: frames uint8 ``[E, T+1, S, S, 3]`` (resized), states ``[E, T+1, 5]``,
    actions ``[E, T, A]``, episode ids."""

    frames: Tensor
    states: Tensor
    actions: Tensor
    ids: list[str]


def load_data(dirs: Sequence[str], cfg: KeypointConfig, log: Callable[[str], None] = print,
              limit: int | None = None) -> KeypointData:
    """Stream the episodes of ``dirs`` (in order; the first ``limit``) into a ``KeypointData`` at the
    encoder's input size."""
    entries = [e for d in dirs for e in read_index(d)["episodes"]][:limit]
    total = len(entries)
    steps = min(int(e["steps"]) for e in entries) if total else 0
    s = cfg.image_size
    frames = torch.empty((total, steps + 1, s, s, 3), dtype=torch.uint8)
    states = torch.empty((total, steps + 1, 5))
    actions = torch.empty((total, steps, cfg.action_width))
    ids: list[str] = []
    t0 = time.perf_counter()
    for d in dirs:
        for ep in iter_episodes(d, limit=None if limit is None else limit - len(ids)):
            i = len(ids)
            if ep.states is None or ep.states.shape[-1] < 5:
                raise WMError(f"{ep.id}: no 5-d PushT states; the keypoint recipe fits its encoder to the recorded "
                              "simulator state: use episodes from `wmcore make-fixtures pusht`")
            if ep.actions.shape[-1] != cfg.action_width:
                raise WMError(f"{ep.id}: actions have {ep.actions.shape[-1]} dims, the model expects {cfg.action_width}")
            frames[i] = (pixels(ep.frames[: steps + 1], s) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
            states[i] = ep.states[: steps + 1, :5]
            actions[i] = ep.actions[:steps]
            ids.append(ep.id)
            if len(ids) % 100 == 0:
                log(f"read {len(ids)}/{total} episodes ({time.perf_counter() - t0:.0f} s)")
    return KeypointData(frames, states, actions, ids)


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _save(path: Path, module, opt, g, step: int, history: list, key: dict) -> None:
    state = {"model": module.state_dict(), "opt": opt.state_dict(), "rng": g.get_state(),
             "torch_rng": torch.get_rng_state(), "step": step, "history": json.dumps(history), "key": json.dumps(key)}
    write_replace(path, lambda f: torch.save(state, f))


def _resume(path: Path, module, opt, g, key: dict, log) -> tuple[int, list]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the file's fault
        raise WMError(f"{read_error(path, e, 'the resume checkpoint')}; delete it to start afresh, or use another --out") from None
    if not isinstance(state, dict) or state.get("key") != json.dumps(key):
        raise WMError(f"{path}: was written with other settings or data; use the same command or another --out")
    module.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    g.set_state(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    log(f"{path.stem}: resuming from step {int(state['step'])}")
    return int(state["step"]), json.loads(state["history"])


def _stage(name: str, out: Path, module, steps: int, lr: float, cfg: KeypointTrainConfig, key: dict,
           batch_loss: Callable[[torch.Generator], Tensor], validate: Callable[[], dict], log,
           after: Callable[[int], None] | None = None) -> list:
    """One stage's resumable loop: AdamW, warm-up + cosine, a validation and a checkpoint every val_every."""
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed + (0 if name == "encoder" else 1000))
    path = out / f"{name}.pt"
    start, history = _resume(path, module, opt, g, key, log) if path.exists() else (0, [])
    t0 = time.perf_counter()
    for step in range(start, steps):
        for grp in opt.param_groups:
            grp["lr"] = _lr(step, steps, lr, cfg.warmup)
        module.train()
        loss = batch_loss(g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        done = step + 1
        if done % cfg.val_every == 0 or done == steps:
            module.eval()
            with torch.no_grad():
                val = validate()
            rate = (done - start) / (time.perf_counter() - t0)
            history.append({"step": done, "loss": float(loss.detach()), **val, "elapsed_s": time.perf_counter() - t0})
            _save(path, module, opt, g, done, history, key)
            log(f"{name} step {done}/{steps}  loss {float(loss.detach()):.5f}  "
                + "  ".join(f"{k} {v:.2f}" for k, v in val.items())
                + f"  {rate:.1f} it/s  eta {(steps - done) / max(rate, 1e-9) / 60:.1f} min")
        if after is not None:
            after(done)
    return history


def start_run(out_dir: str, cfg: KeypointTrainConfig) -> tuple[Path, Path]:
    """``(out, out/model)`` of a training run; WMError if a finished model is there already. Sets the
    recipe's torch threads."""
    out = Path(out_dir)
    final = out / "model"
    if (final / "model.safetensors").exists():
        raise WMError(f"{final}: a finished model is already there; choose another --out (nothing is overwritten)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return out, final


def _units(err: Tensor) -> float:
    """Root mean square of latent errors ``[..., 2]`` per point, in workspace units."""
    return float(err.pow(2).sum(-1).mean().sqrt() * SCALE)


def _windows(z: Tensor, actions: Tensor, e: Tensor, s: Tensor, n: int, k: int) -> tuple[Tensor, Tensor]:
    """Latents ``[B, n+1, D]`` every ``k`` recorded steps from ``s``, and the action blocks ``[B, n, k*A]``."""
    idx = s[:, None] + k * torch.arange(n + 1)
    aidx = (s[:, None] + k * torch.arange(n))[..., None] + torch.arange(k)
    return z[e[:, None], idx], actions[e[:, None, None], aidx].flatten(2)


def rollout_loss(predictor, z: Tensor, blocks: Tensor) -> tuple[Tensor, Tensor]:
    """Open loop from ``z[:, 0]`` over the blocks ``[B, n, A]`` against ``z[:, 1:]`` ``[B, n, D]``, and the
    teacher-forced one-step error: ``(open-loop MSE, one-step MSE)``."""
    n = blocks.shape[1]
    cur, errs = z[:, 0], []
    for i in range(n):
        cur = predictor(cur, blocks[:, i])
        errs.append((cur - z[:, i + 1]).pow(2).mean())
    one = predictor(z[:, :-1].flatten(0, 1), blocks.flatten(0, 1))
    return torch.stack(errs).mean(), (one - z[:, 1:].flatten(0, 1)).pow(2).mean()


def read_extension_recipe(path: str, config_cls) -> tuple[dict, KeypointTrainConfig]:
    """A recipe of a model trained over a frozen keypoint base (pusht-refine, pusht-thinker):
    ``{"model": {config_cls fields but base}, "train": {KeypointTrainConfig fields}}``."""
    doc = recipe_document(path)
    model, train = doc.get("model", {}), doc.get("train", {})
    known_m = {f.name for f in dataclasses.fields(config_cls)} - {"base"}
    known_t = {f.name for f in dataclasses.fields(KeypointTrainConfig)}
    if not isinstance(model, dict) or set(model) - known_m:
        raise WMError(f"--recipe {path}: \"model\" must be an object of {sorted(known_m)}")
    if not isinstance(train, dict) or set(train) - known_t:
        raise WMError(f"--recipe {path}: \"train\" must be an object of KeypointTrainConfig fields")
    try:
        return model, KeypointTrainConfig(**train)
    except TypeError as e:
        raise WMError(f"--recipe {path}: \"train\": {e}") from None


def start_extension(model_cls, model_cfg, base: KeypointModel, dirs: Sequence[str], cfg: "KeypointTrainConfig",
                    log: Callable[[str], None], limit: int | None, what: str):
    """The prologue of training parts over a frozen keypoint ``base`` (the refine and thinker models):
    ``(model, data)``, the model built under the recipe's seed with the base's weights loaded and
    frozen, the episodes read; WMError if there are too few of them."""
    torch.manual_seed(cfg.seed)
    model = model_cls(model_cfg)
    model.base.load_state_dict(base.state_dict())
    model.base.eval().requires_grad_(False)
    data = load_data(dirs, base.cfg, log, limit=limit)
    need = max(cfg.min_episodes, cfg.val_episodes + 1)
    if len(data.ids) < need:
        raise WMError(f"{', '.join(dirs)}: {len(data.ids)} episodes; the {what} recipe needs at least {need} "
                      f"({cfg.val_episodes} held out)")
    return model, data


def recipe_document(path: str) -> dict:
    """A recipe file's JSON object ``{"model": ..., "train": ..., "comment": ...}``; WMError naming
    ``--recipe`` if it cannot be read or has other keys."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WMError(f"--recipe {path}: not a readable JSON file ({e})") from None
    if not isinstance(doc, dict) or set(doc) - {"model", "train", "comment"}:
        raise WMError(f"--recipe {path}: expected an object with \"model\" and \"train\" (and \"comment\")")
    return doc


def read_recipe(path: str) -> tuple[KeypointConfig, KeypointTrainConfig]:
    """A recipe JSON ``{"model": {KeypointConfig fields}, "train": {KeypointTrainConfig fields}}``."""
    doc = recipe_document(path)
    out = []
    for key, cls in (("model", KeypointConfig), ("train", KeypointTrainConfig)):
        part = doc.get(key, {})
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(part, dict) or set(part) - known:
            raise WMError(f"--recipe {path}: \"{key}\" must be an object of {cls.__name__} fields; unknown: "
                          f"{sorted(set(part) - known) if isinstance(part, dict) else type(part).__name__}")
        try:
            out.append(cls(**part))
        except TypeError as e:
            raise WMError(f"--recipe {path}: \"{key}\": {e}") from None
    return out[0], out[1]


def run_recipe(dirs: Sequence[str], out_dir: str, recipe: str, *, seed: int | None = None, threads: int | None = None,
               episodes: int | None = None, encoder_from: str | None = None, predictor_steps: int | None = None,
               log: Callable[[str], None] = print) -> Path:
    """What ``wmcore train-keypoint`` does: the recipe, its overrides, the data (the first ``episodes``)."""
    model_cfg, cfg = read_recipe(recipe)
    over = {k: v for k, v in (("seed", seed), ("threads", threads), ("predictor_steps", predictor_steps)) if v is not None}
    cfg = dataclasses.replace(cfg, **over) if over else cfg
    if episodes is not None and episodes < 1:
        raise WMError(f"--episodes {episodes}: expected a positive number")
    data = load_data(dirs, model_cfg, log, limit=episodes)
    return train_keypoint(dirs, out_dir, model_cfg, cfg, log, data=data, encoder_from=encoder_from)


def train_keypoint(dirs: Sequence[str], out_dir: str, model_cfg: KeypointConfig, cfg: KeypointTrainConfig,
                   log: Callable[[str], None] = print, data: KeypointData | None = None,
                   encoder_from: str | None = None) -> Path:
    """Train both stages into ``out_dir`` (resumable; with ``encoder_from``, a keypoint model directory,
    its encoder is taken and only the predictor trained); returns the finished model's directory."""
    out, final = start_run(out_dir, cfg)
    data = data if data is not None else load_data(dirs, model_cfg, log)
    e_all = len(data.ids)
    if e_all < max(cfg.min_episodes, cfg.val_episodes + 1):
        raise WMError(f"{', '.join(dirs)}: {e_all} episodes; the keypoint recipe needs at least "
                      f"{max(cfg.min_episodes, cfg.val_episodes + 1)} ({cfg.val_episodes} held out); generate more "
                      "(wmcore make-fixtures pusht --episodes N)")
    k, n = model_cfg.frameskip, model_cfg.rollout_steps
    steps = data.actions.shape[1]
    if steps < k * n + 1:
        raise WMError(f"episodes have {steps} steps; a window of {n} model steps at frameskip {k} needs {k * n + 1}")
    ntr = e_all - cfg.val_episodes
    torch.manual_seed(cfg.seed)
    model = KeypointModel(model_cfg)
    out.mkdir(parents=True, exist_ok=True)
    key = {"model": model_cfg.to_json(), "train": dataclasses.asdict(cfg), "data": data.ids,
           "encoder_from": encoder_from or ""}
    targets = keypoints_from_state(data.states.double(), model_cfg).float()  # [E, T+1, D]
    frames_per_ep = data.frames.shape[1]

    def to_pix(x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2).float() / 255.0

    def enc_loss(g: torch.Generator) -> Tensor:
        e = torch.randint(0, ntr, (cfg.encoder_batch,), generator=g)
        t = torch.randint(0, frames_per_ep, (cfg.encoder_batch,), generator=g)
        return F.mse_loss(model.encoder(to_pix(data.frames[e, t])), targets[e, t])

    gv = torch.Generator().manual_seed(cfg.seed + 1)
    ve = torch.randint(ntr, e_all, (512,), generator=gv)
    vt = torch.randint(0, frames_per_ep, (512,), generator=gv)

    def enc_val() -> dict:
        err = (model.encoder(to_pix(data.frames[ve, vt])) - targets[ve, vt]).reshape(len(ve), -1, 2)
        return {"val_agent_units": _units(err[:, 0]), "val_block_units": _units(err[:, 1:])}

    if encoder_from:
        src = load_checkpoint(encoder_from)
        if src.cfg.image_size != model_cfg.image_size or src.cfg.channels != model_cfg.channels \
                or src.cfg.heatmaps != model_cfg.heatmaps or src.cfg.body_points != model_cfg.body_points:
            raise WMError(f"--encoder-from {encoder_from}: its encoder config differs from the recipe's")
        model.encoder.load_state_dict(src.encoder.state_dict())
        with torch.no_grad():
            log(f"encoder from {encoder_from}: " + "  ".join(f"{k} {v:.2f}" for k, v in enc_val().items()))
    else:
        _stage("encoder", out, model.encoder, cfg.encoder_steps, cfg.encoder_lr, cfg, key, enc_loss, enc_val, log)
    model.encoder.eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.stack([model.encoder(to_pix(data.frames[i])) for i in range(e_all)])  # [E, T+1, D]
    starts = steps - k * n + 1

    def pred_loss(g: torch.Generator) -> Tensor:
        e = torch.randint(0, ntr, (cfg.predictor_batch,), generator=g)
        s = torch.randint(0, starts, (cfg.predictor_batch,), generator=g)
        open_l, one = rollout_loss(model.predictor, *_windows(z, data.actions, e, s, n, k))
        return open_l + one

    vs = torch.randint(0, starts, (512,), generator=gv)

    def pred_val() -> dict:
        zw, blocks = _windows(z, data.actions, ve, vs, n, k)
        cur = zw[:, 0]
        for i in range(n):
            cur = model.predictor(cur, blocks[:, i])
        err = (cur - zw[:, -1]).reshape(len(ve), -1, 2)
        copy = (zw[:, 0] - zw[:, -1]).reshape(len(ve), -1, 2)
        return {"val_open_agent_units": _units(err[:, 0]), "val_open_block_units": _units(err[:, 1:]),
                "copy_block_units": _units(copy[:, 1:])}

    def snapshot(done: int) -> None:
        d = out / "snapshots" / f"step-{done:06d}"
        if cfg.snapshot_every and done % cfg.snapshot_every == 0 and done < cfg.predictor_steps \
                and not (d / "model.safetensors").exists():
            save_pretrained(copy.deepcopy(model).cpu().eval(), d)
            log(f"snapshot of predictor step {done} saved in {d}")

    _stage("predictor", out, model.predictor, cfg.predictor_steps, cfg.predictor_lr, cfg, key, pred_loss, pred_val, log,
           snapshot)
    model.eval()
    save_pretrained(model.cpu(), final)
    log(f"saved {final}")
    return final
