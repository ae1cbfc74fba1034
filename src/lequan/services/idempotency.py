"""Idempotency keys: a channel's retry replays the first answer instead of acting twice.

A key binds to an *effect*: the answer is stored in the same transaction as
what it did, so a stored answer always means the effect happened. Refusals
(4xx) change nothing and are not stored; retrying one simply asks again.
A key reused while its first request is still running gets 409, and the
same key with another body gets 422.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from lequan.domain.errors import IdempotencyError, InvalidInput
from lequan.ports import KeyHolds, UnitOfWork

__all__ = [
    "Answer",
    "Idempotency",
    "InFlight",
    "RecordAnswer",
    "RenderedBody",
    "replay_or_refuse",
    "request_hash",
    "run_once",
    "validate_key",
]

log = structlog.get_logger(__name__)

# Stores the answer for a service's result in the service's own transaction.
RecordAnswer = Callable[[UnitOfWork, Any], None]

KEY_PATTERN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")


class RenderedBody(Mapping[str, Any]):
    """An answer body known first as its JSON text, parsed only if someone reads it.

    A batch of a thousand claims renders a thousand "issued" answers that go
    out and into the store as text; none of them needs to be a dict as well.
    """

    __slots__ = ("_parsed", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._parsed: dict[str, Any] | None = None

    def _mapping(self) -> dict[str, Any]:
        if self._parsed is None:
            parsed = json.loads(self.text)
            assert isinstance(parsed, dict), "an answer body is a JSON object"
            self._parsed = parsed
        return self._parsed

    def __getitem__(self, name: str) -> Any:
        return self._mapping()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __repr__(self) -> str:
        return f"RenderedBody({self.text!r})"


@dataclass(frozen=True, slots=True)
class Answer:
    status_code: int
    body: Mapping[str, Any]
    # The body already rendered, when the caller has it cheaper than json.dumps.
    text: str | None = field(default=None, compare=False)

    def json(self) -> str:
        if self.text is not None:
            return self.text
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":"), sort_keys=True)

    @classmethod
    def of(cls, status_code: int, body: Mapping[str, Any]) -> Answer:
        """An answer rendered now, for one that many requests of a batch share."""
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        return cls(status_code, body, text=text)

    @classmethod
    def rendered(cls, status_code: int, text: str) -> Answer:
        """An answer whose body is the JSON ``text``, kept as it is."""
        return cls(status_code, RenderedBody(text), text=text)


@dataclass(frozen=True, slots=True)
class Idempotency:
    """One key of one app, with the digest of the request that first used it."""

    app_id: str
    key: str
    request_hash: str

    def row(self, answer: Answer, now: datetime) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "key": self.key,
            "request_hash": self.request_hash,
            "status_code": answer.status_code,
            "response_json": answer.json(),
            "created_at": now,
        }

    def record(self, uow: UnitOfWork, answer: Answer, now: datetime) -> None:
        """Store the answer in the caller's transaction, beside its effect."""
        uow.idempotency.store_answers([self.row(answer, now)])


def validate_key(key: str | None, *, chars_max: int) -> str:
    if not key:
        raise InvalidInput("idempotency_key_required", "an Idempotency-Key is required")
    if len(key) > chars_max or not KEY_PATTERN_CHARS.issuperset(key):
        raise InvalidInput(
            "invalid_idempotency_key",
            f"an Idempotency-Key is 1 to {chars_max} characters of letters, digits and -_.:",
        )
    return key


def request_hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\x00")
    return digest.hexdigest()


def replay_or_refuse(stored: tuple[str, int, str] | None, key: Idempotency) -> Answer | None:
    """The stored answer for a retry, None for a new key; 422 for a changed body."""
    if stored is None:
        return None
    stored_hash, status_code, response_json = stored
    if stored_hash != key.request_hash:
        raise IdempotencyError(
            "idempotency_mismatch", "this Idempotency-Key was used with a different request"
        )
    return Answer.rendered(status_code, response_json)


def in_flight() -> IdempotencyError:
    """The refusal of a request whose key's first request is still running."""
    return IdempotencyError(
        "idempotency_in_flight", "a request with this Idempotency-Key is in progress"
    )


class InFlight:
    """Keys whose first request is still running: in this process (bounded), and a
    claim's in every process that shares ``shared`` too.

    With a shared gate, claims (``acquire_many``) are held in ``shared`` as
    well, for ``hold_ttl_s`` at most: a claim asks the gate before the store,
    and the gate counts the first request's reservation, so a retry in
    another process would hear "already claimed" where it must hear "in
    flight" or the replay. Single calls (``acquire``: redemptions, operators'
    calls) are held here only: each writes its effect and its answer in one
    transaction under its key, so the store refuses a second process's
    duplicate and the answer is replayed.
    """

    def __init__(
        self,
        entries_max: int = 100_000,
        *,
        shared: KeyHolds | None = None,
        hold_ttl_s: float = 60.0,
    ) -> None:
        self._lock = threading.Lock()
        self._keys: set[tuple[str, str]] = set()
        self._entries_max = entries_max
        self._shared = shared
        self._hold_ttl_s = hold_ttl_s

    def acquire(self, app_id: str, key: str) -> None:
        with self._lock:
            if (app_id, key) in self._keys:
                raise in_flight()
            assert len(self._keys) < self._entries_max, "in-flight keys exceed the request limits"
            self._keys.add((app_id, key))

    def release(self, app_id: str, key: str) -> None:
        with self._lock:
            self._keys.discard((app_id, key))

    def acquire_many(self, keys: Sequence[tuple[str, str]]) -> list[bool]:
        """Hold every (app_id, key) not held yet, here and in ``shared``: True where now held.

        A key held already (here or, in ``shared``, by another process), or
        twice in ``keys``, is False there: its request is answered
        ``idempotency_in_flight`` by the caller. Raises ``GateUnavailable``,
        holding nothing, when ``shared`` cannot be reached.
        """
        held = self._acquire_here(keys)
        if self._shared is None or not any(held):
            return held
        mine = [entry for entry, now_held in zip(keys, held, strict=True) if now_held]
        try:
            shared = self._shared.hold(mine, ttl_s=self._hold_ttl_s)
        except BaseException:
            self._release_here(mine)
            raise
        self._release_here([entry for entry, ok in zip(mine, shared, strict=True) if not ok])
        answers = iter(shared)
        return [now_held and next(answers) for now_held in held]

    def _acquire_here(self, keys: Sequence[tuple[str, str]]) -> list[bool]:
        held: list[bool] = []
        with self._lock:
            assert len(self._keys) + len(keys) <= self._entries_max, (
                "in-flight keys exceed the request limits"
            )
            for entry in keys:
                if entry in self._keys:
                    held.append(False)
                else:
                    self._keys.add(entry)
                    held.append(True)
        return held

    def release_many(self, keys: Iterable[tuple[str, str]]) -> None:
        """Let go of keys ``acquire_many`` held; never raises (a shared hold the gate's
        server cannot be told about expires after ``hold_ttl_s``)."""
        entries = list(keys)
        self._release_here(entries)
        if self._shared is None or not entries:
            return
        try:
            self._shared.let_go(entries)
        except Exception as error:
            log.warning(
                "inflight_let_go_failed", error_type=type(error).__name__, keys=len(entries)
            )

    def _release_here(self, keys: Iterable[tuple[str, str]]) -> None:
        with self._lock:
            self._keys.difference_update(keys)


def run_once(
    *,
    inflight: InFlight,
    key: Idempotency,
    lookup: Callable[[], tuple[str, int, str] | None],
    act: Callable[[], Answer],
) -> Answer:
    """Replay a stored answer, or act once while holding the key in flight."""
    replay = replay_or_refuse(lookup(), key)
    if replay is not None:
        return replay
    inflight.acquire(key.app_id, key.key)
    try:
        replay = replay_or_refuse(lookup(), key)
        if replay is not None:
            return replay
        return act()
    finally:
        inflight.release(key.app_id, key.key)
