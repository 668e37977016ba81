"""Google Cloud Storage buckets: the fsspec backend plus conditional writes for refs.

Refs are written with a single multipart upload carrying ``ifGenerationMatch``
(0: create only; otherwise the generation read): GCS answers 412 to the loser,
atomically.  Only multipart uploads are used for refs because fake-gcs-server
(the loopback test server) ignores preconditions on media and resumable uploads
(backends/README.md); real GCS honours them everywhere.  A ref is a few bytes, far
below gcsfs's multipart limit.  The version token is the object's generation;
bytes are read *at* that generation, so the pair is consistent.
"""

from __future__ import annotations

import json

from .base import ConditionFailed, RootMissing, StorageError, too_large
from .fsspec import FsspecStore, fail, unreachable

_BOUNDARY = "==theta-zarr-ref=="


class GcsStore(FsspecStore):
    """A Google Cloud Storage bucket (``gs://bucket/prefix``) through gcsfs, with the
    conditional writes refs need (module doc); a blob's version token is its generation.

    Credentials come from gcsfs's usual places only.  Storage failures are StorageError
    lines naming the key and the store; a lost conditional write is ConditionFailed.
    """

    conditional_writes = True
    list_page = 1000  # objects.list's maxResults

    def exists(self, key: str) -> bool:
        """One metadata GET.  gcsfs's ``exists`` races it with a listing of the key as a
        folder, two requests per check; a key here names a blob, never a folder."""
        bucket, path = self._bucket_key(key)
        try:
            self.fs.call("GET", "b/{}/o/{}", bucket, path, json_out=True,
                         timeout=self.timeout)
        except FileNotFoundError:
            return False
        except Exception as e:
            raise fail(self, "check", key, e) from None
        return True

    def check_root(self, for_write: bool = False) -> None:
        bucket = self._bucket_key("x")[0]
        try:
            self.fs.call("GET", "b/{}", bucket, json_out=True, timeout=self.timeout)
        except FileNotFoundError:
            raise RootMissing(f"bucket {bucket} does not exist ({self.describe()})") from None
        except Exception as e:
            if unreachable(e):  # an outage, which the caller's retry budget bounds
                raise fail(self, "reach", f"bucket {bucket}", e) from None
            return  # no permission to ask (a public bucket): try the data

    def get_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        bucket, path = self._bucket_key(key)
        try:
            meta = self.fs.call("GET", "b/{}/o/{}", bucket, path, json_out=True,
                                timeout=self.timeout)
            generation = str(meta["generation"])
            size = int(meta.get("size", -1))
            if max_bytes is not None and size > max_bytes:  # refused before it is read
                raise too_large(self.describe(), key, max_bytes, size)
            _, data = self.fs.call("GET", "b/{}/o/{}", bucket, path, alt="media",
                                   generation=generation, timeout=self.timeout)
        except StorageError:
            raise
        except Exception as e:
            raise fail(self, "read", key, e) from None
        if max_bytes is not None and len(data) > max_bytes:  # it grew between the calls
            raise too_large(self.describe(), key, max_bytes)
        return bytes(data), generation

    def put_if(self, key: str, data: bytes, expect: str | None) -> str:
        bucket, path = self._bucket_key(key)
        meta = json.dumps({"name": path})
        body = (f"--{_BOUNDARY}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
                f"{meta}\r\n--{_BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + data + f"\r\n--{_BOUNDARY}--".encode()
        url = f"{self.fs._location}/upload/storage/v1/b/{bucket}/o"
        try:
            out = self.fs.call(
                "POST", url, uploadType="multipart", ifGenerationMatch=expect or "0",
                headers={"Content-Type": f'multipart/related; boundary="{_BOUNDARY}"'},
                data=body, json_out=True, timeout=self.timeout)
        except FileExistsError:  # gcsfs maps every 412 to FileExistsError
            what = "already exists" if expect is None else "changed"
            raise ConditionFailed(f"{key} {what} in {self.describe()}") from None
        except Exception as e:
            raise fail(self, "write", key, e) from None
        return str(out["generation"])
