"""wmcore.dist: whole chunks dealt out strided, gathered back in order, errors shared by every rank;
with two real processes (gloo, CPU) and without a process group."""

from __future__ import annotations

import os

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

from wmcore import dist as wd
from wmcore.errors import WMError


@given(st.integers(0, 300), st.integers(1, 40), st.integers(1, 8))
def test_every_chunk_goes_to_exactly_one_rank_whole(n, size, w):
    dealt = [wd.my_chunks(n, size, r, w) for r in range(w)]
    merged = sorted((c for d in dealt for c in d), key=lambda c: c.start)
    assert merged == wd.chunks(n, size)  # the single process's chunks, each once, none cut
    assert [i for c in merged for i in c] == list(range(n))
    assert all(len(c) == size for c in wd.chunks(n, size)[:-1])


def test_without_a_process_group_it_is_one_process():
    assert wd.world() == (0, 1) and wd.is_main()
    assert wd.gather_ordered(["a", "b"], 2) == ["a", "b"]
    wd.check_errors(None)
    with pytest.raises(ValueError, match="mine"):
        wd.check_errors(ValueError("mine"))
    with pytest.raises(WMError, match="chunk size"):
        wd.chunks(5, 0)
    with pytest.raises(WMError, match="rank 2 is not in 0..1"):
        wd.my_chunks(5, 1, 2, 2)


def _worker(rank: int, world: int, init: str, queue) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        n, size = 23, 4
        mine = [[i * i for i in c] for c in wd.my_chunks(n, size)]
        got = wd.gather_ordered(mine, len(wd.chunks(n, size)))
        try:
            wd.check_errors(RuntimeError("rank 1 broke") if rank == 1 else None)
            shared = "no error"
        except WMError as e:
            shared = f"WMError: {e}"
        except RuntimeError as e:
            shared = f"own: {e}"
        queue.put((rank, got, shared))
    finally:
        dist.destroy_process_group()


def test_two_processes_gather_in_order_and_share_an_error(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_worker, args=(2, init, queue), nprocs=2, join=True, start_method="spawn")
    out = dict((r, (got, shared)) for r, got, shared in (queue.get(timeout=60) for _ in range(2)))
    want = [[i * i for i in c] for c in wd.chunks(23, 4)]
    assert out[0][0] == want and out[1][0] == want  # every rank has everything, in the single run's order
    assert out[1][1] == "own: rank 1 broke"
    assert out[0][1].startswith("WMError: rank(s) [1] failed, so rank 0 stops too; rank 1: RuntimeError: rank 1 broke")


def test_init_from_env_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert wd.init_from_env() is False and not dist.is_initialized()
    assert os.environ.get("WORLD_SIZE") is None
