"""S3 (and S3-compatible) buckets: the fsspec backend plus conditional writes for refs.

Refs are created with ``PutObject If-None-Match: *`` and moved with
``PutObject If-Match: <etag>``; S3 answers 412 PreconditionFailed to the loser,
atomically (AWS since 2024; moto honours both).  The ETag read together with
the bytes (one GetObject) is the version token.
"""

from __future__ import annotations

from typing import Any

from fsspec.asyn import sync

from .base import ConditionFailed, RootMissing, too_large
from .fsspec import FsspecStore, fail, unreachable


def _is_precondition_failure(e: BaseException) -> bool:
    """s3fs maps 412 to FileExistsError (If-None-Match) or an OSError whose cause is the
    botocore error; a CAS against a deleted key answers 404 NoSuchKey."""
    if isinstance(e, FileExistsError):
        return True
    cause = e.__cause__ or e.__context__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause else None
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict")


class S3Store(FsspecStore):
    """An S3 or S3-compatible bucket (``s3://bucket/prefix``) through s3fs, with the
    conditional writes refs need (module doc); a blob's version token is its ETag.

    Credentials come from botocore's usual places only (environment, config files,
    instance roles).  Storage failures are StorageError lines naming the key and the
    store; a lost conditional write, or a move of a ref deleted meanwhile, is
    ConditionFailed.
    """

    conditional_writes = True
    list_page = 1000  # ListObjectsV2's MaxKeys
    #: one GetObject per read: left at its default, s3fs's ``cat_file`` first sends a
    #: HeadObject for the size (to split a blob above its 50 MB block size into ranged
    #: reads), which doubles the requests of a fetch of chunk-sized objects
    _read_options = {"max_concurrency": 1}

    def exists(self, key: str) -> bool:
        """One HeadObject.  s3fs's ``exists`` follows a 404 with a ListObjectsV2 (the key
        might be a "directory"), which doubles the requests of an existence check; a
        key here names a blob, never a folder."""
        bucket, path = self._bucket_key(key)
        try:
            self.fs.call_s3("head_object", Bucket=bucket, Key=path, timeout=self.timeout)
        except FileNotFoundError:
            return False
        except Exception as e:
            raise fail(self, "check", key, e) from None
        return True

    def check_root(self, for_write: bool = False) -> None:
        bucket = self._bucket_key("x")[0]
        try:
            self.fs.call_s3("head_bucket", Bucket=bucket, timeout=self.timeout)
        except FileNotFoundError:
            raise RootMissing(f"bucket {bucket} does not exist ({self.describe()})") from None
        except Exception as e:
            if unreachable(e):  # an outage, which the caller's retry budget bounds
                raise fail(self, "reach", f"bucket {bucket}", e) from None
            return  # no permission to ask (a public or requester-pays bucket): try the data

    def _find(self, prefix: str) -> dict[str, dict[str, Any]]:
        """ListObjectsV2 requests for the keys under ``prefix`` and nothing else.

        s3fs's ``find`` of a folder that holds nothing then asks for the folder's own
        key (a HeadObject of ``trash``, ``refs``), which an IAM policy that grants only
        the remote's key spaces (``trash/*``, terraform/modules/s3-remote) answers 403:
        every listing of an empty key space failed, so ``gc --remote`` (its trash/),
        ``fsck --remote`` (staging/) and ``ls`` of a new remote failed with
        "Forbidden".  Given the listing's prefix as ``prefix``, ``find`` lists only.
        """
        bucket, key = self._bucket_key(prefix.rstrip("/"))
        key = key.strip("/")
        if not key:  # the bucket itself: one listing, no fallback either
            return self.fs.find(bucket, detail=True, **self._bound)
        return self.fs.find(bucket, prefix=key + "/", detail=True, **self._bound)

    def get_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        bucket, path = self._bucket_key(key)

        async def fetch() -> tuple[bytes, str, int]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=path)
            body = resp["Body"]
            size = int(resp.get("ContentLength", -1))
            try:
                if max_bytes is not None and size > max_bytes:
                    return b"", "", size  # not read: the refusal needs no byte of it
                data = await (body.read() if max_bytes is None else body.read(max_bytes + 1))
            finally:
                body.close()
            return data, str(resp["ETag"]), size

        try:
            data, etag, size = sync(self.fs.loop, fetch, timeout=self.timeout)
        except Exception as e:
            raise fail(self, "read", key, e) from None
        if max_bytes is not None and (size > max_bytes or len(data) > max_bytes):
            raise too_large(self.describe(), key, max_bytes, size if size >= 0 else None)
        return data, etag

    def put_if(self, key: str, data: bytes, expect: str | None) -> str:
        bucket, path = self._bucket_key(key)
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if expect is None else \
            {"IfMatch": expect}
        try:
            resp = self.fs.call_s3("put_object", Bucket=bucket, Key=path, Body=data,
                                   timeout=self.timeout, **condition)
        except FileNotFoundError:
            raise ConditionFailed(f"{key} was deleted from {self.describe()}") from None
        except Exception as e:
            if _is_precondition_failure(e):
                what = "already exists" if expect is None else "changed"
                raise ConditionFailed(f"{key} {what} in {self.describe()}") from None
            raise fail(self, "write", key, e) from None
        return str(resp["ETag"])
