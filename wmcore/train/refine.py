"""Training of the refinement thinking model (``wmcore.models.refine``; ``make train-refine``).

The base keypoint model (the embedded pusht-wm: encoder and predictor) is frozen; only the weight-shared
refinement block trains. Each batch draws one budget K from 2..``train_max_think`` (K = 1 is the
frozen base, and is scored at every K as its first depth) and rolls the
predictor out ``rollout_steps`` model steps from held windows of the training episodes, refining every
step K - 1 times; the loss is the MSE against the true latents at every depth of every step (so each
K up to ``train_max_think`` is trained for, and a larger K is extrapolation). Resumable, as the
keypoint stages are (``out/refine.pt``); the held-out episodes are the base recipe's (the last
``val_episodes``), validated at K = 1, 2, 4.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..errors import WMError
from ..models.keypoint import load_checkpoint as load_keypoint
from ..models.refine import RefineConfig, RefineModel, save_pretrained
from .keypoint import KeypointTrainConfig, _stage, _units, _windows, read_extension_recipe, start_extension, start_run

__all__ = ["read_refine_recipe", "train_refine"]


def read_refine_recipe(path: str) -> tuple[dict, KeypointTrainConfig]:
    """``{"model": {RefineConfig fields but base}, "train": {KeypointTrainConfig fields}}``."""
    return read_extension_recipe(path, RefineConfig)


def train_refine(dirs: Sequence[str], out_dir: str, base_dir: str, model_fields: dict, cfg: KeypointTrainConfig,
                 log: Callable[[str], None] = print, limit: int | None = None) -> Path:
    """Train the block of a refinement model over the frozen keypoint model in ``base_dir``, into
    ``out_dir`` (resumable); returns the finished model's directory ``out_dir/model``."""
    out, final = start_run(out_dir, cfg)
    base = load_keypoint(base_dir)
    rcfg = RefineConfig(base=base.cfg.to_json(), **model_fields)
    if rcfg.train_max_think > rcfg.max_think:
        raise WMError(f"train_max_think {rcfg.train_max_think} > max_think {rcfg.max_think}")
    model, data = start_extension(RefineModel, rcfg, base, dirs, cfg, log, limit, "refine")
    e_all = len(data.ids)
    k, n = base.cfg.frameskip, base.cfg.rollout_steps
    steps = data.actions.shape[1]
    if steps < k * n + 1:
        raise WMError(f"episodes have {steps} steps; a window of {n} model steps at frameskip {k} needs {k * n + 1}")
    ntr = e_all - cfg.val_episodes
    out.mkdir(parents=True, exist_ok=True)
    key = {"model": rcfg.to_json(), "train": dataclasses.asdict(cfg), "data": data.ids, "base": str(base_dir)}
    with torch.no_grad():
        z = torch.stack([model.base.encoder(data.frames[i].permute(0, 3, 1, 2).float() / 255.0) for i in range(e_all)])
    del data.frames
    starts = steps - k * n + 1

    def rollout(zw: Tensor, blocks: Tensor, depth: int) -> tuple[Tensor, Tensor]:
        """Open loop at budget ``depth``: (MSE over every step and every depth, the last step's final guess)."""
        cur, errs = zw[:, 0], []
        for i in range(n):
            guesses = model.trace(cur, blocks[:, i], depth)
            errs += [(g - zw[:, i + 1]).pow(2).mean() for g in guesses]
            cur = guesses[-1]
        return torch.stack(errs).mean(), cur

    if rcfg.train_max_think < 2:
        raise WMError(f"train_max_think {rcfg.train_max_think}: the block trains at budgets 2..train_max_think; use >= 2")

    def loss(g: torch.Generator) -> Tensor:
        # K = 1 is the frozen base (nothing of it trains); every drawn K >= 2 also scores depth 1 and the
        # depths between, so the budgets 1..train_max_think are all in the loss
        depth = int(torch.randint(2, rcfg.train_max_think + 1, (1,), generator=g))
        e = torch.randint(0, ntr, (cfg.predictor_batch,), generator=g)
        s = torch.randint(0, starts, (cfg.predictor_batch,), generator=g)
        return rollout(*_windows(z, data.actions, e, s, n, k), depth)[0]

    gv = torch.Generator().manual_seed(cfg.seed + 1)
    ve = torch.randint(ntr, e_all, (512,), generator=gv)
    vs = torch.randint(0, starts, (512,), generator=gv)

    def validate() -> dict:
        zw, blocks = _windows(z, data.actions, ve, vs, n, k)
        res = {}
        for depth in (1, 2, 4):
            _, last = rollout(zw, blocks, depth)
            err = (last - zw[:, -1]).reshape(len(ve), -1, 2)
            res[f"val_open_block_units_k{depth}"] = _units(err[:, 1:])
        res["gate"] = float(torch.tanh(model.refine.gate))
        return res

    _stage("refine", out, model.refine, cfg.predictor_steps, cfg.predictor_lr, cfg, key, loss, validate, log)
    model.eval()
    save_pretrained(model.cpu(), final)
    log(f"saved {final}")
    return final
