"""The store contract, continued: the registry of subsidised trade-in products, on
SQLite, PostgreSQL and the in-memory store alike.

What the redemption path relies on: a product row round-trips; a serial
number, an IMEI or an invoice number is held by one unreleased row at most,
refused as ``DuplicateKey`` by the store itself (within one write, and
against a second writer, who waits for the first and loses once it
commits); a released row holds nothing, so a returned product may be
subsidised again; the schema's checks hold.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lequan.domain.trade_in import Category, Product
from lequan.ports import ConstraintViolated, DuplicateKey, Store, UnitOfWork
from lequan.rows import ProductRow

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
IMEI = "490154203237518"
# How long a writer is watched to see that it waits for a lock (it would be done in 1 ms).
WAITS_S = 0.2
THREAD_JOIN_TIMEOUT_S = 30.0


def product(n: int, **updates: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "redemption_id": f"r{n}",
        "voucher_id": f"v{n}",
        "campaign_id": "sh-trade-in-2024",
        "category": "refrigerator",
        "brand": "Haier",
        "model": "BCD-470",
        "sku": f"sku-{n}",
        "energy_grade": 1,
        "price_fen": 599_900,
        "serial_number": f"SN{n:08d}",
        "imei": None,
        "invoice_number": f"INV{n:08d}",
        "old_appliance_handed_in": True,
        "subsidy_fen": 119_980,
        "created_at": T0,
    }
    return {**values, **updates}


def add(store: Store, *rows: dict[str, Any]) -> None:
    with store.unit_of_work() as uow:
        uow.products.add_products(list(rows))
        uow.commit()


def held(store: Store, **wanted: list[str]) -> set[tuple[str, str]]:
    with store.unit_of_work(readonly=True) as uow:
        return uow.products.held(
            serial_numbers=wanted.get("serial_numbers", []),
            imeis=wanted.get("imeis", []),
            invoice_numbers=wanted.get("invoice_numbers", []),
        )


def release(store: Store, redemption_id: str, at: datetime = T0) -> bool:
    with store.unit_of_work() as uow:
        released = uow.products.release_product(redemption_id, now=at)
        uow.commit()
    return released


def refused_alone(store: Store, write: Callable[[UnitOfWork], None]) -> type[Exception]:
    """The store error ``write`` raises; nothing of it is kept."""
    with store.unit_of_work() as uow, pytest.raises(ConstraintViolated) as refused:
        write(uow)
    return type(refused.value)


def test_a_product_round_trips(store: Store) -> None:
    add(store, product(1), product(2, serial_number=None, imei=IMEI, category="phone"))
    with store.unit_of_work(readonly=True) as uow:
        got = uow.products.get_product("r1")
        phone = uow.products.get_product("r2")
        assert uow.products.get_product("r3") is None
    assert got == ProductRow(
        redemption_id="r1",
        voucher_id="v1",
        campaign_id="sh-trade-in-2024",
        product=Product(
            category=Category.REFRIGERATOR,
            brand="Haier",
            model="BCD-470",
            sku="sku-1",
            energy_grade=1,
            price_fen=599_900,
            serial_number="SN00000001",
            invoice_number="INV00000001",
            old_appliance_handed_in=True,
        ),
        subsidy_fen=119_980,
        created_at=T0,
        released_at=None,
    )
    assert phone is not None
    assert (phone.product.category, phone.product.imei) == (Category.PHONE, IMEI)
    assert held(
        store,
        serial_numbers=["SN00000001", "SN00000009"],
        imeis=[IMEI],
        invoice_numbers=["INV00000002", "SN00000001"],
    ) == {("serial_number", "SN00000001"), ("imei", IMEI), ("invoice_number", "INV00000002")}
    assert held(store) == set()


@pytest.mark.parametrize(
    "field", ["serial_number", "imei", "invoice_number"], ids=["serial", "imei", "invoice"]
)
def test_an_identifier_is_held_by_one_unreleased_product(store: Store, field: str) -> None:
    taken = {"serial_number": "SN00000001", "imei": IMEI, "invoice_number": "INV00000001"}
    add(store, product(1, imei=IMEI))
    second = product(2, **{field: taken[field]})
    kind = refused_alone(store, lambda uow: uow.products.add_products([second]))
    assert kind is DuplicateKey
    assert release(store, "r1", T0 + timedelta(days=3))
    add(store, second)  # released: the returned product may be subsidised again
    with store.unit_of_work(readonly=True) as uow:
        first = uow.products.get_product("r1")
    assert first is not None
    assert first.released_at == T0 + timedelta(days=3)
    third = product(3, **{field: taken[field]})
    assert refused_alone(store, lambda uow: uow.products.add_products([third])) is DuplicateKey


def test_one_identifier_twice_in_one_write_is_refused_and_nothing_is_kept(store: Store) -> None:
    rows = [product(1), product(2, invoice_number="INV00000001")]
    assert refused_alone(store, lambda uow: uow.products.add_products(rows)) is DuplicateKey
    assert held(store, serial_numbers=["SN00000001", "SN00000002"]) == set()


def test_a_redemption_has_one_product(store: Store) -> None:
    add(store, product(1))
    again = product(1, serial_number="SN2", invoice_number="INV2")
    assert refused_alone(store, lambda uow: uow.products.add_products([again])) is DuplicateKey


def test_a_product_is_released_once(store: Store) -> None:
    add(store, product(1))
    assert release(store, "r1")
    assert not release(store, "r1")
    assert not release(store, "r-none")
    assert held(store, serial_numbers=["SN00000001"]) == set()


@pytest.mark.parametrize(
    "updates",
    [
        {"serial_number": None, "imei": None},
        {"subsidy_fen": 599_901},
        {"subsidy_fen": 0},
        {"energy_grade": 6},
        {"invoice_number": None},
    ],
    ids=["unidentified", "subsidy-above-price", "no-subsidy", "grade-6", "no-invoice"],
)
def test_a_product_outside_its_checks_is_refused(store: Store, updates: dict[str, Any]) -> None:
    bad = product(1, **updates)
    kind = refused_alone(store, lambda uow: uow.products.add_products([bad]))
    assert kind is ConstraintViolated


def test_products_ride_in_a_pipeline(store: Store) -> None:
    with store.unit_of_work() as uow:
        with uow.pipeline():
            uow.products.add_products([product(n) for n in range(1, 11)])
        uow.commit()
    assert len(held(store, serial_numbers=[f"SN{n:08d}" for n in range(1, 12)])) == 10


def test_a_second_writer_of_a_held_serial_waits_and_loses(store: Store) -> None:
    """Whether on the unique index (PostgreSQL) or the one writer lock (SQLite, memory):
    the second writer waits for the first, then is refused once the first commits."""
    out: list[Any] = []

    def second() -> None:
        try:
            add(store, product(2, serial_number="SN00000001"))
            out.append("added")
        except DuplicateKey:
            out.append("refused")

    with store.unit_of_work() as first:
        first.products.add_products([product(1)])
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(WAITS_S)
        assert thread.is_alive(), "the second writer did not wait"
        first.commit()
    thread.join(THREAD_JOIN_TIMEOUT_S)
    assert out == ["refused"]
