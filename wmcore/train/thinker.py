"""Training of the ThinkJEPA-style thinker model (``wmcore.models.thinker``; ``make train-thinker``).

The base keypoint model (the embedded pusht-wm: encoder and predictor) is frozen; the thinker and the
FiLM fusion train. Each batch draws a budget K from 2..``train_max_think`` (K - 1 sparse past frames;
the control, ``past = false``, reads the current frame at every step) and how much real history the
windows hold before their start, H from 0..``max_context - 1`` model steps: as the harness gives it,
from a lone start frame (open loop from frame 0: the thinker reads the model's own predictions) to a
full window of observed frames (a planner that remembers what it saw). The predictor rolls out
``rollout_steps`` model steps open loop, each prediction appended to the history the thinker reads;
the loss is the MSE against the true latents at every step. Resumable (``out/thinker.pt``); the
held-out episodes are the recipe's last ``val_episodes``, validated at K = 1, 2, 4, 8 with no real
history and with a full one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..errors import WMError
from ..models.keypoint import load_checkpoint as load_keypoint
from ..models.thinker import ThinkerConfig, ThinkerModel, save_pretrained
from .keypoint import KeypointTrainConfig, _stage, _units, read_extension_recipe, start_extension, start_run

__all__ = ["read_thinker_recipe", "train_thinker"]

ROLLOUT_STEPS = 8  # model steps per training window: long enough that predictions enter the thinker's history


def read_thinker_recipe(path: str) -> tuple[dict, KeypointTrainConfig]:
    """``{"model": {ThinkerConfig fields but base}, "train": {KeypointTrainConfig fields}}``."""
    return read_extension_recipe(path, ThinkerConfig)


def rollout(model: ThinkerModel, zw: Tensor, blocks: Tensor, h: int, k: int) -> Tensor:
    """Open loop over ``blocks [B, n, A]`` from the window ``zw [B, h + 1 + n, D]`` whose first h + 1
    latents are real (the history, then the start): the predictions ``[B, n, D]``; K = 1 is the frozen
    base predictor alone."""
    seq, preds = list(zw[:, : h + 1].unbind(1)), []
    w = model.cfg.max_context
    for i in range(blocks.shape[1]):
        if k == 1 and model.cfg.past:
            nxt = model.base.predictor(seq[-1], blocks[:, i])
        else:
            hist = torch.stack(seq[-w:], 1)
            feats, mask = model.features(hist, k)
            nxt = model.step(hist, blocks[:, i], feats, mask)
        seq.append(nxt)
        preds.append(nxt)
    return torch.stack(preds, 1)


def train_thinker(dirs: Sequence[str], out_dir: str, base_dir: str, model_fields: dict, cfg: KeypointTrainConfig,
                  log: Callable[[str], None] = print, limit: int | None = None) -> Path:
    """Train the thinker and the fusion over the frozen keypoint model in ``base_dir``, into ``out_dir``
    (resumable); returns the finished model's directory ``out_dir/model``."""
    out, final = start_run(out_dir, cfg)
    base = load_keypoint(base_dir)
    tcfg = ThinkerConfig(base=base.cfg.to_json(), **model_fields)
    if tcfg.past and tcfg.train_max_think < 2:
        raise WMError(f"train_max_think {tcfg.train_max_think}: the thinker trains at budgets 2..train_max_think; use >= 2")
    model, data = start_extension(ThinkerModel, tcfg, base, dirs, cfg, log, limit, "thinker")
    e_all = len(data.ids)
    k, n, w = base.cfg.frameskip, ROLLOUT_STEPS, tcfg.max_context
    steps = data.actions.shape[1]
    if steps < k * (n + w - 1) + 1:
        raise WMError(f"episodes have {steps} steps; a history of {w - 1} and a window of {n} model steps at "
                      f"frameskip {k} need {k * (n + w - 1) + 1}")
    ntr = e_all - cfg.val_episodes
    out.mkdir(parents=True, exist_ok=True)
    key = {"model": tcfg.to_json(), "train": dataclasses.asdict(cfg), "data": data.ids, "base": str(base_dir),
           "rollout_steps": n}
    with torch.no_grad():
        z = torch.stack([model.base.encoder(data.frames[i].permute(0, 3, 1, 2).float() / 255.0) for i in range(e_all)])
    del data.frames

    def window(e: Tensor, s: Tensor, h: int) -> tuple[Tensor, Tensor]:
        """Latents ``[B, h + 1 + n, D]`` every k steps from ``s - k h``, and the blocks ``[B, n, k*A]`` from s."""
        idx = s[:, None] + k * torch.arange(-h, n + 1)
        aidx = (s[:, None] + k * torch.arange(n))[..., None] + torch.arange(k)
        return z[e[:, None], idx], data.actions[e[:, None, None], aidx].flatten(2)

    def draw_starts(h: int, size: int, g: torch.Generator) -> Tensor:
        return k * h + torch.randint(0, steps - k * (n + h) + 1, (size,), generator=g)

    def loss(g: torch.Generator) -> Tensor:
        depth = int(torch.randint(2, tcfg.train_max_think + 1, (1,), generator=g)) if tcfg.past else 1
        h = int(torch.randint(0, w, (1,), generator=g))
        e = torch.randint(0, ntr, (cfg.predictor_batch,), generator=g)
        zw, blocks = window(e, draw_starts(h, cfg.predictor_batch, g), h)
        return (rollout(model, zw, blocks, h, depth) - zw[:, h + 1:]).pow(2).mean()

    gv = torch.Generator().manual_seed(cfg.seed + 1)
    ve = torch.randint(ntr, e_all, (512,), generator=gv)
    vs = draw_starts(w - 1, 512, gv)

    def validate() -> dict:
        res = {}
        for h in (0, w - 1):
            zw, blocks = window(ve, vs, h)
            for depth in ((1, 2, 4, 8) if tcfg.past else (1,)):
                if depth > tcfg.max_think:
                    continue
                last = rollout(model, zw, blocks, h, depth)[:, -1]
                err = (last - zw[:, -1]).reshape(len(ve), -1, 2)
                res[f"val_h{h}_k{depth}"] = _units(err[:, 1:])
        res["gate"] = float(torch.tanh(model.head.gate).abs().max())
        return res

    _stage("thinker", out, torch.nn.ModuleList([model.thinker, model.head]), cfg.predictor_steps, cfg.predictor_lr,
           cfg, key, loss, validate, log)
    model.eval()
    save_pretrained(model.cpu(), final)
    log(f"saved {final}")
    return final
