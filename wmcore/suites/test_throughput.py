"""Throughput of each model (``--wm-model``) on its own data: encoder frames/s, one predictor step,
and a whole open-loop rollout, over batch sizes.

Timed calls are synchronised with the device (``wmcore.timing``), warmed up, and run under
``torch.inference_mode()``. Each record carries in ``extra_info["throughput"]``: device, dtype, batch,
ms per call, frames/s or tokens/s, FLOPs per call (torch's FlopCounterMode), MFU where the device's
peak is known (wmcore.timing.PEAK_FLOPS), and peak memory.
"""

from __future__ import annotations

import pytest
import torch

from wmcore import timing
from wmcore.rollout import open_loop
from wmcore.settings import apply_think

BATCHES = [1, 8, 32]
ROLLOUT_STEPS = 10


def _record(benchmark, settings, what: str, batch: int, flops: int, per_call_items: float, unit: str) -> dict:
    med = benchmark.stats.stats.median
    peak = timing.peak_flops(settings.device, settings.dtype)
    info = {
        "what": what,
        "device": timing.device_name(settings.device),
        "dtype": settings.dtype,
        "batch": batch,
        "ms_per_call": 1e3 * med,
        f"{unit}_per_s": per_call_items / med,
        "flops_per_call": flops,
        "tflops_per_s": flops / med / 1e12,
        "mfu": None if peak is None else flops / med / peak,
        "peak_memory_bytes": timing.peak_memory_bytes(settings.device),
    }
    benchmark.extra_info["throughput"] = info
    return info


def _inputs(prepared, batch: int, steps: int):
    """Latents ``[batch, steps+1, N, D]``, actions ``[batch, steps, A]`` and states ``[batch, steps+1, S]``
    (or None) from the prepared data, episodes repeated to fill the batch."""
    z, a, s = prepared.latents, prepared.actions, prepared.states
    idx = torch.arange(batch) % z.shape[0]
    return z[idx, : steps + 1], a[idx, :steps], None if s is None else s[idx, : steps + 1]


@pytest.mark.parametrize("batch", BATCHES)
def test_encoder(benchmark, wm_model, wm_episodes, wm_settings, batch):
    frames = torch.stack([wm_episodes[i % len(wm_episodes)].frames[0] for i in range(batch)])[:, None]
    frames = frames.to(wm_settings.device)
    fn = timing.synchronised(lambda: wm_model.encode(frames), wm_settings.device)
    with torch.inference_mode():
        flops = timing.count_flops(fn)
        timing.reset_peak_memory(wm_settings.device)
        z = benchmark.pedantic(fn, rounds=5, warmup_rounds=2)
    assert z.shape[:2] == (batch, 1) and torch.isfinite(z).all()
    _record(benchmark, wm_settings, "encoder", batch, flops, batch, "frames")


@pytest.mark.parametrize("batch", BATCHES)
def test_predictor_step(benchmark, wm_model, wm_prepared, wm_settings, wm_think, batch):
    _, prep = wm_prepared("recorded")
    apply_think(wm_model, wm_think)  # a thinking model spends K passes per prediction (K = 1 without --wm-think)
    ctx = min(wm_model.max_context or 1, prep.actions.shape[1])
    z, a, s = _inputs(prep, batch, ctx)
    st = None if s is None else s[:, :ctx]  # models that read states (V-JEPA 2-AC) get them
    fn = timing.synchronised(lambda: wm_model.predict(z[:, :ctx], a[:, :ctx], st), wm_settings.device)
    with torch.inference_mode():
        flops = timing.count_flops(fn)
        timing.reset_peak_memory(wm_settings.device)
        out = benchmark.pedantic(fn, rounds=10, warmup_rounds=2)
    assert out.shape == z[:, 0].shape and torch.isfinite(out).all()
    info = _record(benchmark, wm_settings, f"predictor step ({ctx} context frames)", batch, flops,
                   batch * wm_model.tokens_per_frame, "tokens")
    info["context_frames"] = ctx
    info["think"] = wm_think


@pytest.mark.parametrize("batch", BATCHES)
def test_open_loop_rollout(benchmark, wm_model, wm_prepared, wm_settings, wm_think, batch):
    _, prep = wm_prepared("recorded")
    apply_think(wm_model, wm_think)  # a thinking model spends K passes per prediction (K = 1 without --wm-think)
    steps = min(ROLLOUT_STEPS, prep.actions.shape[1])
    z, a, s = _inputs(prep, batch, steps)
    # open loop reads the first state only, and only where the model propagates states itself
    st = s[:, :1] if s is not None and hasattr(wm_model, "propagate_state") else None
    fn = timing.synchronised(lambda: open_loop(wm_model, z[:, :1], a, steps, states=st), wm_settings.device)
    with torch.inference_mode():
        flops = timing.count_flops(fn)
        timing.reset_peak_memory(wm_settings.device)
        out = benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    assert out.shape[:2] == (batch, steps) and torch.isfinite(out).all()
    info = _record(benchmark, wm_settings, f"open-loop rollout ({steps} steps)", batch, flops,
                   batch * steps * wm_model.tokens_per_frame, "tokens")
    info["steps_per_s"] = steps / benchmark.stats.stats.median
    info["think"] = wm_think
