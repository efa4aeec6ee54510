"""Workspace adapters: inbound dedup, inbox, installations, bindings with their reply outbox.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSONType = sa.JSON()


def upgrade() -> None:
    op.create_table(
        "adapter_deliveries",
        sa.Column("platform", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_adapter_deliveries_expires", "adapter_deliveries", ["expires_at"])
    op.create_table(
        "adapter_inbox",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("binding_key", sa.String(255), nullable=False),
        sa.Column("payload", JSONType, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("claimed_until", sa.BigInteger),
    )
    op.create_index("ix_adapter_inbox_platform_created", "adapter_inbox", ["platform", "created_at"])
    op.create_table(
        "adapter_installations",
        sa.Column("platform", sa.String(32), primary_key=True),
        sa.Column("workspace", sa.String(255), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("agent_id", sa.String(40), nullable=False),
        sa.Column("environment_id", sa.String(40), nullable=False),
        sa.Column("config", JSONType, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "adapter_bindings",
        sa.Column("platform", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("session_id", sa.String(40), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("address", JSONType, nullable=False),
        sa.Column("delivered_seq", sa.BigInteger, nullable=False),
        sa.Column("outbox", JSONType, nullable=False),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_expires_at", sa.BigInteger),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_adapter_bindings_session", "adapter_bindings", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_adapter_bindings_session", table_name="adapter_bindings")
    op.drop_table("adapter_bindings")
    op.drop_table("adapter_installations")
    op.drop_index("ix_adapter_inbox_platform_created", table_name="adapter_inbox")
    op.drop_table("adapter_inbox")
    op.drop_index("ix_adapter_deliveries_expires", table_name="adapter_deliveries")
    op.drop_table("adapter_deliveries")
