"""The git command that started this process, read from the process tree (Linux ``/proc``).

git tells a filter nothing about why it smudges, and a pre-push hook nothing about
``--dry-run``; the process tree says both.  git may start us through ``sh -c``, a hook
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
