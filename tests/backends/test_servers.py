"""The loopback S3 and GCS servers: plain object I/O through fsspec, and
which conditional writes each server honours.

Where a server ignores a precondition, the test asserts what it does
instead, so a change of server version that alters this shows up here.
backends/README.md summarises the results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request

import pytest

# --------------------------------------------------------------------------
# Both servers through fsspec


def test_write_read_list_delete(object_store):
    base = object_store.new_bucket()
    fs = object_store.filesystem()
    name = base.split("://", 1)[1]

    fs.pipe_file(f"{base}/a/one.bin", b"1" * 10)
    fs.pipe_file(f"{base}/a/two.bin", b"22")
    fs.pipe_file(f"{base}/b/three.bin", b"")
    with fs.open(f"{base}/a/big.bin", "wb") as f:
        f.write(b"x" * (6 * 2**20))

    assert fs.cat_file(f"{base}/a/one.bin") == b"1" * 10
    assert fs.cat_file(f"{base}/a/one.bin", start=2, end=5) == b"111"
    with fs.open(f"{base}/a/big.bin", "rb") as f:
        assert f.read() == b"x" * (6 * 2**20)
    assert fs.info(f"{base}/a/two.bin")["size"] == 2

    assert sorted(fs.ls(f"{base}/a", detail=False)) == [
        f"{name}/a/big.bin",
        f"{name}/a/one.bin",
        f"{name}/a/two.bin",
    ]
    assert object_store.objects(base) == {
        f"{name}/a/big.bin": 6 * 2**20,
        f"{name}/a/one.bin": 10,
        f"{name}/a/two.bin": 2,
        f"{name}/b/three.bin": 0,
    }

    fs.rm(f"{base}/a/one.bin")
    fs.invalidate_cache()
    assert not fs.exists(f"{base}/a/one.bin")
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{base}/a/one.bin")
    fs.rm(f"{base}/a", recursive=True)
    fs.invalidate_cache()
    assert sorted(fs.find(base)) == [f"{name}/b/three.bin"]


def test_fresh_buckets_are_distinct_and_empty(object_store):
    a, b = object_store.new_bucket(), object_store.new_bucket()
    assert a != b
    fs = object_store.filesystem()
    fs.pipe_file(f"{a}/k", b"v")
    assert fs.find(b) == []


def test_env_alone_reaches_server_from_subprocess(object_store):
    """``Backend.env`` is all a child process needs (no storage options)."""
    base = object_store.new_bucket()
    object_store.filesystem().pipe_file(f"{base}/from-parent", b"hello")
    code = textwrap.dedent(
        f"""
        import fsspec
        fs, path = fsspec.core.url_to_fs({base + "/from-parent"!r})
        assert fs.cat_file(path) == b"hello", fs.cat_file(path)
        fs.pipe_file({base + "/from-child"!r}, b"world")
        """
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "FSSPEC_", "GCSFS_", "STORAGE_EMULATOR"))
    }
    env.update(object_store.env)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    fs = object_store.filesystem()
    assert fs.cat_file(f"{base}/from-child") == b"world"


def test_bucket_fixtures(s3_bucket, gcs_bucket, s3_server, gcs_server):
    assert s3_bucket.startswith("s3://tz-")
    assert gcs_bucket.startswith("gs://tz-")
    assert s3_server.filesystem().ls(s3_bucket) == []
    assert gcs_server.filesystem().ls(gcs_bucket) == []
    assert s3_server.url("b", "p/q/") == "s3://b/p/q"
    assert gcs_server.url("b") == "gs://b"


# --------------------------------------------------------------------------
# S3 (moto) conditional writes


@pytest.fixture
def s3_client(s3_server):
    import boto3

    opts = s3_server.storage_options
    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=opts["key"],
        aws_secret_access_key=opts["secret"],
        region_name=opts["client_kwargs"]["region_name"],
    )


def _s3_error(exc_info) -> tuple[int, str]:
    r = exc_info.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"]


def test_s3_put_if_none_match_star(s3_client, s3_bucket):
    from botocore.exceptions import ClientError

    bucket = s3_bucket.removeprefix("s3://")
    s3_client.put_object(Bucket=bucket, Key="ref", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as ei:
        s3_client.put_object(Bucket=bucket, Key="ref", Body=b"second", IfNoneMatch="*")
    assert _s3_error(ei) == (412, "PreconditionFailed")
    assert s3_client.get_object(Bucket=bucket, Key="ref")["Body"].read() == b"first"


def test_s3fs_create_mode_maps_to_file_exists(s3_server, s3_bucket):
    fs = s3_server.filesystem()
    fs.pipe_file(f"{s3_bucket}/ref", b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{s3_bucket}/ref", b"second", mode="create")
    # Also through the raw client call s3fs exposes.
    bucket = s3_bucket.removeprefix("s3://")
    with pytest.raises(FileExistsError):
        fs.call_s3("put_object", Bucket=bucket, Key="ref", Body=b"x", IfNoneMatch="*")
    assert fs.cat_file(f"{s3_bucket}/ref") == b"first"


def test_s3_put_if_match_etag(s3_client, s3_server, s3_bucket):
    from botocore.exceptions import ClientError

    bucket = s3_bucket.removeprefix("s3://")
    etag1 = s3_client.put_object(Bucket=bucket, Key="ref", Body=b"v1")["ETag"]
    etag2 = s3_client.put_object(Bucket=bucket, Key="ref", Body=b"v2", IfMatch=etag1)["ETag"]
    assert etag2 != etag1

    with pytest.raises(ClientError) as ei:  # stale etag
        s3_client.put_object(Bucket=bucket, Key="ref", Body=b"v3", IfMatch=etag1)
    assert _s3_error(ei) == (412, "PreconditionFailed")
    assert s3_client.get_object(Bucket=bucket, Key="ref")["Body"].read() == b"v2"

    # Unquoted etag is accepted too.
    s3_client.put_object(Bucket=bucket, Key="ref", Body=b"v3", IfMatch=etag2.strip('"'))

    # If-Match on a key that does not exist: 404 NoSuchKey (as on AWS).
    with pytest.raises(ClientError) as ei:
        s3_client.put_object(Bucket=bucket, Key="absent", Body=b"x", IfMatch=etag1)
    assert _s3_error(ei) == (404, "NoSuchKey")

    # Through s3fs: a failed If-Match is an OSError(EINVAL), not FileExistsError.
    fs = s3_server.filesystem()
    with pytest.raises(OSError) as oi:
        fs.call_s3("put_object", Bucket=bucket, Key="ref", Body=b"v4", IfMatch=etag1)
    assert not isinstance(oi.value, FileExistsError)
    assert "PreconditionFailed" in repr(oi.value.__cause__) or "412" in repr(oi.value.__cause__)


def test_s3_delete_if_match(s3_client, s3_bucket):
    from botocore.exceptions import ClientError

    bucket = s3_bucket.removeprefix("s3://")
    etag1 = s3_client.put_object(Bucket=bucket, Key="ref", Body=b"v1")["ETag"]
    etag2 = s3_client.put_object(Bucket=bucket, Key="ref", Body=b"v2")["ETag"]
    with pytest.raises(ClientError) as ei:
        s3_client.delete_object(Bucket=bucket, Key="ref", IfMatch=etag1)
    assert _s3_error(ei) == (412, "PreconditionFailed")
    s3_client.delete_object(Bucket=bucket, Key="ref", IfMatch=etag2)
    with pytest.raises(ClientError) as ei:
        s3_client.head_object(Bucket=bucket, Key="ref")
    assert _s3_error(ei)[0] == 404


def test_s3_complete_multipart_if_none_match(s3_client, s3_bucket):
    from botocore.exceptions import ClientError

    bucket = s3_bucket.removeprefix("s3://")
    s3_client.put_object(Bucket=bucket, Key="big", Body=b"existing")
    up = s3_client.create_multipart_upload(Bucket=bucket, Key="big")
    part = s3_client.upload_part(
        Bucket=bucket, Key="big", UploadId=up["UploadId"], PartNumber=1, Body=b"p" * 100
    )
    with pytest.raises(ClientError) as ei:
        s3_client.complete_multipart_upload(
            Bucket=bucket,
            Key="big",
            UploadId=up["UploadId"],
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
            IfNoneMatch="*",
        )
    assert _s3_error(ei) == (412, "PreconditionFailed")
    assert s3_client.get_object(Bucket=bucket, Key="big")["Body"].read() == b"existing"


# --------------------------------------------------------------------------
# GCS (fake-gcs-server) conditional writes, through its JSON API


def _gcs(method, url, body=None, headers=None):
    req = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
            return (
                r.status,
                (json.loads(data) if data.strip().startswith(b"{") else data),
                r.headers,
            )
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def _gcs_multipart(endpoint, bucket, name, data: bytes, **params):
    q = urllib.parse.urlencode({"uploadType": "multipart", **params})
    body = (
        b"--BOUNDARY\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
        + json.dumps({"name": name}).encode()
        + b"\r\n--BOUNDARY\r\nContent-Type: application/octet-stream\r\n\r\n"
        + data
        + b"\r\n--BOUNDARY--\r\n"
    )
    return _gcs(
        "POST",
        f"{endpoint}/upload/storage/v1/b/{bucket}/o?{q}",
        body,
        {"Content-Type": "multipart/related; boundary=BOUNDARY"},
    )


def _gcs_media(endpoint, bucket, name, data: bytes, **params):
    q = urllib.parse.urlencode({"uploadType": "media", "name": name, **params})
    return _gcs("POST", f"{endpoint}/upload/storage/v1/b/{bucket}/o?{q}", data)


def _gcs_resumable(endpoint, bucket, name, data: bytes, **params):
    q = urllib.parse.urlencode({"uploadType": "resumable", "name": name, **params})
    status, _, headers = _gcs(
        "POST",
        f"{endpoint}/upload/storage/v1/b/{bucket}/o?{q}",
        json.dumps({"name": name}).encode(),
        {"Content-Type": "application/json"},
    )
    if status != 200:
        return status, None, headers
    return _gcs(
        "PUT",
        headers["Location"],
        data,
        {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"},
    )


def _gcs_read(endpoint, bucket, name) -> bytes:
    obj = urllib.parse.quote(name, safe="")
    status, body, _ = _gcs("GET", f"{endpoint}/download/storage/v1/b/{bucket}/o/{obj}?alt=media")
    assert status == 200, (status, body)
    return body


def test_gcs_multipart_if_generation_match(gcs_server, gcs_bucket):
    ep, bucket = gcs_server.endpoint, gcs_bucket.removeprefix("gs://")

    status, obj, _ = _gcs_multipart(ep, bucket, "ref", b"v1", ifGenerationMatch=0)
    assert status == 200, obj
    gen1 = int(obj["generation"])

    # Create-only: a second create fails.
    status, body, _ = _gcs_multipart(ep, bucket, "ref", b"other", ifGenerationMatch=0)
    assert status == 412, body

    # Compare-and-swap on the generation.
    status, obj, _ = _gcs_multipart(ep, bucket, "ref", b"v2", ifGenerationMatch=gen1)
    assert status == 200, obj
    gen2 = int(obj["generation"])
    assert gen2 != gen1
    status, body, _ = _gcs_multipart(ep, bucket, "ref", b"v3", ifGenerationMatch=gen1)
    assert status == 412, body  # stale generation
    assert _gcs_read(ep, bucket, "ref") == b"v2"

    # ifGenerationNotMatch is honoured as well.
    status, body, _ = _gcs_multipart(ep, bucket, "ref", b"v3", ifGenerationNotMatch=gen2)
    assert status == 412, body
    # Conditions on a missing object: generation counts as 0.
    status, body, _ = _gcs_multipart(ep, bucket, "absent", b"x", ifGenerationMatch=gen1)
    assert status == 412, body


def test_gcsfs_create_mode_maps_to_file_exists(gcs_server, gcs_bucket):
    fs = gcs_server.filesystem()
    fs.pipe_file(f"{gcs_bucket}/ref", b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{gcs_bucket}/ref", b"second", mode="create")
    assert fs.cat_file(f"{gcs_bucket}/ref") == b"first"


def test_gcs_media_upload_ignores_preconditions(gcs_server, gcs_bucket):
    """fake-gcs-server does NOT honour ifGenerationMatch on uploadType=media."""
    ep, bucket = gcs_server.endpoint, gcs_bucket.removeprefix("gs://")
    status, obj, _ = _gcs_media(ep, bucket, "ref", b"v1", ifGenerationMatch=0)
    assert status == 200, obj
    status, obj, _ = _gcs_media(ep, bucket, "ref", b"v2", ifGenerationMatch=0)
    assert status == 200, obj  # real GCS: 412
    assert _gcs_read(ep, bucket, "ref") == b"v2"


def test_gcs_resumable_upload_ignores_preconditions(gcs_server, gcs_bucket):
    """fake-gcs-server does NOT honour ifGenerationMatch on resumable uploads
    (gcsfs uses them for writes of 50 MiB and more, and for open(..., "wb")
    files that grow past one block)."""
    ep, bucket = gcs_server.endpoint, gcs_bucket.removeprefix("gs://")
    status, obj, _ = _gcs_multipart(ep, bucket, "ref", b"v1")
    assert status == 200, obj
    status, obj, _ = _gcs_resumable(ep, bucket, "ref", b"v2", ifGenerationMatch=0)
    assert status == 200, obj  # real GCS: 412
    assert _gcs_read(ep, bucket, "ref") == b"v2"


def test_gcs_delete_ignores_preconditions(gcs_server, gcs_bucket):
    """fake-gcs-server does NOT honour ifGenerationMatch on object delete."""
    ep, bucket = gcs_server.endpoint, gcs_bucket.removeprefix("gs://")
    status, obj, _ = _gcs_multipart(ep, bucket, "ref", b"v1")
    assert status == 200, obj
    stale = int(obj["generation"]) - 1
    status, body, _ = _gcs("DELETE", f"{ep}/storage/v1/b/{bucket}/o/ref?ifGenerationMatch={stale}")
    assert status in (200, 204), body  # real GCS: 412
    status, body, _ = _gcs("GET", f"{ep}/storage/v1/b/{bucket}/o/ref")
    assert status == 404


# --------------------------------------------------------------------------
# Racing create-only writes: exactly one winner on each server


def _race(n, fn):
    """Run fn(0..n-1) in n threads released together; return their results."""
    import threading

    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as e:  # reported by the caller's assertions
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_s3_racing_if_none_match_has_one_winner(s3_server, s3_bucket):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(max_pool_connections=32),
    )
    bucket = s3_bucket.removeprefix("s3://")

    def put(key, i):
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"%d" % i, IfNoneMatch="*")
            return 200
        except ClientError as e:
            return e.response["ResponseMetadata"]["HTTPStatusCode"]

    for trial in range(5):
        key = f"ref{trial}"
        results = _race(16, lambda i, key=key: put(key, i))
        assert sorted(results) == [200] + [412] * 15, results
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == b"%d" % results.index(200)


def test_gcs_racing_if_generation_match_0_has_one_winner(gcs_server, gcs_bucket):
    ep, bucket = gcs_server.endpoint, gcs_bucket.removeprefix("gs://")

    def put(key, i):
        return _gcs_multipart(ep, bucket, key, b"%d" % i, ifGenerationMatch=0)[0]

    for trial in range(5):
        key = f"ref{trial}"
        results = _race(16, lambda i, key=key: put(key, i))
        assert sorted(results) == [200] + [412] * 15, results
        assert _gcs_read(ep, bucket, key) == b"%d" % results.index(200)
