"""The drift plot: axes, threshold line, title, legend, drift-horizon marker, CI bands, PNG files."""

from __future__ import annotations

import dataclasses
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from wmcore.settings import Thresholds  # noqa: E402
from wmcore.errors import WMError  # noqa: E402
from wmcore.evaluate import EvalConfig, evaluate  # noqa: E402
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes  # noqa: E402
from wmcore.plot import drift_figure, plot_drift  # noqa: E402
from wmcore.report import DriftReport  # noqa: E402

H = 10
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report(delta: float, name: str, **thr) -> DriftReport:
    cfg = AnalyticConfig(delta=delta)
    return evaluate(
        AnalyticModel(cfg, name=name),
        make_episodes(cfg, episodes=4, steps=H + 2, seed=0),
        EvalConfig(horizon=H),
        Thresholds(bootstrap=200, **thr),
    )


@pytest.fixture(scope="module")
def crossing():
    # open loop cos(0.3 k) falls below 0.5 first at k = floor(acos(0.5) / 0.3) + 1 = 4
    return _report(0.3, "fast-drifter")


@pytest.fixture(scope="module")
def steady():
    # open loop cos(0.05 k) >= cos(0.5) = 0.88 for all k <= 10: never below 0.5
    return _report(0.05, "slow-drifter")


@pytest.fixture()
def figure():
    figs = []

    def make(report):
        fig = drift_figure(report)
        figs.append(fig)
        return fig

    yield make
    for f in figs:
        plt.close(f)


def _labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _one(labels: list[str], needle: str) -> str:
    hits = [s for s in labels if needle in s]
    assert len(hits) == 1, (needle, labels)
    return hits[0]


def _hlines(ax, y: float):
    """Lines that are horizontal across the axes at height ``y``."""
    return [
        ln for ln in ax.get_lines()
        if len(ln.get_ydata()) == 2 and all(math.isclose(float(v), y) for v in ln.get_ydata())
        and list(ln.get_xdata()) == [0, 1]
    ]


def test_known_drift_horizon_of_the_fixture(crossing, steady):
    assert crossing.loops["open_loop"].drift_horizon == 4
    assert steady.loops["open_loop"].drift_horizon is None


def test_axes_title_and_threshold_line(crossing, figure):
    fig = figure(crossing)
    (ax,) = fig.axes
    assert ax.get_ylim() == (0, 1)
    assert "fast-drifter" in ax.get_title()
    lines = _hlines(ax, 0.5)
    red_dashed = [ln for ln in lines if to_rgba(ln.get_color()) == to_rgba("red") and ln.get_linestyle() == "--"]
    assert len(red_dashed) == 1
    assert "threshold" in red_dashed[0].get_label()


def test_threshold_line_follows_the_report_threshold(figure):
    # with threshold 0.7 the open loop cos(0.3 k) falls below it first at k = floor(acos(0.7) / 0.3) + 1 = 3
    r = _report(0.3, "thr", threshold=0.7)
    assert r.loops["open_loop"].drift_horizon == 3
    ax = figure(r).axes[0]
    red = [ln for ln in _hlines(ax, 0.7) if to_rgba(ln.get_color()) == to_rgba("red") and ln.get_linestyle() == "--"]
    assert len(red) == 1
    assert not [ln for ln in _hlines(ax, 0.5) if to_rgba(ln.get_color()) == to_rgba("red")]
    assert "step 3" in _one(_labels(ax), "drift horizon")


def test_legend_names_every_curve_and_the_horizon(crossing, figure):
    ax = figure(crossing).axes[0]
    labels = _labels(ax)
    for needle in ("open loop", "closed loop", "copy-last", "copy-first", "threshold", "chance level"):
        assert any(needle in s for s in labels), (needle, labels)
    assert "step 4" in _one(labels, "drift horizon")
    assert not any("stays above" in s for s in labels)
    # the marker sits on the open-loop curve at the drift-horizon step
    (marker,) = [ln for ln in ax.get_lines() if "drift horizon" in ln.get_label()]
    assert list(marker.get_xdata()) == [4]
    assert float(marker.get_ydata()[0]) == crossing.loops["open_loop"].cosine[3]


def test_legend_says_the_open_loop_stays_above(steady, figure):
    ax = figure(steady).axes[0]
    labels = _labels(ax)
    label = _one(labels, "stays above")
    assert "0.5" in label and f"{H} steps" in label
    assert not any("drift horizon" in s for s in labels)


def test_chance_level_line(crossing, figure):
    ax = figure(crossing).axes[0]
    lines = [ln for ln in _hlines(ax, crossing.chance_level) if "chance level" in ln.get_label()]
    assert len(lines) == 1


def test_curves_are_the_report_curves(crossing, figure):
    ax = figure(crossing).axes[0]
    by_label = {ln.get_label(): ln for ln in ax.get_lines()}
    for needle, loop in (("open loop (imagined)", "open_loop"), ("closed loop", "closed_loop"), ("copy-last", "copy_last")):
        (ln,) = [v for k, v in by_label.items() if needle in k]
        assert list(ln.get_xdata()) == list(range(1, H + 1))
        assert [float(y) for y in ln.get_ydata()] == crossing.loops[loop].cosine


def test_ci_bands_for_open_and_closed_loop(crossing, figure):
    ax = figure(crossing).axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    # each band has its curve's colour and spans that curve's [min lo, max hi]
    colours = {ln.get_label(): to_rgba(ln.get_color())[:3] for ln in ax.get_lines()}
    for needle, k in (("open loop (imagined)", "open_loop"), ("closed loop", "closed_loop")):
        (rgb,) = [v for name, v in colours.items() if needle in name]
        (band,) = [b for b in bands if tuple(b.get_facecolor()[0][:3]) == pytest.approx(rgb)]
        ys = [float(y) for path in band.get_paths() for y in path.vertices[:, 1]]
        s = crossing.loops[k]
        assert min(ys) == pytest.approx(min(s.cosine_lo)) and max(ys) == pytest.approx(max(s.cosine_hi))
    for k in ("open_loop", "closed_loop"):
        assert all(lo <= c <= hi for lo, c, hi in zip(crossing.loops[k].cosine_lo, crossing.loops[k].cosine, crossing.loops[k].cosine_hi))


def test_each_episode_is_a_thin_line_behind_the_open_loop_mean(crossing, figure):
    ax = figure(crossing).axes[0]
    rows = crossing.loops["open_loop"].per_episode["cosine"]
    thin = [ln for ln in ax.get_lines() if ln.get_linewidth() < 1 and ln.get_alpha() and ln.get_alpha() < 0.5]
    assert len(thin) == len(rows) == crossing.data["episodes"]
    assert sorted(tuple(float(y) for y in ln.get_ydata()) for ln in thin) == sorted(tuple(r) for r in rows)
    assert sum("each episode" in ln.get_label() for ln in thin) == 1  # one legend entry


def test_title_says_fail_for_a_failing_report(figure):
    r = _report(0.05, "strict", step1_min=1.01)
    assert not r.passed
    title = figure(r).axes[0].get_title()
    assert "FAIL" in title and "PASS" not in title


def test_report_without_copy_baselines_still_plots(crossing, figure):
    d = dataclasses.replace(crossing, loops={k: crossing.loops[k] for k in ("open_loop", "closed_loop")})
    labels = _labels(figure(d).axes[0])
    assert not any("copy-" in s for s in labels)
    assert any("open loop" in s for s in labels)


def test_plot_drift_writes_a_png_and_refuses_to_overwrite(crossing, tmp_path):
    before = set(plt.get_fignums())
    p = plot_drift(crossing, tmp_path / "plots" / "drift.png")
    assert p == tmp_path / "plots" / "drift.png"
    data = p.read_bytes()
    assert data.startswith(PNG_MAGIC)
    img = plt.imread(p)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert set(plt.get_fignums()) == before  # the figure was closed
    with pytest.raises(WMError, match="exists"):
        plot_drift(crossing, p)
    assert p.read_bytes() == data
    assert [x.name for x in p.parent.iterdir()] == ["drift.png"]  # no temp files left behind
