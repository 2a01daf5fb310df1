"""Model registry: ``load(spec)`` turns a model spec string into a WorldModel.

A spec is ``NAME`` (an embedded model) or ``FAMILY:ARG`` (a family with a path or options), e.g.
``analytic``, ``analytic:delta=0.1,offset=0.3``. Families register a loader here.
"""

from __future__ import annotations

from typing import Callable

from ..errors import WMError
from ..protocol import WorldModel


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


FAMILIES: dict[str, Callable[[str], WorldModel]] = {"analytic": _load_analytic, "lewm": _load_lewm}


def load(spec: str) -> WorldModel:
    """Load a model from its spec (see the module docstring). Unknown specs raise WMError."""
    family, _, arg = spec.partition(":")
    if family not in FAMILIES:
        raise WMError(
            f"unknown model spec {spec!r}: the family {family!r} is not one of {sorted(FAMILIES)}; "
            "write NAME or FAMILY:PATH"
        )
    return FAMILIES[family](arg)
