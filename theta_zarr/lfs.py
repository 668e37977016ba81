"""git-lfs pointer files: what git stores for a file that git-lfs tracks.

Format (git-lfs, ``docs/spec.md``): UTF-8 ``key value`` lines, each ending in a
newline, ``version`` first and the other keys sorted; ``oid sha256:<64 hex>`` and
``size <bytes>`` are required; the whole pointer is under 1024 bytes.  theta-zarr
only recognises pointers (to show them in diffs, to pass them through its filter,
to hand them to git-lfs): it never reads or writes git-lfs's object store itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: the spec's version URL, and the pre-release one git-lfs still accepts
VERSIONS = (b"https://git-lfs.github.com/spec/v1", b"https://hawser.github.com/spec/v1")
MAX_POINTER = 1024
_OID_RE = re.compile(rb"sha256:([0-9a-f]{64})")
_KEY_RE = re.compile(rb"[a-z0-9.-]+")


@dataclass(frozen=True)
class LfsPointer:
    """One git-lfs pointer: the sha256 of the file's content and its size in bytes."""

    oid: str  # 64 hex digits
    size: int

    def describe(self) -> str:
        """``stored by git-lfs, oid sha256:…, size N bytes`` (one line, for diffs)."""
        return f"stored by git-lfs, oid sha256:{self.oid}, size {self.size} bytes"

    def to_json(self) -> dict[str, object]:
        return {"oid": f"sha256:{self.oid}", "size": self.size}

    def to_bytes(self) -> bytes:
        """The pointer text git-lfs writes for this object."""
        return (f"version {VERSIONS[0].decode()}\noid sha256:{self.oid}\n"
                f"size {self.size}\n").encode("ascii")


def looks_like_pointer(head: bytes) -> bool:
    """True if these first bytes start a git-lfs pointer (cheap; ``parse`` decides)."""
    return head.startswith(b"version https://git-lfs.github.com/spec/") or \
        head.startswith(b"version https://hawser.github.com/spec/")


def parse(data: bytes) -> LfsPointer | None:
    """The pointer ``data`` holds, or None when it is not a valid git-lfs pointer."""
    if len(data) >= MAX_POINTER or not looks_like_pointer(data) or not data.endswith(b"\n"):
        return None
    fields: dict[bytes, bytes] = {}
    for line in data[:-1].split(b"\n"):
        key, sep, value = line.partition(b" ")
        if not sep or not _KEY_RE.fullmatch(key) or key in fields:
            return None
        fields[key] = value
    if fields.get(b"version") not in VERSIONS:
        return None
    oid = _OID_RE.fullmatch(fields.get(b"oid", b""))
    size = fields.get(b"size", b"")
    if oid is None or not size.isdigit():
        return None
    return LfsPointer(oid.group(1).decode("ascii"), int(size))
