"""Diff of two manifests: which parameters changed, and by how much.

Digests are compared first, so the summary (added / removed / reshaped /
changed, chunks changed k of n) costs no chunk read.  The numbers for a changed
parameter read only the chunk pairs whose digests differ, one pair at a time
through a bounded read-ahead window, fetching from the remote what the cache
lacks; memory is bounded by the chunk size, not the model.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import os
import posixpath
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import blake3
import numpy as np

from .chunkreader import ordered_map
from .dtypes import DType, by_name
from .foreign import Foreign, Side
from .formats import transposed
from .formats.base import flatten_json
from .manifest import Manifest, ParamEntry
from .merge import Key, chunk_keys
from .shards import Model, format_free_name
from .wording import counted, natural_key, quote_path, shell_word, show_name

JSON_VERSION = 1
_LOCK = threading.Lock()


@dataclass
class ParamDiff:
    """One parameter's change.  Statistics are None when not computed (or not finite)."""

    name: str
    status: str  # "added" | "removed" | "reshaped" | "changed"
    old: dict[str, Any] | None  # {"shape", "dtype"}
    new: dict[str, Any] | None
    chunks: int = 0
    chunks_changed: int = 0
    numel: int = 0
    elements_changed: int | None = None
    fraction_changed: float | None = None
    l2: float | None = None
    norm_old: float | None = None
    rel_change: float | None = None
    max_abs: float | None = None
    norm_scope: str | None = None  # "changed-chunks" | "tensor"
    #: the same values may be stored in the other order (a .npy saved C-ordered, then in
    #: Fortran order): shapes are the reader's; values are not compared element by element
    relaid: bool = False
    #: an added parameter holding exactly the values of a removed one (a renamed
    #: parameter): the removed one's name
    same_as: str | None = None
    #: the same values, bit for bit, in chunks of another shape (saved with another chunk
    #: size, or by a job of another world size); set by ``compute``
    rechunked: bool = False




@dataclass
class OtherChange:
    """A change to the file's non-tensor content (``Format.describe`` keys)."""

    key: str
    status: str  # "added" | "removed" | "changed"
    old: Any = None  # JSON value; None when added
    new: Any = None  # JSON value; None when removed


@dataclass
class ReadStats:
    """What a diff read for its numbers: stored chunks (inline ones cost nothing) and their
    raw bytes (decoded, not as stored or transferred).  Thread-safe: reader threads count."""

    chunks: int = 0
    bytes: int = 0

    def count(self, nbytes: int) -> None:
        """Count one chunk of ``nbytes`` raw bytes."""
        with _LOCK:
            self.chunks += 1
            self.bytes += nbytes


@dataclass
class FileDiff:
    """The diff of one tracked file between two sides (``summarize``, then ``compute``).

    ``old`` / ``new``: each side's manifest, None where the file is absent or is no
    manifest (then ``old_foreign`` / ``new_foreign`` say what it is: a git-lfs pointer, a
    plain file); ``params``: the parameters added, removed, reshaped or changed, with
    their numbers once computed; ``unchanged``: how many parameters have the same digests;
    ``other``: changes of non-tensor content; ``read``: what computing the numbers read.
    """

    path: str
    old: Manifest | None
    new: Manifest | None
    params: list[ParamDiff] = field(default_factory=list)
    unchanged: int = 0
    read: ReadStats = field(default_factory=ReadStats)
    other: list[OtherChange] = field(default_factory=list)
    old_foreign: Foreign | None = None
    new_foreign: Foreign | None = None
    #: a sharded model: the shard files of each side, and parameters whose shard changed
    shards: dict[str, list[str] | None] | None = None
    moved: list[dict[str, str]] = field(default_factory=list)
    renamed: bool = False  # a file git saw renamed (``path`` is ``OLD => NEW``)
    #: a rename's two paths (OLD, NEW): ``--name-only`` lists NEW, as git does
    names: tuple[str, str] | None = None
    #: a path the index holds as a conflicted merge (stages 1-3, no stage 0): no side is
    #: read, the text says how to finish the merge
    unmerged: bool = False

    def counts(self) -> dict[str, int]:
        """Parameters by status (``added``, ``removed``, ``reshaped``, ``changed``,
        ``unchanged``), ``other_changed``, and ``moved`` for a sharded model."""
        out = {s: 0 for s in ("added", "removed", "reshaped", "changed")}
        for p in self.params:
            out[p.status] += 1
        out["unchanged"] = self.unchanged
        out["other_changed"] = len(self.other)
        if self.shards is not None:
            out["moved"] = len(self.moved)
        return out

    def has_changes(self) -> bool:
        """True when the text output reports any difference for this file: a parameter,
        a non-tensor change, a parameter moved between shards, an lfs/plain side, a
        format change, a new name, a file added or deleted, or an unmerged path;
        ``--name-only``, ``--stat`` and ``--exit-code`` count exactly these."""
        if self.params or self.other or self.moved or self.renamed or self.unmerged:
            return True
        if self.old_foreign is not None or self.new_foreign is not None:
            return True
        if (self.old is None) != (self.new is None):  # a file added or deleted
            return True
        return bool(self.old and self.new and self.old.format != self.new.format
                    and self.old.format_name != self.new.format_name)

    def to_json(self) -> dict[str, Any]:
        """This file in the ``files`` list of ``diff --json`` (``diff.to_json``); numbers
        that are not finite become null."""
        def fmt(m: Manifest | None, f: Foreign | None) -> str | None:
            return m.format_name if m else f.kind if f else None

        def foreign(f: Foreign | None) -> dict[str, Any] | None:
            return None if f is None else {"kind": f.kind, "text": f.text, **f.info}

        return {"path": self.path,
                "format": {"old": fmt(self.old, self.old_foreign),
                           "new": fmt(self.new, self.new_foreign)},
                "foreign": {"old": foreign(self.old_foreign), "new": foreign(self.new_foreign)},
                "summary": self.counts(),
                "params": [_finite(asdict(p)) for p in self.params],
                "other": [asdict(o) for o in self.other],
                **({"shards": self.shards, "moved": self.moved} if self.shards is not None
                   else {}),
                **({"unmerged": True} if self.unmerged else {}),
                "read": asdict(self.read)}


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


def _geom(e: ParamEntry, transposed: bool = False) -> dict[str, Any]:
    """Shape and dtype as a reader gets them (a transposed parameter: reversed)."""
    shape = list(e.shape)
    return {"shape": shape[::-1] if transposed else shape, "dtype": e.dtype}


def describe(manifest: Manifest) -> dict[str, Any]:
    """The non-tensor content of a checkpoint, by its plug-in (generic when not installed)."""
    from .formats import FormatError, get_format

    try:
        return get_format(manifest.format_name).describe(manifest.format)
    except FormatError:
        return flatten_json({k: v for k, v in manifest.format.items() if k != "name"})


#: the names under which a reordering of the tensors' data, and a change of the file's
#: layout the format plug-in does not describe, are reported
ORDER_KEY = "(order of the tensors in the file)"
LAYOUT_KEY = "(file layout)"


def other_changes(old: Manifest, new: Manifest) -> list[OtherChange]:
    """What changed outside the tensors: every ``describe`` key whose value differs."""
    if old.format == new.format:
        return []
    out = _changes(describe(old), describe(new))
    # the order of the tensors' data in the file: left out of describe (it follows the
    # tensors), but a file that only reorders them is another file, which git sees; a
    # tensor added, removed or reshaped is no reordering of the others (safetensors lays
    # tensors out by dtype first, so one cast to bf16 moves to the end of the file)
    a, b = old.format.get("order"), new.format.get("order")
    if isinstance(a, list) and isinstance(b, list):
        alike = {n for n, e in old.params.items()
                 if n in new.params and _geom(e) == _geom(new.params[n])}
        both = set(map(str, a)) & set(map(str, b)) & alike
        a, b = [n for n in a if str(n) in both], [n for n in b if str(n) in both]
        if a != b:
            i = next(k for k, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
            out.append(OtherChange(ORDER_KEY, "changed", f"{a[i]} at {i}", f"{b[i]} at {i}"))
    if not out and not _follows_the_tensors(old, new):
        # something the plug-in does not describe: still a change, said as one
        out.append(OtherChange(LAYOUT_KEY, "changed", None, None))
    return out


def _keys(described: dict[str, Any]) -> dict[str, Any]:
    """Non-tensor content compared with a file of another format or with no file: without
    the attributes of a PyTorch object (``(attrs)`` entries: a state dict's ``_metadata``,
    one module version per module), which no other format holds and no loader reads as
    a key; listed one by one they buried the values that matter (a step, a tied alias)."""
    return {k: v for k, v in described.items()
            if not (k.startswith("(attrs)") or ".(attrs)" in k)}


def _follows_the_tensors(old: Manifest, new: Manifest) -> bool:
    """Whether two formats differ only as their tensors do: some tensor was added, removed
    or reshaped, and the formats restricted to the tensors alike on both sides (as a
    partial materialize would write them) are equal."""
    from .formats import FormatError, get_format

    alike = [n for n, e in old.params.items()
             if n in new.params and _geom(e) == _geom(new.params[n])]
    if len(alike) == len(old.params) == len(new.params):
        return False
    try:
        plugin = get_format(old.format_name)
    except FormatError:
        return False
    return plugin.select(old.format, alike) == plugin.select(new.format, alike)


def _changes(a: dict[str, Any], b: dict[str, Any], prefix: str = "",
             skip: str | None = None) -> list[OtherChange]:
    """Each key of two flat JSON dicts whose value differs (added, removed or changed),
    in key order, named ``prefix + key``; keys starting with ``skip`` are left out."""
    out = []
    for key in sorted(set(a) | set(b)):
        if (skip and key.startswith(skip)) or (key in a and key in b and a[key] == b[key]):
            continue
        status = "added" if key not in a else "removed" if key not in b else "changed"
        out.append(OtherChange(prefix + key, status, a.get(key), b.get(key)))
    return out


def _non_tensors(manifest: Manifest | None) -> dict[str, str]:
    """The parameters ``Format.non_tensors`` names (pickled items of a distributed
    checkpoint), each as the diff shows it: its size and a digest prefix."""
    from .formats import FormatError, get_format

    if manifest is None:
        return {}
    try:
        names = get_format(manifest.format_name).non_tensors(manifest.format)
    except FormatError:
        return {}
    return {n: f"{manifest.params[n].nbytes} bytes, {short_digest(manifest.params[n])}"
            for n in names if n in manifest.params}


def summarize(old: Side, new: Side, path: str = "checkpoint") -> FileDiff:
    """The digest-only diff: no chunk is read.  A foreign side holds no parameters.
    Parameters a format says hold no tensor (``Format.non_tensors``) are non-tensor
    content: a change to one is listed in ``other``, never compared as numbers."""
    old_foreign = old if isinstance(old, Foreign) else None
    new_foreign = new if isinstance(new, Foreign) else None
    old = None if isinstance(old, Foreign) else old
    new = None if isinstance(new, Foreign) else new
    a = old.params if old else {}
    b = new.params if new else {}
    out = FileDiff(path, old, new, old_foreign=old_foreign, new_foreign=new_foreign)
    if old is not None and new is not None and old.format_name == new.format_name:
        out.other = other_changes(old, new)
    elif old is not None and new is not None:
        # another format (pytorch_model.bin converted to model.safetensors): what one
        # format held besides the tensors (a tied alias, a step) and the other does not
        # is said, as its tensors are; the tensors' layout is the format's own
        out.other = _changes(_keys(describe(old)), _keys(describe(new)))
    elif (old is None) != (new is None) and (old_foreign or new_foreign) is None:
        # a file added or deleted: its non-tensor content (a step, a learning rate, format
        # metadata) comes or goes with it, as its tensors are added or removed
        there = _keys(describe(old or new))  # type: ignore[arg-type]
        out.other = _changes({}, there) if old is None else _changes(there, {})
    ta, tb = transposed(old), transposed(new)
    blobs_a, blobs_b = _non_tensors(old), _non_tensors(new)
    out.other += _changes(blobs_a, blobs_b)
    for name in sorted(a.keys() | b.keys(), key=natural_key):  # layers.2 before layers.10
        ea, eb = a.get(name), b.get(name)
        if name in blobs_a or name in blobs_b:
            continue
        if ea == eb:
            out.unchanged += 1
        elif eb is None:
            assert ea is not None
            out.params.append(ParamDiff(name, "removed", _geom(ea, name in ta), None))
        elif ea is None:
            out.params.append(ParamDiff(name, "added", None, _geom(eb, name in tb)))
        elif (ga := _geom(ea, name in ta)) != (gb := _geom(eb, name in tb)):
            out.params.append(ParamDiff(name, "reshaped", ga, gb))
        elif (name in ta) != (name in tb):  # the same shape, stored in the other order
            n = len(chunk_keys(eb))
            out.params.append(ParamDiff(name, "changed", ga, gb, chunks=n, chunks_changed=n,
                                        numel=math.prod(eb.shape), relaid=True))
        else:
            ka, kb = chunk_keys(ea), chunk_keys(eb)
            same_chunking = ea.chunk_shape == eb.chunk_shape
            k = sum(x != y for x, y in zip(ka, kb, strict=True)) if same_chunking else len(kb)
            out.params.append(ParamDiff(name, "changed", ga, gb, chunks=len(kb),
                                        chunks_changed=k, numel=math.prod(eb.shape)))
    _pair_renames(out.params, a, b, ta, tb)
    return out


def _pair_renames(params: list[ParamDiff], a: dict[str, ParamEntry], b: dict[str, ParamEntry],
                  ta: set[str], tb: set[str]) -> None:
    """Mark each added parameter whose shape, dtype, chunking and chunks equal a removed
    one's (the same values under a new name) with that name, by digests only."""
    def key(e: ParamEntry, flipped: bool) -> tuple:
        return (tuple(e.shape), e.dtype, tuple(e.chunk_shape), flipped, chunk_keys(e))

    gone: dict[tuple, list[str]] = {}
    for p in params:
        if p.status == "removed":
            gone.setdefault(key(a[p.name], p.name in ta), []).append(p.name)
    if not gone:
        return
    for p in params:
        if p.status == "added":
            names = gone.get(key(b[p.name], p.name in tb))
            if names:
                p.same_as = names.pop(0)


class _Acc:
    """Running sums over chunk pairs, in float64."""

    def __init__(self) -> None:
        self.sq_diff = 0.0
        self.sq_old = 0.0
        self.max_abs = 0.0
        self.changed = 0

    def add(self, a_raw: bytes | memoryview, b_raw: bytes | memoryview, dtype: DType,
            diff: bool = True) -> None:
        """Add one chunk pair of ``dtype`` (``diff`` False: ``b_raw`` is the same chunk)."""
        aw = _values(a_raw, dtype)
        self.sq_old += float(np.sum(np.abs(aw) ** 2))
        if not diff:
            return
        size = dtype.itemsize
        bits_a = np.frombuffer(a_raw, dtype=np.uint8).reshape(-1, size)
        bits_b = np.frombuffer(b_raw, dtype=np.uint8).reshape(-1, size)
        moved = (bits_a != bits_b).any(axis=1)
        self.changed += int(np.count_nonzero(moved))
        if not moved.any():
            return
        npd = dtype.numpy
        if npd.kind in "iu":  # exact: |b - a| in unsigned arithmetic of the same width
            a = np.frombuffer(a_raw, dtype=npd)[moved]
            b = np.frombuffer(b_raw, dtype=npd)[moved]
            ua, ub = a.view(f"u{size}"), b.view(f"u{size}")
            d = np.where(b >= a, ub - ua, ua - ub)
            self.max_abs = max(self.max_abs, float(int(d.max())))
            self.sq_diff += float(np.sum(d.astype(np.float64) ** 2))
            return
        bw = _values(b_raw, dtype)
        if len(bw) != len(moved):  # packed (two float4 values a byte): compare all
            d = np.abs(bw - aw)
        else:
            d = np.abs(bw[moved] - aw[moved])
        # a change to or from inf or NaN is unbounded (inf - inf, NaN - x are NaN)
        d[np.isnan(d)] = np.inf
        self.sq_diff += float(np.sum(d * d))
        self.max_abs = max(self.max_abs, float(np.max(d)))


def _values(raw: bytes | memoryview, dtype: DType) -> np.ndarray:
    """The elements as float64 (complex128 for complex types), for norms and differences.

    complex32 (torch's ``chalf``) is two float16 halves; ``float4_e2m1fn_x2`` packs two
    float4 values a byte (low nibble first, as torch and the OCP MX spec pack them)."""
    if dtype.name == "complex32":
        return np.frombuffer(raw, dtype=np.float16).astype(np.float64).view(np.complex128)
    if dtype.name == "float4_e2m1fn_x2":
        import ml_dtypes

        packed = np.frombuffer(raw, dtype=np.uint8)
        nibbles = np.stack([packed & 0xF, packed >> 4], axis=-1).ravel()
        return nibbles.view(ml_dtypes.float4_e2m1fn).astype(np.float64)
    npd = dtype.numpy
    return np.frombuffer(raw, dtype=npd).astype(
        np.complex128 if npd.kind == "c" else np.float64)


class _Bytes:
    """Consecutive bytes from a stream of chunks, in pieces of any size (re-chunking)."""

    def __init__(self, chunks: Iterator[bytes | memoryview]):
        self._it = chunks
        self._buf = b""

    def read(self, n: int) -> bytes:
        parts, have = [self._buf], len(self._buf)
        while have < n:
            nxt = bytes(next(self._it))
            parts.append(nxt)
            have += len(nxt)
        data = b"".join(parts)
        self._buf = data[n:]
        return data[:n]


def compute(fd: FileDiff, objects: Any, workers: int = 4, full_norm: bool = False) -> FileDiff:
    """Fill in the statistics of every changed parameter, reading only differing chunks.

    ``full_norm`` also reads the old version's unchanged chunks of a partly changed
    parameter, so ``rel_change`` divides by the norm of the whole tensor instead
    of the norm of the chunks that changed.  Chunk pairs of all parameters go through
    one pool in one ordered stream, so a checkpoint of 10^5 one-chunk parameters reads
    ahead across parameters instead of waiting on each.
    """
    changed = [p for p in fd.params if p.status == "changed" and not p.relaid]
    if not changed:
        return fd
    assert fd.old is not None and fd.new is not None
    entries = [(fd.old.params[p.name], fd.new.params[p.name]) for p in changed]
    dtypes = [by_name(ea.dtype) for ea, _ in entries]
    accs = [_Acc() for _ in changed]
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tz-read") as pool:
        aligned = []
        for k, (ea, eb) in enumerate(entries):
            if ea.chunk_shape == eb.chunk_shape:
                aligned.append(k)
                continue
            # different chunk grids: stream both tensors and compare them span by span
            old = ordered_map(lambda job, e=ea: _load(e, job, objects, fd.read),
                              list(enumerate(chunk_keys(ea))), workers, pool=pool)
            new = _Bytes(ordered_map(lambda job, e=eb: _load(e, job, objects, fd.read),
                                     list(enumerate(chunk_keys(eb))), workers, pool=pool))
            for a in old:
                accs[k].add(a, new.read(len(a)), dtypes[k], True)

        def jobs() -> Iterator[tuple[int, tuple[int, Key], tuple[int, Key]]]:
            for k in aligned:
                ea, eb = entries[k]
                for x, y in zip(enumerate(chunk_keys(ea)), enumerate(chunk_keys(eb)),
                                strict=True):
                    if x != y or full_norm:
                        yield k, x, y

        def load_pair(job: tuple[int, tuple[int, Key], tuple[int, Key]]
                      ) -> tuple[int, bytes | memoryview, bytes | memoryview, bool]:
            k, x, y = job
            ea, eb = entries[k]
            a = _load(ea, x, objects, fd.read)
            return (k, a, _load(eb, y, objects, fd.read), True) if x != y else \
                (k, a, b"", False)

        for k, a, b, differs in ordered_map(load_pair, jobs(), max(1, workers // 2),
                                            pool=pool):
            accs[k].add(a, b, dtypes[k], differs)
    for p, acc, (ea, eb) in zip(changed, accs, entries, strict=True):
        p.elements_changed = acc.changed
        p.fraction_changed = acc.changed / p.numel if p.numel else 0.0
        p.l2 = math.sqrt(acc.sq_diff)
        p.norm_old = math.sqrt(acc.sq_old)
        p.max_abs = acc.max_abs
        p.rel_change = p.l2 / p.norm_old if p.norm_old else (0.0 if p.l2 == 0 else math.inf)
        whole = full_norm or p.chunks_changed == p.chunks
        p.norm_scope = "tensor" if whole else "changed-chunks"
        p.rechunked = acc.changed == 0 and ea.chunk_shape != eb.chunk_shape
    return fd


def _load(entry: ParamEntry, job: tuple[int, Key], objects: Any, stats: ReadStats
          ) -> bytes | memoryview:
    """Chunk ``job`` = (index, key) of ``entry``: inline bytes or the verified object,
    its length checked against the entry (a chunk of another size than its entry says,
    an edited dtype or shape, is an error, never numbers computed over the wrong bytes)."""
    i, key = job
    raw = key if isinstance(key, bytes) else objects.get(key, size=entry.chunk_nbytes(i))
    entry.check_chunk(i, raw, "an inline chunk" if isinstance(key, bytes) else f"object {key}")
    if not isinstance(key, bytes):
        stats.count(len(raw))
    return raw


def diff(old: Side, new: Side, objects: Any, path: str = "checkpoint",
         workers: int = 4, full_norm: bool = False, numbers: bool = True) -> FileDiff:
    """Summary plus statistics; ``numbers=False`` stops at the digest-only summary."""
    fd = summarize(old, new, path)
    return compute(fd, objects, workers, full_norm) if numbers else fd


def _restrict(model: Model | None, names: set[str]) -> Manifest | None:
    if model is None:
        return None
    m = model.manifest
    params = {n: e for n, e in m.params.items() if n in names}
    if len(params) == len(m.params) or m.format.get("sharded"):
        return Manifest(m.format, params)
    # a one-file model's plug-in data describes every tensor of the file (a PyTorch tree
    # names each one): the part kept is described as a sharded model lists its tensors
    from .formats import tensor_views, view_json

    tensors = {k: view_json(v) for k, v in tensor_views(m).items() if v.param in params}
    return Manifest({"name": m.format_name, "sharded": True, "tensors": tensors}, params)


def _in_folder(model: Model, shard: str) -> str:
    """A shard's name inside its model's folder (a one-file model's: the file's name)."""
    folder = posixpath.dirname(model.index.path if model.index else shard)
    return posixpath.relpath(shard, folder) if folder else shard


def _shard_key(model: Model, shard: str) -> str:
    """A shard's name in its folder, the same in either format of a model the Hub
    converted (``shards.format_free_name``)."""
    return format_free_name(_in_folder(model, shard))


def diff_models(old: Model | None, new: Model | None, objects: Any, path: str,
                workers: int = 4, full_norm: bool = False, numbers: bool = True,
                files: tuple[str, ...] | None = None) -> FileDiff:
    """The diff of one model across all its shards: a parameter is compared with itself
    wherever it lives, so one that only moved to another shard is unchanged (and listed
    in ``moved``).  Non-tensor changes are those of each shard present on both sides,
    and of the index's metadata.

    ``files`` limits the diff to the parameters those shard files hold on either side
    (git's external diff runs once per file, or per renamed pair).
    """
    a = old.manifest if old else None
    b = new.manifest if new else None
    if files is not None:
        here = {n for m in (old, new) if m for n, s in m.shard_of.items() if s in files}
        a, b = _restrict(old, here), _restrict(new, here)
    fd = diff(a, b, objects, path, workers, full_norm, numbers)
    fd.shards = {"old": sorted(old.shard_manifests) if old else None,
                 "new": sorted(new.shard_manifests) if new else None}
    if old is None or new is None:
        fd.other = []  # a model added or deleted: its shards' tensors say it
        return fd
    assert a is not None and b is not None
    # shards are compared by their names inside the model's folder: a renamed folder
    # (`git mv llama llama-v2`) moves no tensor to another shard
    # a shard converted to the other format (pytorch_model.bin to model.safetensors) is
    # the same shard: its tensors did not move
    fd.moved = [{"name": n, "from": old.shard_of[n], "to": new.shard_of[n]}
                for n in b.params if n in a.params and
                _shard_key(old, old.shard_of[n]) != _shard_key(new, new.shard_of[n])]
    other = []
    new_shards = {_shard_key(new, s): s for s in new.shard_manifests}
    one_file = old.index is None and new.index is None
    for name in sorted(old.shard_manifests):
        new_name = new_shards.get(_shard_key(old, name))
        if new_name is None or not (files is None or name in files or new_name in files):
            continue
        sa, sb = old.shard_manifests[name], new.shard_manifests[new_name]
        # another format: what one held besides its tensors (a tied alias, the format
        # metadata) and the other does not, as ``summarize`` says it for a file
        changes = other_changes(sa, sb) if sa.format_name == sb.format_name else \
            _changes(_keys(describe(sa)), _keys(describe(sb)))
        label = "" if one_file else new_name.rsplit("/", 1)[-1] + ": "
        other += [OtherChange(f"{label}{o.key}", o.status, o.old, o.new) for o in changes]
    if old.index and new.index and (files is None or old.index.path in files or
                                    new.index.path in files):  # the index's own diff
        other += _changes(flatten_json(old.index.to_json()), flatten_json(new.index.to_json()),
                          "index: ", skip="weight_map.")
    fd.other = other
    return fd


# -- text ------------------------------------------------------------------------------
def _shape(g: dict[str, Any] | None) -> str:
    return "-" if g is None else f"{g['dtype']}{g['shape']}"


def _percent(f: float) -> str:
    """A fraction as a percentage: one decimal, or two significant digits below 0.1%, so
    5 elements of 50,000 read 0.01%, not 0.0%."""
    return f"{f:.1%}" if f == 0 or f >= 0.001 else f"{f * 100:.2g}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def json_document(diffs: Iterable[FileDiff], old: str, new: str) -> dict[str, Any]:
    """The ``--json`` output of a diff between ``old`` and ``new`` (revisions or refs):
    ``{"theta_zarr_diff": JSON_VERSION, "old", "new", "files": [FileDiff.to_json()]}``."""
    return {"theta_zarr_diff": JSON_VERSION, "old": old, "new": new,
            "files": [d.to_json() for d in diffs]}


def format_text(fd: FileDiff) -> list[str]:
    """Human lines: a header per file, then one line per differing parameter."""
    if fd.unmerged:
        return [unmerged_line(fd.path)]
    c = fd.counts()
    head = (f"{fd.path}: {c['changed']} changed, {c['reshaped']} reshaped, {c['added']} added, "
            f"{c['removed']} removed, {c['unchanged']} unchanged")
    if fd.other:
        head += f"; {len(fd.other)} other (non-tensor) change(s)"
    if fd.moved:
        head += f"; {len(fd.moved)} moved to another shard"
    if fd.read.chunks:
        head += f"  (read {counted(fd.read.chunks, 'chunk')}, {counted(fd.read.bytes, 'byte')})"
    lines = [head]
    for label, f in (("old", fd.old_foreign), ("new", fd.new_foreign)):
        if f is not None:
            lines.append(f"  {label}: {f.text}")
    if fd.old is None and fd.old_foreign is None and fd.shards is None:
        lines.append(f"  new file ({fd.new.format_name if fd.new else fd.new_foreign.kind})")
    elif fd.new is None and fd.new_foreign is None and fd.shards is None:
        lines.append(f"  deleted file ({fd.old.format_name if fd.old else fd.old_foreign.kind})")
    if fd.old and fd.new and fd.old.format != fd.new.format and fd.old.format_name != \
            fd.new.format_name:
        lines.append(f"  format {fd.old.format_name} -> {fd.new.format_name}")
    names = {p.name: show_name(p.name) for p in fd.params}
    width = max((len(n) for n in names.values()), default=0)
    for p in fd.params:
        name = names[p.name]
        if p.status == "added":
            same = f"  same values as removed {show_name(p.same_as)}" if p.same_as else ""
            lines.append(f"  + {name:<{width}}  {_shape(p.new)}{same}")
        elif p.status == "removed":
            lines.append(f"  - {name:<{width}}  {_shape(p.old)}")
        elif p.status == "reshaped":
            lines.append(f"  ! {name:<{width}}  {_shape(p.old)} -> {_shape(p.new)}")
        else:
            text = f"  ~ {name:<{width}}  {_shape(p.new)}  chunks {p.chunks_changed}/{p.chunks}"
            if p.relaid:
                text += "  stored in the other order now (C <-> Fortran); values not compared"
            elif p.rechunked:
                text += "  same values, in chunks of another shape"
            elif p.l2 is not None:
                frac = "n/a" if p.fraction_changed is None else _percent(p.fraction_changed)
                scope = "" if p.norm_scope == "tensor" else " (of changed chunks)"
                text += (f"  |B-A| {_num(p.l2)}  rel {_num(p.rel_change)}{scope}  "
                         f"max|B-A| {_num(p.max_abs)}  elements {frac}")
            lines.append(text)
    for o in fd.other:
        key = show_name(o.key)
        if o.status == "added":
            lines.append(f"  * {key}: (none) -> {show_value(o.new)}")
        elif o.status == "removed":
            lines.append(f"  * {key}: {show_value(o.old)} -> (none)")
        elif o.key.endswith(LAYOUT_KEY):  # a shard's is "NAME: (file layout)"
            same = "" if fd.params else " (same tensors, same values)"
            lines.append(f"  * {key} changed{same}")
        else:
            lines.append(f"  * {key}: {show_value(o.old)} -> {show_value(o.new)}")
    return lines


def unmerged_line(path: str) -> str:
    """What a diff says of a path left conflicted by a merge (no side to compare)."""
    return (f"{path}: unmerged; finish with: git theta-zarr resolve {shell_word(path)} "
            "--strategy STRATEGY")


def show_value(value: Any, limit: int = 120) -> str:
    """A JSON value in one short line; a long one as its size and a digest prefix."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if len(text) <= limit:
        return text
    kind = f"list of {len(value)}" if isinstance(value, list) else \
        f"object of {len(value)}" if isinstance(value, dict) else f"{len(text)} characters"
    return f"<{kind}, blake3 {blake3.blake3(text.encode()).hexdigest()[:12]}>"


def short_digest(entry: ParamEntry, length: int = 12) -> str:
    """A digest of a parameter's chunk list: equal lists, equal text (for textconv)."""
    h = blake3.blake3()
    for key in chunk_keys(entry):
        h.update(key if isinstance(key, bytes) else key.encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()[:length]


def textconv_lines(manifest: Manifest) -> Iterable[str]:
    """The stable summary git shows for a checkpoint: one line per parameter, name order."""
    yield (f"# theta-zarr {manifest.format_name} checkpoint: {len(manifest.params)} parameters, "
           f"{manifest.nbytes} bytes")
    flipped = transposed(manifest)  # shapes as a reader gets them
    for name in sorted(manifest.params, key=natural_key):
        e = manifest.params[name]
        where = "inline" if e.is_inline else counted(len(e.chunks), "chunk")
        yield f"{name} {_shape(_geom(e, name in flipped))} {where} {short_digest(e)}"
    for key, value in sorted(describe(manifest).items()):
        yield f"@ {key} = {show_value(value)}"


# -- picture -----------------------------------------------------------------------------
def plot(diffs: list[FileDiff], png: str) -> int:
    """A bar chart of the relative change per changed parameter; returns the bar count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'theta-zarr[plot]'") from None
    if os.path.isdir(png):
        raise ValueError(f"{png}: is a folder; --plot takes the image file to write")
    # the format by the name's extension, PNG without one; written to exactly that path
    # (matplotlib appends ".png" to a name without an extension, which was then reported
    # as written under the name given)
    fmt = os.path.splitext(png)[1][1:].lower() or "png"
    rows = [(f"{quote_path(fd.path)}:{p.name}" if len(diffs) > 1 else p.name,
             p.rel_change or 0.0) for fd in diffs for p in fd.params if p.status == "changed"]
    height = max(2.5, 0.22 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(9, height))
    try:
        if fmt not in fig.canvas.get_supported_filetypes():
            raise ValueError(f"{png}: --plot cannot write a '.{fmt}' image (known: "
                             f"{', '.join(sorted(fig.canvas.get_supported_filetypes()))})")
        if rows:
            labels, values = zip(*rows, strict=True)
            ax.barh(range(len(rows)), values, color="#3b75af")
            ax.set_yticks(range(len(rows)), labels, fontsize=7)
            ax.invert_yaxis()
        else:
            ax.text(0.5, 0.5, "no parameter values changed", ha="center", va="center")
        ax.set_xlabel("relative change ||B - A|| / ||A||")
        ax.set_title(", ".join(quote_path(fd.path) for fd in diffs) or "theta-zarr diff")
        fig.tight_layout()
        with open(png, "wb") as f:
            fig.savefig(f, format=fmt, dpi=100)
    finally:
        plt.close(fig)
    return len(rows)
