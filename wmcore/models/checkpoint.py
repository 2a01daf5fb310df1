"""Shared helpers of the families' checkpoint loaders: error messages for weights that cannot be read
or do not fit (missing, unexpected and misshapen keys). Every ``.pt`` is read with
``torch.load(weights_only=True)``; safetensors are read by the safetensors library."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, Mapping

from ..errors import WMError

__all__ = ["key_list", "read_error", "state_mismatch"]


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
