"""One-step redemptions in batches: many acquirers' requests, one transaction.

A redemption alone costs a dozen statements, each a round trip and its
share of CPU in the driver and SQLAlchemy; at the checkout that is the
limit, not the database. The writer thread here takes the one-step
redemptions waiting (up to ``redeem_batch_size_max``, waiting at most
``redeem_batch_wait_ms``) and does them with a dozen statements for the
whole batch: the vouchers locked in id order, the accounts, merchants and
campaigns read once, the domain deciding each redemption exactly as
``redemption.redeem`` does, then one write per table.

Each request still gets its own answer: a refusal (wrong person, out of
scope, already redeemed — a second redemption of the same voucher in the
same batch sees the first; a trade-in product already subsidised — a
second request with the same serial number in the same batch sees the
first's) is that request's answer alone. If the batch
transaction fails in the store, every request is retried alone through
``redemption.redeem``, so the batch never decides anything the single path
would not.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from lequan.domain.errors import LequanError, NotFound, Unavailable
from lequan.domain.ledger import Entry, redeem_entry
from lequan.domain.trade_in import Product
from lequan.domain.vouchers import Action, VoucherState, next_state
from lequan.ports import StoreError, UnitOfWork
from lequan.rows import MerchantRow, RedemptionReads, RedemptionRow, VoucherRow
from lequan.services.batching import BatchWriter
from lequan.services.campaigns import CampaignCache
from lequan.services.idempotency import Answer, Idempotency, replay_or_refuse
from lequan.services.live import Redeemed, record_redemptions
from lequan.services.redemption import (
    NationalItem,
    ProductCheck,
    RedeemOrder,
    check_amount,
    checked_merchant,
    completed_extra,
    consume_nationally,
    discount_of,
    event_payload,
    product_values,
    redeem,
    redemption_row,
    redemption_values,
    trade_in_product,
)
from lequan.services.redemption_risk import (
    NO_SIGNALS,
    Completed,
    Judgement,
    RedemptionScreen,
    RedemptionSignals,
    threshold_of,
)
from lequan.services.runtime import Runtime
from lequan.services.views import new_ids, redemption_body

__all__ = ["OneStep", "RedemptionWriter"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class OneStep:
    """A one-step redemption waiting for the writer; its future gets (answer, replayed)."""

    voucher_id: str
    order: RedeemOrder
    product: Product | None
    key: Idempotency
    signals: RedemptionSignals | None = None
    future: Future[tuple[Answer, bool]] = field(default_factory=Future)


@dataclass(slots=True)
class _Accepted:
    index: int
    voucher: VoucherRow
    values: dict[str, Any]
    row: RedemptionRow
    answer: Answer
    product: Product | None  # a trade-in voucher's, registered with the redemption
    threshold_fen: int | None  # its template's, as the redemption-time rules read it


class MerchantCache:
    """Merchants as the redemption writer sees them: read from the store at most every
    ttl_s, forgotten at once when merchants are imported in this process."""

    def __init__(self, *, ttl_s: float, entries_max: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._entries_max = entries_max
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[MerchantRow | None, float]] = {}
        # Bumped by every clear: a row read before an import committed is not kept
        # after the import's clear (it would stay stale for a whole ttl).
        self._generation = 0

    def get(self, uow: UnitOfWork, merchant_id: str) -> MerchantRow | None:
        now = time.monotonic()
        with self._lock:
            cached = self._rows.get(merchant_id)
            generation = self._generation
        if cached is not None and now - cached[1] < self._ttl_s:
            return cached[0]
        row = uow.people.get_merchant(merchant_id)
        with self._lock:
            if generation == self._generation:
                if len(self._rows) >= self._entries_max:
                    self._rows.clear()
                self._rows[merchant_id] = (row, now)
        return row

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._generation += 1


class RedemptionWriter(BatchWriter[OneStep]):
    """The writer thread of one-step redemptions; bounded like the claim committer.

    ``submit`` holds the request's idempotency key in flight (409 for a
    second request with it) and refuses with ``overloaded`` (429) beyond
    ``queue_max`` waiting requests. The writer answers every request it
    took, whatever happens, and lets go of its key after.
    """

    def __init__(
        self,
        rt: Runtime,
        *,
        batch_size_max: int,
        wait_ms: float,
        queue_max: int,
        screen: RedemptionScreen | None = None,
    ) -> None:
        super().__init__(name="lequan-redeem", size_max=batch_size_max, wait_s=wait_ms / 1000)
        self._rt = rt
        # The redemption-time rules: a batch's redemptions are judged together.
        self._screen = screen
        self._queue_max = queue_max
        self._waiting = 0
        ttl_s = rt.settings.campaign_cache_ttl_s
        self._campaigns = CampaignCache(
            rt, ttl_s=ttl_s, entries_max=rt.settings.campaign_cache_entries_max
        )
        self._merchants = MerchantCache(
            ttl_s=ttl_s, entries_max=rt.settings.merchant_cache_entries_max
        )
        rt.merchant_listeners.append(self._merchants.clear)
        self._start()

    def submit(self, item: OneStep) -> Future[tuple[Answer, bool]]:
        check_amount(item.order.order_amount_fen)
        with self._lock:
            if self._closed:
                raise Unavailable("store_unavailable", "the platform is shutting down")
            if self._waiting >= self._queue_max:
                raise Unavailable(
                    "overloaded", "too many redemptions are waiting; retry", retry_after_s=1
                )
            self._waiting += 1
        try:
            self._rt.inflight.acquire(item.key.app_id, item.key.key)
        except LequanError:
            with self._lock:
                self._waiting -= 1
            raise
        self._put(item)
        return item.future

    def _handle_batch(self, batch: list[OneStep]) -> None:
        try:
            outcomes = self._redeem_batch(batch)
        except StoreError as error:  # a conflict, a value the store cannot hold, an outage
            log.warning("redeem_batch_retry_single", error_type=type(error).__name__, n=len(batch))
            outcomes = [self._redeem_alone(item) for item in batch]
        except Exception as error:  # the writer must never die; every waiter gets an answer
            log.error("redeem_batch_failed", error_type=type(error).__name__, n=len(batch))
            outcomes = [error] * len(batch)
        for item in batch:
            self._rt.inflight.release(item.key.app_id, item.key.key)
        with self._lock:
            self._waiting -= len(batch)
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    def _redeem_alone(self, item: OneStep) -> tuple[Answer, bool] | BaseException:
        """The single path, as the route would run it, for one request of a failed batch."""
        rt = self._rt
        try:
            with rt.store.unit_of_work(readonly=True) as uow:
                stored = uow.idempotency.idempotent_answer(item.key.app_id, item.key.key)
            replay = replay_or_refuse(stored, item.key)
            if replay is not None:
                return replay, True
            produced: list[Answer] = []

            def record(uow: UnitOfWork, result: tuple[RedemptionRow, VoucherState]) -> None:
                row, state = result
                produced.append(Answer(201, redemption_body(row, voucher_state=state.value)))
                item.key.record(uow, produced[-1], rt.clock.now())

            redeem(
                rt,
                voucher_id=item.voucher_id,
                order=item.order,
                lock=False,
                product=item.product,
                record=record,
                signals=item.signals,
                screen=self._screen,
            )
            return produced[-1], False
        except Exception as error:  # its own answer: a refusal, or what the route maps
            return error

    def _redeem_batch(self, batch: list[OneStep]) -> list[tuple[Answer, bool] | BaseException]:
        rt = self._rt
        now = rt.clock.now()
        outcomes: list[tuple[Answer, bool] | BaseException | None] = [None] * len(batch)
        with rt.store.unit_of_work() as uow:
            reads = uow.vouchers.redemption_reads(
                [(item.key.app_id, item.key.key) for item in batch],
                [item.voucher_id for item in batch],
                [(item.order.channel_id, item.order.channel_user_id) for item in batch],
            )
            todo = self._replays(batch, reads.answers, outcomes)
            accepted = self._decide(uow, batch, todo, outcomes, reads=reads, now=now)
            self._write(uow, batch, accepted, now)
            judgement = self._judge(uow, batch, accepted, now)
            counted = [
                Redeemed(a.row, a.voucher.channel_id, self._merchants.get(uow, a.row.merchant_id))
                for a in accepted
            ]
            uow.commit()
        judgement.after_commit(rt)
        record_redemptions(rt.pulse, now, counted)
        assert all(outcome is not None for outcome in outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

    def _judge(
        self, uow: UnitOfWork, batch: list[OneStep], accepted: list[_Accepted], now: datetime
    ) -> Judgement:
        """The batch's redemptions judged together by the redemption-time rules."""
        if self._screen is None or not accepted:
            return Judgement()
        return self._screen.judge(
            uow,
            [
                Completed(
                    a.row,
                    a.voucher,
                    batch[a.index].signals or NO_SIGNALS,
                    a.threshold_fen,
                    a.product,
                )
                for a in accepted
            ],
            now,
        )

    @staticmethod
    def _replays(
        batch: list[OneStep],
        stored: dict[tuple[str, str], tuple[str, int, str]],
        outcomes: list[tuple[Answer, bool] | BaseException | None],
    ) -> list[int]:
        """Answer the keys already used; the indexes of the new requests."""
        todo = []
        for i, item in enumerate(batch):
            try:
                replay = replay_or_refuse(stored.get((item.key.app_id, item.key.key)), item.key)
            except LequanError as error:
                outcomes[i] = error
                continue
            if replay is not None:
                outcomes[i] = (replay, True)
            else:
                todo.append(i)
        return todo

    def _decide(
        self,
        uow: UnitOfWork,
        batch: list[OneStep],
        todo: list[int],
        outcomes: list[tuple[Answer, bool] | BaseException | None],
        *,
        reads: RedemptionReads,
        now: datetime,
    ) -> list[_Accepted]:
        """Each new request decided as ``redemption.redeem`` would, in order."""
        vouchers, persons = reads.vouchers, reads.persons
        # One query for the batch's trade-in products, none for a batch without.
        products = ProductCheck.read(uow, [batch[i].product for i in todo])
        redemption_ids = iter(new_ids("r", len(todo)))
        accepted: list[_Accepted] = []
        for i in todo:
            item, order = batch[i], batch[i].order
            try:
                merchant = checked_merchant(self._merchants.get(uow, order.merchant_id), order)
                voucher = vouchers.get(item.voucher_id)
                if voucher is None:
                    raise NotFound("voucher_not_found", f"no voucher {item.voucher_id}")
                if persons.get((order.channel_id, order.channel_user_id)) != voucher.person_id:
                    raise NotFound(
                        "voucher_not_found", f"no voucher {item.voucher_id} for this person"
                    )
                campaign = self._campaigns.get(voucher.campaign_id, uow)
                assert campaign is not None, "a voucher's campaign is never deleted"
                discount = discount_of(
                    voucher=voucher,
                    campaign=campaign,
                    merchant=merchant,
                    order=order,
                    action=Action.REDEEM,
                    now=now,
                    product=item.product,
                )
                state = next_state(voucher.state, Action.REDEEM)
                registered = trade_in_product(campaign, voucher, item.product)
                if registered is not None:
                    products.take(registered)
            except LequanError as error:
                outcomes[i] = error
                continue
            values = redemption_values(
                next(redemption_ids),
                voucher,
                order,
                discount,
                item.product,
                now=now,
                lock_expires_at=None,
            )
            row = redemption_row(values)
            answer = Answer(201, redemption_body(row, voucher_state=state.value))
            accepted.append(
                _Accepted(
                    i, voucher, values, row, answer, registered, threshold_of(campaign, voucher)
                )
            )
            # A later request for the same voucher in this batch sees it redeemed.
            vouchers[voucher.id] = VoucherRow(
                **{
                    **{f: getattr(voucher, f) for f in VoucherRow.__dataclass_fields__},
                    "state": state,
                    "version": voucher.version + 1,
                    "redemption_id": row.id,
                }
            )
            outcomes[i] = (answer, False)
        return self._national(uow, accepted, outcomes)

    def _national(
        self,
        uow: UnitOfWork,
        accepted: list[_Accepted],
        outcomes: list[tuple[Answer, bool] | BaseException | None],
    ) -> list[_Accepted]:
        """The batch's trade-in redemptions consumed at central in one call; those it
        refuses leave the batch with their refusal."""
        trade_ins = [a for a in accepted if a.product is not None]
        if not trade_ins:
            return accepted
        refusals = consume_nationally(
            self._rt,
            uow,
            [
                NationalItem(a.voucher, a.row.id, a.product, a.row.discount_fen)
                for a in trade_ins
                if a.product is not None
            ],
        )
        refused = {a.index for a, r in zip(trade_ins, refusals, strict=True) if r is not None}
        for a, refusal in zip(trade_ins, refusals, strict=True):
            if refusal is not None:
                outcomes[a.index] = refusal
        return [a for a in accepted if a.index not in refused]

    def _write(
        self, uow: UnitOfWork, batch: list[OneStep], accepted: list[_Accepted], now: datetime
    ) -> None:
        """One statement per table for the whole batch, sent as one pipeline."""
        if not accepted:
            return
        with uow.pipeline():
            self._write_accepted(uow, batch, accepted, now)

    @staticmethod
    def _write_accepted(
        uow: UnitOfWork, batch: list[OneStep], accepted: list[_Accepted], now: datetime
    ) -> None:
        uow.vouchers.move_vouchers(
            [(a.voucher, VoucherState.REDEEMED, a.row.id) for a in accepted], now=now
        )
        uow.vouchers.insert_redemptions([a.values for a in accepted])
        uow.products.add_products(
            [
                product_values(a.row.id, a.voucher, a.product, a.row.discount_fen, now)
                for a in accepted
                if a.product is not None
            ]
        )
        posts: list[tuple[Entry, dict[str, Any]]] = [
            (
                redeem_entry(
                    face_fen=a.voucher.face_fen,
                    discount_fen=a.row.discount_fen,
                    acquirer_id=a.row.acquirer_id,
                    category=a.product.category.value if a.product is not None else None,
                ),
                {
                    "campaign_id": a.voucher.campaign_id,
                    "voucher_id": a.voucher.id,
                    "redemption_id": a.row.id,
                },
            )
            for a in accepted
        ]
        uow.ledger.record_many(posts, now=now)
        event_ids = new_ids("e", len(accepted))
        uow.ledger.add_outbox_many(
            [
                (
                    event_id,
                    "redemption.completed",
                    event_payload("redemption.completed", a.row, now, **completed_extra(a.product)),
                )
                for event_id, a in zip(event_ids, accepted, strict=True)
            ],
            now=now,
        )
        # Each answer stored beside its effect, for the retries.
        uow.idempotency.store_answers([batch[a.index].key.row(a.answer, now) for a in accepted])
