"""Central's use cases: evaluate pseudonyms, lock, consume, release, take events, and
tell a province's day; the operator's revoke and move.

Each batch is one transaction (``CentralStore.transaction``): read once,
decide every item through ``lequan.domain.qualification``, write once.
Every qualification a batch may change is locked first, in key order, and
every lock row changes only under its qualification's lock: the rule that
makes "count the live slots and take one" safe when two provinces race,
and keeps the order of locks the same everywhere (no deadlock).

Input is checked here, before anything is read, so the HTTP API and the
in-process fake refuse the same things with the same codes and a refused
batch changes nothing.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from lequan.central.ports import CentralStore, CentralTx, EventRow, Fact, LockRow, qualification_id
from lequan.domain import qualification as q
from lequan.domain.error_codes import ErrorCode
from lequan.domain.errors import InvalidInput, NotFound
from lequan.domain.qualification import Action, SerialKey, SlotState, Step
from lequan.oprf import PseudonymKey, decode_blinded
from lequan.ports import Clock
from lequan.ports.central import (
    BATCH_MAX,
    CentralDay,
    ConsumeOutcome,
    ConsumeRequest,
    ConsumeResult,
    EventOutcome,
    EventResult,
    LockOutcome,
    LockRequest,
    LockResult,
    SyncEvent,
)
from lequan.ports.errors import DuplicateKey

__all__ = [
    "HOLD_S_MAX",
    "PRICE_FEN_MAX",
    "CentralService",
]

T = TypeVar("T")

ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
TOPIC_PATTERN = re.compile(r"[a-z][a-z0-9_.]{0,63}")
HOLD_S_MIN = 1
HOLD_S_MAX = 7 * 86_400
# Above any appliance or phone a subsidy scheme covers: a price beyond is a typo.
PRICE_FEN_MAX = 100_000_000
INVOICE_CHARS_MAX = 64
REASON_CHARS_MAX = 200
SEQ_MAX = 1_000_000
# A consume or an event batch that lost a race for a serial number to another batch
# is decided again, from the registry as it now is, at most this many times.
ATTEMPTS_MAX = 3


def _invalid(code: ErrorCode, message: str, index: int | None = None) -> InvalidInput:
    details = {"index": index} if index is not None else None
    return InvalidInput(code, message, details=details)


def _check_batch(items: Sequence[Any], ids: Sequence[str], what: str) -> None:
    if not items:
        raise InvalidInput("central_invalid_batch", f"a batch of {what} holds at least one")
    if len(items) > BATCH_MAX:
        raise InvalidInput(
            "central_batch_too_large",
            f"a batch holds at most {BATCH_MAX} {what}, not {len(items)}",
            details={"items_max": BATCH_MAX},
        )
    seen: set[str] = set()
    for index, item_id in enumerate(ids):
        if not ID_PATTERN.fullmatch(item_id):
            raise _invalid(
                ErrorCode.CENTRAL_INVALID_ID, "an id is 1-64 of A-Z a-z 0-9 _ . : -", index=index
            )
        if item_id in seen:
            raise _invalid(
                ErrorCode.CENTRAL_DUPLICATE_ITEM,
                f"{item_id!r} appears twice in the batch",
                index=index,
            )
        seen.add(item_id)


def check_pseudonym(pseudonym: str, index: int | None = None) -> None:
    if not q.PSEUDONYM_PATTERN.fullmatch(pseudonym):
        raise _invalid(
            ErrorCode.CENTRAL_INVALID_PSEUDONYM, "a pseudonym is 64 lowercase hex characters", index
        )


def check_category(category: str, index: int | None = None) -> None:
    if not q.CATEGORY_PATTERN.fullmatch(category):
        raise _invalid(
            ErrorCode.CENTRAL_INVALID_CATEGORY,
            "a category is 1-40 of a-z 0-9 _, starting with a letter",
            index,
        )


def check_reason(reason: str, index: int | None = None) -> None:
    if not (1 <= len(reason) <= REASON_CHARS_MAX) or not reason.isprintable():
        raise _invalid(
            ErrorCode.CENTRAL_INVALID_REASON,
            f"a reason is 1-{REASON_CHARS_MAX} printable characters",
            index,
        )


@dataclass(frozen=True, slots=True)
class _Product:
    """A consumption's facts, checked: its registry keys and amounts."""

    category: str
    keys: tuple[SerialKey, ...]
    invoice_no: str
    price_fen: int
    subsidy_fen: int


def _product(
    *,
    category: str,
    serial: str | None,
    imei: str | None,
    invoice_no: str,
    price_fen: int,
    subsidy_fen: int,
    index: int | None = None,
) -> _Product:
    check_category(category, index)
    try:
        keys = tuple(q.serial_keys(serial, imei))
    except InvalidInput as error:
        error.details = {"index": index} if index is not None else {}
        raise
    if not (1 <= len(invoice_no) <= INVOICE_CHARS_MAX) or not invoice_no.isprintable():
        raise _invalid(
            ErrorCode.CENTRAL_INVALID_PRODUCT,
            f"an invoice number is 1-{INVOICE_CHARS_MAX} printable characters",
            index,
        )
    if not (1 <= price_fen <= PRICE_FEN_MAX):
        raise _invalid(
            ErrorCode.CENTRAL_INVALID_AMOUNT, f"price_fen is 1 to {PRICE_FEN_MAX} (fen)", index
        )
    if not (0 <= subsidy_fen <= price_fen):
        raise _invalid(
            ErrorCode.CENTRAL_INVALID_AMOUNT, "subsidy_fen is 0 to the price, in fen", index
        )
    return _Product(category, keys, invoice_no, price_fen, subsidy_fen)


def _event_product(event: SyncEvent, lock: LockRow) -> _Product:
    """The product of a ``redemption.completed`` payload; ``InvalidInput`` when it is
    not one (the event is then rejected, not the batch)."""
    payload = event.payload
    product = payload.get("product")
    if not isinstance(product, Mapping):
        raise InvalidInput("central_invalid_product", "the payload has no product")
    fields = {
        "category": product.get("category", lock.category),
        # A province's redemption names them serial_number and invoice_number.
        "serial": product.get("serial", product.get("serial_number")),
        "imei": product.get("imei"),
        "invoice_no": product.get("invoice_no", product.get("invoice_number")),
        "price_fen": product.get("price_fen"),
        "subsidy_fen": payload.get("discount_fen", payload.get("subsidy_fen")),
    }
    for name in ("category", "invoice_no"):
        if not isinstance(fields[name], str):
            raise InvalidInput("central_invalid_product", f"product.{name} is not text")
    for name in ("serial", "imei"):
        if fields[name] is not None and not isinstance(fields[name], str):
            raise InvalidInput("central_invalid_product", f"product.{name} is not text")
    for name in ("price_fen", "subsidy_fen"):
        if type(fields[name]) is not int:
            raise InvalidInput("central_invalid_product", f"{name} is not an integer of fen")
    return _product(**fields)


@dataclass
class _Work:
    """One transaction's decisions, written at its end."""

    tx: CentralTx
    now: datetime
    province: str
    revoked: set[str]
    locks: dict[str, LockRow]
    live: dict[str, list[LockRow]] | None = None
    changed: dict[str, LockRow] = field(default_factory=dict)
    serial_owners: dict[SerialKey, str] = field(default_factory=dict)
    new_serials: list[tuple[SerialKey, str, str]] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)

    def live_of(self, qualification: str) -> list[LockRow]:
        if self.live is None:
            ids = sorted({lock.qualification for lock in self.locks.values()})
            self.live = defaultdict(list)
            for row in self.tx.live_locks(ids, self.now):
                self.live[row.qualification].append(row)
        return self.live[qualification]

    def free_slot(self, lock: LockRow) -> str | None:
        """Why ``lock`` cannot take a slot of its qualification again, or None; with
        the category's slots as the lock call that made it said (``items_max``)."""
        holders = [
            row.province
            for row in self.live_of(lock.qualification)
            if row.lock_id != lock.lock_id and q.is_live(row.state, row.expires_at, self.now)
        ]
        return q.lock_refusal(
            live_provinces=holders,
            province=lock.province,
            items_max=lock.items_max,
            revoked=lock.qualification in self.revoked,
        )

    def fact(self, lock: LockRow, name: str, count: int, amount_fen: int, at: datetime) -> None:
        self.facts.append(
            Fact(
                province=lock.province,
                category=lock.category,
                fact=name,
                count=count,
                amount_fen=amount_fen,
                day=q.day_of(at),
                at=at,
                lock_id=lock.lock_id,
                voucher_id=lock.voucher_id,
            )
        )

    def touch(self, lock: LockRow) -> None:
        lock.updated_at = self.now
        self.changed[lock.lock_id] = lock
        live = self.live_of(lock.qualification) if self.live is not None else None
        if live is not None and all(row.lock_id != lock.lock_id for row in live):
            live.append(lock)

    def write(self) -> None:
        tx = self.tx
        if self.changed:
            tx.update_locks([self.changed[key] for key in sorted(self.changed)])
        if self.freed:
            tx.free_serials(sorted(set(self.freed)))
        if self.new_serials:
            tx.add_serials(self.new_serials, self.now)
        if self.facts:
            tx.add_facts(self.facts)

    # The actions, each deciding through the domain's table.

    def consume(
        self,
        lock: LockRow,
        product: _Product,
        *,
        voucher_id: str | None,
        redemption_id: str | None,
        at: datetime,
    ) -> ConsumeOutcome:
        hold_passed = lock.expires_at is not None and self.now >= lock.expires_at
        how, after = q.step(lock.state, Action.CONSUME, hold_passed=hold_passed)
        if how is Step.REFUSE:
            return ConsumeOutcome.NOT_LOCKED
        if how is Step.SAME:
            same = redemption_id is None or lock.redemption_id == redemption_id
            return ConsumeOutcome.CONSUMED if same else ConsumeOutcome.NOT_LOCKED
        for key in product.keys:
            owner = self.serial_owners.get(key)
            if owner is not None and owner != lock.lock_id:
                return ConsumeOutcome.SERIAL_USED
        if how is Step.RETAKE and self.free_slot(lock) is not None:
            return ConsumeOutcome.NOT_LOCKED
        was_voucher = lock.state in (SlotState.LOCKED, SlotState.CONSUMED)
        lock.state = after
        lock.expires_at = None
        lock.voucher_id = voucher_id or lock.voucher_id
        lock.redemption_id = redemption_id
        lock.price_fen = product.price_fen
        lock.subsidy_fen = product.subsidy_fen
        self.touch(lock)
        if not was_voucher:
            self.fact(lock, "locked", 1, 0, at)
        self.fact(lock, "consumed", 1, product.price_fen, at)
        self.fact(lock, "subsidy", 1, product.subsidy_fen, at)
        for key in product.keys:
            self.serial_owners[key] = lock.lock_id
            self.new_serials.append((key, lock.lock_id, lock.province))
        return ConsumeOutcome.CONSUMED

    def issue(self, lock: LockRow, voucher_id: str | None, at: datetime) -> str | None:
        """Confirm a hold (voucher.issued): None, or why it cannot be."""
        hold_passed = lock.expires_at is not None and self.now >= lock.expires_at
        how, after = q.step(lock.state, Action.ISSUE, hold_passed=hold_passed)
        if how is Step.REFUSE:
            return f"lock_{lock.state}"
        if how is Step.SAME:
            return None
        if how is Step.RETAKE:
            refusal = self.free_slot(lock)
            if refusal is not None:
                return refusal
        lock.state = after
        lock.expires_at = None
        lock.voucher_id = voucher_id or lock.voucher_id
        self.touch(lock)
        self.fact(lock, "locked", 1, 0, at)
        return None

    def give_back(self, lock: LockRow, action: Action, reason: str, at: datetime) -> str | None:
        """Restore (refund, voucher usable) or release a lock: None, or why it cannot be."""
        hold_passed = lock.expires_at is not None and self.now >= lock.expires_at
        before = lock.state
        how, after = q.step(before, action, hold_passed=hold_passed)
        if how is Step.REFUSE:
            return f"lock_{before}"
        if how is not Step.MOVE:
            return None
        if before is SlotState.CONSUMED:
            self.fact(lock, "consumed", -1, -lock.price_fen, at)
            self.fact(lock, "subsidy", -1, -lock.subsidy_fen, at)
            self.freed.append(lock.lock_id)
            self.new_serials = [entry for entry in self.new_serials if entry[1] != lock.lock_id]
            for key, owner in list(self.serial_owners.items()):
                if owner == lock.lock_id:
                    del self.serial_owners[key]
            lock.redemption_id = None
            lock.price_fen = 0
            lock.subsidy_fen = 0
        gone = after in (SlotState.RELEASED, SlotState.REVOKED)
        if gone and before in (SlotState.LOCKED, SlotState.CONSUMED):
            self.fact(lock, "released", 1, 0, at)
        if after in (SlotState.RELEASED, SlotState.REVOKED):
            lock.reason = reason
        lock.state = after
        if after is not SlotState.HELD:
            lock.expires_at = None
        self.touch(lock)
        return None


class CentralService:
    """Central's use cases over its store; one instance per process, thread-safe
    (each call is its own transaction)."""

    def __init__(self, store: CentralStore, clock: Clock, key: PseudonymKey) -> None:
        self.store = store
        self.clock = clock
        self.key = key

    # Pseudonyms.

    def evaluate(self, blinded: Sequence[str]) -> bytes:
        """Evaluate a batch of blinded inputs (base64): the serialised batch answer."""
        if not blinded:
            raise InvalidInput("central_invalid_batch", "a batch of inputs holds at least one")
        if len(blinded) > BATCH_MAX:
            raise InvalidInput(
                "central_batch_too_large",
                f"a batch holds at most {BATCH_MAX} inputs, not {len(blinded)}",
                details={"items_max": BATCH_MAX},
            )
        return self.key.evaluate(decode_blinded(blinded))

    # Locks.

    def lock(self, province: str, requests: Sequence[LockRequest]) -> list[LockResult]:
        """Verify and lock a slot of each qualification; idempotent by ``lock_id``."""
        _check_batch(requests, [r.lock_id for r in requests], "locks")
        for index, request in enumerate(requests):
            check_pseudonym(request.pseudonym, index)
            check_category(request.category, index)
            if not (1 <= request.items_max <= q.ITEMS_MAX):
                raise _invalid(
                    ErrorCode.CENTRAL_INVALID_LOCK, f"items_max is 1 to {q.ITEMS_MAX}", index
                )
            if not (HOLD_S_MIN <= request.hold_s <= HOLD_S_MAX):
                raise _invalid(
                    ErrorCode.CENTRAL_INVALID_LOCK, f"hold_s is {HOLD_S_MIN} to {HOLD_S_MAX}", index
                )
        now = self.clock.now()
        with self.store.transaction() as tx:
            ids = sorted({qualification_id(r.pseudonym, r.category) for r in requests})
            revoked = tx.lock_qualifications(ids)
            existing = tx.locks([r.lock_id for r in requests])
            for index, request in enumerate(requests):
                found = existing.get(request.lock_id)
                if found is not None and (found.province, found.pseudonym, found.category) != (
                    province,
                    request.pseudonym,
                    request.category,
                ):
                    raise _invalid(
                        ErrorCode.CENTRAL_LOCK_ID_MISMATCH,
                        "this lock_id was used for another person, category or province",
                        index,
                    )
            live: dict[str, list[LockRow]] = defaultdict(list)
            for row in tx.live_locks(ids, now):
                live[row.qualification].append(row)
            results: list[LockResult] = []
            inserts: list[LockRow] = []
            updates: list[LockRow] = []
            for request in requests:
                qid = qualification_id(request.pseudonym, request.category)
                found = existing.get(request.lock_id)
                if found is not None and q.is_live(found.state, found.expires_at, now):
                    held = found.expires_at if found.state is SlotState.HELD else None
                    results.append(LockResult(request.lock_id, LockOutcome.LOCKED, held))
                    continue
                if found is not None and found.state is SlotState.REVOKED:
                    results.append(LockResult(request.lock_id, LockOutcome.REVOKED))
                    continue
                refusal = q.lock_refusal(
                    live_provinces=[row.province for row in live[qid]],
                    province=province,
                    items_max=request.items_max,
                    revoked=qid in revoked,
                )
                if refusal is not None:
                    results.append(LockResult(request.lock_id, LockOutcome(refusal)))
                    continue
                expires_at = now + timedelta(seconds=request.hold_s)
                if found is None:
                    row = LockRow(
                        lock_id=request.lock_id,
                        province=province,
                        pseudonym=request.pseudonym,
                        category=request.category,
                        state=SlotState.HELD,
                        expires_at=expires_at,
                        created_at=now,
                        updated_at=now,
                        items_max=request.items_max,
                    )
                    inserts.append(row)
                else:  # expired or released: the slot is taken again
                    row = found
                    row.state, row.expires_at, row.updated_at = SlotState.HELD, expires_at, now
                    row.items_max, row.reason = request.items_max, None
                    updates.append(row)
                live[qid].append(row)
                results.append(LockResult(request.lock_id, LockOutcome.LOCKED, expires_at))
            if inserts:
                tx.insert_locks(inserts)
            if updates:
                tx.update_locks(sorted(updates, key=lambda row: row.lock_id))
        return results

    def consume(self, province: str, requests: Sequence[ConsumeRequest]) -> list[ConsumeResult]:
        """Consume each lock for a redemption, checking the national serial registry."""
        _check_batch(requests, [r.lock_id for r in requests], "consumptions")
        products: list[_Product] = []
        for index, request in enumerate(requests):
            for name in ("voucher_id", "redemption_id"):
                if not ID_PATTERN.fullmatch(getattr(request, name)):
                    raise _invalid(
                        ErrorCode.CENTRAL_INVALID_ID,
                        f"{name} is 1-64 of A-Z a-z 0-9 _ . : -",
                        index,
                    )
            products.append(
                _product(
                    category=request.category,
                    serial=request.serial,
                    imei=request.imei,
                    invoice_no=request.invoice_no,
                    price_fen=request.price_fen,
                    subsidy_fen=request.subsidy_fen,
                    index=index,
                )
            )

        def decide(work: _Work) -> list[ConsumeResult]:
            results: list[ConsumeResult] = []
            for index, (request, product) in enumerate(zip(requests, products, strict=True)):
                lock = work.locks.get(request.lock_id)
                if lock is None or lock.province != province:
                    results.append(ConsumeResult(request.lock_id, ConsumeOutcome.NOT_LOCKED))
                    continue
                if lock.category != product.category:
                    raise _invalid(
                        ErrorCode.CENTRAL_CATEGORY_MISMATCH,
                        f"the lock is for {lock.category}, the product a {product.category}",
                        index,
                    )
                outcome = work.consume(
                    lock,
                    product,
                    voucher_id=request.voucher_id,
                    redemption_id=request.redemption_id,
                    at=work.now,
                )
                results.append(ConsumeResult(request.lock_id, outcome))
            return results

        keys = sorted({key for product in products for key in product.keys})
        return self._with_locks(province, [r.lock_id for r in requests], keys, decide)

    def release(self, province: str, items: Sequence[tuple[str, str]]) -> int:
        """Give back each held or locked lock of this province; how many were.

        A consumed lock stays consumed (a refund gives it back through its
        event); an unknown lock, or another province's, is left alone.
        """
        _check_batch(items, [lock_id for lock_id, _ in items], "releases")
        for index, (_, reason) in enumerate(items):
            check_reason(reason, index)
        reasons = dict(items)

        def decide(work: _Work) -> int:
            released = 0
            for lock_id, _reason in items:
                lock = work.locks.get(lock_id)
                if lock is None or lock.province != province:
                    continue
                if lock.state not in (SlotState.HELD, SlotState.LOCKED):
                    continue
                if work.give_back(lock, Action.RELEASE, reasons[lock_id], work.now) is None:
                    released += 1
            return released

        return self._with_locks(province, [lock_id for lock_id, _ in items], [], decide)

    def _with_locks(
        self,
        province: str,
        lock_ids: Sequence[str],
        serials: Sequence[SerialKey],
        decide: Callable[[_Work], T],
        *,
        vouchers: Sequence[str] = (),
        before: Callable[[CentralTx], None] | None = None,
    ) -> T:
        """Run ``decide`` in a transaction holding the qualifications of these locks
        (and of these vouchers' locks), the locks read under them; retried when a
        serial number was registered by a racing batch meanwhile."""
        for attempt in range(1, ATTEMPTS_MAX + 1):
            now = self.clock.now()
            try:
                with self.store.transaction() as tx:
                    if before is not None:
                        before(tx)
                    first = tx.locks(lock_ids)
                    by_voucher = tx.locks_of_vouchers(province, vouchers) if vouchers else {}
                    ids = sorted(
                        {row.qualification for row in [*first.values(), *by_voucher.values()]}
                    )
                    revoked = tx.lock_qualifications(ids)
                    # Read again under the qualifications' locks: now they cannot change.
                    locks = tx.locks(sorted({*lock_ids, *(r.lock_id for r in by_voucher.values())}))
                    work = _Work(tx, now, province, revoked, locks)
                    work.serial_owners = tx.serial_owners(serials) if serials else {}
                    result = decide(work)
                    work.write()
                    return result
            except DuplicateKey:
                if attempt == ATTEMPTS_MAX:
                    raise
        raise AssertionError("unreachable")

    # Events.

    def deliver(self, province: str, events: Sequence[SyncEvent]) -> list[EventResult]:
        """Take outbox events: each applies once (by ``event_id``), a voucher's in
        ``seq`` order; an early one waits for the gap to be filled."""
        _check_batch(events, [e.event_id for e in events], "events")
        for index, event in enumerate(events):
            if not TOPIC_PATTERN.fullmatch(event.topic):
                raise _invalid(
                    ErrorCode.CENTRAL_INVALID_EVENT, "a topic is 1-64 of a-z 0-9 _ .", index
                )
            if event.at.tzinfo is None:
                raise _invalid(
                    ErrorCode.CENTRAL_INVALID_EVENT, "at is an instant with its zone", index
                )
            if event.voucher_id is not None and not ID_PATTERN.fullmatch(event.voucher_id):
                raise _invalid(
                    ErrorCode.CENTRAL_INVALID_EVENT,
                    "voucher_id is 1-64 of A-Z a-z 0-9 _ . : -",
                    index,
                )
            if event.seq is not None and (
                event.voucher_id is None or not 1 <= event.seq <= SEQ_MAX
            ):
                raise _invalid(
                    ErrorCode.CENTRAL_INVALID_EVENT,
                    f"seq is 1 to {SEQ_MAX}, with a voucher_id",
                    index,
                )
            lock_id = event.payload.get("lock_id")
            if lock_id is not None and not (
                isinstance(lock_id, str) and ID_PATTERN.fullmatch(lock_id)
            ):
                raise _invalid(ErrorCode.CENTRAL_INVALID_EVENT, "payload.lock_id is an id", index)
        for attempt in range(1, ATTEMPTS_MAX + 1):
            try:
                return self._deliver(province, events)
            except DuplicateKey:
                if attempt == ATTEMPTS_MAX:
                    raise
        raise AssertionError("unreachable")

    def _deliver(self, province: str, events: Sequence[SyncEvent]) -> list[EventResult]:
        now = self.clock.now()
        with self.store.transaction() as tx:
            ordered_keys = sorted(
                {
                    (province, e.voucher_id)
                    for e in events
                    if e.voucher_id is not None and e.seq is not None
                }
            )
            seqs = tx.voucher_seqs(ordered_keys) if ordered_keys else {}
            stored = tx.events([e.event_id for e in events])
            answers: dict[str, EventResult] = {}
            fresh: list[EventRow] = []
            for event in events:
                known = stored.get(event.event_id)
                if known is not None:
                    answers[event.event_id] = (
                        EventResult(event.event_id, EventOutcome.DUPLICATE)
                        if known.state == "applied"
                        else _answer_of(known)
                    )
                    continue
                fresh.append(
                    EventRow(
                        event_id=event.event_id,
                        province=province,
                        topic=event.topic,
                        at=event.at,
                        payload=dict(event.payload),
                        voucher_id=event.voucher_id,
                        seq=event.seq,
                        state="new",
                        reason=None,
                        received_at=now,
                    )
                )
            waiting = tx.waiting_events(ordered_keys) if ordered_keys else []
            candidates = [*waiting, *fresh]
            lock_ids = sorted(
                {
                    str(e.payload["lock_id"])
                    for e in candidates
                    if isinstance(e.payload.get("lock_id"), str)
                }
            )
            voucher_ids = sorted({e.voucher_id for e in candidates if e.voucher_id is not None})
            first = tx.locks(lock_ids)
            by_voucher = tx.locks_of_vouchers(province, voucher_ids) if voucher_ids else {}
            qids = sorted({row.qualification for row in [*first.values(), *by_voucher.values()]})
            revoked = tx.lock_qualifications(qids)
            locks = tx.locks(sorted({*lock_ids, *(row.lock_id for row in by_voucher.values())}))
            by_voucher = {v: locks[row.lock_id] for v, row in by_voucher.items()}
            # The locks an event names by lock_id: the only ones an earlier event of this
            # batch can give a voucher to (the others were found by their voucher).
            named = [locks[lock_id] for lock_id in lock_ids if lock_id in locks]
            work = _Work(tx, now, province, revoked, locks)
            serials = sorted({key for e in candidates for key in _keys_or_none(e)})
            work.serial_owners = tx.serial_owners(serials) if serials else {}

            final: dict[str, EventRow] = {}

            def settle(row: EventRow) -> None:
                final[row.event_id] = row

            def apply(row: EventRow) -> None:
                reason = self._apply(work, row, by_voucher, named)
                settle(
                    replace(row, state="applied" if reason is None else "rejected", reason=reason)
                )

            # Per voucher: what waits, by seq; the new ones join it.
            pending: dict[tuple[str, str], dict[int, EventRow]] = defaultdict(dict)
            for row in waiting:
                assert row.voucher_id is not None
                assert row.seq is not None
                pending[(province, row.voucher_id)][row.seq] = row
            for row in fresh:
                if row.voucher_id is None or row.seq is None:
                    apply(row)
                    continue
                key = (province, row.voucher_id)
                order = q.order_of(row.seq, seqs[key])
                if order is q.Order.STALE or row.seq in pending[key]:
                    settle(replace(row, state="rejected", reason="seq_already_used"))
                    continue
                pending[key][row.seq] = row
            for key in ordered_keys:
                last = seqs[key]
                queue = pending.get(key, {})
                while last + 1 in queue:
                    last += 1
                    apply(queue.pop(last))
                seqs[key] = last
                for row in queue.values():
                    if row.state == "new":
                        settle(replace(row, state="waiting"))
            for row in fresh:
                answers[row.event_id] = _answer_of(final[row.event_id])
            written = list(final.values())
            work.write()
            if written:
                tx.put_events(written)
            if ordered_keys:
                tx.set_voucher_seqs(seqs)
        return [answers[e.event_id] for e in events]

    def _apply(
        self,
        work: _Work,
        row: EventRow,
        by_voucher: Mapping[str, LockRow],
        named: Sequence[LockRow],
    ) -> str | None:
        """Apply one event's effect: None, or why it was rejected."""
        lock_id = row.payload.get("lock_id")
        lock: LockRow | None
        if isinstance(lock_id, str):
            lock = work.locks.get(lock_id)
            if lock is None and row.topic == "qualification.released":
                # A lock the province recorded but central never took (its lock call
                # failed on the way): nothing is held, so nothing to give back.
                return None
            if lock is None or lock.province != work.province:
                return "unknown_lock"
        elif row.voucher_id is not None:
            # Its lock, or the one an earlier event of this batch gave the voucher to.
            lock = by_voucher.get(row.voucher_id) or next(
                (
                    found
                    for found in named
                    if found.province == work.province and found.voucher_id == row.voucher_id
                ),
                None,
            )
        else:
            lock = None
        if lock is None:
            _record_lockless(work, row)
            return None
        effect = q.event_action(row.topic, row.payload)
        if effect.action is Action.ISSUE:
            return work.issue(lock, row.voucher_id, row.at)
        if effect.action is Action.CONSUME:
            try:
                product = _event_product(
                    SyncEvent(row.event_id, row.topic, row.at, row.payload), lock
                )
            except InvalidInput:
                return "invalid_product"
            if product.category != lock.category:
                return "category_mismatch"
            redemption_id = row.payload.get("redemption_id")
            outcome = work.consume(
                lock,
                product,
                voucher_id=row.voucher_id,
                redemption_id=redemption_id if isinstance(redemption_id, str) else None,
                at=row.at,
            )
            return None if outcome is ConsumeOutcome.CONSUMED else str(outcome)
        if effect.action in (Action.RESTORE, Action.RELEASE):
            return work.give_back(lock, effect.action, row.topic, row.at)
        return None

    # Reconciliation.

    def day(self, province: str, day: date) -> CentralDay:
        """What central recorded of ``province`` on ``day`` (UTC+8)."""
        categories: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
        for fact in self.store.day_facts(province, day):
            categories[fact.category][fact.fact] = (fact.count, fact.amount_fen)
        vouchers = {
            view.voucher_id: (view.category, view.state, view.subsidy_fen)
            for view in self.store.day_vouchers(province, day)
        }
        return CentralDay(
            day=day, province=province, categories=dict(categories), vouchers=vouchers
        )

    # Operators.

    def revoke(self, pseudonym: str, category: str, *, reason: str, by: str) -> list[str]:
        """Revoke a qualification (fraud): no new lock; its held and locked slots are
        revoked (a consumed one stands). The locks revoked, by id."""
        check_pseudonym(pseudonym)
        check_category(category)
        check_reason(reason)
        qid = qualification_id(pseudonym, category)
        now = self.clock.now()
        with self.store.transaction() as tx:
            tx.lock_qualifications([qid])
            tx.revoke(qid, reason=reason, by=by, at=now)
            live = tx.live_locks([qid], now)
            work = _Work(tx, now, "", {qid}, {row.lock_id: row for row in live}, live={qid: live})
            revoked = []
            for lock in live:
                if (
                    work.give_back(lock, Action.REVOKE, reason, now) is None
                    and lock.state is SlotState.REVOKED
                ):
                    revoked.append(lock.lock_id)
            work.write()
        return revoked

    def unrevoke(self, pseudonym: str, category: str) -> bool:
        check_pseudonym(pseudonym)
        check_category(category)
        qid = qualification_id(pseudonym, category)
        with self.store.transaction() as tx:
            tx.lock_qualifications([qid])
            return tx.unrevoke(qid)

    def move(self, pseudonym: str, category: str, *, from_province: str, reason: str) -> list[str]:
        """变更资格: release the held and locked slots a province holds of a person's
        qualification, so another province may lock it. The locks released."""
        check_pseudonym(pseudonym)
        check_category(category)
        check_reason(reason)
        qid = qualification_id(pseudonym, category)
        now = self.clock.now()
        with self.store.transaction() as tx:
            revoked = tx.lock_qualifications([qid])
            live = [
                row
                for row in tx.live_locks([qid], now)
                if row.province == from_province and row.state in (SlotState.HELD, SlotState.LOCKED)
            ]
            if not live:
                raise NotFound(
                    "central_no_live_lock",
                    f"province {from_province!r} holds no unused slot of this qualification",
                )
            work = _Work(tx, now, from_province, revoked, {row.lock_id: row for row in live})
            for lock in live:
                work.give_back(lock, Action.RELEASE, reason, now)
            work.write()
        return [row.lock_id for row in live]

    def sweep(self, limit: int) -> int:
        """Mark up to ``limit`` holds past their time as expired (they already count as
        free; this keeps the table honest for operators and queries)."""
        return self.store.expire_holds(self.clock.now(), limit)


def _answer_of(row: EventRow) -> EventResult:
    if row.state == "waiting":
        return EventResult(row.event_id, EventOutcome.WAITING)
    if row.state == "rejected":
        return EventResult(row.event_id, EventOutcome.REJECTED, row.reason)
    if row.state == "applied":
        return EventResult(row.event_id, EventOutcome.APPLIED)
    raise AssertionError(f"an event in state {row.state!r} has no answer")


def _keys_or_none(row: EventRow) -> list[SerialKey]:
    """The registry keys a ``redemption.completed`` names, if readable (else none:
    the event is rejected when applied)."""
    if row.topic != "redemption.completed":
        return []
    product = row.payload.get("product")
    if not isinstance(product, Mapping):
        return []
    serial, imei = product.get("serial"), product.get("imei")
    try:
        return q.serial_keys(
            serial if isinstance(serial, str) else None, imei if isinstance(imei, str) else None
        )
    except InvalidInput:
        return []


def _record_lockless(work: _Work, row: EventRow) -> None:
    """An event of a voucher without a lock (a consumption voucher): central keeps its
    detail and counts its redemption, refund or reversal in the day's record."""
    payload = row.payload
    product = payload.get("product")
    product = product if isinstance(product, Mapping) else {}
    category = product.get("category") or payload.get("category") or "consumption"
    if not isinstance(category, str) or not q.CATEGORY_PATTERN.fullmatch(category):
        category = "consumption"
    sign = {"redemption.completed": 1, "redemption.refunded": -1, "redemption.reversed": -1}.get(
        row.topic
    )
    if sign is None:
        return
    price = product.get("price_fen", payload.get("order_amount_fen", 0))
    subsidy = payload.get("discount_fen", 0)
    price = price if type(price) is int else 0
    subsidy = subsidy if type(subsidy) is int else 0
    for name, amount in (("consumed", price), ("subsidy", subsidy)):
        work.facts.append(
            Fact(
                province=work.province,
                category=category,
                fact=name,
                count=sign,
                amount_fen=sign * amount,
                day=q.day_of(row.at),
                at=row.at,
                voucher_id=row.voucher_id,
            )
        )
