"""Request signing: how a channel or acquirer proves who sent a request and that nobody changed it.

The rule is fixed, because every integrator codes against it. Four headers::

    X-Lequan-App        the app id
    X-Lequan-Timestamp  unix seconds, a decimal integer without sign or leading zeros
    X-Lequan-Nonce      8-64 characters of [A-Za-z0-9_-], never reused by the app within the window
    X-Lequan-Signature  lowercase hex HMAC-SHA256, keyed with the UTF-8 bytes of the app's secret,
                        over the canonical string below

and the canonical string, five lines joined by ``"\\n"`` (no trailing newline)::

    METHOD            upper case, e.g. POST
    PATH_WITH_QUERY   the raw request target exactly as sent: path, plus "?query" if any
    TIMESTAMP         the X-Lequan-Timestamp value
    NONCE             the X-Lequan-Nonce value
    BODY_SHA256       lowercase hex SHA-256 of the raw body bytes (of b"" when there is none)

This module is pure: no clock, no I/O, no store. The server reads the four
headers with ``parse_headers``, looks up the app's secret (an unknown app is
the caller's ``unknown_app``), calls ``verify_signed`` (or ``verify``, which
parses again) with the time, and only then records the nonce in a
``NonceStore`` so a replay within the window is refused (``nonce_reused``),
and refuses a timestamp older than the nonce store's epoch, before which
it may have forgotten nonces (``stale_timestamp``; ``http/deps.py``).
The server must pass the request target as received, e.g. from an ASGI scope
``raw_path + b"?" + query_string`` decoded as ASCII, never a re-encoded URL.

Every refusal is an ``AuthError`` (HTTP 401) with one of the codes
``missing_signature``, ``invalid_timestamp``, ``stale_timestamp``,
``invalid_nonce`` and ``invalid_signature`` (and ``unknown_app`` for an app
id longer than any app has, so the caller need not look it up).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from lequan.domain.errors import AuthError

__all__ = [
    "APP_HEADER",
    "APP_ID_LENGTH_MAX",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SignedHeaders",
    "VerifiedRequest",
    "body_digest",
    "canonical_string",
    "parse_headers",
    "sign",
    "signature_headers",
    "verify",
    "verify_signed",
]

APP_HEADER = "X-Lequan-App"
TIMESTAMP_HEADER = "X-Lequan-Timestamp"
NONCE_HEADER = "X-Lequan-Nonce"
SIGNATURE_HEADER = "X-Lequan-Signature"

_HEADERS = (APP_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
_HEADERS_LOWER = frozenset(name.lower() for name in _HEADERS)

# Digits only, no sign, no leading zero: then str(int(value)) == value, so the
# timestamp the client signed and the one the server re-signs are the same
# text. Twelve digits reach the year 33658 and keep int() cheap.
_TIMESTAMP_RE = re.compile(r"0|[1-9][0-9]{0,11}")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
APP_ID_LENGTH_MAX = 64


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    """The four signature headers, well formed but not yet verified."""

    app_id: str
    timestamp: int
    nonce: str
    signature: str


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    """A request whose signature matched: who sent it, when, and the nonce to remember."""

    app_id: str
    timestamp: int
    nonce: str


def body_digest(body: bytes) -> str:
    """Lowercase hex SHA-256 of the raw body; the last line of the canonical string."""
    return hashlib.sha256(body).hexdigest()


def canonical_string(
    method: str, path_with_query: str, timestamp: int, nonce: str, body: bytes
) -> str:
    """The exact text that is signed; exposed so integrators can compare theirs line by line."""
    return "\n".join((method.upper(), path_with_query, str(timestamp), nonce, body_digest(body)))


# The positional order is the canonical string's own order, as published to integrators.
def sign(  # noqa: PLR0917
    secret: str, method: str, path_with_query: str, timestamp: int, nonce: str, body: bytes
) -> str:
    """The lowercase hex HMAC-SHA256 of the canonical string, keyed with the secret's UTF-8."""
    message = canonical_string(method, path_with_query, timestamp, nonce, body)
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def signature_headers(
    app_id: str,
    secret: str,
    method: str,
    path_with_query: str,
    body: bytes,
    *,
    timestamp: int,
    nonce: str,
) -> dict[str, str]:
    """The four headers a client adds to one request; the caller picks the time and the nonce."""
    assert _NONCE_RE.fullmatch(nonce), "nonce must be 8-64 characters of [A-Za-z0-9_-]"
    assert timestamp >= 0, "timestamp is unix seconds"
    return {
        APP_HEADER: app_id,
        TIMESTAMP_HEADER: str(timestamp),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign(secret, method, path_with_query, timestamp, nonce, body),
    }


def parse_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """Read and check the form of the four headers, so the caller can look up the app's secret.

    Header names are matched without regard to case. A header given twice is
    refused rather than guessed at, since two parts of the stack could pick
    different copies.
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in _HEADERS_LOWER:
            if key in found:
                raise AuthError("invalid_signature", f"header {name} is given more than once")
            found[key] = value

    # An empty header is what some proxies leave of a stripped one: count it as absent.
    missing = [name for name in _HEADERS if not found.get(name.lower())]
    if missing:
        raise AuthError(
            "missing_signature",
            f"the request is not signed: missing {', '.join(missing)}",
            details={"missing": missing},
        )

    app_id = found[APP_HEADER.lower()]
    if len(app_id) > APP_ID_LENGTH_MAX:
        # No app id is this long, so the answer is the one an unknown app gets.
        raise AuthError("unknown_app", f"{APP_HEADER} names no app")

    raw_timestamp = found[TIMESTAMP_HEADER.lower()]
    if not _TIMESTAMP_RE.fullmatch(raw_timestamp):
        raise AuthError(
            "invalid_timestamp",
            f"{TIMESTAMP_HEADER} must be unix seconds as a decimal integer",
        )

    nonce = found[NONCE_HEADER.lower()]
    if not _NONCE_RE.fullmatch(nonce):
        raise AuthError("invalid_nonce", f"{NONCE_HEADER} must be 8-64 characters of [A-Za-z0-9_-]")

    signature = found[SIGNATURE_HEADER.lower()]
    if not _SIGNATURE_RE.fullmatch(signature):
        raise AuthError("invalid_signature", f"{SIGNATURE_HEADER} must be 64 lowercase hex digits")

    return SignedHeaders(
        app_id=app_id, timestamp=int(raw_timestamp), nonce=nonce, signature=signature
    )


def verify_signed(
    signed: SignedHeaders,
    *,
    secret: str,
    method: str,
    path_with_query: str,
    body: bytes,
    now_s: int,
    max_skew_s: int,
) -> VerifiedRequest:
    """Check the time and the signature of headers already parsed; the nonce is the caller's."""
    assert max_skew_s >= 0
    skew_s = now_s - signed.timestamp
    if abs(skew_s) > max_skew_s:
        raise AuthError(
            "stale_timestamp",
            f"{TIMESTAMP_HEADER} is {abs(skew_s)} s off the server's clock; "
            f"at most {max_skew_s} s is accepted",
            details={"server_time_s": now_s, "max_skew_s": max_skew_s},
        )
    # A newline inside the method or target would let two different requests
    # share one canonical string; HTTP servers never deliver one, so refuse.
    if "\n" in method or "\n" in path_with_query:
        raise AuthError("invalid_signature", "the request line cannot be signed")

    expected = sign(secret, method, path_with_query, signed.timestamp, signed.nonce, body)
    if not hmac.compare_digest(expected, signed.signature):
        raise AuthError(
            "invalid_signature",
            "the signature does not match the request; check the canonical string",
        )
    return VerifiedRequest(app_id=signed.app_id, timestamp=signed.timestamp, nonce=signed.nonce)


def verify(
    *,
    secret: str,
    method: str,
    path_with_query: str,
    headers: Mapping[str, str],
    body: bytes,
    now_s: int,
    max_skew_s: int,
) -> VerifiedRequest:
    """Parse the four headers and check the time and the signature in one call."""
    return verify_signed(
        parse_headers(headers),
        secret=secret,
        method=method,
        path_with_query=path_with_query,
        body=body,
        now_s=now_s,
        max_skew_s=max_skew_s,
    )
