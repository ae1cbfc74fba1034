"""PostgreSQL plans a batch's key lookups by their indexes, even in a young table
whose statistics are older than its rows: the vouchers of a first sale,
thousands more a second, or the answers of its first redemptions, before
autovacuum's next ANALYZE. A scan of the whole table per batch is what the
first minute of a sale would pay (``POSTGRES_RANDOM_PAGE_COST``, migration
0003)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from lequan.adapters.sql.engine import create_engine

pytestmark = [pytest.mark.postgres]

YOUNG_ROWS = 30_000


@pytest.fixture
def store(pristine_postgres_url: str) -> Iterator[sa.Engine]:
    """A new, migrated PostgreSQL store; its rows are the test's to insert."""
    engine = create_engine(pristine_postgres_url)
    try:
        yield engine
    finally:
        engine.dispose()


def insert_rows(engine: sa.Engine, *statements: str) -> None:
    """The rows alone matter here: no campaign, person or pool behind them."""
    with engine.connect() as connection:
        connection.exec_driver_sql("SET session_replication_role = replica")
        for statement in statements:
            connection.exec_driver_sql(statement)
        connection.commit()


@pytest.fixture
def young_store(store: sa.Engine) -> sa.Engine:
    """A store whose vouchers and answers came after the planner last looked."""
    insert_rows(
        store,
        "INSERT INTO vouchers (id, campaign_id, round_id, channel_id, template_id, "
        "person_id, claim_seq, face_fen, state, valid_from, valid_until, issued_at, "
        "updated_at, version, claim_app_id, claim_key, claim_hash) "
        "SELECT 'v' || g, 'c1', 'r1', 'alipay', 't1', 'p' || g, 1, 9000, 'issued', "
        "now(), now(), now(), now(), 1, 'alipay', 'k' || g, 'h' "
        f"FROM generate_series(1, {YOUNG_ROWS}) AS g",
        "INSERT INTO idempotency_keys (app_id, key, request_hash, status_code, "
        "response_json, created_at) "
        "SELECT 'alipay', 'k' || g, 'h', 201, repeat('x', 400), now() "  # an answer's size
        f"FROM generate_series(1, {YOUNG_ROWS}) AS g",
    )
    return store


@pytest.mark.parametrize(
    ("lookup", "index", "batch"),
    [
        pytest.param(  # UnitOfWork.answered_keys: a batch's keys, answered before?
            "SELECT claim_key FROM vouchers "
            "WHERE claim_app_id = %(app)s AND claim_key = ANY(%(values)s)",
            "uq_vouchers_claim_key",
            1000,  # claim_batch_items_max
            id="claim keys",
        ),
        pytest.param(  # UnitOfWork.redemption_reads: a redemption batch's keys (0003)
            "SELECT key, response_json FROM idempotency_keys "
            "WHERE app_id = %(app)s AND key = ANY(%(values)s)",
            "pk_idempotency_keys",
            500,  # redeem_batch_size_max
            id="stored answers",
        ),
    ],
)
def test_a_batch_lookup_uses_its_index(
    young_store: sa.Engine, lookup: str, index: str, batch: int
) -> None:
    values = [f"new-{i}" for i in range(batch)]  # a batch of first tries: none found
    with young_store.connect() as connection:
        plan = [
            row[0]
            for row in connection.exec_driver_sql(
                f"EXPLAIN {lookup}", {"app": "alipay", "values": values}
            )
        ]
    assert index in "\n".join(plan), plan[0][:200]
    # The batch's values are what the index is searched by, not a filter on a range.
    assert not any("Filter" in line for line in plan), plan[:3]
    assert not any("Seq Scan" in line for line in plan), plan[:3]


def test_a_claim_batch_reads_its_people_from_the_covering_index(store: sa.Engine) -> None:
    """The claimants lookup never fetches a person's row (the encrypted ID number):
    their blind index comes from the index on the id (migrations 0004, 0008), once
    autovacuum has been by. Where they live is on the channel's account, whose row
    the lookup reads by its key anyway."""
    insert_rows(
        store,
        "INSERT INTO persons (id, id_number_bidx, id_number_enc, key_id, consent_version, "
        "consent_at, created_at) "
        "SELECT 'p' || g, 'bidx' || g, decode(repeat('ab', 120), 'hex'), "
        "'k1', '2024-01', now(), now() "
        f"FROM generate_series(1, {YOUNG_ROWS}) AS g",
        "INSERT INTO person_accounts (channel_id, channel_user_id, person_id, created_at, "
        "name_enc, phone_enc, phone_bidx, key_id, residence_region, consent_version, "
        "consent_at) "
        "SELECT 'wechat', 'u' || g, 'p' || g, now(), decode(repeat('ab', 60), 'hex'), "
        "decode(repeat('ab', 60), 'hex'), 'ph' || g, 'k1', '310104', '2024-01', now() "
        f"FROM generate_series(1, {YOUNG_ROWS}) AS g",
    )
    with store.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql("VACUUM ANALYZE persons, person_accounts")
        plan = [
            row[0]
            for row in connection.exec_driver_sql(
                # UnitOfWork.claimants
                "EXPLAIN SELECT a.channel_user_id, a.person_id, a.residence_region, "
                "b.id_number_bidx IS NOT NULL FROM person_accounts a "
                "JOIN persons p ON p.id = a.person_id "
                "LEFT JOIN blacklist b ON b.id_number_bidx = p.id_number_bidx "
                "WHERE a.channel_id = %(channel)s AND a.channel_user_id = ANY(%(users)s)",
                {"channel": "wechat", "users": [f"u{i * 7}" for i in range(1000)]},
            )
        ]
    persons_line = next(line for line in plan if " on persons " in line)
    assert "Index Only Scan using ix_persons_id_id_number_bidx" in persons_line, plan
