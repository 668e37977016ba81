"""``track``/``untrack``: the .gitattributes lines that route files through theta-zarr."""

from __future__ import annotations

import os
import tempfile

from .install import DRIVER
from .repo import git

ATTRS = f"filter={DRIVER} diff={DRIVER} merge={DRIVER} -text"


def escape_pattern(pattern: str) -> str:
    """gitattributes splits on whitespace: spell spaces as a bracket class (as git-lfs does).

    Raises ValueError for what a .gitattributes line cannot say (gitattributes(5)): an
    empty pattern, a control character, a negative pattern (git ignores them, with a
    warning in every later command) and a leading ``#`` (a comment).
    """
    if any(ch in pattern for ch in "\n\r\t"):
        raise ValueError(f"pattern {pattern!r} contains a control character")
    if not pattern.strip():
        raise ValueError("an empty pattern names no file")
    if pattern.startswith("!"):
        raise ValueError(f"pattern {pattern!r}: git ignores negative patterns in "
                         ".gitattributes; untrack the pattern, or track narrower ones")
    if pattern.startswith("#"):
        raise ValueError(f"pattern {pattern!r} would be a comment in .gitattributes; "
                         f"write '\\{pattern}' for a name that starts with #")
    return pattern.replace(" ", "[[:space:]]")


def _read(path: str) -> list[str]:
    """The lines of ``path`` without their endings ([] without the file)."""
    return [line.rstrip("\r\n") for line in _read_ended(path)]


def _read_ended(path: str) -> list[str]:
    """The lines of ``path`` with their endings, as the file has them (CRLF kept)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return f.read().splitlines(keepends=True)


def _write(path: str, lines: list[str]) -> None:
    """Write ``lines`` (each with its ending, as ``_read_ended`` gives them; one without
    gets the file's own: CRLF where most of its lines end so) under a temporary name,
    then rename it into place."""
    crlf = sum(ln.endswith("\r\n") for ln in lines) * 2 > len(lines) and len(lines) > 0
    eol = "\r\n" if crlf else "\n"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write("".join(ln if ln.endswith("\n") else ln + eol for ln in lines))
    os.replace(tmp, path)


def _attr(word: str) -> str:
    """The attribute a word of a .gitattributes line sets: ``diff`` of ``diff=x``,
    ``-diff`` and ``!diff`` (gitattributes(5))."""
    return word.lstrip("-!").split("=", 1)[0]


def _is_ours(line: str) -> bool:
    """A line (no comment) that routes its pattern through theta-zarr's filter."""
    return not line.lstrip().startswith("#") and f"filter={DRIVER}" in line.split()[1:]


def tracked_patterns(top: str) -> list[str]:
    """The patterns of the lines of ``top``'s .gitattributes that set ``filter=theta-zarr``,
    in file order, spelled as the file spells them (spaces as ``[[:space:]]``); [] without
    the file.  Only the top-level file is read, and comment lines are skipped
    (gitattributes(5))."""
    return [line.split()[0] for line in _read(os.path.join(top, ".gitattributes"))
            if _is_ours(line)]


#: files git (and theta-zarr) read from the work tree as text: routed through the filter,
#: a clone would check out their manifests, and every attribute with them
FORBIDDEN = (".gitattributes", ".thetazarr")


def check_not_forbidden(patterns: list[str]) -> None:
    """ValueError if a pattern matches .gitattributes or .thetazarr, by git's own matching
    (``git check-attr`` in an empty repository holding only these lines), as git-lfs's
    ``track`` refuses them."""
    with tempfile.TemporaryDirectory(prefix="theta-zarr-track-") as tmp:
        git("init", "-q", tmp)
        for pattern in patterns:
            with open(os.path.join(tmp, ".gitattributes"), "w", encoding="utf-8") as f:
                f.write(f"{pattern} filter={DRIVER}\n")
            out = git("check-attr", "-z", "filter", "--", *FORBIDDEN, cwd=tmp).split(b"\0")
            hit = [os.fsdecode(out[i]) for i in range(0, len(out) - 2, 3)
                   if out[i + 2].decode() == DRIVER]
            if hit:
                raise ValueError(f"pattern {unescape(pattern)!r} matches {hit[0]}, which must "
                                 "stay plain text in git: track narrower patterns "
                                 "(such as '*.safetensors')")


def unescape(pattern: str) -> str:
    """A pattern as ``escape_pattern`` was given it: ``[[:space:]]`` back to a space."""
    return pattern.replace("[[:space:]]", " ")


def check_matches_files(pattern: str) -> None:
    """ValueError for a pattern of the top-level .gitattributes that can match no file:
    one ending in ``/`` (gitattributes(5): a folder's attributes do not reach the files
    in it, ``dir/**`` does) or one with a ``..`` component (git matches paths inside the
    work tree and never resolves ``..``)."""
    if pattern.endswith("/"):
        raise ValueError(f"pattern {pattern!r} names a folder, and git gives a folder's "
                         f"attributes to none of its files: track '{pattern}**'")
    if ".." in pattern.split("/"):
        raise ValueError(f"pattern {pattern!r} reaches above the top of the work tree, "
                         "where git tracks no file")


def track(top: str, patterns: list[str]) -> list[str]:
    """Add a line per new pattern; returns the patterns newly added, or whose line gained
    attributes.  A line of the pattern that routes it through the filter but lacks the
    diff or merge driver (or ``-text``), as a hand-written one may, gets what it lacks:
    git's plain diff and merge handled those files.  The file keeps its line endings.
    Raises ValueError for a pattern a .gitattributes line cannot say or that can match
    no file."""
    path = os.path.join(top, ".gitattributes")
    lines = _read_ended(path)
    for pattern in patterns:
        check_matches_files(pattern)
    check_not_forbidden([escape_pattern(p) for p in patterns])
    ours = {}  # pattern -> index of its (last) line of ours
    for i, line in enumerate(lines):
        if _is_ours(line):
            ours[line.split()[0]] = i
    added = []
    for pattern in patterns:
        esc = escape_pattern(pattern)
        at = ours.get(esc)
        if at is None:
            lines.append(f"{esc} {ATTRS}")
            ours[esc] = len(lines) - 1
            added.append(esc)
            continue
        words = lines[at].split()
        lacking = [a for a in ATTRS.split() if a not in words]
        if lacking:  # what it sets otherwise for those attributes (diff=lfs, text) goes
            keys = {_attr(a) for a in lacking}
            ending = lines[at][len(lines[at].rstrip("\r\n")):]
            kept = [words[0], *(w for w in words[1:] if _attr(w) not in keys)]
            lines[at] = " ".join([*kept, *lacking]) + ending
            added.append(esc)
    if added:
        _write(path, lines)
    return added


def untrack(top: str, patterns: list[str]) -> list[str]:
    """Remove theta-zarr's lines for ``patterns`` from ``top``'s .gitattributes; returns the
    patterns of the lines removed (escaped, as in the file).

    Only lines setting ``filter=theta-zarr`` whose pattern is exactly one of ``patterns``
    (after ``escape_pattern``) go; other lines, git-lfs's among them, stay.  The file is
    rewritten (temp file, then rename) only when a line goes.  Raises ValueError, from
    ``escape_pattern``, for a pattern no .gitattributes line can say.
    """
    path = os.path.join(top, ".gitattributes")
    drop = {escape_pattern(p) for p in patterns}
    lines = _read_ended(path)
    keep = [ln for ln in lines if not (_is_ours(ln) and ln.split()[0] in drop)]
    removed = [ln.split()[0] for ln in lines if ln not in keep]
    if removed:
        _write(path, keep)
    return removed
