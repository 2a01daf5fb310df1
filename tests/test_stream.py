"""Streaming evaluation (wmcore.evaluate): a chunk at a time, the same report as one batch in memory,
whatever the chunk size, whether latents are kept or encoded again, from a list or a directory read
on demand; and what it refuses."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from wmcore import evaluate as E
from wmcore.data import load, open_set, stack
from wmcore.episode import Episode, EpisodeSet
from wmcore.errors import WMError
from wmcore.evaluate import EvalConfig, evaluate
from wmcore.models import load as load_model
from wmcore.paths import fixtures_dir
from wmcore.models.analytic import AnalyticConfig, AnalyticModel, make_episodes
from wmcore.report import DriftReport
from wmcore.settings import Thresholds

FAST = Thresholds(bootstrap=200)


def _same(a: DriftReport, b: DriftReport, tol: float = 0.0) -> None:
    """Equal reports but for timings and the creation time; floats within ``tol`` (absolute below 1,
    relative above: an energy ratio of ~500 carries float32 rounding of its energies)."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        for k in ("created", "timings"):
            d.pop(k, None)

    def walk(x, y, where):
        if isinstance(x, float) and isinstance(y, float):
            assert x == y or abs(x - y) <= tol * max(1.0, abs(x)), (where, x, y)
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list):
            assert len(x) == len(y), where
            for i, (p, q) in enumerate(zip(x, y)):
                walk(p, q, f"{where}[{i}]")
        else:
            assert x == y, (where, x, y)

    walk(da, db, "report")


@pytest.fixture(scope="module")
def world():
    cfg = AnalyticConfig(delta=0.05)
    return AnalyticModel(cfg), make_episodes(cfg, episodes=7, steps=20, seed=4)


@pytest.mark.parametrize("source", ["recorded", "random"])
def test_streaming_equals_one_batch_in_memory(world, source):
    model, episodes = world
    cfg = EvalConfig(horizon=12, batch_size=3, action_source=source)  # chunks of 3, 3 and 1 episodes
    streamed = evaluate(model, episodes, cfg, FAST, data_id="d")
    whole = evaluate(model, stack(episodes), cfg, FAST, data_id="d")
    assert streamed.timings["processes"] == 1 and (streamed.energy is not None) == (source == "recorded")
    _same(streamed, whole, tol=1e-12)  # the mean latent is a running sum: the last bits may differ


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_the_chunk_size_is_memory_not_results(world, batch_size):
    model, episodes = world
    ref = evaluate(model, episodes, EvalConfig(horizon=12, batch_size=4), FAST)
    got = evaluate(model, episodes, EvalConfig(horizon=12, batch_size=batch_size), FAST)
    # the config records the batch size; everything else is the same up to float64 summation order
    got = dataclasses.replace(got, config={**got.config, "batch_size": 4})
    _same(ref, got, tol=1e-12)


def test_latents_not_kept_are_encoded_again_to_the_same_report(world, monkeypatch):
    model, episodes = world
    cfg = EvalConfig(horizon=12, batch_size=2)
    kept = evaluate(model, episodes, cfg, FAST)
    calls = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda frames: calls.append(len(frames)) or encode(frames))
    monkeypatch.setattr(E, "KEEP_LATENTS_BYTES", 0)
    again = evaluate(model, episodes, cfg, FAST)
    assert sum(calls) == 2 * len(episodes)  # every chunk encoded in both passes
    _same(kept, again)


def test_an_embedded_model_on_the_fixture_set_streams_to_its_batch_report():
    model = load_model("pusht-wm")
    episodes = load("pusht", limit=6)
    cfg = EvalConfig(horizon=10, batch_size=4)
    _same(evaluate(model, episodes, cfg, FAST, data_id="pusht"),
          evaluate(model, stack(episodes), cfg, FAST, data_id="pusht"), tol=1e-6)


def test_a_directory_is_read_a_chunk_at_a_time(tmp_path):
    src = tmp_path / "set"
    shutil.copytree(fixtures_dir() / "pusht", src)
    doc = json.loads((src / "index.json").read_text())
    lazy = open_set(str(src), limit=5)
    assert len(lazy) == 5 and lazy.steps == tuple(e["steps"] for e in doc["episodes"][:5])
    read = []
    reader = lazy.reader
    lazy = dataclasses.replace(lazy, reader=lambda lo, hi: read.append((lo, hi)) or reader(lo, hi))
    model, cfg = load_model("pusht-lewm"), EvalConfig(horizon=8, batch_size=2, energy=False)
    r = evaluate(model, lazy, cfg, FAST, data_id="set")
    assert read == [(0, 2), (2, 4), (4, 5)]  # one chunk at a time, latents kept for the second pass
    _same(r, evaluate(model, load(str(src), limit=5), cfg, FAST, data_id="set"))


def test_an_episode_that_changed_since_the_index_was_read_is_refused(world):
    model, episodes = world
    shifted = EpisodeSet(ids=tuple(e.id for e in episodes), steps=tuple(e.steps for e in episodes),
                         reader=lambda lo, hi: episodes[lo + 1 : hi + 1] + episodes[:0])
    with pytest.raises(WMError, match="the data changed while it was evaluated"):
        evaluate(model, shifted, EvalConfig(horizon=12, batch_size=3), FAST)


def test_chunks_with_and_without_states_are_refused(world):
    model, episodes = world
    with_states = [dataclasses.replace(e, states=torch.zeros(e.frames.shape[0], 2)) for e in episodes[:3]]
    mixed = with_states + list(episodes[3:])
    with pytest.raises(WMError, match="some episodes have states and others not"):
        evaluate(model, mixed, EvalConfig(horizon=12, batch_size=3), FAST)


def test_an_empty_set_and_a_bad_start_are_refused(world):
    model, episodes = world
    with pytest.raises(WMError, match="no episodes"):
        evaluate(model, [], EvalConfig(horizon=12), FAST)
    with pytest.raises(WMError, match="start 20"):
        evaluate(model, episodes, EvalConfig(horizon=12, start=20), FAST)
    assert isinstance(episodes[0], Episode)


def test_latents_kept_between_the_passes_do_not_hold_the_encoders_hidden_states(world):
    """An encoder returning the CLS token as a view of all its tokens: the kept latents are a compact copy
    (else every chunk's hidden states stay in memory until the second pass)."""
    from wmcore.drift import encode_chunk

    model, episodes = world

    class ViewEncoder:
        frameskip, name = 1, "view"

        def encode(self, frames):
            z = model.encode(frames)  # [b, T, N, D]
            hidden = torch.cat([z, torch.zeros_like(z).repeat(1, 1, 8, 1)], 2)  # 9x the tokens
            return hidden[:, :, : z.shape[2]]  # a view that keeps `hidden` alive

    frames = stack(episodes[:2]).frames
    z = encode_chunk(ViewEncoder(), frames, 10, EvalConfig(horizon=5))
    assert z.untyped_storage().nbytes() == z.nbytes
    assert torch.equal(z, model.encode(frames[:, :11]))
