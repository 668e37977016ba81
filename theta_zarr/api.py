"""The Python face: open a tracked checkpoint as Zarr, or load chosen parameters as tensors.

Both read only what is asked for: ``open`` serves chunks on demand through a
read-only Zarr store, ``load_state_dict`` reads the chunks of the parameters
matching ``include``.  Where the manifest comes from:

* ``rev="HEAD"`` (or any revision): the manifest git stores for ``path``;
* ``rev=None``: the working-tree file: a manifest (lazy checkout) is used as it
  is, a real checkpoint is cleaned into the cache first (streamed).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import checkpoint
from .chunkreader import ChunkReader
from .dtypes import by_name
from .git.files import manifest_at
from .git.install import DRIVER
from .git.models import open_model
from .git.push import read_through
from .git.repo import GitInputError, Repo
from .git.sides import WORKTREE
from .manifest import Manifest, ManifestError, looks_like_manifest
from .remote import ReadThrough
from .shards import is_index_name

if TYPE_CHECKING:
    import torch
    import zarr


select = checkpoint.match_names


def _is_model(repo: Repo, rel: str, path: str, rev: str | None) -> bool:
    """A folder or a sharded checkpoint's index, rather than one checkpoint file."""
    if is_index_name(rel) or rel == ".":
        return True
    if rev is None:
        return os.path.isdir(path)
    kind = repo.git("cat-file", "-t", f"{rev}:{rel}", check=False).strip()
    return kind == b"tree"


def read_manifest(path: str, rev: str | None = "HEAD") -> tuple[Manifest, Repo, ReadThrough]:
    """The manifest of ``path`` at ``rev``, its repository, and its objects (cache + remote).

    ``path`` may be a model folder or a sharded checkpoint's ``*.index.json``: the
    manifest then holds every parameter of every shard (see theta_zarr.shards).
    """
    start = os.path.abspath(path)
    while not os.path.isdir(start) and os.path.dirname(start) != start:
        # a revision's file may live in a folder the working tree no longer has
        start = os.path.dirname(start)
    repo = Repo.discover(start)
    settings = repo.settings()
    objects = read_through(repo)
    cache = objects.cache
    rel = repo.relative(path)
    if _is_model(repo, rel, path, rev):
        side = WORKTREE if rev is None else rev
        return open_model(repo, rel.replace(os.sep, "/"), side, objects).manifest, repo, objects
    if rev is not None:
        return manifest_at(repo, rel, rev), repo, objects
    if not os.path.isfile(path):
        raise GitInputError(f"{rel}: no such file in the working tree")
    if repo.attribute([rel], "filter").get(rel) != DRIVER:  # as manifest_at refuses it
        raise ManifestError(f"{rel}: not tracked by theta-zarr "
                            f"(no filter={DRIVER} for it in .gitattributes)")
    with builtins.open(path, "rb") as f:
        if looks_like_manifest(f.read(64)):
            f.seek(0)
            return Manifest.from_bytes(f.read(), rel), repo, objects
        f.seek(0)
        source = checkpoint.open_source(f, cache, name=rel, path=os.path.abspath(path))
        return checkpoint.clean(source, settings, cache).manifest, repo, objects


def open(path: str, rev: str | None = "HEAD") -> zarr.Group:  # noqa: A001 - the module's verb
    """A read-only Zarr group: one array per parameter, chunks read on demand.

    ``path`` is a checkpoint file, a model folder or a sharded checkpoint's index
    (every shard's parameters in one group).

    Chunks the cache lacks come from the repository's remote, once each.
    """
    from .zarrstore import open_group

    manifest, _, objects = read_manifest(path, rev)
    return open_group(manifest, objects)


def load_state_dict(path: str, rev: str | None = "HEAD",
                    include: Sequence[str] | str | None = None,
                    device: str | torch.device = "cpu", *, ref: str | None = None,
                    options: dict[str, str] | None = None,
                    cache: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a tracked checkpoint, by flat name, in file order.

    ``path`` is a tracked checkpoint file, or a model: a folder (resolved as
    transformers does: model.safetensors, model.safetensors.index.json,
    pytorch_model.bin, pytorch_model.bin.index.json, ..., then diffusers'
    diffusion_pytorch_model.*) or an index (``*.index.json``, a variant's
    ``*.index.fp16.json``),
    whose shards are read as one state dict; ``include`` then selects across shards.
    Only the chunks of the selected parameters are read (and fetched from the
    remote, concurrently, when the cache lacks them).  With ``ref``, ``path`` is a
    remote URL (``options``: its non-secret options) and the checkpoint is the one
    that ref names (``theta-zarr publish`` or a distributed save); fetched
    chunks go to ``cache`` (default ``$THETA_ZARR_CACHE`` or ``~/.cache/theta-zarr``).
    The keys are those ``torch.load`` returns for a state dict (dotted paths for nested
    objects), tied aliases included; tensors sharing a storage in the file share memory
    here too.  A distributed checkpoint's non-tensor items are left out.  Raises
    ``ValueError`` for ``ref`` with a ``rev`` other than the default, ``RefError``
    for a missing ref, and ``ManifestError`` for a ref naming a set or an
    ``include`` that matches no parameter (as ``materialize --include`` refuses it).
    """
    if ref is not None:
        if rev != "HEAD":  # a remote ref is not in any git history: rev would be ignored
            raise ValueError(f"load_state_dict: rev={rev!r} and ref={ref!r} exclude each other "
                             "(ref reads a remote, rev a git repository)")
        manifest, objects = read_ref(path, ref, options, cache)
        return tensors_from_manifest(manifest, objects, include, device,
                                     source=f"ref {ref} in {path}")
    manifest, repo, objects = read_manifest(path, rev)
    return tensors_from_manifest(manifest, objects, include, device,
                                 workers=repo.settings().workers, source=os.fspath(path))


def newest_ref(url: str, folder: str = "", options: dict[str, str] | None = None
               ) -> str | None:
    """The newest ref in ``folder`` of the remote ``url`` (``options``: its non-secret
    options), or None when the folder holds none: where a training job resumes from::

        ref = theta_zarr.newest_ref("s3://team-models/llm", "run7/")
        if ref is not None:
            theta_zarr.dcp.load(state, storage_reader=ThetaZarrReader(REMOTE, ref=ref))

    ``folder`` is a ref folder (``run7/``, ``run7``; ``""``: the refs with no folder);
    its subfolders are not looked into.  Newest is by the time the remote last wrote the
    ref, ties broken by natural name order (``step-1000`` after ``step-999``): the ref a
    ``publish`` to that folder takes as its delta base.  ``theta-zarr ls URL run7/`` lists
    them.  Raises ``RefError`` for a folder that is no valid ref name and theta-zarr's
    ``StorageError`` (a ``RemoteError``, ``bucket ... does not exist``) when the remote
    cannot be read: a missing bucket is never taken for a first start.
    """
    from .refs import check_ref_name
    from .refs import newest_ref as newest
    from .remote import RemoteSpec
    from .sync import SyncRemote

    name = folder.strip("/")
    if name:
        check_ref_name(name)
    remote = SyncRemote.open(RemoteSpec("newest_ref", url, dict(options or {})), need="read")
    return newest(remote.refs, f"{name}/" if name else "")


def read_ref(url: str, ref: str, options: dict[str, str] | None = None,
             cache: str | None = None) -> tuple[Manifest, ReadThrough]:
    """The manifest a remote ref names and its objects (cache + remote)."""
    from .cache import Cache
    from .manifest import ManifestError
    from .remote import RemoteSpec
    from .sync import SyncRemote, default_cache_dir

    remote = SyncRemote.open(RemoteSpec("load_state_dict", url, dict(options or {})))
    _, target = remote.resolve(ref)
    if not isinstance(target, Manifest):
        raise ManifestError(f"ref {ref} in {remote.url} names a set of files; "
                            "pull it with theta-zarr pull")
    return target, ReadThrough(Cache(default_cache_dir(cache)), lambda: remote.objects)


def tensors_from_manifest(manifest: Manifest, objects: ReadThrough,
                          include: Sequence[str] | str | None = None,
                          device: str | torch.device = "cpu",
                          workers: int = 4, source: str = "checkpoint"
                          ) -> dict[str, torch.Tensor]:
    """The tensors of ``manifest`` matching ``include``, by flat name, in file order.

    What ``load_state_dict`` returns once it has the manifest: keys and aliasing as
    there (tied aliases and slices of one stored parameter share memory); each tensor
    has the parameter's shape and its own dtype (bytes are never cast) and lives on
    ``device``.  Only the selected parameters' chunks are read, the missing ones fetched
    first through ``objects``; ``workers`` threads read ahead; ``source`` names the
    checkpoint in errors.  Raises ManifestError when ``include`` is given and matches no
    parameter, MissingObjectError when chunks the cache lacks have no remote to come from,
    and ObjectError (QuarantinedError) for a corrupt cached chunk.
    """
    import torch

    from . import formats
    from .formats.torch import view_tensor

    try:
        views = formats.tensor_views(manifest)
    except formats.FormatError as e:
        raise ManifestError(f"{source}: {e}") from None
    keys = select(views, include)
    if include is not None and not keys:  # a typo must not look like an empty checkpoint
        globs = [include] if isinstance(include, str) else list(include)
        raise ManifestError(f"{source}: no parameter matches "
                            f"{', '.join(globs) or 'an empty include'}")
    names = list(dict.fromkeys(views[k].param for k in keys))
    checkpoint.ensure_local(manifest, objects.cache, objects.fetcher, names=names,
                            source=source)
    reader = ChunkReader(objects.cache, workers=workers)
    bases = {}
    for name in names:
        entry = manifest.params[name]
        dtype = by_name(entry.dtype)
        t = torch.empty(entry.shape, dtype=dtype.torch)
        if t.numel():
            reader.read_into(entry, t.view(-1).view(torch.uint8).numpy())
        bases[name] = t.to(device) if str(device) != "cpu" else t
    # Tied aliases and slices of one storage share memory, as torch.load gives them.
    return {k: view_tensor(bases[views[k].param], views[k]) for k in keys}
