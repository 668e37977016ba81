"""PyTorch ``torch.save`` files (.pt/.pth/.bin/.ckpt): the zip format and pre-1.6 pickles.

Loaded only with ``torch.load(weights_only=True)``: a pickle that would run code is
refused (and ``checkpoint.clean`` then keeps the file as opaque bytes), and zip files
are memory-mapped so no tensor is read into memory whole.  Each storage's bytes are then
read from the file with ``pread`` into the writer's chunk buffers, not hashed from the
map: a file another process rewrites meanwhile (a trainer's ``torch.save`` to the same
path) must neither end the process with SIGBUS (its map cut short by the truncation)
nor store an object whose bytes changed between its hash and its write.

The manifest's ``format.tree`` keeps what ``torch.load`` returns: the nesting of the
saved object, its non-tensor leaves as tagged JSON, and for each tensor the storage it
lives in (a parameter), where in that storage it is (offset, shape, stride), and the
device the storage was saved from.  The rebuild is tensor-identical, not
byte-identical: ``torch.save`` writes the zip again (with a fresh serialization id).
"""

from __future__ import annotations

import base64
import collections
import json
import math
import mmap
import os
import pickle
import re
import struct
import threading
import zipfile
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import chunking
from ..chunkreader import ChunkReader
from ..chunkwriter import ChunkWriter, TruncatedInput
from ..dtypes import DTypeError, by_name, from_torch
from ..manifest import MAX_NAME_LEN, Manifest, ManifestError, check_name
from ..streams import ReadInto, allocate, named, scratch_file, scratch_name
from .base import Format, FormatError, NotWeights, Source, TensorView, flatten_json
from .zipinfo import first_member

if TYPE_CHECKING:
    import torch

#: the magic number that starts a pre-1.6 (non-zip) torch.save pickle
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


class TorchFormat(Format):
    """A ``torch.save`` file: the zip format (``<folder>/data.pkl`` plus one record per
    storage) or a pre-1.6 pickle (``LEGACY_MAGIC``), read with
    ``torch.load(weights_only=True)`` only (PyTorch's serialization semantics note).

    One parameter per storage; ``format.tree`` keeps the nesting, the non-tensor leaves
    and each tensor's view of its storage (module doc).  The rebuild is tensor-identical,
    not byte-identical.  Clean raises NotWeights for a pickle ``weights_only`` refuses
    (``checkpoint.clean`` then keeps it as opaque bytes) and FormatError for a file
    torch cannot read.
    """

    name = "torch"
    extensions = (".pt", ".pth", ".bin", ".ckpt")

    def sniff(self, head: bytes) -> bool:
        if head.startswith(LEGACY_MAGIC):
            return True
        member = first_member(head)
        return member is not None and member.endswith("data.pkl")

    def clean(self, source: Source, writer: ChunkWriter) -> dict[str, Any]:
        legacy = source.head.startswith(LEGACY_MAGIC)
        locations: dict[int, str] = {}
        with source.as_file() as path:
            if legacy:  # read into memory whole by torch.load: no map to read around
                obj = _load(path, source.name, legacy, locations)
                encoder = _TreeEncoder(writer, source.name, locations)
                tree = encoder.encode(obj, ())
                encoder.store()
            else:
                with open(path, "rb", buffering=0) as f:
                    before = os.fstat(f.fileno())
                    offsets = _data_offsets(f)  # read before torch maps the file
                    try:
                        obj = _load(path, source.name, legacy, locations)
                    except FormatError:
                        if _changed(f.fileno(), before):  # torn by a writer, not broken
                            raise FormatError(f"{source.name}: {CHANGED}") from None
                        if _archive_after_start(f):
                            raise NotWeights(f"{source.name}: {CONCATENATED}") from None
                        raise
                    encoder = _TreeEncoder(writer, source.name, locations)
                    tree = encoder.encode(obj, ())
                    base = _map_base(offsets, encoder.spans())
                    if base is None and _changed(f.fileno(), before):
                        raise FormatError(f"{source.name}: {CHANGED}")
                    encoder.read_from(f.fileno(), base)
                    encoder.store()
        fmt: dict[str, Any] = {"name": self.name, "tree": tree}
        if legacy:
            fmt["serialization"] = "legacy"
        return fmt

    def smudge(self, manifest: Manifest, reader: ChunkReader, out: BinaryIO,
               tmp_dir: str | None = None) -> None:
        # Storages are laid out in a private memory-mapped spool so torch.save can
        # stream them out, straight into ``out``, without the whole checkpoint in RAM:
        # the scratch space needed is the tensors' bytes, once.
        names = list(manifest.params)
        offsets, total = {}, 0
        for n in names:
            offsets[n] = total
            total += manifest.params[n].nbytes
            total += -total % 64
        legacy = manifest.format.get("serialization") == "legacy"
        sink = _KeepsWriteErrors(out)
        with scratch_file(tmp_dir) as spool:
            with named(scratch_name(tmp_dir)):  # a full disk there says where
                # the spool's blocks up front: a store through the map into a hole the
                # full disk cannot fill kills the process with SIGBUS
                allocate(spool.fileno(), max(total, 1))
                with mmap.mmap(spool.fileno(), max(total, 1)) as mm:
                    failed = _save_from_map(mm, manifest, offsets, reader, sink, legacy)
                if failed is not None and failed is not sink.error:
                    raise failed  # once the map is closed
        if failed is not None:  # out's own (a full disk where the file goes): its name
            raise failed

    def select(self, fmt: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """A flat state dict of every tensor living in the chosen parameters (their tied
        aliases and views included, as views, with their saved devices)."""
        keep = set(names)
        leaves = {}
        for key, leaf in _keyed_leaves(fmt.get("tree")):
            if leaf.get("__tensor__") in keep and key not in leaves:
                leaves[key] = {k: v for k, v in leaf.items() if k not in ("parameter",
                                                                          "requires_grad")}
        covered = {leaf["__tensor__"] for leaf in leaves.values()}
        for n in names:  # a manifest whose tree does not name a parameter (hand-made)
            if n not in covered:
                leaves.setdefault(n, {"__tensor__": n})
        return {"name": self.name, "tree": {"__odict__": [[k, v] for k, v in leaves.items()]}}

    def tensors(self, fmt: dict[str, Any], params: dict[str, Any]) -> dict[str, TensorView]:
        """Every tensor ``torch.load`` returns, by dotted key path (tied aliases included).

        Raises FormatError when two different tensors have one dotted key path (``"a.b"``
        beside ``{"a": {"b": ...}}``, ``0`` beside ``"0"``): a flat dict cannot hold both,
        and keeping one would drop the other without a word.
        """
        out: dict[str, TensorView] = {}
        for key, leaf in _keyed_leaves(fmt.get("tree")):
            name = leaf.get("__tensor__")
            if not isinstance(name, str) or name not in params:
                # as the checkout refuses it: the tensor was silently left out
                raise ManifestError(f"torch tree names unknown tensor {str(name)[:80]!r}")
            view = _view_of_leaf(leaf)
            seen = out.setdefault(key, view)
            if seen != view:
                raise FormatError(f"two tensors have the key {key[:80]!r} (a dotted key "
                                  "beside a nested one, or 0 beside '0'), which flat names "
                                  "cannot tell apart; read the file with torch.load")
        return out

    def describe(self, fmt: dict[str, Any]) -> dict[str, Any]:
        """Non-tensor leaves of the saved object by key path (``step``,
        ``scheduler.last_epoch``); a tensor leaf only when it is not plainly the parameter
        of its own path (a tied alias, a storage detail)."""
        out: dict[str, Any] = {}
        _describe_tree(fmt.get("tree"), (), out)
        out.update(flatten_json({k: v for k, v in fmt.items() if k not in ("name", "tree")}))
        return out


def view_tensor(base: torch.Tensor, view: TensorView) -> torch.Tensor:
    """The tensor ``view`` describes, sharing ``base``'s storage (no copy)."""
    import torch

    if view.shape is None:
        return base
    dtype = getattr(torch, view.dtype) if view.dtype else base.dtype
    if not isinstance(dtype, torch.dtype):
        raise ManifestError(f"torch tree: unknown dtype {str(view.dtype)[:40]!r}")
    storage = base.untyped_storage()
    need = _extent(view.offset, view.shape, view.stride) * dtype.itemsize
    if need > storage.nbytes():
        raise ManifestError(f"torch tree: a view of {view.param!r} reaches past its storage")
    if math.prod(view.shape) >= 2**63:  # torch counts elements in int64
        raise ManifestError(f"torch tree: a view of {view.param!r} has more elements than "
                            "a tensor can")
    return torch.empty(0, dtype=dtype).set_(storage, view.offset, view.shape, view.stride)


def _extent(offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Elements of storage a strided view reaches (0 for an empty view)."""
    if any(s == 0 for s in shape):
        return 0
    return offset + 1 + sum((s - 1) * st for s, st in zip(shape, stride, strict=True))


def _view_of_leaf(leaf: dict[str, Any]) -> TensorView:
    v = leaf.get("view")
    if v is None:
        return TensorView(leaf["__tensor__"], leaf.get("dtype"))
    try:
        offset, shape, stride = int(v[0]), tuple(int(s) for s in v[1]), \
            tuple(int(s) for s in v[2])
    except (TypeError, ValueError, IndexError):
        raise ManifestError("torch tree: bad view") from None
    if len(shape) != len(stride) or offset < 0 or min(shape + stride, default=0) < 0:
        raise ManifestError("torch tree: bad view")
    return TensorView(leaf["__tensor__"], leaf.get("dtype"), offset, shape, stride)


def _leaves(node: Any, path: tuple):
    """(path, leaf) for every tensor leaf of a tree, in order."""
    if not isinstance(node, dict):
        return
    if "__tensor__" in node:
        yield path, node
        return
    with_attrs = _split_attrs(node)
    if with_attrs:
        node = with_attrs[0]
    if len(node) != 1:
        return
    (tag, value), = node.items()
    if tag in ("__dict__", "__odict__") and isinstance(value, list):
        for pair in value:
            if isinstance(pair, list) and len(pair) == 2:
                key = pair[0] if not isinstance(pair[0], dict) else _plain(pair[0])
                yield from _leaves(pair[1], (*path, key))
    elif tag in ("__list__", "__tuple__") and isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))


def _keyed_leaves(tree: Any):
    """(key, leaf) for every tensor leaf of a tree, in order; the key is the dotted key
    path ``torch.load``'s object reaches it by (``"tensor"`` for a bare tensor)."""
    for path, leaf in _leaves(tree, ()):
        yield ".".join(str(p) for p in path) or "tensor", leaf


def _split_attrs(node: dict) -> tuple[dict, Any] | None:
    """A state dict saved with attributes (``{"__odict__": pairs, "attrs": tree}``, see
    ``_TreeEncoder.encode``) as its plain ``{"__odict__": pairs}`` node and its attrs
    tree; None for any other node."""
    if len(node) == 2 and "attrs" in node and "__odict__" in node:
        return {"__odict__": node["__odict__"]}, node["attrs"]
    return None


def _plain(key: dict) -> Any:
    (_, value), = key.items() if len(key) == 1 else ((None, key),)
    return value


def _load(path: str, name: str, legacy: bool, locations: dict[int, str]) -> Any:
    """torch.load with weights_only=True, recording each storage's saved location."""
    import torch

    def remember(storage, location):
        if storage.nbytes():
            locations[storage.data_ptr()] = str(location)
        return storage

    try:
        return torch.load(path, map_location=remember, weights_only=True, mmap=not legacy)
    except pickle.UnpicklingError as e:
        raise NotWeights(f"{name}: refused to load: the pickle needs more than "
                           f"weights_only=True allows ({refusal(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = msg.split(". ", 1)[0]  # what failed; torch's advice after it was cut mid-word
        if not name.lower().endswith(TorchFormat.extensions):
            # only its first bytes look like torch.save's (DCP's .distcp files are records
            # of torch.save back to back): another format, kept as opaque bytes; a file
            # whose name says PyTorch (a truncated model.pt) is a broken checkpoint
            raise NotWeights(f"{name}: starts like a PyTorch file, but torch cannot read "
                             f"it ({msg[:200]})") from None
        raise FormatError(f"{name}: not a readable PyTorch file ({msg[:200]})") from None


#: what a clean says of a file that is several archives one after another
CONCATENATED = ("holds several zip archives one after another (a torch.distributed."
                "checkpoint .distcp file?), not one torch.save file")

#: what a clean says of a file that changed under it
CHANGED = ("the file changed while it was read (another process writing it?); try again "
           "once it is complete")


def _data_offsets(f: BinaryIO) -> dict[int, int]:
    """{file offset: size} of the zip's ``data/`` records stored uncompressed (the storages
    ``torch.load(mmap=True)`` maps); empty where the zip cannot be read."""
    offsets: dict[int, int] = {}
    try:
        with zipfile.ZipFile(f) as zf:
            for info in zf.infolist():
                if "/data/" not in info.filename or info.compress_type != zipfile.ZIP_STORED:
                    continue
                head = os.pread(f.fileno(), 30, info.header_offset)
                if len(head) < 30 or not head.startswith(b"PK\x03\x04"):
                    return {}
                name_len, extra_len = struct.unpack_from("<HH", head, 26)
                offsets[info.header_offset + 30 + name_len + extra_len] = info.file_size
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return {}
    return offsets


def _archive_after_start(f: BinaryIO) -> bool:
    """Whether the zip archive ``zipfile`` finds from the file's end starts after offset 0
    while the file starts with a zip member of its own: several archives written one after
    another, as torch.distributed.checkpoint writes a ``.distcp`` file (a ``torch.save``
    per item), which ``torch.load`` cannot read.  False where no archive can be read (a
    truncated or damaged file)."""
    try:
        with zipfile.ZipFile(f) as zf:
            starts = [info.header_offset for info in zf.infolist()]
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False
    return bool(starts) and min(starts) > 0 and os.pread(f.fileno(), 4, 0) == b"PK\x03\x04"


def _map_base(offsets: dict[int, int], spans: dict[int, int]) -> int | None:
    """The address ``torch.load(mmap=True)`` mapped the file at: each storage (``spans``:
    {data_ptr: nbytes}) is its ``data/`` record at ``base + the record's offset``
    (``offsets``, from ``_data_offsets``).  None where they do not line up."""
    if not spans or not offsets:
        return None
    base = min(spans) - min(offsets)
    if any(offsets.get(ptr - base, -1) < n for ptr, n in spans.items()):
        return None
    return base


def _changed(fd: int, before: os.stat_result) -> bool:
    st = os.fstat(fd)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != \
        (before.st_size, before.st_mtime_ns, before.st_ctime_ns)


def _pread_stream(fd: int, start: int, nbytes: int) -> ReadInto:
    """``read_into`` over bytes ``start`` to ``start + nbytes`` of the file ``fd``; a file
    cut short meanwhile reads short (the writer then says it is truncated)."""
    pos, end = start, start + nbytes

    def read_into(view: memoryview) -> int:
        nonlocal pos
        want = min(len(view), end - pos)
        if want <= 0:
            return 0
        got = os.preadv(fd, [view[:want]], pos)
        pos += got
        return got

    return read_into


def refusal(e: Exception) -> str:
    """What weights_only refused, in a phrase: torch's "Unsupported global: X" line."""
    text = str(e)
    m = re.search(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand[^\n]*|"
                  r"Trying to [^\n]*|Unsupported class [\w.]+)", text)
    if m:
        return m.group(1).strip()[:200]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if "nsupported" in ln or "not allowed" in ln:
            return ln[:200]
    return (lines[-1] if lines else "unsafe pickle")[:200]

def _describe_tree(node: Any, path: tuple[str, ...], out: dict[str, Any]) -> None:
    """Fill ``out`` with the describable leaves of a ``format.tree`` node at ``path``.

    Keys are the dotted key paths ``tensors`` uses (so a plain state dict's tensors,
    whose parameter is named by their own path, are left out); a state dict's
    attributes (``_metadata``) are listed under ``<path>.(attrs)``.
    """
    key = ".".join(path) or "(top level)"
    if not isinstance(node, dict):
        out[key] = node
        return
    if "__tensor__" in node:
        extra = {k: v for k, v in node.items() if k != "__tensor__"}
        if node["__tensor__"] != (".".join(path) or "tensor") or extra:
            out[key] = {"tensor": node["__tensor__"], **extra}
        return
    with_attrs = _split_attrs(node)
    if with_attrs:
        _describe_tree(with_attrs[0], path, out)
        _describe_tree(with_attrs[1], (*path, "(attrs)"), out)
        return
    (tag, value), = node.items() if len(node) == 1 else ((None, None),)
    if tag in ("__dict__", "__odict__") and isinstance(value, list) and value:
        for pair in value:
            if isinstance(pair, list) and len(pair) == 2:
                k = _plain(pair[0]) if isinstance(pair[0], dict) else pair[0]
                _describe_tree(pair[1], (*path, str(k)), out)
            else:  # not a [key, value] pair: shown as it is (a hand-edited tree)
                out[".".join((*path, json.dumps(pair, sort_keys=True)))] = None
    elif tag in ("__list__", "__tuple__") and isinstance(value, list) and value:
        for i, v in enumerate(value):
            _describe_tree(v, (*path, str(i)), out)
    elif tag in ("__dict__", "__odict__") and value == []:
        out[key] = {}
    elif tag in ("__list__", "__tuple__") and value == []:
        out[key] = []
    else:
        out[key] = node


class _KeepsWriteErrors:
    """The stream ``torch.save`` writes into (git's pipe, the file being written), keeping
    the OSError a write raised (a full disk): torch reports it as a RuntimeError of its
    own ("[enforce fail at inline_container.cc] unexpected pos ..."), which says neither
    what nor where.  Only ``write`` and ``flush``: without ``fileno`` torch writes every
    byte through ``write``, in order."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            self._f.write(data)
        except OSError as e:
            self.error = e
            raise
        return len(memoryview(data).cast("B"))

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = e
            raise


def _save_from_map(mm: mmap.mmap, manifest: Manifest, offsets: dict[str, int],
                   reader: ChunkReader, sink: _KeepsWriteErrors, legacy: bool
                   ) -> Exception | None:
    """Read every parameter into its place in ``mm``, then ``torch.save`` the tree built
    on those bytes into ``sink``.  Returns the exception that stopped it (a corrupt or
    missing chunk, ...) instead of raising it: its traceback holds views and tensors of the
    map, and a map with views alive cannot close (BufferError would replace the error)."""
    import torch

    view = memoryview(mm)
    try:
        for n, e in manifest.params.items():
            reader.read_into(e, view[offsets[n]:offsets[n] + e.nbytes])
        bases = {n: _tensor_from(mm, offsets[n], e) for n, e in manifest.params.items()}
        decoder = _TreeDecoder(bases)
        obj = decoder.decode(manifest.format.get("tree"))
        with _saving_locations(decoder.locations):
            try:
                torch.save(obj, sink, _use_new_zipfile_serialization=not legacy)
            except RuntimeError:
                if sink.error is not None:  # a full disk, not torch's "unexpected pos"
                    raise sink.error from None
                raise
    except Exception as e:
        chain: list[BaseException] = []
        link: BaseException | None = e
        while link is not None and link not in chain:
            chain.append(link)
            link = link.__cause__ or link.__context__
        for link in chain:  # every traceback in the chain: their frames hold the views
            link.__traceback__ = None
        return e
    finally:
        view.release()
    return None


def _tensor_from(mm: mmap.mmap, offset: int, entry) -> torch.Tensor:
    import torch

    dtype = by_name(entry.dtype)
    if dtype.torch is None:
        raise FormatError(f"dtype {entry.dtype} has no torch equivalent")
    count = math.prod(entry.shape)
    if count == 0:
        return torch.empty(entry.shape, dtype=dtype.torch)
    t = torch.frombuffer(mm, dtype=dtype.torch, count=count, offset=offset)
    return t.reshape(entry.shape)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(out))


class _TreeEncoder:
    """Walks a loaded object: tensors are grouped by storage, the rest becomes tagged JSON.

    ``encode`` builds the tree with a placeholder leaf per tensor; ``store`` then
    decides, per storage, whether its one tensor can be the parameter itself (a plain
    state dict) or the whole storage must be kept with each tensor as a view of it
    (slices, non-contiguous strides, element types without a table entry).
    """

    def __init__(self, writer: ChunkWriter, source: str, locations: dict[int, str]):
        self.writer = writer
        self.source = source
        self.locations = locations
        self.names: set[str] = set()
        # storage key -> (first path, [(tensor, leaf)])
        self.storages: dict[Any, tuple[tuple, list]] = {}
        self.fd: int | None = None  # the file, read with pread at data_ptr - base
        self.base = 0

    def spans(self) -> dict[int, int]:
        """{data_ptr: nbytes} of every non-empty storage found by ``encode``."""
        return {k[0]: k[1] for k in self.storages if k[0] != "empty"}

    def read_from(self, fd: int, base: int | None) -> None:
        """Read storages from the file ``fd`` mapped at ``base`` (None: from the map)."""
        self.fd, self.base = (fd, base) if base is not None else (None, 0)

    def _name_for(self, path: tuple) -> str:
        """A valid, unique parameter name for the tensor at ``path``.

        The tree keeps the real keys, so the name is only a reference: characters
        a parameter name may not hold become '_', a name longer than a parameter name
        may be is cut (its blake3 keeps it unique), and a name still refused (``..``,
        ``zarr.json``) gets a ``tensor~`` prefix.
        """
        parts = [re.sub(r"[\x00-\x1f\x7f\\/]", "_", str(p)) or "_" for p in path]
        base = ".".join(parts) or "tensor"
        if len(base) > MAX_NAME_LEN - 200:  # room for the prefix and a ~N suffix
            base = f"{base[:MAX_NAME_LEN - 300]}~{chunking.digest(base.encode())[7:39]}"
        try:
            check_name(base)
        except ManifestError:
            base = f"tensor~{base}"
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}~{i}", i + 1
        self.names.add(name)
        return name

    def encode(self, obj: Any, path: tuple) -> Any:
        import torch

        if isinstance(obj, torch.Tensor):
            return self._tensor(obj, path)
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return obj if abs(obj) < 2**53 else {"__int__": str(obj)}
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}
        if isinstance(obj, complex):
            return {"__complex__": [repr(obj.real), repr(obj.imag)]}
        if isinstance(obj, torch.Size):
            return {"__size__": list(obj)}
        if isinstance(obj, torch.dtype):
            return {"__dtype__": str(obj).removeprefix("torch.")}
        if isinstance(obj, torch.device):
            return {"__device__": str(obj)}
        if isinstance(obj, bytes):
            return {"__bytes__": base64.b64encode(obj).decode("ascii")}
        if isinstance(obj, dict):
            tag = "__odict__" if isinstance(obj, collections.OrderedDict) else "__dict__"
            items = []
            for k, v in obj.items():
                key = self.encode(k, path)
                items.append([key, self.encode(v, (*path, k))])
            attrs = getattr(obj, "__dict__", None)
            if attrs:  # a state dict's _metadata (module versions load_state_dict reads)
                return {tag: items, "attrs": self.encode(dict(attrs), (*path, "__dict__"))}
            return {tag: items}
        if isinstance(obj, (list, tuple)):
            tag = "__tuple__" if isinstance(obj, tuple) else "__list__"
            return {tag: [self.encode(v, (*path, i)) for i, v in enumerate(obj)]}
        where = ".".join(str(p) for p in path) or "top level"
        raise FormatError(f"{self.source}: cannot store a {type(obj).__name__} at {where}")

    def _tensor(self, t: torch.Tensor, path: tuple) -> dict[str, Any]:
        import torch

        where = ".".join(map(str, path)) or "top level"
        if t.layout != torch.strided or t.is_quantized:
            raise FormatError(f"{self.source}: tensor at {where} is "
                              f"{t.layout}{' quantized' if t.is_quantized else ''}; "
                              "only dense tensors are supported")
        if t.is_meta:  # shape and dtype only: torch.load gives no bytes to store
            raise FormatError(f"{self.source}: tensor at {where} is on the meta device "
                              "(it holds no data: saved before its weights were loaded?); "
                              "only tensors with data are supported")
        leaf: dict[str, Any] = {"__tensor__": None}
        if isinstance(t, torch.nn.Parameter):
            leaf["parameter"] = True
            leaf["requires_grad"] = bool(t.requires_grad)
        elif t.requires_grad:  # a plain tensor saved with it (torch.load keeps it)
            leaf["requires_grad"] = True
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes()) if storage.nbytes() else ("empty", id(leaf))
        group = self.storages.setdefault(key, (path, []))
        group[1].append((t, leaf))
        return leaf

    def store(self) -> None:
        """Write each storage once and fill in the leaves that refer to it."""
        import torch

        for path, members in self.storages.values():
            first = members[0][0]
            try:
                dtype = from_torch(first.dtype)
            except DTypeError:
                dtype = None  # carried as raw bytes, the leaves name the element type
            storage = first.untyped_storage()
            itemsize = first.element_size()
            views = {(t.storage_offset(), tuple(t.shape), tuple(t.stride())) for t, _ in members}
            (offset, shape, stride), = views if len(views) == 1 else ((None, None, None),)
            plain = (dtype is not None and offset == 0 and
                     stride == _contiguous_strides(shape) and
                     math.prod(shape) * itemsize == storage.nbytes())
            name = self._name_for(path)
            if plain:
                pshape, pdtype = shape, dtype
                raw = first.detach().reshape(-1).view(torch.uint8).numpy() \
                    if first.numel() else b""
            else:
                whole = torch.empty(0, dtype=torch.uint8).set_(storage)
                raw = whole.numpy() if storage.nbytes() else b""
                if dtype is None:
                    pshape, pdtype = (storage.nbytes(),), from_torch(torch.uint8)
                else:
                    pshape, pdtype = (storage.nbytes() // itemsize,), dtype
            try:
                if self.fd is not None and storage.nbytes():
                    self.writer.add_stream(name, pdtype, pshape, _pread_stream(
                        self.fd, storage.data_ptr() - self.base, storage.nbytes()))
                else:
                    self.writer.add_buffer(name, pdtype, pshape, memoryview(raw))
            except ManifestError as e:
                raise FormatError(str(e)) from None
            except TruncatedInput:
                raise FormatError(f"{self.source}: {CHANGED}") from None
            location = self.locations.get(storage.data_ptr(), "cpu") \
                if storage.nbytes() else "cpu"
            for t, leaf in members:
                leaf["__tensor__"] = name
                if not plain:
                    leaf["view"] = [t.storage_offset(), list(t.shape), list(t.stride())]
                if dtype is None:
                    leaf["dtype"] = str(t.dtype).removeprefix("torch.")
                if location != "cpu":
                    leaf["device"] = location


class _TreeDecoder:
    """The saved object back from its tagged JSON, storages shared as they were saved."""

    def __init__(self, bases: dict[str, torch.Tensor]):
        self.bases = bases
        self.tensors: dict[tuple, Any] = {}
        self.locations: dict[int, str] = {}  # storage data_ptr -> saved device

    def decode(self, node: Any) -> Any:
        """The object a tree node stands for; ManifestError, one line, for a node no
        theta-zarr writes (a hand edit: a device string torch rejects, a pair of one)."""
        try:
            return self._decode(node)
        except ManifestError:
            raise
        except (TypeError, ValueError, IndexError, KeyError, RuntimeError, OverflowError) as e:
            raise ManifestError(f"torch tree: bad node {str(node)[:80]} "
                                f"({type(e).__name__}: {str(e)[:120]})") from None

    def _decode(self, node: Any) -> Any:
        import torch

        if isinstance(node, list):
            raise ManifestError("torch tree: bare list")
        if not isinstance(node, dict):
            return node
        if "__tensor__" in node:
            return self._tensor(node)
        with_attrs = _split_attrs(node)
        if with_attrs:
            od = self.decode(with_attrs[0])
            attrs = self.decode(with_attrs[1])
            if not isinstance(attrs, dict) or not all(isinstance(k, str) for k in attrs):
                raise ManifestError("torch tree: bad attrs")
            od.__dict__.update(attrs)
            return od
        (tag, value), = node.items() if len(node) == 1 else (("?", None),)
        if tag in ("__dict__", "__odict__"):
            pairs = [(self.decode(k), self.decode(v)) for k, v in value]
            return collections.OrderedDict(pairs) if tag == "__odict__" else dict(pairs)
        if tag == "__list__":
            return [self.decode(v) for v in value]
        if tag == "__tuple__":
            return tuple(self.decode(v) for v in value)
        if tag == "__int__":
            return int(value)
        if tag == "__float__":
            return float(value)
        if tag == "__complex__":
            return complex(float(value[0]), float(value[1]))
        if tag == "__size__":
            return torch.Size(value)
        if tag == "__dtype__":
            dt = getattr(torch, str(value), None)
            if not isinstance(dt, torch.dtype):
                raise ManifestError(f"torch tree: unknown dtype {str(value)[:40]!r}")
            return dt
        if tag == "__device__":
            return torch.device(value)
        if tag == "__bytes__":
            return base64.b64decode(value)
        raise ManifestError(f"torch tree: unknown node {str(node)[:80]}")

    def _tensor(self, node: dict[str, Any]) -> Any:
        import torch

        name = node["__tensor__"]
        if name not in self.bases:
            raise ManifestError(f"torch tree names unknown tensor {str(name)[:80]!r}")
        view = _view_of_leaf(node)
        key = (view, bool(node.get("parameter")), bool(node.get("requires_grad")))
        if key in self.tensors:  # one object per tie, as pickle's memo gave it
            return self.tensors[key]
        t = view_tensor(self.bases[name], view)
        device = node.get("device")
        if isinstance(device, str) and device != "cpu" and t.untyped_storage().nbytes():
            self.locations[t.untyped_storage().data_ptr()] = device
        if node.get("parameter"):
            t = torch.nn.Parameter(t, requires_grad=bool(node.get("requires_grad")))
        elif node.get("requires_grad"):
            t.requires_grad_(True)
        self.tensors[key] = t
        return t


_SAVE = threading.local()
_REGISTERED = threading.Lock()
_registered = False


def _tag_saved_location(storage) -> str | None:
    """torch.save's location tagger while a rebuild runs: the device recorded at clean."""
    locations = getattr(_SAVE, "locations", None)
    if not locations:
        return None
    try:
        return locations.get(storage.data_ptr())
    except (RuntimeError, AttributeError):
        return None


class _saving_locations:
    """Within this block, storages listed in ``locations`` are saved with that location
    tag (``cuda:0``...) although they are in host memory here.

    Uses torch.serialization.register_package, torch's public hook for location tags;
    the tagger answers only inside this block, on this thread.
    """

    def __init__(self, locations: dict[int, str]):
        self.locations = locations

    def __enter__(self) -> None:
        global _registered
        import torch.serialization

        with _REGISTERED:
            if not _registered:
                torch.serialization.register_package(-100, _tag_saved_location,
                                                     lambda _storage, _location: None)
                _registered = True
        _SAVE.locations = self.locations

    def __exit__(self, *exc) -> None:
        _SAVE.locations = None
