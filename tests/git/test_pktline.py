"""git's pkt-line framing as the filter reads it (theta_zarr.git.pktline), over a real pipe."""

from __future__ import annotations

import io
import os
import threading

import pytest

from theta_zarr.git.filter_process import READ_BLOCK
from theta_zarr.git.pktline import MAX_DATA, ContentStream, PktReader


def packets(data: bytes, size: int = MAX_DATA) -> bytes:
    """``data`` framed as git frames file content: data packets, then a flush packet."""
    out = bytearray()
    for at in range(0, len(data), size):
        part = data[at:at + size]
        out += b"%04x" % (len(part) + 4) + part
    return bytes(out + b"0000")


class CountingPipe(io.FileIO):
    """The read end of a pipe, counting the reads made of it."""

    reads = 0

    def readinto(self, b):
        CountingPipe.reads += 1
        return super().readinto(b)


def content_of(framed: bytes) -> tuple[ContentStream, threading.Thread]:
    r, w = os.pipe()

    def feed():
        with open(w, "wb") as f:
            f.write(framed)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    CountingPipe.reads = 0
    return PktReader(CountingPipe(r, "rb")).content_stream(), writer


def test_a_buffered_clean_reads_small_pieces_from_few_pipe_reads():
    """The filter's clean reads git's content through ``io.BufferedReader`` (READ_BLOCK):
    reads of 1 KiB (10^5 small tensors) made a read of the pipe each.  Every byte arrives
    in order, large reads included, and the content's count says how many were read."""
    data = os.urandom(5 * MAX_DATA + 1234)
    content, writer = content_of(packets(data))
    buffered = io.BufferedReader(content, READ_BLOCK)
    got = bytearray()
    for n in [1024] * 200 + [3, 1 << 20, 7, 100_000]:
        buf = bytearray(n)
        k = buffered.readinto(buf)
        got += buf[:k]
    while chunk := buffered.read(1 << 20):
        got += chunk
    writer.join(10)
    assert bytes(got) == data and content.count == len(data)
    assert content.readinto(bytearray(10)) == 0 and not content.closed
    # 200 reads of 1 KiB within the first packets took a few pipe reads, not 200
    assert CountingPipe.reads < 60


def test_a_pipe_closed_mid_packet_is_an_eof_error():
    framed = packets(os.urandom(5000))[:3000]  # git died part way through
    content, writer = content_of(framed)
    with pytest.raises(EOFError):
        while content.readinto(bytearray(100)):
            pass
    writer.join(10)
