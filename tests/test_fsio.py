"""Files that never clobber and are never half written: write_new, write_replace, link_new, the
umask's file mode, and new_run_dir."""

from __future__ import annotations

import os
import re
import stat
import threading
from contextlib import contextmanager

import pytest

from wmcore.errors import WMError
from wmcore import fsio
from wmcore.fsio import current_umask, file_mode, link_new, new_run_dir, write_new, write_replace


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


# --- the umask's mode, and writes interrupted half way ---------------------------------------------


@contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o027, 0o640)],
                         ids=["022", "077", "002", "027"])
def test_files_get_the_mode_of_the_umask_not_the_temp_files_0600(tmp_path, mask, want):
    with _umask(mask):
        assert current_umask() == mask and file_mode() == want
        new = write_new(tmp_path / "sub" / "new.json", b"{}")
        replaced = write_replace(tmp_path / "log.json", b"[]")
        replaced_again = write_replace(tmp_path / "log.json", b"[1]")
        called = write_new(tmp_path / "blob.bin", lambda f: f.write(b"streamed"))
        run = new_run_dir(tmp_path / "runs")
    assert {_mode(p) for p in (new, replaced, replaced_again, called)} == {want}
    assert replaced_again.read_bytes() == b"[1]" and called.read_bytes() == b"streamed"
    assert _mode(run) == 0o777 & ~mask and _mode(new.parent) == 0o777 & ~mask
    assert _leftovers(tmp_path) == []


def test_link_new_publishes_a_temp_file_with_the_umask_mode(tmp_path):
    tmp = tmp_path / ".video.mp4.abc.tmp"  # as write_video makes it: mkstemp, 0600
    tmp.write_bytes(b"frames")
    os.chmod(tmp, 0o600)
    with _umask(0o022):
        link_new(tmp, tmp_path / "video.mp4")
    assert _mode(tmp_path / "video.mp4") == 0o644 and (tmp_path / "video.mp4").read_bytes() == b"frames"


def test_umask_without_proc_is_read_and_restored(monkeypatch):
    real_open = open

    def no_proc(file, *a, **k):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(file)
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", no_proc)
    with _umask(0o027):
        assert current_umask() == 0o027 and file_mode() == 0o640
        assert os.umask(0o027) == 0o027  # left as it was


class _Killed(BaseException):
    """Stands for KeyboardInterrupt (SIGINT) arriving in the middle of a write."""


def _half_then_killed(f):
    f.write(b'{"half": ')
    f.flush()
    raise _Killed


def test_a_write_interrupted_half_way_leaves_no_file_and_no_temp(tmp_path):
    with pytest.raises(_Killed):
        write_new(tmp_path / "report.json", _half_then_killed)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_replace_leaves_the_old_file(tmp_path):
    p = write_replace(tmp_path / "checkpoint.pt", b"old complete checkpoint")
    with pytest.raises(_Killed):
        write_replace(p, _half_then_killed)
    assert p.read_bytes() == b"old complete checkpoint" and sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_a_reader_never_sees_a_partial_file(tmp_path, monkeypatch):
    """While the bytes are being written, the final name does not exist yet (only the hidden temp)."""
    seen = []
    target = tmp_path / "r.json"

    def writer(f):
        f.write(b"{}")
        seen.append((target.exists(), sorted(os.listdir(tmp_path))))

    write_new(target, writer)
    exists, names = seen[0]
    assert not exists and len(names) == 1 and names[0].startswith(".r.json.") and names[0].endswith(".tmp")
    assert target.read_bytes() == b"{}"


def test_write_replace_replaces_only_its_own_file(tmp_path):
    keep = tmp_path / "other"
    keep.write_bytes(b"x")
    p = write_replace(tmp_path / "a" / "train_log.json", b"[1]")
    write_replace(p, b"[1, 2]")
    assert p.read_bytes() == b"[1, 2]" and keep.read_bytes() == b"x"
    assert sorted(os.listdir(p.parent)) == ["train_log.json"]


def test_concurrent_writers_all_get_the_umask_mode(tmp_path):
    with _umask(0o022):
        errors = []

        def work(i):
            try:
                for j in range(20):
                    fsio.write_new(tmp_path / f"{i}-{j}", b"x")
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and {_mode(p) for p in tmp_path.iterdir()} == {0o644}


def test_fresh_path_is_a_free_stamped_name_and_creates_nothing(tmp_path):
    from wmcore.fsio import fresh_path

    p = fresh_path(tmp_path / "runs", "compare", ".png")
    assert re.fullmatch(r"compare-\d{8}-\d{6}\.png", p.name) and p.parent == tmp_path / "runs"
    assert not (tmp_path / "runs").exists()
    write_new(p, b"x")
    q = fresh_path(tmp_path / "runs", "compare", ".png")
    assert q != p and re.fullmatch(r"compare-\d{8}-\d{6}(-\d+)?\.png", q.name)


@pytest.mark.parametrize("name, want", [("pusht-lewm-recorded", "pusht-lewm-recorded"),
                                        ("analytic[delta=0.05]-random", "analytic_delta_0.05_-random"),
                                        ("lewm:/a b/c", "lewm__a_b_c")])
def test_safe_name_keeps_letters_digits_and_dash_underscore_dot(name, want):
    from wmcore.fsio import safe_name

    assert safe_name(name) == want


def test_read_json_and_its_errors(tmp_path):
    from wmcore.fsio import read_json

    (tmp_path / "ok.json").write_text('{"a": [1, NaN]}')
    assert read_json(tmp_path / "ok.json")["a"][0] == 1
    with pytest.raises(WMError, match=r"ok\.json: not valid JSON \(non-standard JSON constant NaN\); was the"):
        read_json(tmp_path / "ok.json", strict=True)
    (tmp_path / "cut.json").write_text('{"a": [1, ')
    with pytest.raises(WMError, match=r"cut\.json: not valid JSON .*; rewrite it"):
        read_json(tmp_path / "cut.json", hint="rewrite it")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(WMError, match=r"bin\.json: not a JSON file \(not UTF-8 text\)"):
        read_json(tmp_path / "bin.json")
    with pytest.raises(WMError, match=r"cannot read it"):
        read_json(tmp_path)  # a directory
