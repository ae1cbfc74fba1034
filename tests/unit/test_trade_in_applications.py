"""Trade-in applications: a voucher only once central locked the qualification.

Central is the in-process one (``central/in_process.py``: central's own
services and rules over an in-memory store, shared by two provinces here); the
province runs on the in-memory store. The same flows against real central
and province processes are in tests/system.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from lequan.adapters.memory_store import MemoryStore
from lequan.central.in_process import MemoryCentral
from lequan.domain.campaigns import CampaignConfig
from lequan.domain.errors import Conflict, LequanError
from lequan.rows import VoucherRow
from lequan.services import qualification
from lequan.services.idempotency import Idempotency
from lequan.services.relay import relay_round
from lequan.services.sweeper import sweep
from tests.factories import T0, World, make_world

EXAMPLE = Path(__file__).parents[2] / "examples" / "shanghai-trade-in-2024.yaml"


def trade_in_config(*, stock: int = 50) -> CampaignConfig:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["rounds"] = [
        {
            "id": "r1",
            "release_at": T0.isoformat(),
            "ends_at": (T0 + timedelta(days=60)).isoformat(),
            "stock": {
                channel: {t["id"]: stock for t in data["templates"]} for channel in data["channels"]
            },
        }
    ]
    data.pop("category_budgets_fen", None)
    return CampaignConfig.model_validate(data)


@pytest.fixture
def central() -> MemoryCentral:
    return MemoryCentral.start(clock=_clock_for_central, province="310000", seed=b"s" * 32)


class _CentralClock:
    """Central's clock follows the worlds' (set by each test's world)."""

    world: World | None = None

    def now(self) -> Any:
        assert self.world is not None
        return self.world.clock.now()


_clock_for_central = _CentralClock()


def _world(tmp_path: Path, central: MemoryCentral, province: str, **settings: Any) -> Any:
    return make_world(
        store=MemoryStore(),
        tmp_path=tmp_path / province,
        clock_at=T0,
        central=central,
        province_code=province,
        **settings,
    )


@pytest.fixture
def shanghai(tmp_path: Path, central: MemoryCentral) -> Iterator[World]:
    with _world(tmp_path, central, "310000") as world:
        _clock_for_central.world = world
        world.open_campaign(trade_in_config(), merchants=False)
        yield world


def apply(
    world: World,
    n: int,
    template_id: str = "refrigerator",
    *,
    key: str | None = None,
    channel: str = "unionpay",
) -> VoucherRow:
    return qualification.apply(
        world.rt,
        Idempotency(app_id=channel, key=key or f"k-{n}-{template_id}", request_hash="h"),
        qualification.Application(
            channel_user_id=f"u{n}",
            campaign_id="sh-trade-in-2024",
            round_id="r1",
            template_id=template_id,
            location_region="310104",
        ),
    )


def refusal(world: World, n: int, template_id: str = "refrigerator", **kw: Any) -> str:
    with pytest.raises(LequanError) as caught:
        apply(world, n, template_id, **kw)
    return caught.value.code


def _events(world: World) -> list[tuple[str, dict[str, Any]]]:
    import json

    with world.rt.store.unit_of_work(readonly=True) as uow:
        rows = uow.outbox.events_between(
            T0 - timedelta(days=1), T0 + timedelta(days=400), after_id=None, limit=1000
        )
    # In the order written (ids order events of one millisecond at random).
    rows = sorted(rows, key=lambda r: (r.created_at, r.seq or 0))
    return [(r.topic, json.loads(r.payload_json)) for r in rows]


def test_a_voucher_is_issued_with_its_lock_and_the_event_that_confirms_it(
    shanghai: World, central: MemoryCentral
) -> None:
    shanghai.register(1, channel="unionpay")
    voucher = apply(shanghai, 1)
    assert (voucher.template_id, voucher.face_fen) == ("refrigerator", 200_000)
    with shanghai.rt.store.unit_of_work(readonly=True) as uow:
        lock = uow.qualifications.lock_of_voucher(voucher.id)
        person = uow.people.get_person(voucher.person_id)
    assert lock is not None
    assert (lock.state, lock.category) == ("issued", "refrigerator")
    assert person is not None
    assert person.pseudonym is not None  # computed once, kept
    ((topic, payload),) = _events(shanghai)
    assert topic == "voucher.issued"
    assert payload["lock_id"] == lock.id
    assert payload["voucher_id"] == voucher.id
    assert central.calls["lock"] == 1


def test_a_retry_with_the_same_key_asks_central_for_the_same_lock(
    shanghai: World, central: MemoryCentral
) -> None:
    shanghai.register(1, channel="unionpay")
    central.down()
    assert refusal(shanghai, 1, key="same") == "central_unavailable"
    with shanghai.rt.store.unit_of_work(readonly=True) as uow:
        assert (
            uow.vouchers.person_vouchers(
                uow.people.account_person("unionpay", "u1") or "",
                channel_id=None,
                after_id=None,
                limit=10,
                states=None,
            )
            == []
        )
    central.up()
    voucher = apply(shanghai, 1, key="same")
    assert voucher.state.value == "issued"


def test_a_second_refrigerator_is_refused_here_without_asking_central(
    shanghai: World, central: MemoryCentral
) -> None:
    shanghai.register(1, channel="unionpay")
    apply(shanghai, 1)
    calls = central.calls["lock"]
    assert refusal(shanghai, 1, key="again") == "qualification_limit_reached"
    assert central.calls["lock"] == calls


def test_up_to_three_air_conditioners(shanghai: World) -> None:
    shanghai.register(1, channel="unionpay")
    for attempt in range(3):
        apply(shanghai, 1, "air-conditioner", key=f"ac-{attempt}")
    assert refusal(shanghai, 1, "air-conditioner", key="ac-4") == "qualification_limit_reached"


def test_a_category_used_in_another_province_is_refused_with_that_reason(
    tmp_path: Path, shanghai: World, central: MemoryCentral
) -> None:
    shanghai.register(1, channel="unionpay")
    apply(shanghai, 1)
    config = trade_in_config().model_copy(
        update={
            "id": "zj-trade-in-2024",
            "eligibility": trade_in_config().eligibility.model_copy(update={"regions": ()}),
        }
    )
    with _world(tmp_path, central.as_province("330000"), "330000") as zhejiang:
        zhejiang.clock.set(shanghai.clock.now())
        zhejiang.open_campaign(config, merchants=False)
        zhejiang.register(1, channel="unionpay")  # the same ID number
        with pytest.raises(Conflict) as caught:
            qualification.apply(
                zhejiang.rt,
                Idempotency(app_id="unionpay", key="zj-1", request_hash="h"),
                qualification.Application("u1", "zj-trade-in-2024", "r1", "refrigerator"),
            )
        assert caught.value.code == "qualification_used_elsewhere"
        # Another category is free.
        qualification.apply(
            zhejiang.rt,
            Idempotency(app_id="unionpay", key="zj-2", request_hash="h"),
            qualification.Application("u1", "zj-trade-in-2024", "r1", "tv"),
        )


def test_sold_out_gives_the_lock_back(tmp_path: Path, central: MemoryCentral) -> None:
    with _world(tmp_path, central, "310000") as world:
        _clock_for_central.world = world
        world.open_campaign(trade_in_config(stock=1), merchants=False)
        world.register(1, channel="unionpay")
        world.register(2, channel="unionpay")
        apply(world, 1)
        assert refusal(world, 2) == "sold_out"
        topics = sorted(topic for topic, _ in _events(world))
        assert topics == ["qualification.released", "voucher.issued"]
        # Delivered, central frees person 2's slot: they may apply elsewhere.
        assert relay_round(world.rt, central).delivered == 2
        with world.rt.store.unit_of_work(readonly=True) as uow:
            assert uow.outbox.backlog() == {"delivered": 2}


def test_an_unused_voucher_that_expires_gives_the_qualification_back(
    shanghai: World, central: MemoryCentral
) -> None:
    shanghai.register(1, channel="unionpay")
    voucher = apply(shanghai, 1)
    shanghai.clock.set(voucher.valid_until + timedelta(seconds=1))
    assert sweep(shanghai.rt).expired == 1
    assert [topic for topic, _ in _events(shanghai)] == ["voucher.issued", "voucher.expired"]
    while relay_round(shanghai.rt, central).leased:
        pass
    # The qualification is back: the person may apply again, here or anywhere.
    again = apply(shanghai, 1, key="after-expiry")
    assert again.id != voucher.id


def test_a_lock_whose_voucher_never_came_is_released_by_the_sweep(
    shanghai: World, central: MemoryCentral
) -> None:
    from lequan.rows import QualificationLockRow

    with shanghai.rt.store.unit_of_work() as uow:
        uow.qualifications.add_lock(
            QualificationLockRow(
                id="310000-crashed",
                person_id="p",
                campaign_id="sh-trade-in-2024",
                template_id="tv",
                category="tv",
                state="held",
                voucher_id=None,
                created_at=T0,
                updated_at=T0,
            )
        )
        uow.commit()
    shanghai.clock.advance(timedelta(seconds=shanghai.rt.settings.trade_in_hold_s + 1))
    sweep(shanghai.rt)
    with shanghai.rt.store.unit_of_work(readonly=True) as uow:
        lock = uow.qualifications.get_lock("310000-crashed")
    assert lock is not None
    assert lock.state == "released"
    assert [topic for topic, _ in _events(shanghai)] == ["qualification.released"]


def test_a_province_without_central_issues_no_trade_in_voucher(tmp_path: Path) -> None:
    with make_world(store=MemoryStore(), tmp_path=tmp_path, clock_at=T0) as world:
        world.open_campaign(trade_in_config(), merchants=False)
        world.register(1, channel="unionpay")
        with pytest.raises(Conflict) as caught:
            apply(world, 1)
        assert caught.value.code == "central_not_configured"


def test_a_consumption_template_is_not_applied_for(shanghai: World) -> None:
    from tests.factories import dining_config

    shanghai.open_campaign(dining_config(), merchants=False)
    shanghai.register(1, channel="wechat")
    with pytest.raises(Conflict) as caught:
        qualification.apply(
            shanghai.rt,
            Idempotency(app_id="wechat", key="d", request_hash="h"),
            qualification.Application("u1", "sh-dining-2024", "r1", "d300-90", "310104"),
        )
    assert caught.value.code == "not_a_trade_in_template"


def test_a_retry_after_the_sweep_gave_the_lock_back_asks_for_it_again(
    shanghai: World, central: MemoryCentral
) -> None:
    shanghai.register(1, channel="unionpay")
    central.down()
    assert refusal(shanghai, 1, key="slow") == "central_unavailable"
    # The application never came back for longer than the hold: the sweep gives it back.
    shanghai.clock.advance(timedelta(seconds=shanghai.rt.settings.trade_in_hold_s + 1))
    sweep(shanghai.rt)
    central.up()
    voucher = apply(shanghai, 1, key="slow")  # the same request, the same lock again
    with shanghai.rt.store.unit_of_work(readonly=True) as uow:
        lock = uow.qualifications.lock_of_voucher(voucher.id)
    assert lock is not None
    assert lock.state == "issued"
