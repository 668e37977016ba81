"""Reachability from git: every manifest blob any ref, reflog, stash or the index can reach.

gc and fsck keep these manifests' chunks; the core gc module never runs git itself.
"""

from __future__ import annotations

import re

from ..chunking import digest
from ..gc import _DIGEST_BYTES, Roots
from ..manifest import MAGIC, Manifest, ManifestError
from ..remote import RemoteSpec
from ..storage import BlobStore
from ..wording import quote_path
from .files import objects_with_paths, read_blobs, small_blobs
from .remotes import feeding_git_remotes
from .repo import GitError, Repo


def git_roots(repo: Repo, roots: Roots, parse: bool = False) -> None:
    """Every manifest blob reachable from refs, reflogs (stashes) and the index, the
    commits ``git replace`` hides and their replacements alike.

    Digests are taken by pattern, so even a manifest that does not parse keeps its
    chunks; with ``parse`` (fsck) each blob is also parsed and validated, and one
    that a checkout would refuse is recorded in ``roots.problems``.
    """
    paths = objects_with_paths(repo, "--all", "--reflog", "--indexed-objects", unnamed=True)
    if not paths:
        return
    blobs = small_blobs(repo, list(paths))
    for start in range(0, len(blobs), 512):
        group = blobs[start:start + 512]
        for sha, data in zip(group, read_blobs(repo, group), strict=True):
            head = data[:1024]
            if MAGIC in head or b'"theta_zarr"' in head:
                # a path as git lists it: a tab, newline or non-UTF-8 byte quoted
                name = quote_path(paths[sha]) if paths[sha] else "a blob a ref names"
                where = f"{name} (git blob {sha[:10]})"
                if parse:
                    try:
                        Manifest.from_bytes(data, where)
                    except ManifestError as e:
                        roots.problems.append(f"unusable manifest {e}")
                roots.add_chunks((d.decode() for d in _DIGEST_BYTES.findall(data)), where)
                roots.manifests.add(digest(data))


def is_shallow(repo: Repo) -> bool:
    """A shallow clone (``git clone --depth``, CI's default checkout): history stops at its
    boundary, so what older commits need cannot be seen from here."""
    return repo.git("rev-parse", "--is-shallow-repository").strip() == b"true"


def remote_heads(repo: Repo, spec: RemoteSpec) -> dict[str, str | GitError]:
    """``git ls-remote --heads --tags`` of each git remote whose pushes send chunks to
    ``spec``: its output, or the error listing it.  gc takes this before it plans and
    again once its garbage is in the trash: a difference is a git push that landed
    meanwhile, whose commits may reuse that garbage (its pre-push found it there)."""
    heads: dict[str, str | GitError] = {}
    for name in feeding_git_remotes(repo, spec):
        try:
            heads[name] = repo.git("ls-remote", "--heads", "--tags", name).decode()
        except GitError as e:
            heads[name] = e
    return heads


def heads_moved(before: dict[str, str | GitError], after: dict[str, str | GitError]
                ) -> str | None:
    """Why the git remotes' refs (``remote_heads``) differ between two listings, or None."""
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if isinstance(old, GitError) and isinstance(new, GitError):
            continue  # never listed (gc went on with --ignore-stale-refs): nothing to compare
        if isinstance(new, GitError):
            return f"cannot list the refs of git remote {name!r} again ({new})"
        if old != new:
            return f"git remote {name!r} changed while gc ran (a push landed)"
    return None


def stale_views(repo: Repo, spec: RemoteSpec,
                heads: dict[str, str | GitError] | None = None) -> list[str]:
    """Why this clone's view of the git remotes that push to ``spec`` may be older than
    the remotes themselves: one line per git remote whose branches or tags (``git
    ls-remote``, or ``heads`` from ``remote_heads``) differ from what this repository has
    fetched, or that cannot be listed.

    gc --remote keeps what this repository can reach; commits another clone pushed
    (and the objects they name) are only known after a fetch.  A remote ref whose
    history this repository's refs already reach is no problem, whatever this clone
    names it (a tag a ``--no-tags`` clone never fetched, a branch merged into one it has).
    """
    problems = []
    for name, output in (heads if heads is not None else remote_heads(repo, spec)).items():
        if isinstance(output, GitError):
            problems.append(f"cannot list the refs of git remote {name!r} ({output})")
            continue
        listed = output.splitlines()
        for line in listed:
            sha, _, ref = line.partition("\t")
            if ref.endswith("^{}"):
                continue
            local = (f"refs/remotes/{name}/{ref[len('refs/heads/'):]}"
                     if ref.startswith("refs/heads/") else ref)
            have = repo.git("rev-parse", "--verify", "--quiet", local, check=False)
            if have.decode().strip() == sha or _reached(repo, sha):
                continue
            if have.strip():
                why = f"{ref} has moved since the last fetch (run 'git fetch {name}')"
            else:  # a single-branch or --no-tags clone: a plain fetch never takes it
                why = (f"{ref} is not fetched into this clone (run 'git fetch {name} "
                       f"--tags +refs/heads/*:refs/remotes/{name}/*')")
            problems.append(f"git remote {name!r}: {why}")
            break
    return problems


def _reached(repo: Repo, sha: str) -> bool:
    """This repository has commit ``sha`` and its refs (and reflogs) reach all of its
    history: gc keeps what it needs."""
    if not repo.git("rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}", check=False):
        return False
    return repo.git("--no-replace-objects", "rev-list", "-n", "1", sha, "--not", "--all",
                    "--reflog", check=False).strip() == b""


#: where on a remote each git repository that pushes to it leaves a marker per root
#: commit of its history (``repositories/<root commit id>``): gc --remote in a clone
#: that lacks one of those histories would delete the chunks only it names
REPOSITORIES_PREFIX = "repositories/"
_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def mark_repository(repo: Repo, blobs: BlobStore, tips: list[str]) -> None:
    """Leave on the remote ``blobs`` a marker of each root commit of ``tips``' history (a
    request to see it is there; a put where it is not).  Commit ids only: no path, name
    or URL of the repository goes to the remote."""
    out = repo.git("rev-list", "--max-parents=0", *tips, "--", check=False).decode().split()
    for root in out:
        key = REPOSITORIES_PREFIX + root
        if _COMMIT_ID.fullmatch(root) and not blobs.exists(key):
            blobs.put(key, [root.encode() + b"\n"])


def foreign_repositories(repo: Repo, blobs: BlobStore) -> list[str]:
    """The root commits marked on the remote ``blobs`` (``mark_repository``) that no ref
    of this clone reaches: other repositories push to the same remote, and gc here would
    delete the chunks only their commits name."""
    marked = [info.key[len(REPOSITORIES_PREFIX):] for info in blobs.list(REPOSITORIES_PREFIX)]
    marked = [m for m in marked if _COMMIT_ID.fullmatch(m)]
    if not marked:
        return []
    ours = set(repo.git("rev-list", "--max-parents=0", "--all", "--",
                        check=False).decode().split())
    return sorted(m for m in marked if m not in ours)
