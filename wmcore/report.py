"""DriftReport: one evaluation's curves, summaries, gates and reproducibility metadata, as JSON, and
its one text view (``render_text``, used by ``wmcore evaluate/show/rollout`` and the pytest summary;
``markdown_table`` is the same curves for a Markdown document).

The JSON is versioned (``schema``, ``schema_version``); ``load`` refuses other schemas and versions
with a message saying what was found. Curves are lists of length H indexed by step - 1.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

from . import __version__
from .version import provenance
from .errors import WMError
from .fsio import read_json, write_new
from .gates import Gate
from .metrics import LoopStats

__all__ = [
    "LOOPS",
    "SCHEMA",
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "STEP_INDEX",
    "DriftReport",
    "environment",
    "markdown_table",
    "render_text",
]

SCHEMA = "wmcore.drift_report"
SCHEMA_VERSION = 4
# Versions ``load`` reads. 2 added each loop's per-episode curves (LoopStats.per_episode); a version-1
# report reads with per_episode None (wmcore compare then falls back to its rule for means). 3 added
# the energy landscape (``energy``, wmcore.control.energy); versions 1 and 2 read with energy None.
# 4 changed one definition: ``data.sha256`` is the sha256 of the episodes' own digests in order
# (``episode.episodes_sha256``, marked ``data.sha256_of = "episodes"``) instead of one hash over the
# whole stacked batch, which only a single process that reads every frame can compute; a sharded
# (torchrun) evaluation hashes each episode where it is read. wmcore compare checks the data sha256
# only between reports of the same definition (the episode ids still). 4 also draws the energy
# landscape's candidates per episode (seeded by the seed and the episode's index) instead of from one
# generator over the batch: an episode's candidates no longer depend on the others or on the chunks,
# so its energies differ from a version-3 report's (the drift curves do not).
READABLE_VERSIONS = (1, 2, 3, 4)
STEP_INDEX = "curves[i] is rollout step i+1; step k predicts frame context-1+k (frame k for context 1)"
LOOPS = ("open_loop", "closed_loop", "copy_last", "copy_first")


@dataclass(frozen=True)
class DriftReport:
    """Everything one evaluation measured. ``loops`` maps open_loop / closed_loop / copy_last /
    copy_first to their LoopStats. ``energy``: the offline energy landscape
    (``control.energy.EnergyLandscape.to_dict()`` with ``k_requested`` and ``note``), None when it was
    not measured (switched off, actions other than the recorded ones, a report older than version 3)."""

    model: dict[str, Any]
    data: dict[str, Any]
    config: dict[str, Any]
    thresholds: dict[str, Any]
    loops: dict[str, LoopStats]
    chance_level: float
    chance_level_centred: float
    gates: list[Gate]
    environment: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    energy: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # stamped once, when the report is made: every to_dict / save of it says the same time
        if not self.created:
            object.__setattr__(self, "created", _now())

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def horizon(self) -> int:
        return len(self.loops["open_loop"].cosine)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per loop: cosine at steps 1, 10 (if H >= 10) and H, centred step-1 cosine, AUC, drift horizon."""
        h = self.horizon
        out = {}
        for name, s in self.loops.items():
            row = {"step1": s.cosine[0], f"step{h}": s.cosine[-1], "centred_step1": s.centred_cosine[0]}
            if h >= 10:
                row["step10"] = s.cosine[9]
            row.update(auc=s.auc, drift_horizon=s.drift_horizon)
            out[name] = row
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "step_index": STEP_INDEX,
            "model": self.model,
            "data": self.data,
            "config": self.config,
            "thresholds": self.thresholds,
            "environment": self.environment,
            "chance_level": self.chance_level,
            "chance_level_centred": self.chance_level_centred,
            "loops": {k: dataclasses.asdict(v) for k, v in self.loops.items()},
            "summary": self.summary(),
            "gates": [dataclasses.asdict(g) for g in self.gates],
            "passed": self.passed,
            "timings": self.timings,
            "energy": self.energy,
        }

    def to_json(self) -> str:
        """Strict JSON: a value that is not finite (a skill score against a zero-error baseline) is null.
        Indented, but a list of numbers stays on one line (a curve, a per-episode row): 32 episodes x 30
        steps of per-episode curves would otherwise take one line per number."""
        text = json.dumps(_finite(self.to_dict()), indent=2, allow_nan=False, default=_jsonable)
        return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", text)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically to a new file; an existing file is never replaced."""
        return write_new(path, (self.to_json() + "\n").encode())

    @classmethod
    def from_dict(cls, d: Any, source: str = "report") -> "DriftReport":
        if not isinstance(d, dict):
            raise WMError(f"{source}: expected a JSON object, found {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise WMError(f"{source}: not a wmcore drift report (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        if d.get("schema_version") not in READABLE_VERSIONS:
            env = d.get("environment")
            by = env.get("wmcore") if isinstance(env, dict) else None
            v = d.get("schema_version")
            newer = isinstance(v, int) and not isinstance(v, bool) and v > max(READABLE_VERSIONS)
            raise WMError(
                f"{source}: drift report schema_version {v!r}" + (f" (written by wmcore {by})" if by else "")
                + f"; this wmcore ({__version__}) reads versions {', '.join(map(str, READABLE_VERSIONS))}"
                + ("; upgrade wmcore to read it" if newer else "")
            )
        try:
            if not isinstance(d["loops"], dict) or not all(isinstance(v, dict) for v in d["loops"].values()):
                raise WMError(f"{source}: drift report field 'loops' must map loop names to objects")
            loops = {k: LoopStats(**v) for k, v in d["loops"].items()}
            missing = [k for k in ("open_loop", "closed_loop") if k not in loops]
            if missing:
                raise KeyError(f"loops.{missing[0]}")
            h = len(loops["open_loop"].cosine)
            for k, s in loops.items():
                for curve_name in ("cosine", "cosine_lo", "cosine_hi", "centred_cosine", "l1", "mse"):
                    n = len(getattr(s, curve_name))
                    if n != h:
                        raise WMError(f"{source}: loops.{k}.{curve_name} has {n} steps, open_loop has {h}")
                _check_per_episode(s.per_episode, len(d["data"].get("episode_ids") or []), h, f"{source}: loops.{k}")
            energy = d.get("energy") if d["schema_version"] >= 3 else None
            _check_energy(energy, len(d["data"].get("episode_ids") or []), f"{source}: energy")
            numbers = {}
            for key in ("chance_level", "chance_level_centred"):
                try:
                    numbers[key] = float(d[key])
                except (TypeError, ValueError):
                    raise WMError(f"{source}: drift report field {key!r} must be a number, found {d[key]!r}") from None
            return cls(
                model=d["model"],
                data=d["data"],
                config=d["config"],
                thresholds=d["thresholds"],
                loops=loops,
                gates=[Gate(**g) for g in d["gates"]],
                environment=d.get("environment", {}),
                timings=d.get("timings", {}),
                created=d.get("created", ""),
                energy=energy,
                **numbers,
            )
        except KeyError as e:
            raise WMError(f"{source}: drift report lacks field {e.args[0]}; was it written by wmcore?") from None
        except TypeError as e:
            raise WMError(f"{source}: drift report has malformed fields ({e})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DriftReport":
        p = Path(path)
        if not p.is_file():
            raise WMError(f"{p}: no such report file")
        return cls.from_dict(read_json(p, strict=True), source=str(p))


def _check_per_episode(per: Any, episodes: int, h: int, where: str) -> None:
    """A loop's per-episode curves must be ``[episodes][H]`` lists of numbers (None: a version-1 report)."""
    if per is None:
        return
    if not isinstance(per, dict):
        raise WMError(f"{where}.per_episode: expected an object of curves, found {type(per).__name__}")
    for name, rows in per.items():
        ok = isinstance(rows, list) and len(rows) == episodes and all(
            isinstance(r, list) and len(r) == h and all(isinstance(v, (int, float)) or v is None for v in r)
            for r in rows)
        if not ok:
            raise WMError(f"{where}.per_episode.{name}: expected {episodes} episodes x {h} steps of numbers "
                          "(one row per data.episode_ids entry)")


def _check_energy(energy: Any, episodes: int, where: str) -> None:
    """The energy section: None, or ``k`` and rows of ranks in [0, 1] with ``[episodes]`` per-episode ranks."""
    if energy is None:
        return

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(energy, dict) or not isinstance(energy.get("k"), int) or not isinstance(energy.get("rows"), list):
        raise WMError(f"{where}: expected an object with an integer k and a list of rows, or null")
    for i, row in enumerate(energy["rows"]):
        ok = (isinstance(row, dict) and isinstance(row.get("name"), str)
              and all(number(row.get(key)) and 0 <= row[key] <= 1 for key in ("rank", "rank_lo", "rank_hi"))
              and isinstance(row.get("per_episode_rank"), list) and len(row["per_episode_rank"]) == episodes
              and all(number(v) for v in row["per_episode_rank"]))
        if not ok:
            raise WMError(f"{where}.rows[{i}]: expected a name, rank, rank_lo and rank_hi in [0, 1] and "
                          f"{episodes} per-episode ranks (one per data.episode_ids entry)")


def environment(device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    """Versions and hardware that a reader needs to reproduce a run."""
    import torch

    env: dict[str, Any] = {
        **provenance(),  # wmcore's version, and its commit where it runs from a git checkout
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": device,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
    }
    try:  # the installed version, without importing transformers (1-2 s) only to read it
        env["transformers"] = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        env["transformers"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return env


# a list that json.dumps(indent=2) spread over lines and whose items are all numbers or null; a raw
# line break never occurs inside a JSON string (it is escaped), so no string is ever touched
_NUMBER_LIST = re.compile(r"\[\n\s*((?:-?[0-9][0-9.eE+-]*|null)(?:,\n\s*(?:-?[0-9][0-9.eE+-]*|null))*)\n\s*\]")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _finite(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _jsonable(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def markdown_table(report: DriftReport, steps: tuple[int, ...] = (1, 2, 5, 10, 20, 30)) -> str:
    """The curves at a few steps as a Markdown table: cosine (and centred cosine) per loop and
    baseline, MSE skill of each loop against its baselines; chance level and drift horizons below."""
    h = report.horizon
    cols = [s for s in steps if s <= h] + ([h] if h not in steps else [])
    head = "| curve | " + " | ".join(f"step {s}" for s in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]

    def row(label: str, curve: list[float], fmt: str = "{:.3f}") -> None:
        lines.append(f"| {label} | " + " | ".join(fmt.format(curve[s - 1]) for s in cols) + " |")

    for name in ("closed_loop", "open_loop", "copy_last", "copy_first"):
        if name in report.loops:
            row(f"cosine, {name.replace('_', ' ')}", report.loops[name].cosine)
    for name in ("closed_loop", "open_loop", "copy_last", "copy_first"):
        if name in report.loops:
            row(f"centred cosine, {name.replace('_', ' ')}", report.loops[name].centred_cosine)
    for name in ("closed_loop", "open_loop"):
        for base, curve in report.loops[name].skill.items():
            row(f"MSE skill, {name.replace('_', ' ')} vs {base.replace('_', ' ')}", curve, "{:+.3f}")
    horizons = ", ".join(
        f"{n.replace('_', ' ')} {'never' if s.drift_horizon is None else s.drift_horizon}" for n, s in report.loops.items()
    )
    lines.append("")
    lines.append(
        f"Chance level {report.chance_level:.3f} (centred {report.chance_level_centred:.3f}); drift horizon at "
        f"{report.thresholds.get('threshold', 0.5)}: {horizons} (within {h} steps)."
    )
    return "\n".join(lines)


def render_text(
    reports: Sequence[DriftReport], *, details: bool = True, gated_sources: Collection[str] | None = None
) -> str:
    """The text view of one or more reports: the one renderer of the command line and the pytest summary.

    A table with a row per report: cosines (closed loop at step 1, open loop at steps 1, 10 and H),
    the open-loop drift horizon, the closed-loop step-1 MSE skill against copy-last, and the verdict:
    PASS, or FAIL and the failed gates; ``(measured)`` for a report whose action source is not in
    ``gated_sources`` (None: every report is gated), as the bench asserts its gates on recorded
    actions only. ``details``: then, per report, its data, chance level, summary of every loop
    (``DriftReport.summary``) and every gate with its message.
    """
    head = (f"{'model':<28} {'actions':<9} {'closed@1':>8} {'open@1':>7} {'open@10':>7} {'open@H':>7} "
            f"{'horizon':>7} {'skill@1':>8}  verdict")
    lines = [head, "-" * len(head)]
    for r in reports:
        op, cl = r.loops["open_loop"], r.loops["closed_loop"]
        source = r.config.get("action_source", "?")
        failed = [g.name for g in r.gates if not g.passed]
        verdict = "PASS" if not failed else "FAIL " + ",".join(failed)
        if gated_sources is not None and source not in gated_sources:
            verdict = "(measured)"
        hz = "never" if op.drift_horizon is None else str(op.drift_horizon)
        skill = (cl.skill.get("copy_last") or [None])[0]
        name = str(r.model.get("spec") or r.model.get("name"))[:28]
        lines.append(
            f"{name:<28} {source:<9} {_cell(cl.cosine[0], 8)} {_cell(op.cosine[0], 7)} "
            f"{_cell(op.cosine[9] if r.horizon >= 10 else None, 7)} {_cell(op.cosine[-1], 7)} {hz:>7} "
            f"{_cell(skill, 8, '+.3f')}  {verdict}"
        )
    if reports:
        lines.append(f"(cosines at steps 1/10/H={reports[0].horizon}; horizon: first open-loop step below the "
                     "threshold; skill: closed-loop MSE skill vs copy-last at step 1)")
    landscapes = [r for r in reports if r.energy]
    if landscapes and not details:
        lines += ["", "energy landscape: rank of the recorded actions among candidates by latent goal energy "
                  "(0 = always best, 0.5 = chance)"]
        for r in landscapes:
            name = str(r.model.get("spec") or r.model.get("name"))[:28]
            cells = "  ".join(f"{row['name']} {row['rank']:.3f}" for row in r.energy["rows"])
            lines.append(f"{name:<28} k={r.energy['k']}  {cells}")
    for r in reports if details else ():
        lines += ["", f"model {r.model.get('name')}  data {r.data.get('id')}  ({r.data.get('episodes')} episodes, "
                  f"H={r.horizon})", f"chance level {r.chance_level:.3f} (centred {r.chance_level_centred:.3f})"]
        for loop, row in r.summary().items():
            cells = "  ".join(f"{k}={_cell(v, 0) if isinstance(v, float) else ('-' if v is None else v)}"
                              for k, v in row.items())
            lines.append(f"  {loop:<12} {cells}")
        lines += [f"  [{'PASS' if g.passed else 'FAIL'}] {g.name}: {g.message}" for g in r.gates]
        lines += _energy_lines(r)
    return "\n".join(lines)


def _energy_lines(r: DriftReport) -> list[str]:
    """The energy landscape of a report, one line per candidate group: rank (95% CI) and energy ratio."""
    e = r.energy
    if not e:
        if "energy" not in r.config:  # a report older than schema 3: it never had one
            return []
        why = ("switched off" if r.config["energy"] is False
               else f"measured with recorded actions only; these are {r.config.get('action_source')}")
        return [f"  energy landscape: not measured ({why})"]
    n_starts = len(e["starts"]) if isinstance(e.get("starts"), list) else "?"
    out = [f"  energy landscape: goals k={e['k']} model steps ahead, {n_starts} starts x {r.data.get('episodes')} episodes; "
           f"rank of the recorded actions (0 = always best, 0.5 = chance), 95% CI over episodes"]
    if e.get("note"):
        out.append(f"    ({e['note']})")
    n = e.get("episodes", r.data.get("episodes"))
    for row in e["rows"]:
        what = "random (other recorded blocks)" if row.get("scale") is None else f"perturbed {row['scale']:g} x std"
        ratio = row.get("energy_ratio")
        # one episode has no interval over episodes (the starts of one episode are not independent)
        if isinstance(n, int) and n < 2:
            ci = f"(n/a: {n} episode)"
        elif f"{row['rank_lo']:.3f}" == f"{row['rank_hi']:.3f}":  # every episode ranked it alike
            ci = "(no spread)"
        else:
            ci = f"[{row['rank_lo']:.3f}, {row['rank_hi']:.3f}]"
        out.append(f"    {what:<31} rank {row['rank']:.3f} {ci}  "
                   f"energy {'-' if ratio is None else format(ratio, '.2f')} x recorded's")
    return out


def _cell(v: float | None, width: int, fmt: str = ".3f") -> str:
    """A number right-aligned in ``width`` characters; ``-`` for a value the report does not have
    (a step beyond H, or a score that was not finite and is null in the JSON)."""
    return f"{'-' if v is None else format(v, fmt):>{width}}"
