"""PyTorch ``torch.save`` files (.pt/.pth/.bin, the zip format).

Loaded only with ``torch.load(weights_only=True, mmap=True)``: a pickle that
would run code is refused, and tensors are hashed straight from the memory map.
The manifest's ``format.tree`` keeps the nesting of the saved object and its
non-tensor leaves as tagged JSON, so the rebuilt file loads to equal tensors and
an equal structure, and cleaning it again gives the same manifest.
"""

from __future__ import annotations

import base64
import collections
import json
import math
import mmap
import pickle
import re
import shutil
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any, BinaryIO

from ..chunkreader import ChunkReader
from ..chunkwriter import ChunkWriter
from ..dtypes import DTypeError, by_name, from_torch
from ..manifest import Manifest, ManifestError, check_name
from .base import Format, FormatError, Source, flatten_json
from .zipinfo import first_member

if TYPE_CHECKING:
    import torch


class TorchFormat(Format):
    name = "torch"
    extensions = (".pt", ".pth", ".bin", ".ckpt")

    def sniff(self, head: bytes) -> bool:
        member = first_member(head)
        return member is not None and member.endswith("data.pkl")

    def clean(self, source: Source, writer: ChunkWriter) -> dict[str, Any]:
        import torch

        with source.as_file() as path:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except pickle.UnpicklingError as e:
                first = str(e).strip().splitlines()[-1] if str(e).strip() else "unsafe pickle"
                raise FormatError(f"{source.name}: refused to load: the pickle needs more than "
                                  f"weights_only=True allows ({first[:200]})") from None
            except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise FormatError(f"{source.name}: not a readable PyTorch file ({msg[:200]})"
                                  ) from None
            encoder = _TreeEncoder(writer, source.name)
            tree = encoder.encode(obj, ())
        return {"name": self.name, "tree": tree}

    def smudge(self, manifest: Manifest, reader: ChunkReader, out: BinaryIO,
               tmp_dir: str | None = None) -> None:
        import torch

        # Tensors are laid out in a private memory-mapped spool so torch.save can
        # stream them out without the whole checkpoint in RAM.
        names = list(manifest.params)
        offsets, total = {}, 0
        for n in names:
            offsets[n] = total
            total += manifest.params[n].nbytes
            total += -total % 64
        with tempfile.TemporaryFile(dir=tmp_dir) as spool, \
                tempfile.TemporaryFile(dir=tmp_dir) as saved:
            spool.truncate(max(total, 1))
            with mmap.mmap(spool.fileno(), max(total, 1)) as mm:
                view = memoryview(mm)
                try:
                    for n in names:
                        e = manifest.params[n]
                        reader.read_into(e, view[offsets[n]:offsets[n] + e.nbytes])
                    tensors = {n: _tensor_from(mm, offsets[n], manifest.params[n])
                               for n in names}
                    obj = _decode_tree(manifest.format.get("tree"), tensors, {})
                    torch.save(obj, saved)
                    del tensors, obj
                finally:
                    view.release()
            saved.seek(0)
            shutil.copyfileobj(saved, out, 1 << 20)


    def select(self, fmt: dict[str, Any], names: list[str]) -> dict[str, Any]:
        # A selection of a nested object is saved as a flat state dict of its tensors.
        return {"name": self.name,
                "tree": {"__odict__": [[n, {"__tensor__": n}] for n in names]}}

    def describe(self, fmt: dict[str, Any]) -> dict[str, Any]:
        """Non-tensor leaves of the saved object by key path (``step``,
        ``scheduler.last_epoch``); a tensor leaf only when it is not plainly the parameter
        of its own path (a tied alias, a storage detail)."""
        out: dict[str, Any] = {}
        _describe_tree(fmt.get("tree"), (), out)
        out.update(flatten_json({k: v for k, v in fmt.items() if k not in ("name", "tree")}))
        return out


def _describe_tree(node: Any, path: tuple[str, ...], out: dict[str, Any]) -> None:
    key = ".".join(path) or "(top level)"
    if not isinstance(node, dict) or len(node) != 1 and "__tensor__" not in node:
        out[key] = node
        return
    if "__tensor__" in node:
        extra = {k: v for k, v in node.items() if k != "__tensor__"}
        if node["__tensor__"] != key or extra:
            out[key] = {"tensor": node["__tensor__"], **extra}
        return
    (tag, value), = node.items()
    if tag in ("__dict__", "__odict__") and isinstance(value, list) and value:
        for pair in value:
            k = pair[0] if isinstance(pair, list) and len(pair) == 2 else pair
            shown = k if isinstance(k, str) else json.dumps(k, sort_keys=True)
            _describe_tree(pair[1] if isinstance(pair, list) and len(pair) == 2 else None,
                           (*path, shown), out)
    elif tag in ("__list__", "__tuple__") and isinstance(value, list) and value:
        for i, v in enumerate(value):
            _describe_tree(v, (*path, str(i)), out)
    elif tag in ("__dict__", "__odict__") and value == []:
        out[key] = {}
    elif tag in ("__list__", "__tuple__") and value == []:
        out[key] = []
    else:
        out[key] = node


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


class _TreeEncoder:
    """Walks a loaded object: tensors go to the writer, the rest becomes tagged JSON."""

    def __init__(self, writer: ChunkWriter, source: str):
        self.writer = writer
        self.source = source
        self.seen: dict[tuple, str] = {}
        self.names: set[str] = set()

    def _name_for(self, path: tuple) -> str:
        """A valid, unique parameter name for the tensor at ``path``.

        The tree keeps the real keys, so the name is only a reference: characters
        a parameter name may not hold become '_', and a name still refused
        (``..``, ``zarr.json``) gets a ``tensor~`` prefix.
        """
        parts = [re.sub(r"[\x00-\x1f\x7f\\/]", "_", str(p)) or "_" for p in path]
        base = ".".join(parts) or "tensor"
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
            return {tag: items}
        if isinstance(obj, (list, tuple)):
            tag = "__tuple__" if isinstance(obj, tuple) else "__list__"
            return {tag: [self.encode(v, (*path, i)) for i, v in enumerate(obj)]}
        where = ".".join(str(p) for p in path) or "top level"
        raise FormatError(f"{self.source}: cannot store a {type(obj).__name__} at {where}")

    def _tensor(self, t: torch.Tensor, path: tuple) -> dict[str, Any]:
        import torch

        if t.layout != torch.strided or t.is_quantized:
            raise FormatError(f"{self.source}: tensor at {'.'.join(map(str, path))} is "
                              f"{t.layout}{' quantized' if t.is_quantized else ''}; "
                              "only dense tensors are supported")
        try:
            dtype = from_torch(t.dtype)
        except DTypeError as e:
            raise FormatError(f"{self.source}: {e}") from None
        leaf: dict[str, Any] = {}
        if isinstance(t, torch.nn.Parameter):
            leaf["parameter"] = True
            leaf["requires_grad"] = bool(t.requires_grad)
        key = None
        if t.numel() > 0:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
                   tuple(t.stride()), t.dtype)
        if key is not None and key in self.seen:
            return {"__tensor__": self.seen[key], **leaf}
        name = self._name_for(path)
        c = t.detach().contiguous()
        raw = c.reshape(-1).view(torch.uint8).numpy() if c.numel() else b""
        try:
            self.writer.add_buffer(name, dtype, tuple(t.shape), memoryview(raw))
        except ManifestError as e:
            raise FormatError(str(e)) from None
        if key is not None:
            self.seen[key] = name
        return {"__tensor__": name, **leaf}


def _decode_tree(node: Any, tensors: dict[str, torch.Tensor],
                 params: dict[str, torch.nn.Parameter]) -> Any:
    """The saved object back from its tagged JSON; one Parameter per name keeps ties."""
    import torch

    if isinstance(node, list):
        raise ManifestError("torch tree: bare list")
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        name = node["__tensor__"]
        if name not in tensors:
            raise ManifestError(f"torch tree names unknown tensor {str(name)[:80]!r}")
        t = tensors[name]
        if node.get("parameter"):
            if name not in params:
                grad = bool(node.get("requires_grad"))
                params[name] = torch.nn.Parameter(t, requires_grad=grad)
            return params[name]
        return t
    (tag, value), = node.items() if len(node) == 1 else (("?", None),)
    if tag in ("__dict__", "__odict__"):
        pairs = [(_decode_tree(k, tensors, params), _decode_tree(v, tensors, params))
                 for k, v in value]
        return collections.OrderedDict(pairs) if tag == "__odict__" else dict(pairs)
    if tag == "__list__":
        return [_decode_tree(v, tensors, params) for v in value]
    if tag == "__tuple__":
        return tuple(_decode_tree(v, tensors, params) for v in value)
    if tag == "__int__":
        return int(value)
    if tag == "__float__":
        return float(value)
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

