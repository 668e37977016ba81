"""torch.distributed.checkpoint on theta-zarr: every rank saves its own chunks into a remote.

::

    import torch.distributed.checkpoint as dcp
    from theta_zarr.dcp import ThetaZarrReader, ThetaZarrWriter

    dcp.save(state_dict, storage_writer=ThetaZarrWriter("s3://bucket/llm", ref="run7/step-3000"))
    dcp.load(state_dict, storage_reader=ThetaZarrReader("s3://bucket/llm", ref="run7/step-3000"))

``theta_zarr.dcp.save`` and ``theta_zarr.dcp.load`` are the same calls, raising
theta-zarr's own one-line errors (``RefConflict``: the ref exists; ``RefError``: no such
ref) rather than torch's ``CheckpointException`` (api.py).

This package is the only part of theta-zarr that imports ``torch.distributed``;
it is one more face over the object, ref and manifest layers, like git/ and the CLI.
A saved checkpoint is a ref like any other (ls, pull, import, fsck, gc, diff).
"""

from __future__ import annotations

from .api import load, own_error, save
from .reader import DcpLoadError, ThetaZarrReader
from .writer import SaveResult, ThetaZarrWriter

__all__ = ["DcpLoadError", "SaveResult", "ThetaZarrReader", "ThetaZarrWriter", "load",
           "own_error", "save"]
