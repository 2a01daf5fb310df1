"""The offline energy landscape (wmcore.control.energy) on known answers, its place in the DriftReport,
its text and its plot, and bad input.

Known answers: the analytic world with delta 0 is an exact model, so on the world's own (float64)
latents the recorded actions have energy 0 and every other candidate more: rank 0 in every group. With
gain 0 the model ignores its actions: every candidate predicts the same frame, every comparison ties,
rank 0.5 in every group."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from wmcore.control.energy import RANDOM, energy_landscape, scale_name, start_points
from wmcore.errors import WMError
from wmcore.evaluate import EvalConfig, Thresholds, evaluate, prepare
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes, world_latents
from wmcore.plot import energy_figure, plot_energy
from wmcore.report import DriftReport, render_text
from wmcore.rollout import block_actions
from wmcore.settings import ENERGY_SCALES

FAST = Thresholds(bootstrap=100)
SETTINGS = dict(k=5, starts=4, candidates=8, scales=ENERGY_SCALES)


def world(frameskip: int = 1, episodes: int = 4, steps: int = 40, seed: int = 0, **kw):
    """An analytic model and its world's exact latents ``[B, S+1, N, D]`` (float64) and model-step
    actions ``[B, S, A]``."""
    cfg = AnalyticConfig(frameskip=frameskip, **kw)
    z, a = world_latents(cfg, episodes, steps, seed)
    return AnalyticModel(cfg), z[:, ::frameskip], block_actions(a, frameskip)


# --- known answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("frameskip", [1, 2])
def test_an_exact_model_ranks_the_recorded_actions_first_in_every_group(frameskip):
    model, z, a = world(frameskip, delta=0.0)
    land = energy_landscape(model, z, a, **SETTINGS)
    assert [r.name for r in land.rows] == [scale_name(s) for s in ENERGY_SCALES] + [RANDOM]
    assert land.energy_recorded < 1e-20  # exact up to float64 rounding
    for row in land.rows:
        assert row.rank == 0.0 and row.rank_lo == 0.0 and row.rank_hi == 0.0, row.name
        assert row.per_episode_rank == [0.0] * 4
        assert row.energy > 1e-8 and row.energy_ratio > 1e6, row.name
    # the further off the recorded actions, the higher the energy (on average over many candidates)
    energies = [land.row(scale_name(s)).energy for s in ENERGY_SCALES]
    assert energies == sorted(energies)


def test_a_model_that_ignores_its_actions_ranks_at_chance():
    model, z, a = world(gain=(0.0, 0.0))
    land = energy_landscape(model, z, a, **SETTINGS)
    for row in land.rows:
        assert row.rank == 0.5 and row.per_episode_rank == [0.5] * 4, row.name  # every comparison ties
        assert row.energy_ratio == pytest.approx(1.0)


def test_a_model_error_larger_than_a_perturbation_puts_the_recorded_actions_at_chance():
    """delta 0.05 per step: after k = 5 steps the model is 0.25 rad off, and E(recorded + noise) grows
    like (0.25 + b . sum(noise))^2. A noise of 0.1 std turns the angle by about 0.01 rad, so it lowers the
    energy whenever it turns the other way: half the time. The known answer is rank 0.5, not 0: a close
    perturbation can only lose against the recorded actions when the model's own error is smaller."""
    model, z, a = world(delta=0.05)
    land = energy_landscape(model, z, a, **SETTINGS)
    assert land.energy_recorded > 1e-3
    small = land.row("x0.1")
    assert small.rank_lo < 0.5 < small.rank_hi and 0.3 < small.rank < 0.7


def test_context_frames_keep_their_recorded_actions():
    """With 2 context frames the start is frame >= 1, and the frame before it is replayed with its own
    recorded action: the exact model still ranks the recorded candidate first."""
    model, z, a = world(delta=0.0)
    land = energy_landscape(model, z, a, context=2, **SETTINGS)
    assert land.starts[0] == 1 and land.context == 2
    assert all(r.rank == 0.0 for r in land.rows)


# --- determinism and layout ---------------------------------------------------------------------


def test_seeded_and_independent_of_the_batch_size():
    model, z, a = world(delta=0.05, episodes=3)
    one = energy_landscape(model, z, a, seed=7, **SETTINGS)
    again = energy_landscape(model, z, a, seed=7, batch_size=5, **SETTINGS)
    other = energy_landscape(model, z, a, seed=8, **SETTINGS)
    for r1, r2 in zip(one.rows, again.rows):
        assert r1.per_episode_rank == r2.per_episode_rank
        assert r1.energy == pytest.approx(r2.energy, rel=1e-12)
    assert [r.per_episode_energy for r in one.rows] != [r.per_episode_energy for r in other.rows]


def test_to_dict_is_json_and_per_episode_values_average_to_the_means():
    model, z, a = world(delta=0.05, episodes=5)
    land = energy_landscape(model, z, a, **SETTINGS)
    d = json.loads(json.dumps(land.to_dict()))
    assert d["k"] == 5 and d["episodes"] == 5 and len(d["rows"]) == len(ENERGY_SCALES) + 1
    for row in land.rows:
        assert row.rank == pytest.approx(sum(row.per_episode_rank) / 5)
        assert row.energy == pytest.approx(sum(row.per_episode_energy) / 5)
        assert row.rank_lo <= row.rank <= row.rank_hi and 0 <= row.rank_lo and row.rank_hi <= 1
    assert land.energy_recorded == pytest.approx(sum(land.per_episode_energy_recorded) / 5)
    with pytest.raises(KeyError):
        land.row("x3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        land.k = 3  # type: ignore[misc]


def test_one_short_episode_has_no_unrelated_blocks():
    """One episode of exactly k steps: no block elsewhere, so no random group (and still no error)."""
    model, z, a = world(delta=0.0, episodes=1, steps=5)
    land = energy_landscape(model, z, a, **SETTINGS)
    assert land.starts == [0] and [r.name for r in land.rows] == [scale_name(s) for s in ENERGY_SCALES]


@given(steps=st.integers(1, 60), k=st.integers(1, 10), starts=st.integers(1, 8), context=st.integers(1, 3))
def test_start_points_leave_room_for_context_and_goal(steps, k, starts, context):
    ts = start_points(steps, k, starts, context)
    room = steps - k - (context - 1) + 1  # how many start frames there are
    assert len(ts) == (min(starts, room) if room > 0 else 0)
    assert ts == sorted(set(ts))
    assert all(context - 1 <= t <= steps - k for t in ts)
    if len(ts) >= 2:  # spread over the episode: first and last possible starts
        assert ts[0] == context - 1 and ts[-1] == steps - k


# --- bad input ----------------------------------------------------------------------------------


def test_too_few_steps_for_k_is_refused():
    model, z, a = world(episodes=2, steps=4)
    with pytest.raises(WMError, match=r"4 model steps; goals k=5 .*need at least 5.*smaller k"):
        energy_landscape(model, z, a, **SETTINGS)


@pytest.mark.parametrize("where", ["latents", "actions"])
def test_nan_is_refused(where):
    model, z, a = world(episodes=2)
    (z if where == "latents" else a)[1, 3].view(-1)[0] = float("nan")
    with pytest.raises(WMError, match=rf"{where} contain NaN or inf \(first at index \[1, 3"):
        energy_landscape(model, z, a, **SETTINGS)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(k=0), "k must be an integer >= 1, found 0"),
        (dict(candidates=2.5), "candidates must be an integer >= 1"),
        (dict(starts=True), "starts must be an integer >= 1"),
        (dict(scales=()), "scales must be one or more finite numbers > 0"),
        (dict(scales=(0.1, -1.0)), "scales must be one or more finite numbers > 0"),
        (dict(scales=(math.inf,)), "scales must be one or more finite numbers > 0"),
    ],
)
def test_bad_settings_are_refused(change, message):
    model, z, a = world(episodes=2)
    with pytest.raises(WMError, match=message):
        energy_landscape(model, z, a, **{**SETTINGS, **change})


def test_bad_shapes_are_refused():
    model, z, a = world(episodes=2, frameskip=2)
    with pytest.raises(WMError, match=r"latents must be a floating-point tensor \[B, S\+1, N, D\]"):
        energy_landscape(model, z[0], a, **SETTINGS)
    with pytest.raises(WMError, match=r"do not fit latents .*expected \[B=2, S=20, A\]"):
        energy_landscape(model, z, a[:, :-1], **SETTINGS)
    with pytest.raises(WMError, match=r"takes 4-wide model-step actions, found 2; .*block_actions\(actions, 2\)"):
        energy_landscape(model, z, torch.zeros(2, 20, 2), **SETTINGS)
    with pytest.raises(WMError, match=r"states must be \[B=2, >= 21, St\]"):
        energy_landscape(model, z, a, states=torch.zeros(2, 3, 5), **SETTINGS)


# --- in the DriftReport -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def episodes():
    return make_episodes(AnalyticConfig(delta=0.05), episodes=4, steps=30, seed=1)


@pytest.fixture(scope="module")
def report(episodes):
    return evaluate(AnalyticModel(AnalyticConfig(delta=0.05)), episodes, EvalConfig(horizon=10), FAST)


def test_every_report_with_recorded_actions_has_the_landscape(report, episodes):
    e = report.energy
    cfg = EvalConfig()
    assert e["k"] == e["k_requested"] == cfg.energy_k and e["note"] is None
    assert [r["name"] for r in e["rows"]] == [scale_name(s) for s in cfg.energy_scales] + [RANDOM]
    assert all(len(r["per_episode_rank"]) == 4 and r["candidates"] == cfg.energy_candidates for r in e["rows"])
    assert len(e["starts"]) == cfg.energy_starts
    assert report.config["energy"] is True and report.config["energy_scales"] == list(ENERGY_SCALES)
    assert report.timings["energy_s"] > 0
    # the same numbers as the pure function on the evaluation's latents and recorded model-step actions
    model = AnalyticModel(AnalyticConfig(delta=0.05))
    prep = prepare(model, episodes, EvalConfig(horizon=10))
    land = energy_landscape(model, prep.latents, prep.actions, **SETTINGS)
    assert e == {**land.to_dict(), "k_requested": 5, "note": None}


def test_the_landscape_survives_save_and_load(report, tmp_path):
    back = DriftReport.load(report.save(tmp_path / "r.json"))
    assert back.energy == report.energy
    assert json.loads((tmp_path / "r.json").read_text())["schema_version"] == 4


def test_off_switch_and_other_action_sources_have_none(episodes):
    model = AnalyticModel(AnalyticConfig(delta=0.05))
    off = evaluate(model, episodes, EvalConfig(horizon=10, energy=False), FAST)
    rand = evaluate(model, episodes, EvalConfig(horizon=10, action_source="random"), FAST)
    assert off.energy is None and "energy_s" not in off.timings
    assert rand.energy is None
    assert "energy landscape: not measured (switched off)" in render_text([off])
    assert "not measured (measured with recorded actions only; these are random)" in render_text([rand])


def test_k_is_clipped_to_short_episodes_and_the_report_says_so():
    eps = make_episodes(AnalyticConfig(delta=0.0), episodes=2, steps=3, seed=0)
    r = evaluate(AnalyticModel(AnalyticConfig(delta=0.0)), eps, EvalConfig(horizon=2), FAST)
    assert r.energy["k"] == 3 and r.energy["k_requested"] == 5
    assert r.energy["note"] == "k clipped from 5 to 3: the episodes hold 3 model steps after 1 context frame(s)"
    assert "(k clipped from 5 to 3" in render_text([r])


def test_text_has_one_line_per_group_with_rank_and_ci(report):
    text = render_text([report])
    for row in report.energy["rows"]:
        what = "random (other recorded blocks)" if row["scale"] is None else f"perturbed {row['scale']:g} x std"
        line = next(line for line in text.splitlines() if line.strip().startswith(what))
        assert f"rank {row['rank']:.3f} [{row['rank_lo']:.3f}, {row['rank_hi']:.3f}]" in line
    short = render_text([report], details=False)
    assert "x0.1 " in short and f"random {report.energy['rows'][-1]['rank']:.3f}" in short


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda e: e["rows"][0].update(rank=1.5), r"energy.rows\[0\]: expected a name, rank"),
        (lambda e: e["rows"][2]["per_episode_rank"].pop(), r"energy.rows\[2\]: .*4 per-episode ranks"),
        (lambda e: e.pop("k"), "energy: expected an object with an integer k"),
    ],
)
def test_a_malformed_energy_section_is_refused(report, tmp_path, damage, message):
    d = json.loads(report.to_json())
    damage(d["energy"])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(WMError, match=message):
        DriftReport.load(p)


# --- the plot -----------------------------------------------------------------------------------


def test_the_plot_shows_ranks_with_cis_and_the_energy_curve(report, tmp_path):
    import matplotlib.pyplot as plt

    fig = energy_figure(report)
    try:
        ax_r, ax_e = fig.axes
        scaled = [r for r in report.energy["rows"] if r["scale"] is not None]
        # the mean rank line (errorbar) and the energy curve draw the report's numbers at the scales
        (bars,) = ax_r.containers
        assert bars.get_label().startswith("perturbed recorded actions: mean rank, 95% CI")
        mean_line = bars.lines[0]
        assert list(mean_line.get_xdata()) == [r["scale"] for r in scaled]
        assert list(mean_line.get_ydata()) == [r["rank"] for r in scaled]
        energy_line = next(l for l in ax_e.get_lines() if l.get_label() == "perturbed: mean energy")
        assert list(energy_line.get_ydata()) == [r["energy"] for r in scaled]
        labels = [t.get_text() for t in ax_r.get_legend().get_texts()]
        assert "chance (0.5)" in labels and any(s.startswith("random") for s in labels)
        assert any(s.startswith("recorded:") for s in (t.get_text() for t in ax_e.get_legend().get_texts()))
        assert "k=5" in fig._suptitle.get_text()
    finally:
        plt.close(fig)
    p = plot_energy(report, tmp_path / "e.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(WMError, match="exists already"):
        plot_energy(report, p)


def test_no_plot_without_a_landscape(episodes):
    off = evaluate(AnalyticModel(AnalyticConfig(delta=0.05)), episodes, EvalConfig(horizon=10, energy=False), FAST)
    with pytest.raises(ValueError, match="has no energy landscape"):
        energy_figure(off)


def test_eval_config_checks_the_energy_settings():
    with pytest.raises(WMError, match="EvalConfig.energy_k: expected an integer >= 1, found 0"):
        EvalConfig(energy_k=0)
    with pytest.raises(WMError, match="EvalConfig.energy_scales: expected one or more finite numbers > 0"):
        EvalConfig(energy_scales=(0.5, 0.0))
    with pytest.raises(WMError, match="EvalConfig.energy: expected True or False"):
        EvalConfig(energy="no")  # type: ignore[arg-type]
    assert EvalConfig(energy_scales=[1, 2]).energy_scales == (1.0, 2.0)  # hashable, whatever came in


def test_an_episodes_candidates_do_not_depend_on_its_chunk():
    """Seeded per episode: drawing a chunk gives the same candidates as drawing everything and slicing,
    and another seed gives others (a streaming or sharded evaluation draws a chunk at a time)."""
    from wmcore.control.energy import draw_candidates

    g = torch.Generator().manual_seed(0)
    actions = torch.randn(7, 12, 4, generator=g)
    d = draw_candidates(actions, k=3, starts=3, candidates=5, scales=(0.5, 1.0), seed=11)
    whole = d.draw(range(7))
    assert whole.shape == (7, 3, 1 + 2 * 5 + 5, 3, 4)
    assert torch.equal(d.draw(range(2, 5)), whole[2:5]) and torch.equal(d.draw(range(6, 7)), whole[6:])
    assert torch.equal(whole[:, :, 0], actions.double()[:, torch.tensor(d.starts)[:, None] + torch.arange(3)])
    other = draw_candidates(actions, k=3, starts=3, candidates=5, scales=(0.5, 1.0), seed=12).draw(range(7))
    assert torch.equal(other[:, :, 0], whole[:, :, 0]) and not torch.equal(other, whole)
