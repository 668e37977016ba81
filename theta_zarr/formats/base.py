"""What a checkpoint format plug-in implements, and the input it is given.

A plug-in turns a checkpoint into tensors for a ChunkWriter (clean) and a
manifest back into the same file (smudge).  Anything it needs to rebuild the
file that is not a tensor goes into the manifest's ``format`` object, as JSON.
Plug-ins are found through the entry-point group ``theta_zarr.formats``.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..chunkreader import ChunkReader
from ..chunkwriter import ChunkWriter
from ..manifest import Manifest, ParamEntry
from ..streams import fill, named

HEAD_BYTES = 64 * 1024


class FormatError(ValueError):
    """A checkpoint that cannot be read or rebuilt; one line naming the file."""


class NotWeights(FormatError):
    """A file no plug-in may read as weights: no format claims it, or its plug-in
    refuses it unread (a pickle that needs more than ``weights_only=True``).

    Unlike a broken checkpoint, such a file can still be kept as opaque bytes.
    """


class Source:
    """A checkpoint being cleaned: a forward-only stream, its first bytes peeked.

    Formats that can stream (safetensors, .npy) read it in order; formats that
    need random access (zip-based .pt and .npz) call ``as_file()``, which gives
    the original path when there is one, or spools the stream to a temporary
    file next to the cache.
    """

    def __init__(self, stream: BinaryIO, name: str = "checkpoint", path: str | None = None,
                 tmp_dir: str | None = None):
        self.stream = stream
        self.name = name
        self.path = path
        self.tmp_dir = tmp_dir
        self.head = _read_up_to(stream, HEAD_BYTES)
        self._pos = 0  # position inside head
        self._streamed = False  # read past head: the bytes before the stream's are gone
        self._spool: str | None = None

    def readinto(self, view: memoryview) -> int:
        view = memoryview(view).cast("B")
        if self._pos < len(self.head):
            n = min(len(view), len(self.head) - self._pos)
            view[:n] = self.head[self._pos:self._pos + n]
            self._pos += n
            return n
        self._streamed = True
        return self.stream.readinto(view) or 0

    def read_exact(self, n: int, what: str) -> bytes:
        buf = bytearray(n)
        got = fill(self.readinto, memoryview(buf))
        if got < n:
            raise FormatError(f"{self.name}: truncated {what} (expected {n} bytes, got {got})")
        return bytes(buf)

    def at_end(self) -> bool:
        probe = bytearray(1)
        return self.readinto(memoryview(probe)) == 0

    @contextlib.contextmanager
    def as_file(self) -> Iterator[str]:
        """A real file path with the whole checkpoint (the original, or a spooled copy).

        A spooled copy is kept until ``close()``, so a second reader (the opaque
        fallback after a plug-in refused the file) reads the same bytes again; so does one
        after a plug-in that read no further than ``head`` (a ``.npy`` header naming a
        dtype that is not weights): the copy starts at the first byte.
        """
        if self._spool is not None:
            yield self._spool
            return
        if not self._streamed:
            self._pos = 0
        if self.path is not None and self._pos == 0:
            yield self.path
            return
        fd, tmp = tempfile.mkstemp(prefix=".tmp-spool-", dir=self.tmp_dir)
        self._spool = tmp
        # an error names the copy by what it holds and where: its random name says nothing
        copy = f"a copy of {self.name} in {os.path.dirname(tmp)}"
        with named(copy, tmp), os.fdopen(fd, "wb") as f:
            f.write(self.head[self._pos:])
            self._pos = len(self.head)
            shutil.copyfileobj(self.stream, f, 1 << 20)
        yield tmp

    def close(self) -> None:
        """Remove the spooled copy, if any."""
        if self._spool is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._spool)
            self._spool = None


def _read_up_to(stream: BinaryIO, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        b = stream.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


@dataclass(frozen=True)
class TensorView:
    """Where a tensor lives: a parameter (its storage), and the tensor's place in it.

    ``shape is None`` means the tensor is the parameter itself.  Otherwise the
    parameter holds the whole storage (1-D; ``uint8`` bytes when ``dtype`` names an
    element type theta-zarr has no table entry for) and the tensor is
    ``storage[offset]`` with ``shape`` and ``stride``, counted in elements of
    ``dtype`` (a torch dtype name).
    """

    param: str
    dtype: str | None = None
    offset: int = 0
    shape: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None

    @classmethod
    def transpose_of(cls, param: str, stored: tuple[int, ...]) -> TensorView:
        """The whole parameter ``param`` of shape ``stored``, read as its transpose: the
        reversed shape with Fortran strides (a Fortran-ordered array stored as its
        C-ordered transpose)."""
        shape = tuple(reversed(stored))
        return cls(param, None, 0, shape, tuple(math.prod(shape[:i]) for i in range(len(shape))))

    def is_transpose_of(self, stored: tuple[int, ...]) -> bool:
        """True if this view reads a whole parameter of shape ``stored`` as its transpose."""
        return len(stored) >= 2 and self == TensorView.transpose_of(self.param, stored)


class Format(ABC):
    """A checkpoint format plug-in."""

    #: the manifest's format.name
    name: str
    #: file extensions, for messages and for choosing among formats that all claim the bytes
    extensions: tuple[str, ...] = ()

    @abstractmethod
    def sniff(self, head: bytes) -> bool:
        """True if these first bytes are this format (detection is by content)."""

    @abstractmethod
    def clean(self, source: Source, writer: ChunkWriter) -> dict[str, Any]:
        """Feed every tensor to ``writer``; return the manifest's ``format`` object."""

    @abstractmethod
    def smudge(self, manifest: Manifest, reader: ChunkReader, out: BinaryIO,
               tmp_dir: str | None = None) -> None:
        """Write the checkpoint ``manifest`` describes to ``out`` (forward only)."""

    def select(self, fmt: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """The ``format`` object of a file holding only ``names`` (a partial materialize)."""
        return fmt

    def tensors(self, fmt: dict[str, Any], params: dict[str, Any]) -> dict[str, TensorView]:
        """Every tensor a reader of the file gets, by name (``load_state_dict``'s keys).

        By default each parameter is one tensor; a plug-in whose files hold views
        or aliases (torch: tied weights, slices of one storage) says where each is.
        """
        return {n: TensorView(n) for n in params}

    def describe(self, fmt: dict[str, Any]) -> dict[str, Any]:
        """The file's non-tensor content as flat ``{key: JSON value}`` pairs, for people.

        Diffs and textconv compare these, so a change git sees that touches no tensor
        (a training step, metadata) is shown.  The default flattens the ``format``
        object's nested objects into dotted keys; a plug-in whose ``format`` is not
        readable that way overrides this.
        """
        return flatten_json({k: v for k, v in fmt.items() if k != "name"})

    def non_tensors(self, fmt: dict[str, Any]) -> list[str]:
        """Parameters that hold non-tensor content as bytes, not a tensor (a distributed
        checkpoint's pickled step and optimizer settings).  Diffs list a change to one
        as non-tensor content, by its size and digest, instead of comparing numbers.
        None by default."""
        return []

    def layout(self, manifest: Manifest) -> list[bytes | ParamEntry] | None:
        """The rebuilt file as segments in file order, or None (the default).

        A segment is literal bytes (headers) or a parameter, whose raw bytes (its
        chunks back to back) sit there.  A format that gives a layout can be written
        straight from the cache, each chunk copied to its offset (``filewriter``);
        one that does not (zip files) is written through ``smudge``.
        """
        return None


def flatten_json(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2]}`` -> ``{"a.b": 1, "c": [2]}``: objects become dotted keys.

    Lists, scalars and empty objects are leaves; the top level of a non-object is ``""``.
    """
    if not isinstance(obj, dict) or (not obj and prefix):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten_json(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def write_layout(segments: list[bytes | ParamEntry], reader: ChunkReader, out: BinaryIO) -> None:
    """Stream a ``layout`` to ``out`` in order, reading each run of parameters ahead."""
    run: list[ParamEntry] = []
    for seg in [*segments, b""]:
        if isinstance(seg, ParamEntry):
            run.append(seg)
            continue
        for chunk in reader.iter_entries(run):
            out.write(chunk)
        run = []
        if seg:
            out.write(seg)
