"""Living next to git-lfs: hand its pointers to it, and find the patterns it routes.

theta-zarr never reads git-lfs's object store itself: content behind a pointer
comes from ``git lfs smudge`` (which also downloads what is missing), so git-lfs's
own settings (``lfs.url``, ``lfs.storage``, credentials) apply.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import BinaryIO

from ..lfs import parse
from .attributes import pattern_key, read_lines
from .repo import Repo

#: what the messages tell a user who lacks git-lfs
INSTALL_HINT = "install git-lfs (https://git-lfs.com) and run 'git lfs install'"


class LfsError(ValueError):
    """git-lfs is missing or failed; the message says which file and why."""


def installed() -> bool:
    """True when ``git lfs`` can run (the ``git-lfs`` program is on PATH)."""
    return shutil.which("git-lfs") is not None


def smudge(top: str, path: str, text: bytes, out: BinaryIO, block: int = 1 << 20) -> int:
    """Stream the content behind the pointer ``text`` to ``out`` through ``git lfs smudge``.

    Returns the bytes written.  Raises LfsError when ``text`` is no pointer, git-lfs
    is not installed, fails (object missing locally and not downloadable) or gives a
    size other than the pointer's.
    """
    pointer = parse(text)
    if pointer is None:
        raise LfsError(f"{path}: not a git-lfs pointer")
    if not installed():
        raise LfsError(f"{path}: {pointer.describe()}, and git-lfs is not installed: "
                       f"{INSTALL_HINT}")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["git", "lfs", "smudge", "--", path], cwd=top,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(text)
            proc.stdin.close()
            written = 0
            while data := proc.stdout.read(block):
                out.write(data)
                written += len(data)
        finally:
            proc.stdout.close()
            rc = proc.wait()
        err.seek(0)
        lines = err.read().decode("utf-8", "replace").strip().splitlines()
    if rc != 0:
        why = lines[-1] if lines else f"exit status {rc}"
        raise LfsError(f"{path}: git lfs smudge failed for oid sha256:{pointer.oid[:12]}: {why}")
    if written != pointer.size:
        raise LfsError(f"{path}: git lfs smudge gave {written} bytes, the pointer says "
                       f"{pointer.size} (is the object fetched? try 'git lfs fetch')")
    return written


def routed_patterns(top: str) -> list[str]:
    """Patterns of the top-level .gitattributes whose last filter setting is ``lfs``, as
    git reads them (a quoted one unquoted), in the order of their first lines."""
    last: dict[str, tuple[str, str]] = {}  # pattern_key -> (pattern, filter)
    for line in read_lines(top):
        for attr in line.words:
            if attr.startswith("filter="):
                last[pattern_key(line.pattern)] = (line.pattern, attr.split("=", 1)[1])
            elif attr in ("-filter", "!filter"):
                last[pattern_key(line.pattern)] = (line.pattern, "")
    return [p for p, f in last.values() if f == "lfs"]


def lfs_files(repo: Repo, paths: list[str] | None = None) -> list[str]:
    """Index paths (all, or ``paths``) whose ``filter`` attribute is ``lfs`` right now."""
    if paths is None:
        paths = [p for p in os.fsdecode(repo.git("ls-files", "-z")).split("\0") if p]
    return [p for p, value in repo.attribute(paths, "filter").items() if value == "lfs"]


def takeover_warning(patterns: list[str], taken: list[str]) -> str:
    """What ``track`` says when patterns it added take files away from git-lfs."""
    shown = ", ".join(taken[:3]) + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
    pats = " ".join(f"--include '{p}'" for p in patterns)
    return (f"warning: {len(taken)} file(s) were stored by git-lfs (filter=lfs) and are now "
            f"routed to theta-zarr: {shown}. Their committed versions stay git-lfs pointers "
            "(a checkout hands those to git-lfs). To convert them: "
            f"git theta-zarr migrate {pats} (the current tree, one new commit; add --ref "
            "BRANCH to rewrite history instead); see docs/migrate-from-lfs.md")
