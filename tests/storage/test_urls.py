"""Remote URLs: malformed ones refused at once, missing buckets and folders named."""

from __future__ import annotations

import numpy as np
import pytest

from theta_zarr.remote import RemoteError, RemoteSpec, open_remote
from theta_zarr.storage import BadURL, RootMissing, check_url, open_store


@pytest.mark.parametrize("url, words", [
    ("s3:/demo/models", "did you mean 's3://demo/models'"),
    ("gs:bucket/x", "did you mean 'gs://bucket/x'"),
    ("s4://bucket/x", "unknown URL scheme 's4'"),
    ("s3:///models", "names no bucket"),
    ("s3://demo//models", "empty folder name ('//') after its bucket; did you mean "
     "'s3://demo/models'?"),
    ("gs://b/team//run7/", "did you mean 'gs://b/team/run7'?"),
    ("https://user:S3cretPw@host.example/b", "holds credentials"),
    ("s3://AKID:S3cretKey@bucket/p", "AWS_ACCESS_KEY_ID"),
    ("https://host.example/m?X-Amz-Credential=AKID&X-Amz-Signature=S3cretSig",
     "'https://host.example/m?X-Amz-Credential=***&X-Amz-Signature=***' holds credentials "
     "(query parameter X-Amz-Credential)"),
    ("gs://bucket/m?access_token=S3cretTok", "holds credentials (query parameter access_token)"),
    ("weird:thing", "for a local folder write ./weird:thing"),
    ("file:relative", "did you mean the folder 'relative' (or file:///ABSOLUTE/PATH)?"),
    ("   ", "empty remote URL"),
])
def test_bad_urls_are_refused_with_the_fix(url, words):
    with pytest.raises(BadURL) as info:
        check_url(url)
    assert words in str(info.value)
    assert "S3cret" not in str(info.value)


@pytest.mark.parametrize("url", ["s3://bucket/models", "s3://bucket/models/", "gs://b",
                                 "gs://b/", "/abs/folder", "rel/folder",
                                 "file:///abs/x", "memory://tz-x", "./a:b"])
def test_good_urls_pass(url):
    assert check_url(url) == url



@pytest.mark.parametrize("url, same", [("S3://bucket/Models", "s3://bucket/Models"),
                                       ("Gs://b", "gs://b"),
                                       ("FILE:///abs/X", "file:///abs/X")])
def test_a_scheme_in_capitals_is_the_scheme(url, same):
    """``S3://bucket/models`` passed ``remote add`` and every push then failed with
    fsspec's ``Protocol not known: S3``; a scheme is case-insensitive (RFC 3986)."""
    assert check_url(url) == same


def test_a_folder_remote_given_as_a_capital_file_url_is_pushed_to(repo, tmp_path):
    repo.tz("remote", "add", "origin", f"FILE://{tmp_path}/store")
    assert repo.out("config", "theta-zarr.remote.origin.url") == f"file://{tmp_path}/store\n"
    np.savez(repo.path / "m.npz", w=np.ones((64, 64), np.float32))
    repo.git("add", "m.npz")
    repo.git("commit", "-q", "-m", "m")
    repo.tz("push", "origin")
    assert (tmp_path / "store" / "objects").is_dir()

def test_remote_spec_refuses_credentials_in_options_too():
    with pytest.raises(RemoteError, match="holds credentials") as info:
        RemoteSpec("o", "s3://b/m", {"endpoint-url": "https://K:S3cret@minio.example"})
    assert "S3cret" not in str(info.value)
    with pytest.raises(RemoteError, match=r"holds credentials \(query parameter sig\)") as info:
        RemoteSpec("o", "s3://b/m", {"endpoint-url": "https://minio.example/?sig=S3cret"})
    assert "S3cret" not in str(info.value)


def test_remote_add_never_records_a_signed_urls_credentials(repo):
    """A signed URL's query credentials were recorded in .git/config (``user:pw@`` was
    refused, ``?X-Amz-Signature=`` was not); refused alike, nothing written."""
    url = "https://host.example/m?X-Amz-Credential=AKID&X-Amz-Signature=S3cretSig"
    proc = repo.tz("remote", "add", "x", url, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.startswith("theta-zarr: ") and err.count("\n") == 1
    assert "S3cretSig" not in err and "holds credentials" in err
    assert "S3cretSig" not in (repo.path / ".git" / "config").read_text()


@pytest.mark.parametrize("value", ["0", "-1", "100000", "abc", ""])
def test_remote_option_concurrency_is_range_checked(value):
    """As theta-zarr.concurrency is (1..1024); low values were raised to 1 silently and
    100000 became the size of a thread pool and of the S3 connection pool."""
    from theta_zarr.remote import RemoteError, RemoteSpec

    with pytest.raises(RemoteError, match=f"option concurrency={value!r} must be a whole "
                                          "number from 1 to 1024"):
        RemoteSpec("origin", "s3://bucket/m", {"concurrency": value})
    assert RemoteSpec("origin", "s3://bucket/m", {"concurrency": "64"}).options


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(RootMissing, match="does not exist"):
        open_store(str(tmp_path / "nope")).check_root()
    open_store(str(tmp_path / "new")).check_root(for_write=True)  # created on first write
    with pytest.raises(RootMissing, match="does not exist"):
        open_store(str(tmp_path / "a" / "b")).check_root(for_write=True)
    # a file where the parent folder belongs was called missing ("nor does .../afile")
    (tmp_path / "afile").write_text("")
    with pytest.raises(RootMissing, match=r"/afile is a file, not a folder\)$"):
        open_store(str(tmp_path / "afile" / "store")).check_root(for_write=True)


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_missing_bucket_is_named(kind, request, monkeypatch):
    backend = request.getfixturevalue(f"{kind}_server")
    for k, v in backend.env.items():
        monkeypatch.setenv(k, v)
    scheme = "s3" if kind == "s3" else "gs"
    spec = RemoteSpec("t", f"{scheme}://no-such-bucket-tz/models",
                      {"endpoint-url": backend.endpoint})
    with pytest.raises(RootMissing, match="bucket no-such-bucket-tz does not exist"):
        open_remote(spec, need="read")
    real = RemoteSpec("t", backend.new_bucket() + "/models", {"endpoint-url": backend.endpoint})
    open_remote(real, need="write")  # an existing bucket passes


def test_commands_name_a_missing_folder(tmp_path, git_env):
    """ls and pull used to answer nothing (exit 0) or "missing ref"; publish into a folder
    whose parent is missing (an unmounted share) used to create it on the local disk."""
    import subprocess

    ckpt = tmp_path / "c.npy"
    ckpt.write_bytes(b"\x93NUMPY")  # never read: the remote is refused first
    missing = tmp_path / "unmounted" / "share"
    for args in (["ls", str(missing)], ["pull", str(missing), "r", "-o", str(tmp_path / "o")],
                 ["publish", str(ckpt), str(missing), "--ref", "r"],
                 ["publish", str(ckpt), "s3:/demo/models", "--ref", "r"]):
        proc = subprocess.run(["theta-zarr", *args], env=git_env, cwd=tmp_path,
                              capture_output=True)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err.startswith("theta-zarr: ") and err.count("\n") == 1
        assert "does not exist" in err or "did you mean 's3://demo/models'" in err, err
    assert not (tmp_path / "unmounted").exists() and not (tmp_path / "s3:").exists()
    # a URL with no '//' is a URL, not a theta remote's name (it was looked up as one);
    # a file where the remote folder should be is named as such
    (tmp_path / "notafolder").write_bytes(b"")
    for args, said in ((["ls", "file:relative"], "did you mean the folder 'relative'"),
                       (["publish", str(ckpt), "file:relative", "--ref", "r"],
                        "did you mean the folder 'relative'"),
                       (["publish", str(ckpt), str(tmp_path / "notafolder"), "--ref", "r"],
                        "notafolder is a file, not a folder")):
        proc = subprocess.run(["theta-zarr", *args], env=git_env, cwd=tmp_path,
                              capture_output=True)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and said in err and err.count("\n") == 1, err


def test_a_bad_retry_budget_names_where_it_was_set(monkeypatch):
    """From THETA_ZARR_RETRY_TIMEOUT, the message named a remote option nobody set."""
    from theta_zarr.remote import RemoteError, RemoteSpec, retry_timeout

    monkeypatch.setenv("THETA_ZARR_RETRY_TIMEOUT", "abc")
    with pytest.raises(RemoteError, match="^THETA_ZARR_RETRY_TIMEOUT must be a number"):
        retry_timeout(RemoteSpec("origin", "s3://b/m"))
    with pytest.raises(RemoteError, match="^remote 'origin': retry-timeout must be a number"):
        retry_timeout(RemoteSpec("origin", "s3://b/m", {"retry-timeout": "-1"}))
    assert retry_timeout(RemoteSpec("origin", "s3://b/m", {"retry-timeout": "5"})) == 5.0
