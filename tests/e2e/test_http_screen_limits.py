"""The big screen at its edges: the panel of apps that are failing names them and
leaves out those that are only refused, and the event streams are bounded in all
and let go of a client that stops reading."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import httpx

from lequan.adapters.memory_gate import MemoryGate
from lequan.ports import GateUnavailable, ReserveRequest, ReserveResult
from tests.e2e.conftest import ACQUIRER, Api, OpenApi, assert_error
from tests.e2e.test_http_screen import sign_in, snapshot

STREAM = "/v1/screen/stream"


class _GateDown(MemoryGate):
    """A gate whose server cannot be reached once claims ask it: every claim is 503."""

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        raise GateUnavailable("connection refused")


def _eventually(api: Api, settled: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first snapshot for which ``settled`` holds, asked until a deadline: the
    process builds a new one at most once per screen interval."""
    deadline = time.monotonic() + 10
    body = snapshot(api)
    while not settled(body) and time.monotonic() < deadline:
        time.sleep(0.05)
        body = snapshot(api)
    return body


def _open(api: Api, **params: str) -> tuple[AbstractContextManager[httpx.Response], httpx.Response]:
    """A stream opened with the session the client holds now, left open for the test."""
    stream = api.client.stream("GET", STREAM, params=params)
    return stream, stream.__enter__()


def _events(response: httpx.Response) -> Iterator[str]:
    """The ``data:`` lines of a stream, as its client reads them."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line


def _opens_again(api: Api) -> bool:
    """A new stream is served within a deadline: a slot was given back (the server may
    notice a client gone a moment after it went)."""
    deadline = time.monotonic() + 10
    while True:
        with api.client.stream("GET", STREAM) as again:
            if again.status_code == 200:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def test_the_screen_names_the_channel_whose_calls_fail(open_api: OpenApi) -> None:
    api = open_api(gate=_GateDown(), screen_interval_s=0.2)
    user = api.register(1)
    for _ in range(3):
        assert_error(api.claim(user), 503, "gate_unavailable")
    assert_error(api.claim("nobody"), 404, "not_registered")
    # Another channel and the acquirer are only refused or answered: their fault or
    # nobody's, so not the platform failing them.
    api.register(2, channel="alipay")
    assert_error(api.claim("nobody", channel="alipay"), 404, "not_registered")
    assert_error(api.post("alipay", "/v1/claims", {"bad": 1}), 422, "invalid_request")
    assert api.quote(user).status_code == 200
    sign_in(api, "vera")
    assert snapshot(api)["apps_erroring"] == [
        {
            "app_id": "wechat",
            "kind": "channel",
            "requests": 5,  # the sign-up, three claims the gate failed, one refused
            "errors": 3,
            "error_ratio": 0.6,
            "top_code": "gate_unavailable",
        }
    ]
    # The panel is the last minute's: a minute on, the channel is off it.
    api.clock.advance(timedelta(seconds=61))
    assert _eventually(api, lambda body: not body["apps_erroring"])["apps_erroring"] == []


def test_an_app_s_failures_not_its_mistakes_give_its_top_code(open_api: OpenApi) -> None:
    """One claim the gate failed among three the channel sent for nobody: the panel's
    code is the failure's, however many more the caller's own mistakes."""
    api = open_api(gate=_GateDown(), screen_interval_s=0.2)
    user = api.register(1)
    assert_error(api.claim(user), 503, "gate_unavailable")
    for _ in range(3):
        assert_error(api.claim("nobody"), 404, "not_registered")
    sign_in(api, "vera")
    [wechat] = snapshot(api)["apps_erroring"]
    assert (wechat["app_id"], wechat["errors"]) == ("wechat", 1)
    assert wechat["top_code"] == "gate_unavailable"


def test_the_screen_names_the_acquirer_the_platform_throttles(open_api: OpenApi) -> None:
    """A throttled call is still its app's: the acquirer sending too fast is named, its
    429s counted, though the refusal came before its call was served."""
    api = open_api(screen_interval_s=0.2, app_rate_per_s=0.001, app_burst=2)
    user = api.register(1)
    answers = [api.quote(user) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    assert_error(answers[-1], 429, "throttled")
    sign_in(api, "vera")
    erroring = {row["app_id"]: row for row in snapshot(api)["apps_erroring"]}
    assert erroring[ACQUIRER]["top_code"] == "throttled"
    assert erroring[ACQUIRER]["errors"] == 2


def test_streams_are_bounded_across_operators(open_api: OpenApi) -> None:
    api = open_api(screen_streams_max=2, screen_interval_s=0.2)
    assert api.world.rt.settings.screen_streams_per_operator_max > 2
    sign_in(api, "vera")
    vera, vera_response = _open(api, every_s="0.2")
    sign_in(api, "bob")
    bob, bob_response = _open(api, every_s="0.2")
    try:
        assert vera_response.status_code == 200
        assert bob_response.status_code == 200
        before = api.snapshot()
        # Bob holds one stream, under his own limit: the process's two are taken.
        refused = api.client.get(STREAM)
        assert_error(refused, 429, "too_many_streams")
        assert int(refused.headers["retry-after"]) > 0
        assert api.snapshot() == before
        # The refusal took nothing from the streams that were open.
        for response in (vera_response, bob_response):
            assert next(_events(response))
    finally:
        vera.__exit__(None, None, None)
    try:
        # Vera's stream closed: its slot serves another operator.
        assert _opens_again(api)
    finally:
        bob.__exit__(None, None, None)


def test_a_client_that_stops_reading_is_dropped_and_its_slot_freed(open_api: OpenApi) -> None:
    api = open_api(screen_streams_per_operator_max=1, screen_send_timeout_s=1.0)
    sign_in(api, "vera")
    stuck, stuck_response = _open(api)
    try:
        assert stuck_response.status_code == 200
        events = _events(stuck_response)
        assert next(events)
        # It reads no more, yet holds its stream open.
        assert_error(api.client.get(STREAM), 429, "too_many_streams")
        assert _opens_again(api)
        # The server ended the stuck stream: read again, it gives at most the snapshot
        # that was already on its way (a live stream would give one each second), then
        # its end.
        assert len(list(itertools.islice(events, 2))) <= 1
    finally:
        stuck.__exit__(None, None, None)
