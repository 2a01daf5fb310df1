"""The thinking budget K (protocol.ThinkingWorldModel): the refinement model's invariants (K = 1 is
the base path bit for bit; a block whose gate is 0 changes nothing at any K; same seed, same
numbers), K recorded in every report and compared, and bad budgets refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wmcore.cli import main
from wmcore.errors import WMError
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.models import load
from wmcore.models.analytic import AnalyticConfig, AnalyticModel
from wmcore.models.keypoint import KeypointModel, KeypointWorldModel, tiny_config
from wmcore.models.keypoint import save_pretrained as save_keypoint
from wmcore.models.refine import RefineConfig, RefineModel, RefineWorldModel, load_world_model, save_pretrained
from wmcore.settings import Thresholds, apply_think
from wmcore.train.keypoint import KeypointTrainConfig
from wmcore.train.refine import train_refine

PUSHT = str(Path(__file__).resolve().parents[1] / "wmcore" / "fixtures" / "pusht")
pytest_plugins = ["pytester"]


def _refine(seed: int = 0, gate: float | None = 0.7) -> RefineModel:
    torch.manual_seed(seed)
    base = KeypointModel(tiny_config(image_size=32))
    for p in base.predictor.mlp[-1].parameters():  # the base predictor starts at zero: give it a motion
        torch.nn.init.normal_(p, std=0.05)
    m = RefineModel(RefineConfig(name="r-tiny", base=base.cfg.to_json(), hidden=16, layers=1, max_think=6))
    m.base.load_state_dict(base.state_dict())
    if gate is not None:
        with torch.no_grad():
            m.refine.gate.fill_(gate)
    return m.eval()


@pytest.fixture(scope="module")
def episodes():
    from wmcore.data import load as load_data

    return load_data(PUSHT, limit=3)


def _inputs(m: RefineModel, b: int = 5):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(b, 1, 1, m.base.cfg.latent_dim, generator=g) * 0.3
    a = torch.rand(b, 1, m.base.cfg.action_dim, generator=g) * 512
    return z, a


def test_k1_is_the_base_path_bit_for_bit():
    m = _refine()
    wm, base = RefineWorldModel(m), KeypointWorldModel(m.base)
    z, a = _inputs(m)
    assert wm.think == 1 and torch.equal(wm.predict(z, a), base.predict(z, a))
    wm.think = 3
    assert not torch.equal(wm.predict(z, a), base.predict(z, a))  # the block does act, when it may


def test_a_zero_gate_changes_nothing_at_any_budget():
    m = _refine(gate=None)  # as built: gate 0, the block's weights random
    assert float(m.refine.gate.detach()) == 0.0
    wm, base = RefineWorldModel(m), KeypointWorldModel(m.base)
    z, a = _inputs(m)
    for k in (1, 2, 4, 6):
        wm.think = k
        assert torch.equal(wm.predict(z, a), base.predict(z, a)), k
        assert torch.equal(wm.residuals(z, a, k), torch.zeros(z.shape[0], k - 1))


def test_reports_record_the_budget_and_k1_equals_the_base(episodes):
    m = _refine()
    cfg = EvalConfig(horizon=4, start=0, energy_starts=1, energy_candidates=2)
    base = evaluate(KeypointWorldModel(m.base), episodes, cfg, Thresholds(bootstrap=20))
    one = evaluate(RefineWorldModel(m), episodes, cfg, Thresholds(bootstrap=20))
    assert one.config["think"] == 1 and one.loops == base.loops and one.energy == base.energy
    three = evaluate(RefineWorldModel(m), episodes, EvalConfig(**{**cfg.to_dict(), "think": 3}), Thresholds(bootstrap=20))
    again = evaluate(RefineWorldModel(_refine()), episodes, EvalConfig(**{**cfg.to_dict(), "think": 3}),
                     Thresholds(bootstrap=20))
    assert three.config["think"] == 3 and three.loops != one.loops
    assert three.loops == again.loops and three.energy == again.energy  # same seed, same numbers


def test_the_command_line_records_k_and_compare_pairs_budgets(tmp_path, capsys):
    d = tmp_path / "refine"
    save_pretrained(_refine(), d)
    spec = f"refine:{d}"
    common = ["evaluate", "--model", spec, "--data", PUSHT, "--episodes", "3", "--horizon", "4", "--start", "0",
              "--no-energy"]
    assert main([*common, "--out", str(tmp_path / "k1")]) in (0, 1)
    assert main([*common, "--think", "4", "--out", str(tmp_path / "k4")]) in (0, 1)
    (k1,), (k4,) = (list((tmp_path / n).glob("*.json")) for n in ("k1", "k4"))
    assert k4.name == "r-tiny-recorded-think4.json" and json.loads(k4.read_text())["config"]["think"] == 4
    capsys.readouterr()
    assert main(["compare", str(k1), str(k4), "--out", str(tmp_path / "c.png")]) in (0, 1)
    out = capsys.readouterr().out
    assert "thinking budgets differ (BASE K=1, NEW K=4)" in out, out


def test_bad_budgets_are_refused_before_any_work(tmp_path, capsys):
    analytic = AnalyticModel(AnalyticConfig())
    with pytest.raises(WMError, match="cannot think"):
        apply_think(analytic, 2)
    assert apply_think(analytic, 1) is analytic
    wm = RefineWorldModel(_refine())
    for k, words in ((0, "integer >= 1"), (-1, "integer >= 1"), (7, "supports thinking budgets 1..6"), (2.0, "integer")):
        with pytest.raises(WMError, match=words):
            apply_think(wm, k)
    d = tmp_path / "refine"
    save_pretrained(_refine(), d)
    out = tmp_path / "out"
    for argv, words in (
        (["evaluate", "--model", "analytic", "--think", "2", "--out", str(out)], "cannot think"),
        (["evaluate", "--model", f"refine:{d}", "--data", PUSHT, "--think", "9", "--out", str(out)], "1..6"),
        (["evaluate", "--model", "analytic", "--think", "0", "--out", str(out)], "--think"),
        (["plan", "--planner", "stay", "--think", "2", "--out", str(out)], "no world model to think with"),
    ):
        assert main(argv) == 2, argv
        assert words in capsys.readouterr().err, argv
        assert not out.exists()
    with pytest.raises(WMError, match="EvalConfig.think"):
        EvalConfig(think=0)


def test_a_refine_checkpoint_round_trips_and_a_bad_one_is_named(tmp_path):
    m = _refine()
    d = save_pretrained(m, tmp_path / "r")
    wm = load(f"refine:{d}")
    assert wm.fingerprint() == RefineWorldModel(m).fingerprint() and wm.max_think == 6
    z, a = _inputs(m)
    wm.think = 5
    ref = RefineWorldModel(m)
    ref.think = 5
    assert torch.equal(wm.predict(z, a), ref.predict(z, a))
    cfg = json.loads((d / "config.json").read_text())
    cfg["max_think"] = 0
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WMError, match="max_think"):
        load(f"refine:{d}")
    with pytest.raises(WMError, match="refine:DIR"):
        load("refine")


def test_training_moves_the_gate_and_writes_a_loadable_model(tmp_path):
    torch.manual_seed(0)
    save_keypoint(KeypointModel(tiny_config(image_size=32)), tmp_path / "base")
    cfg = KeypointTrainConfig(predictor_steps=6, predictor_batch=16, val_episodes=2, min_episodes=4, val_every=3, warmup=2)
    lines: list[str] = []
    d = train_refine([PUSHT], str(tmp_path / "out"), str(tmp_path / "base"), {"name": "r", "hidden": 8, "layers": 1},
                     cfg, log=lines.append, limit=6)
    wm = load(f"refine:{d}")
    assert float(wm.full.refine.gate.detach()) != 0.0 and any("val_open_block_units_k4" in x for x in lines)
    with pytest.raises(WMError, match="already there"):
        train_refine([PUSHT], str(tmp_path / "out"), str(tmp_path / "base"), {"name": "r"}, cfg, limit=6)


def test_the_thinking_curve_table_plot_and_gate(episodes, tmp_path):
    from wmcore.thinking import curve, plot, render

    cfg = EvalConfig(horizon=4, start=0, energy=False)
    zero = curve(RefineWorldModel(_refine(gate=None)), episodes, [4, 1, 2], cfg, Thresholds(bootstrap=20),
                 spec="r0", data_id="pusht[:3]")
    assert zero["ks"] == [1, 2, 4] and [r["think"] for r in zero["rows"]] == [1, 2, 4]
    assert len({r["auc"] for r in zero["rows"]}) == 1  # gate 0: thinking changes nothing
    assert all(r["vs_k1"]["delta"] == 0 and r["vs_k1"]["passed"] for r in zero["rows"][1:]) and zero["think_no_worse"]
    assert zero["rows"][2]["residuals"] == [0.0, 0.0, 0.0] and zero["rows"][0]["residuals"] == []
    # a block that wrecks the prediction: more thinking is significantly worse, and the gate says so
    bad = _refine(gate=3.0)
    with torch.no_grad():
        for p in bad.refine.mlp.parameters():
            p.mul_(40)
    doc = curve(RefineWorldModel(bad), episodes, [1, 4], cfg, Thresholds(bootstrap=20), spec="bad", data_id="pusht[:3]")
    assert doc["rows"][1]["auc"] < doc["rows"][0]["auc"] and doc["rows"][1]["vs_k1"]["verdict"] == "regressed"
    assert not doc["think_no_worse"] and "think_no_worse: FAIL" in render(doc)
    assert plot(doc, tmp_path / "t.png").stat().st_size > 0
    with pytest.raises(WMError, match="K = 1"):
        curve(RefineWorldModel(bad), episodes, [2, 4], cfg, Thresholds(), spec="bad", data_id="x")
    with pytest.raises(WMError, match="cannot think"):
        curve(AnalyticModel(AnalyticConfig()), episodes, [1, 2], cfg, Thresholds(), spec="a", data_id="x")


def test_the_plugin_runs_the_drift_suite_at_each_budget(pytester, tmp_path):
    suite = Path(__file__).resolve().parents[1] / "wmcore" / "suites" / "test_drift.py"
    pytester.makepyfile(test_think_drift=suite.read_text())  # a name no module of tests/ has
    d = tmp_path / "refine"
    save_pretrained(_refine(), d)
    common = ["--benchmark-only", "-p", "no:cacheprovider", "--wm-data", PUSHT, "--wm-episodes", "3",
              "--wm-horizon", "4", "--wm-start", "0", "--wm-actions", "recorded", "--wm-no-energy", "--wm-no-filmstrip",
              "--wm-artifacts", str(tmp_path / "art")]
    r = pytester.runpytest(*common, "--wm-model", f"refine:{d}", "--wm-think", "1,3", f"--benchmark-json={tmp_path / 'b.json'}")
    assert r.ret in (0, 1)  # the tiny random model's gates are its own affair; both budgets ran
    names = {b["name"]: b for b in json.loads((tmp_path / "b.json").read_text())["benchmarks"]}
    assert set(names) == {f"test_drift[refine:{d}-recorded-think1]", f"test_drift[refine:{d}-recorded-think3]"}
    (run,) = (tmp_path / "art").glob("run-*")
    k3 = json.loads((run / "r-tiny-recorded-think3.json").read_text())
    assert k3["config"]["think"] == 3 and json.loads((run / "r-tiny-recorded.json").read_text())["config"]["think"] == 1
    r = pytester.runpytest(*common, "--wm-model", "analytic", "--wm-think", "1,2")
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "cannot think" in r.stderr.str()
    r = pytester.runpytest(*common, "--wm-model", "analytic", "--wm-think", "0")
    assert r.ret == pytest.ExitCode.USAGE_ERROR and "--wm-think" in r.stderr.str()


def test_train_refine_bad_input_exits_2(tmp_path, capsys):
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "pusht-refine.json"
    out = tmp_path / "out"
    for argv, words in (
        (["--base", "pusht-lewm", "--recipe", str(recipe)], "keypoint model"),
        (["--base", str(tmp_path / "none"), "--recipe", str(recipe)], "no such keypoint model directory"),
        (["--recipe", str(tmp_path / "none.json")], "--recipe"),
    ):
        assert main(["train-refine", "--data", PUSHT, "--out", str(out), *argv]) == 2, argv
        assert words in capsys.readouterr().err, argv
        assert not out.exists()
