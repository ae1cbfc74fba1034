"""What the shipped monitoring files are checked against: Prometheus's own tool, and
the metric names a real app exports."""

from __future__ import annotations

import shutil
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REQUIRE_SERVICES
from tests.e2e.conftest import Api, OpenApi, open_api  # noqa: F401  # the e2e suite's app

# Every series the rules and the dashboard read must be in a real app's scrape
# (``exported`` below), with none allowed ahead of the platform: the big screen's
# collectors (issue 15) now export the last two that were, ``lequan_merchants_spiking``
# and ``lequan_pool_sold_out_after_seconds``. What the rules do with any series is
# still tested on synthetic series, by promtool (lequan-alerts.test.yml).


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's promtool (Debian's `prometheus` package; .ci/run installs it)."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (apt-get install prometheus)"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (LEQUAN_TEST_REQUIRE_SERVICES=1: required)", pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture
def exported(open_api: OpenApi) -> frozenset[str]:  # noqa: F811  # the fixture imported above
    """Every series name a real app's /metrics gives after claims, refusals, a batch
    and a redemption."""
    api: Api = open_api()
    user = api.register(1)
    voucher = api.claim_voucher(user)["voucher_id"]
    assert api.claim(user).status_code == 409
    item = Api.claim_body(user) | {"idempotency_key": uuid.uuid4().hex}
    assert api.post("wechat", "/v1/claims/batch", {"items": [item]}, key=None).status_code == 200
    assert api.redeem(voucher, user).status_code == 201
    text = api.client.get("/metrics").text
    families = list(text_string_to_metric_families(text))
    # A family's name too: a gauge with no sample yet (no pool sold out) is still exported.
    return frozenset(
        {sample.name for family in families for sample in family.samples}
        | {family.name for family in families}
    )
