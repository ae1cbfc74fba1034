"""Trade-in redemptions through the acquirer API: the subsidy computed from the product,
each refusal with its own code and nothing changed, the product registered once and
released by a refund, a void or a reversal, the events carrying the product, and the
same answers from the fast path and the framework's route.

Among them the cases found when tried as a new user would: a refrigerator voucher
spent on a grade-3 washing machine, a trade-in redemption with no product at all, the
same serial number and invoice subsidised twice, a phone above 6,000 yuan.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from lequan.central.in_process import MemoryCentral
from lequan.domain.errors import LequanError
from lequan.domain.trade_in import Category, Product
from lequan.examples import EXAMPLES_DIR, example_campaign
from lequan.http.app import create_app
from lequan.services import admin, campaigns, redemption
from lequan.services.redemption import RedeemOrder
from lequan.services.relay import relay_round
from lequan.services.sweeper import sweep
from tests.e2e.conftest import ACQUIRER, Api, OpenApi, assert_error, person_body
from tests.factories import T0

CAMPAIGN = "sh-trade-in-2024"
IMEI = "490154203237518"
STORE = "m-appliance-xuhui"  # in store, appliances (5722), served by acq-unionpay
DIGITAL = "m-digital-jingan"  # in store and online, electronics (5732)
STOCK = {"wechat": {"refrigerator": 20, "washing-machine": 5, "phone": 5, "air-conditioner": 5}}


class _ApiClock:
    """Central's clock is the province's (the api's, once it is built)."""

    def __init__(self) -> None:
        self.api: Api | None = None

    def now(self) -> datetime:
        assert self.api is not None
        return self.api.clock.now()


def _open(open_api: OpenApi, *, central: MemoryCentral | None = None, **settings: Any) -> Api:
    """The example trade-in campaign live, its merchants enrolled, at its release; the
    province connected to a central (in-process, central's own services)."""
    clock = _ApiClock()
    if central is None:
        central = MemoryCentral.start(clock=clock, province="310000", seed=b"t" * 32)
    api = open_api(campaign=False, central=central, province_code=central.province, **settings)
    clock.api = api
    rt = api.world.rt
    config = example_campaign("shanghai-trade-in-2024.yaml", release_at=T0, stock=STOCK)
    for acquirer in ("acq-jd", "acq-suning"):
        api.world.secrets[acquirer] = admin.add_app(
            rt, app_id=acquirer, kind="acquirer", name=acquirer, actor="alice"
        ).secret
    campaigns.import_campaign(rt, config, actor="alice")
    text = (EXAMPLES_DIR / "merchants-trade-in.csv").read_text(encoding="utf-8")
    admin.import_merchants(rt, text, actor="alice")
    campaigns.change_status(rt, CAMPAIGN, "approve", actor="bob")
    campaigns.change_status(rt, CAMPAIGN, "activate", actor="bob")
    api.clock.set(T0)
    return api


@pytest.fixture
def trade_in(open_api: OpenApi) -> Api:
    return _open(open_api)


def claim(api: Api, n: int, template: str = "refrigerator") -> str:
    """Person ``n`` signs up and claims a trade-in voucher of ``template``; its id."""
    user = f"u{n}"
    if api.post("wechat", "/v1/persons", person_body(n)).status_code not in (200, 201):
        raise AssertionError("sign-up failed")
    body = {
        "channel_user_id": user,
        "campaign_id": CAMPAIGN,
        "round_id": "r1",
        "template_id": template,
        "location_region": "310104",
    }
    response = api.post("wechat", "/v1/trade-in/applications", body)
    assert response.status_code == 201, response.text
    voucher_id: str = response.json()["voucher"]["voucher_id"]
    return voucher_id


def fridge(**changes: Any) -> dict[str, Any]:
    product: dict[str, Any] = {
        "category": "refrigerator",
        "brand": "Haier",
        "model": "BCD-470WGHTDEDW",
        "sku": "100012345678",
        "energy_grade": 1,
        "price_fen": 599_900,
        "serial_number": "be0l 9k0e-6300q2a",
        "invoice_number": "2431 2000 0000 1234 5678",
        "old_appliance_handed_in": True,
    }
    return {k: v for k, v in {**product, **changes}.items() if v is not None}


def phone(**changes: Any) -> dict[str, Any]:
    product: dict[str, Any] = {
        "category": "phone",
        "brand": "Huawei",
        "model": "Mate 60",
        "price_fen": 549_900,
        "imei": IMEI,
        "invoice_number": "24312000000087654321",
    }
    return {**product, **changes}


def redeem_body(
    voucher_id: str,
    user: str,
    product: dict[str, Any] | None,
    *,
    merchant: str = STORE,
    amount_fen: int | None = None,
    capture: str = "one_step",
    mode: str = "in_store",
) -> dict[str, Any]:
    price = (product or {}).get("price_fen")
    body: dict[str, Any] = {
        "channel_id": "wechat",
        "channel_user_id": user,
        "merchant_id": merchant,
        "order_amount_fen": amount_fen or (price if isinstance(price, int) and price > 0 else 1000),
        "mode": mode,
        "voucher_id": voucher_id,
        "order_id": f"POS-{uuid.uuid4().hex[:12]}",
        "capture": capture,
    }
    if product is not None:
        body["product"] = product
    return body


def redeem(api: Api, voucher_id: str, user: str, product: dict[str, Any] | None, **kw: Any) -> Any:
    return api.post(ACQUIRER, "/v1/redemptions", redeem_body(voucher_id, user, product, **kw))


def snapshot(api: Api) -> dict[str, Any]:
    """What a refusal must leave as it was, the registry of products included."""
    with api.engine.connect() as connection:
        products = sorted(
            tuple(r)
            for r in connection.execute(
                sa.text("SELECT redemption_id, released_at FROM redemption_products")
            )
        )
    return {**api.snapshot(), "products": products}


def refused(api: Api, call: Callable[[], httpx.Response], status: int, code: str) -> Any:
    before = snapshot(api)
    body = assert_error(call(), status, code)
    assert snapshot(api) == before
    return body


def sync(api: Api) -> None:
    """Deliver the province's outbox to central (the relay, done here by hand): a
    refund frees a serial number nationally once central hears of it."""
    central = api.world.rt.central
    assert central is not None
    while relay_round(api.world.rt, central).leased:
        pass


def events(api: Api, topic: str) -> list[dict[str, Any]]:
    with api.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT payload_json FROM outbox WHERE topic = :t ORDER BY created_at"),
            {"t": topic},
        )
        return [json.loads(r[0]) for r in rows]


# -- the subsidy -------------------------------------------------------------------------


def test_a_refrigerator_is_subsidised_by_its_grade_and_the_event_carries_it(
    trade_in: Api,
) -> None:
    voucher_id = claim(trade_in, 1)
    response = redeem(trade_in, voucher_id, "u1", fridge(), amount_fen=620_000)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["discount_fen"], body["pay_fen"]) == (119_980, 620_000 - 119_980)
    [event] = events(trade_in, "redemption.completed")
    assert event["product"] == {
        "category": "refrigerator",
        "brand": "Haier",
        "model": "BCD-470WGHTDEDW",
        "sku": "100012345678",
        "energy_grade": 1,
        "price_fen": 599_900,
        "serial_number": "BE0L9K0E6300Q2A",  # as the registry compares it
        "invoice_number": "24312000000012345678",
        "old_appliance_handed_in": True,
    }
    assert event["discount_fen"] == 119_980
    assert trade_in.check(CAMPAIGN)["ok"]


def test_a_phone_at_exactly_6000_yuan_gets_500_yuan(trade_in: Api) -> None:
    voucher_id = claim(trade_in, 1, "phone")
    response = redeem(trade_in, voucher_id, "u1", phone(price_fen=600_000), merchant=DIGITAL)
    assert response.status_code == 201, response.text
    assert response.json()["discount_fen"] == 50_000


def test_an_online_platform_redeems_for_its_own_shop(trade_in: Api) -> None:
    voucher_id = claim(trade_in, 1)
    body = redeem_body(voucher_id, "u1", fridge(), merchant="m-jd-appliances", mode="online")
    response = trade_in.post("acq-jd", "/v1/redemptions", body)
    assert response.status_code == 201, response.text
    # Another acquirer's shop is not this one's to redeem at.
    other = claim(trade_in, 2)
    body = redeem_body(other, "u2", fridge(serial_number="SN-0002", invoice_number="INV-000002"))
    assert_error(trade_in.post("acq-jd", "/v1/redemptions", body), 403, "forbidden")


# -- refusals, each with its own code, changing nothing ------------------------------------


REFUSALS: dict[str, tuple[str, dict[str, Any] | None, int, str]] = {
    # Found when tried as a new user would.
    "no product at all": ("refrigerator", None, 422, "product_required"),
    "grade-3 washing machine on a refrigerator voucher": (
        "refrigerator",
        fridge(category="washing_machine", energy_grade=3),
        409,
        "product_category_mismatch",
    ),
    "phone above 6,000 yuan": (
        "phone",
        phone(price_fen=600_001),
        409,
        "price_above_category_limit",
    ),
    # The rules' other edges.
    "appliance without a grade": (
        "refrigerator",
        fridge(energy_grade=None),
        422,
        "energy_grade_required",
    ),
    "grade 3 refrigerator": (
        "refrigerator",
        fridge(energy_grade=3),
        409,
        "energy_grade_not_subsidised",
    ),
    "serial given as the IMEI too": (
        "phone",
        phone(serial_number=IMEI),
        422,
        "serial_reused_in_request",
    ),
    "no invoice": ("refrigerator", fridge(invoice_number=None), 422, "invalid_request"),
}


@pytest.mark.parametrize(("template", "product", "status", "code"), REFUSALS.values(), ids=REFUSALS)
def test_a_trade_in_refusal_has_its_own_code_and_changes_nothing(
    trade_in: Api, template: str, product: dict[str, Any] | None, status: int, code: str
) -> None:
    voucher_id = claim(trade_in, 1, template)
    merchant = DIGITAL if template == "phone" else STORE
    refused(
        trade_in,
        lambda: redeem(trade_in, voucher_id, "u1", product, merchant=merchant),
        status,
        code,
    )
    assert trade_in.voucher_state(voucher_id) == "issued"


MALFORMED = {
    "unknown category": ({"category": "bicycle"}, "product.category"),
    "bad IMEI check digit": ({"imei": "490154203237517"}, "product.imei"),
    "IMEI of 14 digits": ({"imei": "49015420323751"}, "product.imei"),
    "serial with a symbol": ({"serial_number": "SN#1234"}, "product.serial_number"),
    "negative price": ({"price_fen": -1}, "product.price_fen"),
    "absurd price": ({"price_fen": 100_000_001}, "product.price_fen"),
    "price as text": ({"price_fen": "599900"}, "product.price_fen"),
    "grade 0": ({"energy_grade": 0}, "product.energy_grade"),
    "brand too long": ({"brand": "H" * 65}, "product.brand"),
    "unknown field": ({"colour": "white"}, "product.colour"),
    "dearer than the order": ({"price_fen": 700_000}, "product.price_fen"),
}


@pytest.mark.parametrize(("changes", "field"), MALFORMED.values(), ids=MALFORMED)
def test_a_malformed_product_is_a_422_naming_its_field(
    trade_in: Api, changes: dict[str, Any], field: str
) -> None:
    voucher_id = claim(trade_in, 1)
    body = refused(
        trade_in,
        lambda: redeem(trade_in, voucher_id, "u1", fridge(**changes), amount_fen=620_000),
        422,
        "invalid_request",
    )
    assert field in [e["field"] for e in body["details"]["errors"]], body


def test_the_same_serial_and_invoice_are_subsidised_once_until_refunded(trade_in: Api) -> None:
    first, second, third = claim(trade_in, 1), claim(trade_in, 2), claim(trade_in, 3)
    done = redeem(trade_in, first, "u1", fridge())
    assert done.status_code == 201, done.text
    # The same serial written another way is the same serial.
    again = fridge(serial_number="BE0L9K0E6300Q2A", invoice_number="99990000111122223333")
    body = refused(
        trade_in, lambda: redeem(trade_in, second, "u2", again), 409, "serial_already_subsidised"
    )
    assert body["details"] == {"field": "product.serial_number"}
    invoice = fridge(serial_number="OTHER-SERIAL-1")
    refused(
        trade_in, lambda: redeem(trade_in, third, "u3", invoice), 409, "invoice_already_subsidised"
    )
    # The fridge comes back: its serial and invoice may be subsidised again.
    refund = trade_in.follow_up(
        done.json()["redemption_id"], "refunds", {"refund_amount_fen": 599_900}
    )
    assert refund.status_code == 201, refund.text
    [refunded] = events(trade_in, "redemption.refunded")
    assert (refunded["redemption_id"], refunded["category"]) == (
        done.json()["redemption_id"],
        "refrigerator",
    )
    sync(trade_in)
    assert redeem(trade_in, second, "u2", fridge()).status_code == 201


def test_a_lock_holds_the_product_until_voided_and_confirm_sends_it(trade_in: Api) -> None:
    first, second = claim(trade_in, 1), claim(trade_in, 2)
    locked = redeem(trade_in, first, "u1", fridge(), capture="lock")
    assert locked.status_code == 201, locked.text
    refused(
        trade_in, lambda: redeem(trade_in, second, "u2", fridge()), 409, "serial_already_subsidised"
    )
    assert trade_in.follow_up(locked.json()["redemption_id"], "void").status_code == 200
    relocked = redeem(trade_in, second, "u2", fridge(), capture="lock")
    assert relocked.status_code == 201, relocked.text
    confirmed = trade_in.follow_up(relocked.json()["redemption_id"], "confirm")
    assert confirmed.status_code == 200, confirmed.text
    [event] = events(trade_in, "redemption.completed")
    assert event["product"]["serial_number"] == "BE0L9K0E6300Q2A"
    reversed_ = trade_in.follow_up(relocked.json()["redemption_id"], "reverse")
    assert reversed_.status_code == 200, reversed_.text
    [event] = events(trade_in, "redemption.reversed")
    assert event["category"] == "refrigerator"
    sync(trade_in)
    assert redeem(trade_in, first, "u1", fridge()).status_code == 201


def test_a_trade_in_voucher_is_quoted_only_with_a_product_it_subsidises(trade_in: Api) -> None:
    claim(trade_in, 1)
    order = {
        "channel_id": "wechat",
        "channel_user_id": "u1",
        "merchant_id": STORE,
        "order_amount_fen": 599_900,
        "mode": "in_store",
    }
    quote = "/v1/redemptions/quote"
    assert trade_in.post(ACQUIRER, quote, order, key=None).json() == {"quotes": []}
    quotes = trade_in.post(ACQUIRER, quote, {**order, "product": fridge()}, key=None).json()
    assert [q["discount_fen"] for q in quotes["quotes"]] == [119_980]
    graded_3 = {**order, "product": fridge(energy_grade=3)}
    assert trade_in.post(ACQUIRER, quote, graded_3, key=None).json() == {"quotes": []}


def test_a_product_with_a_voucher_of_another_kind_is_kept_and_not_checked(api: Api) -> None:
    """The dining campaign's vouchers know no products: the details are kept with the
    redemption, as before, and register nothing."""
    api.register(1)
    voucher_id = api.claim_voucher("u1")["voucher_id"]
    body = {
        **api.order("u1"),
        "voucher_id": voucher_id,
        "order_id": "POS-1",
        "product": {"category": "tv", "energy_grade": 4},
    }
    assert api.post(ACQUIRER, "/v1/redemptions", body).status_code == 201
    assert snapshot(api)["products"] == []


# -- the fast path and the framework's route answer alike ---------------------------------


def _scenario(api: Api) -> list[tuple[int, str | None]]:
    vouchers = [claim(api, n) for n in (1, 2, 3)]
    answers = [
        redeem(api, vouchers[0], "u1", None),
        redeem(api, vouchers[0], "u1", fridge(category="washing_machine", energy_grade=3)),
        redeem(api, vouchers[0], "u1", fridge(imei="490154203237517")),
        redeem(api, vouchers[0], "u1", fridge()),
        redeem(api, vouchers[1], "u2", fridge()),
        redeem(api, vouchers[2], "u3", fridge(serial_number="SN-0003"), capture="lock"),
    ]
    return [
        (a.status_code, a.json().get("code") if a.status_code >= 400 else a.json()["discount_fen"])
        for a in answers
    ]


def test_the_fast_path_and_the_route_answer_trade_in_alike(open_api: OpenApi) -> None:
    fast = _open(open_api)
    other = _open(open_api)
    app = create_app(other.world.platform, close_on_shutdown=False, fast_path=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        framework = Api(other.world, client)
        assert (
            _scenario(fast)
            == _scenario(framework)
            == [
                (422, "product_required"),
                (409, "product_category_mismatch"),
                (422, "invalid_request"),
                (201, 119_980),
                (409, "serial_already_subsidised"),
                (409, "invoice_already_subsidised"),
            ]
        )


# -- at once, on PostgreSQL -------------------------------------------------------------


def _race(api: Api, pair: dict[str, str], serial: str) -> list[str]:
    """Two people redeem a refrigerator with one serial number (each their own invoice)
    at once, through the single path; what each heard."""
    start = threading.Barrier(len(pair))
    outcomes: list[str] = []

    def one(user: str, voucher_id: str) -> None:
        order = RedeemOrder(
            acquirer_id=ACQUIRER,
            merchant_id=STORE,
            channel_id="wechat",
            channel_user_id=user,
            order_id=f"POS-{user}",
            order_amount_fen=400_000,
            mode="in_store",
        )
        product = Product(
            category=Category.REFRIGERATOR,
            energy_grade=2,
            price_fen=400_000,
            serial_number=serial,
            invoice_number=f"INV{serial}{user}".upper(),
        )
        start.wait(10)
        try:
            redemption.redeem(
                api.world.rt, voucher_id=voucher_id, order=order, lock=False, product=product
            )
            outcomes.append("redeemed")
        except LequanError as error:
            outcomes.append(error.code)

    threads = [threading.Thread(target=one, args=item) for item in pair.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


@pytest.mark.postgres
def test_two_redemptions_of_one_serial_at_once_subsidise_it_once(
    open_api: OpenApi, migrated_postgres_url: str
) -> None:
    api = _open(open_api, database_url=migrated_postgres_url)
    rounds = 5
    vouchers = {f"u{n}": claim(api, n) for n in range(1, 2 * rounds + 1)}
    for r in range(rounds):
        pair = {u: vouchers[u] for u in (f"u{2 * r + 1}", f"u{2 * r + 2}")}
        outcomes = _race(api, pair, f"RACE{r:04d}")
        assert sorted(outcomes) == ["redeemed", "serial_already_subsidised"], outcomes
    with api.engine.connect() as connection:
        held = connection.execute(
            sa.text("SELECT count(*) FROM redemption_products WHERE released_at IS NULL")
        ).scalar_one()
    assert held == rounds
    assert api.check(CAMPAIGN)["ok"]


def test_a_lock_that_times_out_lets_go_of_its_product(trade_in: Api) -> None:
    first, second = claim(trade_in, 1), claim(trade_in, 2)
    assert redeem(trade_in, first, "u1", fridge(), capture="lock").status_code == 201
    lock_timeout_s = trade_in.world.rt.settings.lock_timeout_s
    trade_in.clock.set(T0 + timedelta(seconds=lock_timeout_s + 1))
    assert sweep(trade_in.world.rt).locks_timed_out == 1
    assert redeem(trade_in, second, "u2", fridge()).status_code == 201


def test_a_serial_subsidised_in_one_province_is_refused_in_another(open_api: OpenApi) -> None:
    clock = _ApiClock()
    central = MemoryCentral.start(clock=clock, province="310000", seed=b"n" * 32)
    shanghai = _open(open_api, central=central)
    clock.api = shanghai
    zhejiang = _open(open_api, central=central.as_province("330000"))
    bought = redeem(shanghai, claim(shanghai, 1), "u1", fridge())
    assert bought.status_code == 201, bought.text
    # The same person applies in the other province: the qualification is used.
    zhejiang.post("wechat", "/v1/persons", person_body(1))
    assert_error(
        zhejiang.post(
            "wechat",
            "/v1/trade-in/applications",
            {
                "channel_user_id": "u1",
                "campaign_id": CAMPAIGN,
                "round_id": "r1",
                "template_id": "refrigerator",
                "location_region": "310104",
            },
        ),
        409,
        "qualification_used_elsewhere",
    )
    # Someone else there, with the same fridge: its serial is subsidised nationally.
    other = claim(zhejiang, 2)
    body = refused(
        zhejiang,
        lambda: redeem(zhejiang, other, "u2", fridge(invoice_number="ZJ-INVOICE-2")),
        409,
        "serial_already_subsidised",
    )
    assert body["details"]["registry"] == "national"


def test_a_reversed_redemption_keeps_the_qualification_at_central(open_api: OpenApi) -> None:
    """冲正 gives the voucher back to its holder: central keeps the slot locked (the
    event says the voucher is usable), so no other province may lock it meanwhile."""
    clock = _ApiClock()
    central = MemoryCentral.start(clock=clock, province="310000", seed=b"r" * 32)
    shanghai = _open(open_api, central=central)
    clock.api = shanghai
    zhejiang = _open(open_api, central=central.as_province("330000"))
    bought = redeem(shanghai, claim(shanghai, 1), "u1", fridge())
    assert bought.status_code == 201, bought.text
    reversed_ = shanghai.follow_up(bought.json()["redemption_id"], "reverse")
    assert reversed_.status_code == 200, reversed_.text
    [event] = events(shanghai, "redemption.reversed")
    assert (event["voucher_state"], event["price_fen"]) == ("issued", 599_900)
    sync(shanghai)
    zhejiang.post("wechat", "/v1/persons", person_body(1))
    application = {
        "channel_user_id": "u1",
        "campaign_id": CAMPAIGN,
        "round_id": "r1",
        "template_id": "refrigerator",
        "location_region": "310104",
    }
    assert_error(
        zhejiang.post("wechat", "/v1/trade-in/applications", application),
        409,
        "qualification_used_elsewhere",
    )
