"""Files that never clobber: write_new and new_run_dir."""

from __future__ import annotations

import os
import re
import threading

import pytest

from wmcore.errors import WMError
from wmcore.fsio import new_run_dir, write_new


def _leftovers(d):
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_write_new_creates_parents_and_writes_exact_bytes(tmp_path):
    data = bytes(range(256)) * 3 + b"\r\n\x00end"
    target = tmp_path / "a" / "b" / "c" / "blob.bin"
    out = write_new(target, data)
    assert out == target
    assert target.read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == ["blob.bin"]


def test_write_new_accepts_a_string_path_and_empty_data(tmp_path):
    out = write_new(str(tmp_path / "empty"), b"")
    assert out == tmp_path / "empty" and out.read_bytes() == b""


def test_write_new_refuses_an_existing_file(tmp_path):
    p = tmp_path / "keep.txt"
    p.write_bytes(b"original")
    with pytest.raises(WMError) as e:
        write_new(p, b"replacement")
    assert str(p) in str(e.value) and "exists" in str(e.value)
    assert p.read_bytes() == b"original"
    assert _leftovers(tmp_path) == []


def test_write_new_refuses_an_existing_directory(tmp_path):
    d = tmp_path / "dir"
    (d / "inner").mkdir(parents=True)
    with pytest.raises(WMError, match="exists"):
        write_new(d, b"x")
    assert [p.name for p in d.iterdir()] == ["inner"]


def test_write_new_refuses_a_dangling_symlink(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(WMError, match="exists"):
        write_new(link, b"x")
    assert not (tmp_path / "nowhere").exists()
    assert _leftovers(tmp_path) == []


def test_write_new_leaves_no_temp_files(tmp_path):
    for i in range(5):
        write_new(tmp_path / f"f{i}.json", f"{i}".encode())
    assert sorted(os.listdir(tmp_path)) == [f"f{i}.json" for i in range(5)]
    assert [(tmp_path / f"f{i}.json").read_text() for i in range(5)] == [str(i) for i in range(5)]


def test_concurrent_writers_one_wins_none_clobbers(tmp_path):
    p = tmp_path / "race.bin"
    results: dict[int, object] = {}

    def writer(i):
        try:
            write_new(p, bytes([i]) * 4096)
            results[i] = "ok"
        except WMError:
            results[i] = "refused"

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in results.items() if r == "ok"]
    assert len(results) == 8 and len(winners) == 1
    assert p.read_bytes() == bytes([winners[0]]) * 4096
    assert _leftovers(tmp_path) == []


def test_new_run_dir_gives_fresh_distinct_directories(tmp_path):
    root = tmp_path / "runs"  # does not exist yet
    dirs = [new_run_dir(root, label="drift") for _ in range(5)]
    assert len(set(dirs)) == 5
    for d in dirs:
        assert d.parent == root and d.is_dir() and list(d.iterdir()) == []
        assert re.fullmatch(r"drift-\d{8}-\d{6}(-\d+)?", d.name), d.name
    # five calls span at most two seconds' stamps, so at least two shared one and got a suffix
    assert any(re.search(r"-\d{6}-\d+$", d.name) for d in dirs)
    assert sorted(p.name for p in root.iterdir()) == sorted(d.name for d in dirs)


def test_new_run_dir_never_reuses_an_existing_directory(tmp_path):
    first = new_run_dir(tmp_path)
    (first / "result.json").write_text("{}")
    second = new_run_dir(tmp_path)
    assert second != first and list(second.iterdir()) == []
    assert (first / "result.json").read_text() == "{}"
    assert first.name.startswith("run-")
