"""Ids: unique, opaque, sorting by creation time, one at a time or in a batch."""

from __future__ import annotations

from lequan.services.views import new_id, new_ids


def test_a_batch_of_ids_looks_like_single_ids_and_never_repeats() -> None:
    single = new_id("v")
    batch = new_ids("v", 5000)

    assert len(set(batch)) == 5000
    assert all(i.startswith("v") and len(i) == len(single) for i in batch)
    assert all(int(i[1:], 16) >= 0 for i in batch)  # hex after the prefix
    # Made later, so they sort after (the millisecond stamp leads).
    assert min(batch)[:13] >= single[:13]
    assert new_ids("v", 0) == []
