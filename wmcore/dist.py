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
from typing import Any, Sequence

import torch.distributed as dist

from .errors import WMError

__all__ = ["check_errors", "chunks", "gather_ordered", "init_from_env", "is_main", "my_chunks", "world"]


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
    dist.init_process_group(backend=backend)
    return True


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
