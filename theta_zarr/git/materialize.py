"""``materialize``: real checkpoints from the manifests a lazy checkout left behind.

A full rebuild replaces the working-tree manifest (the file then cleans to the
same manifest, so git sees no change).  A partial selection (``--include``)
always goes to a separate file, never over the tracked one.
"""

from __future__ import annotations

import os
import posixpath

from .. import checkpoint
from ..manifest import Manifest, ManifestError, looks_like_manifest
from ..shards import Model, is_index_name, restrict_index
from ..streams import write_atomic
from ..wording import counted
from .direct import Pending, checkout_through_git, write_files
from .files import manifest_at, outside_sparse_checkout, tracked_files
from .index import IndexLocked, IndexUnsupported
from .install import DRIVER, configured_executable
from .models import list_folder, open_model
from .push import read_through
from .repo import GitError, GitInputError, Repo
from .sides import INDEX, tracked_by_us


def _partial_name(path: str) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}.partial{ext}"


def _write_atomic(path: str, manifest: Manifest, objects, settings) -> None:
    write_atomic(path, lambda out: checkpoint.smudge(manifest, out, settings, name=path,
                                                     cache=objects.cache, fetch=objects.fetcher))


def _index_blob(repo: Repo, rel: str) -> bytes | None:
    try:
        return repo.git("cat-file", "blob", f":{rel}")
    except GitError:
        return None


def _model_at(repo: Repo, rel: str, objects) -> Model | None:
    """The sharded model ``rel`` names (a folder or an index), as git's index holds it."""
    full = os.path.join(repo.top, rel)
    if not (is_index_name(rel) or os.path.isdir(full)):
        return None
    rel = "" if rel == "." else rel.replace(os.sep, "/")
    if not is_index_name(rel) and not any(map(is_index_name, list_folder(repo, rel, INDEX) or [])):
        return None  # no sharded model here: a folder of checkpoints (subfolders, several)
    model = open_model(repo, rel, INDEX, objects)
    return model if model.index is not None else None


def _partial_model(repo: Repo, model: Model, include: list[str], output: str | None,
                   objects, settings) -> str:
    """The selected tensors of a sharded model as a folder a loader can use: the shards
    that hold any, an index naming exactly those, and the folder's other files."""
    assert model.index is not None
    names = set(checkpoint.matching_params(model.manifest, include))
    if not names:
        raise ManifestError(f"{model.label}: no parameter matches {', '.join(include)}")
    folder = posixpath.dirname(model.index.path)
    dest = output or os.path.join(repo.top, (folder or "model") + ".partial")
    kept = {}
    for shard, manifest in sorted(model.shard_manifests.items()):
        these = [n for n in manifest.params if n in names and model.shard_of[n] == shard]
        if these:
            name = posixpath.relpath(shard, folder) if folder else shard
            kept[name] = checkpoint.select(manifest, these)
            _write_atomic(os.path.join(dest, *name.split("/")), kept[name], objects, settings)
    index_name = posixpath.basename(model.index.path)
    data = restrict_index(model.index, kept)
    write_atomic(os.path.join(dest, index_name), lambda f: f.write(data))
    others = [n for n in list_folder(repo, folder, INDEX) or [] if n != index_name]
    plain = set(others) - set(tracked_by_us(repo, [posixpath.join(folder, n) for n in others]))
    for n in sorted(plain - {posixpath.basename(s) for s in model.shard_manifests}):
        blob = _index_blob(repo, posixpath.join(folder, n))
        if blob is not None and not is_index_name(n):
            write_atomic(os.path.join(dest, n), lambda f, b=blob: f.write(b))
    return (f"{model.label}: {len(names)} of {counted(len(model.manifest.params), 'parameter')}"
            f" in {counted(len(kept), 'shard')} -> {_shown(dest)}")


def _check_output(output: str, folder: bool, force: bool) -> None:
    """Refuse an ``--output`` that exists (unless ``force``) or is the wrong kind, as
    ``pull`` does: a partial selection is one file, or a folder for a sharded model."""
    if os.path.isdir(output) and not folder:
        raise ValueError(f"{_shown(output)} is a folder; give the file to write")
    if os.path.lexists(output) and folder and not os.path.isdir(output):
        raise ValueError(f"{_shown(output)} is a file; a sharded model's selection is a "
                         "folder")
    if folder and os.path.isdir(output) and os.listdir(output) and not force:
        raise ValueError(f"{_shown(output)} is not an empty folder; give a new one, or "
                         "--force to overwrite the files it would hold")
    if not folder and os.path.lexists(output) and not force:
        raise ValueError(f"{_shown(output)} already exists; give a new path, or --force "
                         "to overwrite it")


def _one_file(output: str, rels: list[str]) -> None:
    """Refuse to write several checkpoints (a folder's) to the one ``--output`` file."""
    if len(rels) > 1:
        raise ValueError(f"--output {_shown(output)} takes one checkpoint, and the PATH "
                         f"holds {len(rels)}: {', '.join(rels)}")


def _in_sparse_checkout(repo: Repo, expanded: list[tuple[str, bool]], output: str | None,
                        named: bool) -> list[tuple[str, bool]]:
    """``expanded`` without the files a sparse checkout keeps out of the work tree, as
    ``git checkout -- .`` leaves them out; a file PATH names there (or, where PATHs were
    ``named``, every file they expand to) is a GitInputError, as git says no pathspec
    matches it, unless ``output`` writes it elsewhere."""
    sparse = outside_sparse_checkout(repo) if expanded else set()
    for rel, this in expanded:
        if this and rel in sparse and not output:
            folder = posixpath.dirname(rel.replace(os.sep, "/")) or "."
            raise GitInputError(f"{rel}: outside the sparse checkout (git checks out no file "
                                f"there): 'git sparse-checkout add {folder}' first, or "
                                "write it elsewhere with --output")
    kept = [(rel, this) for rel, this in expanded if rel not in sparse or (this and output)]
    if named and expanded and not kept:
        raise GitInputError(f"{expanded[0][0]}: outside the sparse checkout (git checks out "
                            "no file there): 'git sparse-checkout add' its folder first")
    return kept


def materialize(paths: list[str], include: list[str] | None, output: str | None,
                force: bool = False) -> list[str]:
    """Rebuild the checkpoints at ``paths`` (every tracked one when empty) from their
    manifests; with ``include``, only the matching parameters, into ``output`` or a
    ``.partial`` copy.  Returns one line per path.  Raises ValueError (an existing
    ``output`` without ``force``, a pattern that matches nothing) and the core's errors."""
    repo = Repo.discover()
    if configured_executable(repo.top) is None:
        raise GitInputError("theta-zarr is not installed for this repository (git would "
                            "write manifests, not checkpoints): run 'git theta-zarr install'")
    if output and len(paths) != 1:  # named, never inferred from the tracked files
        raise ValueError("--output needs exactly one PATH")
    settings = repo.settings()
    objects = read_through(repo)
    if paths:
        targets = [repo.relative(p, inside=True) for p in paths]
    else:
        targets = [f.path for f in tracked_files(repo) if f.manifest is not None]
    done = []
    expanded: list[tuple[str, bool]] = []  # (path, whether PATH named this very file)
    for rel in targets:
        folder = os.path.isdir(os.path.join(repo.top, rel))
        # a folder is every tracked file under it (a model's shards, its tokenizer, an
        # adapter beside it); its model decides only which shards a selection reads
        model = _model_at(repo, rel, objects) if include or not folder else None
        if model is not None and include:
            if output:
                _check_output(output, folder=True, force=force)
            done.append(_partial_model(repo, model, include, output, objects, settings))
        elif model is not None:
            expanded += [(shard, False) for shard in sorted(model.shard_manifests)]
        elif folder:  # a model folder, a Trainer checkpoint-N/
            found = [f.path for f in tracked_files(repo, None, [rel.replace(os.sep, "/")])
                     if f.manifest is not None]
            if not found:
                raise ValueError(f"{rel}: no checkpoint theta-zarr stores in this folder")
            expanded += [(f, False) for f in found]
        else:
            expanded.append((rel, bool(paths)))
    expanded = _in_sparse_checkout(repo, expanded, output, bool(paths))
    jobs = []
    for rel, named in expanded:
        full = os.path.join(repo.top, rel)
        text = None
        if os.path.isdir(full) and not (include or output):  # git status: deleted
            raise GitInputError(f"{rel}: a folder stands where this tracked file belongs; "
                                "move it away, then materialize the file")
        if os.path.isfile(full):
            with open(full, "rb") as f:
                data = f.read(64)
                if looks_like_manifest(data):
                    f.seek(0)
                    text = f.read()
                    manifest = Manifest.from_bytes(text, rel)
                elif include or output:  # a copy elsewhere: from the index's manifest
                    manifest = manifest_at(repo, rel, None)
                elif repo.attribute([rel], "filter").get(rel) != DRIVER:
                    raise ValueError(f"{rel}: no file theta-zarr tracks matches it")
                else:
                    done.append(f"{rel}: already materialized")
                    continue
        else:
            manifest = manifest_at(repo, rel, None)
        jobs.append((rel, named, text, manifest))
    if include:
        # every selection is checked before anything is written: a file PATH names must
        # match, a file of a folder (or of the whole repository) may not, one of them must
        chosen = []
        for rel, named, _, manifest in jobs:
            names = checkpoint.matching_params(manifest, include)
            if not names and named:
                raise ManifestError(f"{rel}: no parameter matches {', '.join(include)}")
            if names:
                chosen.append((rel, manifest, names))
        if not chosen and jobs:
            where = ", ".join(paths) if paths else "any tracked checkpoint"
            raise ManifestError(f"{where}: no parameter matches {', '.join(include)}")
        if output and chosen:
            _one_file(output, [rel for rel, _, _ in chosen])
            _check_output(output, folder=False, force=force)
        for rel, manifest, names in chosen:
            dest = output or os.path.join(repo.top, _partial_name(rel))
            _write_atomic(dest, checkpoint.select(manifest, names), objects, settings)
            done.append(f"{rel}: {len(names)} of {counted(len(manifest.params), 'parameter')} -> "
                        f"{_shown(dest)}")
        return done
    if output and jobs:
        _one_file(output, [rel for rel, _, _, _ in jobs])
    for rel, _, text, manifest in jobs:
        full = os.path.join(repo.top, rel)
        if output is None and text is not None and text == _index_blob(repo, rel):
            # Written straight from the cache, its stat data recorded in the index, so
            # `git status` stays clean; git's own pipe only where the index refuses.
            checkpoint.ensure_local(manifest, objects.cache, objects.fetcher, source=rel)
            try:
                write_files(repo, [Pending(rel, text, manifest)], objects.cache,
                            settings.workers)
            except IndexLocked as e:  # git's pipe needs the lock too: say so, as git does
                raise GitInputError(f"{rel}: not materialized: {e} (run this again once it "
                                    "has finished; if none is running, one that was killed "
                                    "left the file: remove it)") from None
            except IndexUnsupported:
                checkout_through_git(repo, rel, text)
            done.append(f"{rel}: materialized ({counted(len(manifest.params), 'parameter')})")
        else:
            if output:
                _check_output(output, folder=False, force=force)
            _write_atomic(output or full, manifest, objects, settings)
            params = counted(len(manifest.params), "parameter")
            done.append(f"{rel}: {params} -> {_shown(output)}" if output
                        else f"{rel}: materialized ({params})")
    return done


def _shown(path: str) -> str:
    """A written path as the user would type it: relative when inside the current folder,
    else absolute (``-o /tmp/x`` from the repository is ``/tmp/x``, not ``../../x``)."""
    rel = os.path.relpath(path)
    outside = rel == os.pardir or rel.startswith(os.pardir + os.sep)
    return os.path.abspath(path) if outside else rel
