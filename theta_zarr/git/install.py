"""``git theta-zarr install/uninstall``: the filter configuration, in one git config scope.

git runs the filter (``required``) for every checkout: a filter that cannot start
fails the checkout and leaves no working file.  So when theta-zarr runs from a
virtual environment, install records the absolute path of that environment's
``git-theta-zarr`` (as pre-commit does for its hooks); a system-wide install records
the bare name, found on ``PATH``.
"""

from __future__ import annotations

import os
import shlex
import sys
import sysconfig

from .repo import GitInputError, git

DRIVER = "theta-zarr"
EXE_NAME = "git-theta-zarr"
SCOPES = ("local", "global", "system")


def executable() -> str:
    """How git should start theta-zarr: the absolute, shell-quoted path of this virtual
    environment's ``git-theta-zarr`` when running from one, else the bare name."""
    if sys.prefix == sys.base_prefix:
        return EXE_NAME
    path = os.path.join(sysconfig.get_path("scripts"), EXE_NAME)
    return shlex.quote(path) if os.access(path, os.X_OK) else EXE_NAME


def filter_config(exe: str = EXE_NAME) -> dict[str, str]:
    """What install sets for the filter.  One long-running process serves every file of a
    git command; clean/smudge are the one-file fallbacks for tools that lack it."""
    return {
        f"filter.{DRIVER}.process": f"{exe} filter-process",
        f"filter.{DRIVER}.clean": f"{exe} clean -- %f",
        f"filter.{DRIVER}.smudge": f"{exe} smudge -- %f",
        f"filter.{DRIVER}.required": "true",
    }


def driver_config(exe: str = EXE_NAME) -> dict[str, str]:
    """The diff and merge drivers (docs/diff-merge.md).  textconv output depends only on
    the blob (the manifest), so git may cache it per blob id."""
    return {
        f"diff.{DRIVER}.command": f"{exe} diff-driver",
        f"diff.{DRIVER}.textconv": f"{exe} textconv",
        f"diff.{DRIVER}.cachetextconv": "true",
        f"merge.{DRIVER}.name": "theta-zarr three-way merge of checkpoint manifests",
        f"merge.{DRIVER}.driver": f"{exe} merge-driver %O %A %B %P",
    }


def default_scope(cwd: str | None = None) -> str:
    """--local inside a repository, --global outside one (as git-lfs does)."""
    inside = git("rev-parse", "--is-inside-work-tree", cwd=cwd, check=False).strip()
    return "local" if inside == b"true" else "global"


def install(scope: str, cwd: str | None = None, exe: str | None = None) -> dict[str, str]:
    """Set the filter and driver config in ``scope``; returns what was set."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    if scope == "local" and default_scope(cwd) != "local":
        raise GitInputError("--local needs a git repository; run inside one or use --global")
    values = {**filter_config(exe or executable()), **driver_config(exe or executable())}
    for key, value in values.items():
        git("config", f"--{scope}", key, value, cwd=cwd)
    return values


def overridden(values: dict[str, str], cwd: str | None = None) -> list[tuple[str, str, str]]:
    """(scope, key, value) for each key of ``values`` that git reads from another scope with
    another value (a repository's local config, say, naming a removed environment's
    program, over the global one just installed): git uses that one here, not ours."""
    out = git("config", "--show-scope", "-z", "--get-regexp",
              rf"^(filter|diff|merge)\.{DRIVER}\.", cwd=cwd, check=False)
    effective: dict[str, tuple[str, str]] = {}  # the last value of each key wins
    fields = out.decode("utf-8", "replace").split("\0")  # SCOPE NUL KEY NEWLINE VALUE NUL
    for scope, entry in zip(fields[::2], fields[1::2], strict=False):
        key, _, value = entry.partition("\n")
        effective[key.lower()] = (scope, value)
    return [(scope, key, value) for key, (scope, value) in effective.items()
            if key in values and values[key] != value and scope in SCOPES]  # not a `-c`


def uninstall(scope: str, cwd: str | None = None) -> bool:
    """Remove the filter, diff and merge sections from ``scope``; False if it had none.
    GitInputError for ``local`` outside a repository, as ``install`` refuses it."""
    if scope == "local" and default_scope(cwd) != "local":
        raise GitInputError("--local needs a git repository; run inside one or use --global")
    found = git("config", f"--{scope}", "--get-regexp", rf"^(filter|diff|merge)\.{DRIVER}\.",
                cwd=cwd, check=False)
    for section in ("filter", "diff", "merge"):
        git("config", f"--{scope}", "--remove-section", f"{section}.{DRIVER}", cwd=cwd,
            check=False)
    return bool(found.strip())


def configured_executable(cwd: str | None = None) -> str | None:
    """The command the filter config starts (``filter.theta-zarr.process`` minus its verb),
    None when theta-zarr is not installed in any scope."""
    out = git("config", "--get", f"filter.{DRIVER}.process", cwd=cwd, check=False).decode()
    out = out.strip()
    if not out:
        return None
    return out[: -len(" filter-process")] if out.endswith(" filter-process") else EXE_NAME
