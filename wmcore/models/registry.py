"""Model registry: ``load(spec)`` turns a model spec string into a WorldModel.

A spec is ``NAME`` (an embedded model shipped in ``wmcore/fixtures/models/NAME``) or ``FAMILY:ARG`` (a
family with a path or options), e.g. ``pusht-lewm``, ``pusht-ac-tiny``, ``lewm:path/to/dir``, ``analytic``,
``analytic:delta=0.1,offset=0.3``, ``vjepa2-ac:vjepa2-ac-vitg.pt,encoder=DIR``, ``ac-tiny:DIR`` (a
small V-JEPA 2-AC written by ``wmcore train --arch ac-tiny``), ``keypoint:DIR`` (a keypoint world model
written by ``wmcore train-keypoint``, as the embedded pusht-wm), ``refine:DIR`` and ``thinker:DIR`` (the
thinking models written by ``wmcore train-refine`` and ``wmcore train-thinker``). Families register a loader here.
"""

from __future__ import annotations

import importlib
from typing import Callable

from ..errors import WMError
from ..paths import EMBEDDED, fixtures_dir
from ..protocol import WorldModel

__all__ = ["EMBEDDED", "FAMILIES", "load", "register_family"]


def _load_analytic(arg: str, name: str | None = None) -> WorldModel:
    from .analytic import AnalyticModel, parse_spec

    return AnalyticModel(parse_spec(arg), name=name or "analytic" + (f"[{arg}]" if arg else ""))


def _load_lewm(arg: str, name: str | None = None) -> WorldModel:
    from .lewm import load_world_model

    if not arg:
        raise WMError("model spec 'lewm' needs a checkpoint directory: lewm:DIR (config.json + weights)")
    return load_world_model(arg, name=name)


def _load_vjepa2_ac(arg: str, name: str | None = None) -> WorldModel:
    from .vjepa2_ac import SPEC_HELP, load_world_model, parse_spec

    if not arg:
        raise WMError(f"model spec 'vjepa2-ac' needs an official checkpoint: {SPEC_HELP}")
    path, kw = parse_spec(arg)
    return load_world_model(path, **kw)


def _model_dir(family: str, module: str) -> Callable[..., WorldModel]:
    """The loader of a family whose argument is a model directory written by our own training
    (``FAMILY:DIR``, config.json + model.safetensors): ``wmcore.models.MODULE.load_world_model``."""

    def load_dir(arg: str, name: str | None = None) -> WorldModel:
        if not arg:
            raise WMError(f"model spec '{family}' needs a model directory: {family}:DIR (config.json + model.safetensors)")
        return importlib.import_module(f".{module}", __package__).load_world_model(arg, name=name)

    return load_dir


# family -> loader(the argument after the colon). A user registers a family of their own from a
# conftest: register_family("mine", lambda arg: MyModel(arg)). Ours also take the display name of an
# embedded model as a second argument.
FAMILIES: dict[str, Callable[..., WorldModel]] = {
    "analytic": _load_analytic, "lewm": _load_lewm, "vjepa2-ac": _load_vjepa2_ac,
    **{family: _model_dir(family, module) for family, module in
       (("ac-tiny", "ac_tiny"), ("keypoint", "keypoint"), ("refine", "refine"), ("thinker", "thinker"))},
}
_OURS = frozenset(FAMILIES)


def register_family(name: str, loader: Callable[[str], WorldModel]) -> None:
    """Make ``--wm-model NAME:ARG`` (and ``NAME``) load with ``loader(ARG)``: how a project adds its
    own model family, from its ``conftest.py`` (loaded before the plugin checks ``--wm-model``) or
    before calling ``wmcore.cli.main``. A name of our own families or embedded models is refused."""
    if not isinstance(name, str) or not name or any(c in name for c in ":[], ") or name != name.strip():
        raise WMError(f"model family name {name!r}: expected a non-empty word without ':', '[', ']', ',' or spaces")
    if name in EMBEDDED or name in _OURS:
        raise WMError(f"model family {name!r} is wmcore's own; register yours under another name")
    if not callable(loader):
        raise WMError(f"model family {name!r}: the loader must be callable (spec argument -> WorldModel)")
    FAMILIES[name] = loader


def load(spec: str) -> WorldModel:
    """Load a model from its spec (see the module docstring). Unknown specs raise WMError."""
    if spec in EMBEDDED:  # a directory in wmcore/fixtures/models, read by its family's loader
        d = fixtures_dir() / "models" / spec
        if not d.is_dir():
            raise WMError(
                f"embedded model {spec!r}: {d} is missing; reinstall wmcore (its wheel carries the embedded "
                "models), point WMCORE_FIXTURES at a directory holding models/NAME, or retrain it (`make train`, `make train-ac-tiny`, `make train-wm`; see its MODEL_CARD.md)"
            )
        return FAMILIES[EMBEDDED[spec]](str(d), spec)
    family, _, arg = spec.partition(":")
    if family not in FAMILIES:
        raise WMError(
            f"unknown model spec {spec!r}: not an embedded model {sorted(EMBEDDED)} and the family "
            f"{family!r} is not one of {sorted(FAMILIES)}; write NAME or FAMILY:PATH"
        )
    return FAMILIES[family](arg)
