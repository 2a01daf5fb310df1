"""World models: ``load(spec)`` (``registry``) turns a model spec into a ``wmcore.protocol.WorldModel``;
one module per family (``lewm``, ``ac_tiny``, ``analytic``; ``vjepa2_ac`` is a package: predictor, poses,
adapter, checkpoint conversion, spec), shared loader helpers in ``checkpoint``. No model imports the
harness."""

from __future__ import annotations

from .registry import EMBEDDED, FAMILIES, load, register_family

__all__ = ["EMBEDDED", "FAMILIES", "load", "register_family"]
