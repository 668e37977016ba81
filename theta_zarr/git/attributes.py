"""``track``/``untrack``: the .gitattributes lines that route files through theta-zarr."""

from __future__ import annotations

import os
import re
import tempfile
from typing import NamedTuple

from ..wording import unquote_c
from .install import DRIVER
from .repo import git

ATTRS = f"filter={DRIVER} diff={DRIVER} merge={DRIVER} -text"

#: what separates the words of a .gitattributes line (attr.c's ``blank``)
BLANKS = " \t\r\n"


def escape_pattern(pattern: str) -> str:
    """``pattern`` as a .gitattributes line spells it: C-quoted (gitattributes(5): a
    pattern that starts with a double quote is unquoted C-style, as git quotes paths)
    when it holds a space or starts with a double quote, as it is otherwise.

    Raises ValueError for what theta-zarr does not write into a .gitattributes line
    (gitattributes(5)): an empty pattern, a control character, a negative pattern (git
    ignores them, with a warning in every later command) and a leading ``#`` (a comment).
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
    if " " not in pattern and not pattern.startswith('"'):
        return pattern
    return '"' + pattern.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pattern_key(pattern: str) -> str:
    """What two patterns that name the same files have in common: a space spelled
    ``[[:space:]]`` (as git-lfs, and theta-zarr before it quoted patterns, wrote one) is a
    space."""
    return pattern.replace("[[:space:]]", " ")


class Line(NamedTuple):
    """A .gitattributes line as git reads it (attr.c's ``parse_attr_line``)."""

    spelled: str  #: the pattern as the line spells it (quoted, if it is)
    pattern: str  #: the pattern git matches paths with (unquoted)
    words: list[str]  #: the attributes it sets


def parse_line(line: str) -> Line | None:
    """``line`` (with or without its ending) as git reads it; None for a blank line or a
    comment.  Leading blanks are skipped; a pattern that starts with a double quote and
    is well-formed C quoting is unquoted, and the attributes may follow its closing
    quote directly; any other pattern (an unclosed quote too) runs to the first blank."""
    text = line.lstrip(BLANKS)
    if not text or text.startswith("#"):
        return None
    quoted = unquote_c(text)
    if quoted is not None:
        pattern, rest = quoted
        spelled = text[:len(text) - len(rest)]
    else:
        spelled = pattern = re.match(f"[^{BLANKS}]*", text).group()
        rest = text[len(spelled):]
    return Line(spelled, pattern, [w for w in re.split(f"[{BLANKS}]+", rest) if w])


def read_lines(top: str) -> list[Line]:
    """The lines of ``top``'s .gitattributes that give a pattern attributes, as git reads
    them (``parse_line``), in file order; [] without the file.  Only the top-level file is
    read; bytes that are not UTF-8 are read as U+FFFD."""
    path = os.path.join(top, ".gitattributes")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        parsed = [parse_line(line) for line in f.read().split("\n")]
    return [line for line in parsed if line is not None]


def _read_ended(path: str) -> list[str]:
    """The lines of ``path`` with their endings, as the file has them (CRLF kept); only
    ``\\n`` ends a line, as for git."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return re.findall(r"[^\n]*\n|[^\n]+\Z", f.read())


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


def _is_ours(line: Line | None) -> bool:
    """A parsed line that routes its pattern through theta-zarr's filter."""
    return line is not None and f"filter={DRIVER}" in line.words


def tracked_patterns(top: str) -> list[str]:
    """The patterns of the lines of ``top``'s .gitattributes that set ``filter=theta-zarr``,
    in file order, spelled as the file spells them (quoted, or with ``[[:space:]]``, where
    it is); [] without the file.  Only the top-level file is read, and comment lines are
    skipped (gitattributes(5))."""
    return [line.spelled for line in read_lines(top) if _is_ours(line)]


#: files git (and theta-zarr) read from the work tree as text: routed through the filter,
#: a clone would check out their manifests, and every attribute with them
FORBIDDEN = (".gitattributes", ".thetazarr")


def check_not_forbidden(patterns: list[str]) -> None:
    """ValueError if a pattern matches .gitattributes or .thetazarr, by git's own matching
    (``git check-attr`` in an empty repository holding only these lines), as git-lfs's
    ``track`` refuses them.  Raises ValueError, from ``escape_pattern``, for a pattern
    theta-zarr does not write."""
    with tempfile.TemporaryDirectory(prefix="theta-zarr-track-") as tmp:
        git("init", "-q", tmp)
        for pattern in patterns:
            with open(os.path.join(tmp, ".gitattributes"), "w", encoding="utf-8") as f:
                f.write(f"{escape_pattern(pattern)} filter={DRIVER}\n")
            out = git("check-attr", "-z", "filter", "--", *FORBIDDEN, cwd=tmp).split(b"\0")
            hit = [os.fsdecode(out[i]) for i in range(0, len(out) - 2, 3)
                   if out[i + 2].decode() == DRIVER]
            if hit:
                raise ValueError(f"pattern {pattern!r} matches {hit[0]}, which must "
                                 "stay plain text in git: track narrower patterns "
                                 "(such as '*.safetensors')")


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
    """Add a line per new pattern (quoted where it must be: ``escape_pattern``); returns
    the patterns, as given, newly added or whose line gained attributes.  A pattern has a
    line already where one routes the same pattern through the filter, however it is
    spelled (quoted, or ``[[:space:]]`` for a space: ``pattern_key``).  Such a line that
    lacks the diff or merge driver (or ``-text``), as a hand-written one may, gets what it
    lacks, its pattern spelled as it was: git's plain diff and merge handled those files.
    The file keeps its line endings.  Raises ValueError for a pattern a .gitattributes
    line cannot say or that can match no file."""
    path = os.path.join(top, ".gitattributes")
    lines = _read_ended(path)
    for pattern in patterns:
        check_matches_files(pattern)
    check_not_forbidden(patterns)
    ours = {}  # pattern_key -> index of its (last) line of ours
    for i, line in enumerate(lines):
        parsed = parse_line(line)
        if _is_ours(parsed):
            ours[pattern_key(parsed.pattern)] = i
    added = []
    for pattern in patterns:
        at = ours.get(pattern_key(pattern))
        if at is None:
            lines.append(f"{escape_pattern(pattern)} {ATTRS}")
            ours[pattern_key(pattern)] = len(lines) - 1
            added.append(pattern)
            continue
        parsed = parse_line(lines[at])
        lacking = [a for a in ATTRS.split() if a not in parsed.words]
        if lacking:  # what it sets otherwise for those attributes (diff=lfs, text) goes
            keys = {_attr(a) for a in lacking}
            ending = lines[at][len(lines[at].rstrip("\r\n")):]
            kept = [parsed.spelled, *(w for w in parsed.words if _attr(w) not in keys)]
            lines[at] = " ".join([*kept, *lacking]) + ending
            added.append(pattern)
    if added:
        _write(path, lines)
    return added


def untrack(top: str, patterns: list[str]) -> list[str]:
    """Remove theta-zarr's lines for ``patterns`` from ``top``'s .gitattributes; returns the
    patterns, as given, whose lines were removed.

    Only lines setting ``filter=theta-zarr`` whose pattern, as git reads it, is one of
    ``patterns`` (however spelled: quoted, or ``[[:space:]]`` for a space) go; other
    lines, git-lfs's among them, stay.  The file is rewritten (temp file, then rename)
    only when a line goes.  Raises ValueError, from ``escape_pattern``, for a pattern
    theta-zarr does not write.
    """
    path = os.path.join(top, ".gitattributes")
    for pattern in patterns:
        escape_pattern(pattern)  # ValueError for one theta-zarr does not write
    drop = {pattern_key(p) for p in patterns}
    lines = _read_ended(path)
    gone = set()
    keep = []
    for line in lines:
        parsed = parse_line(line)
        if _is_ours(parsed) and pattern_key(parsed.pattern) in drop:
            gone.add(pattern_key(parsed.pattern))
        else:
            keep.append(line)
    if gone:
        _write(path, keep)
    return [p for p in patterns if pattern_key(p) in gone]
