"""The fair start: the claims of a round's first seconds served in an order drawn from
a seed that was committed before the release and is published after, so anyone can
check the order and nobody, the platform included, could choose it once claims came.

This module is the whole specification a third party reimplements to verify a
draw (docs/risk.md, "Fair start", states it again in prose):

- **seed**: 32 random bytes, drawn when the campaign is approved, written as
  64 lowercase hex digits.
- **commitment**: SHA-256 (lowercase hex) of the UTF-8 text ::

      lequan-fair-start-v1\\n
      campaign=<campaign_id>\\n
      round=<round_id>\\n
      window_s=<start_window_s>\\n
      seed=<seed hex>\\n

  published from approval on, before the campaign can take its first claim.
- **ticket**: 32 lowercase hex digits the platform gives each claim it enters in
  the draw (a keyed digest of the claim's channel, Idempotency-Key and body: it
  names no person, and the same request sent again gets the same ticket).
- **score**: the first 8 bytes of HMAC-SHA256(key = the seed's 32 bytes,
  message = the ticket's 32 ASCII characters), read as a big-endian unsigned
  integer and shifted right by 12 bits: a 52-bit integer (so that it is exact in
  the double a Redis sorted set scores with).
- **order**: the entries sorted by (score, ticket), ascending; rank 1 is served
  first. Ties of score (one chance in 2**52 per pair) fall to the ticket's
  character order, as Redis orders members of equal score.

Pure: no I/O, no clock; the services draw the seed and keep it secret until the
draw is published.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ALGORITHM",
    "SCORE_BITS",
    "SEED_BYTES",
    "START_WINDOW_INTAKE_S_MAX",
    "START_WINDOW_S_MAX",
    "TICKET_CHARS",
    "PublishedEntry",
    "commitment",
    "commitment_text",
    "is_ticket",
    "order",
    "score",
    "verify",
]

ALGORITHM = "lequan-fair-start-v1"
# How long a start window may be: long enough to take in a release's crowd on a
# modest deployment (docs/risk.md sizes it), short enough that an entered claim's
# answer comes within a channel's patience.
START_WINDOW_S_MAX = 30
# How long after its window a round's draw may still take in claims the channels
# say were pressed inside it (``pressed_at``): long enough for a release's whole
# crowd to reach a modest deployment through the channels' queues.
START_WINDOW_INTAKE_S_MAX = 300
SEED_BYTES = 32
TICKET_CHARS = 32
SCORE_BITS = 52

_TICKET = re.compile(r"^[0-9a-f]{32}$")
_SEED = re.compile(r"^[0-9a-f]{64}$")


def commitment_text(*, campaign_id: str, round_id: str, window_s: int, seed_hex: str) -> str:
    """The text whose SHA-256 is the commitment: the seed with what it is drawn for."""
    assert _SEED.match(seed_hex), "a seed is 64 lowercase hex digits"
    return (
        f"{ALGORITHM}\ncampaign={campaign_id}\nround={round_id}\n"
        f"window_s={window_s}\nseed={seed_hex}\n"
    )


def commitment(*, campaign_id: str, round_id: str, window_s: int, seed_hex: str) -> str:
    """SHA-256 of ``commitment_text``, lowercase hex: published before the release."""
    text = commitment_text(
        campaign_id=campaign_id, round_id=round_id, window_s=window_s, seed_hex=seed_hex
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_ticket(text: str) -> bool:
    return bool(_TICKET.match(text))


def score(seed: bytes, ticket: str) -> int:
    """A ticket's place in the draw: 52 bits of HMAC-SHA256(seed, ticket)."""
    assert len(seed) == SEED_BYTES, "a seed is 32 bytes"
    digest = hmac.digest(seed, ticket.encode("ascii"), "sha256")
    return int.from_bytes(digest[:8], "big") >> (64 - SCORE_BITS)


def order(seed: bytes, tickets: Iterable[str]) -> list[str]:
    """The tickets in the order they are served: by (score, ticket)."""
    return sorted(tickets, key=lambda ticket: (score(seed, ticket), ticket))


@dataclass(frozen=True, slots=True)
class PublishedEntry:
    """One line of a published draw: a ticket, its rank and what it was answered."""

    rank: int
    ticket: str
    outcome: str


def verify(
    *,
    campaign_id: str,
    round_id: str,
    window_s: int,
    seed_hex: str,
    published_commitment: str,
    entries: Sequence[PublishedEntry],
) -> list[str]:
    """What is wrong with a published draw; empty when the seed opens the commitment
    and the ranks are exactly the order the seed gives the tickets."""
    if not _SEED.match(seed_hex):
        return ["the seed is not 64 lowercase hex digits"]
    problems: list[str] = []
    opened = commitment(
        campaign_id=campaign_id, round_id=round_id, window_s=window_s, seed_hex=seed_hex
    )
    if opened != published_commitment:
        problems.append(
            f"the seed does not open the commitment: SHA-256 gives {opened}, "
            f"{published_commitment} was published"
        )
    malformed = [e.ticket for e in entries if not is_ticket(e.ticket)]
    if malformed:
        problems.append(f"{len(malformed)} tickets are not 32 lowercase hex digits")
        return problems
    tickets = [e.ticket for e in entries]
    if len(set(tickets)) != len(tickets):
        problems.append("a ticket is listed twice")
    ranks = sorted(e.rank for e in entries)
    if ranks != list(range(1, len(entries) + 1)):
        problems.append("the ranks are not 1, 2, ... without a gap")
    by_rank = [e.ticket for e in sorted(entries, key=lambda e: e.rank)]
    expected = order(bytes.fromhex(seed_hex), tickets)
    wrong = sum(1 for a, b in zip(by_rank, expected, strict=True) if a != b)
    if wrong:
        first = next(n for n, (a, b) in enumerate(zip(by_rank, expected, strict=True), 1) if a != b)
        problems.append(
            f"{wrong} entries are not at the rank the seed gives them (the first at rank {first})"
        )
    return problems
