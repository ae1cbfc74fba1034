"""Money through a risk rule's hold: whatever an analyst and the acquirer do to held
redemptions, in whatever order (approve, reject, refund), the ledger balances at every
step, the held accounts hold exactly what the holds say, and every fen of a redemption's
discount ends in one place: owed to the acquirer, held, or back in the budget.

On the in-memory store (the services are the same on every store; the store's part is
its contract suite's)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lequan.adapters.memory_store import MemoryStore
from lequan.domain.errors import LequanError
from lequan.domain.ledger import Account
from lequan.services import admin, redemption, reviews, risk_rules
from lequan.services.claiming import ClaimRequest
from lequan.services.idempotency import Idempotency, request_hash
from lequan.services.invariants import check_campaign
from lequan.services.redemption import RedeemOrder
from tests.factories import ACQUIRER, World, dining_config, make_world

CAMPAIGN = "sh-dining-2024"
DISCOUNT_FEN = 9000
PAYABLE = f"payable:{ACQUIRER}"
HELD = f"held:{ACQUIRER}"
# What an analyst and the acquirer do to one held redemption, in order.
STORIES = (
    "nothing",
    "approve",
    "reject",
    "refund",
    "approve refund",
    "reject refund",
    "refund approve",
    "refund reject",
)


@contextmanager
def held_world(people: int) -> Iterator[World]:
    """A live dining campaign whose every redemption a rule holds (10:00 is outside
    the hours it sets), an analyst, ``people`` with a voucher each."""
    with (
        tempfile.TemporaryDirectory() as directory,
        make_world(store=MemoryStore(), tmp_path=Path(directory)) as world,
    ):
        rt = world.rt
        admin.add_operator(rt, "ana", role="analyst")
        world.open_campaign(dining_config(stock={"wechat": {"d300-90": people}}))
        text = yaml.safe_dump(
            {
                "version": 1,
                "redemption": {
                    "outside_business_hours": {
                        "opens_at": "20:00",
                        "closes_at": "21:00",
                        "action": "hold",
                    }
                },
            }
        )
        risk_rules.draft_rules(rt, text, actor="alice")
        risk_rules.approve_rules(rt, 1, actor="bob")
        assert world.platform.risk is not None
        world.platform.risk.refresh()
        yield world


def voucher(world: World, n: int) -> str:
    user = world.register(n)
    key = Idempotency("wechat", f"k-{n}", request_hash(user))
    [result] = world.platform.claims.claim(
        "wechat", [ClaimRequest(user, CAMPAIGN, "r1", "d300-90", "310104", key)]
    )
    assert result.outcome == "issued", result
    vid = result.answer.body["voucher"]["voucher_id"]
    assert isinstance(vid, str)
    return vid


def books(world: World) -> dict[str, int]:
    check = check_campaign(world.rt, CAMPAIGN)
    assert check.ok, check.problems
    balances = check.balances
    assert sum(balances.values()) == 0
    funded = -balances[Account.FUNDING]
    kept = sum(
        n
        for account, n in balances.items()
        if account.startswith(("payable:", "held:"))
        or account in (Account.BUDGET, Account.OUTSTANDING)
    )
    assert kept == funded
    return balances


def review_of(world: World, redemption_id: str) -> str:
    items = reviews.list_reviews(
        world.rt, actor="ana", status=None, kind="redemption", after_id=None, limit=100
    )
    (found,) = [i.id for i in items if i.subject["redemption_id"] == redemption_id]
    return found


def act(world: World, step: str, redemption_id: str) -> str | None:
    """Take the step; the code it is refused with, if it is."""
    rt = world.rt
    try:
        if step == "refund":
            redemption.refund(
                rt,
                redemption_id,
                acquirer_id=ACQUIRER,
                refund_amount_fen=30_000,
                screen=world.platform.redemption_screen,
            )
        elif step == "approve":
            reviews.approve_review(
                rt, world.platform.claims, review_of(world, redemption_id), actor="ana", reason="ok"
            )
        else:
            reviews.reject_review(rt, review_of(world, redemption_id), actor="ana", reason="fake")
    except LequanError as error:
        return error.code
    return None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(STORIES), min_size=1, max_size=6))
def test_money_is_conserved_through_hold_release_and_claw_back(stories: list[str]) -> None:
    with held_world(len(stories)) as world:
        redemptions = []
        for n, _story in enumerate(stories):
            vid = voucher(world, n)
            order = RedeemOrder(
                ACQUIRER, "m-cafe-001", "wechat", f"u{n}", f"o{n}", 30_000, "in_store"
            )
            row, _ = redemption.redeem(
                world.rt,
                voucher_id=vid,
                order=order,
                lock=False,
                screen=world.platform.redemption_screen,
            )
            redemptions.append(row.id)
            assert books(world)[HELD] == DISCOUNT_FEN * (n + 1)
        for story, redemption_id in zip(stories, redemptions, strict=True):
            for n, step in enumerate(story.split()):
                if step != "nothing":
                    refused = act(world, step, redemption_id)
                    # The one step refused: a refund after a claw-back.
                    clawed = n > 0 and story.startswith("reject")
                    assert refused == ("redemption_clawed_back" if clawed else None)
                books(world)
        balances = books(world)
        owed = sum(1 for s in stories if s == "approve")
        held = sum(1 for s in stories if s == "nothing")
        assert balances.get(PAYABLE, 0) == DISCOUNT_FEN * owed
        assert balances.get(HELD, 0) == DISCOUNT_FEN * held


def test_a_claw_back_gives_the_discount_to_the_budget() -> None:
    with held_world(1) as world:
        vid = voucher(world, 0)
        committed = check_campaign(world.rt, CAMPAIGN).committed_fen
        order = RedeemOrder(ACQUIRER, "m-cafe-001", "wechat", "u0", "o0", 30_000, "in_store")
        row, _ = redemption.redeem(
            world.rt,
            voucher_id=vid,
            order=order,
            lock=False,
            screen=world.platform.redemption_screen,
        )
        # A d300-90 voucher's face is its discount: the redemption commits nothing more.
        assert check_campaign(world.rt, CAMPAIGN).committed_fen == committed
        assert act(world, "reject", row.id) is None
        assert check_campaign(world.rt, CAMPAIGN).committed_fen == committed - DISCOUNT_FEN
        assert books(world).get(HELD, 0) == 0


@pytest.mark.parametrize("step", ["approve", "reject"])
def test_a_decision_is_taken_once(step: str) -> None:
    with held_world(1) as world:
        vid = voucher(world, 0)
        order = RedeemOrder(ACQUIRER, "m-cafe-001", "wechat", "u0", "o0", 30_000, "in_store")
        row, _ = redemption.redeem(
            world.rt,
            voucher_id=vid,
            order=order,
            lock=False,
            screen=world.platform.redemption_screen,
        )
        assert act(world, step, row.id) is None
        review_id = review_of(world, row.id)
        with pytest.raises(LequanError) as again:
            reviews.reject_review(world.rt, review_id, actor="ana", reason="twice")
        assert again.value.code == "review_state"
        with pytest.raises(LequanError) as again:
            reviews.approve_review(
                world.rt, world.platform.claims, review_id, actor="ana", reason="twice"
            )
        assert again.value.code == "review_state"
        books(world)
