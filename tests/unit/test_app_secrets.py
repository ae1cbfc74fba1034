"""The apps' secrets as the signature check sees them: every signed request asks
before anything proves who sent it, so a caller naming made-up app ids must
not turn each request into a store read (on the event loop, before this).

The store is incidental here (what is asked of it, not how it keeps it): the
in-memory one."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from lequan.adapters.memory_store import MemoryStore
from lequan.domain.errors import Unavailable
from lequan.services import admin
from lequan.services.admin import UNKNOWN_APP_TTL_S, AppSecrets
from tests.factories import make_world


def test_an_unknown_app_is_answered_from_memory_until_its_ttl(
    tmp_path: Path,
) -> None:
    with make_world(store=MemoryStore(), tmp_path=tmp_path) as world:
        apps: AppSecrets = world.platform.apps
        assert apps.cached("latecomer") == (False, None)  # memory does not know yet
        assert asyncio.run(apps.lookup("latecomer")) is None
        assert apps.cached("latecomer") == (True, None)  # now it does: unknown

        secret = admin.add_app(
            world.rt, app_id="latecomer", kind="channel", name="late", actor="alice"
        ).secret
        # Added in the meantime: still unknown here until the ttl is over...
        assert apps.get("latecomer") is None
        world.clock.advance(timedelta(seconds=UNKNOWN_APP_TTL_S + 1))
        # ...then read once and kept.
        assert apps.cached("latecomer") == (False, None)
        assert asyncio.run(apps.lookup("latecomer")) == ("channel", secret)
        assert apps.cached("latecomer") == (True, ("channel", secret))


def test_an_id_no_app_can_have_is_refused_without_asking_the_store(
    tmp_path: Path,
) -> None:
    with make_world(store=MemoryStore(), tmp_path=tmp_path) as world:
        apps: AppSecrets = world.platform.apps
        for made_up in ("WeChat", "a", "x" * 33, "wechat\n", "we chat", "-wechat", ""):
            assert apps.cached(made_up) == (True, None), made_up
        assert apps.cached("wechat") == (False, None)
        assert asyncio.run(apps.lookup("wechat")) == ("channel", world.secrets["wechat"])


def test_lookups_beyond_the_bound_are_overloaded_and_known_apps_still_answer(
    tmp_path: Path,
) -> None:
    with make_world(store=MemoryStore(), tmp_path=tmp_path) as world:
        apps = AppSecrets(world.rt, lookups_waiting_max=0)
        try:
            assert apps.get("wechat") == ("channel", world.secrets["wechat"])
            with pytest.raises(Unavailable) as refused:
                asyncio.run(apps.lookup("alipay"))
            assert refused.value.code == "overloaded"
            assert refused.value.retry_after_s == 1
            # What memory knows needs no lookup, bound or not.
            assert asyncio.run(apps.lookup("wechat")) == ("channel", world.secrets["wechat"])
        finally:
            apps.close()
