"""The remote a DCP writer or reader talks to, opened on first use in each process."""

from __future__ import annotations

import threading
from typing import Any

from ..objects import ObjectStore
from ..remote import RemoteSpec
from ..sync import SyncRemote


class DcpRemote:
    """A remote URL and its options; ``sync`` / ``objects`` open it lazily.

    The opened store is not pickled with the writer or reader (DCP may hand them
    to another process for an asynchronous save); each process opens its own, and
    first checks that its bucket or folder exists (``need``: "write" or "read"), so a
    node whose share is not mounted fails its save instead of writing to local disk.
    """

    need: str = "read"

    def __init__(self, remote: str, options: dict[str, str] | None, concurrency: int) -> None:
        self.remote_url = str(remote)
        self.spec = RemoteSpec("dcp", self.remote_url, dict(options or {}))
        self.concurrency = max(1, int(concurrency))
        self._sync: SyncRemote | None = None
        self._open_lock = threading.Lock()

    @property
    def sync(self) -> SyncRemote:
        with self._open_lock:
            if self._sync is None:
                self._sync = SyncRemote.open(self.spec, self.concurrency, need=self.need)
            return self._sync

    @property
    def objects(self) -> ObjectStore:
        return self.sync.objects

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sync"] = None
        state.pop("_open_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open_lock = threading.Lock()
