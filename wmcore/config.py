"""Gate thresholds: dataclass defaults < ``pyproject.toml [tool.wmcore]`` < per-model table < overrides."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import WMError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


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
    bootstrap: int = 1000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    """Resolve the thresholds for ``model`` (its name before any ``:`` or ``[``)."""
    path = Path(pyproject) if pyproject else find_pyproject()
    table = (wmcore_table(path) or {}) if path else {}
    merged: dict[str, Any] = {k: v for k, v in table.items() if not isinstance(v, dict)}
    unknown_tables = set(k for k, v in table.items() if isinstance(v, dict)) - {"models", "compare"}
    if unknown_tables:
        raise WMError(f"{path}: unknown tables [tool.wmcore.{sorted(unknown_tables)[0]}]; expected models or compare")
    if not isinstance(table.get("models", {}), dict):
        raise WMError(f"{path}: [tool.wmcore] models must be a table of per-model tables")
    if model:
        key = model.split(":")[0].split("[")[0]
        own = table.get("models", {}).get(key, {})
        if not isinstance(own, dict):
            raise WMError(f"{path}: [tool.wmcore.models] {key} must be a table of thresholds, found {own!r}")
        merged.update(own)
    merged.update(overrides or {})
    fields = {f.name: f.type for f in dataclasses.fields(Thresholds)}
    bad = sorted(set(merged) - set(fields))
    if bad:
        raise WMError(
            f"{path or 'overrides'}: unknown threshold(s) {bad} for model {model!r}; known: {sorted(fields)}"
        )
    out: dict[str, Any] = {}
    for k, v in merged.items():
        want_int = fields[k] in ("int", int, "int | None")
        if isinstance(v, str):  # from a command line
            try:
                v = float(v)
            except ValueError:
                pass
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (not want_int or float(v).is_integer())
        if not ok:
            kind = " (an integer)" if want_int else ""
            raise WMError(f"{path or 'overrides'}: threshold {k}={v!r}: expected a number{kind}")
        out[k] = int(v) if want_int else float(v)
    return Thresholds(**out)


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


# What the command line and the plugin accept for --dtype (ACTION_SOURCES: wmcore.rollout).
DTYPES = ("float32", "bfloat16", "float16")


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
