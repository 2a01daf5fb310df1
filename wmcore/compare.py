"""``wmcore compare``'s logic: two saved runs (``wmcore.runs``) -> pairs -> a table per pair and a
regression verdict. Pure: no files are read or written here and nothing is printed; the command
(``wmcore.cli``) reads the runs, prints ``summary_lines``, draws ``overlay_panels`` and exits 1 on a
regression.

Pairing. An entry is one (test, parameters, model) measurement. Entries pair when their test name
(test file name and function, ``test_drift.py::test_drift``) and every parameter except the model
(``wm_model_spec``) agree; when one side is a run directory there are no test names and the action
source is the only parameter. Models pair, in this order: by ``--pair OLD=NEW`` (a model's name or
spec on each side), by the same model name (``model.name``) on both sides, and, when each run has
exactly one model, those two. What is left is listed as unpaired.

Gated metrics (``wmcore.settings.Tolerances``): closed-loop step-1 cosine, open-loop AUC, open-loop
drift horizon (never reached within H counts as H+1, ``metrics.horizon_steps``), and, when a
slowdown tolerance is set, the median time. Pairs over different horizons, data (sha256) or episodes
(ids) are refused. A new gated metric is one more row in ``compare_pair`` with its ``regression`` set.

Paired statistics (rule "paired", the default). Both versions were evaluated on the same episodes, so
each gated drift metric is compared through its per-episode values (``wmcore.stats.paired_delta``):
the difference NEW - BASE of the metric, a 95% CI (step-1 cosine and AUC, means over episodes: the
paired t interval; the drift horizon of the mean curve: a BCa bootstrap resampling the episodes of both
sides together, seeded, ``RESAMPLES``; ``wmcore.stats`` says why), and a verdict: *regressed* (worse by more than the tolerance and the CI excludes 0),
*improved*, *inconclusive* (the CI reaches past minus the tolerance: a drop of that size is not ruled
out; the table says about how many episodes would settle it) or *no significant change*. Only
*regressed* fails. Runs written before the per-episode curves were kept (DriftReport schema 1, older
benchmark records) fall back to rule "means": the change of the mean curves against the tolerance,
no CI; the table says so. ``--means`` asks for that rule on any runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import metrics as M
from .errors import WMError
from .runs import Entry, Run
from .settings import Tolerances
from .stats import PairedDelta, paired_delta

__all__ = [
    "LEVEL",
    "RESAMPLES",
    "RULES",
    "Comparison",
    "Pair",
    "PairResult",
    "Pairing",
    "Row",
    "check_comparable",
    "compare_pair",
    "compare_runs",
    "format_result",
    "overlay_panels",
    "pair_models",
    "pair_runs",
    "parse_pair",
    "summary_lines",
    "verdict_lines",
]

_EPS = 1e-12  # float noise allowance when a change equals its tolerance
RULES = ("paired", "means")
LEVEL = 0.95  # confidence of the paired CIs
RESAMPLES = 2000  # bootstrap resamples per metric (seed 0: the same runs give the same CIs)
_LIST_MAX = 20  # entries listed per side in an error message


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
                f"{run.path}: two entries for model {e.label} at {e.params_text} ({out[k].name} and "
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
        if o.episode_ids is not None and n.episode_ids is not None and o.episode_ids != n.episode_ids:
            diff = sorted(set(o.episode_ids) ^ set(n.episode_ids))[:5]
            bad.append(f"{o.where} {o.label} -> {n.label}: different episodes ({len(o.episode_ids)} vs "
                       f"{len(n.episode_ids)}; " + (f"e.g. {', '.join(diff)} on one side only" if diff else "same ids, another order") + ")")
        # two definitions of the data hash (schema 4 changed it): only like ones are compared
        if o.data_sha256_of == n.data_sha256_of and o.data_sha256 != n.data_sha256:
            bad.append(
                f"{o.where} {o.label} -> {n.label}: data sha256 {str(o.data_sha256)[:12]} ({o.data_id}) vs "
                f"{str(n.data_sha256)[:12]} ({n.data_id})"
            )
    if bad:
        raise WMError(
            "refusing to compare curves over different steps, data or episodes: " + "; ".join(bad)
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
    ci: str = ""  # the paired 95% CI of delta, for a gated metric under the paired rule
    verdict: str = ""  # the paired verdict (wmcore.stats.VERDICTS), or "" under the rule on means
    paired: PairedDelta | None = None


@dataclass(frozen=True)
class PairResult:
    pair: Pair
    rows: tuple[Row, ...]
    notes: tuple[str, ...]

    @property
    def regressions(self) -> list[str]:
        return [r.regression for r in self.rows if r.regression]


def compare_pair(pair: Pair, tol: Tolerances, base_kind: str = "", new_kind: str = "", rule: str = "paired") -> PairResult:
    """The table rows of one pair and its regressions against ``tol`` (``rule``: see the module docstring)."""
    if rule not in RULES:
        raise WMError(f"comparison rule {rule!r}: expected one of {', '.join(RULES)}")
    o, n = pair.old, pair.new
    h = o.horizon
    rows: list[Row] = []
    notes = []
    paired = rule == "paired" and o.per_episode is not None and n.per_episode is not None
    if rule == "paired" and not paired:
        old = [side for side, e in (("BASE", o), ("NEW", n)) if e.per_episode is None]
        notes.append(f"{' and '.join(old)} {'has' if len(old) == 1 else 'have'} no per-episode curves (written "
                     "before DriftReport schema 2): compared by the rule on means, without confidence intervals")
    episodes = len(next(iter(o.per_episode.values()))) if paired and o.per_episode else None
    if paired and episodes < 2:  # nothing to resample: no interval, no claim of confidence
        paired = False
        notes.append(f"n/a: {episodes} episode, no confidence interval; compared on the values alone (the rule on means)")
    thr = o.threshold  # both horizons at BASE's threshold, so they measure the same crossing

    def gated(metric: str, what: str, a: float, b: float, tolerance: float, stat, loop: str, fmt: str, gate: str,
              means_regressed: bool, reason: str, shown: tuple[str, str, str] | None = None, tol_text: str = "",
              unit: str = "", of_mean_curve: bool = False) -> None:
        """One gated row: paired (per-episode rows of ``loop``; ``stat``: rows -> each episode's value, or
        with ``of_mean_curve`` BASE's and NEW's mean curves -> the change) or on means.
        ``shown``: old, new, delta as the table prints them (default: ``a``, ``b``, ``b - a`` in ``fmt``)."""
        old, new, delta = shown or (f"{a:{fmt}}", f"{b:{fmt}}", f"{b - a:+{fmt}}")
        tol_text = tol_text or f"tolerance {tolerance:g}"
        if paired:
            rows_o, rows_n = np.asarray(o.per_episode[loop]), np.asarray(n.per_episode[loop])
            if of_mean_curve:  # a bootstrap over episodes of the mean curve's metric
                r = paired_delta(rows_o, rows_n, tolerance, statistic=stat, level=LEVEL, n_resamples=RESAMPLES, seed=0)
            else:  # a mean over episodes of each episode's value: the paired t interval
                r = paired_delta(stat(rows_o), stat(rows_n), tolerance, level=LEVEL)
            # every episode changed by the same amount: an interval without width says nothing more
            ci = f"[{r.lo:+.4f}, {r.hi:+.4f}]" if r.hi > r.lo else "n/a: no spread"
            reg = (f"{what} {reason} by {a - b:{fmt}}{unit} ({old} -> {new}; 95% CI of the change {ci} excludes 0; "
                   f"{tol_text})") if r.verdict == "regressed" else None
            word = r.verdict + (f" (about {r.needed} episodes would settle it)" if r.needed else "")
            rows.append(Row(metric, old, new, delta, gate, reg, ci, word, r))
        else:
            reg = f"{what} {reason} by {a - b:{fmt}}{unit} ({old} -> {new}; {tol_text})" if means_regressed else None
            rows.append(Row(metric, old, new, delta, gate, reg))

    a, b = o.closed_loop[0], n.closed_loop[0]
    gated("closed loop, step-1 cosine", "closed-loop step-1 cosine", a, b, tol.step1_drop,
          lambda rows: rows[:, 0], "closed_loop", ".4f", f"drop <= {tol.step1_drop:g}",
          a - b > tol.step1_drop + _EPS, "dropped")
    for k in dict.fromkeys(s for s in (1, 10, h) if s <= h):
        rows.append(Row(f"open loop, step-{k} cosine", f"{o.open_loop[k - 1]:.4f}", f"{n.open_loop[k - 1]:.4f}",
                        f"{n.open_loop[k - 1] - o.open_loop[k - 1]:+.4f}"))
    a, b = M.auc(o.open_loop), M.auc(n.open_loop)
    gated("open loop, AUC (mean cosine)", "open-loop AUC", a, b, tol.auc_drop, lambda rows: rows.mean(1),
          "open_loop", ".4f", f"drop <= {tol.auc_drop:g}", a - b > tol.auc_drop + _EPS, "dropped")

    dh_o, dh_n = M.drift_horizon(o.open_loop, thr), M.drift_horizon(n.open_loop, thr)
    eff_o, eff_n = M.horizon_steps(dh_o, h), M.horizon_steps(dh_n, h)

    def steps_to_fall(curves: np.ndarray) -> np.ndarray:  # drift horizon of mean curves [..., H], never = H+1
        below = curves < thr
        return np.where(below.any(-1), below.argmax(-1) + 1, h + 1)

    # integer steps: "shorter by horizon_drop or more" is a change beyond horizon_drop - 1/2
    gated(f"open loop, drift horizon @{thr:g}", "open-loop drift horizon", eff_o, eff_n, tol.horizon_drop - 0.5,
          lambda mb, mn: steps_to_fall(mn) - steps_to_fall(mb), "open_loop", "d", f"shorter by < {tol.horizon_drop}", eff_o - eff_n >= tol.horizon_drop,
          "shortened", (_horizon(dh_o), _horizon(dh_n), f"{eff_n - eff_o:+d}"),
          f"tolerance: shorter by < {tol.horizon_drop}", " steps", of_mean_curve=True)

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

    if o.threshold != n.threshold:
        notes.append(f"thresholds differ (BASE {o.threshold:g}, NEW {n.threshold:g}): both drift horizons "
                     f"are taken at BASE's {o.threshold:g}")
    if o.think != n.think:
        notes.append(f"thinking budgets differ (BASE K={o.think}, NEW K={n.think}): the same model thinking "
                     "more or less, if the specs agree")
    if o.frameskip != n.frameskip:
        notes.append(f"frameskips differ (BASE {o.frameskip}, NEW {n.frameskip}): a step is not the same "
                     "number of recorded frames")
    return PairResult(pair, tuple(rows), tuple(notes))


def _horizon(dh: int | None) -> str:
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
    c = max([len(r.ci) for r in res.rows] + [0])
    ci_head = f"  {'95% CI of delta':<{c}}" if c else ""
    lines.append(f"   {'metric':<{w}}  {'old':>10}  {'new':>10}  {'delta':>9}{ci_head}  {'gate':<{g}}  verdict".rstrip())
    for r in res.rows:
        ci = f"  {r.ci:<{c}}" if c else ""
        word = r.verdict.upper() if r.verdict == "regressed" else r.verdict
        mark = "  << REGRESSION" if r.regression and not r.verdict else ""
        lines.append(f"   {r.metric:<{w}}  {r.old:>10}  {r.new:>10}  {r.delta:>9}{ci}  {r.gate:<{g}}  {word}{mark}".rstrip())
    return "\n".join(lines)


# --- two runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Two runs compared: the result of every pair, and what could not be paired."""

    base: Run
    new: Run
    tolerances: Tolerances
    pairing: Pairing
    results: tuple[PairResult, ...]

    @property
    def regressed(self) -> list[PairResult]:
        return [res for res in self.results if res.regressions]


def compare_runs(base: Run, new: Run, tol: Tolerances, explicit: Sequence[str] = (), rule: str = "paired") -> Comparison:
    """Pair ``base`` and ``new`` (``explicit``: ``--pair OLD=NEW`` arguments) and compare every pair;
    WMError when nothing pairs or a pair is over different steps or data."""
    pairing = pair_runs(base, new, explicit)
    if not pairing.pairs:
        raise WMError(
            "no common entries to compare. Entries pair by test name and every parameter except the model; "
            "models pair by --pair OLD=NEW, by the same model name, or as the only model of each run.\n"
            f"  BASE {base.path} has:\n{_entry_list(base.entries)}\n  NEW {new.path} has:\n{_entry_list(new.entries)}"
        )
    check_comparable(pairing.pairs)
    results = tuple(compare_pair(p, tol, base.kind, new.kind, rule) for p in pairing.pairs)
    return Comparison(base, new, tol, pairing, results)


def summary_lines(c: Comparison, flags: str = "", pyproject: object = None) -> list[str]:
    """The runs, the tolerances (``flags``: the options that set them; ``pyproject``: the file read),
    the table of every pair, and what was not compared."""
    base, new, tol = c.base, c.new, c.tolerances
    lines = [
        f"BASE {base.path} ({base.kind}, {len(base.entries)} entries)",
        f"NEW  {new.path} ({new.kind}, {len(new.entries)} entries)",
        f"tolerances: closed-loop step-1 cosine drop <= {tol.step1_drop:g}, open-loop AUC drop <= {tol.auc_drop:g}, "
        f"open-loop drift horizon shorter by < {tol.horizon_drop} steps, median time "
        + (f"ratio <= {tol.slowdown:g}" if tol.slowdown is not None else "not gated")
        + f" (flags: {flags or 'none'}; pyproject: {pyproject or 'none'})",
    ]
    for i, res in enumerate(c.results, 1):
        lines += ["", format_result(res, i)]
    lines.append("")
    for side, run, only in (("BASE", base, c.pairing.only_base), ("NEW", new, c.pairing.only_new)):
        if only:
            lines.append(f"unpaired, only in {side}:\n{_entry_list(only)}")
        if run.skipped:
            lines.append(f"{side}: {len(run.skipped)} benchmark(s) without a wmcore record, not compared: "
                         + ", ".join(run.skipped))
    return lines


def verdict_lines(c: Comparison) -> list[str]:
    """``verdict: ...`` and, on a regression, each regressed pair with its reasons."""
    regressed = c.regressed
    if not regressed:
        return [f"verdict: no regression in {len(c.results)} pair(s)"]
    lines = [f"verdict: REGRESSION in {len(regressed)} of {len(c.results)} pair(s)"]
    for res in regressed:
        lines.append(f"  {res.pair.old.where}: {pair_models(res.pair)}:")
        lines += [f"    - {w}" for w in res.regressions]
    return lines


def overlay_panels(c: Comparison) -> list[tuple[list[tuple[str, tuple[float, ...], tuple[float, ...]]], float, str]]:
    """One panel per pair for ``plot.plot_overlay``: (label, open-loop ``[H]``, closed-loop ``[H]``,
    per-episode open-loop ``[n][H]`` or None) of both sides, BASE's threshold, and a title."""
    panels = []
    for res in c.results:
        o, n = res.pair.old, res.pair.new
        same = o.label == n.label and o.spec != n.spec
        panels.append((
            [(f"old: {o.label}" + (f" ({o.spec})" if same else ""), o.open_loop, o.closed_loop,
              (o.per_episode or {}).get("open_loop")),
             (f"new: {n.label}" + (f" ({n.spec})" if same else ""), n.open_loop, n.closed_loop,
              (n.per_episode or {}).get("open_loop"))],
            o.threshold,
            f"{o.where}: {pair_models(res.pair)}",
        ))
    return panels


def _entry_list(entries: Sequence[Entry]) -> str:
    lines = [f"    {e.where} model {e.label}" + (f" ({e.spec})" if e.spec != e.label else "") for e in entries[:_LIST_MAX]]
    if len(entries) > _LIST_MAX:
        lines.append(f"    ... and {len(entries) - _LIST_MAX} more")
    return "\n".join(lines) or "    (nothing)"
