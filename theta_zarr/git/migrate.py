"""``migrate``: move files from git-lfs to theta-zarr, in the current tree or in history.

* Current tree (default): the patterns' ``filter=lfs`` lines in .gitattributes become
  theta-zarr lines, every file of the index stored as an LFS pointer under them is
  cleaned from its real content (the working-tree file when it is that content,
  else ``git lfs smudge``), and one commit records the change.  Older commits keep
  their pointers; they still check out through git-lfs.
* ``refs``: like ``git lfs migrate import``, every commit reachable from the named
  refs is rewritten: each LFS pointer under the patterns becomes the manifest of
  its content and each .gitattributes is rewritten the same way.  The stream goes
  through ``git fast-export --no-data | git fast-import`` (git's own history
  rewriting pair, as git-filter-repo uses), so merges, tags and messages are kept.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable

from .. import checkpoint
from ..lfs import LfsPointer, parse
from ..manifest import looks_like_manifest
from ..streams import write_atomic
from ..wording import quote_path, unquote_c
from . import lfs as git_lfs
from .attributes import ATTRS, escape_pattern, parse_line, pattern_key
from .files import read_blobs, small_blobs
from .filter_process import CONVERT_LFS_ENV
from .install import DRIVER
from .repo import Repo

Echo = Callable[[str], None]


class MigrateError(ValueError):
    """Migration cannot start or finish; the repository is left as it was."""


def rewrite_attributes(text: str, patterns: list[str]) -> str:
    """.gitattributes text with the patterns' ``filter=lfs`` lines replaced by theta-zarr's
    (a pattern is matched however a line spells it: ``parse_line``, ``pattern_key``)."""
    wanted = {pattern_key(p): p for p in patterns}
    given = text.split("\n")  # only LF ends a line for git
    if given[-1] == "":
        given.pop()
    lines = []
    for line in (ln.removesuffix("\r") for ln in given):
        parsed = parse_line(line)
        if parsed and pattern_key(parsed.pattern) in wanted and "filter=lfs" in parsed.words:
            continue
        lines.append(line)
    have = {pattern_key(parsed.pattern) for parsed in map(parse_line, lines)
            if parsed and f"filter={DRIVER}" in parsed.words}
    lines += [f"{escape_pattern(p)} {ATTRS}" for key, p in wanted.items() if key not in have]
    return "".join(ln + "\n" for ln in lines)


def _require_clean(repo: Repo) -> None:
    first = repo.first_change()
    if first is not None:
        raise MigrateError(f"the working tree has uncommitted changes ({first} ...): commit or "
                       "stash them before migrating")


def _patterns(repo: Repo, include: list[str] | None) -> list[str]:
    patterns = list(include or git_lfs.routed_patterns(repo.top))
    if not patterns:
        raise MigrateError("no pattern of .gitattributes is routed to git-lfs (filter=lfs); "
                       "name the files with --include PATTERN")
    return patterns


def _matching(repo: Repo, paths: list[str], patterns: list[str]) -> set[str]:
    """The paths the patterns match, by git's own attribute matching."""
    if not paths:
        return set()
    fd, attrs = tempfile.mkstemp(prefix="theta-zarr-migrate-", suffix=".attributes")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{escape_pattern(p)} theta-zarr-migrate\n" for p in patterns))
        values = repo.attribute(paths, "theta-zarr-migrate", attributes_file=attrs)
    finally:
        os.unlink(attrs)
    return {p for p, value in values.items() if value == "set"}


def _same_content(path: str, pointer: LfsPointer) -> bool:
    if not os.path.isfile(path) or os.path.getsize(path) != pointer.size:
        return False
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest() == pointer.oid


def migrate_tree(repo: Repo, include: list[str] | None, message: str | None,
                 commit: bool, echo: Echo) -> int:
    """Convert the current tree's LFS files under the patterns; returns how many."""
    _require_clean(repo)
    patterns = _patterns(repo, include)
    entries = [os.fsdecode(rec).split("\t", 1) for rec in
               repo.git("ls-files", "-z", "-s").split(b"\0") if rec]
    blobs = {path: meta.split()[1] for meta, path in entries}
    candidates = sorted(_matching(repo, list(blobs), patterns))
    pointer_sized = set(small_blobs(repo, [blobs[p] for p in candidates], limit=1023))
    small = [p for p in candidates if blobs[p] in pointer_sized]
    pointers = {p: ptr for p, data in zip(small, read_blobs(repo, [blobs[p] for p in small]),
                                          strict=True) if (ptr := parse(data)) is not None}
    attrs = os.path.join(repo.top, ".gitattributes")
    text = open(attrs, encoding="utf-8").read() if os.path.exists(attrs) else ""
    for path, pointer in sorted(pointers.items()):
        full = os.path.join(repo.top, path)
        if _same_content(full, pointer):
            continue
        with open(full, "rb") as f:
            pointer_text = f.read(1024)
        if parse(pointer_text) != pointer:
            pointer_text = pointer.to_bytes()
        echo(f"theta-zarr: {quote_path(path)}: fetching its content through git-lfs "
             f"({pointer.size} bytes)")
        write_atomic(full, lambda out, p=path, t=pointer_text: git_lfs.smudge(
            repo.top, p, t, out))
    with open(attrs, "w", encoding="utf-8") as f:
        f.write(rewrite_attributes(text, patterns))
    repo.git("add", "--renormalize", "--", ".gitattributes", *sorted(pointers),
             env={CONVERT_LFS_ENV: "1"})
    for path in sorted(pointers):
        echo(f"theta-zarr: {quote_path(path)}: git-lfs -> theta-zarr")
    if commit:
        msg = message or f"Move {', '.join(patterns)} from git-lfs to theta-zarr"
        repo.git("commit", "-q", "-m", msg)
    return len(pointers)


class _Converter:
    """LFS pointer blobs -> manifest blobs (each content cleaned once), and attributes."""

    def __init__(self, repo: Repo, patterns: list[str], echo: Echo):
        self.repo = repo
        self.patterns = patterns
        self.echo = echo
        self.settings = repo.settings()
        self.cache = checkpoint.open_cache(self.settings)
        self.done: dict[str, str] = {}
        self.converted = 0

    def _write_blob(self, data: bytes) -> str:
        return self.repo.git("hash-object", "-w", "--stdin", input=data).decode().strip()

    def attributes(self, blob: str) -> str:
        if blob not in self.done:
            (data,) = read_blobs(self.repo, [blob])
            text = rewrite_attributes(data.decode("utf-8", "replace"), self.patterns)
            self.done[blob] = self._write_blob(text.encode("utf-8"))
        return self.done[blob]

    def pointer(self, blob: str, path: str) -> str:
        if blob in self.done:
            return self.done[blob]
        (data,) = read_blobs(self.repo, [blob])
        if parse(data) is None or looks_like_manifest(data[:64]):
            self.done[blob] = blob
            return blob
        with tempfile.TemporaryFile(dir=self.cache.tmp_dir) as spool:
            git_lfs.smudge(self.repo.top, path, data, spool)
            spool.seek(0)
            source = checkpoint.open_source(spool, self.cache, name=path)
            manifest = checkpoint.clean(source, self.settings, self.cache).manifest
        self.done[blob] = self._write_blob(manifest.to_bytes())
        self.converted += 1
        self.echo(f"theta-zarr: {quote_path(path)} ({blob[:10]}): git-lfs -> theta-zarr")
        return self.done[blob]


def migrate_history(repo: Repo, include: list[str] | None, refs: list[str],
                    echo: Echo) -> int:
    """Rewrite every commit reachable from ``refs``; returns the pointers converted."""
    _require_clean(repo)
    if not git_lfs.installed():
        raise git_lfs.LfsError(f"rewriting history needs git-lfs for the content behind "
                               f"each pointer: {git_lfs.INSTALL_HINT}")
    patterns = _patterns(repo, include)
    full_refs = []
    for ref in refs:
        name = repo.git("rev-parse", "--symbolic-full-name", ref).decode().strip()
        if not name.startswith("refs/"):
            raise MigrateError(f"{ref}: not a branch or tag name (history is rewritten on refs)")
        full_refs.append(name)
    stream = repo.git("fast-export", "--no-data", "--signed-tags=strip",
                      "--tag-of-filtered-object=rewrite", "--reencode=no", *full_refs)
    paths = sorted({_unquote(line.split(b" ", 3)[3]) for line in _command_lines(stream)
                    if line.startswith(b"M ")})
    wanted = _matching(repo, paths, patterns)
    conv = _Converter(repo, patterns, echo)
    out = bytearray()
    pos = 0
    while pos < len(stream):
        nl = stream.index(b"\n", pos)
        line = stream[pos:nl]
        pos = nl + 1
        if line.startswith(b"data "):
            n = int(line[5:])
            out += line + b"\n" + stream[pos:pos + n]
            pos += n
            continue
        if line.startswith(b"M "):
            _, mode, blob, raw = line.split(b" ", 3)
            path = _unquote(raw)
            sha = blob.decode()
            if os.path.basename(path) == ".gitattributes":
                sha = conv.attributes(sha)
            elif path in wanted and mode != b"160000":
                sha = conv.pointer(sha, path)
            line = b" ".join((b"M", mode, sha.encode(), raw))
        out += line + b"\n"
    proc = subprocess.run(["git", "fast-import", "--force", "--quiet"], cwd=repo.top,
                          input=bytes(out), capture_output=True)
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise MigrateError(f"git fast-import failed: {msg[-1] if msg else proc.returncode}")
    head = repo.git("symbolic-ref", "-q", "HEAD", check=False).decode().strip()
    if head in full_refs:
        repo.git("reset", "-q", "--hard", "HEAD")
    return conv.converted


def _command_lines(stream: bytes) -> list[bytes]:
    """The command lines of a fast-export stream, ``data`` payloads skipped."""
    lines, pos = [], 0
    while pos < len(stream):
        nl = stream.index(b"\n", pos)
        line = stream[pos:nl]
        pos = nl + 1
        if line.startswith(b"data "):
            pos += int(line[5:])
        else:
            lines.append(line)
    return lines


def _unquote(raw: bytes) -> str:
    """A fast-export path: plain, or C-quoted (``"a\\tb"``, octal escapes for bytes)."""
    text = raw.decode("utf-8", "surrogateescape")
    quoted = unquote_c(text)
    if quoted is None:
        if text.startswith('"'):  # git writes no other quoting
            raise MigrateError(f"git fast-export wrote a path theta-zarr cannot read: {text}")
        return text
    return quoted[0]
