"""The store's tables (SQLAlchemy Core). Alembic migrations are the only source
of the live schema; these definitions are what the migrations are checked
against and what queries are written with.

Uniqueness that the business relies on is a constraint here, never a
check in Python: one account per person per channel, one voucher per claim
slot (``uq_vouchers_claim_slot``), one effect per idempotency key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

__all__ = ["metadata"]


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on every dialect (SQLite keeps no zone of its own)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert value.tzinfo is not None, "naive datetimes never reach the store"
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Money = sa.BigInteger
Id = sa.String(64)

operators = sa.Table(
    "operators",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # The analyst works the risk review queue and the blacklists (0012).
    sa.CheckConstraint("role IN ('maker', 'checker', 'viewer', 'analyst')", name="role"),
)

apps = sa.Table(
    "apps",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("secret_key_id", sa.String(32), nullable=False),
    sa.Column("secret_enc", sa.LargeBinary, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("kind IN ('channel', 'acquirer')", name="kind"),
)

campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("config_json", sa.Text, nullable=False),
    sa.Column("budget_fen", Money, nullable=False),
    sa.Column("committed_fen", Money, nullable=False, default=0),
    sa.Column("drafted_by", Id, nullable=False),
    sa.Column("approved_by", Id),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # The operators' redemption switch, apart from ``status`` (which stops claims) (0011).
    sa.Column("redemptions_paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.CheckConstraint("committed_fen >= 0 AND committed_fen <= budget_fen", name="within_budget"),
)

rounds = sa.Table(
    "rounds",
    metadata,
    sa.Column("campaign_id", Id, sa.ForeignKey("campaigns.id"), primary_key=True),
    sa.Column("round_id", sa.String(20), primary_key=True),
    sa.Column("release_at", UtcDateTime, nullable=False),
    sa.Column("ends_at", UtcDateTime, nullable=False),
)

stocks = sa.Table(
    "stocks",
    metadata,
    sa.Column("campaign_id", Id, primary_key=True),
    sa.Column("round_id", sa.String(20), primary_key=True),
    sa.Column("channel_id", sa.String(32), primary_key=True),
    sa.Column("template_id", sa.String(40), primary_key=True),
    sa.Column("initial", sa.Integer, nullable=False),
    # Vouchers this stock gave out, counted up by the claim's own transaction:
    # the store refuses the one past ``initial`` whatever the gate believed (0005).
    sa.Column("issued", sa.Integer, nullable=False, server_default="0"),
    sa.ForeignKeyConstraint(["campaign_id", "round_id"], ["rounds.campaign_id", "rounds.round_id"]),
    sa.CheckConstraint("issued >= 0 AND issued <= initial", name="within_stock"),
)

merchants = sa.Table(
    "merchants",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("mcc", sa.String(4), nullable=False),
    sa.Column("region_code", sa.String(6), nullable=False),
    sa.Column("modes", sa.String(32), nullable=False),
    sa.Column("acquirer_id", Id, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # An operator's suspension, whole or not at all; a merchant import never lifts it (0011).
    sa.Column("suspended_at", UtcDateTime),
    sa.Column("suspended_by", Id),
    sa.Column("suspension_reason", sa.String(200)),
    sa.CheckConstraint(
        "(suspended_at IS NULL AND suspended_by IS NULL AND suspension_reason IS NULL) OR "
        "(suspended_at IS NOT NULL AND suspended_by IS NOT NULL "
        "AND suspension_reason IS NOT NULL)",
        name="suspension_whole",
    ),
)

merchant_campaigns = sa.Table(
    "merchant_campaigns",
    metadata,
    sa.Column("merchant_id", Id, sa.ForeignKey("merchants.id"), primary_key=True),
    sa.Column("campaign_id", Id, sa.ForeignKey("campaigns.id"), primary_key=True),
)

persons = sa.Table(
    "persons",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("id_number_bidx", sa.String(64), nullable=False, unique=True),
    sa.Column("id_number_enc", sa.LargeBinary, nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),  # the ID number's
    # When the ID number was first registered, and under which consent text.
    sa.Column("consent_version", sa.String(32), nullable=False),
    sa.Column("consent_at", UtcDateTime, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # The national pseudonym central evaluated for the person (OPRF), at first use.
    sa.Column("pseudonym", sa.String(64)),
    # The claimants lookup reads the blind index (for the blacklist) by id from the
    # index, never the row (migrations 0004, 0008).
    sa.Index(None, "id", "id_number_bidx"),
)

person_accounts = sa.Table(
    "person_accounts",
    metadata,
    sa.Column("channel_id", sa.String(32), primary_key=True),
    sa.Column("channel_user_id", sa.String(64), primary_key=True),
    sa.Column("person_id", Id, sa.ForeignKey("persons.id"), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # What this channel registered the person with: its own to change, never another
    # channel's, and what eligibility in this channel is decided on (migration 0008).
    sa.Column("name_enc", sa.LargeBinary, nullable=False),
    sa.Column("phone_enc", sa.LargeBinary, nullable=False),
    sa.Column("phone_bidx", sa.String(64), nullable=False, index=True),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("residence_region", sa.String(6), nullable=False),
    sa.Column("consent_version", sa.String(32), nullable=False),
    sa.Column("consent_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("channel_id", "person_id"),
)

blacklist = sa.Table(
    "blacklist",
    metadata,
    sa.Column("id_number_bidx", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("created_by", Id, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

vouchers = sa.Table(
    "vouchers",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("campaign_id", Id, nullable=False),
    sa.Column("round_id", sa.String(20), nullable=False),
    sa.Column("channel_id", sa.String(32), nullable=False),
    sa.Column("template_id", sa.String(40), nullable=False),
    sa.Column("person_id", Id, nullable=False),
    sa.Column("claim_seq", sa.Integer, nullable=False),
    sa.Column("face_fen", Money, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("valid_from", UtcDateTime, nullable=False),
    sa.Column("valid_until", UtcDateTime, nullable=False),
    sa.Column("issued_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("version", sa.Integer, nullable=False, default=1),
    # Set while locked by a two-phase redemption; trade-in qualifications later.
    sa.Column("redemption_id", Id),
    sa.Column("qualification_id", Id),
    # The claim that issued it: the channel's Idempotency-Key and the request's
    # digest. A retry's answer is rebuilt from the row (one row per claim, not a
    # stored answer beside it). Empty for vouchers issued before 0002, whose
    # answers are in idempotency_keys.
    sa.Column("claim_app_id", Id),
    sa.Column("claim_key", sa.String(128)),
    sa.Column("claim_hash", sa.String(64)),
    # The ticket of the claim the fair start drew it for, which its answer carries (0013).
    sa.Column("draw_ticket", sa.String(32)),
    sa.UniqueConstraint(
        "campaign_id",
        "round_id",
        "channel_id",
        "person_id",
        "claim_seq",
        name="uq_vouchers_claim_slot",
    ),
    sa.CheckConstraint("face_fen > 0", name="face_positive"),
    sa.CheckConstraint(
        "state IN ('issued','locked','redeemed','refunded','expired','revoked','void')",
        name="state",
    ),
    sa.Index("ix_vouchers_person", "person_id", "campaign_id"),
    sa.Index("ix_vouchers_state_valid_until", "state", "valid_until"),
    # The key first: every key of one channel shares its app id (planners that scan
    # the app's whole range and filter the keys are what this avoids).
    sa.Index("uq_vouchers_claim_key", "claim_key", "claim_app_id", unique=True),
)

redemptions = sa.Table(
    "redemptions",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("voucher_id", Id, sa.ForeignKey("vouchers.id"), nullable=False, index=True),
    sa.Column("campaign_id", Id, nullable=False),
    sa.Column("acquirer_id", Id, nullable=False),
    sa.Column("merchant_id", Id, nullable=False),
    sa.Column("order_id", sa.String(64), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("order_amount_fen", Money, nullable=False),
    sa.Column("discount_fen", Money, nullable=False),
    sa.Column("pay_fen", Money, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("lock_expires_at", UtcDateTime),
    sa.Column("product_json", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("version", sa.Integer, nullable=False, default=1),
    sa.CheckConstraint(
        "discount_fen > 0 AND discount_fen <= order_amount_fen "
        "AND pay_fen = order_amount_fen - discount_fen",
        name="amounts",
    ),
    sa.CheckConstraint(
        "status IN ('locked','redeemed','voided','lock_expired','reversed','refunded')",
        name="status",
    ),
    sa.Index("ix_redemptions_status_lock", "status", "lock_expires_at"),
)

ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("campaign_id", Id, nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("voucher_count", sa.Integer, nullable=False),
    sa.Column("voucher_id", Id),
    sa.Column("redemption_id", Id),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

ledger_postings = sa.Table(
    "ledger_postings",
    metadata,
    sa.Column(
        "entry_id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        sa.ForeignKey("ledger_entries.id"),
        primary_key=True,
    ),
    sa.Column("account", sa.String(80), primary_key=True),
    sa.Column("campaign_id", Id, nullable=False, index=True),
    sa.Column("amount_fen", Money, nullable=False),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("app_id", Id, nullable=False),
    sa.Column("key", sa.String(128), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("response_json", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False, index=True),
    # Key first: a batch's lookup (app_id = ? AND key IN ...) searches by its keys,
    # never the app's whole range (migration 0003).
    sa.PrimaryKeyConstraint("key", "app_id"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("topic", sa.String(40), nullable=False),
    sa.Column("payload_json", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime),
    # The voucher the event concerns, and its number among that voucher's events
    # (1, 2, ...): central applies one voucher's events in this order (migration 0009).
    sa.Column("voucher_id", Id),
    sa.Column("seq", sa.Integer),
    sa.Column("last_error", sa.String(200)),
    sa.Index("ix_outbox_status_next", "status", "next_attempt_at", "id"),
    sa.Index("ux_outbox_voucher_seq", "voucher_id", "seq", unique=True),
)

# Each trade-in qualification lock asked of central, recorded before the asking so
# that a lock whose voucher never committed is found and released (migration 0009).
qualification_locks = sa.Table(
    "qualification_locks",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("person_id", Id, nullable=False),
    sa.Column("campaign_id", Id, nullable=False),
    sa.Column("template_id", sa.String(40), nullable=False),
    sa.Column("category", sa.String(40), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("voucher_id", Id, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("state IN ('held','issued','released','refused')", name="state"),
    sa.Index("ix_qualification_locks_person", "person_id", "category", "state"),
    sa.Index("ix_qualification_locks_state", "state", "created_at"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("actor", Id, nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("target", sa.String(100), nullable=False),
    sa.Column("details_json", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# What the store remembers of the key ring its data is written under (0007):
# "blind_index" and "key:<key id>" canaries, written once, never changed.
key_canaries = sa.Table(
    "key_canaries",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# Trade-in products subsidised in this province (0010): one per redemption. A serial
# number, IMEI or invoice number is held by one unreleased row at most (partial
# unique indexes), so two redemptions of one product at once cannot both commit.
_UNRELEASED = sa.text("released_at IS NULL")
redemption_products = sa.Table(
    "redemption_products",
    metadata,
    sa.Column("redemption_id", Id, primary_key=True),
    sa.Column("voucher_id", Id, nullable=False),
    sa.Column("campaign_id", Id, nullable=False),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("brand", sa.String(64)),
    sa.Column("model", sa.String(64)),
    sa.Column("sku", sa.String(64)),
    sa.Column("energy_grade", sa.SmallInteger),
    sa.Column("price_fen", Money, nullable=False),
    sa.Column("serial_number", sa.String(40)),
    sa.Column("imei", sa.String(15)),
    sa.Column("invoice_number", sa.String(40), nullable=False),
    sa.Column("old_appliance_handed_in", sa.Boolean),
    sa.Column("subsidy_fen", Money, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("released_at", UtcDateTime),
    sa.CheckConstraint("serial_number IS NOT NULL OR imei IS NOT NULL", name="identified"),
    sa.CheckConstraint(
        "price_fen > 0 AND subsidy_fen > 0 AND subsidy_fen <= price_fen", name="amounts"
    ),
    sa.CheckConstraint("energy_grade BETWEEN 1 AND 5", name="energy_grade"),
    sa.Index(
        "uq_redemption_products_serial_number",
        "serial_number",
        unique=True,
        sqlite_where=_UNRELEASED,
        postgresql_where=_UNRELEASED,
    ),
    sa.Index(
        "uq_redemption_products_imei",
        "imei",
        unique=True,
        sqlite_where=_UNRELEASED,
        postgresql_where=_UNRELEASED,
    ),
    sa.Index(
        "uq_redemption_products_invoice_number",
        "invoice_number",
        unique=True,
        sqlite_where=_UNRELEASED,
        postgresql_where=_UNRELEASED,
    ),
)

# Risk control (0012): each version of the rules file, at most one of them active; the
# review queue; the blacklists of devices and of phones (by the phone's blind index).
_ACTIVE = sa.text("status = 'active'")
risk_rules = sa.Table(
    "risk_rules",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("drafted_by", Id, nullable=False),
    sa.Column("drafted_at", UtcDateTime, nullable=False),
    sa.Column("approved_by", Id),
    sa.Column("approved_at", UtcDateTime),
    sa.CheckConstraint("status IN ('draft', 'active', 'retired')", name="status"),
    sa.CheckConstraint(
        "(status = 'draft') = (approved_by IS NULL AND approved_at IS NULL)", name="approval"
    ),
    sa.Index(
        "ux_risk_rules_active",
        "status",
        unique=True,
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    ),
)

reviews = sa.Table(
    "reviews",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("campaign_id", Id),
    sa.Column("rules_version", sa.Integer, nullable=False),
    sa.Column("subject_json", sa.Text, nullable=False),
    sa.Column("reasons_json", sa.Text, nullable=False),
    sa.Column("decided_by", Id),
    sa.Column("decided_at", UtcDateTime),
    sa.Column("decision_reason", sa.String(200)),
    sa.Column("outcome", sa.String(64)),
    sa.Column("outcome_json", sa.Text),
    sa.CheckConstraint("kind IN ('claim', 'redemption')", name="kind"),
    sa.CheckConstraint("status IN ('pending', 'approved', 'rejected')", name="status"),
    sa.CheckConstraint(
        "(status = 'pending') = "
        "(decided_by IS NULL AND decided_at IS NULL AND decision_reason IS NULL)",
        name="decision_whole",
    ),
    # The queue is read by status and kind, oldest first.
    sa.Index("ix_reviews_status_kind_id", "status", "kind", "id"),
)

risk_blacklist = sa.Table(
    "risk_blacklist",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("value", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("created_by", Id, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("kind IN ('device', 'phone')", name="kind"),
)

# Redemption-time risk (0014): each completed redemption as the rules remember it (the
# ring's graph and the merchants' quick refunds are read from here), the payables a rule
# held, and the SKU baseline prices operators import.
risk_redemptions = sa.Table(
    "risk_redemptions",
    metadata,
    sa.Column("redemption_id", Id, primary_key=True),
    sa.Column("campaign_id", Id, nullable=False),
    sa.Column("merchant_id", Id, nullable=False),
    sa.Column("person_id", Id, nullable=False),
    sa.Column("voucher_id", Id, nullable=False),
    sa.Column("payer_id", sa.String(64)),
    sa.Column("terminal_id", sa.String(64)),
    sa.Column("order_amount_fen", Money, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # Null while the redemption is locked (authorized, not yet confirmed).
    sa.Column("redeemed_at", UtcDateTime),
    sa.Column("refunded_at", UtcDateTime),
    # Seconds from the redemption to its refund (the quick refunds are counted by it).
    sa.Column("refund_after_s", sa.Integer),
    # The review item that flagged it first: the ring's sweep flags a redemption once.
    sa.Column("review_id", Id),
    sa.CheckConstraint("(refunded_at IS NULL) = (refund_after_s IS NULL)", name="refund_whole"),
    # The rules read a merchant's and a payer's recent redemptions, and every recent one
    # (the ring).
    sa.Index("ix_risk_redemptions_merchant_id_redeemed_at", "merchant_id", "redeemed_at"),
    sa.Index("ix_risk_redemptions_payer_id_redeemed_at", "payer_id", "redeemed_at"),
    sa.Index("ix_risk_redemptions_redeemed_at", "redeemed_at"),
)

payable_holds = sa.Table(
    "payable_holds",
    metadata,
    sa.Column("redemption_id", Id, primary_key=True),
    sa.Column("campaign_id", Id, nullable=False),
    sa.Column("payable", sa.String(80), nullable=False),
    sa.Column("amount_fen", Money, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("review_id", Id),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("amount_fen > 0", name="amount"),
    sa.CheckConstraint("status IN ('held', 'released', 'clawed_back')", name="status"),
    # What a campaign holds is summed by the invariants' check.
    sa.Index("ix_payable_holds_campaign_id_status", "campaign_id", "status"),
)

sku_prices = sa.Table(
    "sku_prices",
    metadata,
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("baseline_price_fen", Money, nullable=False),
    sa.Column("updated_by", Id, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("baseline_price_fen > 0", name="price"),
)
# The fair start of each round with a start window (0013): the seed, drawn at the
# campaign's approval, sealed with the key ring until the draw is published, and its
# commitment (domain/fair_start.py), public from the approval on. Once the draw is
# served, the seed is revealed (``seed_hex``) with every entry and its rank.
round_draws = sa.Table(
    "round_draws",
    metadata,
    sa.Column("campaign_id", Id, primary_key=True),
    sa.Column("round_id", sa.String(20), primary_key=True),
    sa.Column("window_s", sa.Integer, nullable=False),
    sa.Column("commitment", sa.String(64), nullable=False),
    sa.Column("seed_key_id", sa.String(32), nullable=False),
    sa.Column("seed_sealed", sa.LargeBinary, nullable=False),
    sa.Column("committed_at", UtcDateTime, nullable=False),
    sa.Column("seed_hex", sa.String(64)),
    sa.Column("published_at", UtcDateTime),
    sa.Column("entries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("won", sa.Integer, nullable=False, server_default="0"),
    sa.ForeignKeyConstraint(["campaign_id", "round_id"], ["rounds.campaign_id", "rounds.round_id"]),
    sa.CheckConstraint("window_s > 0", name="window_positive"),
    sa.CheckConstraint("(seed_hex IS NULL) = (published_at IS NULL)", name="revealed_whole"),
)

# A published draw's entries: a ticket names no person; its rank is its place in the
# order the seed gives (1 first) and its outcome what the draw answered it.
draw_entries = sa.Table(
    "draw_entries",
    metadata,
    sa.Column("campaign_id", Id, primary_key=True),
    sa.Column("round_id", sa.String(20), primary_key=True),
    sa.Column("rank", sa.Integer, primary_key=True),
    sa.Column("ticket", sa.String(32), nullable=False),
    sa.Column("channel_id", sa.String(32), nullable=False),
    sa.Column("template_id", sa.String(40), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.ForeignKeyConstraint(
        ["campaign_id", "round_id"], ["round_draws.campaign_id", "round_draws.round_id"]
    ),
)
