"""The local object cache: ``<git-common-dir>/theta-zarr/objects`` or a shared folder.

Worktrees share it because it lives in the common git dir; ``theta-zarr.cache``
points several repositories at one folder.  Because a digest is the hash of a
chunk's raw bytes, "has this chunk changed?" is a single existence check here:
an unchanged chunk is never re-encoded or re-written.
"""

from __future__ import annotations

import os

from .objects import ObjectStore
from .storage.local import LocalStore


class Cache(ObjectStore):
    """An ObjectStore on a local folder, plus a scratch area for spooled files."""

    def __init__(self, root: str, codec: str = "raw", concurrency: int = 16):
        self.root = os.path.abspath(root)
        super().__init__(LocalStore(self.root), codec=codec, concurrency=concurrency, retries=0)

    @property
    def tmp_dir(self) -> str:
        path = os.path.join(self.root, "tmp")
        os.makedirs(path, exist_ok=True)
        return path

    def ensure(self, digest: str, raw: bytes | memoryview) -> int:
        """Store a chunk unless present; returns the bytes newly written (0 if present)."""
        if self.has(digest):
            return 0
        return self.put(digest, raw)


def default_cache_dir(git_common_dir: str) -> str:
    return os.path.join(os.path.abspath(git_common_dir), "theta-zarr")
