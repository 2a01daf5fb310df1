"""Shared helpers of the families' checkpoint loaders: reading config and weights files, and the
error messages for weights that cannot be read or do not fit (missing, unexpected and misshapen keys).

Every ``.pt`` is read with ``torch.load(weights_only=True)`` (``torch_load``); safetensors are read by
the safetensors library (``safetensors_load``). A loader checks the weights against the module its
config describes, built on the meta device (``meta_state_dict``: shapes only, no memory, no
initialisation), before it builds the real one (``require_match``), so that a config that does not
fit its weights allocates nothing."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..errors import WMError

__all__ = ["config_from_json", "key_list", "load_model_dir", "save_model_dir", "meta_state_dict", "read_error", "read_json", "require_match", "safetensors_load",
           "state_mismatch", "torch_load"]


def key_list(keys: list[str], n: int = 10) -> str:
    """``keys`` for an error message: the count, then at most ``n`` of them."""
    return f"{len(keys)}: " + ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def state_mismatch(state: Mapping[str, Any], expected: Mapping[str, Any], want: str = "expected") -> str:
    """"" when ``state`` (names -> tensors) has exactly the keys and shapes of ``expected`` (names ->
    tensors or shapes); else the missing, unexpected and misshapen keys (each list shortened), for the
    error message of a family's checkpoint loader."""
    def shape(v: Any) -> tuple[int, ...]:
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {shape(state[k])} ({want} {shape(expected[k])})"
                    for k in set(state) & set(expected) if shape(state[k]) != shape(expected[k]))
    parts = [f"missing keys {key_list(missing)}" if missing else "",
             f"unexpected keys {key_list(unexpected)}" if unexpected else "",
             f"shape mismatches {key_list(shapes)}" if shapes else ""]
    return "; ".join(p for p in parts if p)


def read_error(path: str | os.PathLike, e: BaseException, what: str = "the weights") -> WMError:
    """The WMError for a weights or checkpoint file that could not be read (``e``: what the reader
    raised). Every ``.pt`` is read with ``torch.load(weights_only=True)``: tensors and plain containers
    only, never a pickle's code. A file that asks for anything else is refused with its own message,
    naming what it asked for, and without torch's advice to retry with weights_only=False."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and ("weights_only" in text or "Weights only" in text):
        asked = re.search(r"GLOBAL ([\w.]+)", text)
        return WMError(
            f"{path}: cannot read {what}: refused, its pickle asks for "
            f"{asked.group(1) if asked else 'an object that is no tensor or plain container'}, and unpickling "
            "that could run code; wmcore reads .pt files with torch.load(weights_only=True) only. Use weights "
            "from a source you trust that hold tensors only (a state dict, or safetensors)"
        )
    return WMError(f"{path}: cannot read {what} ({type(e).__name__}: {text[:300]})")


def config_from_json(cls: type, d: Any, fmt: str, source: str, name: str | None = None) -> Any:
    """The config dataclass ``cls`` from a config.json document ``d`` of format ``fmt``, version 1 (the
    fields beside "format" and "version"; ``name`` overrides the stored name). A wrong format or
    version, unknown keys or values the dataclass refuses are WMErrors naming ``source``."""
    if not isinstance(d, dict) or d.get("format") != fmt:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise WMError(f"{source}: expected a {fmt!r} config (its \"format\" key), found {found!r}")
    if d.get("version") != 1:
        raise WMError(f"{source}: {fmt} version {d.get('version')!r}; this wmcore reads version 1")
    known = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in d.items() if k not in ("format", "version")}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise WMError(f"{source}: unknown keys {unknown}; known: {sorted(known)}")
    if name is not None:
        fields["name"] = name
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        raise WMError(f"{source}: {e}") from None


def save_model_dir(directory: str | os.PathLike, state: Mapping[str, Tensor], config: dict, fmt: str,
                   config_file: str = "config.json", weights_file: str = "model.safetensors") -> Path:
    """Write ``config_file`` (the JSON ``config``) and ``weights_file`` (``state`` as safetensors, tagged
    with ``fmt``) into ``directory``, atomically; refuses if either exists."""
    from safetensors.torch import save

    from ..fsio import write_new

    d = Path(directory)
    for f in (config_file, weights_file):
        if (d / f).exists():
            raise WMError(f"{d / f}: exists already; wmcore never overwrites a checkpoint, choose a new directory")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    write_new(d / weights_file, save(tensors, metadata={"format": "pt", "wmcore": fmt}))
    write_new(d / config_file, (json.dumps(config, indent=2) + "\n").encode())
    return d


def load_model_dir(directory: str | os.PathLike, fmt: str, read_config: Callable[[Any, str], Any],
                   build: Callable[[Any], nn.Module], config_file: str = "config.json",
                   weights_file: str = "model.safetensors") -> nn.Module:
    """The module ``build(cfg)`` of a model directory (``read_config(json document, source)`` -> cfg),
    its weights checked against the config (``require_match``) and for non-finite values before the
    real module is built, then loaded strictly (on the CPU)."""
    d = Path(directory)
    cpath, wpath = d / config_file, d / weights_file
    if not cpath.is_file() or not wpath.is_file():
        raise WMError(f"{d}: expected {config_file} + {weights_file} (a {fmt} model directory)")
    cfg = read_config(read_json(cpath), str(cpath))
    state = safetensors_load(wpath)
    require_match(state, meta_state_dict(lambda: build(cfg)), str(wpath), str(cpath), want="config wants")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WMError(f"{wpath}: non-finite weights in {bad[:5]}; the checkpoint is corrupt, retrain or restore it")
    model = build(cfg)
    model.load_state_dict(state, strict=True)
    return model


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document in ``path`` (a config.json); WMError naming the file if it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WMError(f"{path}: not readable JSON ({e})") from None


def torch_load(path: str | os.PathLike, device: str | torch.device = "cpu", what: str = "the weights") -> Any:
    """What a ``.pt`` file holds, read with ``torch.load(weights_only=True)`` onto ``device``: tensors and
    plain containers only. Any failure is the file's: a WMError (``read_error``)."""
    try:
        with warnings.catch_warnings():  # torch's musings on a broken file: read_error says it
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(Path(path).read_bytes()), map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the file's fault
        raise read_error(path, e, what) from None


def safetensors_load(path: str | os.PathLike, what: str = "the weights") -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (names -> CPU tensors); WMError (``read_error``) if unreadable."""
    from safetensors.torch import load

    try:
        return load(Path(path).read_bytes())
    except Exception as e:  # noqa: BLE001 - any failure to read is the file's fault
        raise read_error(path, e, what) from None


def meta_state_dict(build: Callable[[], nn.Module]) -> dict[str, Tensor]:
    """The state dict of the module ``build()`` makes, built on the meta device: names and shapes only,
    so that checking weights against a config allocates and initialises nothing."""
    with torch.device("meta"):
        return build().state_dict()


def require_match(state: Mapping[str, Any], expected: Mapping[str, Any], source: str, target: str,
                  want: str = "expected", hint: str = "") -> None:
    """Raise ``WMError("{source}: does not match {target} — {mismatch}{hint}")`` unless ``state`` has
    exactly the keys and shapes of ``expected`` (see ``state_mismatch``)."""
    wrong = state_mismatch(state, expected, want=want)
    if wrong:
        raise WMError(f"{source}: does not match {target} — {wrong}{hint}")
