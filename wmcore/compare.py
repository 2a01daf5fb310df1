"""``wmcore compare BASE NEW``: diff two saved runs pair by pair and give a regression verdict.

A run is a pytest-benchmark JSON whose benchmarks carry wmcore's record (``extra_info["wmcore"]``,
written by ``wm_record``), a run directory of DriftReport JSONs (``runs/run-*/``), or one DriftReport
JSON. Run directories hold no timings.

Pairing. An entry is one (test, parameters, model) measurement. Entries pair when their test name
(test file name and function, ``test_drift.py::test_drift``) and every parameter except the model
(``wm_model_spec``) agree; when one side is a run directory there are no test names and the action
source is the only parameter. Models pair, in this order: by ``--pair OLD=NEW`` (a model's name or
spec on each side), by the same model name (``model.name``) on both sides, and, when each run has
exactly one model, those two. What is left is listed as unpaired.

Gated metrics (tolerances from the flags, else ``[tool.wmcore.compare]`` of the nearest
pyproject.toml, else the defaults of ``Tolerances``): closed-loop step-1 cosine, open-loop AUC,
open-loop drift horizon (never reached within H counts as H+1), and, when ``--max-slowdown`` is set,
the median time. Pairs over different horizons or data (sha256) are refused.

Exit status: 0 no regression, 1 a paired gated metric regressed beyond its tolerance, 2 unusable input.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import metrics as M
from .config import find_pyproject, wmcore_table
from .errors import WMError, run_command
from .report import SCHEMA, DriftReport

MODEL_PARAM = "wm_model_spec"  # the bench's model parameter: what changes between the two runs
ACTION_PARAM = "wm_action_source"
_EPS = 1e-12  # float noise allowance when a change equals its tolerance
_LIST_MAX = 20  # entries listed per side in an error message


# --- tolerances --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerances:
    """How much worse NEW may be than BASE before a pair counts as a regression."""

    step1_drop: float = 0.02  # closed-loop step-1 cosine may drop by at most this
    auc_drop: float = 0.02  # open-loop AUC (mean cosine over steps 1..H) may drop by at most this
    horizon_drop: int = 2  # open-loop drift horizon shortening by this many steps or more regresses
    slowdown: float | None = None  # median time may grow by at most this ratio (None: not gated)


_FLAGS = {"step1_drop": "--max-step1-drop", "auc_drop": "--max-auc-drop",
          "horizon_drop": "--max-horizon-drop", "slowdown": "--max-slowdown"}


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


def load_tolerances(
    pyproject: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> tuple[Tolerances, Path | None]:
    """Tolerances from ``overrides`` (None values ignored) over ``[tool.wmcore.compare]`` of
    ``pyproject`` (default: the nearest pyproject.toml with a ``[tool.wmcore]`` table, as for the
    thresholds) over the defaults. Returns them and the pyproject read (None if none)."""
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
            values[k] = _check_tolerance(k, v, _FLAGS.get(k, k))
    return Tolerances(**values), path


# --- runs and their entries --------------------------------------------------------------------


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

    @property
    def horizon(self) -> int:
        return len(self.open_loop)

    @property
    def where(self) -> str:
        return (self.test + " " if self.test else "") + _params_str(self.params)


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
    doc = _read_json(p)
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


def _read_json(p: Path) -> Any:
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise WMError(f"{p}: not a JSON file (not UTF-8 text)") from None
    except OSError as e:
        raise WMError(f"{p}: cannot read it ({e.strerror})") from None
    try:
        return json.loads(text)  # pytest-benchmark may write NaN / Infinity: accepted here, checked below
    except json.JSONDecodeError as e:
        raise WMError(f"{p}: not valid JSON ({e}); was the file truncated? Re-run the benchmark to rewrite it") from None


def _load_run_dir(d: Path) -> Run:
    files = sorted(d.glob("*.json"))
    if not files:
        raise WMError(
            f"{d}: a directory without JSON files; expected a wmcore run directory (runs/run-*/) holding "
            "DriftReport JSONs, or pass a pytest-benchmark JSON file"
        )
    entries = []
    for f in files:
        doc = _read_json(f)
        if isinstance(doc, dict) and "benchmarks" in doc:
            raise WMError(
                f"{d}: holds pytest-benchmark files, not DriftReports; pass one of them as a file, e.g. {f}"
            )
        entries.append(_report_entry(DriftReport.from_dict(doc, source=str(f)), f))
    return Run(d, "run directory", tuple(entries))


def _report_entry(r: DriftReport, f: Path) -> Entry:
    closed = r.loops["closed_loop"]
    skill = closed.skill.get("copy_last") or [None]
    return Entry(
        name=f.name,
        test=None,
        params=((ACTION_PARAM, str(r.config.get("action_source", "?"))),),
        spec=str(r.model.get("spec") or r.model.get("name") or f.stem),
        label=str(r.model.get("name") or r.model.get("spec") or f.stem),
        open_loop=_curve(r.loops["open_loop"].cosine, f"{f}: loops.open_loop.cosine"),
        closed_loop=_curve(closed.cosine, f"{f}: loops.closed_loop.cosine"),
        skill1=_number(skill[0]),
        threshold=_threshold(r.thresholds, str(f)),
        data_id=r.data.get("id"),
        data_sha256=r.data.get("sha256"),
        frameskip=r.model.get("frameskip"),
        median_s=None,
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
            "written by a wmcore bench (pytest bench/ --benchmark-json=FILE; its tests call wm_record(report, "
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
        open_ = _curve(curves["open_loop"], f"{where}: curves.open_loop")
        closed = _curve(curves["closed_loop"], f"{where}: curves.closed_loop")
        skill = [g.get("measured") for g in rec.get("gates") or [] if g.get("name") == "skill_vs_copy_last"]
        stats = b.get("stats")
        return Entry(
            name=name,
            test=_test_name(b),
            params=tuple(sorted((str(k), v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in params.items())),
            spec=str(spec),
            label=str(model.get("name") or spec),
            open_loop=open_,
            closed_loop=closed,
            skill1=_number(skill[0]) if skill else None,
            threshold=_threshold(rec.get("thresholds") or {}, where),
            data_id=data.get("id"),
            data_sha256=data.get("sha256"),
            frameskip=model.get("frameskip"),
            median_s=_positive(stats.get("median")) if isinstance(stats, dict) else None,
        )
    except (KeyError, TypeError, AttributeError) as e:
        what = f"field {e.args[0]!r}" if isinstance(e, KeyError) else f"a malformed field ({e})"
        raise WMError(f"{where}: extra_info['wmcore'] lacks {what}; was it written by wmcore's wm_record?") from None


def _test_name(b: dict) -> str:
    """``bench/test_drift.py::test_drift[pusht-lewm-recorded]`` -> ``test_drift.py::test_drift``: the
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


def _params_str(params: tuple[tuple[str, str], ...]) -> str:
    return "[" + ", ".join(f"{k}={v}" for k, v in params) + "]"


# --- pairing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    old: Entry
    new: Entry


@dataclass(frozen=True)
class Pairing:
    pairs: tuple[Pair, ...]
    only_base: tuple[Entry, ...]
    only_new: tuple[Entry, ...]


def parse_pair(arg: str) -> list[tuple[str, str]]:
    """The ways ``OLD=NEW`` splits at an ``=`` with both sides non-empty (specs may hold ``=``)."""
    splits = [(arg[:i], arg[i + 1 :]) for i, ch in enumerate(arg) if ch == "="]
    splits = [(o.strip(), n.strip()) for o, n in splits if o.strip() and n.strip()]
    if not splits:
        raise WMError(f"--pair {arg!r}: expected OLD=NEW, a model name or spec of BASE, '=', one of NEW")
    return splits


def _resolve(name: str, models: dict[str, str]) -> list[str]:
    by_spec = [s for s in models if s == name]
    return by_spec or [s for s, label in models.items() if label == name]


def _model_list(models: dict[str, str]) -> str:
    return ", ".join(label if label == spec else f"{label} ({spec})" for spec, label in models.items())


def pair_runs(base: Run, new: Run, explicit: Sequence[str] = ()) -> Pairing:
    """Pair the entries of ``base`` and ``new`` (see the module docstring); ``explicit``: ``--pair``
    arguments ``OLD=NEW``."""
    old_models, new_models = base.models, new.models
    matched: dict[str, str] = {}  # old spec -> new spec
    for arg in explicit:
        found = []
        for o, n in parse_pair(arg):
            olds, news = _resolve(o, old_models), _resolve(n, new_models)
            if olds and news:
                found.append((o, n, olds, news))
        if not found:
            raise WMError(
                f"--pair {arg!r}: names no model of BASE on the left and of NEW on the right; "
                f"BASE ({base.path}) has {_model_list(old_models)}; NEW ({new.path}) has {_model_list(new_models)}"
            )
        if len(found) > 1 or len(found[0][2]) > 1 or len(found[0][3]) > 1:
            raise WMError(f"--pair {arg!r}: ambiguous; name each model by its spec: BASE has "
                          f"{_model_list(old_models)}; NEW has {_model_list(new_models)}")
        o, n = found[0][2][0], found[0][3][0]
        if o in matched or n in matched.values():
            raise WMError(f"--pair {arg!r}: {o if o in matched else n} is paired twice; pair each model once")
        matched[o] = n

    def unique_labels(models: dict[str, str], taken) -> dict[str, str]:
        count: dict[str, int] = {}
        for label in models.values():
            count[label] = count.get(label, 0) + 1
        return {label: s for s, label in models.items() if count[label] == 1 and s not in taken}

    old_labels = unique_labels(old_models, matched)
    new_labels = unique_labels(new_models, set(matched.values()))
    for label, o in old_labels.items():
        if label in new_labels:
            matched[o] = new_labels[label]
    if not matched and len(old_models) == 1 and len(new_models) == 1:
        matched[next(iter(old_models))] = next(iter(new_models))

    use_test = base.kind == new.kind == "pytest-benchmark"
    olds, news = _index(base, use_test), _index(new, use_test)
    pairs, paired_old, paired_new = [], set(), set()
    for (key, o_spec), e in olds.items():
        n_spec = matched.get(o_spec)
        if n_spec is not None and (key, n_spec) in news:
            pairs.append(Pair(e, news[(key, n_spec)]))
            paired_old.add((key, o_spec))
            paired_new.add((key, n_spec))
    return Pairing(
        tuple(pairs),
        tuple(e for k, e in olds.items() if k not in paired_old),
        tuple(e for k, e in news.items() if k not in paired_new),
    )


def _index(run: Run, use_test: bool) -> dict[tuple, Entry]:
    out: dict[tuple, Entry] = {}
    for e in run.entries:
        k = ((e.test if use_test else None, e.params), e.spec)
        if k in out:
            hint = "" if use_test else "; compare two pytest-benchmark files to tell tests apart by name"
            raise WMError(
                f"{run.path}: two entries for model {e.label} at {_params_str(e.params)} ({out[k].name} and "
                f"{e.name}), cannot tell which to compare{hint}"
            )
        out[k] = e
    return out


def check_comparable(pairs: Sequence[Pair]) -> None:
    """Refuse pairs whose curves are not over the same steps of the same data."""
    bad = []
    for p in pairs:
        o, n = p.old, p.new
        if o.horizon != n.horizon:
            bad.append(f"{o.where} {o.label} -> {n.label}: horizon {o.horizon} vs {n.horizon} steps")
        if o.data_sha256 != n.data_sha256:
            bad.append(
                f"{o.where} {o.label} -> {n.label}: data sha256 {str(o.data_sha256)[:12]} ({o.data_id}) vs "
                f"{str(n.data_sha256)[:12]} ({n.data_id})"
            )
    if bad:
        raise WMError(
            "refusing to compare curves over different steps or data: " + "; ".join(bad)
            + ". Re-run one side with the same --wm-data and --wm-horizon (and --wm-episodes)"
        )


# --- the comparison of one pair ----------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    metric: str
    old: str
    new: str
    delta: str
    gate: str = ""  # the tolerance, for a gated metric
    regression: str | None = None  # why this row regressed


@dataclass(frozen=True)
class PairResult:
    pair: Pair
    rows: tuple[Row, ...]
    notes: tuple[str, ...]

    @property
    def regressions(self) -> list[str]:
        return [r.regression for r in self.rows if r.regression]


def compare_pair(pair: Pair, tol: Tolerances, base_kind: str = "", new_kind: str = "") -> PairResult:
    """The table rows of one pair and its regressions against ``tol``."""
    o, n = pair.old, pair.new
    h = o.horizon
    rows: list[Row] = []

    def cos_row(metric: str, a: float, b: float, drop_tol: float | None = None, what: str = "") -> None:
        reg = None
        if drop_tol is not None and a - b > drop_tol + _EPS:
            reg = f"{what} dropped by {a - b:.4f} ({a:.4f} -> {b:.4f}; tolerance {drop_tol:g})"
        gate = f"drop <= {drop_tol:g}" if drop_tol is not None else ""
        rows.append(Row(metric, f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}", gate, reg))

    cos_row("closed loop, step-1 cosine", o.closed_loop[0], n.closed_loop[0], tol.step1_drop, "closed-loop step-1 cosine")
    for k in dict.fromkeys(s for s in (1, 10, h) if s <= h):
        cos_row(f"open loop, step-{k} cosine", o.open_loop[k - 1], n.open_loop[k - 1])
    cos_row("open loop, AUC (mean cosine)", M.auc(o.open_loop), M.auc(n.open_loop), tol.auc_drop, "open-loop AUC")

    thr = o.threshold  # both horizons at BASE's threshold, so they measure the same crossing
    dh_o, dh_n = M.drift_horizon(o.open_loop, thr), M.drift_horizon(n.open_loop, thr)
    eff_o, eff_n = (h + 1 if dh_o is None else dh_o), (h + 1 if dh_n is None else dh_n)
    reg = None
    if eff_o - eff_n >= tol.horizon_drop:
        reg = (f"open-loop drift horizon shortened by {eff_o - eff_n} steps ({_horizon(dh_o, h)} -> "
               f"{_horizon(dh_n, h)}; tolerance: shorter by < {tol.horizon_drop})")
    rows.append(Row(f"open loop, drift horizon @{thr:g}", _horizon(dh_o, h), _horizon(dh_n, h), f"{eff_n - eff_o:+d}",
                    f"shorter by < {tol.horizon_drop}", reg))

    rows.append(Row("closed loop, step-1 skill vs copy-last", _signed(o.skill1), _signed(n.skill1),
                    f"{n.skill1 - o.skill1:+.4f}" if o.skill1 is not None and n.skill1 is not None
                    and math.isfinite(n.skill1 - o.skill1) else "n/a"))

    gate = f"ratio <= {tol.slowdown:g}" if tol.slowdown is not None else "not gated"
    if o.median_s is not None and n.median_s is not None:
        ratio = n.median_s / o.median_s
        reg = None
        if tol.slowdown is not None and ratio > tol.slowdown + _EPS:
            reg = (f"median time grew x{ratio:.2f} ({_seconds(o.median_s)} -> {_seconds(n.median_s)}; "
                   f"tolerance x{tol.slowdown:g})")
        rows.append(Row("median time", _seconds(o.median_s), _seconds(n.median_s), f"x{ratio:.2f}", gate, reg))
    else:
        why = next((f"{side} is a {kind}: no timings" for side, kind in (("BASE", base_kind), ("NEW", new_kind))
                    if kind and kind != "pytest-benchmark"), "no median time recorded")
        rows.append(Row("median time", _seconds(o.median_s), _seconds(n.median_s), "n/a", why))

    notes = []
    if o.threshold != n.threshold:
        notes.append(f"thresholds differ (BASE {o.threshold:g}, NEW {n.threshold:g}): both drift horizons "
                     f"are taken at BASE's {o.threshold:g}")
    if o.frameskip != n.frameskip:
        notes.append(f"frameskips differ (BASE {o.frameskip}, NEW {n.frameskip}): a step is not the same "
                     "number of recorded frames")
    return PairResult(pair, tuple(rows), tuple(notes))


def _horizon(dh: int | None, h: int) -> str:
    return "never" if dh is None else str(dh)


def _signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= f:
            return f"{s / f:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def pair_models(pair: Pair) -> str:
    """``old -> new`` by model name, with the specs when the names alone do not tell them apart."""
    o, n = pair.old, pair.new
    if o.label == n.label and o.spec != n.spec:
        return f"{o.label} ({o.spec}) -> {n.label} ({n.spec})"
    return f"{o.label} -> {n.label}"


def format_result(res: PairResult, index: int) -> str:
    o, n = res.pair.old, res.pair.new

    def model(e: Entry) -> str:
        return e.label + (f" ({e.spec})" if e.spec != e.label else "") + f"  [{e.name}]"

    lines = [
        f"== pair {index}: {o.where}: {pair_models(res.pair)}",
        f"   old: {model(o)}",
        f"   new: {model(n)}",
        f"   data {o.data_id} sha256 {str(o.data_sha256)[:12]}, horizon {o.horizon} steps",
    ]
    lines += [f"   note: {t}" for t in res.notes]
    w = max(len(r.metric) for r in res.rows)
    g = max(len(r.gate) for r in res.rows if r.gate or r.regression)
    lines.append(f"   {'metric':<{w}}  {'old':>10}  {'new':>10}  {'delta':>9}  gate")
    for r in res.rows:
        mark = "  << REGRESSION" if r.regression else ""
        lines.append(f"   {r.metric:<{w}}  {r.old:>10}  {r.new:>10}  {r.delta:>9}  {r.gate:<{g}}{mark}".rstrip())
    return "\n".join(lines)


# --- the command -------------------------------------------------------------------------------


def default_out(root: str | os.PathLike = "runs") -> Path:
    """``runs/compare-YYYYmmdd-HHMMSS.png``, with ``-n`` added if that name exists."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        p = Path(root) / (f"compare-{stamp}" + (f"-{i}" if i else "") + ".png")
        if not p.exists():
            return p
    raise WMError(f"{root}: could not find a fresh name for the overlay PNG; pass --out")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wmcore compare",
        description="Compare two saved runs pair by pair: a side-by-side table of drift metrics, an overlay "
        "PNG of the curves, and exit status 1 if NEW regressed beyond the tolerances (0 otherwise, 2 on "
        "unusable input). Tolerances: the flags, else [tool.wmcore.compare] of the nearest pyproject.toml "
        "(keys step1_drop, auc_drop, horizon_drop, slowdown), else the defaults.",
    )
    p.add_argument("base", metavar="BASE", help="the reference run: a pytest-benchmark JSON (--benchmark-json / "
                   "--benchmark-autosave) or a wmcore run directory runs/run-*/ of DriftReport JSONs")
    p.add_argument("new", metavar="NEW", help="the run to check against BASE (same kinds)")
    p.add_argument("--pair", action="append", default=[], metavar="OLD=NEW",
                   help="pair model OLD of BASE with model NEW of NEW (names or specs), repeatable; models with "
                   "the same name pair by themselves, and so do the models of two one-model runs")
    p.add_argument("--out", metavar="PNG", help="overlay PNG to write (default runs/compare-YYYYmmdd-HHMMSS.png); "
                   "an existing file is never overwritten")
    p.add_argument("--max-step1-drop", type=float, metavar="D",
                   help=f"tolerated drop of the closed-loop step-1 cosine (default {Tolerances.step1_drop})")
    p.add_argument("--max-auc-drop", type=float, metavar="D",
                   help=f"tolerated drop of the open-loop AUC (default {Tolerances.auc_drop})")
    p.add_argument("--max-horizon-drop", type=int, metavar="N",
                   help=f"open-loop drift horizon shortened by N steps or more regresses (default "
                   f"{Tolerances.horizon_drop}; never reached within H counts as H+1)")
    p.add_argument("--max-slowdown", type=float, metavar="RATIO",
                   help="tolerated ratio of NEW's to BASE's median time, e.g. 1.2 (default: timings not gated)")
    p.add_argument("--pyproject", metavar="PATH", help="pyproject.toml to read [tool.wmcore.compare] from "
                   "(default: the nearest one with a [tool.wmcore] table)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``wmcore compare``; exit codes as in ``wmcore.errors`` (1: a regression)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command("wmcore compare", lambda: _run(build_parser().parse_args(argv)))


def _run(args: argparse.Namespace) -> int:
    from .plot import plot_overlay

    flags = {"step1_drop": args.max_step1_drop, "auc_drop": args.max_auc_drop,
             "horizon_drop": args.max_horizon_drop, "slowdown": args.max_slowdown}
    tol, pyproject = load_tolerances(args.pyproject, flags)
    for arg in args.pair:
        parse_pair(arg)  # syntax first: a typo should not wait for the runs to load
    if args.out and Path(args.out).exists():
        raise WMError(f"--out {args.out}: exists already; wmcore never overwrites a file, choose a new name")
    base, new = load_run(args.base), load_run(args.new)
    pairing = pair_runs(base, new, args.pair)
    if not pairing.pairs:
        raise WMError(
            "no common entries to compare. Entries pair by test name and every parameter except the model; "
            "models pair by --pair OLD=NEW, by the same model name, or as the only model of each run.\n"
            f"  BASE {base.path} has:\n{_entry_list(base.entries)}\n  NEW {new.path} has:\n{_entry_list(new.entries)}"
        )
    check_comparable(pairing.pairs)

    source = ", ".join(f"{k}={v}" for k, v in flags.items() if v is not None)
    print(f"BASE {base.path} ({base.kind}, {len(base.entries)} entries)")
    print(f"NEW  {new.path} ({new.kind}, {len(new.entries)} entries)")
    print(
        f"tolerances: closed-loop step-1 cosine drop <= {tol.step1_drop:g}, open-loop AUC drop <= {tol.auc_drop:g}, "
        f"open-loop drift horizon shorter by < {tol.horizon_drop} steps, median time "
        + (f"ratio <= {tol.slowdown:g}" if tol.slowdown is not None else "not gated")
        + f" (flags: {source or 'none'}; pyproject: {pyproject or 'none'})"
    )
    results = [compare_pair(p, tol, base.kind, new.kind) for p in pairing.pairs]
    for i, res in enumerate(results, 1):
        print()
        print(format_result(res, i))
    print()
    for side, run, only in (("BASE", base, pairing.only_base), ("NEW", new, pairing.only_new)):
        if only:
            print(f"unpaired, only in {side}:\n{_entry_list(only)}")
        if run.skipped:
            print(f"{side}: {len(run.skipped)} benchmark(s) without a wmcore record, not compared: "
                  + ", ".join(run.skipped))

    panels = []
    for res in results:
        o, n = res.pair.old, res.pair.new
        same = o.label == n.label and o.spec != n.spec
        panels.append((
            [(f"old: {o.label}" + (f" ({o.spec})" if same else ""), o.open_loop, o.closed_loop),
             (f"new: {n.label}" + (f" ({n.spec})" if same else ""), n.open_loop, n.closed_loop)],
            o.threshold,
            f"{o.where}: {pair_models(res.pair)}",
        ))
    out = plot_overlay(panels, Path(args.out) if args.out else default_out(),
                       title=f"BASE {base.path.name} vs NEW {new.path.name}")
    print(f"overlay: {out}")

    regressed = [(res, res.regressions) for res in results if res.regressions]
    if not regressed:
        print(f"verdict: no regression in {len(results)} pair(s)")
        return 0
    print(f"verdict: REGRESSION in {len(regressed)} of {len(results)} pair(s)")
    for res, why in regressed:
        print(f"  {res.pair.old.where}: {pair_models(res.pair)}:")
        for w in why:
            print(f"    - {w}")
    return 1


def _entry_list(entries: Sequence[Entry]) -> str:
    lines = [f"    {e.where} model {e.label}" + (f" ({e.spec})" if e.spec != e.label else "") for e in entries[:_LIST_MAX]]
    if len(entries) > _LIST_MAX:
        lines.append(f"    ... and {len(entries) - _LIST_MAX} more")
    return "\n".join(lines) or "    (nothing)"


if __name__ == "__main__":
    sys.exit(main())
