"""The vault: vaults, their credentials (secret fields sealed), and the sealing key of session secrets.

Session secrets written before this revision are plaintext with key_id null; the server seals them
when it starts (core/vaults.py `VaultStore.startup`), since a migration has no access to the keys.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONType = sa.JSON()


def upgrade() -> None:
    with op.batch_alter_table("session_secrets") as batch:
        batch.add_column(sa.Column("key_id", sa.String(32)))
    op.create_table(
        "vaults",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("metadata", JSONType, nullable=False),
        sa.Column("tenant_default", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("archived_at", sa.BigInteger),
    )
    op.create_index("ix_vaults_tenant_created", "vaults", ["tenant_id", "created_at", "id"])
    op.create_table(
        "vault_credentials",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("vault_id", sa.String(40), sa.ForeignKey("vaults.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("auth", JSONType, nullable=False),
        sa.Column("secret", sa.Text),
        sa.Column("key_id", sa.String(32)),
        sa.Column("display_name", sa.String(256)),
        sa.Column("metadata", JSONType, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("archived_at", sa.BigInteger),
    )
    op.create_index("ix_vault_credentials_vault_created", "vault_credentials", ["vault_id", "created_at", "id"])
    op.create_index(
        "ux_vault_credentials_active_identity",
        "vault_credentials",
        ["vault_id", "identity"],
        unique=True,
        sqlite_where=sa.text("archived_at IS NULL"),
        postgresql_where=sa.text("archived_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ux_vault_credentials_active_identity", table_name="vault_credentials")
    op.drop_index("ix_vault_credentials_vault_created", table_name="vault_credentials")
    op.drop_table("vault_credentials")
    op.drop_index("ix_vaults_tenant_created", table_name="vaults")
    op.drop_table("vaults")
    with op.batch_alter_table("session_secrets") as batch:
        batch.drop_column("key_id")
