"""Blob stores: named immutable-or-conditional byte blobs under one root URL.

``open_store(url)`` (open.py) picks the class for the URL's protocol (one protocol per
module, as fsspec does); everything above talks only to ``BlobStore``.
"""

from .base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    ConditionalWritesUnsupported,
    ConditionFailed,
    NotABlob,
    RootMissing,
    StorageError,
)
from .open import (
    NO_REFS,
    BadURL,
    check_url,
    credential_hint,
    has_scheme,
    is_folder,
    is_read_only,
    open_store,
    read_only_hint,
    s3_compatible_hint,
)

__all__ = ["NO_REFS", "BadURL", "BlobInfo", "BlobNotFound", "BlobStore", "BlobTooLarge",
           "ConditionFailed", "ConditionalWritesUnsupported", "NotABlob", "RootMissing",
           "StorageError", "check_url", "credential_hint", "has_scheme", "is_folder",
           "is_read_only", "open_store", "read_only_hint", "s3_compatible_hint"]
