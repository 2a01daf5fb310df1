"""pytest plugin (entry point ``pytest11``): which models and data a bench run measures, thresholds,
and the recording of reports.

Options (all in the ``wmcore`` group of ``pytest --help``):
  --wm-model SPEC      model to benchmark, repeatable (default: the embedded pusht-lewm, pusht-ac-tiny
                       and pusht-wm; the thinking pusht-refine and pusht-thinker have a suite of their own)
  --wm-data PATH       episode directory, LeRobot dataset, wmcore/fixtures/ set name, or one video (default: pusht)
  --wm-camera KEY      camera of a LeRobot dataset with several
  --wm-actions-file F  actions of a single-video --wm-data (default: the file beside the video)
  --wm-horizon H       rollout horizon in model steps (default: [tool.wmcore] horizon, 30)
  --wm-start K         skip the first K recorded steps of each episode (default: [tool.wmcore] start)
  --wm-episodes N      use the first N episodes (default: all)
  --wm-actions SRC     action source, repeatable: recorded, zeros, random (default: recorded, random)
  --wm-device DEV      cpu, cuda, cuda:1, ... (default cpu)
  --wm-dtype DT        float32, bfloat16, float16 (default float32)
  --wm-threshold K=V   override a threshold of [tool.wmcore] for every model, repeatable
  --wm-gate-rule R     ci or mean: how the gates decide (default:
                       [tool.wmcore] gate_rule, ci); the same as --wm-threshold gate_rule=R
  --wm-artifacts DIR   where each run's directory of drift plots and reports is created (default runs)
  --wm-baseline PATH   a saved run (pytest-benchmark JSON or run directory) to compare this session with
                       at its end (wmcore compare's paired statistics, [tool.wmcore.compare] tolerances):
                       the verdict table in the summary, exit 1 on a regression
  --wm-no-filmstrip    skip the filmstrip of what each model imagines (MODEL-filmstrip.png)
  --wm-no-energy       skip the offline energy landscape (EvalConfig.energy; measured by default in every
                       report with recorded actions, plotted beside the drift plot as NAME-energy.png)

Under ``torchrun --nproc-per-node=N -m wmcore bench`` every rank runs the same session
(ranks that collected different tests stop with a usage error); the drift cases and the control
cases shard their episodes and tasks (``wmcore.dist``), every rank gets the whole report, and rank 0
alone writes the run directory, the benchmark records and the terminal summary.

Tests take ``wm_model_spec`` / ``wm_action_source`` as arguments to be parametrized over the chosen
models and action sources, and ``wm_model`` / ``wm_episodes`` / ``wm_prepared`` for the (session-cached)
loaded model, episodes and encoded ground truth; ``wm_reference`` for a model's report with another
action source (so a test that compares against it passes in any order); ``wm_record`` to write a
report and record it in the benchmark. Settings are resolved by ``wmcore.settings.resolve``, as for
the command line; the terminal summary is ``wmcore.report.render_text``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .errors import WMError
from .benchmark_json import atomic_benchmark_writes
from .fsio import new_run_dir, safe_name
from .report import DriftReport, render_text
from .rollout import ACTION_SOURCES
from .settings import DTYPES, GATE_RULES, Thresholds, check_placement, load_thresholds, parse_overrides, resolve

__all__ = ["DEFAULT_ACTIONS", "WMOptions"]  # and the hooks and fixtures pytest finds by name

_WRITTEN = pytest.StashKey[list]()
_REPORTS = pytest.StashKey[list]()  # (name, DriftReport) recorded this session
_CONTROL = pytest.StashKey[list]()  # (name, ControlReport) recorded this session
_THINKING = pytest.StashKey[list]()  # rendered thinking-curve tables recorded this session
_BASELINE = pytest.StashKey[Any]()  # the --wm-baseline Run, loaded at configure
_VERDICT = pytest.StashKey[list]()  # the lines of the baseline comparison, for the summary
_SETTINGS = pytest.StashKey["WMOptions"]()
_CACHE = pytest.StashKey[dict]()  # loaded models, episodes and prepared latents of this session
# the fixtures that need the models / the episodes loaded: collected tests that use them make the
# plugin load both before any test runs, so that data or a model that cannot be loaded is a usage error
_NEEDS_MODEL = {"wm_model", "wm_prepared"}
_NEEDS_DATA = {"wm_episodes", "wm_prepared"}
# control reports recorded by the bench get this many of their tasks filmed (and a contact sheet of all)
FILMED_TASKS = int(os.environ.get("WMCORE_FILMED_TASKS", "2"))
# measured by default: recorded actions (the gates) and random ones (a model must do worse with them)
DEFAULT_ACTIONS = ("recorded", "random")


@dataclass(frozen=True)
class WMOptions:
    """The checked ``--wm-*`` options (the ``wm_settings`` fixture); ``thresholds``: the
    ``--wm-threshold`` overrides, KEY -> VALUE."""

    models: tuple[str, ...]
    data: str
    camera: str | None
    actions_file: str | None
    horizon: int | None
    start: int | None
    episodes: int | None
    actions: tuple[str, ...]
    device: str
    dtype: str
    thresholds: dict
    energy: bool = True
    think: tuple[int, ...] | None = None  # --wm-think; None: K = 1 only, and no K in the test ids

    @property
    def data_id(self) -> str:
        """How reports name the data: ``--wm-data``, with ``[:N]`` for ``--wm-episodes N``."""
        return self.data + (f"[:{self.episodes}]" if self.episodes else "")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("wmcore", "world-model drift benchmarks")
    g.addoption("--wm-model", action="append", default=None, metavar="SPEC",
                help="model to benchmark, repeatable: an embedded name (pusht-lewm) or FAMILY:PATH "
                "(lewm:DIR, ac-tiny:DIR, keypoint:DIR, refine:DIR, vjepa2-ac:CKPT, analytic:...); default: the "
                "embedded pusht-lewm, pusht-ac-tiny and pusht-wm")
    g.addoption("--wm-data", default=None, metavar="PATH",
                help="episodes: a directory with index.json (wmcore make-fixtures), a LeRobot dataset root "
                "(meta/info.json), a wmcore/fixtures/ set name, or one video with its actions (--wm-actions-file); default "
                "pusht (the held-out PushT set)")
    g.addoption("--wm-camera", default=None, metavar="KEY", help="camera key of a LeRobot dataset with several")
    g.addoption("--wm-actions-file", default=None, metavar="FILE",
                help="actions of a single video given as --wm-data (.npy, .npz, .csv, .json; default: the file "
                "beside the video with the same stem)")
    g.addoption("--wm-horizon", type=int, default=None, metavar="H",
                help="rollout horizon in model steps (default: horizon in [tool.wmcore], 30)")
    g.addoption("--wm-start", type=int, default=None, metavar="K",
                help="recorded steps to skip at the start of each episode (default: start in [tool.wmcore], 0)")
    g.addoption("--wm-episodes", type=int, default=None, metavar="N", help="use only the first N episodes")
    g.addoption("--wm-actions", action="append", default=None, metavar="SRC",
                help=f"action source, repeatable: {', '.join(ACTION_SOURCES)} (default: {' and '.join(DEFAULT_ACTIONS)})")
    g.addoption("--wm-device", default="cpu", metavar="DEV", help="torch device (default cpu)")
    g.addoption("--wm-dtype", default="float32", metavar="DT", help=f"one of {', '.join(DTYPES)} (default float32)")
    g.addoption("--wm-threshold", action="append", default=None, metavar="KEY=VALUE",
                help="override a threshold for every model, repeatable (e.g. --wm-threshold step1_min=0.9); "
                "keys as in [tool.wmcore]")
    g.addoption("--wm-gate-rule", default=None, choices=GATE_RULES,
                help="how the gates decide: ci fails only a violation shown with 95%% confidence over episodes "
                "(a 90%% CI wholly beyond the limit), mean fails any violation of the mean curve (default: gate_rule in [tool.wmcore], ci)")
    g.addoption("--wm-artifacts", default="runs", metavar="DIR",
                help="directory under which each run creates a fresh run-YYYYmmdd-HHMMSS/ with drift PNGs "
                "and DriftReport JSONs (default: runs)")
    g.addoption("--wm-baseline", default=None, metavar="PATH",
                help="compare this session with a saved run (a pytest-benchmark JSON or a run directory) at its end, "
                "with wmcore compare's paired statistics and the tolerances of [tool.wmcore.compare]: the verdict "
                "in the summary, exit 1 on a regression; a baseline over other episodes is a usage error")
    g.addoption("--wm-think", action="append", default=None, metavar="K[,K...]",
                help="thinking budgets: the drift, throughput, control and thinking cases run at each K (a thinking "
                "model's extra computation per prediction; K = 1 is its base path); repeatable or comma-separated, "
                "e.g. 1,2,4,8 (default: 1 only)")
    g.addoption("--wm-no-filmstrip", action="store_true", default=False,
                help="skip the filmstrip of what each model imagines (MODEL-filmstrip.png in the run directory)")
    g.addoption("--wm-no-energy", action="store_true", default=False,
                help="skip the offline energy landscape (rank of the recorded actions by latent goal energy), "
                "measured by default in every report with recorded actions")


def pytest_configure(config: pytest.Config) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: join the process group first
        from . import dist

        dist.init_from_env()
    config.addinivalue_line("markers", "wm_think_only: a case that runs only with --wm-think (planning along K)")
    config.stash[_WRITTEN] = []
    config.stash[_REPORTS] = []
    config.stash[_CONTROL] = []
    config.stash[_THINKING] = []
    config.stash[_CACHE] = {}
    from .models import EMBEDDED, FAMILIES
    from .paths import BENCHED, DEFAULT_DATA

    o = config.getoption
    models = tuple(o("wm_model") or BENCHED)
    for spec in models:
        if spec not in EMBEDDED and spec.partition(":")[0] not in FAMILIES:
            raise pytest.UsageError(
                f"--wm-model {spec!r}: unknown model spec; use an embedded name {sorted(EMBEDDED)} or "
                f"FAMILY:PATH with a family in {sorted(FAMILIES)}"
            )
    actions = tuple(o("wm_actions") or DEFAULT_ACTIONS)
    bad = [a for a in actions if a not in ACTION_SOURCES]
    if bad:
        raise pytest.UsageError(f"--wm-actions {bad[0]!r}: expected one of {', '.join(ACTION_SOURCES)}")
    if o("wm_dtype") not in DTYPES:
        raise pytest.UsageError(f"--wm-dtype {o('wm_dtype')!r}: expected one of {', '.join(DTYPES)}")
    if o("wm_device") != "cpu":
        try:
            check_placement(o("wm_device"), o("wm_dtype"))
        except WMError as e:
            raise pytest.UsageError(f"--wm-device: {e}") from None
    if o("wm_start") is not None and o("wm_start") < 0:
        raise pytest.UsageError(f"--wm-start must be >= 0, found {o('wm_start')}")
    for name in ("wm_horizon", "wm_episodes"):
        if o(name) is not None and o(name) < 1:
            raise pytest.UsageError(f"--{name.replace('_', '-')} must be >= 1, found {o(name)}")
    data = o("wm_data") or DEFAULT_DATA
    if o("wm_data") is not None and not Path(data).exists():
        raise pytest.UsageError(f"--wm-data {data!r}: no such file or directory")
    if o("wm_actions_file") is not None and not Path(o("wm_actions_file")).is_file():
        raise pytest.UsageError(f"--wm-actions-file {o('wm_actions_file')!r}: no such file")
    try:
        overrides = parse_overrides(o("wm_threshold") or [], "--wm-threshold")
    except WMError as e:
        raise pytest.UsageError(str(e)) from None
    if o("wm_gate_rule"):  # wins over a --wm-threshold gate_rule=...: the more specific option
        overrides["gate_rule"] = o("wm_gate_rule")
    try:
        load_thresholds(None, overrides=overrides)  # unknown keys and bad values fail here, once
    except WMError as e:
        raise pytest.UsageError(f"--wm-threshold: {e}") from None
    think = None
    if o("wm_think"):
        try:
            think = tuple(dict.fromkeys(int(x) for item in o("wm_think") for x in item.split(",") if x.strip()))
        except ValueError:
            raise pytest.UsageError(f"--wm-think {','.join(o('wm_think'))!r}: expected integers >= 1, e.g. 1,2,4,8") from None
        if not think or min(think) < 1:
            raise pytest.UsageError(f"--wm-think {','.join(o('wm_think'))!r}: expected integers >= 1, e.g. 1,2,4,8")
    if o("wm_baseline") is not None:
        from .runs import load_run

        try:
            config.stash[_BASELINE] = load_run(o("wm_baseline"))
        except WMError as e:
            raise pytest.UsageError(f"--wm-baseline: {e}") from None
    config.stash[_SETTINGS] = WMOptions(
        models=models, data=data, camera=o("wm_camera"), actions_file=o("wm_actions_file"), horizon=o("wm_horizon"),
        start=o("wm_start"), episodes=o("wm_episodes"), actions=actions, device=o("wm_device"), dtype=o("wm_dtype"),
        thresholds=overrides, energy=not o("wm_no_energy"), think=think,
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    s = metafunc.config.stash.get(_SETTINGS, None)
    if s is None:
        return
    if "wm_model_spec" in metafunc.fixturenames:
        metafunc.parametrize("wm_model_spec", list(s.models), ids=list(s.models), scope="session")
    if "wm_action_source" in metafunc.fixturenames:
        metafunc.parametrize("wm_action_source", list(s.actions), ids=list(s.actions), scope="session")
    if "wm_think" in metafunc.fixturenames and s.think:
        metafunc.parametrize("wm_think", list(s.think), ids=[f"think{k}" for k in s.think], scope="session")


@pytest.fixture(scope="session")
def wm_think() -> int:
    """The thinking budget K of a case (``--wm-think`` parametrizes it; 1 without it)."""
    return 1


@pytest.fixture(scope="session")
def wm_settings(pytestconfig: pytest.Config) -> WMOptions:
    """The checked ``--wm-*`` options."""
    return pytestconfig.stash[_SETTINGS]


def _model(config: pytest.Config, spec: str):
    """The model of ``spec`` on the chosen device and dtype, loaded once per session."""
    cache, s = config.stash[_CACHE], config.stash[_SETTINGS]
    key = ("model", spec)
    if key not in cache:
        from .models import load
        from .settings import place_model

        cache[key] = place_model(load(spec), s.device, s.dtype)
    return cache[key]


def _episodes(config: pytest.Config):
    """The episodes of ``--wm-data``, loaded once per session."""
    cache, s = config.stash[_CACHE], config.stash[_SETTINGS]
    if "episodes" not in cache:
        from .data import load

        cache["episodes"] = load(s.data, limit=s.episodes, camera=s.camera, actions=s.actions_file)
    return cache["episodes"]


def _same_items_on_every_rank(session: pytest.Session) -> None:
    """Under torchrun every rank must run the same tests in the same order (each takes part in the
    same gathers): a usage error on every rank otherwise."""
    from . import dist

    rank, world = dist.world()
    if world == 1:
        return
    ids = [item.nodeid for item in session.items]
    every = dist.gather_ordered([ids], world)  # one "chunk" per rank: its list
    for r, other in enumerate(every):
        if other != ids:
            extra = sorted(set(other) ^ set(ids))[:3]
            raise pytest.UsageError(
                f"torchrun ranks collected different tests: rank {rank} has {len(ids)}, rank {r} has {len(other)}"
                + (f" (e.g. {', '.join(extra)} on one side only)" if extra else " in another order")
                + "; give every rank the same arguments, files and environment")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Without ``--wm-think`` the cases marked ``wm_think_only`` are deselected (not skipped: they are
    not asked for)."""
    s = config.stash.get(_SETTINGS, None)
    if s is None or s.think:
        return
    dropped = [i for i in items if i.get_closest_marker("wm_think_only") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i.get_closest_marker("wm_think_only") is None]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Load the data and every model the collected tests need, before the first test: an unreadable
    ``--wm-data`` or a ``--wm-model`` that cannot be loaded is a usage error (exit 4) naming the
    option, not an error in each test. Under torchrun: the ranks must have collected the same tests."""
    config = session.config
    _same_items_on_every_rank(session)
    if _SETTINGS not in config.stash or config.option.collectonly:
        return
    used = set().union(*(getattr(item, "fixturenames", ()) for item in session.items)) if session.items else set()
    s = config.stash[_SETTINGS]
    if used & _NEEDS_DATA:
        try:
            _episodes(config)
        except WMError as e:
            raise pytest.UsageError(f"--wm-data {s.data!r}: {e}") from None
    base = config.stash.get(_BASELINE, None)
    if base is not None and used & _NEEDS_DATA:
        ids = [e.id for e in _episodes(config)]
        for e in base.entries:
            if e.episode_ids is not None and list(e.episode_ids) != ids:
                raise pytest.UsageError(
                    f"--wm-baseline {base.path}: {e.name} ran over other episodes ({len(e.episode_ids)}, e.g. "
                    f"{e.episode_ids[0]!r}) than this session's --wm-data {s.data!r} ({len(ids)}, e.g. {ids[0]!r}); "
                    "a paired comparison needs the same episodes: run both with the same --wm-data and --wm-episodes")
    if used & _NEEDS_MODEL:
        from .evaluate import check_episodes

        for spec in s.models:
            try:
                model = _model(config, spec)
            except WMError as e:
                raise pytest.UsageError(f"--wm-model {spec!r}: {e}") from None
            if s.think and "wm_think" in used:
                from .settings import apply_think

                try:
                    for k in s.think:
                        apply_think(model, k, "--wm-think")
                except WMError as e:
                    raise pytest.UsageError(f"--wm-model {spec!r}: {e}") from None
                finally:
                    if hasattr(model, "think"):
                        model.think = 1
            if used & _NEEDS_DATA:
                try:
                    check_episodes(model, _episodes(config))
                except WMError as e:
                    data = f"--wm-data {s.data!r}" + (f" (--wm-actions-file {s.actions_file!r})" if s.actions_file else "")
                    raise pytest.UsageError(f"--wm-model {spec!r} does not fit {data}: {e}") from None


@pytest.fixture(scope="session")
def _wm_cache(pytestconfig: pytest.Config) -> dict:
    return pytestconfig.stash[_CACHE]


@pytest.fixture(scope="session")
def wm_model(wm_model_spec: str, pytestconfig: pytest.Config):
    """The loaded model of ``wm_model_spec``, on the chosen device and dtype (once per session)."""
    return _model(pytestconfig, wm_model_spec)


@pytest.fixture(scope="session")
def wm_episodes(pytestconfig: pytest.Config):
    """The episodes of ``--wm-data`` (once per session)."""
    return _episodes(pytestconfig)


@pytest.fixture(scope="session")
def wm_eval_config(wm_settings: WMOptions):
    """``wm_eval_config(model_name, action_source) -> EvalConfig`` from the options and thresholds
    (``wmcore.settings.resolve``)."""

    def make(model: str, source: str = "recorded"):
        s = wm_settings
        cfg, _ = resolve(model, horizon=s.horizon, start=s.start, action_source=source, device=s.device,
                         dtype=s.dtype, overrides=s.thresholds, energy=s.energy)
        return cfg

    return make


@pytest.fixture(scope="session")
def wm_prepared(wm_model, wm_model_spec: str, wm_episodes, wm_eval_config, _wm_cache: dict):
    """``wm_prepared(action_source) -> (EvalConfig, Prepared)``: encoded ground truth of the episodes for
    this model and action source (encoded once per model; action sources share the latents)."""
    import dataclasses

    from .evaluate import prepare
    from .rollout import make_actions

    def get(source: str = "recorded"):
        cfg = wm_eval_config(wm_model.name, source)
        key = ("prepared", wm_model_spec, cfg)
        if key not in _wm_cache:
            if source == "recorded":
                _wm_cache[key] = prepare(wm_model, wm_episodes, cfg)
            else:
                # always from the recorded actions as prepared (on the device, in the dtype), whichever
                # source a session asks for first, so that a source's actions do not depend on the order
                _, p = get("recorded")
                recorded = p.actions
                _wm_cache[key] = dataclasses.replace(p, actions=make_actions(source, recorded.float().cpu(), cfg.seed).to(recorded))
        return cfg, _wm_cache[key]

    return get


@pytest.fixture(scope="session")
def wm_reference(wm_model, wm_model_spec: str, wm_prepared, wm_thresholds, wm_settings: WMOptions,
                 pytestconfig: pytest.Config, _wm_cache: dict):
    """``wm_reference(action_source="recorded", think=1) -> DriftReport``: this model's report with that
    action source and thinking budget. The one ``wm_record`` recorded this session for the same spec
    and config if there is one, else evaluated now (untimed, not recorded) and kept for the session:
    the same numbers either way, so a test that compares against it passes whatever ran before it."""
    import dataclasses

    from .evaluate import build_report, rollouts

    def get(source: str = "recorded", think: int = 1) -> DriftReport:
        cfg, prep = wm_prepared(source)
        cfg = dataclasses.replace(cfg, think=think)
        config = cfg.to_dict()
        for _, r in pytestconfig.stash[_REPORTS]:
            if r.model.get("spec") == wm_model_spec and r.config == config:
                return r
        key = ("reference", wm_model_spec, cfg)
        if key not in _wm_cache:
            _wm_cache[key] = build_report(wm_model, prep, *rollouts(wm_model, prep, cfg), cfg,
                                          wm_thresholds(wm_model.name), spec=wm_model_spec,
                                          data_id=wm_settings.data_id)
        return _wm_cache[key]

    return get


@pytest.fixture(scope="session")
def wm_run_dir(pytestconfig: pytest.Config) -> Path:
    """This session's fresh artifact directory (created on first use; never reused). Under torchrun,
    rank 0's, which only rank 0 writes into."""
    from . import dist

    return dist.share(new_run_dir(Path(pytestconfig.getoption("wm_artifacts"))) if dist.is_main() else None)


@pytest.fixture(scope="session")
def wm_thresholds(pytestconfig: pytest.Config):
    """``wm_thresholds(model_name) -> Thresholds`` from the nearest pyproject's [tool.wmcore], the
    model's table, and ``--wm-threshold`` overrides (then keyword overrides)."""
    cli = pytestconfig.stash[_SETTINGS].thresholds if _SETTINGS in pytestconfig.stash else {}

    def resolve(model: str | None = None, **overrides: Any) -> Thresholds:
        return load_thresholds(model, overrides={**cli, **overrides})

    return resolve


@pytest.fixture
def wm_record(request: pytest.FixtureRequest, wm_run_dir: Path):
    """``wm_record(report, name, benchmark=None)``: write ``name.json`` and ``name.png`` (and
    ``name-energy.png`` when the report has an energy landscape) into the run directory and put the
    curves, gates and metadata into the benchmark's ``extra_info``."""
    from .plot import plot_drift, plot_energy

    from .runs import benchmark_record

    from .dist import is_main

    def record(report: DriftReport, name: str, benchmark: Any = None) -> dict[str, Path]:
        safe = safe_name(name)
        paths = {"json": wm_run_dir / f"{safe}.json", "png": wm_run_dir / f"{safe}.png"}
        if report.energy:
            paths["energy_png"] = wm_run_dir / f"{safe}-energy.png"
        if is_main():  # under torchrun every rank has the report; rank 0 alone writes it
            report.save(paths["json"])
            plot_drift(report, paths["png"])
            if report.energy:
                plot_energy(report, paths["energy_png"])
        request.config.stash[_WRITTEN].extend(paths.values())
        request.config.stash[_REPORTS].append((safe, report))
        if benchmark is not None:
            benchmark.extra_info["wmcore"] = benchmark_record(report)
        return paths

    return record


@pytest.fixture
def wm_record_control(request: pytest.FixtureRequest, wm_run_dir: Path):
    """``wm_record_control(report, name, benchmark=None, saved=None, videos=FILMED_TASKS)``: write the
    control report ``name.json`` into the run directory (rank 0; or take ``saved``, where it was written
    already), film its first ``videos`` tasks and draw its contact sheet there (``control.film``), list
    them among the artifacts, put the report in the session's control table and its summary, gates and
    controller into the benchmark's ``extra_info["wmcore_control"]``."""
    from .dist import is_main

    def record(report, name: str, benchmark: Any = None, saved: Path | None = None, videos: int = FILMED_TASKS) -> Path:
        safe = safe_name(name)
        path = saved if saved is not None else wm_run_dir / f"{safe}.json"
        if saved is None and is_main():
            report.save(path)
        request.config.stash[_WRITTEN].append(path)
        if is_main():  # what the plans look like: the first tasks filmed, a contact sheet of all of them
            from .control.film import film_report

            request.config.stash[_WRITTEN].extend(film_report(report.results, wm_run_dir, safe, videos=videos))
        request.config.stash[_CONTROL].append((safe, report))
        if benchmark is not None:
            s = report.summary
            benchmark.extra_info["wmcore_control"] = {
                "controller": {k: v for k, v in report.controller.items() if k != "policy"}, "summary": s,
                "gates": [g.__dict__ for g in report.gates], "tasks": s["tasks"]}
            benchmark.extra_info["seconds_per_action"] = s["seconds_per_action_median"]
        return path

    return record


@pytest.fixture
def wm_record_thinking(request: pytest.FixtureRequest, wm_run_dir: Path):
    """``wm_record_thinking(doc, name, benchmark=None)``: write a thinking curve (``wmcore.thinking.curve``'s
    document) as ``name.json`` and its plot ``name.png`` into the run directory (rank 0), list them, put
    its table into the terminal summary and its rows into the benchmark's ``extra_info["thinking"]``."""
    import json

    from .dist import is_main
    from .fsio import write_new
    from .thinking import plot, render

    def record(doc: dict, name: str, benchmark: Any = None) -> Path:
        safe = safe_name(name)
        path = wm_run_dir / f"{safe}.json"
        if is_main():
            body = {k: v for k, v in doc.items() if k not in ("reports", "controls")}
            write_new(path, (json.dumps(body, indent=2) + "\n").encode())
            request.config.stash[_WRITTEN].extend([path, plot(doc, wm_run_dir / f"{safe}.png")])
        request.config.stash[_THINKING].append(render(doc))
        if benchmark is not None:
            benchmark.extra_info["thinking"] = {"ks": doc["ks"], "rows": doc["rows"],
                                                "think_no_worse": doc["think_no_worse"]}
        return path

    return record


@pytest.fixture
def wm_filmstrip(request: pytest.FixtureRequest, wm_model, wm_model_spec: str, wm_prepared, wm_episodes,
                 wm_run_dir: Path):
    """``wm_filmstrip()``: draw what this model imagines (``wmcore.imagine``: per episode the true frames
    and the real frame nearest to each imagined latent) as ``MODEL-filmstrip.png`` in the run directory,
    from the session's encoded episodes, and list it; None with ``--wm-no-filmstrip``, under fewer than
    2 episodes, or on a rank other than 0."""
    from .dist import is_main

    def draw() -> Path | None:
        if request.config.getoption("wm_no_filmstrip") or len(wm_episodes) < 2 or not is_main():
            return None
        from .imagine import filmstrip_of_episodes

        cfg, prep = wm_prepared("recorded")
        path = filmstrip_of_episodes(wm_model, wm_episodes, cfg, wm_run_dir / f"{safe_name(wm_model.name)}-filmstrip.png",
                                     prep=prep)
        request.config.stash[_WRITTEN].append(path)
        return path

    return draw


def _overlay(reports: list, run_dir: Path) -> Path | None:
    """One overlay PNG of every recorded model: a panel per data set and action source."""
    from .plot import plot_overlay

    panels: dict[tuple, list] = {}
    for _, r in reports:
        key = (r.data.get("id"), r.config.get("action_source"), r.horizon)
        label = r.model.get("spec") or r.model.get("name")
        panels.setdefault(key, []).append((label, r.loops["open_loop"].cosine, r.loops["closed_loop"].cosine))
    threshold = reports[0][1].thresholds.get("threshold", 0.5)
    drawn = [(curves, threshold, f"{data}, {source} actions") for (data, source, _), curves in panels.items()]
    return plot_overlay(drawn, run_dir / "overlay.png", title="all models, open (solid) and closed (dashed) loop")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``--wm-baseline``: compare this session's reports with the baseline (``wmcore compare``), keep
    the verdict for the summary, and fail the session (exit 1) on a regression; pairs that cannot be
    compared (other episodes, horizons, data) are a usage error (exit 4)."""
    config = session.config
    base = config.stash.get(_BASELINE, None)
    if base is None:
        return
    from .compare import compare_runs, summary_lines, verdict_lines
    from .runs import run_of_reports
    from .settings import load_tolerances

    reports, control = config.stash.get(_REPORTS, []), config.stash.get(_CONTROL, [])
    lines, regressed = [], False
    try:
        if reports:
            tol, pyproject = load_tolerances()
            c = compare_runs(base, run_of_reports(reports), tol)
            lines += summary_lines(c, "", pyproject) + verdict_lines(c)
            regressed |= bool(c.regressed)
        regressed |= _compare_control(base.path, control, lines)
    except WMError as e:
        config.stash[_VERDICT] = lines + [f"--wm-baseline {base.path}: {e}"]
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
        return
    config.stash[_VERDICT] = lines or [f"--wm-baseline {base.path}: this session recorded nothing to compare"]
    if regressed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _compare_control(base_dir: Path, control: list, lines: list[str]) -> bool:
    """This session's control reports against the baseline run directory's of the same name (paired over
    the same tasks, ``wmcore compare``'s rule); appends the tables to ``lines``; True on a regression."""
    if not base_dir.is_dir():
        return False
    from .control.compare import compare_control, render_comparison
    from .control.report import ControlReport

    regressed = False
    for name, report in control:
        old = base_dir / f"{name}.json"
        if old.is_file():
            before = ControlReport.load(old)
            res = compare_control(before, report)
            lines += [""] + render_comparison(name, before, report, res)
            regressed |= res["success_rate"].verdict == "regressed"
    return regressed


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    from .dist import is_main

    if not is_main():  # rank 0 prints the summary of the whole (sharded) run
        return
    written = config.stash.get(_WRITTEN, [])
    reports = config.stash.get(_REPORTS, [])
    control = config.stash.get(_CONTROL, [])
    if "episodes" in config.stash.get(_CACHE, {}):  # which decoder read --wm-data, when it was not decord
        video = sys.modules.get("wmcore.video")
        for line in video.notices() if video else []:
            terminalreporter.write_line(line)
    if reports:
        terminalreporter.section("wmcore drift summary")
        # the gates are asserted on recorded actions only (wmcore/suites/test_drift.py): others are measured
        for line in render_text([r for _, r in reports], details=False, gated_sources=("recorded",)).splitlines():
            terminalreporter.write_line(line)
        try:
            written.append(_overlay(reports, Path(written[0]).parent))
        except (ValueError, OSError) as e:  # a summary must not turn a finished run into a crash
            terminalreporter.write_line(f"overlay plot not written: {e}")
    if control:
        from .control.report import control_table

        terminalreporter.section("wmcore control summary")
        for line in control_table(control).splitlines():
            terminalreporter.write_line(line)
    for table in config.stash.get(_THINKING, []):
        terminalreporter.section("wmcore thinking curve")
        for line in table.splitlines():
            terminalreporter.write_line(line)
    verdict = config.stash.get(_VERDICT, None)
    if verdict:
        terminalreporter.section(f"wmcore comparison with the baseline {config.getoption('wm_baseline')}")
        for line in verdict:
            terminalreporter.write_line(line)
    if written:
        terminalreporter.section("wmcore artifacts")
        terminalreporter.write_line(f"run directory: {Path(written[0]).parent}")
        for p in written:
            terminalreporter.write_line(f"  {p}")


# --- crash-safe pytest-benchmark records ----------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> str:
    """Which wmcore measures, and where its embedded models and data come from."""
    from .paths import fixtures_dir
    from .version import describe

    return f"wmcore: {describe()}, fixtures {fixtures_dir()}"


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Make pytest-benchmark's own JSON writes atomic (after its ``pytest_configure`` made the session);
    under torchrun, only rank 0 saves benchmark records (every rank times its share; rank 0's are kept)."""
    from .dist import is_main

    atomic_benchmark_writes(session.config)
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is not None and not is_main():
        bs.handle_saving = lambda: None
        bs.display = lambda tr: None


def pytest_unconfigure(config: pytest.Config) -> None:
    from .dist import close

    close()
