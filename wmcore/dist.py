"""Data parallelism on torch.distributed: who this process is, which chunks are its own, and the
results of every rank gathered back in the original order.

Work is cut in whole chunks (of ``batch_size`` episodes, or of tasks) and dealt out strided, chunk c
to rank c % world (lm-evaluation-harness's strided shards): each rank computes exactly the chunks the
single process would, so results do not depend on the number of processes. Every rank takes part in
every gather; rank 0 alone writes. An error on one rank is shared (``check_errors``) before anyone
raises, so that no rank waits forever in a collective the failed one will never reach.

Without an initialised process group everything here is the single-process case: rank 0 of 1.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch.distributed as dist

from .errors import WMError

__all__ = ["check_errors", "chunks", "close", "device", "gather_ordered", "init_from_env", "is_main", "my_chunks",
           "share", "together", "world"]

# How long a collective waits for a rank that neither answers nor dies (a hung rank; a dead one is
# noticed at once: its sockets close, and torchrun stops the others). Slow chunks are not hangs: a
# rank reaches each collective after its own chunks, so the wait is at most one rank's work.
TIMEOUT_S = float(os.environ.get("WMCORE_DIST_TIMEOUT_S", "1800"))


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints summaries."""
    return world()[0] == 0


def init_from_env(backend: str = "gloo") -> bool:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment);
    returns whether one is in use. A single process (no torchrun) stays without one."""
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    # gloo even on GPUs: wmcore's collectives move small CPU objects (per-episode rows, task results),
    # never tensors on the device, and gloo needs no device for them
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=TIMEOUT_S))
    return True


def close() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device(name: str) -> str:
    """The device this rank computes on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun (one GPU
    per process); anything else (``cpu``, an explicit ``cuda:1``) is kept."""
    if name == "cuda" and world()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return name


@contextmanager
def together() -> Iterator[None]:
    """Run a block on every rank; if it raises on any rank, it raises on every rank (``check_errors``):
    no rank goes on into a collective that a failed rank will never reach."""
    err = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - shared, then re-raised by check_errors
        err = e
    check_errors(err)


def chunks(n: int, size: int) -> list[range]:
    """``range(n)`` cut into whole chunks of ``size`` (the last one shorter)."""
    if size < 1:
        raise WMError(f"chunk size must be >= 1, found {size}")
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def my_chunks(n: int, size: int, rank: int | None = None, world_size: int | None = None) -> list[range]:
    """The chunks of ``chunks(n, size)`` that ``rank`` computes: every ``world_size``-th from its own."""
    r, w = world()
    r = r if rank is None else rank
    w = w if world_size is None else world_size
    if not 0 <= r < w:
        raise WMError(f"rank {r} is not in 0..{w - 1}")
    return chunks(n, size)[r::w]


def gather_ordered(mine: Sequence[Any], n_chunks: int) -> list[Any]:
    """Every rank's per-chunk results (``mine[i]`` is the result of this rank's i-th chunk, as dealt by
    ``my_chunks``) -> all ``n_chunks`` results in chunk order, on every rank (plain picklable CPU
    values; ``all_gather_object``). Without a process group: ``list(mine)``."""
    w = world()[1]
    if w == 1:
        return list(mine)
    parts: list[Any] = [None] * w
    dist.all_gather_object(parts, list(mine))
    return [parts[c % w][c // w] for c in range(n_chunks)]


def share(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the run directory only rank 0 creates)."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_errors(error: BaseException | None) -> None:
    """Every rank says whether it failed; if any did, every rank raises a WMError that names the
    failed ranks and the first one's message (the failed rank re-raises its own error). Call it at
    each point where ranks must agree before a collective."""
    r, w = world()
    if w == 1:
        if error is not None:
            raise error
        return
    said: list[Any] = [None] * w
    dist.all_gather_object(said, None if error is None else f"{type(error).__name__}: {error}")
    failed = [i for i, s in enumerate(said) if s is not None]
    if not failed:
        return
    if error is not None:
        raise error
    raise WMError(f"rank(s) {failed} failed, so rank {r} stops too; rank {failed[0]}: {said[failed[0]]}")
