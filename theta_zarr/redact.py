"""One place that keeps secrets out of what theta-zarr prints: URLs' userinfo and signed queries.

Every message a user reads (errors from any layer, botocore's and aiohttp's included,
remote listings, push summaries) passes through :func:`redact` before it is printed.
A URL's ``user:password@`` part is dropped and the values of query parameters that
carry credentials (``X-Amz-Signature``, ``X-Amz-Credential``, ``token``...) become
``***``.  Plain paths and bucket URLs pass through unchanged.
"""

from __future__ import annotations

import re

#: scheme://userinfo@  (userinfo: anything up to '@' without '/', whitespace or quotes)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s'\"<>]*@")
#: query parameters whose values are credentials (AWS and GCS signed URLs, OAuth tokens)
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&](?:X-Amz-(?:Signature|Credential|Security-Token)|X-Goog-(?:Signature|"
    r"Credential)|Signature|AWSAccessKeyId|access_token|token|sig|password|secret|key)=)"
    r"[^&\s'\"<>]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URL's userinfo removed and credential query values masked.

    >>> redact("cannot read s3://AKID:secret@bucket/x?X-Amz-Signature=abc&a=1")
    'cannot read s3://bucket/x?X-Amz-Signature=***&a=1'
    """
    text = _USERINFO.sub(lambda m: m.group("scheme"), text)
    return _SECRET_QUERY.sub(lambda m: m.group("key") + "***", text)


def mask_userinfo(url: str) -> str:
    """``url`` with its userinfo shown as ``***@`` (to say where the credentials were)."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", url)


def has_userinfo(url: str) -> bool:
    """True when ``url`` carries a ``user[:password]@`` part (credentials in the URL)."""
    return _USERINFO.match(url.strip()) is not None
