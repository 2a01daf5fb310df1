"""What a throughput benchmark needs besides pytest-benchmark's clock: synchronised calls on GPUs,
FLOP counts, peak FLOP/s of known accelerators (for MFU), peak memory, and the device's name.

GPU work is asynchronous: a timer around a bare CUDA call measures the launch, not the work.
``synchronised(fn, device)`` returns a callable that waits for the device before returning, so
pytest-benchmark's wall clock (after its warm-up rounds) measures the work.
"""

from __future__ import annotations

import platform
import resource
import sys
from typing import Any, Callable

import torch

__all__ = [
    "PEAK_FLOPS",
    "count_flops",
    "device_name",
    "peak_flops",
    "peak_memory_bytes",
    "reset_peak_memory",
    "synchronise",
    "synchronised",
]

# Dense peak FLOP/s per dtype (vendor data sheets, SXM parts; no sparsity). float32 is the plain
# FP32 figure: TF32 tensor cores are faster but are not used unless torch is told to.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
}


def synchronise(device: torch.device | str) -> None:
    """Wait for all queued work on ``device`` (a no-op on CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def synchronised(fn: Callable[..., Any], device: torch.device | str) -> Callable[..., Any]:
    """``fn`` followed by a device synchronisation, for timing."""

    def call(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        synchronise(device)
        return out

    return call


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as torch's FlopCounterMode counts them (matmuls, convolutions and
    attention; elementwise work is not counted, so MFU from it is a slight underestimate)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def device_name(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


def peak_flops(device: torch.device | str, dtype: str) -> float | None:
    """The device's dense peak FLOP/s for ``dtype`` if it is in PEAK_FLOPS, else None (CPUs)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    for key, table in PEAK_FLOPS.items():
        if key in name:
            return table.get(dtype)
    return None


def reset_peak_memory(device: torch.device | str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory: allocated by torch on a GPU since the last reset; the process's peak resident
    set on a CPU (since start, so an upper bound)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
