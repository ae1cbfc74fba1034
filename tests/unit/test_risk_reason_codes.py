"""Every risk rule's reason code is in docs/api.md's table, with the actions its
rules file may give it, and the table names no code the rules do not have: a
channel or an analyst reading a reason finds it there."""

from __future__ import annotations

import re
from pathlib import Path

from lequan.domain.redemption_risk import REDEMPTION_ACTIONS, RedemptionReason
from lequan.domain.risk import ACTIONS, ClaimReason

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
ROW = re.compile(r"^\| `([a-z_]+)` \| (.+) \| ([a-z, ]+) \|$", re.M)


def _table() -> dict[str, str]:
    """The rows of "Risk reason codes": code -> its actions, as written."""
    text = DOC.read_text(encoding="utf-8")
    _, found, rest = text.partition("### Risk reason codes\n")
    assert found, "docs/api.md has no section 'Risk reason codes'"
    section = rest.split("\n#", 1)[0]
    return {code: actions for code, _when, actions in ROW.findall(section)}


def test_every_reason_code_is_in_the_table_with_its_actions() -> None:
    table = _table()
    expected = {reason.value: ", ".join(ACTIONS) for reason in ClaimReason}
    expected |= {reason.value: ", ".join(REDEMPTION_ACTIONS) for reason in RedemptionReason}
    assert table == expected
