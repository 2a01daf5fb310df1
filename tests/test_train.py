"""Training (wmcore.train): what a run writes, the validation log, determinism, resuming after an
interruption, refusals, bad input, the ``wmcore train`` command; the loop's parts (windows, schedule,
recipes), the ac-tiny objective, and that training feeds a model what evaluation feeds it.

Every run here trains a tiny model for a few steps on a tiny synthetic episode set written with the
episode API; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wmcore.cli import add_train_arguments, build_parser
from wmcore.cli import main as cli_main
from wmcore.data import Episode
from wmcore.data.episodes import save_episode, write_index
from wmcore.errors import WMError
from wmcore.models import ac_tiny, load
from wmcore.models.ac_tiny import ACJEPA, ACTinyConfig
from wmcore.models.lewm import (
    LeWMConfig, LeWMWorldModel, LeWorldModel, canonical_state_dict, load_world_model, normalise_actions, preprocess,
    tiny_config,
)
from wmcore.models.vjepa2_ac import ac_preprocess
from wmcore.train import (
    PREDICTION_LOSSES, RECIPES, TrainConfig, Windows, ac_tiny_loss, lr_at,
    recipe_for, run, train,
)

FRAMESKIP = 2
ADIM = 2  # recorded action width
TINY = tiny_config(name="tiny-train", action_dim=ADIM * FRAMESKIP, frameskip=FRAMESKIP)
CFG = TrainConfig(steps=7, batch=4, val_every=3, log_every=1, val_episodes=2, warmup=2, seed=0)
N_EPISODES, STEPS, SIZE = 6, 20, 16


pytestmark = pytest.mark.usefixtures("few_threads")


def _episode(steps: int, seed: int, adim: int = ADIM, held_out: bool = False) -> Episode:
    """A bright square drifting over noise; actions with a non-zero mean and non-unit stds (the
    held-out episodes' actions are shifted, so statistics over all episodes differ from the split's)."""
    g = np.random.default_rng(seed)
    frames = g.integers(0, 60, (steps + 1, SIZE, SIZE, 3), dtype=np.uint8)
    for t in range(steps + 1):
        r, c = (2 + t) % 10, (3 + 2 * t) % 10
        frames[t, r : r + 5, c : c + 5] = 220
    scale = np.array([3.0, 0.5, 2.0][:adim] + [1.0] * max(0, adim - 3))
    shift = np.array([5.0, -2.0, 1.0][:adim] + [0.0] * max(0, adim - 3)) + (40.0 if held_out else 0.0)
    actions = (g.normal(size=(steps, adim)) * scale + shift).astype(np.float32)
    return Episode(frames=torch.from_numpy(frames), actions=torch.from_numpy(actions), states=None, fps=10.0,
                   id=f"synthetic-{seed}")


def _write_set(d: Path, episodes: list[Episode]) -> Path:
    entries = [save_episode(d, i, e, seed=i) for i, e in enumerate(episodes)]
    write_index(d, {"fps": 10.0, "height": SIZE, "width": SIZE}, entries)
    return d


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    n_train = N_EPISODES - CFG.val_episodes
    eps = [_episode(STEPS, seed=i, held_out=i >= n_train) for i in range(N_EPISODES)]
    return _write_set(tmp_path_factory.mktemp("episodes"), eps)


def _run(data: Path, out: Path, cfg: TrainConfig = CFG, model_cfg: LeWMConfig = TINY, log=None) -> Path:
    lines: list[str] = []
    return train(str(data), str(out), model_cfg, cfg, device="cpu", log=log or lines.append)


@pytest.fixture(scope="module")
def run_a_with_log(data_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """One uninterrupted run: its out directory and its progress lines."""
    out = tmp_path_factory.mktemp("run") / "a"
    lines: list[str] = []
    final = _run(data_dir, out, log=lines.append)
    assert final == out / "model"
    return out, lines


@pytest.fixture(scope="module")
def run_a(run_a_with_log) -> Path:
    return run_a_with_log[0]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------
# what a run writes


def test_run_writes_a_loadable_model_with_the_training_split_action_statistics(run_a, data_dir):
    model_dir = run_a / "model"
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    wm = json.loads((model_dir / "config.json").read_text())["wmcore"]

    # the statistics of the training split, computed here from the files on disk
    n_train = N_EPISODES - CFG.val_episodes
    acts = np.concatenate([np.load(data_dir / f"episode_{i:03d}.npz")["actions"] for i in range(n_train)])
    mean, std = acts.astype(np.float64).mean(0), acts.astype(np.float64).std(0, ddof=1)
    assert wm["action_mean"] == pytest.approx(mean.tolist(), rel=1e-9, abs=1e-9)
    assert wm["action_std"] == pytest.approx(std.tolist(), rel=1e-9, abs=1e-9)
    # ... and not of all episodes (the held-out ones are shifted)
    every = np.concatenate([np.load(data_dir / f"episode_{i:03d}.npz")["actions"] for i in range(N_EPISODES)])
    assert abs(wm["action_mean"][0] - every[:, 0].mean()) > 1.0

    m = load_world_model(model_dir)
    assert m.cfg.action_mean == pytest.approx(tuple(mean), rel=1e-9)
    assert m.action_dim == TINY.action_dim and m.frameskip == FRAMESKIP and m.cfg.image_size == TINY.image_size
    # the loaded weights are the saved ones, and the model runs
    assert _same_weights(_weights(run_a), canonical_state_dict(m.model))
    frames = torch.from_numpy(np.stack([np.asarray(_episode(4, seed=99).frames)]))  # [1, 5, 16, 16, 3]
    z = m.encode(frames)
    assert z.shape == (1, 5, 1, TINY.embed_dim) and torch.isfinite(z).all()
    nxt = m.predict(z[:, :3], torch.randn(1, 3, TINY.action_dim))
    assert nxt.shape == (1, 1, TINY.embed_dim) and torch.isfinite(nxt).all()


def test_train_log_has_a_finite_validation_entry_at_each_val_step(run_a):
    log = json.loads((run_a / "train_log.json").read_text())
    want = sorted(set(range(CFG.val_every, CFG.steps + 1, CFG.val_every)) | {CFG.steps})
    assert [e["step"] for e in log] == want
    for e in log:
        for key in ("train_loss", "val_pred", "val_sigreg", "val_cos", "elapsed_s"):
            assert isinstance(e[key], float) and math.isfinite(e[key]), (e["step"], key, e.get(key))
        assert -1.0 <= e["val_cos"] <= 1.0 and e["val_pred"] >= 0 and e["val_sigreg"] >= 0


def test_progress_lines_name_the_steps(run_a_with_log):
    out, lines = run_a_with_log
    steps = [ln.split()[1] for ln in lines if ln.startswith("step ")]
    assert steps == [f"{i}/{CFG.steps}" for i in range(1, CFG.steps + 1)]  # log_every 1
    val_lines = [ln for ln in lines if "val pred" in ln]
    assert [ln.split()[1] for ln in val_lines] == [f"{e['step']}/{CFG.steps}" for e in
                                                   json.loads((out / "train_log.json").read_text())]
    assert lines[-1] == f"saved {out / 'model'}"


# --------------------------------------------------------------------------------------------------
# determinism and resuming


def test_same_seed_same_weights_other_seed_other_weights(run_a, data_dir, tmp_path):
    _run(data_dir, tmp_path / "b")
    assert _same_weights(_weights(run_a), _weights(tmp_path / "b"))
    _run(data_dir, tmp_path / "c", cfg=dataclasses.replace(CFG, seed=1))
    assert not _same_weights(_weights(run_a), _weights(tmp_path / "c"))


def test_snapshots_are_finished_models_and_leave_the_run_untouched(run_a, data_dir, tmp_path):
    """--snapshot-every writes the model as of those steps (BatchNorm recalibrated, loadable); the final
    weights are those of the same run without snapshots, bit for bit."""
    out = tmp_path / "snap"
    _run(data_dir, out, cfg=dataclasses.replace(CFG, snapshot_every=3))
    snaps = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snaps == ["step-000003", "step-000006"]  # the last step is model/ itself
    assert _same_weights(_weights(run_a), _weights(out))
    early, late = (load_file(out / "snapshots" / n / "model.safetensors") for n in snaps)
    assert not _same_weights(early, late) and not _same_weights(late, _weights(out))
    assert load(f"lewm:{out / 'snapshots' / snaps[0]}").name == TINY.name


class _Stop(Exception):
    pass


def _interrupt_after(step: int):
    """A log callback that raises at the first progress line after ``step`` (checkpoint written)."""

    def log(line: str) -> None:
        if line.startswith(f"step {step + 1}/"):
            raise _Stop(line)

    return log


def test_interrupted_run_resumes_to_the_same_weights_and_log(run_a, data_dir, tmp_path):
    out = tmp_path / "b"
    with pytest.raises(_Stop):
        _run(data_dir, out, log=_interrupt_after(CFG.val_every))
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == CFG.val_every and not (out / "model").exists()

    lines: list[str] = []
    _run(data_dir, out, log=lines.append)
    assert f"resuming from step {CFG.val_every}" in lines
    assert _same_weights(_weights(run_a), _weights(out))
    # the log goes on where it stopped, the running training loss included
    strip = lambda log: [{k: v for k, v in e.items() if k != "elapsed_s"} for e in log]  # noqa: E731
    a = json.loads((run_a / "train_log.json").read_text())
    b = json.loads((out / "train_log.json").read_text())
    assert strip(a) == strip(b)


def test_resume_with_other_settings_is_refused(data_dir, tmp_path):
    out = tmp_path / "b"
    with pytest.raises(_Stop):
        _run(data_dir, out, log=_interrupt_after(CFG.val_every))
    before = (out / "checkpoint.pt").read_bytes()
    for cfg, mcfg in ((dataclasses.replace(CFG, lr=1e-3), TINY), (CFG, dataclasses.replace(TINY, embed_dim=8))):
        with pytest.raises(WMError, match="other settings"):
            _run(data_dir, out, cfg=cfg, model_cfg=mcfg)
    assert (out / "checkpoint.pt").read_bytes() == before and not (out / "model").exists()


def test_finished_out_dir_is_refused_and_left_alone(run_a, data_dir):
    files = {p: p.read_bytes() for p in sorted(run_a.rglob("*")) if p.is_file()}
    with pytest.raises(WMError, match="already there"):
        _run(data_dir, run_a)
    assert {p: p.read_bytes() for p in sorted(run_a.rglob("*")) if p.is_file()} == files


# --------------------------------------------------------------------------------------------------
# bad input


def test_too_few_episodes_for_the_validation_split(tmp_path):
    d = _write_set(tmp_path / "data", [_episode(STEPS, seed=i) for i in range(CFG.val_episodes)])
    with pytest.raises(WMError, match=rf"{CFG.val_episodes} episodes; need more than the {CFG.val_episodes} held out"):
        _run(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_episodes_too_short_for_a_window(tmp_path):
    need = CFG.window * FRAMESKIP
    d = _write_set(tmp_path / "data", [_episode(need - 1, seed=i) for i in range(N_EPISODES)])
    with pytest.raises(WMError, match=rf"episodes have {need - 1} steps.*needs {need}"):
        _run(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # one more step is enough
    d2 = _write_set(tmp_path / "data2", [_episode(need, seed=i) for i in range(N_EPISODES)])
    _run(d2, tmp_path / "out2", cfg=dataclasses.replace(CFG, steps=1))
    assert (tmp_path / "out2" / "model" / "model.safetensors").is_file()


def test_action_width_must_match_the_model(tmp_path):
    d = _write_set(tmp_path / "data", [_episode(STEPS, seed=i, adim=3) for i in range(N_EPISODES)])
    with pytest.raises(WMError, match=rf"actions have 3 dimensions; the model expects {ADIM} per recorded step"):
        _run(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mixed_action_widths(tmp_path):
    eps = [_episode(STEPS, seed=i, adim=3 if i == 1 else ADIM) for i in range(N_EPISODES)]
    d = _write_set(tmp_path / "data", eps)
    with pytest.raises(WMError, match=r"different action widths \[2, 3\]"):
        _run(d, tmp_path / "out")


@pytest.mark.parametrize(
    "change, field",
    [({"val_every": 0}, "val_every"), ({"steps": 0}, "steps"), ({"batch": -1}, "batch"), ({"window": 1}, "window"),
     ({"lr": 0.0}, "lr"), ({"val_episodes": 0}, "val_episodes"), ({"warmup": 2.5}, "warmup"),
     ({"time_limit_min": float("nan")}, "time_limit_min"), ({"snapshot_every": -1}, "snapshot_every")],
)
def test_bad_train_config(change, field):
    with pytest.raises(WMError, match=rf"TrainConfig\.{field}"):
        TrainConfig(**change)


def test_bad_device(data_dir, tmp_path):
    with pytest.raises(WMError, match="not a torch device"):
        train(str(data_dir), str(tmp_path / "out"), TINY, CFG, device="gpu0", log=lambda s: None)
    if not torch.cuda.is_available():
        with pytest.raises(WMError, match="CUDA is not available"):
            train(str(data_dir), str(tmp_path / "out"), TINY, CFG, device="cuda", log=lambda s: None)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# the command


def test_cli_train_help(capsys):
    assert cli_main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: wmcore train") and "--data" in out and "--val-every" in out


def test_cli_train_missing_data_exits_2(tmp_path, capsys):
    missing = tmp_path / "no-such-data"
    assert cli_main(["train", "--data", str(missing), "--out", str(tmp_path / "out")]) == 2
    cap = capsys.readouterr()
    assert "error" in cap.err and str(missing) in cap.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, says",
    [(["--val-every", "0"], "TrainConfig.val_every"), (["--model-config", "MISSING"], "--model-config"),
     (["--model-config", "UNKNOWN"], "bogus_field")],
)
def test_cli_train_bad_options_exit_2(args, says, data_dir, tmp_path, capsys):
    (tmp_path / "unknown.json").write_text(json.dumps({"bogus_field": 1}))
    args = [str(tmp_path / "absent.json") if a == "MISSING" else str(tmp_path / "unknown.json") if a == "UNKNOWN"
            else a for a in args]
    assert cli_main(["train", "--data", str(data_dir), "--out", str(tmp_path / "out"), *args]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_train_runs(data_dir, tmp_path, capsys):
    overrides = {f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY)
                 if f.name != "name" and getattr(TINY, f.name) != getattr(LeWMConfig(), f.name)}
    (tmp_path / "tiny.json").write_text(json.dumps(overrides))
    out = tmp_path / "out"
    argv = ["train", "--data", str(data_dir), "--out", str(out), "--model-config", str(tmp_path / "tiny.json"),
            "--steps", "2", "--batch", "4", "--val-every", "2", "--val-episodes", "2", "--warmup", "1",
            "--device", "cpu", "--name", "cli-tiny"]
    assert cli_main(argv) == 0
    assert f"saved {out / 'model'}" in capsys.readouterr().out
    m = load_world_model(out / "model")
    assert m.name == "cli-tiny" and m.cfg.embed_dim == TINY.embed_dim and m.cfg.action_mean is not None
    # the same command again: refused, exit 2, nothing overwritten
    before = (out / "model" / "model.safetensors").read_bytes()
    assert cli_main(argv) == 2
    assert "already there" in capsys.readouterr().err
    assert (out / "model" / "model.safetensors").read_bytes() == before


def test_cli_make_fixtures_unknown_kind_exits_2(tmp_path, capsys):
    assert cli_main(["make-fixtures", "foo", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "'foo'" in err and "pusht" in err
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------
# the loop's parts


def test_windows_are_frameskip_apart_with_their_action_blocks():
    e, t, k = 3, 12, 2
    frames = torch.arange(e * (t + 1), dtype=torch.uint8).reshape(e, t + 1, 1, 1, 1).expand(e, t + 1, 2, 2, 3)
    actions = torch.arange(e * t * 2, dtype=torch.float32).reshape(e, t, 2)  # A = 2
    states = torch.arange(e * (t + 1), dtype=torch.float32).reshape(e, t + 1, 1)
    w = Windows(frames, actions, window=3, frameskip=k, states=states)
    assert w.starts == t - 3 * k + 1  # the last block needs k actions after the last frame
    pix, act, st = w.take(torch.tensor([1]), torch.tensor([4]))
    assert pix[0, :, 0, 0, 0].tolist() == [13 + 4, 13 + 6, 13 + 8]  # episode 1's frames 4, 6, 8
    assert st[0, :, 0].tolist() == [13 + 4, 13 + 6, 13 + 8]
    assert act.shape == (1, 3, k * 2)
    assert torch.equal(act[0, 1], actions[1, 6:8].flatten())  # block 1: the actions from frame 6 to 8
    with pytest.raises(WMError, match="episodes have 12 steps; a window of 7 model steps at frameskip 2 needs 14"):
        Windows(frames, actions, window=7, frameskip=k)


def test_learning_rate_warms_up_linearly_then_decays_to_five_percent():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after the warm-up
    assert lr_at(cfg.steps, cfg) == pytest.approx(0.05) and lrs[-1] > 0.05
    assert lr_at(55, cfg) == pytest.approx(0.05 + 0.95 * 0.5)  # half way: the cosine's midpoint


def test_every_arch_has_a_recipe_chosen_by_its_config_type():
    assert {a: r.config for a, r in RECIPES.items()} == {"lewm": LeWMConfig, "ac-tiny": ACTinyConfig}
    assert recipe_for(TINY).arch == "lewm" and recipe_for(ac_tiny.tiny_config()).arch == "ac-tiny"
    with pytest.raises(WMError, match="no training recipe for a TrainConfig"):
        recipe_for(CFG)


def test_training_feeds_the_model_what_evaluation_feeds_it():
    """One preprocessing per family: a training window's pixels and actions are exactly what the
    evaluation adapter computes from the same recorded frames and actions."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 3, 24, 20, 3), dtype=torch.uint8, generator=g)  # not the model's size
    actions = torch.randn(2, 3, ADIM * FRAMESKIP, generator=g) * 3 + 1
    cfg = dataclasses.replace(TINY, action_mean=(1.0, -2.0), action_std=(3.0, 0.5))
    pix, act = RECIPES["lewm"].inputs(cfg, frames, actions, None, torch.device("cpu"))
    assert torch.equal(pix, preprocess(frames, cfg)) and pix.shape == (2, 3, 3, 16, 16)
    assert torch.equal(act, normalise_actions(actions, cfg))
    torch.manual_seed(0)
    wm = LeWMWorldModel(LeWorldModel(cfg))
    with torch.no_grad():
        assert torch.equal(wm.encode(frames)[:, :, 0], wm.model.embed(pix))
        assert torch.equal(wm.predict(wm.encode(frames), actions), wm.model.predict_next(wm.model.embed(pix), act)[:, -1:])

    acfg = ac_tiny.tiny_config(frameskip=FRAMESKIP, action_mean=(1.0, -2.0), action_std=(3.0, 0.5))
    states = torch.randn(2, 3, 4, generator=g)
    pix, act, st = RECIPES["ac-tiny"].inputs(acfg, frames, actions, states, torch.device("cpu"))
    assert torch.equal(pix, ac_preprocess(frames, acfg.image_size))
    assert torch.equal(act, ac_tiny.normalise_actions(actions, acfg))
    assert torch.equal(st, ac_tiny.state_tokens(states, acfg))  # validation: the recorded positions


def test_the_command_options_default_to_train_config():
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}) == TrainConfig()
    assert (args.arch, args.device, args.name, args.model_config) == ("lewm", "auto", None, None)
    args.val_every = 0
    with pytest.raises(WMError, match="TrainConfig.val_every"):  # run: bad input raises, main maps it to exit 2
        run(args)


def test_train_command_lists_every_train_config_field():
    import argparse

    out = add_train_arguments(argparse.ArgumentParser(prog="wmcore train")).format_help()
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')}" in out, f.name


# --------------------------------------------------------------------------------------------------
# the ac-tiny objective (wmcore.train.losses.ac_tiny_loss) and its state inputs

K, W = 2, 2  # frameskip, recorded action width
AC = ac_tiny.tiny_config(frameskip=K, action_width=W, action_mean=(10.0, -5.0), action_std=(2.0, 4.0))


def _ac_module(cfg: ACTinyConfig = AC, seed: int = 0) -> ACJEPA:
    torch.manual_seed(seed)
    return ACJEPA(cfg).eval()


def _ac_batch(b: int = 3, t: int = 4):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, t, 3, AC.image_size, AC.image_size, generator=g), torch.randn(b, t, K * W, generator=g),
            torch.randn(b, t, K * W, generator=g))


def test_ac_loss_terms_and_gradients_reach_both_halves():
    m = _ac_module().train()
    losses = ac_tiny_loss(m, *_ac_batch(), generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"total", "pred", "sigreg", "cos", "skill"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert torch.allclose(losses["total"], losses["pred"] + AC.sigreg_lambda * losses["sigreg"])
    losses["total"].backward()
    for part in (m.encoder, m.predictor):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_ac_mse_and_inverse_dynamics_terms_are_what_they_say():
    cfg = dataclasses.replace(AC, pred_loss="mse", inverse_dynamics=0.5)
    m = _ac_module(cfg).train()
    pix, act, st = _ac_batch()
    losses = ac_tiny_loss(m, pix, act, st, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb = m.embed(pix)
        mse = (m.predict_next(emb[:, :-1], act[:, :-1], st[:, :-1]) - emb[:, 1:]).square().mean()
        mean = emb.mean(2)
        inverse = (m.inverse(torch.cat([mean[:, :-1], mean[:, 1:]], -1)) - act[:, :-1]).square().mean()
    torch.testing.assert_close(losses["pred"], mse)
    torch.testing.assert_close(losses["inverse"], inverse)
    torch.testing.assert_close(losses["total"], mse + cfg.sigreg_lambda * losses["sigreg"] + 0.5 * inverse)
    losses["total"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.inverse.parameters())


def test_ac_frozen_encoder_trains_the_predictor_only():
    m = _ac_module(dataclasses.replace(AC, freeze_encoder=True)).train()
    losses = ac_tiny_loss(m, *_ac_batch(2, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(losses["total"], losses["pred"]) and torch.isfinite(losses["sigreg"])
    losses["total"].backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.predictor.parameters())


def test_every_prediction_loss_the_config_accepts_exists():
    d = torch.tensor([[1.0, -3.0]])
    assert {k: float(f(d)) for k, f in PREDICTION_LOSSES.items()} == {"l1": 2.0, "mse": 5.0}
    for name in PREDICTION_LOSSES:
        assert ac_tiny.tiny_config(pred_loss=name).pred_loss == name
    with pytest.raises(WMError, match="pred_loss"):
        ac_tiny.tiny_config(pred_loss="huber")


