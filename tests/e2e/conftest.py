"""End-to-end helpers: a started platform behind the real FastAPI app, driven
over HTTP with signed requests, as a channel, an acquirer or an operator
would drive it.

``open_api(...)`` builds one (SQLite + in-process gate unless told
otherwise) and ``api`` is the common case: the Shanghai dining campaign
live, the clock at round one's release.
"""

from __future__ import annotations

import functools
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import sqlalchemy as sa
import structlog
import yaml

from lequan.adapters.clock import ManualClock
from lequan.client import LequanAuth
from lequan.domain.campaigns import CampaignConfig
from lequan.examples import example_merchants
from lequan.http.app import create_app
from lequan.ports import ClaimGate
from tests.factories import World, dining_config, id_number, make_world

with warnings.catch_warnings():
    # starlette's TestClient prefers the httpx2 package and warns once, at
    # import, that plain httpx is deprecated; the suite turns warnings into
    # errors, and httpx is what lequan's own client is written against.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

__all__ = [
    "ACQUIRER",
    "AUTO",
    "CAMPAIGN",
    "Api",
    "OpenApi",
    "assert_error",
    "assert_refused",
    "campaign_yaml",
    "merchants_csv",
    "person_body",
]

CAMPAIGN = "sh-dining-2024"
ACQUIRER = "acq-unionpay"
# The Idempotency-Key argument's default: a fresh key for each call.
AUTO = "<auto>"
PHONE = "139{n:08d}"
NAME = "张三"


def person_body(
    n: int,
    *,
    user: str | None = None,
    located: str | None = "310104",
    **overrides: Any,
) -> dict[str, Any]:
    """The sign-up body of test person ``n`` (user ``u<n>``, living and located in Xuhui)."""
    body: dict[str, Any] = {
        "channel_user_id": user or f"u{n}",
        "id_number": id_number(n),
        "name": NAME,
        "phone": PHONE.format(n=n),
        "region_code": "310104",
        "location_region": located,
        "consent": True,
    }
    body.update(overrides)
    return body


def campaign_yaml(config: CampaignConfig) -> str:
    """The campaign file an operator would upload for ``config``."""
    return yaml.safe_dump(config.model_dump(mode="json"), allow_unicode=True, sort_keys=False)


def merchants_csv() -> str:
    """The example merchants, enrolled in the dining campaign only."""
    return example_merchants(dining_only=True)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the JSON error ``{code, message, request_id}`` with this status."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["request_id"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


def assert_refused(
    api: Api, call: Callable[[], httpx.Response], status: int, code: str
) -> dict[str, Any]:
    """The call is refused with ``code`` and changes nothing in the store."""
    before = api.snapshot()
    body = assert_error(call(), status, code)
    assert api.snapshot() == before
    return body


@dataclass
class Api:
    """A running app with signed clients for every app the world created."""

    world: World
    client: TestClient

    @property
    def clock(self) -> ManualClock:
        return self.world.clock

    @property
    def engine(self) -> sa.Engine:
        engine: sa.Engine = self.world.rt.store.engine
        return engine

    def auth(self, app_id: str) -> LequanAuth:
        return LequanAuth(app_id, self.world.secrets[app_id])

    # -- raw calls ---------------------------------------------------------------

    def post(
        self,
        app_id: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = AUTO,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """A signed POST; ``key`` AUTO sends a fresh Idempotency-Key, None sends none."""
        sent = dict(headers or {})
        if key == AUTO:
            key = uuid.uuid4().hex
        if key is not None:
            sent["Idempotency-Key"] = key
        response: httpx.Response
        if content is not None:
            sent.setdefault("Content-Type", "application/json")
            response = self.client.post(path, content=content, headers=sent, auth=self.auth(app_id))
        else:
            response = self.client.post(path, json=body, headers=sent, auth=self.auth(app_id))
        return response

    def get(
        self, app_id: str, path: str, params: Mapping[str, str | int] | None = None
    ) -> httpx.Response:
        response: httpx.Response = self.client.get(path, params=params, auth=self.auth(app_id))
        return response

    def admin(
        self,
        operator: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: str | None = None,
        content_type: str | None = None,
    ) -> httpx.Response:
        """An operator's call with their Bearer token."""
        headers = {"Authorization": f"Bearer {self.world.tokens[operator]}"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response: httpx.Response
        if content is not None:
            response = self.client.request(
                method, path, content=content.encode("utf-8"), headers=headers
            )
        else:
            response = self.client.request(method, path, json=json, headers=headers)
        return response

    # -- the channel's calls -----------------------------------------------------

    def register(
        self,
        n: int,
        *,
        channel: str = "wechat",
        located: str | None = "310104",
        user: str | None = None,
    ) -> str:
        """Sign up person ``n`` through ``channel``; returns the channel user id."""
        body = person_body(n, user=user, located=located)
        response = self.post(channel, "/v1/persons", body)
        assert response.status_code in (200, 201), response.text
        user_id: str = body["channel_user_id"]
        return user_id

    def claim(
        self,
        user: str,
        *,
        template: str = "d300-90",
        round_id: str = "r1",
        channel: str = "wechat",
        located: str | None = "310104",
        key: str | None = AUTO,
    ) -> httpx.Response:
        body = self.claim_body(user, template=template, round_id=round_id, located=located)
        return self.post(channel, "/v1/claims", body, key=key)

    @staticmethod
    def claim_body(
        user: str,
        *,
        template: str = "d300-90",
        round_id: str = "r1",
        located: str | None = "310104",
    ) -> dict[str, Any]:
        """The body of ``POST /v1/claims`` (a batch item without its key)."""
        return {
            "channel_user_id": user,
            "campaign_id": CAMPAIGN,
            "round_id": round_id,
            "template_id": template,
            "location_region": located,
        }

    def claim_voucher(self, user: str, **kwargs: Any) -> dict[str, Any]:
        """Claim and expect a voucher; returns it."""
        response = self.claim(user, **kwargs)
        assert response.status_code == 201, response.text
        voucher: dict[str, Any] = response.json()["voucher"]
        return voucher

    def wallet(self, user: str, *, channel: str = "wechat", **params: str | int) -> httpx.Response:
        return self.get(channel, f"/v1/persons/{user}/vouchers", params or None)

    # -- the acquirer's calls ----------------------------------------------------

    @staticmethod
    def order(
        user: str,
        *,
        channel: str = "wechat",
        merchant: str = "m-cafe-001",
        amount_fen: int = 30000,
        mode: str = "in_store",
    ) -> dict[str, Any]:
        return {
            "channel_id": channel,
            "channel_user_id": user,
            "merchant_id": merchant,
            "order_amount_fen": amount_fen,
            "mode": mode,
        }

    def quote(self, user: str, **order: Any) -> httpx.Response:
        return self.post(ACQUIRER, "/v1/redemptions/quote", self.order(user, **order), key=None)

    def redeem(
        self,
        voucher_id: str,
        user: str,
        *,
        capture: str = "one_step",
        order_id: str | None = None,
        key: str | None = AUTO,
        **order: Any,
    ) -> httpx.Response:
        body = {
            **self.order(user, **order),
            "voucher_id": voucher_id,
            "order_id": order_id or f"POS-{uuid.uuid4().hex[:12]}",
            "capture": capture,
        }
        return self.post(ACQUIRER, "/v1/redemptions", body, key=key)

    def follow_up(
        self, redemption_id: str, action: str, body: Any = None, *, key: str | None = AUTO
    ) -> httpx.Response:
        """confirm | void | reverse | refunds on one redemption."""
        return self.post(ACQUIRER, f"/v1/redemptions/{redemption_id}/{action}", body, key=key)

    # -- looking at the store ----------------------------------------------------

    def voucher_state(self, voucher_id: str) -> str:
        with self.engine.connect() as connection:
            state = connection.execute(
                sa.text("SELECT state FROM vouchers WHERE id = :id"), {"id": voucher_id}
            ).scalar_one()
        return str(state)

    def snapshot(self) -> dict[str, Any]:
        """Everything a refused call must leave as it was: row counts, states, money."""
        counted = (
            "persons",
            "person_accounts",
            "vouchers",
            "redemptions",
            "ledger_entries",
            "ledger_postings",
            "idempotency_keys",
            "outbox",
            "blacklist",
        )
        with self.engine.connect() as connection:
            found: dict[str, Any] = {
                table: connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in counted
            }
            found["voucher_states"] = sorted(
                tuple(r)
                for r in connection.execute(sa.text("SELECT id, state, version FROM vouchers"))
            )
            found["redemption_states"] = sorted(
                tuple(r) for r in connection.execute(sa.text("SELECT id, status FROM redemptions"))
            )
            found["campaigns"] = sorted(
                tuple(r)
                for r in connection.execute(
                    sa.text("SELECT id, status, committed_fen FROM campaigns")
                )
            )
        return found

    def check(self, campaign_id: str = CAMPAIGN) -> dict[str, Any]:
        """The campaign's invariants as the admin API reports them."""
        response = self.admin("vera", "GET", f"/v1/admin/campaigns/{campaign_id}/check")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@functools.cache
def _default_config() -> CampaignConfig:
    """The dining campaign as shipped (a frozen model, so one copy serves every test)."""
    return dining_config()


class OpenApi(Protocol):
    def __call__(
        self,
        config: CampaignConfig | None = None,
        *,
        campaign: bool = True,
        database_url: str | None = None,
        gate: ClaimGate | None = None,
        **settings: Any,
    ) -> Api: ...


@pytest.fixture(autouse=True)
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every test's log events, kept as dicts instead of being rendered.

    Rendering is slow where it matters least: the traceback of an expected
    internal error, with its locals, takes seconds to draw.
    """
    with structlog.testing.capture_logs() as events:
        yield events


@pytest.fixture
def open_api(tmp_path: Path, migrated_sqlite: str) -> Iterator[OpenApi]:
    """Build apps on demand; all are shut down when the test ends."""
    with ExitStack() as stack:
        built: list[Api] = []

        def factory(
            config: CampaignConfig | None = None,
            *,
            campaign: bool = True,
            database_url: str | None = None,
            gate: ClaimGate | None = None,
            **settings: Any,
        ) -> Api:
            home = tmp_path / f"world{len(built)}"
            home.mkdir()
            if database_url is None:
                shutil.copyfile(migrated_sqlite, home / "lequan.db")
            world = stack.enter_context(
                make_world(
                    database_url=database_url or f"sqlite:///{home}/lequan.db",
                    gate=gate,
                    tmp_path=home,
                    **settings,
                )
            )
            if campaign:
                world.open_campaign(config or _default_config())
            app = create_app(world.platform, close_on_shutdown=False)
            client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
            api = Api(world, client)
            built.append(api)
            return api

        yield factory


@pytest.fixture
def api(open_api: OpenApi) -> Api:
    """SQLite and the in-process gate, the dining campaign live at round one's release."""
    return open_api()
