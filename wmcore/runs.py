"""Saved runs, read back for ``wmcore compare``: a pytest-benchmark JSON whose benchmarks carry wmcore's
record (``extra_info["wmcore"]``, see ``benchmark_record``), a run directory of DriftReport JSONs
(``runs/run-*/``), or one DriftReport JSON. Every way a file can be unusable is a WMError naming it.

A run is a list of ``Entry``: one measured (test, parameters, model), with the cosine curves ``[H]``
(index = step - 1) and what identifies the model and the data. Run directories hold no timings and
no test names: their only parameter is the action source.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import WMError
from .fsio import read_json
from .report import SCHEMA, DriftReport

__all__ = ["ACTION_PARAM", "MODEL_PARAM", "OTHER_FORMATS", "PAIRED_LOOPS", "Entry", "Run", "benchmark_record", "load_run",
           "run_of_reports"]

PAIRED_LOOPS = ("open_loop", "closed_loop")  # whose per-episode cosine curves the comparison pairs
MODEL_PARAM = "wm_model_spec"  # the bench's model parameter: what changes between the two runs
ACTION_PARAM = "wm_action_source"
# the report fields a benchmark record keeps (the per-episode curves stay in the DriftReport JSON)
_RECORD_FIELDS = ("model", "data", "config", "thresholds", "summary", "gates", "passed", "chance_level",
                  "chance_level_centred")
_REREAD = "Re-run the benchmark to rewrite it"


@dataclass(frozen=True)
class Entry:
    """One measured (test, parameters, model): the cosine curves ``[H]`` (index = step - 1) and what
    identifies the model and the data."""

    name: str  # as its run names it: the benchmark's name or the report's file name
    test: str | None  # "test_drift.py::test_drift"; None for a DriftReport
    params: tuple[tuple[str, str], ...]  # every parameter except the model, sorted
    spec: str
    label: str  # model.name
    open_loop: tuple[float, ...]
    closed_loop: tuple[float, ...]
    skill1: float | None  # closed-loop step-1 MSE skill against copy-last
    threshold: float
    data_id: str | None
    data_sha256: str | None
    frameskip: Any
    median_s: float | None  # pytest-benchmark's median time of the timed call
    # per-episode cosine curves [n][H] of "open_loop" and "closed_loop" and their episode ids, for the
    # paired comparison; None from a record or report written before they were kept (schema 1)
    episode_ids: tuple[str, ...] | None = None
    per_episode: dict[str, tuple[tuple[float, ...], ...]] | None = None
    # what data_sha256 hashes: "episodes" (schema 4: the episodes' digests) or None (before: one batch)
    data_sha256_of: str | None = None
    # the thinking budget K the run spent per prediction (config.think; 1 for a report written before it)
    think: int = 1

    @property
    def horizon(self) -> int:
        return len(self.open_loop)

    @property
    def params_text(self) -> str:
        """``[wm_action_source=recorded]``: the parameters as the comparison names them."""
        return "[" + ", ".join(f"{k}={v}" for k, v in self.params) + "]"

    @property
    def where(self) -> str:
        return (self.test + " " if self.test else "") + self.params_text


@dataclass(frozen=True)
class Run:
    path: Path
    kind: str  # "pytest-benchmark", "run directory", "drift report"
    entries: tuple[Entry, ...]
    skipped: tuple[str, ...] = ()  # benchmarks without a wmcore record

    @property
    def models(self) -> dict[str, str]:
        """spec -> label, in order of appearance."""
        return {e.spec: e.label for e in self.entries}


def benchmark_record(report: DriftReport) -> dict[str, Any]:
    """What ``wm_record`` puts into a benchmark's ``extra_info["wmcore"]``: the report's metadata,
    summary and gates, its mean cosine curves ``curves[loop]`` and MSE skill curves
    ``skill[loop][baseline]`` (each ``[H]``, index = step - 1); ``load_run`` reads it back."""
    d = report.to_dict()
    rec = {k: d[k] for k in _RECORD_FIELDS}
    rec["curves"] = {k: v["cosine"] for k, v in d["loops"].items()}
    rec["skill"] = {k: v["skill"] for k, v in d["loops"].items() if v["skill"]}
    rec["energy"] = d.get("energy")  # the offline energy landscape (None without recorded actions)
    # the paired comparison's input: per-episode cosine curves of the two rollouts (rows: data.episode_ids)
    rec["per_episode"] = {k: d["loops"][k]["per_episode"]["cosine"] for k in PAIRED_LOOPS
                          if d["loops"][k].get("per_episode")}
    return rec


def load_run(path: str | os.PathLike) -> Run:
    """Read a pytest-benchmark JSON, a run directory of DriftReport JSONs, or one DriftReport JSON."""
    p = Path(path)
    if p.is_dir():
        return _load_run_dir(p)
    if not p.exists():
        raise WMError(
            f"{p}: no such file or directory; pass a pytest-benchmark JSON (pytest --benchmark-json=FILE or "
            "--benchmark-autosave) or a wmcore run directory (runs/run-*/)"
        )
    # pytest-benchmark may write NaN / Infinity: accepted here, the curves are checked below
    doc = read_json(p, hint=f"was the file truncated? {_REREAD}")
    if isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list):
        return _load_benchmarks(p, doc)
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
        report = DriftReport.from_dict(doc, source=str(p))
        return Run(p, "drift report", (_report_entry(report, p),))
    raise WMError(
        f"{p}: neither a pytest-benchmark JSON (no 'benchmarks' list) nor a wmcore DriftReport "
        f"(schema {SCHEMA!r}); pass the file that pytest --benchmark-json / --benchmark-autosave wrote, "
        "or a run directory runs/run-*/"
    )


def _load_run_dir(d: Path) -> Run:
    files = sorted(d.glob("*.json"))
    if not files:
        raise WMError(
            f"{d}: a directory without JSON files; expected a wmcore run directory (runs/run-*/) holding "
            "DriftReport JSONs, or pass a pytest-benchmark JSON file"
        )
    entries = []
    for f in files:
        doc = read_json(f, hint=f"was the file truncated? {_REREAD}")
        if isinstance(doc, dict) and "benchmarks" in doc:
            raise WMError(
                f"{d}: holds pytest-benchmark files, not DriftReports; pass one of them as a file, e.g. {f}"
            )
        if isinstance(doc, dict) and doc.get("format") in OTHER_FORMATS:  # control reports, task sets
            continue
        entries.append(_report_entry(DriftReport.from_dict(doc, source=str(f)), f))
    if not entries:
        raise WMError(f"{d}: holds no DriftReport (only control reports or task sets); compare control reports "
                      "by passing them as files")
    return Run(d, "run directory", tuple(entries))


def run_of_reports(reports: Sequence[tuple[str, DriftReport]], where: str = "this session") -> Run:
    """A Run of reports in memory, ``(name, report)`` each (as a run directory of ``name.json`` files)."""
    return Run(Path(where), "run directory", tuple(_report_entry(r, Path(f"{name}.json")) for name, r in reports))


# JSON files of a run directory that are not DriftReports: wmcore's control reports and task sets
OTHER_FORMATS = ("wmcore.control", "wmcore.tasks", "wmcore.policy")


def _report_entry(r: DriftReport, f: Path) -> Entry:
    closed = r.loops["closed_loop"]
    per = {k: r.loops[k].per_episode["cosine"] for k in PAIRED_LOOPS if r.loops[k].per_episode}
    return Entry(
        name=f.name,
        test=None,
        params=((ACTION_PARAM, str(r.config.get("action_source", "?"))),),
        spec=str(r.model.get("spec") or r.model.get("name") or f.stem),
        label=str(r.model.get("name") or r.model.get("spec") or f.stem),
        open_loop=_curve(r.loops["open_loop"].cosine, f"{f}: loops.open_loop.cosine"),
        closed_loop=_curve(closed.cosine, f"{f}: loops.closed_loop.cosine"),
        skill1=_step1(closed.skill.get("copy_last")),
        threshold=_threshold(r.thresholds, str(f)),
        data_id=r.data.get("id"),
        data_sha256=r.data.get("sha256"),
        data_sha256_of=r.data.get("sha256_of"),
        frameskip=r.model.get("frameskip"),
        think=_think(r.config),
        median_s=None,
        **_paired_input(r.data.get("episode_ids"), per, len(closed.cosine), str(f)),
    )


def _load_benchmarks(p: Path, doc: dict) -> Run:
    entries, skipped = [], []
    for i, b in enumerate(doc["benchmarks"]):
        if not isinstance(b, dict):
            raise WMError(f"{p}: benchmarks[{i}] is not an object; is this a pytest-benchmark JSON?")
        name = str(b.get("name") or b.get("fullname") or f"benchmarks[{i}]")
        extra = b.get("extra_info")
        rec = extra.get("wmcore") if isinstance(extra, dict) else None
        if rec is None:
            skipped.append(name)
            continue
        entries.append(_benchmark_entry(b, rec, name, f"{p}: benchmark {name}"))
    if not entries:
        have = f"its {len(skipped)} benchmark(s) ({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''})" if skipped else "it has no benchmarks"
        raise WMError(
            f"{p}: no benchmark carries wmcore's record (extra_info['wmcore']): {have}. Compare files "
            "written by a wmcore bench (wmcore bench --benchmark-json=FILE; its tests call wm_record(report, "
            "name, benchmark))"
        )
    return Run(p, "pytest-benchmark", tuple(entries), tuple(skipped))


def _benchmark_entry(b: dict, rec: Any, name: str, where: str) -> Entry:
    if not isinstance(rec, dict):
        raise WMError(f"{where}: extra_info['wmcore'] is not an object; was it written by wm_record?")
    try:
        model, data, curves = rec["model"], rec.get("data") or {}, rec["curves"]
        params = dict(b.get("params") or {})
        spec = params.pop(MODEL_PARAM, None) or model.get("spec") or model["name"]
        # a record written before the skill curves were kept has none: the comparison shows n/a
        skill = (rec.get("skill") or {}).get("closed_loop") or {}
        stats = b.get("stats")
        return Entry(
            name=name,
            test=_test_name(b),
            params=tuple(sorted((str(k), v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in params.items())),
            spec=str(spec),
            label=str(model.get("name") or spec),
            open_loop=_curve(curves["open_loop"], f"{where}: curves.open_loop"),
            closed_loop=_curve(curves["closed_loop"], f"{where}: curves.closed_loop"),
            skill1=_step1(skill.get("copy_last")),
            threshold=_threshold(rec.get("thresholds") or {}, where),
            data_id=data.get("id"),
            data_sha256=data.get("sha256"),
            data_sha256_of=data.get("sha256_of"),
            frameskip=model.get("frameskip"),
            think=_think(rec.get("config")),
            median_s=_positive(stats.get("median")) if isinstance(stats, dict) else None,
            **_paired_input(data.get("episode_ids"), rec.get("per_episode"), len(curves["open_loop"]), where),
        )
    except (KeyError, TypeError, AttributeError) as e:
        what = f"field {e.args[0]!r}" if isinstance(e, KeyError) else f"a malformed field ({e})"
        raise WMError(f"{where}: extra_info['wmcore'] lacks {what}; was it written by wmcore's wm_record?") from None


def _paired_input(ids: Any, per: Any, h: int, where: str) -> dict[str, Any]:
    """Entry's ``episode_ids`` and ``per_episode`` from a report or record, checked; both None when the
    per-episode curves are absent (written before schema 2)."""
    if not per or set(per) != set(PAIRED_LOOPS):
        return {"episode_ids": None, "per_episode": None}
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise WMError(f"{where}: per-episode curves without a list of data.episode_ids; {_REREAD}")
    out = {}
    for loop in PAIRED_LOOPS:
        rows = per[loop]
        ok = isinstance(rows, list) and len(rows) == len(ids) and all(
            isinstance(r, list) and len(r) == h and all(_number(x) is not None and math.isfinite(x) for x in r)
            for r in rows)
        if not ok:
            raise WMError(f"{where}: per-episode {loop} curves must be {len(ids)} episodes x {h} finite cosines; {_REREAD}")
        out[loop] = tuple(tuple(float(x) for x in r) for r in rows)
    return {"episode_ids": tuple(ids), "per_episode": out}


def _think(config: Any) -> int:
    """A record's thinking budget (``config.think``); 1 where it has none (written before budgets)."""
    k = config.get("think", 1) if isinstance(config, dict) else 1
    return k if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else 1


def _test_name(b: dict) -> str:
    """``wmcore/suites/test_drift.py::test_drift[pusht-lewm-recorded]`` -> ``test_drift.py::test_drift``: the
    test without its parameters, and without the directory, so a moved file still pairs."""
    full = str(b.get("fullname") or b.get("name") or "")
    full = full.split("[", 1)[0]
    file, sep, rest = full.partition("::")
    return f"{Path(file).name}{sep}{rest}"


def _curve(v: Any, where: str) -> tuple[float, ...]:
    ok = isinstance(v, list) and v and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
    )
    if not ok:
        raise WMError(f"{where}: expected a non-empty list of finite cosines, found {str(v)[:80]}")
    return tuple(float(x) for x in v)


def _step1(curve: Any) -> float | None:
    """Step 1 of a skill curve ``[H]``; None where there is none or it is not a number (a skill
    against a zero-error baseline is stored as null)."""
    return _number(curve[0]) if isinstance(curve, list) and curve else None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _positive(v: Any) -> float | None:
    v = _number(v)
    return v if v is not None and math.isfinite(v) and v > 0 else None


def _threshold(thresholds: Any, where: str) -> float:
    t = thresholds.get("threshold", 0.5) if isinstance(thresholds, dict) else 0.5
    if _number(t) is None or not math.isfinite(t):
        raise WMError(f"{where}: thresholds.threshold must be a number, found {t!r}")
    return float(t)
