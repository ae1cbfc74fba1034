"""The screen's session: an operator's token, given once, kept as a signed cookie.

A browser's ``EventSource`` cannot send an ``Authorization`` header, and an
operator's token must not sit in page scripts or URLs, so ``/screen/login``
posts the token once and the server answers with a cookie holding the
operator's id and an expiry, signed with a key derived from the key file
(every process of the platform has it; no session table). The cookie is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (another site's page
never sends it) and ``Secure`` when served over TLS. Each use checks the
signature, the expiry, and that the operator is still active with the role
the store has now (a revoked operator's cookie stops working at once). A
change made with the cookie must also carry ``X-Lequan-CSRF: 1``, which a
page of another site cannot send without the server's consent.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from dataclasses import dataclass

from lequan.domain.errors import AuthError
from lequan.ports import KeyRing
from lequan.services.runtime import Runtime

__all__ = ["COOKIE", "CSRF_HEADER", "SessionOperator", "open_session", "read_session"]

COOKIE = "lequan_session"
CSRF_HEADER = "x-lequan-csrf"
_FIELD = "screen_session"  # the blind-index field whose key signs sessions
COOKIE_CHARS_MAX = 512


@dataclass(frozen=True, slots=True)
class SessionOperator:
    operator_id: str
    role: str


def _sign(keyring: KeyRing, payload: str) -> str:
    return keyring.blind_index(_FIELD, payload)


def open_session(rt: Runtime, operator_id: str) -> str:
    """The cookie's value for an operator who just showed a valid token."""
    expires = int(time.time()) + rt.settings.screen_session_s
    payload = base64.urlsafe_b64encode(
        json.dumps({"op": operator_id, "exp": expires}, separators=(",", ":")).encode()
    ).decode()
    return f"{payload}.{_sign(rt.keyring, payload)}"


def read_session(rt: Runtime, value: str | None) -> SessionOperator:
    """The operator a cookie names, or ``AuthError`` (401): missing, forged, expired, or
    its operator no longer active."""
    if not value or len(value) > COOKIE_CHARS_MAX or "." not in value:
        raise AuthError("unauthenticated", "sign in to the screen first (/screen/login)")
    payload, _, signature = value.rpartition(".")
    if not hmac.compare_digest(signature, _sign(rt.keyring, payload)):
        raise AuthError("unauthenticated", "the session is not valid; sign in again")
    try:
        fields = json.loads(base64.urlsafe_b64decode(payload.encode()))
        operator_id, expires = str(fields["op"]), int(fields["exp"])
    except (ValueError, KeyError, TypeError):
        raise AuthError("unauthenticated", "the session is not valid; sign in again") from None
    if expires <= time.time():
        raise AuthError("unauthenticated", "the session has expired; sign in again")
    with rt.store.unit_of_work(readonly=True) as uow:
        role = uow.people.operator_role(operator_id)
    if role is None:
        raise AuthError("unauthenticated", "this operator is no longer active")
    return SessionOperator(operator_id, role)
