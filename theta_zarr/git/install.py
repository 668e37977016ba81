"""``git theta-zarr install/uninstall``: the filter configuration, in one git config scope."""

from __future__ import annotations

from .repo import GitError, git

DRIVER = "theta-zarr"
#: What install sets.  One long-running process serves every file of a git
#: command; clean/smudge are the one-file fallbacks for tools that lack it.
FILTER_CONFIG: dict[str, str] = {
    f"filter.{DRIVER}.process": "git-theta-zarr filter-process",
    f"filter.{DRIVER}.clean": "git-theta-zarr clean -- %f",
    f"filter.{DRIVER}.smudge": "git-theta-zarr smudge -- %f",
    f"filter.{DRIVER}.required": "true",
}
#: The diff and merge drivers (docs/diff-merge.md).  textconv output depends only on
#: the blob (the manifest), so git may cache it per blob id.
DRIVER_CONFIG: dict[str, str] = {
    f"diff.{DRIVER}.command": "git-theta-zarr diff-driver",
    f"diff.{DRIVER}.textconv": "git-theta-zarr textconv",
    f"diff.{DRIVER}.cachetextconv": "true",
    f"merge.{DRIVER}.name": "theta-zarr three-way merge of checkpoint manifests",
    f"merge.{DRIVER}.driver": "git-theta-zarr merge-driver %O %A %B %P",
}
SCOPES = ("local", "global", "system")


def default_scope(cwd: str | None = None) -> str:
    """--local inside a repository, --global outside one (as git-lfs does)."""
    inside = git("rev-parse", "--is-inside-work-tree", cwd=cwd, check=False).strip()
    return "local" if inside == b"true" else "global"


def install(scope: str, cwd: str | None = None) -> dict[str, str]:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    if scope == "local" and default_scope(cwd) != "local":
        raise GitError("--local needs a git repository; run inside one or use --global")
    for key, value in {**FILTER_CONFIG, **DRIVER_CONFIG}.items():
        git("config", f"--{scope}", key, value, cwd=cwd)
    return {**FILTER_CONFIG, **DRIVER_CONFIG}


def uninstall(scope: str, cwd: str | None = None) -> None:
    for section in ("filter", "diff", "merge"):
        git("config", f"--{scope}", "--remove-section", f"{section}.{DRIVER}", cwd=cwd,
            check=False)


def is_installed(cwd: str | None = None) -> bool:
    out = git("config", "--get", f"filter.{DRIVER}.process", cwd=cwd, check=False)
    return bool(out.strip())
