"""Whether this process's key ring is the one the store's data is written under.

Another key file than the data's does not fail loudly by itself: every app
secret fails to open (each signed call would be refused), every blind
index differs (a known ID number would be filed as a second person, the
blacklist would match nobody). So the store keeps canaries
(``KeyCheckRepository``): the blind-index key's digest of a fixed label,
and a fixed text encrypted under each key id that was ever active. A key
ring must reproduce them all to start; a rotated ring that keeps its old
keys does, and its new active key gets a canary of its own.

A store written before its canaries (migration 0007) gets them from the
first start, once the ring has opened values the store already holds and
filed an ID number under the blind index it was filed under: a wrong key
file is never pinned over existing data.
"""

from __future__ import annotations

import hmac
from datetime import datetime

from lequan.ports import DuplicateKey, KeyMismatch, KeyRing, Store, UnitOfWork

__all__ = ["BLIND_INDEX_CANARY", "check_keys", "key_canary_name"]

BLIND_INDEX_CANARY = "blind_index"
# The field (associated data) and the fixed texts canaries are made from.
_CANARY_FIELD = "key_canary"
_CANARY_TEXT = "lequan key canary v1"
# Values a store older than its canaries is checked against before they are written.
SAMPLES_MAX = 32


def key_canary_name(key_id: str) -> str:
    return f"key:{key_id}"


def check_keys(store: Store, keyring: KeyRing, *, now: datetime) -> None:
    """Refuse a key ring that does not match the store's data (``KeyMismatch`` saying
    what differs); pin what is new of a matching one (first start, a new active key)."""
    digest = keyring.blind_index(_CANARY_FIELD, _CANARY_TEXT).encode("ascii")
    for _ in range(2):
        with store.unit_of_work() as uow:
            stored = uow.keys.canaries()
            _compare(stored, keyring, digest)
            missing: dict[str, bytes] = {}
            if BLIND_INDEX_CANARY not in stored:
                _check_samples(uow, keyring)
                missing[BLIND_INDEX_CANARY] = digest
            active = key_canary_name(keyring.active_key_id)
            if active not in stored:
                missing[active] = keyring.encrypt(_CANARY_FIELD, _CANARY_TEXT)[1]
            if not missing:
                return
            try:
                uow.keys.add_canaries(missing, now=now)
                uow.commit()
                return
            except DuplicateKey:
                continue  # another process pinned first: compare with what it wrote
    raise AssertionError("canaries written by another process are read on the second look")


def _compare(stored: dict[str, bytes], keyring: KeyRing, digest: bytes) -> None:
    expected = stored.get(BLIND_INDEX_CANARY)
    if expected is not None and not hmac.compare_digest(expected, digest):
        raise KeyMismatch(
            "the blind-index key differs from the one the store's ID numbers are filed under"
        )
    for name, ciphertext in sorted(stored.items()):
        if not name.startswith("key:"):
            continue
        key_id = name.removeprefix("key:")
        try:
            opened = keyring.decrypt(_CANARY_FIELD, key_id, ciphertext)
        except KeyMismatch:
            opened = None
        if opened != _CANARY_TEXT:
            raise KeyMismatch(
                f"key {key_id!r}, under which the store holds data, is missing from this "
                "key file or is another key of the same id"
            )


def _check_samples(uow: UnitOfWork, keyring: KeyRing) -> None:
    for sample in uow.keys.sealed_samples(SAMPLES_MAX):
        try:
            value = keyring.decrypt(sample.field, sample.key_id, sample.ciphertext)
        except KeyMismatch:
            raise KeyMismatch(
                f"a stored {sample.field} under key {sample.key_id!r} does not open with this "
                "key file (the store has no key canaries yet; none were written)"
            ) from None
        if sample.blind_index is not None and not hmac.compare_digest(
            keyring.blind_index(sample.field, value), sample.blind_index
        ):
            raise KeyMismatch(
                f"a stored {sample.field} is filed under another blind-index key "
                "(the store has no key canaries yet; none were written)"
            )
