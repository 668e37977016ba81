"""The pre-push hook: upload chunks before git pushes the commits that name them.

Installed where git looks for hooks (``core.hooksPath`` honoured).  A hook that
is already there (git-lfs's, a team's own) is kept beside ours and run after
it with the same arguments and input, so installing never silences anyone.
"""

from __future__ import annotations

import os
import stat

from .repo import Repo

MARKER = "# theta-zarr pre-push hook"
CHAINED_SUFFIX = ".theta-zarr-chained"

HOOK = f"""#!/bin/sh
{MARKER}: uploads the chunks of pushed checkpoints, then runs the hook
# that was here before (kept as pre-push{CHAINED_SUFFIX}), if any.
command -v git-theta-zarr >/dev/null 2>&1 || {{
  echo >&2 "theta-zarr: git-theta-zarr is not on PATH; install theta-zarr or remove $0"
  exit 2
}}
input=$(cat)
printf '%s\\n' "$input" | git-theta-zarr pre-push "$@" || exit $?
chained="$0{CHAINED_SUFFIX}"
if [ -x "$chained" ]; then
  printf '%s\\n' "$input" | "$chained" "$@" || exit $?
fi
exit 0
"""


def hooks_dir(repo: Repo) -> str:
    path = repo.git("rev-parse", "--git-path", "hooks").decode().strip()
    return path if os.path.isabs(path) else os.path.join(repo.top, path)


def install_pre_push(repo: Repo) -> str:
    """Write our hook; an existing foreign hook is kept and chained.  Returns the path."""
    folder = hooks_dir(repo)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "pre-push")
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            current = f.read()
        if MARKER not in current:
            os.replace(path, path + CHAINED_SUFFIX)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(HOOK)
    os.chmod(tmp, os.stat(tmp).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, path)
    return path


def uninstall_pre_push(repo: Repo) -> None:
    """Remove our hook and put back the one it chained, if any."""
    path = os.path.join(hooks_dir(repo), "pre-push")
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            ours = MARKER in f.read()
        if ours:
            os.unlink(path)
            if os.path.exists(path + CHAINED_SUFFIX):
                os.replace(path + CHAINED_SUFFIX, path)
