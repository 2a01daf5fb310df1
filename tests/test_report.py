"""DriftReport: JSON round trip, strict JSON, reproducibility metadata, summary, bad files, no clobbering."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from wmcore.settings import Thresholds
from wmcore.data import content_sha256, stack
from wmcore.episode import episodes_sha256
from wmcore.errors import WMError
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, expected_open_cosine, make_episodes
from wmcore.report import SCHEMA, SCHEMA_VERSION, DriftReport, render_text

H = 12  # > 10, so that summary's step 10 and step H are different steps
FAST = Thresholds(bootstrap=200)
HEX64 = re.compile(r"[0-9a-f]{64}")


def _reject_constant(name):
    raise AssertionError(f"non-strict JSON constant {name}")


def strict_loads(text: str):
    return json.loads(text, parse_constant=_reject_constant)


@pytest.fixture(scope="module")
def world():
    cfg = AnalyticConfig()
    episodes = make_episodes(cfg, episodes=4, steps=H + 2, seed=0)
    return cfg, episodes


@pytest.fixture(scope="module")
def report(world):
    cfg, episodes = world
    return evaluate(
        AnalyticModel(cfg), episodes, EvalConfig(horizon=H, seed=3), FAST, spec="analytic:delta=0.05", data_id="unit"
    )


@pytest.fixture(scope="module")
def failing_report(world):
    cfg, episodes = world
    return evaluate(AnalyticModel(cfg), episodes, EvalConfig(horizon=H), Thresholds(bootstrap=200, step1_min=1.01))


@pytest.fixture(scope="module")
def inf_skill_report():
    # a static world: copy-last is exact (MSE 0) while the model turns by delta, so skill is -inf
    cfg = AnalyticConfig(omega=0.0, gain=(0.0, 0.0), delta=0.05)
    return evaluate(AnalyticModel(cfg), make_episodes(cfg, episodes=3, steps=6, seed=1), EvalConfig(horizon=5), FAST)


@pytest.fixture()
def saved(report, tmp_path):
    path = tmp_path / "report.json"
    report.save(path)
    return path


def _write_variant(tmp_path, report, mutate, name="bad.json"):
    d = strict_loads(report.to_json())
    mutate(d)
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


# --- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["report", "failing_report"])
def test_save_load_round_trip_preserves_everything(which, request, tmp_path):
    r = request.getfixturevalue(which)
    path = r.save(tmp_path / "r.json")
    back = DriftReport.load(path)
    assert back.loops == r.loops
    assert back.gates == r.gates
    assert back.summary() == r.summary()
    assert back.passed == r.passed
    assert back.horizon == r.horizon == H
    assert back.model == r.model and back.data == r.data and back.config == r.config
    assert back.thresholds == r.thresholds and back.environment == r.environment
    assert back.chance_level == r.chance_level and back.chance_level_centred == r.chance_level_centred
    # the file records the creation time; the loaded report keeps it and writes it back unchanged
    on_disk = strict_loads(path.read_text())
    assert back.created == on_disk["created"] != ""
    assert strict_loads(back.to_json()) == on_disk


def test_created_is_stamped_once_when_the_report_is_made(report, tmp_path, monkeypatch):
    """Every to_dict / save of one report says the same time, also across a second boundary (the
    clock below moves a day at each reading)."""
    import dataclasses
    import itertools

    from wmcore import report as report_module

    days = itertools.count(1)
    monkeypatch.setattr(report_module, "_now", lambda: f"2026-01-{next(days):02d}T00:00:00+00:00")
    fresh = dataclasses.replace(report, created="")
    first = fresh.to_dict()["created"]
    assert fresh.to_dict()["created"] == first == "2026-01-01T00:00:00+00:00"
    assert DriftReport.load(fresh.save(tmp_path / "r.json")).to_dict() == fresh.to_dict()


def test_failing_report_round_trips_as_failed(failing_report, tmp_path):
    assert not failing_report.passed
    d = strict_loads(failing_report.to_json())
    assert d["passed"] is False
    failed = [g["name"] for g in d["gates"] if not g["passed"]]
    assert failed == ["step1_cosine"]
    back = DriftReport.from_dict(d)
    assert not back.passed and [g.name for g in back.gates if not g.passed] == ["step1_cosine"]


def test_json_fields_match_the_report(report):
    d = strict_loads(report.to_json())
    assert d["schema"] == SCHEMA and d["schema_version"] == SCHEMA_VERSION
    assert "step" in d["step_index"]
    assert d["passed"] is report.passed is True
    assert d["summary"] == report.summary()
    assert set(d["loops"]) == {"open_loop", "closed_loop", "copy_last", "copy_first"}
    for name, s in report.loops.items():
        assert d["loops"][name]["cosine"] == s.cosine
        assert len(d["loops"][name]["cosine"]) == H
    assert [g["name"] for g in d["gates"]] == [g.name for g in report.gates]


# --- strict JSON --------------------------------------------------------------------------------


def test_non_finite_skill_becomes_null_and_json_is_strict(inf_skill_report, tmp_path):
    skill = inf_skill_report.loops["closed_loop"].skill["copy_last"]
    assert skill[0] == -math.inf  # the premise: a zero-error baseline makes the skill -inf
    text = inf_skill_report.to_json()
    d = strict_loads(text)  # raises on NaN / Infinity / -Infinity
    assert d["loops"]["closed_loop"]["skill"]["copy_last"] == [None] * 5
    gate = next(g for g in d["gates"] if g["name"] == "skill_vs_copy_last")
    assert gate["measured"] is None and gate["passed"] is False
    # finite values are untouched
    assert d["loops"]["closed_loop"]["cosine"] == inf_skill_report.loops["closed_loop"].cosine
    # the file on disk is strict too, and loads back
    p = inf_skill_report.save(tmp_path / "inf.json")
    strict_loads(p.read_text())
    back = DriftReport.load(p)
    assert back.loops["closed_loop"].skill["copy_last"][0] is None
    assert not back.passed


# --- reproducibility metadata -------------------------------------------------------------------


def test_reproducibility_metadata(report, world):
    cfg, episodes = world
    d = strict_loads(report.to_json())
    m = d["model"]
    assert m["spec"] == "analytic:delta=0.05" and m["name"] == "analytic"
    assert HEX64.fullmatch(m["fingerprint"])
    assert m["fingerprint"] == AnalyticModel(cfg).fingerprint()
    assert m["fingerprint"] != AnalyticModel(AnalyticConfig(delta=0.06)).fingerprint()
    b = stack(episodes)
    assert HEX64.fullmatch(d["data"]["sha256"])
    assert d["data"]["sha256"] == episodes_sha256([content_sha256(b.frames[i], b.actions[i], None) for i in range(len(b.ids))])
    assert d["data"]["id"] == "unit" and d["data"]["episodes"] == 4
    assert d["config"]["seed"] == 3 and d["config"]["horizon"] == H
    assert d["config"]["action_source"] == "recorded"
    assert d["thresholds"]["seed"] == FAST.seed and d["thresholds"]["bootstrap"] == 200
    env = d["environment"]
    assert env["torch"] == torch.__version__
    assert "transformers" in env
    try:
        import transformers
    except ImportError:
        assert env["transformers"] is None
    else:
        assert env["transformers"] == transformers.__version__
    assert env["device"] == "cpu" and env["dtype"] == "float32"
    assert "video" not in d["data"]  # frames made in memory: no video was decoded, nothing to say


def test_the_video_reader_is_recorded_for_the_h264_fixtures(tmp_path):
    """wmcore/fixtures/pusht (lossless RGB H.264): decord reads it where installed; data["video"] says so and
    survives save and load. Adding it is backward compatible: "data" was always a free mapping, so
    schema_version stays 1 (reports without it load, as the others in this file show)."""
    from wmcore.data import load as load_data
    from wmcore.models import load as load_model

    episodes = load_data("pusht", limit=2)
    model = load_model("pusht-ac-tiny")
    r = evaluate(model, episodes, EvalConfig(horizon=3, start=10), FAST, spec="pusht-ac-tiny", data_id="pusht")
    v = r.data["video"]
    try:  # as wmcore.video imports it
        import decord
    except (ImportError, OSError):
        decord = None
    if decord is not None:
        one = {"backend": "decord", "version": decord.__version__, "codec": "h264", "reason": None}
    else:
        import av

        one = {"backend": "pyav", "version": av.__version__, "codec": "h264", "reason": "decord is not installed"}
    assert v == {"backend": one["backend"], "codec": "h264", "reason": one["reason"],
                 "sources": [{**one, "episodes": 2}]}
    d = strict_loads(DriftReport.load(r.save(tmp_path / "r.json")).to_json())
    assert d["schema_version"] == SCHEMA_VERSION and d["data"]["video"] == v  # (3 since the energy landscape)


def test_video_summary_of_mixed_sources():
    from wmcore.data import video_summary
    from wmcore.video import VideoSource

    h264 = VideoSource("decord", "0.6.0", "h264")
    av1 = VideoSource("pyav", "18.1.0", "av1", "decord 0.6.0 cannot decode this av1 video")
    assert video_summary(None) is None and video_summary([None, None]) is None
    v = video_summary([av1, h264, av1, None])
    assert (v["backend"], v["codec"], v["reason"]) == ("mixed", "mixed", "mixed")
    assert [(s["backend"], s["codec"], s["episodes"]) for s in v["sources"]] == [
        ("pyav", "av1", 2), ("decord", "h264", 1), (None, None, 1)]
    assert json.loads(json.dumps(v)) == v


# --- summary ------------------------------------------------------------------------------------


def test_summary_reads_steps_1_10_and_H(report, world):
    cfg, _ = world
    s = report.summary()
    assert set(s) == set(report.loops)
    for name, loop in report.loops.items():
        row = s[name]
        assert row["step1"] == loop.cosine[0]
        assert row["step10"] == loop.cosine[9]
        assert row[f"step{H}"] == loop.cosine[H - 1]
        assert row["centred_step1"] == loop.centred_cosine[0]
        assert row["auc"] == loop.auc and row["drift_horizon"] == loop.drift_horizon
    # and the open-loop values are the analytic answer cos(k delta), up to uint8 quantisation
    want = expected_open_cosine(cfg, H)
    for k in (1, 10, H):
        assert s["open_loop"][f"step{k}"] == pytest.approx(float(want[k - 1]), abs=0.01)
    assert s["open_loop"]["step1"] > s["open_loop"]["step10"] > s["open_loop"][f"step{H}"]


def test_summary_of_a_short_horizon_has_no_step10(inf_skill_report):
    s = inf_skill_report.summary()["open_loop"]
    assert "step10" not in s
    assert s["step5"] == inf_skill_report.loops["open_loop"].cosine[4]


# --- bad files ----------------------------------------------------------------------------------


def _load_error(path) -> str:
    with pytest.raises(WMError) as e:
        DriftReport.load(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    return msg


def test_load_missing_file(tmp_path):
    assert "no such" in _load_error(tmp_path / "absent.json")


def test_load_truncated_json(saved, tmp_path):
    text = saved.read_text()
    p = tmp_path / "truncated.json"
    p.write_text(text[: len(text) // 2])
    assert "not valid JSON" in _load_error(p)


def test_load_binary_garbage(tmp_path):
    p = tmp_path / "garbage.json"
    p.write_bytes(b"\xff\xfe\x00\x81 not json")
    # the one JSON reader (wmcore.fsio.read_json) says what it found: not even UTF-8 text
    assert "not a JSON file (not UTF-8 text)" in _load_error(p)


def test_load_a_json_array(tmp_path):
    p = tmp_path / "list.json"
    p.write_text("[1, 2, 3]")
    assert "expected a JSON object" in _load_error(p)


def test_load_another_schema(report, tmp_path):
    p = _write_variant(tmp_path, report, lambda d: d.update(schema="pytest-benchmark"))
    msg = _load_error(p)
    assert "pytest-benchmark" in msg and SCHEMA in msg


def test_load_another_schema_version(report, tmp_path):
    p = _write_variant(tmp_path, report, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    msg = _load_error(p)
    assert "schema_version" in msg and str(SCHEMA_VERSION + 1) in msg


@pytest.mark.parametrize("field", ["gates", "model", "chance_level", "loops"])
def test_load_a_report_missing_a_field(report, tmp_path, field):
    p = _write_variant(tmp_path, report, lambda d: d.pop(field))
    msg = _load_error(p)
    assert "lacks field" in msg and field in msg


def test_load_a_report_missing_the_closed_loop(report, tmp_path):
    p = _write_variant(tmp_path, report, lambda d: d["loops"].pop("closed_loop"))
    assert "closed_loop" in _load_error(p)


def test_load_a_loop_missing_a_field(report, tmp_path):
    p = _write_variant(tmp_path, report, lambda d: d["loops"]["open_loop"].pop("auc"))
    msg = _load_error(p)
    assert "malformed" in msg and "auc" in msg


def test_load_a_loop_of_another_length(report, tmp_path):
    p = _write_variant(tmp_path, report, lambda d: d["loops"]["closed_loop"]["cosine"].pop())
    msg = _load_error(p)
    assert "closed_loop" in msg and f"{H - 1} steps" in msg and f"open_loop has {H}" in msg


def test_load_loops_that_are_not_an_object(report, tmp_path):
    p = _write_variant(tmp_path, report, lambda d: d.update(loops=["open_loop"]))
    assert "loops" in _load_error(p)


def test_load_a_non_numeric_chance_level(report, tmp_path):
    p = _write_variant(tmp_path, report, lambda d: d.update(chance_level="high"))
    assert "chance_level" in _load_error(p)


# --- no clobbering ------------------------------------------------------------------------------


def test_save_refuses_to_overwrite_and_leaves_no_temp_files(report, tmp_path):
    p = tmp_path / "report.json"
    p.write_bytes(b"precious")
    with pytest.raises(WMError, match="exists"):
        report.save(p)
    assert p.read_bytes() == b"precious"
    q = report.save(tmp_path / "second.json")
    first = q.read_bytes()
    with pytest.raises(WMError, match="exists"):
        report.save(q)
    assert q.read_bytes() == first
    assert sorted(x.name for x in tmp_path.iterdir()) == ["report.json", "second.json"]


def test_save_creates_parent_directories(report, tmp_path):
    p = report.save(tmp_path / "runs" / "a" / "report.json")
    assert p.is_file() and DriftReport.load(p).loops == report.loops


# --- the text view ---------------------------------------------------------------------------------


def test_render_text_one_row_per_report_then_the_details(report, failing_report):
    from wmcore.report import render_text

    text = render_text([report, failing_report])
    rows = [ln for ln in text.splitlines() if ln.startswith("analytic")]
    assert len(rows) == 2
    cl, op = report.loops["closed_loop"], report.loops["open_loop"]
    cells = rows[0].split()
    assert cells[1] == "recorded" and cells[2:6] == [f"{v:.3f}" for v in (cl.cosine[0], op.cosine[0], op.cosine[9], op.cosine[-1])]
    assert cells[6] == "never" and cells[7] == f"{cl.skill['copy_last'][0]:+.3f}" and rows[0].endswith("PASS")
    failed = [g.name for g in failing_report.gates if not g.passed]
    assert failed and rows[1].endswith("FAIL " + ",".join(failed))
    for r in (report, failing_report):
        for g in r.gates:
            assert f"[{'PASS' if g.passed else 'FAIL'}] {g.name}: {g.message}" in text
    # without details: the table only, as in the pytest summary; ungated sources are "(measured)"
    short = render_text([failing_report], details=False, gated_sources=("zeros",))
    assert "[FAIL]" not in short and short.splitlines()[2].endswith("(measured)")


def test_render_text_of_a_saved_report_with_a_null_skill(inf_skill_report, tmp_path):
    from wmcore.report import render_text

    back = DriftReport.load(inf_skill_report.save(tmp_path / "r.json"))
    assert back.loops["closed_loop"].skill["copy_last"][0] is None  # not finite: null in the JSON
    row = render_text([back]).splitlines()[2]
    assert row.split()[7] == "-"  # skill@1, not a crash; H = 5 < 10: open@10 is "-" too
    assert row.split()[4] == "-"


# --- schema version 2: per-episode curves -------------------------------------------------------


def test_per_episode_curves_are_the_episodes_of_the_mean_curves(report):
    ids = report.data["episode_ids"]
    for name, loop in report.loops.items():
        per = loop.per_episode
        assert set(per) == {"cosine", "centred_cosine", "mse"}, name
        for key in per:
            rows = torch.tensor(per[key], dtype=torch.float64)
            assert rows.shape == (len(ids), H), (name, key)
            # float32 precision per entry; the mean of the rows is the loop's curve
            assert torch.allclose(rows.mean(0), torch.tensor(getattr(loop, key), dtype=torch.float64),
                                  rtol=1e-6, atol=1e-6), (name, key)


def test_a_version_1_report_still_reads_without_per_episode_curves(report, tmp_path):
    d = strict_loads(report.to_json())
    assert d["schema_version"] == SCHEMA_VERSION == 4  # 3 added the energy landscape, which 1 had not either
    d["schema_version"] = 1
    for loop in d["loops"].values():
        del loop["per_episode"]
    del d["energy"]
    p = tmp_path / "v1.json"
    p.write_text(json.dumps(d))
    old = DriftReport.load(p)
    assert all(loop.per_episode is None for loop in old.loops.values())
    assert old.loops["open_loop"].cosine == report.loops["open_loop"].cosine
    assert old.energy is None


def test_a_version_2_report_still_reads_without_an_energy_landscape(report, tmp_path):
    """Version 2 (per-episode curves, no energy): read with energy None, shown without an energy section."""
    assert report.energy is not None
    d = strict_loads(report.to_json())
    d["schema_version"] = 2
    del d["energy"]
    for key in [k for k in d["config"] if k.startswith("energy")]:  # a version-2 config had no such fields
        del d["config"][key]
    p = tmp_path / "v2.json"
    p.write_text(json.dumps(d))
    old = DriftReport.load(p)
    assert old.energy is None and old.loops == report.loops
    assert "energy landscape" not in render_text([old]) and "energy landscape" in render_text([report])


@pytest.mark.parametrize("damage", ["short row", "missing episode", "not a list", "text"])
def test_malformed_per_episode_curves_are_refused(report, tmp_path, damage):
    d = strict_loads(report.to_json())
    rows = d["loops"]["closed_loop"]["per_episode"]["cosine"]
    if damage == "short row":
        rows[1] = rows[1][:-1]
    elif damage == "missing episode":
        rows.pop()
    elif damage == "not a list":
        d["loops"]["closed_loop"]["per_episode"]["cosine"] = 0.5
    else:
        rows[0][0] = "0.5"
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(WMError, match=r"loops\.closed_loop\.per_episode\.cosine: expected 4 episodes x 12 steps"):
        DriftReport.load(p)


def test_number_lists_are_one_line_and_strings_are_never_touched(world, tmp_path):
    cfg, episodes = world
    r = evaluate(AnalyticModel(cfg), episodes, EvalConfig(horizon=H), FAST, data_id="set [1,  2]\n[3]")
    text = r.to_json()
    assert '"cosine": [' in text and "\n      0." not in text  # a curve on one line, not one number per line
    back = DriftReport.load(r.save(tmp_path / "r.json"))
    assert back.data["id"] == "set [1,  2]\n[3]"
    assert back.loops["closed_loop"].per_episode == r.loops["closed_loop"].per_episode
