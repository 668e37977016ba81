"""Which files git tracks through theta-zarr, and their manifests at a revision or the index."""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass

from .. import lfs
from ..manifest import MAX_MANIFEST_BLOB, Manifest, ManifestError, looks_like_manifest
from .install import DRIVER
from .repo import GitError, GitInputError, Repo


@dataclass
class TrackedFile:
    """One file git routes through theta-zarr's filter, in the index or a revision's tree.

    ``path``: relative to the top of the work tree, ``/``-separated; ``blob``: the id (hex)
    of the blob git stores for it; ``manifest``: that blob read as a manifest, None when
    it is none (a file committed before it was tracked, or a git-lfs pointer: ``lfs``).
    """

    path: str
    blob: str
    manifest: Manifest | None  # None: the blob is not a manifest (committed before tracking)
    size: int = 0  # the blob's size in bytes
    lfs: lfs.LfsPointer | None = None  # the git-lfs pointer the blob is, if it is one
    link: str | None = None  # where it points, when git stores a symbolic link here


#: git's mode of a symbolic link: its blob is the link's target, and no filter sees it
LINK_MODE = "120000"


def tree_entries(repo: Repo, rev: str | None) -> list[tuple[str, str, str]]:
    """(path, blob id, mode) for every file in the index (rev None) or a revision's tree."""
    if rev is None:
        raw = repo.git("ls-files", "-z", "-s")
        items = []
        for rec in raw.split(b"\0"):
            if rec:
                meta, _, path = os.fsdecode(rec).partition("\t")
                mode, blob, stage = meta.split()
                if stage in ("0", "2"):
                    items.append((path, blob, mode))
        return items
    raw = repo.git("ls-tree", "-r", "-z", "--full-tree", repo.commit(rev))
    items = []
    for rec in raw.split(b"\0"):
        if rec:
            meta, _, path = os.fsdecode(rec).partition("\t")
            mode, kind, blob = meta.split()
            if kind == "blob":
                items.append((path, blob, mode))
    return items


def revision_range(include: list[str], exclude: list[str]) -> tuple[list[str], bytes]:
    """The arguments and standard input of a ``git rev-list`` (or ``git log``) of what
    ``include`` reaches and ``exclude`` does not: options (``--branches``,
    ``--remotes=origin``) stay on the command line, revisions go through ``--stdin``
    once each (``^REV`` for an excluded one), so a push of thousands of tags never makes
    a command line too long for the system."""
    def revs(names: list[str]) -> list[str]:
        return [n for n in dict.fromkeys(names) if not n.startswith("-")]
    excluded = [n for n in exclude if n.startswith("-")]
    args = [n for n in include if n.startswith("-")] + ["--stdin"] + \
        (["--not", *excluded] if excluded else [])
    lines = revs(include) + ["^" + n for n in revs(exclude)]
    return args, "".join(n + "\n" for n in lines).encode()


def objects_with_paths(repo: Repo, *rev_list_args: str, unnamed: bool = False,
                       input: bytes | None = None) -> dict[str, str]:
    """{object id: path} from ``git rev-list --objects ARGS`` (trees and blobs with a path;
    with ``unnamed``, every object, those without a path (commits, root trees, a blob a
    tag or a replace ref names) mapped to ``""``).

    History is walked as git's own gc and push walk it, without ``git replace``
    replacements: the commits they hide are still on their branches (and pushed), and
    the replacements are listed through their ``refs/replace/`` refs.  ``input``: git's
    standard input (with ``--stdin`` among the arguments, see :func:`revision_range`)."""
    out = repo.git("--no-replace-objects", "rev-list", "--objects", *rev_list_args,
                   input=input)
    found: dict[str, str] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        sha, _, path = line.partition(" ")
        if path or unnamed:
            found.setdefault(sha, path)
    return found


def object_info(repo: Repo, objects: list[str]) -> list[tuple[str, int]]:
    """(type, size in bytes) of each object id through one ``git cat-file --batch-check``;
    ("missing", 0) for an id git does not have.  An id names its own content, never
    what ``git replace`` puts in its place (as for :func:`read_blobs`)."""
    if not objects:
        return []
    out = repo.git("--no-replace-objects", "cat-file", "--batch-check=%(objecttype) %(objectsize)",
                   input="".join(o + "\n" for o in objects).encode()).decode().splitlines()
    if len(out) != len(objects):
        raise GitError(f"cannot read the type and size of {len(objects)} object(s)")
    info = []
    for line in out:
        kind, _, size = line.partition(" ")
        info.append((kind, int(size)) if size.isdigit() else ("missing", 0))
    return info


def small_blobs(repo: Repo, objects: list[str], limit: int = MAX_MANIFEST_BLOB) -> list[str]:
    """The ids among ``objects`` that are blobs of at most ``limit`` bytes: those worth
    reading to see whether they are manifests (none is larger), so memory stays flat when
    a tracked path holds a checkpoint committed before it was tracked."""
    return [o for o, (kind, size) in zip(objects, object_info(repo, objects), strict=True)
            if kind == "blob" and size <= limit]


def read_blobs(repo: Repo, blobs: list[str]) -> list[bytes]:
    """Blob contents through one ``git cat-file --batch`` (``small_blobs`` picks which): each
    id's own content, not a ``git replace`` replacement's (listed on its own)."""
    if not blobs:
        return []
    out = repo.git("--no-replace-objects", "cat-file", "--batch",
                   input="".join(b + "\n" for b in blobs).encode())
    result, pos = [], 0
    for _ in blobs:
        nl = out.index(b"\n", pos)
        header = out[pos:nl].split()
        if len(header) < 3:
            raise GitError(f"cannot read blob {header[0].decode() if header else '?'}")
        size = int(header[2])
        result.append(out[nl + 1:nl + 1 + size])
        pos = nl + 1 + size + 1
    return result


#: the index entries of a path asked for, in order: merged (stage 0), then, during a merge
#: conflict, ours (2) and theirs (3), as ``:N:PATH`` names them
STAGES = (":", ":2:", ":3:")


class IndexBlobs:
    """The blobs git's index holds, by path, through one long-running ``git cat-file
    --batch`` instead of a ``git cat-file blob :PATH`` process per path (the filter asks
    for every file it cleans; a process each was most of the time of a ``git add`` of
    many small checkpoints).

    ``cat-file`` reads the index once, at its first ``:PATH``; the process is started
    again whenever the index file's stat changed since, so each answer is the index as
    it is on disk, as a process per path gave it.  A path holding a newline (which a
    ``--batch`` line cannot carry) is asked by a process of its own."""

    def __init__(self, repo: Repo):
        self.repo = repo
        self._proc: subprocess.Popen | None = None
        self._seen: tuple | None = None
        self._lock = threading.Lock()

    def _index_stat(self) -> tuple | None:
        try:
            st = os.stat(self.repo.index_path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def get(self, path: str) -> bytes | None:
        """The blob the index holds for ``path``: its stage-0 entry, else (a merge conflict
        being resolved) ours, stage 2, else theirs, stage 3, whose manifest the resolved
        file keeps its chunk shapes from; None when it holds none."""
        if "\n" in path or not self.repo.index_path:
            return self._one(path)
        with self._lock:
            seen = self._index_stat()
            if self._proc is None or seen != self._seen:
                self.close()
                self._proc = subprocess.Popen(
                    ["git", "cat-file", "--batch"], cwd=self.repo.top, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                self._seen = seen
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                for stage in STAGES:
                    proc.stdin.write(os.fsencode(f"{stage}{path}") + b"\n")
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                    if line.endswith((b" missing\n", b" ambiguous\n")):
                        continue  # no entry at this stage (new, or unmerged)
                    _, kind, size = line.split()
                    data = proc.stdout.read(int(size) + 1)
                    if len(data) != int(size) + 1:
                        break
                    return data[:-1] if kind == b"blob" else None
                else:
                    return None
            except (OSError, ValueError):
                pass
            self.close()  # a batch that broke off: ask once on its own
        return self._one(path)

    def _one(self, path: str) -> bytes | None:
        for stage in STAGES:
            try:
                return self.repo.git("cat-file", "blob", f"{stage}{path}")
            except GitError:
                continue
        return None

    def close(self) -> None:
        """End the ``cat-file`` process (it ends on its own when this process does)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
            proc.wait()


def matches(path: str, spec: str) -> bool:
    """``path`` is ``spec`` or lies under the folder ``spec`` (both relative to the top,
    ``/``-separated; ``.`` is the top), as git's pathspecs match."""
    spec = spec.rstrip("/")
    return spec in (".", "") or path == spec or path.startswith(spec + "/")


def tracked_files(repo: Repo, rev: str | None = None, paths: list[str] | None = None
                  ) -> list[TrackedFile]:
    """The files theta-zarr tracks in the index (or at ``rev``), each with its manifest
    when its blob is one; ``paths`` keeps those :func:`matches` (files, folders)."""
    entries = tree_entries(repo, rev)
    if paths:
        entries = [e for e in entries if any(matches(e[0], p) for p in paths)]
    attrs = repo.attribute([p for p, _, _ in entries], "filter")
    ours = [(p, b, m) for p, b, m in entries if attrs.get(p) == DRIVER]
    sizes = [size for _, size in object_info(repo, [b for _, b, _ in ours])]
    small = [b for (_, b, _), size in zip(ours, sizes, strict=True) if size <= MAX_MANIFEST_BLOB]
    data = dict(zip(small, read_blobs(repo, small), strict=True))
    files = []
    for (path, blob, mode), size in zip(ours, sizes, strict=True):
        head = data.get(blob, b"")
        if mode == LINK_MODE:
            files.append(TrackedFile(path, blob, None, size,
                                     link=head.decode("utf-8", "replace")))
            continue
        manifest = Manifest.from_bytes(head, path) if looks_like_manifest(head[:64]) else None
        pointer = lfs.parse(head) if manifest is None else None
        files.append(TrackedFile(path, blob, manifest, size, pointer))
    return files


def outside_sparse_checkout(repo: Repo) -> set[str]:
    """The index's paths git keeps out of the work tree (the skip-worktree bit, as a
    sparse checkout sets it for files outside its cone) that are absent there: git checks
    none of them out, and neither does ``materialize``.  A skip-worktree file that is
    present (the bit set by hand, to keep local edits) is not among them."""
    out = repo.git("ls-files", "-z", "-t")
    hidden = (os.fsdecode(rec[2:]) for rec in out.split(b"\0") if rec.startswith(b"S "))
    return {p for p in hidden if not os.path.lexists(os.path.join(repo.top, p))}


def link_description(target: bytes | str) -> str:
    """What a symbolic link under a tracked pattern is: git stores the link itself (its
    target's path), never runs a filter on it, and a clone gets the link, not the file."""
    if isinstance(target, bytes):
        target = target.decode("utf-8", "replace")
    return (f"a symbolic link to {target}: git stores the link, not the checkpoint it "
            "points to; copy the file in its place to store it")


def worktree_state(repo: Repo, path: str, sparse: set[str] | frozenset[str] = frozenset()
                   ) -> str:
    """``lazy`` (a manifest is checked out), ``materialized``, ``sparse`` (``path`` is in
    ``sparse``, from :func:`outside_sparse_checkout`) or ``missing`` (also where a folder
    stands in its place, which ``git status`` shows as deleted)."""
    full = os.path.join(repo.top, path)
    if path in sparse:
        return "sparse"
    if not os.path.isfile(full):
        return "missing"
    with open(full, "rb") as f:
        return "lazy" if looks_like_manifest(f.read(64)) else "materialized"


def manifest_at(repo: Repo, path: str, rev: str | None = "HEAD") -> Manifest:
    """The manifest of ``path`` at ``rev`` (None: the index)."""
    spec = f":{path}" if rev is None else f"{rev}:{path}"
    commit = repo.commit(rev) if rev is not None else None
    try:
        data = repo.git("cat-file", "blob", spec if commit is None else f"{commit}:{path}")
    except GitError:
        where = "the index (not a tracked file)" if rev is None else f"revision {rev}"
        raise GitInputError(f"{path}: no such file in {where}") from None
    if not looks_like_manifest(data[:64]):
        pointer = lfs.parse(data)
        if pointer is not None:  # an LFS-era version (migrate-from-lfs.md)
            raise ManifestError(f"{spec}: {pointer.describe()}, not by theta-zarr "
                                "('git theta-zarr migrate' converts it)")
        listed = repo.git("ls-files", "-s", "--", path) if commit is None else \
            repo.git("ls-tree", commit, "--", path)
        if listed.startswith(LINK_MODE.encode() + b" "):
            raise ManifestError(f"{spec}: {link_description(data)}")
        raise ManifestError(f"{spec}: not tracked by theta-zarr (no manifest in git)")
    return Manifest.from_bytes(data, spec)
