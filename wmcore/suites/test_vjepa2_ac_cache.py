"""V-JEPA 2-AC: what the exact KV cache buys in an open-loop rollout, cached against full recompute.

Not a drift suite: no ``--wm-model``; random weights, built here. Timed calls are synchronised
(``wmcore.timing``) and run under ``torch.inference_mode()``; the first call of each case counts the
FLOPs (torch's FlopCounterMode) and doubles as the warm-up. ``extra_info["kv_cache"]`` holds ms per
rollout and per step, FLOPs, and on the cached case the speed-up over recompute and the largest
difference between the two rollouts. Speed is recorded, not asserted; that the cached rollout equals
the recomputed one is: to 1e-5 in float64, where only the algorithm can make them differ, and to 1e-4
in the timed float32 runs. (In float32 the two are not bitwise equal: BLAS rounds a row of a matmul
differently with the number of rows, i.e. one frame against the whole window; the ~1e-6 per step
this leaves accumulates over 30 open-loop steps to ~1e-5 with this configuration.)

- CPU (always): a small predictor (128 px -> 64 tokens per frame, width 192, 6 blocks, 6 heads,
  num_frames 64), batch 4, horizon 30. (With 16 tokens per frame, a cached step is so small that
  Python and per-call overhead, not arithmetic, set its time: 6.6x for 15.5x fewer FLOPs.)
- GPU (only with CUDA): the released configuration (ViT-g widths: 1408 -> 1024, 24 blocks, 16 heads,
  256 tokens per frame) in bfloat16, batch 1 and 32: ms per rollout step, tokens/s, FLOPs per step, MFU.

    wmcore bench --suite vjepa2_ac_cache
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from wmcore import timing
from wmcore.models.vjepa2_ac import ACPredictor, VJEPA2ACWorldModel
from wmcore.rollout import open_loop

HORIZON = 30  # 31 frames in the window: inside the 32 the mask covers (num_frames 64 // tubelet 2)
SMALL = dict(img_size=128, patch_size=16, num_frames=64, tubelet_size=2, embed_dim=192, predictor_embed_dim=192,
             depth=6, num_heads=6)
CPU_BATCH = 4
CPU_ROUNDS = {"recompute": 1, "cached": 5}  # recompute: ~12 s a call here; its FLOP count is the warm-up
EXACT_BATCH = 2  # of the float64 exactness check (two episodes: the cache must not mix them)
GPU_DEVICE = "cuda"
GPU_BATCHES = [1, 32]
GPU_ROUNDS = {"recompute": 3, "cached": 10}

_RESULTS: dict = {}  # (case, batch, mode) -> (median s, rollout, FLOPs) of this session


def _model(device: str, dtype: torch.dtype, **kwargs) -> VJEPA2ACWorldModel:
    with torch.random.fork_rng(devices=[device] if device.startswith("cuda") else []):
        torch.manual_seed(0)
        with torch.device(device):
            predictor = ACPredictor(**kwargs)  # the official initialisation: random weights
    return VJEPA2ACWorldModel(predictor, name="vjepa2-ac-random").to(device, dtype)


def _inputs(model: VJEPA2ACWorldModel, batch: int, device: str, dtype: torch.dtype):
    """First latent ``[B, 1, N, D]`` (layer-normed, as encode gives it), pose deltas ``[B, H, 7]``,
    first pose ``[B, 1, 7]``."""
    g = torch.Generator().manual_seed(1)
    n, d = model.tokens_per_frame, model.cfg.embed_dim
    z0 = F.layer_norm(torch.randn(batch, 1, n, d, generator=g), (d,))
    a = torch.cat([torch.randn(batch, HORIZON, 3, generator=g) * 0.05,
                   torch.randn(batch, HORIZON, 3, generator=g) * 0.2,
                   torch.randn(batch, HORIZON, 1, generator=g) * 0.3], -1)
    s = torch.cat([torch.randn(batch, 1, 3, generator=g), torch.rand(batch, 1, 3, generator=g) * 2 - 1,
                   torch.rand(batch, 1, 1, generator=g)], -1)
    return z0.to(device, dtype), a.to(device), s.to(device)


def _median_s(benchmark, fn) -> float:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        return stats.stats.median
    t = time.perf_counter()  # --benchmark-disable: one call of our own
    fn()
    return time.perf_counter() - t


def _run(benchmark, model, inputs, use_cache: bool, device: str, rounds: int) -> tuple[float, torch.Tensor, int]:
    z0, a, s = inputs
    fn = timing.synchronised(lambda: open_loop(model, z0, a, HORIZON, states=s, use_cache=use_cache), device)
    with torch.inference_mode():
        flops = timing.count_flops(fn)  # and the warm-up
        timing.reset_peak_memory(device)
        out = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0)
        med = _median_s(benchmark, fn)
    assert out.shape == (z0.shape[0], HORIZON, *z0.shape[2:]) and torch.isfinite(out).all()
    return med, out, flops


def _info(model, device: str, dtype: torch.dtype, batch: int, mode: str, med: float, flops: int) -> dict:
    n, k = model.tokens_per_frame, model.cfg.cond_tokens
    peak = timing.peak_flops(device, str(dtype).removeprefix("torch."))
    return {
        "what": f"open-loop rollout, {HORIZON} steps, {mode}",
        "mode": mode,
        "device": timing.device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "batch": batch,
        "horizon": HORIZON,
        "predictor": model.cfg.to_json(),
        "tokens_per_frame": n,
        "ms_per_rollout": 1e3 * med,
        "ms_per_step": 1e3 * med / HORIZON,
        "predicted_tokens_per_s": batch * HORIZON * n / med,
        # tokens through the predictor: one frame (K + N) per step cached, the whole window recomputed
        "processed_tokens_per_rollout": batch * (k + n) * (HORIZON if mode == "cached"
                                                           else HORIZON * (HORIZON + 1) // 2),
        "flops_per_rollout": flops,
        "flops_per_step": flops / HORIZON,
        "tflops_per_s": flops / med / 1e12,
        "mfu": None if peak is None else flops / med / peak,
        "peak_memory_bytes": timing.peak_memory_bytes(device),
    }


def _compare(info: dict, key: tuple, out: torch.Tensor, reference) -> float:
    """Record the cached case against recompute: speed-up (when recompute ran in this session) and the
    largest difference of the rollouts (recomputing the reference if needed). Returns that difference."""
    case, batch, _ = key
    rec = _RESULTS.get((case, batch, "recompute"))
    ref = (rec[1] if rec is not None else reference()).float().cpu()
    out = out.float().cpu()
    diff = (out - ref).abs().max().item()
    info["max_abs_diff_vs_recompute"] = diff
    info["min_cosine_vs_recompute"] = F.cosine_similarity(out, ref, dim=-1).min().item()
    if rec is not None:
        info["speedup_vs_recompute"] = rec[0] / _RESULTS[key][0]
        info["flops_ratio_recompute_over_cached"] = rec[2] / max(_RESULTS[key][2], 1)
    return diff


@pytest.fixture(scope="module")
def small_cpu():
    model = _model("cpu", torch.float32, **SMALL)
    return model, _inputs(model, CPU_BATCH, "cpu", torch.float32)


@pytest.mark.parametrize("mode", ["recompute", "cached"])  # recompute first: the cached case compares
def test_kv_cache_open_loop_cpu(benchmark, small_cpu, mode):
    model, inputs = small_cpu
    key = ("cpu", CPU_BATCH, mode)
    med, out, flops = _run(benchmark, model, inputs, mode == "cached", "cpu", CPU_ROUNDS[mode])
    _RESULTS[key] = (med, out, flops)
    info = _info(model, "cpu", torch.float32, CPU_BATCH, mode, med, flops)
    benchmark.extra_info["kv_cache"] = info
    if mode == "cached":
        z0, a, s = inputs
        with torch.inference_mode():
            diff = _compare(info, key, out, lambda: open_loop(model, z0, a, HORIZON, states=s, use_cache=False))
            # the same weights and inputs in float64: the cache is exact, up to float64 rounding
            m64 = _model("cpu", torch.float64, **SMALL)
            z64, a64, s64 = z0[:EXACT_BATCH].double(), a[:EXACT_BATCH].double(), s[:EXACT_BATCH].double()
            c64, r64 = (open_loop(m64, z64, a64, HORIZON, states=s64, use_cache=c) for c in (True, False))
        diff64 = (c64 - r64).abs().max().item()
        info["max_abs_diff_vs_recompute_float64"] = diff64
        assert diff64 <= 1e-5, f"cached rollout differs from full recompute by {diff64:.3g} in float64"
        assert diff <= 1e-4, f"cached rollout differs from full recompute by {diff:.3g} in float32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", GPU_BATCHES)
@pytest.mark.parametrize("mode", ["recompute", "cached"])
def test_kv_cache_open_loop_released_bf16_gpu(benchmark, mode, batch):
    device, dtype = GPU_DEVICE, torch.bfloat16
    key = ("gpu-released", batch, mode)
    model = _model(device, dtype)  # ACPredictor() = the released configuration
    inputs = _inputs(model, batch, device, dtype)
    try:
        med, out, flops = _run(benchmark, model, inputs, mode == "cached", device, GPU_ROUNDS[mode])
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip(f"out of GPU memory: released predictor, batch {batch}, {mode}")
    _RESULTS[key] = (med, out.cpu(), flops)
    info = _info(model, device, dtype, batch, mode, med, flops)
    benchmark.extra_info["kv_cache"] = info
    if mode == "cached":
        z0, a, s = inputs
        # bfloat16: the two paths round differently, so the difference is recorded, not gated
        with torch.inference_mode():
            _compare(info, key, out, lambda: open_loop(model, z0, a, HORIZON, states=s, use_cache=False))
