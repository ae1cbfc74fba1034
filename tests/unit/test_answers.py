"""Rendered answers and claim digests: written out by hand for speed, so they are
checked here against what the plain library calls would give."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from lequan.http.claims import claim_hash
from lequan.http.schemas import ClaimIn
from lequan.services.idempotency import Answer, RenderedBody, request_hash

_text = st.text(max_size=20)


@given(_text, _text, _text, _text, st.none() | _text)
def test_claim_digest_is_that_of_the_fields_as_compact_json(
    user: str, campaign: str, round_id: str, template: str, region: str | None
) -> None:
    """Stored answers keep their digests across versions: a retry after an upgrade
    still replays the first answer instead of being refused as a changed request."""
    claim = ClaimIn.model_construct(
        channel_user_id=user,
        campaign_id=campaign,
        round_id=round_id,
        template_id=template,
        location_region=region,
    )
    fields = [user, campaign, round_id, template, region]
    expected = request_hash("claim", json.dumps(fields, ensure_ascii=False, separators=(",", ":")))
    assert claim_hash(claim) == expected


def test_a_rendered_answer_reads_as_its_json_and_keeps_its_text() -> None:
    text = '{"status":"issued","voucher":{"voucher_id":"v1","face_fen":3000,"note":"市民"}}'
    answer = Answer.rendered(201, text)
    assert answer.json() == text  # stored and sent as it is, not rendered again
    assert isinstance(answer.body, RenderedBody)
    assert answer.body["voucher"]["face_fen"] == 3000
    assert dict(answer.body) == json.loads(text)
    assert answer == Answer(201, json.loads(text))
    assert answer.body.get("code") is None
