"""Blob stores: named immutable-or-conditional byte blobs under one root URL.

``open_store(url)`` picks the class for the URL's protocol (one protocol per
module, as fsspec does); everything above talks only to ``BlobStore``.
"""

from .base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    ConditionalWritesUnsupported,
    ConditionFailed,
    StorageError,
    open_store,
    redact_url,
)

__all__ = ["BlobInfo", "BlobNotFound", "BlobStore", "ConditionFailed",
           "ConditionalWritesUnsupported", "StorageError", "open_store", "redact_url"]
