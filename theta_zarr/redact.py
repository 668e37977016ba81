"""One place that keeps secrets out of what theta-zarr prints: URLs' userinfo and signed queries.

Every message a user reads (errors from any layer, botocore's and aiohttp's included,
remote listings, push summaries) passes through :func:`redact` before it is printed.
A URL's ``user:password@`` part is dropped (the mask ``***@`` that an error puts there
to say where credentials were is kept) and the values of query parameters that
carry credentials (``X-Amz-Signature``, ``X-Amz-Credential``, ``token``...) become
``***``, as do credentials in request headers (SigV4 ``Credential=`` / ``Signature=``,
``Bearer`` tokens), which the storage libraries' debug logs print.  Plain paths and
bucket URLs pass through unchanged.
"""

from __future__ import annotations

import re

#: scheme://userinfo@  (userinfo: anything up to '@' without '/', whitespace or quotes)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s'\"<>]*@")
#: the same, except the mask ``***@`` that says where credentials were (mask_userinfo)
_UNMASKED_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?!\*\*\*@)[^/@\s'\"<>]*@")
#: query parameters whose values are credentials (AWS and GCS signed URLs, OAuth tokens)
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&](?:X-Amz-(?:Signature|Credential|Security-Token)|X-Goog-(?:Signature|"
    r"Credential)|Signature|AWSAccessKeyId|access_token|token|sig|password|secret|key)=)"
    r"[^&\s'\"<>]*", re.IGNORECASE)


#: credentials in request headers as the storage libraries' debug logs print them: SigV4's
#: ``Credential=AKID/date/...`` and ``Signature=...``, OAuth ``Bearer`` tokens, session tokens
#: (botocore prints header values as bytes: ``'X-Amz-Security-Token': b'...'``)
_SECRET_HEADER = re.compile(
    r"(?P<key>\b(?:Credential|Signature)=|\bBearer\s+|(?:X-Amz-Security-Token|"
    r"x-goog-iam-authorization-token)['\"]?\s*[:=]\s*(?:b?['\"])?)[^,&\s'\"<>]+",
    re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URL's userinfo removed and credential values masked (signed
    URLs' query parameters, and the credential parts of request headers).

    >>> redact("cannot read s3://AKID:secret@bucket/x?X-Amz-Signature=abc&a=1")
    'cannot read s3://bucket/x?X-Amz-Signature=***&a=1'
    >>> redact("'Authorization': 'AWS4-HMAC-SHA256 Credential=AKID/20261130/us-east-1/s3/"
    ...        "aws4_request, SignedHeaders=host, Signature=f00d'")
    "'Authorization': 'AWS4-HMAC-SHA256 Credential=***, SignedHeaders=host, Signature=***'"
    """
    text = _UNMASKED_USERINFO.sub(lambda m: m.group("scheme"), text)
    text = _SECRET_QUERY.sub(lambda m: m.group("key") + "***", text)
    return _SECRET_HEADER.sub(lambda m: m.group("key") + "***", text)


def credential_part(url: str) -> str | None:
    """Which part of ``url`` carries credentials, as a message names it (``user:password@``,
    or a signed URL's or token's query parameter: ``query parameter X-Amz-Signature``);
    None when none does."""
    if has_userinfo(url):
        return "user:password@"
    found = _SECRET_QUERY.search(url)
    return f"query parameter {found.group('key')[1:-1]}" if found else None


def mask_credentials(url: str) -> str:
    """``url`` with its userinfo shown as ``***@`` and credential query values as ``***``
    (to say where the credentials were, without them)."""
    return _SECRET_QUERY.sub(lambda m: m.group("key") + "***", mask_userinfo(url))


def mask_userinfo(url: str) -> str:
    """``url`` with its userinfo shown as ``***@`` (to say where the credentials were)."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", url)


def has_userinfo(url: str) -> bool:
    """True when ``url`` carries a ``user[:password]@`` part (credentials in the URL)."""
    return _USERINFO.match(url.strip()) is not None
