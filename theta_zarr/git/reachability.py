"""Reachability from git: every manifest blob any ref, reflog, stash or the index can reach.

gc and fsck keep these manifests' chunks; the core gc module never runs git itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..chunking import digest
from ..gc import _DIGEST_BYTES, Roots
from ..manifest import MAGIC, Manifest, ManifestError
from ..remote import RemoteSpec
from ..storage import BlobStore
from ..wording import quote_path
from .files import objects_with_paths, read_blobs, small_blobs
from .remotes import feeding_git_remotes
from .repo import GitError, Repo

#: what gc and fsck walk: every ref (HEAD too), every reflog entry (stashes too), the index
ALL_ROOTS = ("--all", "--reflog", "--indexed-objects")


def git_roots(repo: Repo, roots: Roots, parse: bool = False) -> None:
    """Every manifest blob reachable from refs, reflogs (stashes) and the index, the
    commits ``git replace`` hides and their replacements alike.

    Digests are taken by pattern, so even a manifest that does not parse keeps its
    chunks; with ``parse`` (fsck) each blob is also parsed and validated, and one
    that a checkout would refuse is recorded in ``roots.problems``.
    """
    for sha, name, data in _manifest_blobs(repo, roots.problems if parse else None):
        roots.add_chunks((d.decode() for d in _DIGEST_BYTES.findall(data)),
                         f"{name} (git blob {sha[:10]})")
        roots.manifests.add(digest(data))


def _manifest_blobs(repo: Repo, problems: list[str] | None
                    ) -> Iterator[tuple[str, str, bytes]]:
    """(blob id, its path as git lists it, its bytes) of every manifest blob ``ALL_ROOTS``
    reach; with ``problems``, each is parsed and one a checkout would refuse is named there."""
    paths = objects_with_paths(repo, *ALL_ROOTS, unnamed=True)
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
                if problems is not None:
                    try:
                        Manifest.from_bytes(data, f"{name} (git blob {sha[:10]})")
                    except ManifestError as e:
                        problems.append(f"unusable manifest {e}")
                yield sha, name, data


# -- what a remote should hold: fsck --remote ----------------------------------------------
@dataclass
class Pushed:
    """What of this clone's history a theta remote should hold, as ``git lfs push`` and
    the pre-push hook decide it: the chunks of the commits ``revs`` (rev-list arguments)
    reach.  ``git_remotes``: the git remotes whose pushes send chunks there; their
    remote-tracking refs (``refs/remotes/<name>/*``) are ``revs``.  Where none does
    (chunks go there only through ``git theta-zarr push``), ``revs`` are every branch
    and tag and HEAD: what this clone cannot tell apart is expected there."""

    revs: list[str]
    git_remotes: list[str]


def pushed_revs(repo: Repo, spec: RemoteSpec) -> Pushed:
    """The commits whose chunks the theta remote ``spec`` should hold (:class:`Pushed`)."""
    names = feeding_git_remotes(repo, spec)
    if names:
        return Pushed([f"--remotes={name}" for name in names], names)
    head = repo.git("rev-parse", "--verify", "--quiet", "HEAD", check=False).strip()
    return Pushed(["--branches", "--tags"] + (["HEAD"] if head else []), [])


def split_roots(repo: Repo, pushed: Pushed, needed: Roots, local: Roots) -> None:
    """The manifest blobs :func:`git_roots` walks, parsed (problems in ``local``), in two:
    those a commit ``pushed.revs`` reach holds go to ``needed`` (each chunk's user named
    with the oldest such commit that adds the blob), the rest (commits not pushed yet, the
    index, stashes, reflogs) to ``local``."""
    theirs = set(objects_with_paths(repo, *pushed.revs, unnamed=True)) if pushed.revs else set()
    adds = commits_adding(repo, pushed.revs) if theirs else {}
    for sha, name, data in _manifest_blobs(repo, local.problems):
        chunks = (d.decode() for d in _DIGEST_BYTES.findall(data))
        if sha in theirs:
            commit = f" in commit {adds[sha][-1][:10]}" if adds.get(sha) else ""
            needed.add_chunks(chunks, f"{name}{commit} (git blob {sha[:10]})")
            needed.manifests.add(digest(data))
        else:
            local.add_chunks(chunks, f"{name} (git blob {sha[:10]})")
            local.manifests.add(digest(data))


def commits_adding(repo: Repo, revs: list[str]) -> dict[str, list[str]]:
    """{blob id: the ids of the commits ``revs`` reach whose change (against the first
    parent; a root commit's whole tree) puts that blob at a path}, newest first."""
    if not revs:
        return {}
    out = repo.git("--no-replace-objects", "log", "--no-color", "--no-show-signature", "--raw",
                   "-r", "--root", "--no-renames", "--no-abbrev", "--diff-merges=first-parent",
                   "--format=%x00%H", *revs, "--")
    found: dict[str, list[str]] = {}
    commit = ""
    for line in out.decode("utf-8", "replace").splitlines():
        if line.startswith("\0"):
            commit = line[1:].strip()
            continue
        fields = line.partition("\t")[0].split()
        if commit and len(fields) == 5 and fields[3].strip("0"):
            found.setdefault(fields[3], []).append(commit)
    return found


@dataclass
class NotPushed:
    """Chunks a theta remote lacks that no pushed commit needs, by where they come from:
    ``refs`` (branches and tags, short names) hold the ``commits`` that add the
    ``chunks``; ``detached`` commits only a detached HEAD reaches add ``detached_chunks``;
    ``elsewhere``: chunks that no commit of a branch, tag or HEAD adds (the index,
    stashes, reflogs, another git remote's branches)."""

    refs: list[str] = field(default_factory=list)
    commits: set[str] = field(default_factory=set)
    chunks: set[str] = field(default_factory=set)
    detached: set[str] = field(default_factory=set)
    detached_chunks: set[str] = field(default_factory=set)
    elsewhere: set[str] = field(default_factory=set)


def not_pushed(repo: Repo, pushed: Pushed, lacking: set[str]) -> NotPushed:
    """Which commits, branches and tags need ``lacking`` (chunks a remote lacks that no
    commit ``pushed.revs`` reach needs): :class:`NotPushed`."""
    result = NotPushed()
    if not lacking:
        return result
    adds = commits_adding(repo, ["--all", "--not", *pushed.revs])
    shas = small_blobs(repo, sorted(adds))
    by_commit: dict[str, set[str]] = {}
    for sha, data in zip(shas, read_blobs(repo, shas), strict=True):
        named = {d.decode() for d in _DIGEST_BYTES.findall(data)} & lacking
        for commit in adds[sha] if named else ():
            by_commit.setdefault(commit, set()).update(named)

    def reached(*revs: str) -> set[str]:
        return set(repo.git("--no-replace-objects", "rev-list", *revs, "--not", *pushed.revs,
                            "--").decode().split())

    on_refs = reached("--branches", "--tags") & by_commit.keys()
    detached = not repo.git("symbolic-ref", "--quiet", "HEAD", check=False).strip()
    head = repo.git("rev-parse", "--verify", "--quiet", "HEAD", check=False).strip()
    on_head = (reached("HEAD") & by_commit.keys()) - on_refs if detached and head else set()
    for commit in on_refs:
        result.commits.add(commit)
        result.chunks |= by_commit[commit]
    for commit in on_head:
        result.detached.add(commit)
        result.detached_chunks |= by_commit[commit]
    result.detached_chunks -= result.chunks
    result.elsewhere = lacking - result.chunks - result.detached_chunks
    ordered = sorted(on_refs)
    refs: dict[str, None] = {}
    for start in range(0, len(ordered), 256):  # a short command line however many there are
        contains = [a for c in ordered[start:start + 256] for a in ("--contains", c)]
        refs.update(dict.fromkeys(repo.git(
            "for-each-ref", "--format=%(refname:short)", *contains, "refs/heads",
            "refs/tags").decode().split()))
    result.refs = list(refs)
    return result


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
