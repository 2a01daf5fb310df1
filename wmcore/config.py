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
        if p.is_file() and "wmcore" in read_pyproject(p).get("tool", {}):
            return p
    return None


def load_thresholds(
    model: str | None = None,
    pyproject: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Thresholds:
    """Resolve the thresholds for ``model`` (its name before any ``:`` or ``[``)."""
    path = Path(pyproject) if pyproject else find_pyproject()
    table = read_pyproject(path).get("tool", {}).get("wmcore", {}) if path else {}
    merged: dict[str, Any] = {k: v for k, v in table.items() if not isinstance(v, dict)}
    unknown_tables = set(k for k, v in table.items() if isinstance(v, dict)) - {"models", "compare"}
    if unknown_tables:
        raise WMError(f"{path}: unknown tables [tool.wmcore.{sorted(unknown_tables)[0]}]; expected models or compare")
    if model:
        key = model.split(":")[0].split("[")[0]
        merged.update(table.get("models", {}).get(key, {}))
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


def read_pyproject(path: Path) -> dict:
    """The parsed TOML of ``path``; WMError if it is missing or invalid."""
    if not path.is_file():
        raise WMError(f"{path}: no such pyproject.toml; pass an existing file or none (defaults)")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise WMError(f"{path}: not valid TOML ({e}); fix the file") from None
