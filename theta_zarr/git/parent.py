"""The git command that started this process, read from the process tree (Linux ``/proc``).

git tells a filter nothing about why it smudges, a pre-push hook nothing about
``--dry-run``, and a merge driver nothing about ``-X ours|theirs``; the process tree
says all three.  git may start us through ``sh -c``, a hook
script, or a hook script that another one chains, so a few levels up are looked at.
"""

from __future__ import annotations

import os

#: git's own options (before the subcommand) that take the next word as their value
_GIT_OPTIONS_WITH_VALUE = frozenset({"-c", "-C", "--git-dir", "--work-tree", "--namespace",
                                     "--config-env", "--exec-path"})


def parent_git(levels: int = 4) -> tuple[str, list[str]] | None:
    """(subcommand, the words after it) of the nearest git process above this one, looked
    for at most ``levels`` parents up; None without ``/proc``, when no git is found, or
    for a git run without a subcommand."""
    pid = os.getppid()
    for _ in range(levels):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
            with open(f"/proc/{pid}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if argv and os.path.basename(argv[0]) == "git":
            return _subcommand(argv[1:])
        pid = ppid
    return None


def _subcommand(args: list[str]) -> tuple[str, list[str]] | None:
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _GIT_OPTIONS_WITH_VALUE:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return arg, args[i + 1:]
    return None


def push_is_dry_run(args: list[str]) -> bool:
    """Whether ``git push ARGS`` is a dry run: ``-n`` (also among bundled short options,
    ``-fn``), ``--dry-run`` or an unambiguous abbreviation of it (git's parse-options
    takes ``--dry``), the last of it and ``--no-dry-run`` winning, up to ``--``."""
    dry = False
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("--"):
            if len(arg) >= 4 and "--dry-run".startswith(arg):
                dry = True
            elif len(arg) >= 7 and "--no-dry-run".startswith(arg):
                dry = False
        elif arg.startswith("-"):
            for flag in arg[1:]:
                if flag == "o":  # -o takes the rest of the word as its value
                    break
                if flag == "n":
                    dry = True
    return dry


#: git commands that merge files with the merge driver and take ``-X``/``--strategy-option``
_MERGING = frozenset({"merge", "pull", "rebase", "cherry-pick", "revert"})

#: their short options that take a value: the rest of the word, or the next word
_SHORT_WITH_VALUE = {"merge": "smF", "pull": "smF", "rebase": "sxC", "cherry-pick": "sm",
                     "revert": "sm"}

#: their long options that take the next word as their value (when not given with ``=``)
_LONG_WITH_VALUE = frozenset({"--strategy", "--message", "--file", "--exec", "--onto",
                              "--cleanup", "--mainline", "--into-name", "--depth",
                              "--shallow-since", "--shallow-exclude", "--upload-pack"})


def strategy_option(command: tuple[str, list[str]] | None) -> str | None:
    """``ours`` or ``theirs`` when the git command (``parent_git()``) that runs this merge
    driver was given ``-X ours|theirs`` (``-Xtheirs``, ``--strategy-option=theirs`` or
    ``--strategy-option theirs``, the last one winning, up to ``--``); None otherwise.
    git hands a merge driver no strategy option, so the driver reads git's own."""
    if command is None or command[0] not in _MERGING:
        return None
    sub, args = command
    found: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        value = None
        if arg.startswith("--"):
            name, eq, rest = arg.partition("=")
            if len(name) > len("--strategy-") and "--strategy-option".startswith(name):
                value = rest if eq else (args[i] if i < len(args) else None)
                i += 0 if eq else 1
            elif name in _LONG_WITH_VALUE and not eq:
                i += 1
        elif arg.startswith("-") and len(arg) > 1:
            for k, flag in enumerate(arg[1:], start=2):
                if flag == "X":
                    value = arg[k:] or (args[i] if i < len(args) else None)
                    i += 0 if arg[k:] else 1
                    break
                if flag in _SHORT_WITH_VALUE.get(sub, ""):
                    i += 0 if arg[k:] else 1  # its value is the rest, or the next word
                    break
        if value in ("ours", "theirs"):
            found = value
    return found
