"""Central's tables (SQLAlchemy Core). Its Alembic migrations (``migrations/``,
version table ``central_alembic_version``) are the only source of the live
schema; these definitions are what queries are written with and what the
migrations are checked against. Every table's name starts with ``central_``,
so central may share a PostgreSQL database with a province without a clash.

What the business relies on is a key here: one lock per ``lock_id``, one
row per qualification (the row a lock call locks), one registry entry per
serial number or IMEI, one event per ``event_id``.
"""

from __future__ import annotations

import sqlalchemy as sa

from lequan.adapters.sql.tables import UtcDateTime

__all__ = [
    "events",
    "facts",
    "keys",
    "locks",
    "metadata",
    "provinces",
    "qualifications",
    "revocations",
    "serials",
    "voucher_seqs",
]

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = sa.String(64)
Money = sa.BigInteger
# pseudonym (64) + ":" + category (40)
QualificationId = sa.String(105)

provinces = sa.Table(
    "central_provinces",
    metadata,
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("app_id", Id, nullable=False, unique=True),
    sa.Column("secret_key_id", sa.String(32), nullable=False),
    sa.Column("secret_enc", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# Central's own secrets, encrypted under its key file: the OPRF key's seed.
keys = sa.Table(
    "central_keys",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("value_enc", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

qualifications = sa.Table(
    "central_qualifications",
    metadata,
    sa.Column("id", QualificationId, primary_key=True),
    sa.Column("pseudonym", sa.String(64), nullable=False),
    sa.Column("category", sa.String(40), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

revocations = sa.Table(
    "central_revocations",
    metadata,
    sa.Column("qualification_id", QualificationId, primary_key=True),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("revoked_by", sa.String(64), nullable=False),
    sa.Column("revoked_at", UtcDateTime, nullable=False),
)

locks = sa.Table(
    "central_locks",
    metadata,
    sa.Column("lock_id", Id, primary_key=True),
    sa.Column("province", sa.String(32), nullable=False),
    sa.Column("qualification_id", QualificationId, nullable=False, index=True),
    sa.Column("pseudonym", sa.String(64), nullable=False),
    sa.Column("category", sa.String(40), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("items_max", sa.Integer, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=True, index=True),
    sa.Column("voucher_id", Id, nullable=True),
    sa.Column("redemption_id", Id, nullable=True),
    sa.Column("price_fen", Money, nullable=False),
    sa.Column("subsidy_fen", Money, nullable=False),
    sa.Column("reason", sa.String(200), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_central_locks_province_voucher_id", "province", "voucher_id"),
    sa.CheckConstraint(
        "state IN ('held', 'locked', 'consumed', 'released', 'expired', 'revoked')", name="state"
    ),
    sa.CheckConstraint("subsidy_fen >= 0 AND subsidy_fen <= price_fen", name="amounts"),
)

serials = sa.Table(
    "central_serials",
    metadata,
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column("value", sa.String(64), primary_key=True),
    sa.Column("lock_id", Id, nullable=False, index=True),
    sa.Column("province", sa.String(32), nullable=False),
    sa.Column("registered_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("kind IN ('serial', 'imei')", name="kind"),
)

facts = sa.Table(
    "central_facts",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("province", sa.String(32), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("category", sa.String(40), nullable=False),
    sa.Column("fact", sa.String(16), nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("amount_fen", Money, nullable=False),
    sa.Column("lock_id", Id, nullable=True),
    sa.Column("voucher_id", Id, nullable=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_central_facts_province_day", "province", "day"),
    sa.Index("ix_central_facts_province_voucher_id", "province", "voucher_id"),
)

events = sa.Table(
    "central_events",
    metadata,
    sa.Column("event_id", Id, primary_key=True),
    sa.Column("province", sa.String(32), nullable=False),
    sa.Column("topic", sa.String(64), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("voucher_id", Id, nullable=True),
    sa.Column("seq", sa.Integer, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64), nullable=True),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Index("ix_central_events_province_voucher_id", "province", "voucher_id"),
    sa.CheckConstraint("state IN ('applied', 'waiting', 'rejected')", name="state"),
)

voucher_seqs = sa.Table(
    "central_voucher_seqs",
    metadata,
    sa.Column("province", sa.String(32), primary_key=True),
    sa.Column("voucher_id", Id, primary_key=True),
    sa.Column("last_seq", sa.Integer, nullable=False),
)
