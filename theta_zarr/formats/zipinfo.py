"""The first member name of a zip archive, from its first local file header."""

from __future__ import annotations

import struct


def first_member(head: bytes) -> str | None:
    """The name in the zip local file header at the start of ``head`` (signature
    ``PK\\x03\\x04``, name length at offset 26, name at 30: PKWARE's APPNOTE.TXT, 4.3.7),
    decoded as UTF-8 with replacement; None when ``head`` does not start with one or cuts
    the name short.  For sniffing only: nothing is checked beyond that."""
    if len(head) < 30 or not head.startswith(b"PK\x03\x04"):
        return None
    (name_len,) = struct.unpack_from("<H", head, 26)
    raw = head[30:30 + name_len]
    if len(raw) < name_len:
        return None
    return raw.decode("utf-8", "replace")
