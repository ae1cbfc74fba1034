"""a person's name, phone and residence belong to the channel account that gave them

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 22:40:00

A person was one row holding the name, phone and residence region of
whichever channel registered the ID number last: a channel that knew an ID
number could replace them for every channel (a residence moved out of
Shanghai made the person ineligible there), and its answer (``created:
false``) told it the person was registered elsewhere. Those attributes
now live on the channel account that gave them (``person_accounts``);
``persons`` keeps what makes one human one person: the ID number's blind
index and ciphertext (de-duplication and limits per person are unchanged).

Upgrading copies each person's attributes to every account bound to them
(as every channel saw them until now). Downgrading puts back on each
person the attributes of their oldest account.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each moved column with its type; in this order on the account.
_MOVED: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("name_enc", sa.LargeBinary()),
    ("phone_enc", sa.LargeBinary()),
    ("phone_bidx", sa.String(length=64)),
    ("key_id", sa.String(length=32)),
    ("residence_region", sa.String(length=6)),
    ("consent_version", sa.String(length=32)),
    ("consent_at", sa.DateTime(timezone=True)),
)
# Moved from persons and dropped there; persons keeps its own key_id (the ID
# number's) and consent (given when the ID number was first registered).
_DROPPED = ("name_enc", "phone_enc", "phone_bidx", "residence_region")


def upgrade() -> None:
    with op.batch_alter_table("person_accounts", schema=None) as batch_op:
        for name, kind in _MOVED:
            batch_op.add_column(sa.Column(name, kind, nullable=True))
    for name, _ in _MOVED:
        op.execute(
            f"UPDATE person_accounts SET {name} = "  # noqa: S608  # fixed names
            f"(SELECT p.{name} FROM persons p WHERE p.id = person_accounts.person_id)"
        )
    with op.batch_alter_table("person_accounts", schema=None) as batch_op:
        for name, kind in _MOVED:
            batch_op.alter_column(name, existing_type=kind, nullable=False)
        batch_op.create_index(
            batch_op.f("ix_person_accounts_phone_bidx"), ["phone_bidx"], unique=False
        )
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.drop_index("ix_persons_id_residence_region_id_number_bidx")
        batch_op.drop_index(batch_op.f("ix_persons_phone_bidx"))
        for name in _DROPPED:
            batch_op.drop_column(name)
        # The claimants lookup still reads the blind index (for the blacklist) by id.
        batch_op.create_index("ix_persons_id_id_number_bidx", ["id", "id_number_bidx"])


def downgrade() -> None:
    moved = dict(_MOVED)
    with op.batch_alter_table("persons", schema=None) as batch_op:
        for name in _DROPPED:
            batch_op.add_column(sa.Column(name, moved[name], nullable=True))
    for name in _DROPPED:
        op.execute(
            f"UPDATE persons SET {name} = (SELECT a.{name} FROM person_accounts a "  # noqa: S608
            "WHERE a.person_id = persons.id "
            "ORDER BY a.created_at, a.channel_id, a.channel_user_id LIMIT 1)"
        )
    with op.batch_alter_table("persons", schema=None) as batch_op:
        for name in _DROPPED:
            batch_op.alter_column(name, existing_type=moved[name], nullable=False)
        batch_op.drop_index("ix_persons_id_id_number_bidx")
        batch_op.create_index(batch_op.f("ix_persons_phone_bidx"), ["phone_bidx"], unique=False)
        batch_op.create_index(
            "ix_persons_id_residence_region_id_number_bidx",
            ["id", "residence_region", "id_number_bidx"],
        )
    with op.batch_alter_table("person_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_person_accounts_phone_bidx"))
        for name, _ in reversed(_MOVED):
            batch_op.drop_column(name)
