"""Model registry: ``load(spec)`` turns a model spec string into a WorldModel.

A spec is ``NAME`` (an embedded model shipped in ``fixtures/models/NAME``) or ``FAMILY:ARG`` (a
family with a path or options), e.g. ``pusht-lewm``, ``pusht-ac-tiny``, ``lewm:path/to/dir``, ``analytic``,
``analytic:delta=0.1,offset=0.3``, ``vjepa2-ac:vjepa2-ac-vitg.pt,encoder=DIR``, ``ac-tiny:DIR`` (a
small V-JEPA 2-AC written by ``wmcore train --arch ac-tiny``). Families register a loader here.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import WMError
from ..protocol import WorldModel


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


def _load_analytic(arg: str) -> WorldModel:
    from .analytic import AnalyticModel, parse_spec

    try:
        cfg = parse_spec(arg)
    except ValueError as e:
        raise WMError(str(e)) from None
    return AnalyticModel(cfg, name="analytic" + (f"[{arg}]" if arg else ""))


def _load_lewm(arg: str) -> WorldModel:
    from .lewm import load_world_model

    if not arg:
        raise WMError("model spec 'lewm' needs a checkpoint directory: lewm:DIR (config.json + weights)")
    return load_world_model(arg)


def _load_vjepa2_ac(arg: str) -> WorldModel:
    from .vjepa2_ac import SPEC_HELP, load_world_model, parse_spec

    if not arg:
        raise WMError(f"model spec 'vjepa2-ac' needs an official checkpoint: {SPEC_HELP}")
    path, kw = parse_spec(arg)
    return load_world_model(path, **kw)


def _load_ac_tiny(arg: str) -> WorldModel:
    from .ac_tiny import load_world_model

    if not arg:
        raise WMError("model spec 'ac-tiny' needs a model directory: ac-tiny:DIR (config.json + model.safetensors)")
    return load_world_model(arg)


FAMILIES: dict[str, Callable[[str], WorldModel]] = {
    "analytic": _load_analytic, "lewm": _load_lewm, "vjepa2-ac": _load_vjepa2_ac, "ac-tiny": _load_ac_tiny,
}

# Embedded models: NAME -> family whose loader reads fixtures/models/NAME. The drift bench measures
# all of them by default; the CLI's default is DEFAULT_MODEL.
EMBEDDED: dict[str, str] = {"pusht-lewm": "lewm", "pusht-ac-tiny": "ac-tiny"}
DEFAULT_MODEL = "pusht-lewm"


def fixtures_dir() -> Path:
    """The repository's ``fixtures/`` (or ``$WMCORE_FIXTURES``): embedded models and episode sets."""
    env = os.environ.get("WMCORE_FIXTURES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "fixtures"


def _load_embedded(name: str) -> WorldModel:
    d = fixtures_dir() / "models" / name
    if not d.is_dir():
        raise WMError(
            f"embedded model {name!r}: {d} is missing; run from a wmcore checkout (or set WMCORE_FIXTURES "
            "to its fixtures/ directory), or retrain it (`make train`, `make train-ac-tiny`; see its MODEL_CARD.md)"
        )
    if EMBEDDED[name] == "lewm":
        from .lewm import load_world_model

        return load_world_model(d, name=name)
    if EMBEDDED[name] == "ac-tiny":
        from .ac_tiny import load_world_model as load_ac_tiny

        return load_ac_tiny(d, name=name)
    return FAMILIES[EMBEDDED[name]](str(d))


def load(spec: str) -> WorldModel:
    """Load a model from its spec (see the module docstring). Unknown specs raise WMError."""
    if spec in EMBEDDED:
        return _load_embedded(spec)
    family, _, arg = spec.partition(":")
    if family not in FAMILIES:
        raise WMError(
            f"unknown model spec {spec!r}: not an embedded model {sorted(EMBEDDED)} and the family "
            f"{family!r} is not one of {sorted(FAMILIES)}; write NAME or FAMILY:PATH"
        )
    return FAMILIES[family](arg)
