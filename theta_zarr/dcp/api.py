"""``save`` and ``load``: DCP's own, raising theta-zarr's one-line errors as themselves.

``torch.distributed.checkpoint`` runs every step of a save or load inside its
collectives and wraps whatever a rank raises in a ``CheckpointException``, a
``BaseException`` whose text is every failed rank's traceback: ``except RefConflict``
never sees a taken ref, and a job's log shows a page of torch's frames before the line
that says what to do.  No hook of a ``StorageWriter`` is called outside those
collectives on every rank, so the writer cannot raise past them; ``save`` unwraps what it
raised instead.  Every rank receives the same ``CheckpointException`` (DCP scatters the
coordinator's failure, and broadcasts any rank's), so every rank raises the same error
and a job can handle it on every rank alike.

``dcp.load`` does worse with the first thing a resume reads: an error reading the
metadata (a ref that does not exist) is logged with its traceback as a warning, then
replaced by an ``AssertionError`` holding only its text.  ``load`` therefore reads the
ref on every rank before DCP starts (``ThetaZarrReader.prepare``; DCP's own
``read_metadata`` then uses what it read), the ranks share the outcome with one
``all_gather_object``, and every rank raises when any rank's read failed (its own error,
or the lowest failed rank's), so that no rank waits in DCP's collectives for one that
gave up.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata

from .reader import DcpLoadError, ThetaZarrReader
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


def load(state_dict: dict[str, Any], *, storage_reader: ThetaZarrReader,
         checkpoint_id: Any = None, process_group: dist.ProcessGroup | None = None,
         no_dist: bool = False, **kwargs: Any) -> None:
    """``torch.distributed.checkpoint.load`` (same arguments; ``state_dict`` is filled in
    place), raising theta-zarr's own error rather than torch's when that is what failed:
    ``RefError`` for a ref that does not exist or names a set of files, ``ManifestError``,
    ``RemoteError`` or ``ObjectError`` for a remote that cannot be read or a chunk that is
    missing or damaged, ``DcpLoadError`` for an item that cannot be loaded safely.

    Every rank reads the ref first and the ranks share the outcome (one
    ``all_gather_object`` on ``process_group`` when a process group is initialized and
    ``no_dist`` is false, as DCP decides it): when any rank's read failed, every rank
    raises, its own error where its read failed and else the lowest failed rank's, before
    any rank enters DCP's collectives.  Any other failure is torch's
    ``CheckpointException``, unchanged.
    """
    if checkpoint_id is not None:
        storage_reader.reset(checkpoint_id)
    mine: BaseException | None = None
    try:
        storage_reader.prepare()
    except Exception as e:  # every rank must learn of it, whatever it is
        mine = e
    if not no_dist and dist.is_available() and dist.is_initialized():
        failed = _gather_failures(mine, process_group)
        if mine is None and failed:
            rank, other = failed[0]
            if isinstance(other, BaseException):
                raise other
            raise DcpLoadError(f"rank {rank} could not read {storage_reader.sync.url} ref "
                               f"{storage_reader.ref}: {other}")
    if mine is not None:
        raise mine
    try:
        dcp.load(state_dict, storage_reader=storage_reader, process_group=process_group,
                 no_dist=no_dist, **kwargs)
    except CheckpointException as e:
        own = own_error(e)
        if own is None:
            raise
        raise own from None


def _gather_failures(mine: BaseException | None, group: dist.ProcessGroup | None
                     ) -> list[tuple[int, BaseException | str]]:
    """Every rank's failure to read the ref, lowest rank first: theta-zarr's own errors as
    themselves, any other (or one that would not survive pickling: every rank must be able
    to read what the others sent) as its one-line text."""
    sent: BaseException | str | None = mine
    if mine is not None:
        sent = f"{type(mine).__name__}: {mine}"
        if type(mine).__module__.startswith("theta_zarr."):
            try:  # what unpickling it on the other ranks does (BaseException.__reduce__)
                type(mine)(*mine.args)
                sent = mine
            except Exception:  # a class whose constructor takes other arguments
                pass
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, sent, group=group)
    return [(rank, got) for rank, got in enumerate(gathered) if got is not None]


def own_error(e: CheckpointException) -> BaseException | None:
    """The theta-zarr error that failed a DCP save (or load): the lowest failed rank's, when
    every failed rank raised one of theta-zarr's own exception classes; None when a rank
    failed otherwise (torch's own error, an ``OSError``), as then the ranks' tracebacks
    are the report."""
    failures = [exc for _, (exc, _) in sorted(e.failures.items())]
    if failures and all(type(exc).__module__.startswith("theta_zarr.") for exc in failures):
        return failures[0]
    return None


__all__ = ["load", "own_error", "save"]
