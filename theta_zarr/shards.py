"""Sharded checkpoints: several files and an index that together are one model.

Hugging Face ``save_pretrained`` splits a large model into shards
(``model-00001-of-00004.safetensors`` ...) next to an index,
``model.safetensors.index.json`` (or ``pytorch_model.bin.index.json``):
``{"metadata": {...}, "weight_map": {tensor name: shard file name}}``, the shard
names relative to the index's folder.  Here a model is the union of its shards'
manifests, each tensor taken from the shard the weight map names, so the API can
select across shards and a diff can tell a tensor that only moved between shards
from one that changed.  Everything read from an index is validated before use:
its names become parameter names and its shard names become paths.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .manifest import Manifest, ManifestError, check_name, loads_json

INDEX_SUFFIX = ".index.json"
#: an index's file name: ``NAME.index.json``, or ``NAME.index.VARIANT.json`` for a variant
#: (``save_pretrained(variant="fp16")`` writes ``model.safetensors.index.fp16.json``)
_INDEX_NAME = re.compile(r"(?P<name>.+)\.index(?:\.(?P<variant>[^./]+))?\.json")
#: what transformers' from_pretrained looks for in a folder, in its order of preference,
#: then what diffusers' looks for in a pipeline component's folder (``unet/``, ``vae/``)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors",
                "adapter_model.bin", "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.safetensors.index.json",
                "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")


#: a folder's weights by the Hub's names, each safetensors name with its PyTorch one
#: (transformers, diffusers, PEFT): the file or, with ``.index.json``, the shards' index
CONVERSIONS = (("model.safetensors", "pytorch_model.bin"),
               ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
               ("adapter_model.safetensors", "adapter_model.bin"))
_COUNTERPARTS = {a: b for pair in CONVERSIONS for a, b in (pair, pair[::-1])}
#: the single-file weights of ``CONVERSIONS``, either format
WEIGHT_NAMES = tuple(_COUNTERPARTS)
#: weight files' extensions, dropped from a shard's name to pair it across formats
_WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth")


def counterpart(key: str) -> str | None:
    """The other format's name for the weights of ``key``'s folder (``d/model.safetensors``
    for ``d/pytorch_model.bin`` and back, ``CONVERSIONS``); None for a key that is none
    of them."""
    folder, name = posixpath.split(key)
    other = _COUNTERPARTS.get(name)
    return None if other is None else posixpath.join(folder, other)


def format_free_name(name: str) -> str:
    """A weight file's name (a path inside its model's folder) with its format taken out,
    the same in either format of a model converted by the Hub's naming:
    ``pytorch_model.bin`` and ``model.safetensors`` are ``model``,
    ``pytorch_model-00001-of-00002.bin`` and ``model-00001-of-00002.safetensors`` are
    ``model-00001-of-00002``, and ``diffusion_pytorch_model.bin`` and ``.safetensors`` are
    ``diffusion_pytorch_model``."""
    for ext in _WEIGHT_EXTENSIONS:
        if name.endswith(ext):
            name = name[:-len(ext)]
            break
    head, _, tail = name.rpartition("/")
    if tail.startswith("pytorch_model"):
        tail = tail[len("pytorch_"):]
    return f"{head}/{tail}" if head else tail


def is_index_name(path: str) -> bool:
    """True for a file name an index may have (``*.index.json``, or ``*.index.V.json`` for
    a variant V: ``model.safetensors.index.fp16.json``)."""
    return _INDEX_NAME.fullmatch(posixpath.basename(path)) is not None


def _with_variant(name: str, variant: str | None) -> str:
    """``name`` with ``variant`` put before its last extension, as transformers' and
    diffusers' ``_add_variant`` do (``model.safetensors`` -> ``model.fp16.safetensors``)."""
    if not variant:
        return name
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.{variant}.{ext}" if dot else f"{name}.{variant}"


def model_key(index_path: str) -> str:
    """The model an index describes, named by its one-file form: ``d/model.safetensors``
    (``d/model.fp16.safetensors`` for ``d/model.safetensors.index.fp16.json``).

    transformers writes ``model.safetensors`` when the model fits one shard and
    ``model.safetensors.index.json`` plus shards otherwise; both are the same model.
    """
    folder, base = posixpath.split(index_path)
    match = _INDEX_NAME.fullmatch(base)
    if match is None:
        return index_path[:-len(INDEX_SUFFIX)]
    return posixpath.join(folder, _with_variant(match["name"], match["variant"]))


def index_paths(key: str) -> list[str]:
    """The index names a model of one-file name ``key`` may have (``model_key``'s
    inverses): ``KEY.index.json``, and for a name with a variant before its extension
    (``d/model.fp16.safetensors``) ``d/model.safetensors.index.fp16.json``."""
    out = [key + INDEX_SUFFIX]
    folder, base = posixpath.split(key)
    parts = base.split(".")
    if len(parts) >= 3 and all(parts):
        plain = ".".join(parts[:-2] + parts[-1:])
        out.append(posixpath.join(folder, f"{plain}.index.{parts[-2]}.json"))
    return out


def check_shard_name(name: object, where: str) -> str:
    """A shard file named by an index: a relative path inside the index's folder."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or \
            any(ord(c) < 32 or ord(c) == 127 for c in name) or \
            any(part in ("", ".", "..") for part in name.split("/")):
        raise ManifestError(f"{where}: invalid shard file name {str(name)[:80]!r}")
    return name


@dataclass
class Index:
    """A parsed index: its ``metadata`` and ``weight_map`` (tensor -> shard file name)."""

    path: str
    weight_map: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level keys, kept

    @property
    def shards(self) -> list[str]:
        """Shard paths relative to the repository top, sorted."""
        folder = posixpath.dirname(self.path)
        return sorted({posixpath.join(folder, s) for s in self.weight_map.values()})

    def shard_path(self, shard: str) -> str:
        return posixpath.join(posixpath.dirname(self.path), shard)

    def to_json(self) -> dict[str, Any]:
        return {**self.extra, "metadata": self.metadata, "weight_map": self.weight_map}


def parse_index(data: bytes, path: str) -> Index:
    """An index file's bytes, validated.  Raises ManifestError naming ``path``."""
    # invalid UTF-8 or JSON, deep nesting (a RecursionError), a key given twice: one line
    obj = loads_json(data, path, "index")
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
        raise ManifestError(f"{path}: not a sharded-checkpoint index (no 'weight_map' object)")
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ManifestError(f"{path}: 'metadata' is not an object")
    weight_map = {check_name(k, path): check_shard_name(v, path)
                  for k, v in obj["weight_map"].items()}
    extra = {k: v for k, v in obj.items() if k not in ("metadata", "weight_map")}
    return Index(path, weight_map, metadata, extra)


@dataclass
class Model:
    """One model: its parameters from every shard, and which shard holds each."""

    key: str  # the one-file name (``d/model.safetensors``)
    manifest: Manifest  # every parameter, in weight-map order; format: the shards' format
    shard_of: dict[str, str]  # parameter -> shard path (relative to the repository top)
    index: Index | None = None  # None: the model is one file
    shard_manifests: dict[str, Manifest] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.index.path if self.index is not None else self.key


def single(key: str, manifest: Manifest) -> Model:
    """A model stored as one file."""
    return Model(key, manifest, dict.fromkeys(manifest.params, key), None, {key: manifest})


def combine(index: Index, shards: Mapping[str, Manifest]) -> Model:
    """The model an index and its shards' manifests (by shard path) make.

    The weight map names tensors as a loader sees them (``load_state_dict``'s keys),
    which need not be parameters: in a PyTorch shard a tied alias (``lm_head.weight``)
    or a slice of a fused weight lives in another tensor's storage.  Each key is
    looked up among its shard's tensors; the model holds the parameters they live
    in, and lists every key in ``format.tensors`` (``formats.tensor_views`` reads it).

    Raises ManifestError when a shard is missing, lacks a tensor the index puts in it,
    or when two shards hold a parameter of the same name.
    """
    from .formats import FormatError, tensor_views, view_json

    params = {}
    shard_of: dict[str, str] = {}
    tensors = {}
    names = set()
    views_of = {}
    for key, shard in index.weight_map.items():
        path = index.shard_path(shard)
        m = shards.get(path)
        if m is None:
            raise ManifestError(f"{index.path}: shard {shard} is not a tracked checkpoint")
        if path not in views_of:
            try:
                views_of[path] = tensor_views(m)
            except FormatError as e:
                raise ManifestError(f"{index.path}: shard {shard}: {e}") from None
        view = views_of[path].get(key)
        if view is None or view.param not in m.params:
            raise ManifestError(f"{index.path}: {key!r} is not in shard {shard}")
        if shard_of.setdefault(view.param, path) != path:
            raise ManifestError(f"{index.path}: shards {posixpath.basename(shard_of[view.param])}"
                                f" and {shard} both hold a parameter {view.param!r}")
        params[view.param] = m.params[view.param]
        tensors[key] = view_json(view)
        names.add(m.format_name)
    fmt = names.pop() if len(names) == 1 else "mixed"
    return Model(model_key(index.path),
                 Manifest({"name": fmt, "sharded": True, "tensors": tensors}, params),
                 shard_of, index, dict(shards))


def restrict_index(index: Index, kept: Mapping[str, Manifest]) -> bytes:
    """The index of a partial copy, as transformers writes one (sorted, indented).

    ``kept`` maps each shard written (its file name as the index spells it) to the
    manifest written there; the weight map names exactly the tensors a loader finds
    in those files (tied aliases included), and ``metadata.total_size``, when present,
    is the size in bytes of their storages, each counted once (as huggingface_hub's
    ``split_torch_state_dict_into_shards`` counts it); ``metadata.total_parameters``
    (transformers 5), when present, their element count, each counted once.
    """
    from .formats import tensor_views

    views = {s: tensor_views(m) for s, m in kept.items()}
    weight_map = {n: s for n, s in index.weight_map.items() if s in kept and n in views[s]}
    metadata = dict(index.metadata)
    stored = {(s, views[s][n].param) for n, s in weight_map.items()}
    if "total_size" in metadata:
        metadata["total_size"] = sum(kept[s].params[p].nbytes for s, p in stored)
    if "total_parameters" in metadata:  # transformers: num_parameters(), ties once
        metadata["total_parameters"] = sum(math.prod(kept[s].params[p].shape)
                                           for s, p in stored)
    obj = replace(index, weight_map=weight_map, metadata=metadata).to_json()
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
