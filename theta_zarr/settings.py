"""Settings the core needs, gathered by the faces (git config, CLI flags, API args).

The core never reads git config itself; git/repo.py (``Repo.settings``) fills this record.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .chunking import DEFAULT_CHUNK_BYTES, MIN_CHUNK_BYTES
from .delta import DEFAULT_DEPTH, DEFAULT_RATIO, DeltaPolicy
from .objects import DEFAULT_CONCURRENCY

DIRECT_CHECKOUT_BYTES = 64 << 20


#: threads for CPU work (hashing, codecs, copies): one per core, at least two
DEFAULT_WORKERS = max(2, os.cpu_count() or 2)


@dataclass
class Settings:
    """What the core needs to know, filled by a face (``Repo.settings`` from git config,
    the CLI from flags, the API from arguments).

    ``cache_dir``: the cache folder; ``chunk_bytes``: the target raw chunk size in bytes
    (at least ``MIN_CHUNK_BYTES``, else ValueError); ``cache_codec``: the cache's storage
    codec (codecs.py); ``lazy``: smudge writes manifests; ``concurrency``: storage
    requests in flight; ``workers``: threads for CPU work; the delta fields make
    ``delta_policy`` (ValueError for a ratio outside (0, 1] or a depth outside 1 to 64).
    """

    cache_dir: str
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    cache_codec: str = "raw"
    lazy: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    workers: int = DEFAULT_WORKERS
    delta: bool = True  # theta-zarr.delta: pushes may store deltas
    delta_ratio: float = DEFAULT_RATIO  # theta-zarr.delta-ratio
    delta_depth: int = DEFAULT_DEPTH  # theta-zarr.delta-depth
    opaque: bool = True  # theta-zarr.opaque: keep files no plug-in reads as opaque bytes
    #: theta-zarr.direct-checkout: files this large or larger are written into the working
    #: tree by theta-zarr itself, not through git's pipe (None: never)
    direct_checkout: int | None = DIRECT_CHECKOUT_BYTES

    @property
    def delta_policy(self) -> DeltaPolicy:
        """The DeltaPolicy pushes follow (``delta``, ``delta_ratio``, ``delta_depth``)."""
        return DeltaPolicy(self.delta, self.delta_ratio, self.delta_depth)

    def __post_init__(self) -> None:
        if self.chunk_bytes < MIN_CHUNK_BYTES:
            raise ValueError(f"chunk size {self.chunk_bytes} is below the minimum "
                             f"{MIN_CHUNK_BYTES} bytes")
        self.delta_policy  # noqa: B018 - validates ratio and depth


def parse_size(text: str) -> int:
    """'4MiB', '4M', '4194304' -> bytes (git-config style suffixes k/m/g too)."""
    t = text.strip().lower().replace(" ", "")
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1000, "mb": 10**6,
             "gb": 10**9, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "b": 1, "": 1}
    for suffix in sorted(units, key=len, reverse=True):
        if t.endswith(suffix):
            try:
                number = float(t[: len(t) - len(suffix)])
            except ValueError:
                break
            # 'inf' and 'nan' parse as floats; no size is infinite or negative
            if not math.isfinite(number) or number < 0:
                break
            return int(number * units[suffix])
    raise ValueError(f"not a size: {text!r}")


#: the words git reads as booleans (``git config --bool``), case-insensitively
BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False,
                 "off": False, "": False}


def parse_bool(text: str) -> bool:
    """A git-config boolean as ``git config --bool`` reads it: ``true``/``yes``/``on`` or a
    whole number other than 0; ``false``/``no``/``off``, ``0`` or nothing.  Anything else
    (``ture``, ``maybe``) is a ValueError, as git says "bad boolean config value"."""
    t = text.strip().lower()
    if t in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[t]
    try:
        return int(t) != 0
    except ValueError:
        raise ValueError(f"not a boolean: {text!r} (true/false, yes/no, on/off, 1/0)") from None
