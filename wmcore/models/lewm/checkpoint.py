"""LeWM checkpoints: the ViT key names of both transformers versions, ``save_pretrained`` (our layout:
config.json + model.safetensors) and ``load_checkpoint`` (ours, or the release's config.json + weights.pt)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from ...errors import WMError
from ...fsio import write_new
from ..checkpoint import meta_state_dict, read_json, require_match, safetensors_load, torch_load
from .config import LeWMConfig
from .model import LeWorldModel

__all__ = [
    "CONFIG_FILE", "RELEASE_WEIGHTS_FILE", "WEIGHTS_FILE", "canonical_state_dict", "load_checkpoint",
    "rename_vit_keys", "save_pretrained", "vit_naming",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
RELEASE_WEIGHTS_FILE = "weights.pt"

# the encoder layers' keys in the naming of transformers 4 (the published weights) and of 5
_T4 = re.compile(r"^encoder\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_T5 = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_VIT_RENAMES = [  # (transformers 4, transformers 5), within one encoder layer
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
    ("layernorm_before", "layernorm_before"),
    ("layernorm_after", "layernorm_after"),
]


def vit_naming(keys: Iterable[str]) -> str | None:
    """'t4' or 't5': which transformers naming the ViT layer keys of a LeWM state dict use."""
    for k in keys:
        if _T4.match(k):
            return "t4"
        if _T5.match(k):
            return "t5"
    return None


def rename_vit_keys(state: Mapping[str, Tensor], to: str) -> dict[str, Tensor]:
    """Rename a LeWM state dict's encoder-layer keys to transformers-4 (``to='t4'``) or -5 names.

    Keys outside the encoder layers, and keys neither naming knows, pass unchanged (a strict load
    then reports them).
    """
    if to not in ("t4", "t5"):
        raise ValueError(f"rename_vit_keys: to must be 't4' or 't5', got {to!r}")
    src, table = (_T5, {b: a for a, b in _VIT_RENAMES}) if to == "t4" else (_T4, dict(_VIT_RENAMES))
    out = {}
    for key, val in state.items():
        m = src.match(key)
        if m and m.group(2) in table:
            i, part, leaf = m.groups()
            key = (f"encoder.encoder.layer.{i}." if to == "t4" else f"encoder.layers.{i}.") + f"{table[part]}.{leaf}"
        out[key] = val
    return out


def canonical_state_dict(model: LeWorldModel) -> dict[str, Tensor]:
    """The state dict on CPU with the published (transformers-4) encoder names."""
    return rename_vit_keys({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, "t4")


def save_pretrained(model: LeWorldModel | Any, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (published names) of ``model`` (a LeWorldModel,
    or a LeWMWorldModel) into ``directory``. Refuses if either file exists; each file appears whole
    or not at all.
    """
    from safetensors.torch import save

    # a LeWMWorldModel (adapter.py, which imports this module) wraps its LeWorldModel as .model
    model = model if isinstance(model, LeWorldModel) else model.model
    d = Path(directory)
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if (d / f).exists():
            raise WMError(f"{d / f}: exists already; wmcore never overwrites a checkpoint, choose a new directory")
    blob = save(canonical_state_dict(model), metadata={"format": "pt", "wmcore": "lewm"})
    write_new(d / WEIGHTS_FILE, blob)
    write_new(d / CONFIG_FILE, (json.dumps(model.cfg.to_json(), indent=2) + "\n").encode())
    return d


def _read_state(path: Path, device: str | torch.device) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        state: Any = {k: v.to(device) for k, v in safetensors_load(path).items()}
    else:  # tensors and plain containers only: never run a pickle's code
        state = torch_load(path, device, "the weights")
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model"):  # Lightning / le-wm conversions wrap the dict
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WMError(f"{path}: expected a state dict (names -> tensors), found {type(state).__name__}")
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    return state


def _weights_path(d: Path) -> Path:
    for name in (WEIGHTS_FILE, RELEASE_WEIGHTS_FILE):
        if (d / name).is_file():
            return d / name
    pts = sorted(d.glob("*.pt"))
    if len(pts) == 1:
        return pts[0]
    found = ", ".join(p.name for p in pts) or "none"
    raise WMError(
        f"{d}: expected weights in {WEIGHTS_FILE} (wmcore) or {RELEASE_WEIGHTS_FILE} (LeWM release); "
        f"found .pt files: {found}"
    )


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> LeWorldModel:
    """A LeWorldModel from ``directory`` (config.json + model.safetensors, or the release's weights.pt),
    in eval mode. Either transformers naming of the encoder loads; anything else that does not match
    the config exactly (missing, unexpected or misshapen tensors) raises WMError listing it."""
    d = Path(directory)
    if not d.is_dir():
        raise WMError(f"{d}: not a directory; expected a LeWM checkpoint directory (config.json + weights)")
    cpath = d / CONFIG_FILE
    if not cpath.is_file():
        raise WMError(
            f"{d}: no {CONFIG_FILE}; expected a LeWM checkpoint directory: {CONFIG_FILE} + {WEIGHTS_FILE} "
            f"(wmcore) or {CONFIG_FILE} + {RELEASE_WEIGHTS_FILE} (LeWM release)"
        )
    cfg = LeWMConfig.from_json(read_json(cpath), source=str(cpath), name=f"lewm[{d.resolve().name}]")
    wpath = _weights_path(d)
    state = _read_state(wpath, device)

    expected = meta_state_dict(lambda: LeWorldModel(cfg))  # a config that does not fit allocates nothing
    target = vit_naming(expected)
    if target is not None:
        state = rename_vit_keys(state, target)
    require_match(state, expected, str(wpath), str(cpath), want="config wants",
                  hint=". Are config.json and the weights from the same model?")
    model = LeWorldModel(cfg)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()

