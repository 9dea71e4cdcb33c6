"""Atomic file replacement: the same cases over every implementation.

``hashkd.io`` is the one helper of hashkd and the service (a file-object form and a form that
hands a writer the temporary path); ``indexes.storage`` keeps its own copy because ``indexes``
must import without hashkd. Each case runs over all three writers.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import hashkd.io
import indexes.storage


class WriterFailed(Exception):
    """Raised by a test writer halfway through its data."""


def _via_hashkd_open(path: Path, data: bytes, fail: bool = False) -> None:
    with hashkd.io.atomic_open(path) as f:
        f.write(data[: len(data) // 2])
        if fail:
            raise WriterFailed
        f.write(data[len(data) // 2 :])


def _via_hashkd_path(path: Path, data: bytes, fail: bool = False) -> None:
    def writer(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a library writing to the name it is given
            f.write(data[: len(data) // 2])
            if fail:
                raise WriterFailed
            f.write(data[len(data) // 2 :])

    hashkd.io.atomic_write(path, writer)


def _via_indexes_open(path: Path, data: bytes, fail: bool = False) -> None:
    with indexes.storage.atomic_open(path) as f:
        f.write(data[: len(data) // 2])
        if fail:
            raise WriterFailed
        f.write(data[len(data) // 2 :])


WRITERS: dict[str, Callable[..., None]] = {
    "hashkd.atomic_open": _via_hashkd_open,
    "hashkd.atomic_write": _via_hashkd_path,
    "indexes.atomic_open": _via_indexes_open,
}


@pytest.fixture(params=list(WRITERS))
def write(request) -> Callable[..., None]:
    return WRITERS[request.param]


def test_new_file_has_the_content(write, tmp_path):
    write(tmp_path / "a.bin", b"hello world")
    assert (tmp_path / "a.bin").read_bytes() == b"hello world"
    assert os.listdir(tmp_path) == ["a.bin"]  # no temporary file left


def test_existing_file_is_replaced(write, tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old content, longer than the new one")
    write(tmp_path / "a.bin", b"new")
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["a.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o027])
def test_permissions_equal_a_plain_write_under_the_umask(write, tmp_path, umask):
    old = os.umask(umask)
    try:
        write(tmp_path / "atomic.bin", b"x")
        with open(tmp_path / "plain.bin", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "atomic.bin").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)
    assert mode == 0o666 & ~umask  # and not mkstemp's 0o600


@pytest.mark.parametrize("exc", [WriterFailed, KeyboardInterrupt])
def test_a_failing_writer_leaves_the_target_unchanged_and_no_temporary_file(
    write, tmp_path, exc, monkeypatch
):
    target = tmp_path / "a.bin"
    target.write_bytes(b"the old version")
    if exc is KeyboardInterrupt:  # a BaseException (Ctrl-C) inside the write itself

        def interrupted_fsync(fd: int) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "fsync", interrupted_fsync)
        with pytest.raises(KeyboardInterrupt):
            write(target, b"the new version")
    else:
        with pytest.raises(WriterFailed):
            write(target, b"the new version", fail=True)
    assert target.read_bytes() == b"the old version"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_a_failing_writer_creates_no_target(write, tmp_path):
    with pytest.raises(WriterFailed):
        write(tmp_path / "a.bin", b"data", fail=True)
    assert os.listdir(tmp_path) == []


def test_file_is_fsynced_before_the_rename_and_the_directory_after(write, tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    real_fsync = os.fsync
    calls: list[tuple[str, bytes]] = []  # (what was synced, the target's content at that moment)

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            kind = "dir" if st.st_ino == tmp_path.stat().st_ino else "other dir"
        else:
            kind = "file"
        calls.append((kind, target.read_bytes()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write(target, b"new")
    kinds = [k for k, _ in calls]
    assert "file" in kinds and "dir" in kinds
    assert all(content == b"old" for k, content in calls if k == "file")  # before the rename
    assert calls[-1] == ("dir", b"new")  # the directory entry is synced after the rename


def test_concurrent_writers_leave_one_complete_version(write, tmp_path):
    target = tmp_path / "a.bin"
    versions = [bytes([i]) * 200_000 for i in range(6)]
    target.write_bytes(versions[0])
    seen: list[bytes] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for _ in range(5):
                write(target, versions[i])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def reader() -> None:
        while not done.is_set():
            seen.append(target.read_bytes())

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(1, 6)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert not errors
    assert target.read_bytes() in versions[1:]
    assert seen and all(s in versions for s in seen)  # a reader never sees a torn file
    assert os.listdir(tmp_path) == ["a.bin"]


# --------------------------------------------------------------------------- hashkd.io's other forms


def test_text_json_and_bytes_round_trip(tmp_path):
    hashkd.io.atomic_write_text(tmp_path / "t.txt", "grüße\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "grüße\n"
    hashkd.io.atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    obj = {"b": [1, 2.5], "a": None}
    hashkd.io.atomic_write_json(tmp_path / "o.json", obj)
    text = (tmp_path / "o.json").read_text()
    assert json.loads(text) == obj and text.index('"a"') < text.index('"b"')  # sorted keys
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "o.json", "t.txt"]


def test_writers_that_need_the_suffix_or_a_file_object(tmp_path):
    codes = np.arange(12, dtype=np.uint8).reshape(3, 4)
    # np.save appends ".npy" to a name without it: the temporary name keeps the target's suffix
    hashkd.io.atomic_write(tmp_path / "codes.npy", lambda tmp: np.save(tmp, codes))
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), codes)
    state = {"w": torch.arange(5.0)}
    with hashkd.io.atomic_open(tmp_path / "state.pt") as f:
        torch.save(state, f)
    assert torch.equal(torch.load(tmp_path / "state.pt", weights_only=True)["w"], state["w"])
    assert sorted(os.listdir(tmp_path)) == ["codes.npy", "state.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_writer_that_makes_its_own_private_file_still_gets_the_umask_permissions(tmp_path, umask):
    from safetensors.torch import load_file, save_file

    def private_writer(tmp: str) -> None:  # as a library writing via its own temp file would
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"private")
        os.close(fd)

    old = os.umask(umask)
    try:
        hashkd.io.atomic_write(tmp_path / "a.bin", private_writer)
        state = {"w": torch.arange(4.0)}
        hashkd.io.atomic_write(tmp_path / "m.safetensors", lambda tmp: save_file(state, tmp))
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"private"
    assert torch.equal(load_file(tmp_path / "m.safetensors")["w"], state["w"])
    for name in ("a.bin", "m.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "m.safetensors"]


def test_atomic_move_publishes_a_staged_file(tmp_path, monkeypatch):
    staging = tmp_path / ".stage"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"graph")
    (tmp_path / "model.onnx").write_bytes(b"older graph")
    synced: list[bool] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    hashkd.io.atomic_move(staging / "model.onnx", tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").read_bytes() == b"graph"
    assert os.listdir(staging) == []
    assert synced == [False, True]  # the file, then the directory


@pytest.mark.parametrize("opener", [hashkd.io.atomic_open, indexes.storage.atomic_open])
def test_a_read_mode_is_refused(opener, tmp_path):
    with pytest.raises(ValueError, match="'rb'"), opener(tmp_path / "a", "rb"):
        pass
    assert os.listdir(tmp_path) == []


def test_index_files_are_written_through_the_indexes_copy(tmp_path, monkeypatch):
    """``write_index_file`` fails like the helper: a failing fsync leaves the old file alone."""
    path = tmp_path / "x.idx"
    header = {"kind": "flat", "spec": "flat", "bits": 8}
    indexes.storage.write_index_file(path, header, {"ids": b"old"})
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        indexes.storage.write_index_file(path, header, {"ids": b"new data"})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.idx"]
