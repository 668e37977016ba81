"""``save``: DCP's own, raising theta-zarr's one-line errors as themselves.

``torch.distributed.checkpoint`` runs every step of a save inside its collectives and
wraps whatever a rank raises in a ``CheckpointException``, a ``BaseException`` whose text
is every failed rank's traceback: ``except RefConflict`` never sees a taken ref, and a
job's log shows a page of torch's frames before the line that says what to do.  No hook
of a ``StorageWriter`` is called outside those collectives on every rank, so the writer
cannot raise past them; ``save`` unwraps what it raised instead.  Every rank receives the
same ``CheckpointException`` (DCP scatters the coordinator's failure, and broadcasts any
rank's), so every rank raises the same error and a job can handle it on every rank alike.

There is no ``load`` counterpart: ``dcp.load`` replaces an error reading the metadata (a
ref that does not exist) with an ``AssertionError`` holding only its text.
"""

from __future__ import annotations

from typing import Any

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata

from .writer import ThetaZarrWriter


def save(state_dict: dict[str, Any], *, storage_writer: ThetaZarrWriter,
         **kwargs: Any) -> Metadata:
    """``torch.distributed.checkpoint.save`` (same arguments), raising theta-zarr's own
    error (``RefConflict`` for a ref that exists, ``SyncError``, ``RemoteError``, …: one
    line naming the ref and the remote) rather than torch's ``CheckpointException`` when
    that is what failed the save (:func:`own_error`)."""
    try:
        return dcp.save(state_dict, storage_writer=storage_writer, **kwargs)
    except CheckpointException as e:
        own = own_error(e)
        if own is None:
            raise
        raise own from None


def own_error(e: CheckpointException) -> BaseException | None:
    """The theta-zarr error that failed a DCP save (or load): the lowest failed rank's, when
    every failed rank raised one of theta-zarr's own exception classes; None when a rank
    failed otherwise (torch's own error, an ``OSError``), as then the ranks' tracebacks
    are the report."""
    failures = [exc for _, (exc, _) in sorted(e.failures.items())]
    if failures and all(type(exc).__module__.startswith("theta_zarr.") for exc in failures):
        return failures[0]
    return None


__all__ = ["own_error", "save"]
