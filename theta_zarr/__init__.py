"""theta-zarr: version control for ML checkpoints, one content-addressed Zarr array per parameter.

``theta_zarr.open(path, rev="HEAD")`` gives a read-only Zarr group;
``theta_zarr.load_state_dict(path, include=[...])`` gives torch tensors, reading only
the chunks of the selected parameters; ``theta_zarr.newest_ref(url, "run7/")`` names the
newest checkpoint a job saved to a remote's ref folder.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_state_dict", "newest_ref", "open"]


def __getattr__(name: str) -> Any:
    # The API pulls in zarr and torch; git's filter process imports this package
    # too and must start fast, so the API is loaded on first use.
    if name in ("open", "load_state_dict", "newest_ref"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
