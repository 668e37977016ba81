"""``materialize``: real checkpoints from the manifests a lazy checkout left behind.

A full rebuild replaces the working-tree manifest (the file then cleans to the
same manifest, so git sees no change).  A partial selection (``--include``)
always goes to a separate file, never over the tracked one.
"""

from __future__ import annotations

import os

from .. import checkpoint
from ..manifest import Manifest, ManifestError, looks_like_manifest
from ..streams import write_atomic
from .files import manifest_at, tracked_files
from .push import read_through
from .repo import GitError, Repo


def _partial_name(path: str) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}.partial{ext}"


def _write_atomic(path: str, manifest: Manifest, objects, settings) -> None:
    write_atomic(path, lambda out: checkpoint.smudge(manifest, out, settings, name=path,
                                                     cache=objects.cache, fetch=objects.fetch))


def _index_blob(repo: Repo, rel: str) -> bytes | None:
    try:
        return repo.git("cat-file", "blob", f":{rel}")
    except GitError:
        return None


def materialize(paths: list[str], include: list[str] | None, output: str | None) -> list[str]:
    repo = Repo.discover()
    settings = repo.settings()
    objects = read_through(repo)
    if paths:
        targets = [os.path.relpath(os.path.abspath(p), repo.top) for p in paths]
    else:
        targets = [f.path for f in tracked_files(repo) if f.manifest is not None]
    if output and len(targets) != 1:
        raise ValueError("--output needs exactly one PATH")
    done = []
    for rel in targets:
        full = os.path.join(repo.top, rel)
        text = None
        if os.path.exists(full):
            with open(full, "rb") as f:
                data = f.read(64)
                if looks_like_manifest(data):
                    f.seek(0)
                    text = f.read()
                    manifest = Manifest.from_bytes(text, rel)
                elif include:
                    manifest = manifest_at(repo, rel, None)
                else:
                    done.append(f"{rel}: already materialized")
                    continue
        else:
            manifest = manifest_at(repo, rel, None)
        if include:
            names = checkpoint.matching_params(manifest, include)
            if not names:
                raise ManifestError(f"{rel}: no parameter matches {', '.join(include)}")
            dest = output or os.path.join(repo.top, _partial_name(rel))
            _write_atomic(dest, checkpoint.select(manifest, names), objects, settings)
            done.append(f"{rel}: {len(names)} of {len(manifest.params)} parameters -> "
                        f"{os.path.relpath(dest)}")
        elif output is None and text is not None and text == _index_blob(repo, rel):
            # Let git write it, so the index records the real file's stat data
            # and `git status` stays clean (git trusts a size change over content).
            # git skips an up-to-date file, so the manifest goes first; on failure
            # it is put back.
            os.unlink(full)
            try:
                repo.git("-c", "theta-zarr.lazy=false", "checkout-index", "-u", "--force",
                         "--", rel, env={"GIT_THETA_ZARR_SKIP_SMUDGE": "0"})
            except BaseException:
                with open(full, "wb") as f:
                    f.write(text)
                raise
            done.append(f"{rel}: materialized ({len(manifest.params)} parameters)")
        else:
            _write_atomic(output or full, manifest, objects, settings)
            done.append(f"{rel}: materialized ({len(manifest.params)} parameters)")
    return done
