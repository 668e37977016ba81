"""The direct writer's file allocation: blocks up front, a sparse file where the file
system cannot, and a full disk reported before any chunk is written."""

from __future__ import annotations

import ctypes
import errno
import os

import numpy as np
import pytest
from helpers import clean_manifest, settings

from theta_zarr import checkpoint, filewriter, streams


def _failing_fallocate(code: int):
    calls = []

    def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
        calls.append((mode, offset, length))
        ctypes.set_errno(code)
        return -1

    return fallocate, calls


@pytest.mark.skipif(streams._FALLOCATE is None, reason="no fallocate(2) on this system")
def test_allocate_gives_the_file_its_blocks(tmp_path):
    with open(tmp_path / "f", "wb") as f:
        filewriter.allocate(f.fileno(), 3 << 20)
        st = os.fstat(f.fileno())
    assert st.st_size == 3 << 20
    assert st.st_blocks * 512 >= 3 << 20  # allocated, not a sparse hole


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.ENOSYS])
def test_a_file_system_without_fallocate_gets_a_sparse_file(code, tmp_path, monkeypatch):
    fake, calls = _failing_fallocate(code)
    monkeypatch.setattr(streams, "_FALLOCATE", fake)
    with open(tmp_path / "f", "wb") as f:
        filewriter.allocate(f.fileno(), 5000)
        assert os.fstat(f.fileno()).st_size == 5000
    assert calls == [(0, 0, 5000)]


def test_a_full_disk_fails_before_any_chunk_is_written(tmp_path, monkeypatch):
    data = b"not a checkpoint\n" + np.random.default_rng(0).bytes(20_000)
    m = clean_manifest(data, tmp_path, name="rng_state.pth")
    fake, calls = _failing_fallocate(errno.ENOSPC)
    monkeypatch.setattr(streams, "_FALLOCATE", fake)
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with pytest.raises(OSError) as e:
            filewriter.write_checkpoint(m, fd, checkpoint.open_cache(settings(tmp_path)),
                                        workers=2, name="rng_state.pth")
    finally:
        os.close(fd)
    assert e.value.errno == errno.ENOSPC
    assert calls == [(0, 0, len(data))]
    assert path.stat().st_size == 0
    # the line a user sees names the file and says disk full (it was a bare errno)
    from theta_zarr.errors import one_line

    assert one_line(e.value) == "cannot write rng_state.pth: disk full"
