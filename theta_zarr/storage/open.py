"""From a URL to a store: which URLs are well formed, and which BlobStore class serves one.

Kept out of base.py so that the interface never imports its own implementations: this
module sits above base.py and the backends, and everything else imports it from
``theta_zarr.storage``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..redact import credential_part, mask_credentials
from .base import BlobStore, StorageError

#: Protocols whose first path segment is a bucket (a bucket name is required).
BUCKET_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs"})
#: Protocols a store can only read (fsspec's HTTP file system has no writes): a static
#: server or mirror serves clones and fetches, never a push.
READ_ONLY_PROTOCOLS = frozenset({"http", "https"})
#: What such a store lacks for cluster sync: a ref is read with its version (an ETag, a
#: generation), which a plain HTTP server gives none of.
NO_REFS = "holds no refs theta-zarr can read (refs need S3, GCS or a folder)"
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*):(?P<rest>.*)$", re.DOTALL)
#: Where each protocol's storage library looks for credentials (docs/remotes.md).
CREDENTIAL_HINTS = {
    "s3": "the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE), "
          "~/.aws/credentials or an instance role",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS, 'gcloud auth application-default login' or "
          "the instance's service account",
}


class BadURL(StorageError, ValueError):
    """A remote URL that cannot name a store: the message says what is wrong and the fix."""


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def credential_hint(url: str) -> str:
    """Where the storage library for ``url`` finds credentials (one phrase)."""
    protocol = {"s3a": "s3", "gcs": "gs"}.get(_protocol(url), _protocol(url))
    return CREDENTIAL_HINTS.get(protocol, "the storage library's environment or config "
                                          "(for http(s): ~/.netrc)")


def is_read_only(url: str) -> bool:
    """True for a URL whose store can only be read (``http://``, ``https://``)."""
    return _protocol(url) in READ_ONLY_PROTOCOLS


def read_only_hint(url: str) -> str:
    """The one-line fix for a read-only ``url`` given where a store is written: HTTP
    remotes are read-only, and an S3-compatible server (MinIO) is an ``s3://`` URL with
    its ``endpoint-url``, both spelt from ``url`` where it names them
    (``http://host:9000/models/team`` -> ``s3://models/team --remote-option
    endpoint-url=http://host:9000``)."""
    return f"HTTP remotes are read-only (git clones and fetches only); " \
           f"{s3_compatible_hint(url)}"


def s3_compatible_hint(url: str, endpoint: str | None = None) -> str:
    """'an S3-compatible server (MinIO) is s3://BUCKET/PREFIX --remote-option
    endpoint-url=http://HOST:PORT', with the bucket and prefix of an http(s) ``url`` and
    ``endpoint`` (else the URL's scheme and host) in place of the capitals where known."""
    path = "BUCKET/PREFIX"
    m = re.match(r"^(https?://[^/?#]+)(/[^?#]*)?", url.strip(), re.IGNORECASE)
    if m is not None:
        endpoint = endpoint or m.group(1)
        path = "/".join(p for p in (m.group(2) or "").split("/") if p) or path
    return f"an S3-compatible server (MinIO) is s3://{path} --remote-option " \
           f"endpoint-url={endpoint or 'http://HOST:PORT'}"


def has_scheme(text: str) -> bool:
    """True if ``text`` starts like a URL (``SCHEME:``), ``//`` or not (``file:relative``,
    which :func:`check_url` then explains), rather than a path or a remote's name."""
    return _SCHEME.match(text) is not None


def check_url(url: str) -> str:
    """Validate a remote URL's form; return it stripped.

    A URL is a local path, ``file://PATH`` or ``SCHEME://...`` with a protocol fsspec
    knows (``fsspec.available_protocols()``); bucket protocols (s3, gs) need a bucket.
    Refused, with a one-line reason: credentials in the URL (``user:pw@``, or a signed
    URL's or token's query parameter such as ``X-Amz-Signature=``), a scheme
    followed by one slash (``s3:/bucket``, which would otherwise be a relative folder),
    an unknown scheme (``s4://``), an empty folder name in a bucket's prefix
    (``s3://bucket//models``, whose keys would start with ``/``).  A scheme is returned
    in lower case (``S3://b`` is ``s3://b``).  Raises :class:`BadURL`.
    """
    url = url.strip()
    if not url:
        raise BadURL("empty remote URL")
    part = credential_part(url)
    if part:
        raise BadURL(f"remote URL {mask_credentials(url)!r} holds credentials ({part}); "
                     f"theta-zarr never stores credentials: remove them from the URL and put "
                     f"them in {credential_hint(url)}")
    m = _SCHEME.match(url)
    if m is None or os.path.isabs(url):
        return url  # a local folder
    import fsspec  # here, not at the top: a local folder (and a checkout) never needs it

    scheme, rest = m.group("scheme").lower(), m.group("rest")
    if not rest.startswith("//"):
        if scheme == "file":  # file://relative would name a host: point at the folder
            raise BadURL(f"remote URL {url!r} has file: without '//'; did you mean the "
                         f"folder '{rest}' (or file:///ABSOLUTE/PATH)?")
        if scheme in fsspec.available_protocols():
            raise BadURL(f"remote URL {url!r} has {scheme}: without '//'; did you mean "
                         f"'{scheme}://{rest.lstrip('/')}'?")
        raise BadURL(f"remote URL {url!r} looks like a URL with a scheme '{scheme}:'; for "
                     f"a local folder write ./{url}")
    if scheme != "file" and scheme not in fsspec.available_protocols():
        raise BadURL(f"unknown URL scheme '{scheme}' in {url!r} (use s3://, gs://, a local "
                     f"folder, or another protocol fsspec knows)")
    if scheme in BUCKET_PROTOCOLS:
        bucket, _, prefix = rest[2:].partition("/")
        if not bucket or any(c.isspace() for c in bucket):
            raise BadURL(f"remote URL {url!r} names no bucket ({scheme}://BUCKET/PREFIX)")
        if "//" in "/" + prefix.rstrip("/"):  # keys would start '/' or hold '//'
            fixed = "/".join(p for p in prefix.split("/") if p)
            raise BadURL(f"remote URL {url!r} has an empty folder name ('//') after its "
                         f"bucket; did you mean '{scheme}://{bucket}/{fixed}'?")
    return scheme + ":" + rest  # a scheme is case-insensitive (RFC 3986), fsspec's are lower


def is_folder(url: str) -> bool:
    """True for a URL :func:`open_store` opens as a local folder (a path or ``file://``):
    looking at it asks no storage library, and so no network, for anything."""
    return url.startswith("file://") or "://" not in url


def open_store(url: str, storage_options: dict[str, Any] | None = None) -> BlobStore:
    """The BlobStore for a URL: a local path or file:// URL, or any fsspec URL."""
    if url.startswith("file://"):
        url = url[len("file://"):]
    if is_folder(url):
        from .local import LocalStore

        return LocalStore(os.path.abspath(os.path.expanduser(url)))
    protocol = _protocol(url)
    if protocol in ("s3", "s3a"):
        from .s3 import S3Store

        return S3Store(url, storage_options or {})
    if protocol in ("gs", "gcs"):
        from .gcs import GcsStore

        return GcsStore(url, storage_options or {})
    from .fsspec import FsspecStore

    return FsspecStore(url, storage_options or {})
