"""Every setting of a run, resolved in one place: dataclass defaults < ``pyproject.toml [tool.wmcore]``
< the model's table ``[tool.wmcore.models.NAME]`` < command-line overrides; the embedded models'
tables ship with the package (``fixtures/wmcore.toml``), under the user's own at each level.

- ``Thresholds``: the limits of the drift gates (and the horizon/start they assume);
- ``EvalConfig``: how one evaluation rolls out (horizon, start, action source, device, dtype, ...);
- ``Tolerances``: how much worse a run may be than a reference before ``wmcore compare`` calls it a
  regression (``[tool.wmcore.compare]``);
- ``resolve``: a model's ``(EvalConfig, Thresholds)`` from the above; the pytest plugin, the command
  line and the bench all call it, so a horizon or start is decided here and nowhere else;
- ``check_placement`` / ``place_model``: the device and dtype a model runs in.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import WMError
from .paths import fixtures_dir
from .gates import GATE_RULES
from .rollout import ACTION_SOURCES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "DTYPES",
    "ENERGY_SCALES",
    "GATE_RULES",
    "EvalConfig",
    "Thresholds",
    "Tolerances",
    "apply_think",
    "check_placement",
    "check_think",
    "find_pyproject",
    "load_thresholds",
    "load_tolerances",
    "parse_overrides",
    "place_model",
    "read_pyproject",
    "resolve",
    "shipped_thresholds",
    "wmcore_table",
]

# What the command line and the plugin accept for the dtype of a model and its latents.
DTYPES = ("float32", "bfloat16", "float16")
# The energy landscape's perturbation scales, in units of the recorded actions' per-dimension std:
# from barely off the recorded sequence (0.1) to far off it (2).
ENERGY_SCALES = (0.1, 0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Thresholds:
    """Limits of the drift gates and the evaluation settings they assume."""

    threshold: float = 0.5  # drift horizon threshold on the cosine
    horizon: int = 30
    start: int = 0  # recorded steps skipped at the start of each episode (e.g. a robot at rest)
    step1_min: float = 0.85  # closed-loop step-1 cosine
    monotone_tol: float = 0.02  # see metrics.max_rise
    closed_open_tol: float = 0.01
    skill_min: float = 0.0  # closed-loop step-1 MSE skill against copy-last
    # optional gates (None = not asserted)
    skill_steps: int = 10  # the steps 1..skill_steps averaged by the two mean-skill gates
    skill_mean_min: float | None = None  # closed loop: mean MSE skill against copy-last
    open_skill_mean_min: float | None = None  # open loop: mean MSE skill against copy-first
    horizon_min: int | None = None  # open-loop drift horizon at `threshold` (never reached passes)
    success_min: float | None = None  # planning success rate on the task set (wmcore plan, wmcore/suites/test_control.py)
    bootstrap: int = 1000  # resamples of every bootstrap CI (curve bands and gates)
    seed: int = 0
    # every gate with a CI (all but drift_horizon): "ci" fails only a violation shown with one-sided 95%
    # confidence over episodes; "mean" fails any violation of the mean curve (gates.GATE_RULES)
    gate_rule: str = "ci"
    # how wmcore plan and the bench plan with this model by default: a planner preset's name
    # (wmcore.control.planners.PRESETS, checked there), "" = the default CEM settings
    planner: str = ""
    # a thinking model (protocol.ThinkingWorldModel): fail when a larger budget K regressed against K = 1
    # in open-loop AUC, paired over episodes, by wmcore compare's rule (wmcore.thinking; the thinking suite)
    think_no_worse: bool = False

    def __post_init__(self) -> None:
        if self.gate_rule not in GATE_RULES:
            raise WMError(f"Thresholds.gate_rule {self.gate_rule!r}: expected one of {', '.join(GATE_RULES)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvalConfig:
    """How to roll out. ``batch_size`` is episodes per encoder/rollout call (memory, not results)."""

    horizon: int = 30
    start: int = 0  # recorded steps skipped at the start of each episode before context frame 0
    context: int = 1
    window: int | None = None
    action_source: str = "recorded"
    seed: int = 0
    use_cache: bool = True
    # the thinking budget K the model spends per prediction (protocol.ThinkingWorldModel; 1 = its base path)
    think: int = 1
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "float32"
    # The offline energy landscape (wmcore.control.energy), measured in every report with recorded
    # actions (an off switch: energy=False). energy_k: model steps from start to goal, 5 = 25 env steps
    # at frameskip 5, the planning tasks' goal offset; clipped to what the episodes hold (the report says
    # so). energy_starts x (1 + (len(energy_scales) + 1) x energy_candidates) rollouts of k steps per
    # episode: 4 x 49 with the defaults, about 2 s for pusht-lewm on 32 episodes on 2 CPU cores.
    energy: bool = True
    energy_k: int = 5
    energy_starts: int = 4
    energy_candidates: int = 8
    energy_scales: tuple[float, ...] = ENERGY_SCALES  # perturbation scales, x the recorded actions' std
    energy_batch: int = 1024  # rollouts per model call (memory, not results)

    def __post_init__(self) -> None:
        if not isinstance(self.energy, bool):
            raise WMError(f"EvalConfig.energy: expected True or False, found {self.energy!r}")
        scales = self.energy_scales
        if (not isinstance(scales, (tuple, list)) or not scales
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0
                       for x in scales)):
            raise WMError(f"EvalConfig.energy_scales: expected one or more finite numbers > 0 (multiples of the "
                          f"recorded actions' std), found {scales!r}")
        object.__setattr__(self, "energy_scales", tuple(float(x) for x in scales))  # hashable, as JSON reads it
        for name, least in (("horizon", 1), ("start", 0), ("context", 1), ("think", 1), ("batch_size", 1), ("window", 1),
                            ("energy_k", 1), ("energy_starts", 1), ("energy_candidates", 1), ("energy_batch", 1)):
            v = getattr(self, name)
            if v is None and name == "window":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise WMError(f"EvalConfig.{name}: expected an integer >= {least}, found {v!r}")
        if self.action_source not in ACTION_SOURCES:
            raise WMError(f"EvalConfig.action_source {self.action_source!r}: expected one of {', '.join(ACTION_SOURCES)}")
        if self.dtype not in DTYPES:
            raise WMError(f"EvalConfig.dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")

    def to_dict(self) -> dict[str, Any]:
        """As the report's ``config`` records it, JSON's types (a list of scales, not a tuple): a report
        read back from its file has the same config as the one written."""
        return {**dataclasses.asdict(self), "energy_scales": list(self.energy_scales)}


@dataclass(frozen=True)
class Tolerances:
    """How much worse NEW may be than BASE before ``wmcore compare`` counts a pair as a regression."""

    step1_drop: float = 0.02  # closed-loop step-1 cosine may drop by at most this
    auc_drop: float = 0.02  # open-loop AUC (mean cosine over steps 1..H) may drop by at most this
    horizon_drop: int = 2  # open-loop drift horizon shortening by this many steps or more regresses
    slowdown: float | None = None  # median time may grow by at most this ratio (None: not gated)


# --- one resolution ----------------------------------------------------------------------------


def resolve(
    model: str | None,
    *,
    horizon: int | None = None,
    start: int | None = None,
    action_source: str = "recorded",
    device: str = "cpu",
    dtype: str = "float32",
    overrides: Mapping[str, Any] | None = None,
    pyproject: str | os.PathLike | None = None,
    energy: bool = True,
) -> tuple[EvalConfig, Thresholds]:
    """The evaluation config and thresholds of ``model`` (a name or spec).

    ``horizon`` / ``start`` (the command line's, None: not given) win over the thresholds' own, which
    come from ``load_thresholds(model, pyproject, overrides)``. The thresholds keep their configured
    horizon and start, so a report records both what was configured and what was run. ``energy``: measure
    the energy landscape (``EvalConfig.energy``; its other settings keep their defaults).
    """
    thresholds = load_thresholds(model, pyproject, overrides)
    cfg = EvalConfig(
        horizon=thresholds.horizon if horizon is None else horizon,
        start=thresholds.start if start is None else start,
        action_source=action_source,
        device=device,
        dtype=dtype,
        energy=energy,
    )
    return cfg, thresholds


def parse_overrides(items: Sequence[str], option: str) -> dict[str, str]:
    """``["step1_min=0.9", ...]`` (repeated ``option KEY=VALUE``) -> ``{"step1_min": "0.9"}``; the values
    are checked by ``load_thresholds``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise WMError(f"{option} {item!r}: expected KEY=VALUE, e.g. step1_min=0.9")
        out[key.strip()] = value.strip()
    return out


# --- pyproject.toml ----------------------------------------------------------------------------


def find_pyproject(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` with a ``[tool.wmcore]`` table, from ``start`` upwards."""
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        p = d / "pyproject.toml"
        if p.is_file() and wmcore_table(p) is not None:
            return p
    return None


def load_thresholds(
    model: str | None = None,
    pyproject: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Thresholds:
    """Resolve the thresholds for ``model`` (its name before any ``:`` or ``[``): the dataclass
    defaults < the shipped file's ``[tool.wmcore]`` < ``pyproject``'s < the shipped
    ``[tool.wmcore.models.NAME]`` < ``pyproject``'s < ``overrides``. The shipped file is
    ``shipped_thresholds()`` (the embedded models' own limits); ``pyproject`` defaults to the nearest
    configured one (``find_pyproject``)."""
    path = Path(pyproject) if pyproject else find_pyproject()
    sources = [p for p in (shipped_thresholds(), path) if p is not None]
    tables = [(p, _thresholds_table(p)) for p in sources]
    merged: dict[str, Any] = {}
    where: dict[str, Path] = {}  # the file each value came from, for the messages
    for p, table in tables:
        for k, v in table.items():
            if not isinstance(v, dict):
                merged[k], where[k] = v, p
    if model:
        key = model.split(":")[0].split("[")[0]
        for p, table in tables:
            own = table.get("models", {}).get(key, {})
            if not isinstance(own, dict):
                raise WMError(f"{p}: [tool.wmcore.models] {key} must be a table of thresholds, found {own!r}")
            for k, v in own.items():
                merged[k], where[k] = v, p
    merged.update(overrides or {})
    for k in overrides or {}:
        where.pop(k, None)
    fields = {f.name: f.type for f in dataclasses.fields(Thresholds)}
    bad = sorted(set(merged) - set(fields))
    if bad:
        raise WMError(
            f"{where.get(bad[0]) or 'overrides'}: unknown threshold(s) {bad} for model {model!r}; known: {sorted(fields)}"
        )
    out: dict[str, Any] = {}
    for k, v in merged.items():
        if k == "gate_rule":  # the one threshold that is a word
            if v not in GATE_RULES:
                raise WMError(f"{where.get(k) or 'overrides'}: threshold gate_rule={v!r}: expected one of {', '.join(GATE_RULES)}")
            out[k] = v
            continue
        if k == "think_no_worse":  # the one threshold that is a switch
            if isinstance(v, str) and v.strip().lower() in ("true", "false"):  # from a command line
                v = v.strip().lower() == "true"
            if not isinstance(v, bool):
                raise WMError(f"{where.get(k) or 'overrides'}: think_no_worse={v!r}: expected true or false")
            out[k] = v
            continue
        if k == "planner":  # a preset's name, checked where presets live (control.planners)
            if not isinstance(v, str):
                raise WMError(f"{where.get(k) or 'overrides'}: planner={v!r}: expected a planner preset's name (a string)")
            out[k] = v
            continue
        want_int = fields[k] in ("int", int, "int | None")
        if isinstance(v, str):  # from a command line
            try:
                v = float(v)
            except ValueError:
                pass
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (not want_int or float(v).is_integer())
        if not ok:
            kind = " (an integer)" if want_int else ""
            raise WMError(f"{where.get(k) or 'overrides'}: threshold {k}={v!r}: expected a number{kind}")
        out[k] = int(v) if want_int else float(v)
    return Thresholds(**out)


def shipped_thresholds() -> Path | None:
    """The thresholds shipped with the embedded models (``fixtures_dir()/wmcore.toml``, laid out as
    a pyproject.toml's ``[tool.wmcore]``); None where the fixtures directory has none."""
    p = fixtures_dir() / "wmcore.toml"
    return p if p.is_file() else None


def _thresholds_table(path: Path) -> dict:
    """``[tool.wmcore]`` of ``path`` checked for its tables (``models``, ``compare``); {} if it has none."""
    table = wmcore_table(path) or {}
    unknown_tables = set(k for k, v in table.items() if isinstance(v, dict)) - {"models", "compare"}
    if unknown_tables:
        raise WMError(f"{path}: unknown tables [tool.wmcore.{sorted(unknown_tables)[0]}]; expected models or compare")
    if not isinstance(table.get("models", {}), dict):
        raise WMError(f"{path}: [tool.wmcore] models must be a table of per-model tables")
    return table


def load_tolerances(
    pyproject: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> tuple[Tolerances, Path | None]:
    """Tolerances from ``overrides`` (None values ignored; ``flags`` names the option of each key in
    messages) over ``[tool.wmcore.compare]`` of ``pyproject`` (default: the nearest pyproject.toml with
    a ``[tool.wmcore]`` table, as for the thresholds) over the defaults. Returns them and the
    pyproject read (None if none)."""
    path = Path(pyproject) if pyproject else find_pyproject()
    table = (wmcore_table(path) or {}).get("compare", {}) if path else {}
    if not isinstance(table, dict):
        raise WMError(f"{path}: [tool.wmcore] compare must be a table ([tool.wmcore.compare])")
    known = [f.name for f in dataclasses.fields(Tolerances)]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise WMError(f"{path}: unknown key(s) {unknown} in [tool.wmcore.compare]; known: {known}")
    values = {k: _check_tolerance(k, v, f"{path} [tool.wmcore.compare]") for k, v in table.items()}
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = _check_tolerance(k, v, (flags or {}).get(k, k))
    return Tolerances(**values), path


def _check_tolerance(key: str, v: Any, where: str) -> float | int:
    bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
    if key == "horizon_drop":
        if bad or not float(v).is_integer() or v < 1:
            raise WMError(f"{where}: horizon_drop={v!r}: expected an integer number of steps >= 1")
        return int(v)
    if key == "slowdown":
        if bad or v < 1:
            raise WMError(f"{where}: slowdown={v!r}: expected a time ratio >= 1 (1.1 allows 10% slower)")
        return float(v)
    if bad or v < 0:
        raise WMError(f"{where}: {key}={v!r}: expected a number >= 0 (a cosine drop)")
    return float(v)


def wmcore_table(path: Path) -> dict | None:
    """``[tool.wmcore]`` of ``path`` (None if it has none); WMError if it is not a table."""
    tool = read_pyproject(path).get("tool", {})
    table = tool.get("wmcore") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise WMError(f"{path}: tool.wmcore must be a table ([tool.wmcore]), found {table!r}")
    return table


def read_pyproject(path: Path) -> dict:
    """The parsed TOML of ``path``; WMError if it is missing or invalid."""
    if not path.is_file():
        raise WMError(f"{path}: no such pyproject.toml; pass an existing file or none (defaults)")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise WMError(f"{path}: not valid TOML ({e}); fix the file") from None
    except OSError as e:
        raise WMError(f"{path}: cannot read it ({e.strerror or e})") from None


# --- device and dtype --------------------------------------------------------------------------


def check_placement(device: str, dtype: str) -> None:
    """WMError unless ``device`` names a torch device this process can use and ``dtype`` is one of
    ``DTYPES``: an unknown device string, CUDA on a build or machine without it, a CUDA index past
    the last GPU, MPS where it is unavailable."""
    import torch

    if dtype not in DTYPES:
        raise WMError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise WMError(f"device {device!r}: not a torch device ({e}); use cpu, cuda, cuda:1, mps, ...") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else f"torch (CUDA {torch.version.cuda}) finds no CUDA device")
            raise WMError(f"device {device!r}: {why} ({torch.__version__}); use --device cpu, or install a CUDA "
                          "build of torch (make setup TORCH_SPEC='torch==... --index-url ...') on a machine with a GPU")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise WMError(f"device {device!r}: only {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise WMError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
        return
    raise WMError(f"device {device!r}: wmcore runs on cpu, cuda[:N] or mps, not {dev.type}")


def place_model(model: Any, device: str, dtype: str) -> Any:
    """``model`` moved to ``device``/``dtype`` through its optional ``to(device, dtype)``.

    A model without ``to`` (a closed-form model such as ``analytic``, or a user's model that does not
    implement it) runs where it is, on the CPU in float32: asking for anything else is refused with a
    WMError rather than silently ignored.
    """
    import torch

    check_placement(device, dtype)
    if device == "cpu" and dtype == "float32":
        return model
    if not callable(getattr(model, "to", None)):
        raise WMError(
            f"model {getattr(model, 'name', model)!r} cannot be moved to device {device!r} / dtype {dtype!r}: it has "
            "no to(device, dtype) method (it runs on the CPU in float32); drop --device/--dtype for it, or implement "
            "to() in the model"
        )
    return model.to(device, getattr(torch, dtype))


# --- the thinking budget -----------------------------------------------------------------------


def check_think(k: Any, option: str = "think") -> int:
    """``k`` as a thinking budget (an int >= 1); WMError naming ``option`` otherwise."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise WMError(f"{option} {k!r}: the thinking budget K is an integer >= 1 (1 = the model's base path)")
    return k


def apply_think(model: Any, k: int, option: str = "think") -> Any:
    """Set ``model``'s thinking budget to ``k`` (``protocol.ThinkingWorldModel``); returns the model.
    A model without the capability runs at K = 1 only, and a K above the model's ``max_think`` is
    refused: WMError saying what the model supports."""
    k = check_think(k, option)
    name = getattr(model, "name", model)
    if not hasattr(model, "think"):
        if k != 1:
            raise WMError(f"{option} {k}: model {name!r} cannot think (it has no thinking budget: no 'think' "
                          f"attribute); run it at K = 1, or use a thinking model (pusht-refine, pusht-thinker, refine:DIR, thinker:DIR)")
        return model
    most = getattr(model, "max_think", None)
    if most is not None and k > most:
        raise WMError(f"{option} {k}: model {name!r} supports thinking budgets 1..{most}")
    model.think = k
    return model

