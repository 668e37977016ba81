"""Sharded models in a repository: find a model's index and shards at a revision, the
index or the working tree, and group a diff's files by the model they belong to."""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .. import checkpoint
from ..manifest import Manifest, ManifestError, looks_like_manifest
from ..remote import ReadThrough
from ..shards import (
    INDEX_SUFFIX,
    WEIGHT_FILES,
    WEIGHT_NAMES,
    Index,
    Model,
    combine,
    counterpart,
    index_paths,
    is_index_name,
    model_key,
    parse_index,
    single,
)
from .files import tree_entries
from .repo import GitError, Repo
from .sides import INDEX, WORKTREE, manifest_of, tracked_by_us

if TYPE_CHECKING:
    from ..diff import FileDiff


def read_file(repo: Repo, path: str, side: object) -> bytes | None:
    """A plain file's bytes at ``side`` (a revision, INDEX or WORKTREE), None if absent."""
    if side is WORKTREE:
        full = os.path.join(repo.top, path)
        if not os.path.isfile(full):
            return None
        with open(full, "rb") as f:
            return f.read()
    spec = f":{path}" if side is INDEX else f"{side}:{path}"
    try:
        return repo.git("cat-file", "blob", spec)
    except GitError:
        return None


def list_folder(repo: Repo, folder: str, side: object) -> list[str] | None:
    """Names of the files directly in ``folder`` at ``side``; None when it is no folder."""
    if side is WORKTREE:
        full = os.path.join(repo.top, folder)
        if not os.path.isdir(full):
            return None
        return sorted(n for n in os.listdir(full) if os.path.isfile(os.path.join(full, n)))
    prefix = f"{folder}/" if folder else ""
    if side is INDEX:
        out = os.fsdecode(repo.git("ls-files", "-z", "--", prefix or ".")).split("\0")
        names = [p[len(prefix):] for p in out if p]
        found = sorted(n for n in names if "/" not in n)
        return found if found or any(names) else None
    kind = repo.git("cat-file", "-t", f"{side}:{folder}", check=False).decode().strip()
    if kind != "tree":
        return None
    out = repo.git("ls-tree", "-z", f"{side}:{folder}")
    names = []
    for rec in os.fsdecode(out).split("\0"):
        meta, _, name = rec.partition("\t")
        if name and meta.split()[1] == "blob":
            names.append(name)
    return sorted(names)


def load_index(repo: Repo, path: str, side: object, objects=None) -> Index | None:
    """The sharded-checkpoint index at ``path`` on ``side``, None if absent.

    An index under a pattern theta-zarr tracks is stored as a manifest (opaque bytes):
    its text is rebuilt from its chunks first, with ``objects`` (a ReadThrough; the
    repository's cache and remote when None).  Raises ManifestError for a file that is
    no index, naming where it was read (``at REV``, ``in the index``...).
    """
    data = read_file(repo, path, side)
    if data is None:
        return None
    if looks_like_manifest(data[:64]):
        data = _rebuilt(repo, Manifest.from_bytes(data, f"{path} ({_side_name(side)})"),
                        path, objects)
    try:
        return parse_index(data, path)
    except ManifestError as e:
        raise type(e)(f"{e} ({_where(side)})") from None


def _rebuilt(repo: Repo, manifest: Manifest, path: str, objects=None) -> bytes:
    """The bytes of a small tracked file (an index) from its manifest."""
    if objects is None:
        from .push import read_through

        objects = read_through(repo)
    out = io.BytesIO()
    checkpoint.smudge(manifest, out, repo.settings(), name=path, cache=objects.cache,
                      fetch=objects.fetcher)
    return out.getvalue()


class ForeignShard(ManifestError):
    """A shard of a model that theta-zarr does not store on this side (missing, a
    git-lfs pointer, a file committed before it was tracked)."""


def _manifest(repo: Repo, path: str, side: object, objects) -> Manifest:
    m = manifest_of(repo, path, side, objects)
    if not isinstance(m, Manifest):
        what = "missing" if m is None else m.text
        raise ForeignShard(f"{path}: not a theta-zarr checkpoint ({what})")
    return m


def open_model(repo: Repo, path: str, side: object, objects=None) -> Model:
    """The model at ``path``: an index file, a folder holding one, or one checkpoint file.

    A folder is resolved as transformers does (WEIGHT_FILES in order), else by its one
    ``*.index.json`` or its one tracked checkpoint.
    """
    path = "" if path in (".", "") else path.rstrip("/")
    if is_index_name(path):
        index = load_index(repo, path, side, objects)
        if index is None:
            raise ManifestError(f"{path}: no such index {_where(side)}")
        shards = {}
        for s in index.shards:
            try:
                shards[s] = _manifest(repo, s, side, objects)
            except ManifestError as e:
                raise type(e)(f"{path}: shard {e}") from None
        try:
            return combine(index, shards)
        except ManifestError as e:  # a weight map that does not match its shards
            raise type(e)(f"{e} ({_where(side)})") from None
    names = list_folder(repo, path, side)
    if names is None:
        return single(path, _manifest(repo, path, side, objects))
    chosen = next((n for n in WEIGHT_FILES if n in names), None)
    if chosen is None:
        indexes = [n for n in names if is_index_name(n)]
        tracked = tracked_by_us(repo, [posixpath.join(path, n) for n in names])
        candidates = indexes or tracked
        if not candidates:
            raise ManifestError(f"{path or '.'}: holds no tracked checkpoint or index "
                                f"{_where(side)}; name the file or its index")
        if len(candidates) != 1:
            found = ", ".join(candidates)
            raise ManifestError(f"{path or '.'}: cannot tell which checkpoint is the model "
                                f"(candidates: {found}); name the file or its index")
        chosen = posixpath.basename(candidates[0])
    return open_model(repo, posixpath.join(path, chosen), side, objects)


def _where(side: object) -> str:
    """``in the working tree``, ``in the index`` or ``at REV``, for messages."""
    return f"at {side}" if side is not WORKTREE and side is not INDEX else f"in {_side_name(side)}"


def _side_name(side: object) -> str:
    return "the working tree" if side is WORKTREE else "the index" if side is INDEX else \
        str(side)


def model_keys(repo: Repo, path: str, side: object,
               memo: dict[tuple[str, object], list[Index]]) -> str | None:
    """The model a tracked file belongs to at ``side``: the one-file name of the index in
    its folder that names it as a shard (or the index itself, when it is tracked too), or
    its own name when such an index exists for it on this side (a model that is one file
    here); None for a file of no sharded model."""
    folder = posixpath.dirname(path)
    key = (folder, side)
    if key not in memo:
        names = list_folder(repo, folder, side) or []
        found = []
        for n in names:
            if is_index_name(n):
                try:
                    idx = load_index(repo, posixpath.join(folder, n), side)
                except ManifestError:
                    continue
                if idx is not None:
                    found.append(idx)
        memo[key] = found
    for idx in memo[key]:
        if path in idx.shards or path == idx.path:  # a shard, or the index (tracked too)
            return model_key(idx.path)
        if model_key(idx.path) == path:
            return path
    return None


def converted(repo: Repo, keys: Sequence[str], old: object, new: object) -> dict[str, str]:
    """Models among ``keys`` whose weights changed format in their folder: the old side's
    key -> the new side's key, where a folder's weights are ``pytorch_model.bin`` (or its
    shards) only on one side and ``model.safetensors`` (or its shards) only on the other:
    the Hub's conversion to safetensors, one model whose tensors stayed."""
    present = _presence(repo)
    pairs = {}
    for key in keys:
        other = counterpart(key)
        if other is not None and other in keys and present(key, old) and not present(key, new) and \
                present(other, new) and not present(other, old):
            pairs[key] = other
    return pairs


def _presence(repo: Repo) -> Callable[[str, object], bool]:
    """``present(key, side)``: whether the model ``key`` (its one file, or its index) is
    at ``side``; folders are listed once each."""
    listed: dict[tuple[str, object], list[str]] = {}

    def present(key: str, side: object) -> bool:
        folder, name = posixpath.split(key)
        if (folder, side) not in listed:
            listed[folder, side] = list_folder(repo, folder, side) or []
        return name in listed[folder, side] or \
            any(posixpath.basename(i) in listed[folder, side] for i in index_paths(key))

    return present


def moved_models(repo: Repo, groups: dict[str, list[str]], renamed: dict[str, str],
                 old: object, new: object) -> dict[str, str]:
    """Models whose folder git saw renamed (``git mv llama llama-v2``): the old side's key
    -> the new side's key, where git paired shard files of the one (``renamed``: old name
    -> new name) with shard files of the other, and each key is a model on its own side
    only.  Where the shards of one model went to several, the one that took most wins."""
    where = {f: key for key, files in groups.items() for f in files}
    votes: dict[str, dict[str, int]] = {}
    for a, b in renamed.items():
        was, now = where.get(a), where.get(b)
        if was is not None and now is not None and was != now:
            votes.setdefault(was, {}).setdefault(now, 0)
            votes[was][now] += 1
    present = _presence(repo)
    pairs: dict[str, str] = {}
    for was, counted in sorted(votes.items()):
        now = max(sorted(counted), key=counted.__getitem__)
        if now in pairs.values() or present(was, new) or present(now, old):
            continue  # still a model under its old name, or there before: two models
        pairs[was] = now
    return pairs


def group_by_model(repo: Repo, paths: list[str], old: object, new: object,
                   renamed: dict[str, str] | None = None
                   ) -> tuple[dict[str, list[str]], list[str], dict[str, str]]:
    """Split a diff's changed tracked files into models (key -> files) and single files,
    and say which models changed format in their folder (``converted``) or moved to
    another folder (``moved_models``, from git's ``renamed`` files): old key -> new key,
    for ``diff_groups``.  A one-file ``pytorch_model.bin`` or ``model.safetensors``
    whose folder's model changed format joins that model's files."""
    memo: dict[tuple[str, object], list[Index]] = {}
    models: dict[str, list[str]] = {}
    rest = []
    for path in paths:
        key = model_keys(repo, path, old, memo) or model_keys(repo, path, new, memo)
        if key is None:
            rest.append(path)
        else:
            models.setdefault(key, []).append(path)
    loose = [p for p in rest if posixpath.basename(p) in WEIGHT_NAMES]
    pairs = converted(repo, [*models, *loose], old, new) if models or len(loose) > 1 else {}
    for a, b in pairs.items():
        for key in (a, b):
            if key in loose:
                rest.remove(key)
                models[key] = [key]
    if renamed and models:
        moved = moved_models(repo, models, renamed, old, new)
        pairs.update({a: b for a, b in moved.items()
                      if a not in pairs and b not in pairs.values()})
    return models, rest, pairs


def with_shards(repo: Repo, paths: list[str], sides: Sequence[object]) -> list[str]:
    """``paths`` (git pathspecs) and the shards each ``*.index.json`` among them names on
    any of ``sides``, as literal pathspecs: a diff reports a sharded model under its
    index's path, so that path selects the model's files (an index that cannot be read
    adds nothing)."""
    out = list(paths)
    for path in paths:
        if not is_index_name(path):
            continue
        for side in sides:
            try:
                index = load_index(repo, path, side)
            except ManifestError:
                continue
            if index is not None:
                out += [f":(literal){s}" for s in index.shards
                        if f":(literal){s}" not in out]
    return out


def model_indexes(repo: Repo, paths: Sequence[str], sides: Sequence[object]) -> list[str]:
    """The indexes (``*.index.json``) among ``paths`` (files theta-zarr does not track)
    of models theta-zarr stores: each names a tracked shard on one of ``sides``.

    Raises ManifestError naming the file and the side when no side reads as an index
    and its folder holds tracked files there: a damaged index is said, not left out.
    """
    out = []
    for path in paths:
        if not is_index_name(path):
            continue
        shards: set[str] = set()
        damaged: list[tuple[object, ManifestError]] = []
        for side in sides:
            try:
                index = load_index(repo, path, side)
            except ManifestError as e:
                damaged.append((side, e))
                continue
            if index is not None:
                shards.update(index.shards)
        if shards:
            if tracked_by_us(repo, sorted(shards)):
                out.append(path)
            continue
        folder = posixpath.dirname(path)
        for side, error in damaged:
            names = list_folder(repo, folder, side) or []
            if tracked_by_us(repo, [posixpath.join(folder, n) for n in names]):
                raise error
    return out


def open_side(repo: Repo, key: str, side: object, objects) -> Model | None:
    """The model ``key`` at ``side``: its one file, else its index and shards; None if
    absent.  The one file comes first, as transformers loads it: a re-save that fits one
    file (a model cast to bf16) deletes the shards but leaves their index behind."""
    m = manifest_of(repo, key, side, objects)
    if isinstance(m, Manifest):
        return single(key, m)
    for index_path in index_paths(key):
        if read_file(repo, index_path, side) is not None:
            return open_model(repo, index_path, side, objects)
    return None


def diff_groups(repo: Repo, groups: dict[str, list[str]], old: object, new: object,
                numbers: bool = True, full_norm: bool = False, *, objects: ReadThrough,
                workers: int, pairs: dict[str, str] | None = None) -> list[FileDiff]:
    """One diff per model, over all its shards on each side; ``pairs`` (from
    ``group_by_model``): models that changed format or folder, diffed old key against
    new key."""
    if not groups:
        return []
    from ..diff import diff_models  # here: opening models (materialize) needs no diffs
    from .drivers import diff_sides

    out = []
    # a folder's weights converted (`pytorch_model.bin` shards to `model.safetensors`
    # ones): one model, each tensor compared with itself across the two formats
    pairs = pairs or {}
    for key in sorted(groups):
        if key in pairs.values():
            continue  # diffed with its other side's key
        new_key = pairs.get(key, key)
        files = sorted(groups[key] + (groups[new_key] if new_key != key else []))
        try:
            a, b = open_side(repo, key, old, objects), open_side(repo, new_key, new, objects)
        except ForeignShard:
            # a side theta-zarr does not store whole (git-lfs shards, shards committed
            # before tracking): file by file, as for any file not stored by theta-zarr;
            # an index theta-zarr does not track is no such file
            files = tracked_by_us(repo, files)
            out.extend(diff_sides(repo, files, old, new, numbers, full_norm,
                                  objects=objects, workers=workers))
            continue
        renamed = bool(a and b and new_key != key)
        # as git names a rename: OLD => NEW
        label = f"{a.label} => {b.label}" if renamed else (b or a).label if (a or b) else key
        fd = diff_models(a, b, objects, label, workers, full_norm, numbers)
        fd.renamed = renamed
        fd.names = (a.label, b.label) if renamed else None
        out.append(fd)
    return out


def blob_at(repo: Repo, path: str, side: object) -> str | None:
    """The blob id ``path`` has at a revision or in the index (None when absent)."""
    spec = f":{path}" if side is INDEX else f"{side}:{path}"
    out = repo.git("rev-parse", "--verify", "--quiet", spec, check=False).decode().strip()
    return out or None


def side_of_blob(repo: Repo, path: str, blob: str, prefer: list[object]) -> object | None:
    """Where ``path`` holds ``blob``: one of ``prefer`` (revisions or INDEX), HEAD, the
    index, or else the newest commit of any ref that has it there.

    git's external diff is given blob ids, not revisions; the revision of a blob is what
    tells which index and shards of its model sat next to it.
    """
    for side in [*prefer, "HEAD", INDEX]:
        if blob_at(repo, path, side) == blob:
            return side
    out = repo.git("log", "--all", "--format=%H", f"--find-object={blob}", "--", path,
                   check=False).decode().split()
    return next((c for c in out if blob_at(repo, path, c) == blob), None)


def renamed_base(repo: Repo, blob: str, revs: Sequence[str]) -> tuple[str | None, str]:
    """The first of ``revs`` whose tree holds ``blob``, and the path it has there
    (``(None, "")`` when none does): where the base git hands a merge driver under a
    file's new name sat under its old one (git's rename detection)."""
    for rev in revs:
        for name, held, _ in tree_entries(repo, rev):
            if held == blob:
                return rev, name
    return None, ""


def merge_bases(repo: Repo) -> list[str]:
    """The merge bases of HEAD and each commit ``git merge`` is merging (git names them
    to merge drivers in ``GITHEAD_<id>`` variables); none outside a ``git merge``."""
    out = []
    for var in os.environ:
        if var.startswith("GITHEAD_"):
            found = repo.git("merge-base", "--all", "HEAD", var[len("GITHEAD_"):], check=False)
            out += found.decode().split()
    return out


def moved_names(base: Manifest, sides: Sequence[Manifest]) -> list[str]:
    """Parameters every side holds and ``base`` lacks (``with_moved_base`` looks them up)."""
    return [n for n in sides[0].params
            if n not in base.params and all(n in s.params for s in sides[1:])]


def with_moved_base(repo: Repo, path: str, base: Manifest, moved: list[str],
                    rev: object | None, objects=None, holder: object = "HEAD",
                    base_path: str | None = None) -> Manifest:
    """``base`` (shard ``path`` at ``rev``) with the base version of each parameter in
    ``moved`` (:func:`moved_names`: every side holds it in ``path``, ``base`` lacks it): a
    re-save (``save_pretrained``) moved it there from another shard of the model at
    ``rev``.  Without it such a parameter looked added on every side, and a value
    strategy combined the sides with no base (one side's fine-tune averaged with the
    other's untouched copy).  ``base`` as it is when ``path`` is no shard of a model at
    ``rev`` or ``rev`` is None.  A shard file the re-save added has an empty ``base``
    (the sides' format, as a plan without a base takes), and its model is found on
    ``holder``, a side that holds it (ours).  ``base_path``: the name ``base`` has at
    ``rev`` where git paired ``path`` with a file of another name (a rename), whose model
    at ``rev`` holds the base versions."""
    if not moved or rev is None:
        return base
    key = model_keys(repo, base_path or path, rev, {}) or model_keys(repo, path, holder, {})
    if key is None or key in (path, base_path):
        return base
    try:
        model = open_side(repo, key, rev, objects)
    except ManifestError:
        return base
    if model is None:
        return base
    found = {n: model.manifest.params[n] for n in moved if n in model.manifest.params}
    return Manifest(base.format, {**base.params, **found}) if found else base


def _parent(repo: Repo, side: object) -> object | None:
    if side is INDEX:
        return "HEAD"
    out = repo.git("rev-parse", "--verify", "--quiet", f"{side}^", check=False).decode()
    return out.strip() or None


def ever_indexed(repo: Repo, path: str) -> bool:
    """Whether ``path``'s folder holds a ``*.index.json`` in the index or held one in any
    commit (``git log --all``): what ``model_keys`` can find on any side ``side_of_blob``
    can locate, asked before the (costly) search of history for a blob."""
    folder = posixpath.dirname(path)
    escaped = "".join("\\" + c if c in "*?[\\" else c for c in folder)
    specs = [f":(glob){escaped + '/' if folder else ''}*{INDEX_SUFFIX}",
             f":(glob){escaped + '/' if folder else ''}*.index.*.json"]  # variants
    if repo.git("ls-files", "-z", "--", *specs, check=False).strip(b"\0"):
        return True
    return bool(repo.git("log", "--all", "-1", "--format=%H", "--", *specs,
                         check=False).strip())


def driver_diff(repo: Repo, path: str, old_hex: str, new_hex: str, deleted: bool, objects,
                workers: int, new_path: str | None = None) -> FileDiff | None:
    """git's external diff of one shard, compared within its model; None when ``path``
    is no shard of a sharded model, or a side is the working tree (cleaning every other
    shard once per file would cost too much: ``git theta-zarr diff`` covers that).

    A shard added or deleted by a re-save has one side only; the other side of its
    model is then the parent of the commit that added it, or the commit that deleted it.
    ``new_path`` is the new name of a file git saw renamed (shards renumbered).
    """
    from ..diff import diff_models

    new_path = new_path or path
    has_old, has_new = bool(old_hex.strip("0")), bool(new_hex.strip("0"))
    if not has_new and not deleted:
        return None  # the working tree
    if not any(ever_indexed(repo, p) for p in {path, new_path}):
        return None  # no index ever sat beside it: a file of its own, found in two calls
    new = side_of_blob(repo, new_path, new_hex, []) if has_new else None
    old = None
    if has_old:
        old = side_of_blob(repo, path, old_hex, [f"{new}^"] if isinstance(new, str) else [])
        if old is None:
            return None
    if not has_new:
        indexed = blob_at(repo, path, INDEX)
        if indexed == old_hex and not os.path.lexists(os.path.join(repo.top, path)):
            return None  # deleted in the working tree (`git diff`): that side is the file
        if indexed is None and old == "HEAD":
            new = INDEX  # a deletion `git rm` (or `add -A`) staged: `git diff --cached`
        else:
            out = repo.git("log", "--all", "--format=%H", "--diff-filter=D", "--", path,
                           check=False).decode().split()
            new = next((c for c in out if blob_at(repo, path, f"{c}^") == old_hex), None)
    elif not has_old:
        old = _parent(repo, new)
    if new is None or old is None:
        return None
    memo: dict[tuple[str, object], list[Index]] = {}
    # each side's own model: a renamed folder (`git mv llama llama-v2`) holds its shards
    # under the other model's name on the new side
    old_key, new_key = model_keys(repo, path, old, memo), model_keys(repo, new_path, new, memo)
    lone = old_key is None and new_key is None
    if lone and (counterpart(path) is None or new_path != path):
        return None
    old_key = old_key or new_key or path
    new_key = new_key or old_key
    # a shard of weights converted to the other format (or the one file they were in):
    # its model's other side is the folder's weights under their other name
    keys = [k for k in {old_key, new_key} for k in (k, counterpart(k)) if k]
    pairs = converted(repo, keys, old, new)
    for was, now in pairs.items():
        if now == new_key or was == old_key:
            old_key, new_key = was, now
    if lone and not pairs:
        return None
    a = open_side(repo, old_key, old, objects)
    b = open_side(repo, new_key, new, objects)
    fd = diff_models(a, b, objects, path, workers, files=(path, new_path))
    name = path if new_path == path else f"{path} => {new_path}"
    labels = dict.fromkeys(m.label for m in (a, b) if m) or {old_key: None}
    fd.path = f"{name} (in {' => '.join(labels)})"
    return fd
