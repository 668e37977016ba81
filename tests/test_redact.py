"""redact: no URL's userinfo and no signed-query credential is ever printed."""

from __future__ import annotations

import pytest

from theta_zarr.errors import one_line
from theta_zarr.redact import has_userinfo, mask_userinfo, redact


@pytest.mark.parametrize("text, expected", [
    ("s3://AKID:S3cret@bucket/x", "s3://bucket/x"),
    ("https://user@host/path", "https://host/path"),
    ("see 'https://u:p@h.example/a' and gs://k@b/c", "see 'https://h.example/a' and gs://b/c"),
    ("GET https://b.s3.amazonaws.com/k?X-Amz-Credential=AKID%2F2026&X-Amz-Signature=ab12&x=1",
     "GET https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&x=1"),
    ("https://storage.example/o?alt=media&access_token=ya29.tok",
     "https://storage.example/o?alt=media&access_token=***"),
    ("/plain/path/with@sign", "/plain/path/with@sign"),
    ("s3://bucket/prefix", "s3://bucket/prefix"),
    ("remote URL 's3://***@bucket/m' holds credentials", "remote URL 's3://***@bucket/m' holds "
     "credentials"),
    ("s3://***:S3cret@bucket/m", "s3://bucket/m"),
])
def test_redact(text, expected):
    assert redact(text) == expected


def test_userinfo_helpers():
    assert has_userinfo("s3://K:S@bucket/x") and not has_userinfo("s3://bucket/x")
    assert not has_userinfo("/folder/a@b")
    assert mask_userinfo("https://u:pw@host/x") == "https://***@host/x"


def test_every_error_message_is_redacted():
    """Errors from any layer (botocore's included) go through one_line before printing."""
    err = OSError("Could not connect to the endpoint URL: "
                  "'https://AKIDEXAMPLE:S3cretKey@minio.internal:9000/bucket'")
    line = one_line(err)
    assert "S3cretKey" not in line and "AKIDEXAMPLE" not in line
    assert "https://minio.internal:9000/bucket" in line
    bug = one_line(KeyError("s3://K:S3cret@b/x"))
    assert bug.startswith("internal error") and "S3cret" not in bug


def test_a_refused_url_is_shown_with_its_credentials_masked(tmp_path, git_env):
    """The refusal names where the credentials were, as docs/remotes.md shows it: the
    printed line dropped the mask with the userinfo (``s3://bucket/m`` holds credentials)."""
    import subprocess

    proc = subprocess.run(["theta-zarr", "ls", "s3://AKID:S3cret@bucket/m"], cwd=tmp_path,
                          env=git_env, capture_output=True)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "S3cret" not in err and "AKID" not in err
    assert "remote URL 's3://***@bucket/m' holds credentials" in err, err


def test_progress_and_warning_lines_are_redacted_like_failures(capsys):
    """``say`` (push summaries, warnings) and ``fail`` print through the same redaction."""
    from theta_zarr.commands.reporting import fail, say

    url = "https://u:S3cret@host/x?X-Amz-Signature=ab12"
    say(f"pushed to {url}")
    with pytest.raises(SystemExit):
        fail(f"cannot reach {url}")
    err = capsys.readouterr().err
    assert "S3cret" not in err and "ab12" not in err
    assert err.count("https://host/x?X-Amz-Signature=***") == 2


@pytest.mark.parametrize("text, secret", [
    ("'Authorization': 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261130/us-east-1/s3/"
     "aws4_request, SignedHeaders=host;x-amz-date, Signature=0f1e2d3c'", "AKIDEXAMPLE"),
    ("'Authorization': 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/x, Signature=0f1e2d3c'",
     "0f1e2d3c"),
    ("{'Authorization': 'Bearer ya29.a0AfH6SMBx-secret'}", "ya29.a0AfH6SMBx-secret"),
    ("'X-Amz-Security-Token': 'FwoGZXIvYXdzEXAMPLETOKEN'", "FwoGZXIvYXdzEXAMPLETOKEN"),
    # botocore's request log prints header values as bytes: the b'' prefix let the token by
    ("headers={'X-Amz-Date': b'20261201T135135Z', 'X-Amz-Security-Token': "
     "b'FwoGZXIvYXdzEXAMPLETOKEN', 'X-Amz-Content-SHA256': b'UNSIGNED-PAYLOAD'}",
     "FwoGZXIvYXdzEXAMPLETOKEN"),
])
def test_credentials_in_request_headers_are_masked(text, secret):
    """The storage libraries' debug logs print request headers."""
    assert secret not in redact(text)


def test_debug_logs_of_the_storage_libraries_are_redacted(monkeypatch, capfd):
    """GIT_THETA_ZARR_DEBUG turns botocore's loggers on; what they print is redacted."""
    import logging

    from theta_zarr.logs import setup_logging

    monkeypatch.setenv("GIT_THETA_ZARR_DEBUG", "1")
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        setup_logging()
        logging.getLogger("botocore.endpoint").debug(
            "Sending http request: <AWSPreparedRequest headers={'Authorization': "
            "'AWS4-HMAC-SHA256 Credential=%s/20261130/us-east-1/s3/aws4_request, "
            "Signature=%s'}>", "AKIDEXAMPLE", "0f1e2d3c")
    finally:
        root.handlers[:], root.level = before
        monkeypatch.delenv("GIT_THETA_ZARR_DEBUG")
        setup_logging()  # the libraries' loggers quiet again
    err = capfd.readouterr().err
    assert "Sending http request" in err and "Credential=***" in err
    assert "AKIDEXAMPLE" not in err and "0f1e2d3c" not in err
