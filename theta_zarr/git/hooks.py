"""git hooks: pre-push uploads chunks before git pushes the commits that name them;
post-checkout and post-merge write the checkpoints a checkout left for a direct write
before the hooks that follow run (git/pending.py).

Installed where git looks for hooks (``core.hooksPath`` honoured) by ``install`` and,
like git-lfs, by the filter itself the first time it runs in a repository that lacks
them (a clone or ``git init`` after ``install --global``).  A hook that is already there
(git-lfs's, a team's own, a hook manager's dispatcher) is kept beside ours as
``<name>.theta-zarr-chained`` and run after ours with the same input, arguments
and *name*: a shell script is sourced, by the shell and flags of its ``#!`` line
(``#!/bin/sh -e`` keeps errexit), with ``$0`` set to the path git ran
(``.../<name>``), so dispatchers that pick a script by ``$(basename "$0")`` (husky)
still find theirs; anything else (a program, a script without ``#!``) runs as it is,
as git would run it.  Installing never silences anyone: a hook chained before is kept
when another replaces ours.
"""

from __future__ import annotations

import os
import stat
import sys

from .install import executable
from .repo import GitInputError, Repo

CHAINED_SUFFIX = ".theta-zarr-chained"

#: the hooks theta-zarr installs, and what each does before the hook it chains
HOOKS = {
    "pre-push": "uploads the chunks of pushed checkpoints",
    # git runs these after it has written its index and before it exits: the filter's
    # direct writes would otherwise wait for git's exit, and the user's own hook (or a
    # post-checkout test) would read manifests (see git/pending.py).  Not during a rebase:
    # it runs post-checkout when it has checked out <onto>, then goes on with the index it
    # holds in memory, which a write behind its back makes stale (its next pick refused
    # the file as a local change)
    "post-checkout": "writes the checkpoints this checkout left for a direct write",
    "post-merge": "writes the checkpoints this merge left for a direct write",
}


def marker(name: str) -> str:
    """The comment line that marks hook ``name`` as theta-zarr's own: a hook file holding
    it is replaced by install (never chained) and removed by uninstall."""
    return f"# theta-zarr {name} hook"


HOOK = """#!/bin/sh
{marker}: {what}, then runs the hook
# that was here before (kept as {name}{suffix}), if any, under this hook's name.
tz={exe}
command -v "$tz" >/dev/null 2>&1 || {{
  echo >&2 "theta-zarr: $tz is not found (not on PATH, or its environment was removed);" \\
    "install theta-zarr there, or run 'git theta-zarr install' again from where it is"
  exit 2
}}
input=$(cat)
{run}
chained="$0{suffix}"
[ -x "$chained" ] || exit 0
# the shell a chained script runs under, with the flags of its #! line (-e: errexit);
# none: not a shell script (a program, a script without #!), so it runs as it is
shell_of() {{
  IFS= read -r line < "$1" || line=
  case "$line" in '#!'*) ;; *) return 1;; esac
  set -f; set -- ${{line#??}}; set +f
  [ "${{1##*/}}" = env ] && shift
  case "${{1##*/}}" in sh|bash|dash|zsh|ksh|ash|mksh) echo "$*";; *) return 1;; esac
}}
if sh_=$(shell_of "$chained"); then
  # the interpreter and its flags, split as the kernel splits a #! line
  printf '%s\\n' "$input" | $sh_ -c 'f=$1; shift; . "$f"' "$0" "$chained" "$@" || exit $?
else
  printf '%s\\n' "$input" | "$chained" "$@" || exit $?
fi
exit 0
"""


def hook_text(name: str = "pre-push", exe: str | None = None) -> str:
    """The hook script ``name``, starting theta-zarr as ``exe`` (default: how this one was
    started)."""
    run = RUN_PRE_PUSH if name == "pre-push" else RUN_AFTER_CHECKOUT.format(name=name)
    return HOOK.format(marker=marker(name), what=HOOKS[name], name=name, run=run,
                       suffix=CHAINED_SUFFIX, exe=exe or executable())


RUN_PRE_PUSH = """printf '%s\\n' "$input" | "$tz" pre-push "$@" || exit $?"""
#: Only where a filter left files for a direct write (a record exists): its filter process,
#: still running and idle while git runs hooks, is asked to write them now (SIGUSR1, once
#: /proc shows the pid is a theta-zarr filter) and the hook waits until the record is gone:
#: a few milliseconds, not Python's start-up.  Without /proc (or for a record whose filter
#: is gone), ``git-theta-zarr {name}`` writes them itself (git/pending.py).
RUN_AFTER_CHECKOUT = """gd=$(git rev-parse --git-dir 2>/dev/null) || gd=
[ -d "$gd/rebase-merge" ] || [ -d "$gd/rebase-apply" ] && gd=
here=$(pwd -P)
for rec in "$gd"/theta-zarr/pending/*; do
  [ -n "$gd" ] && [ -f "$rec" ] || continue
  pid=${{rec##*/}}
  # the pid must still be a theta-zarr filter of this work tree (not a reused pid)
  if [ -r "/proc/$pid/cmdline" ] && tr '\\000' ' ' < "/proc/$pid/cmdline" 2>/dev/null |
      grep -q 'theta-zarr.* filter-process' &&
      [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$here" ] &&
      kill -USR1 "$pid" 2>/dev/null; then
    # until the record is gone, or the filter is (killed: git has not reaped it yet)
    while [ -f "$rec" ] && ! grep -qs '^State:[[:space:]]*[ZX]' "/proc/$pid/status" &&
        kill -0 "$pid" 2>/dev/null; do sleep 0.01 2>/dev/null || sleep 1; done
  else
    "$tz" {name} "$@" </dev/null || exit $?
    break
  fi
done"""


def _is_ours(path: str, name: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return marker(name) in f.read()
    except FileNotFoundError:
        return False


def install_hook(repo: Repo, name: str, exe: str | None = None) -> str:
    """Write our hook ``name``; an existing foreign hook is kept and chained.  Returns the
    path."""
    folder = repo.hooks_dir
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise GitInputError(f"{folder} is a file, not a folder: git runs its hooks from "
                            "that folder; move the file away")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    if os.path.isdir(path):
        raise GitInputError(f"{path} is a folder, not a hook: move it away")
    if os.path.lexists(path) and not _is_ours(path, name):
        # a hook manager that rewrote the hook over ours: its new hook is the one to chain;
        # one chained before is kept beside it, never lost
        chained = path + CHAINED_SUFFIX
        if os.path.lexists(chained) and not _same_file(chained, path):
            kept = _free_name(chained + ".old")
            os.replace(chained, kept)
            print(f"theta-zarr: {path} was replaced by another hook, which now runs after "
                  f"theta-zarr's; the hook it replaced is kept as {kept} (it no longer runs)",
                  file=sys.stderr)
        os.replace(path, chained)
    elif name in LFS_HOOKS and not os.path.lexists(path) and \
            not os.path.lexists(path + CHAINED_SUFFIX) and _uses_git_lfs(repo):
        # git-lfs installs its hooks only where none is there: whichever filter runs first
        # in a clone, its hooks must run too, or LFS files are never uploaded
        _write_hook(path + CHAINED_SUFFIX, LFS_HOOK.format(name=name))
    _write_hook(path, hook_text(name, exe))
    return path


def install_hooks(repo: Repo, exe: str | None = None) -> list[str]:
    """Every hook of ``HOOKS`` (install_hook); returns their paths."""
    return [install_hook(repo, name, exe) for name in HOOKS]


#: the hooks git-lfs installs that theta-zarr also has, and git-lfs's own text for them
#: (``git lfs install`` writes the same): chained behind ours where git-lfs is configured
#: and would otherwise find our hook and install none
LFS_HOOKS = ("pre-push", "post-checkout", "post-merge")
LFS_HOOK = """#!/bin/sh
command -v git-lfs >/dev/null 2>&1 || {{ printf >&2 "\\n%s\\n\\n" "This repository is \\
configured for Git LFS but 'git-lfs' was not found on your path. If you no longer wish to \\
use Git LFS, remove this hook by deleting the '.git/hooks/{name}' file."; exit 2; }}
git lfs {name} "$@"
"""


def _uses_git_lfs(repo: Repo) -> bool:
    """git-lfs's filter is configured (``git lfs install``, any scope) and this work tree
    routes files to it (.gitattributes): a repository without LFS files does not pay for
    git-lfs's hooks on every checkout."""
    from .lfs import routed_patterns

    configured = repo.git("config", "--get", "filter.lfs.process", check=False).strip() or \
        repo.git("config", "--get", "filter.lfs.clean", check=False).strip()
    return bool(configured) and bool(routed_patterns(repo.top))


def _write_hook(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, os.stat(tmp).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, path)


def _same_file(a: str, b: str) -> bool:
    """Same bytes (a hook manager that wrote its dispatcher again: nothing to keep)."""
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False


def _free_name(path: str) -> str:
    """``path``, or ``path.N`` for the first N that names nothing."""
    name, n = path, 1
    while os.path.lexists(name):
        name, n = f"{path}.{n}", n + 1
    return name


class CommittedHooks(Exception):
    """The hooks folder is part of the work tree (``core.hooksPath=.githooks``, committed
    for a team): the filter does not edit it; the message says what to do."""


def _committed(repo: Repo, folder: str) -> bool:
    """``folder`` lies in the work tree and git tracks files in it (a team's ``.githooks``);
    an ignored folder there (husky's ``.husky/_``, which it writes itself) is not."""
    def under(path: str, top: str) -> bool:
        return os.path.commonpath([path, top]) == top
    real, top = os.path.realpath(folder), os.path.realpath(repo.top)
    if not under(real, top) or any(under(real, os.path.realpath(d))
                                   for d in (repo.git_dir, repo.common_dir)):
        return False
    return bool(repo.git("ls-files", "-z", "--", os.path.relpath(real, top), check=False))


def ensure_hooks(repo: Repo) -> list[str]:
    """Install the hooks this work tree lacks (git-lfs installs its hooks from its filter
    the same way); returns the names of those installed now.

    Raises CommittedHooks, and edits nothing, when the hooks folder holds files git tracks
    (a team's committed ``core.hooksPath``): a filter run by ``git add`` or ``git status``
    must not change tracked files; ``git theta-zarr install``, asked for, writes there."""
    if repo.bare:
        return []
    lacking = [n for n in HOOKS if not _is_ours(os.path.join(repo.hooks_dir, n), n)]
    if not lacking:
        return []
    if _committed(repo, repo.hooks_dir):
        raise CommittedHooks(
            f"the hooks folder {os.path.relpath(repo.hooks_dir, repo.top)} (core.hooksPath) "
            "is part of the work tree, so theta-zarr does not edit it: 'git push' uploads no "
            "chunks until its pre-push runs theta-zarr's; 'git theta-zarr install' writes "
            "the hooks there (chaining those that are there)")
    for name in lacking:
        install_hook(repo, name)
    return lacking


def uninstall_hooks(repo: Repo) -> None:
    """Remove our hooks and put back the ones they chained, if any."""
    for name in HOOKS:
        path = os.path.join(repo.hooks_dir, name)
        if _is_ours(path, name):
            os.unlink(path)
            if os.path.lexists(path + CHAINED_SUFFIX):
                os.replace(path + CHAINED_SUFFIX, path)
