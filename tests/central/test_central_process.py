"""Central as a process: signing refusals, two provinces racing for one person with
real threads, a SIGKILL and a restart with nothing lost, and the operator's CLI."""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest

from benchmarks.central import CentralProcess
from lequan.adapters.central_http import HttpCentral
from lequan.oprf import PseudonymKey
from lequan.ports.central import (
    CentralUnavailable,
    ConsumeOutcome,
    ConsumeRequest,
    EventOutcome,
    LockOutcome,
    LockRequest,
    SyncEvent,
)
from lequan.signing import signature_headers
from tests.loopback import loopback_client


def _signed_post(
    central: CentralProcess,
    app_id: str,
    secret: str,
    path: str,
    body: bytes,
    *,
    nonce: str | None = None,
) -> httpx.Response:
    headers = signature_headers(
        app_id,
        secret,
        "POST",
        path,
        body,
        timestamp=int(time.time()),
        nonce=nonce or secrets.token_hex(8),
    )
    with loopback_client(central.url, timeout=10) as client:
        return client.post(path, content=body, headers=headers)


@pytest.fixture(scope="module")
def province(central_sqlite: CentralProcess) -> tuple[CentralProcess, dict[str, str]]:
    creds = central_sqlite.cli("province", "add", "signer", "--url", central_sqlite.url)
    return central_sqlite, creds


def test_unsigned_forged_and_replayed_calls_are_refused(
    province: tuple[CentralProcess, dict[str, str]],
) -> None:
    central, creds = province
    body = json.dumps({"locks": []}).encode()
    with loopback_client(central.url, timeout=10) as client:
        unsigned = client.post("/v1/locks", content=body)
    assert (unsigned.status_code, unsigned.json()["code"]) == (401, "missing_signature")
    forged = _signed_post(central, creds["app_id"], "not-the-secret", "/v1/locks", body)
    assert (forged.status_code, forged.json()["code"]) == (401, "invalid_signature")
    stranger = _signed_post(central, "province-nowhere", "x", "/v1/locks", body)
    assert (stranger.status_code, stranger.json()["code"]) == (401, "unknown_app")
    first = _signed_post(
        central, creds["app_id"], creds["secret"], "/v1/locks", body, nonce="n0nce-fixed-1"
    )
    assert first.json()["code"] == "central_invalid_batch"  # signed right; an empty batch
    replay = _signed_post(
        central, creds["app_id"], creds["secret"], "/v1/locks", body, nonce="n0nce-fixed-1"
    )
    assert (replay.status_code, replay.json()["code"]) == (401, "nonce_reused")


def test_malformed_bodies_are_422_never_500(
    province: tuple[CentralProcess, dict[str, str]],
) -> None:
    central, creds = province
    for body, code in (
        (b"not json", "invalid_request"),
        (b'{"locks": [{"lock_id": 1}]}', "invalid_request"),
        (b'{"locks": [], "extra": 1}', "invalid_request"),
        (b'{"blinded": ["AAAA"]}', "central_invalid_blinded_input"),
    ):
        path = "/v1/pseudonyms" if b"blinded" in body else "/v1/locks"
        answer = _signed_post(central, creds["app_id"], creds["secret"], path, body)
        assert (answer.status_code, answer.json()["code"]) == (422, code), body
    with loopback_client(central.url, timeout=10) as client:
        day = client.get("/v1/days/2025-02-30")
    assert day.status_code == 401  # unsigned first
    with loopback_client(central.url, timeout=10) as client:
        assert client.get("/healthz").json() == {"status": "ok"}


def test_two_provinces_racing_for_one_person(central_postgres: CentralProcess) -> None:
    """Eight threads, two provinces, the same forty people; air conditioners allow
    three each: exactly three locks per person win, nationwide."""
    people = [secrets.token_hex(32) for _ in range(40)]
    results: list[tuple[str, LockOutcome]] = []
    guard = threading.Lock()
    with central_postgres.province("race-a") as a, central_postgres.province("race-b") as b:
        start = threading.Barrier(8)

        def contender(n: int) -> None:
            platform = a if n % 2 else b
            requests = [
                LockRequest(f"race-{n}-{i}", person, "air_conditioner", 3, 600)
                for i, person in enumerate(people)
            ]
            start.wait()
            got = platform.lock(requests)
            with guard:
                results.extend((person, r.outcome) for person, r in zip(people, got, strict=True))

        threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for person in people:
        outcomes = [outcome for who, outcome in results if who == person]
        assert outcomes.count(LockOutcome.LOCKED) == 3
        assert set(outcomes) - {LockOutcome.LOCKED} <= {
            LockOutcome.USED_ELSEWHERE,
            LockOutcome.LIMIT_REACHED,
        }


def test_killed_and_restarted_central_loses_nothing(tmp_path: object, postgres_url: str) -> None:
    from pathlib import Path

    from tests.factories import postgres_database

    url, drop = postgres_database(postgres_url)
    central = CentralProcess(Path(str(tmp_path)), url)
    try:
        central.cli("migrate")
        central.start()
        with central.province("crash") as p, central.province("other") as q:
            person = secrets.token_hex(32)
            [pseudonym] = p.pseudonyms(["110101199003077777"])
            assert (
                p.lock([LockRequest("crash-1", person, "refrigerator", 1, 600)])[0].outcome
                is LockOutcome.LOCKED
            )
            consume = ConsumeRequest(
                "crash-1", "v1", "r1", "refrigerator", "SN-CRASH", None, "I1", 100_000, 15_000
            )
            assert p.consume([consume])[0].outcome is ConsumeOutcome.CONSUMED
            early = SyncEvent(
                "e2",
                "redemption.completed",
                datetime.now(UTC),
                {
                    "lock_id": "crash-1",
                    "discount_fen": 15_000,
                    "product": {
                        "category": "refrigerator",
                        "serial": "SN-CRASH",
                        "invoice_no": "I1",
                        "price_fen": 100_000,
                    },
                },
                "v1",
                2,
            )
            assert p.deliver([early])[0].outcome is EventOutcome.WAITING
            assert p.ready()
            central.kill()
            assert not p.ready()  # what a relay asks while it backs off
            with pytest.raises(CentralUnavailable):
                p.lock([LockRequest("crash-2", person, "phone", 1, 600)])
            central.start()
            assert p.ready()
            # The same pseudonym (the key survived), the same lock, serial and waiting event.
            assert p.pseudonyms(["110101199003077777"]) == [pseudonym]
            assert (
                q.lock([LockRequest("other-1", person, "refrigerator", 1, 600)])[0].outcome
                is LockOutcome.USED_ELSEWHERE
            )
            assert p.consume([consume])[0].outcome is ConsumeOutcome.CONSUMED
            issued = SyncEvent(
                "e1", "voucher.issued", datetime.now(UTC), {"lock_id": "crash-1"}, "v1", 1
            )
            assert p.deliver([issued])[0].outcome is EventOutcome.APPLIED
            assert p.deliver([early])[0].outcome is EventOutcome.DUPLICATE  # applied with the gap
            status = central.cli("status")
            assert status["events_waiting"] == 0
            assert status["serials"] == 1
    finally:
        central.stop()
        drop()


def test_revoke_and_move_from_the_cli(central_sqlite: CentralProcess) -> None:
    with central_sqlite.province("cli-a") as a, central_sqlite.province("cli-b") as b:
        person = secrets.token_hex(32)
        assert (
            a.lock([LockRequest("cli-a-1", person, "refrigerator", 1, 600)])[0].outcome
            is LockOutcome.LOCKED
        )
        # 变更资格: the person moved from province a to b.
        moved = central_sqlite.cli(
            "qualification", "move", person, "refrigerator", "--from", "cli-a"
        )
        assert moved["released_locks"] == ["cli-a-1"]
        assert (
            b.lock([LockRequest("cli-b-1", person, "refrigerator", 1, 600)])[0].outcome
            is LockOutcome.LOCKED
        )
        revoked = central_sqlite.cli(
            "qualification", "revoke", person, "refrigerator", "--reason", "fraud"
        )
        assert revoked["revoked_locks"] == ["cli-b-1"]
        assert (
            b.lock([LockRequest("cli-b-2", person, "refrigerator", 1, 600)])[0].outcome
            is LockOutcome.REVOKED
        )
        consume = ConsumeRequest("cli-b-1", "v", "r", "refrigerator", "S9", None, "I", 100, 10)
        assert b.consume([consume])[0].outcome is ConsumeOutcome.NOT_LOCKED


def test_an_unreachable_central_is_unavailable_quickly() -> None:
    from benchmarks.central import _free_port

    started = time.monotonic()
    with (
        HttpCentral(
            f"http://127.0.0.1:{_free_port()}",
            app_id="x",
            secret="y",
            public_key=PseudonymKey(bytes(32)).public_key_hex,
            attempts=2,
        ) as nowhere,
        pytest.raises(CentralUnavailable),
    ):
        nowhere.lock([LockRequest("l", "a" * 64, "phone", 1, 60)])
    assert time.monotonic() - started < 5
