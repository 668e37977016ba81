"""git's pkt-line framing: 4 hex digits of length (header included), then data.

``0000`` is a flush packet.  Data packets carry at most 65516 bytes.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from ..streams import fill

MAX_DATA = 65516
FLUSH = b"0000"


class ProtocolError(RuntimeError):
    """git spoke something other than the pkt-line filter protocol (a bad length header,
    an unexpected handshake); the filter reports it in one line and ends."""


class PktReader:
    """Reads pkt-lines (gitprotocol-common(5)) from git's end of the filter pipe.

    ``stream`` may be unbuffered; short reads are retried.  Raises EOFError when git
    closes the pipe mid-packet (or before one), ProtocolError for a header that is not
    4 hex digits or a length outside 4 to ``MAX_DATA + 4``.
    """

    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def _exact(self, n: int) -> bytes:
        # the stream may be unbuffered (a raw pipe): reads can come back short
        data = self.stream.read(n)
        while data is not None and len(data) < n:
            more = self.stream.read(n - len(data))
            if not more:
                break
            data += more
        if data is None or len(data) != n:
            raise EOFError("git closed the filter pipe")
        return data

    def payload_size(self) -> int | None:
        """Read one packet header: the payload size, or None for a flush packet."""
        head = self._exact(4)
        try:
            size = int(head, 16)
        except ValueError:
            raise ProtocolError(f"bad pkt-line header {head!r}") from None
        if size == 0:
            return None
        if size < 4 or size > MAX_DATA + 4:
            raise ProtocolError(f"bad pkt-line length {size}")
        return size - 4

    def read_packet(self) -> bytes | None:
        """One packet's payload, or None for a flush packet."""
        size = self.payload_size()
        return None if size is None else self._exact(size)

    def read_text_list(self) -> list[str]:
        """Text packets up to the next flush.  A path git sends is bytes, not always UTF-8:
        those bytes come back as ``os.fsdecode`` gives them (surrogate escapes), so the
        path opens the same file and goes back to git unchanged."""
        out = []
        while (pkt := self.read_packet()) is not None:
            out.append(pkt.decode("utf-8", "surrogateescape").rstrip("\n"))
        return out

    def content_stream(self) -> ContentStream:
        """The data packets up to the next flush, as a readable stream (a file's content)."""
        return ContentStream(self)


class ContentStream(io.RawIOBase):
    """File content sent as data packets up to a flush, read as a raw stream: a read is
    one read of the pipe, straight into the caller's buffer.  A reader of small pieces
    (a file of 10^5 tensors of 1 KiB) wraps it in ``io.BufferedReader``, so that each
    piece is not a system call giving the GIL away to the threads hashing chunks.
    ``close`` leaves git's pipe open."""

    def __init__(self, reader: PktReader):
        super().__init__()
        self.reader = reader
        self.stream = reader.stream
        self.remaining = 0
        self.done = False
        self.count = 0  # content bytes read so far

    def _next_packet(self) -> bool:
        size = self.reader.payload_size()
        if size is None:
            self.done = True
            return False
        self.remaining = size
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to close: the pipe is git's, and the protocol goes on after this file."""

    def readinto(self, view) -> int:
        view = memoryview(view).cast("B")
        while self.remaining == 0:
            if self.done or not self._next_packet():
                return 0
        n = min(len(view), self.remaining)
        got = self.stream.readinto(view[:n])
        if not got:
            raise EOFError("git closed the filter pipe")
        self.remaining -= got
        self.count += got
        return got

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while (b := self.read(1 << 20)):
                parts.append(b)
            return b"".join(parts)
        buf = bytearray(n)
        got = fill(self.readinto, memoryview(buf))
        return bytes(buf[:got])

    def drain(self) -> int:
        """Skip whatever content is left, into one reused buffer; returns the bytes skipped."""
        buf = memoryview(bytearray(MAX_DATA))
        skipped = 0
        while (n := self.readinto(buf)):
            skipped += n
        return skipped


class PktWriter:
    """Writes pkt-lines (gitprotocol-common(5)) to git's end of the filter pipe; nothing
    reaches git before ``flush``, unless ``stream`` is unbuffered."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def packet(self, data: bytes | memoryview) -> None:
        """One data packet: its length header, then ``data`` (at most ``MAX_DATA`` bytes:
        the caller splits, as ContentWriter does; not checked here)."""
        self.stream.write(b"%04x" % (len(data) + 4))
        self.stream.write(data)

    def text(self, *lines: str) -> None:
        """One text packet per line: UTF-8, ending in a newline (``status=success``)."""
        for line in lines:
            self.packet(line.encode("utf-8", "surrogateescape") + b"\n")

    def flush(self) -> None:
        """A flush packet (``0000``), then the stream flushed, so git sees it all."""
        self.stream.write(FLUSH)
        self.stream.flush()

    def content(self) -> ContentWriter:
        """A file object that frames what is written into data packets; its ``close``
        sends what is left (the flush packet ending the content is the caller's)."""
        return ContentWriter(self)


class ContentWriter:
    """A write-only file object that frames what is written as data packets."""

    def __init__(self, writer: PktWriter):
        self.writer = writer
        self.buf = bytearray()
        self.written = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self.buf:
            take = min(n, MAX_DATA - len(self.buf))
            self.buf += view[:take]
            view = view[take:]
            if len(self.buf) == MAX_DATA:
                self.writer.packet(self.buf)
                self.buf = bytearray()
        while len(view) >= MAX_DATA:
            self.writer.packet(view[:MAX_DATA])
            view = view[MAX_DATA:]
        if len(view):
            self.buf += view
        self.written += n
        return n

    def close(self) -> None:
        if self.buf:
            self.writer.packet(self.buf)
            self.buf = bytearray()

    def flush(self) -> None:
        pass
