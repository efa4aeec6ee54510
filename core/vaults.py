"""Vaults and their credentials; the sealed secrets of sessions; the model keys sessions run with.

Every secret is sealed (vault/keyring.py) before it reaches the database, bound to its tenant and
record: a credential's secret fields as one envelope, each repository token of a session as one.
Responses carry only a credential's non-secret fields. Archiving a credential (or its vault)
purges its secret; the record stays.

Bring-your-own-key: a session's model key comes from the first provider credential serving its
model in the session's `vault_ids` (in order), else in the tenant's default vaults (metadata
`oma.tenant_default: "true"`, oldest first), else from the server's settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from core.agents import apply_metadata_patch
from core.credentials import (
    MODEL_PROVIDER_KINDS,
    CredentialCreate,
    CredentialKind,
    CredentialUpdate,
    VaultCreate,
    VaultUpdate,
    change_for_update,
    environment_identity,
    mcp_identity,
    split_create,
)
from core.db import Database, session_secrets, sessions, vault_credentials, vaults
from core.errors import Conflict, InvalidRequest, NotFound
from core.ids import new_id, now_us, us_to_rfc3339
from core.pagination import Page, keyset_page
from vault.errors import VaultKeyMissing, VaultLocked
from vault.keyring import Binding, Sealed, SecretBox

TENANT_DEFAULT = "oma.tenant_default"
MAX_SESSION_VAULTS = 20
CREDENTIAL = "vault_credential"
SESSION_SECRET = "session_secret"


def render_vault(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "type": "vault",
        "display_name": row.display_name,
        "metadata": row.metadata,
        "created_at": us_to_rfc3339(row.created_at),
        "updated_at": us_to_rfc3339(row.updated_at),
        "archived_at": us_to_rfc3339(row.archived_at),
    }


def render_credential(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "type": "vault_credential",
        "vault_id": row.vault_id,
        "display_name": row.display_name,
        "metadata": row.metadata,
        "auth": row.auth,
        "created_at": us_to_rfc3339(row.created_at),
        "updated_at": us_to_rfc3339(row.updated_at),
        "archived_at": us_to_rfc3339(row.archived_at),
    }


def credential_binding(tenant_id: str, credential_id: str) -> Binding:
    return Binding(CREDENTIAL, tenant_id, credential_id)


def session_secret_binding(tenant_id: str, session_id: str, resource_id: str) -> Binding:
    return Binding(SESSION_SECRET, tenant_id, f"{session_id}/{resource_id}")


def _is_default(metadata: dict[str, str]) -> bool:
    return metadata.get(TENANT_DEFAULT, "").lower() == "true"


@dataclass(frozen=True, slots=True)
class ModelKey:
    """A provider key from a vault, and where it came from (usage is attributed to it)."""

    api_key: str = field(repr=False)
    base_url: str | None
    credential_id: str
    vault_id: str
    # For `openai_compatible` credentials: the provider name models are prefixed with.
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class KeyUsage:
    key_id: str | None
    secrets: int


@dataclass(frozen=True, slots=True)
class McpCredential:
    token: str
    vault_id: str
    credential_id: str
    oauth: bool
    expires_at: str | None  # RFC 3339, mcp_oauth only
    refreshable: bool


class VaultStore:
    def __init__(self, db: Database, box: SecretBox | None) -> None:
        self.db = db
        self.box = box

    # --- sealing -------------------------------------------------------------------------------

    def _seal(self, value: bytes, binding: Binding) -> Sealed:
        if self.box is None:
            raise VaultLocked(binding.describe())
        return self.box.seal(value, binding)

    def _open(self, envelope: str, binding: Binding) -> bytes:
        if self.box is None:
            raise VaultLocked(binding.describe())
        return self.box.open(envelope, binding)

    def _open_fields(self, envelope: str, binding: Binding) -> dict[str, str]:
        fields: dict[str, str] = orjson.loads(self._open(envelope, binding))
        return fields

    def seal_session_secret(self, tenant_id: str, session_id: str, resource_id: str, secret: str) -> Sealed:
        return self._seal(secret.encode(), session_secret_binding(tenant_id, session_id, resource_id))

    async def session_secret(self, tenant_id: str, session_id: str, resource_id: str) -> str | None:
        """A session's repository token, opened (for the code that clones the repository)."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(session_secrets.c.secret, session_secrets.c.key_id)
                    .join(sessions, sessions.c.id == session_secrets.c.session_id)
                    .where(
                        sessions.c.tenant_id == tenant_id,
                        session_secrets.c.session_id == session_id,
                        session_secrets.c.resource_id == resource_id,
                    )
                )
            ).first()
        if row is None:
            return None
        if row.key_id is None:  # written before the vault; sealed at the next start-up
            return str(row.secret)
        return self._open(row.secret, session_secret_binding(tenant_id, session_id, resource_id)).decode()

    # --- vaults --------------------------------------------------------------------------------

    async def _vault(self, conn: AsyncConnection, tenant_id: str, vault_id: str) -> Any:
        row = (
            await conn.execute(select(vaults).where(vaults.c.id == vault_id, vaults.c.tenant_id == tenant_id))
        ).first()
        if row is None:
            raise NotFound(f"vault {vault_id} not found", error_code="vault_not_found")
        return row

    async def create(self, tenant_id: str, req: VaultCreate) -> dict[str, Any]:
        vault_id, now = new_id("vlt"), now_us()
        async with self.db.write() as conn:
            await conn.execute(
                vaults.insert().values(
                    id=vault_id,
                    tenant_id=tenant_id,
                    display_name=req.display_name,
                    metadata=dict(req.metadata),
                    tenant_default=_is_default(req.metadata),
                    created_at=now,
                    updated_at=now,
                )
            )
            return render_vault(await self._vault(conn, tenant_id, vault_id))

    async def get(self, tenant_id: str, vault_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            return render_vault(await self._vault(conn, tenant_id, vault_id))

    async def update(self, tenant_id: str, vault_id: str, req: VaultUpdate) -> dict[str, Any]:
        fields = req.model_fields_set
        async with self.db.write() as conn:
            row = await self._vault(conn, tenant_id, vault_id)
            if row.archived_at is not None:
                raise InvalidRequest(
                    f"vault {vault_id} is archived, so it cannot be updated", error_code="vault_archived"
                )
            values: dict[str, Any] = {}
            if "display_name" in fields and req.display_name is not None:
                values["display_name"] = req.display_name
            if "metadata" in fields:
                values["metadata"] = apply_metadata_patch(row.metadata, req.metadata)
                values["tenant_default"] = _is_default(values["metadata"])
            if values:
                values["updated_at"] = now_us()
                await conn.execute(update(vaults).where(vaults.c.id == vault_id).values(**values))
            return render_vault(await self._vault(conn, tenant_id, vault_id))

    async def archive(self, tenant_id: str, vault_id: str) -> dict[str, Any]:
        """Archive the vault and every credential in it; their secrets are purged."""
        async with self.db.write() as conn:
            row = await self._vault(conn, tenant_id, vault_id)
            if row.archived_at is None:
                now = now_us()
                await conn.execute(
                    update(vaults).where(vaults.c.id == vault_id).values(archived_at=now, updated_at=now)
                )
                await conn.execute(
                    update(vault_credentials)
                    .where(vault_credentials.c.vault_id == vault_id, vault_credentials.c.archived_at.is_(None))
                    .values(archived_at=now, updated_at=now, secret=None, key_id=None)
                )
            return render_vault(await self._vault(conn, tenant_id, vault_id))

    async def delete(self, tenant_id: str, vault_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            await self._vault(conn, tenant_id, vault_id)
            await conn.execute(delete(vault_credentials).where(vault_credentials.c.vault_id == vault_id))
            await conn.execute(delete(vaults).where(vaults.c.id == vault_id))
        return {"id": vault_id, "type": "vault_deleted"}

    async def list_page(
        self, tenant_id: str, *, limit: int, page: str | None, include_archived: bool
    ) -> tuple[list[dict[str, Any]], Page]:
        query = select(vaults).where(vaults.c.tenant_id == tenant_id)
        if not include_archived:
            query = query.where(vaults.c.archived_at.is_(None))
        async with self.db.read() as conn:
            result = await keyset_page(
                conn, query, [vaults.c.created_at, vaults.c.id], order="desc", limit=limit, page=page
            )
        return [render_vault(r) for r in result.rows], result

    async def check_session_vaults(self, conn: AsyncConnection, tenant_id: str, vault_ids: Sequence[str]) -> None:
        """A new session's `vault_ids` must name distinct, unarchived vaults of its tenant."""
        await conn.run_sync(lambda c: check_session_vaults_sync(c, tenant_id, vault_ids))

    # --- credentials ---------------------------------------------------------------------------

    async def _credential(self, conn: AsyncConnection, tenant_id: str, vault_id: str, credential_id: str) -> Any:
        await self._vault(conn, tenant_id, vault_id)
        row = (
            await conn.execute(
                select(vault_credentials).where(
                    vault_credentials.c.id == credential_id,
                    vault_credentials.c.vault_id == vault_id,
                    vault_credentials.c.tenant_id == tenant_id,
                )
            )
        ).first()
        if row is None:
            raise NotFound(
                f"credential {credential_id} not found in vault {vault_id}", error_code="credential_not_found"
            )
        return row

    async def create_credential(self, tenant_id: str, vault_id: str, req: CredentialCreate) -> dict[str, Any]:
        split = split_create(req.auth)
        credential_id, now = new_id("vcrd"), now_us()
        sealed = self._seal(orjson.dumps(split.secret), credential_binding(tenant_id, credential_id))
        try:
            async with self.db.write() as conn:
                vault = await self._vault(conn, tenant_id, vault_id)
                if vault.archived_at is not None:
                    raise InvalidRequest(
                        f"vault {vault_id} is archived; it takes no new credentials", error_code="vault_archived"
                    )
                await self._check_identity_free(conn, vault_id, split.identity, split.label)
                await conn.execute(
                    vault_credentials.insert().values(
                        id=credential_id,
                        tenant_id=tenant_id,
                        vault_id=vault_id,
                        kind=split.kind.value,
                        identity=split.identity,
                        auth=split.public,
                        secret=sealed.envelope,
                        key_id=sealed.key_id,
                        display_name=req.display_name,
                        metadata=dict(req.metadata),
                        created_at=now,
                        updated_at=now,
                    )
                )
                return render_credential(await self._credential(conn, tenant_id, vault_id, credential_id))
        except IntegrityError:  # a concurrent create took the identity first
            raise self._taken(vault_id, split.label, None) from None

    async def _check_identity_free(self, conn: AsyncConnection, vault_id: str, identity: str, label: str) -> None:
        taken = (
            await conn.execute(
                select(vault_credentials.c.id).where(
                    vault_credentials.c.vault_id == vault_id,
                    vault_credentials.c.identity == identity,
                    vault_credentials.c.archived_at.is_(None),
                )
            )
        ).first()
        if taken is not None:
            raise self._taken(vault_id, label, taken.id)

    @staticmethod
    def _taken(vault_id: str, label: str, other: str | None) -> Conflict:
        which = f" ({other})" if other else ""
        return Conflict(
            f"vault {vault_id} already has an active credential for {label}{which}; update or archive that one instead",
            error_code="credential_conflict",
        )

    async def get_credential(self, tenant_id: str, vault_id: str, credential_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            return render_credential(await self._credential(conn, tenant_id, vault_id, credential_id))

    async def update_credential(
        self, tenant_id: str, vault_id: str, credential_id: str, req: CredentialUpdate
    ) -> dict[str, Any]:
        fields = req.model_fields_set
        binding = credential_binding(tenant_id, credential_id)
        async with self.db.write() as conn:
            row = await self._credential(conn, tenant_id, vault_id, credential_id)
            if row.archived_at is not None:
                raise InvalidRequest(
                    f"credential {credential_id} is archived, so it cannot be updated",
                    error_code="credential_archived",
                )
            values: dict[str, Any] = {}
            if "auth" in fields and req.auth is not None:
                change = change_for_update(CredentialKind(row.kind), row.auth, req.auth)
                values["auth"] = change.public
                if change.secret is not None:
                    secret = (
                        change.secret if change.whole else {**self._open_fields(row.secret, binding), **change.secret}
                    )
                    sealed = self._seal(orjson.dumps(secret), binding)
                    values["secret"], values["key_id"] = sealed.envelope, sealed.key_id
            if "display_name" in fields and req.display_name is not None:
                values["display_name"] = req.display_name
            if "metadata" in fields:
                values["metadata"] = apply_metadata_patch(row.metadata, req.metadata)
            if values:
                values["updated_at"] = now_us()
                await conn.execute(
                    update(vault_credentials).where(vault_credentials.c.id == credential_id).values(**values)
                )
            return render_credential(await self._credential(conn, tenant_id, vault_id, credential_id))

    async def archive_credential(self, tenant_id: str, vault_id: str, credential_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            row = await self._credential(conn, tenant_id, vault_id, credential_id)
            if row.archived_at is None:
                now = now_us()
                await conn.execute(
                    update(vault_credentials)
                    .where(vault_credentials.c.id == credential_id)
                    .values(archived_at=now, updated_at=now, secret=None, key_id=None)
                )
            return render_credential(await self._credential(conn, tenant_id, vault_id, credential_id))

    async def delete_credential(self, tenant_id: str, vault_id: str, credential_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            await self._credential(conn, tenant_id, vault_id, credential_id)
            await conn.execute(delete(vault_credentials).where(vault_credentials.c.id == credential_id))
        return {"id": credential_id, "type": "vault_credential_deleted"}

    async def list_credentials(
        self, tenant_id: str, vault_id: str, *, limit: int, page: str | None, include_archived: bool
    ) -> tuple[list[dict[str, Any]], Page]:
        query = select(vault_credentials).where(
            vault_credentials.c.vault_id == vault_id, vault_credentials.c.tenant_id == tenant_id
        )
        if not include_archived:
            query = query.where(vault_credentials.c.archived_at.is_(None))
        async with self.db.read() as conn:
            await self._vault(conn, tenant_id, vault_id)
            result = await keyset_page(
                conn,
                query,
                [vault_credentials.c.created_at, vault_credentials.c.id],
                order="desc",
                limit=limit,
                page=page,
            )
        return [render_credential(r) for r in result.rows], result

    async def validate_mcp_oauth(self, tenant_id: str, vault_id: str, credential_id: str) -> dict[str, Any]:
        """Probe the credential's MCP server with it (refreshing it on a 401): core/mcp_oauth.py."""
        async with self.db.read() as conn:
            row = await self._credential(conn, tenant_id, vault_id, credential_id)
        if row.kind != CredentialKind.MCP_OAUTH:
            raise InvalidRequest(
                f"credential {credential_id} is {row.kind!r}; only mcp_oauth credentials can be validated",
                error_code="credential_type_mismatch",
            )
        if row.archived_at is not None:
            raise InvalidRequest(
                f"credential {credential_id} is archived, so it cannot be validated", error_code="credential_archived"
            )
        from core.mcp_oauth import validate

        return await validate(self, tenant_id, vault_id, credential_id)

    # --- bring your own key --------------------------------------------------------------------

    async def model_key(
        self, tenant_id: str, vault_ids: Sequence[str], model_id: str, family: str | None
    ) -> ModelKey | None:
        """The key for `model_id` (whose built-in provider is `family`, if it has one)."""
        prefix, slash, _ = model_id.partition("/")

        def serves(kind: str, auth: dict[str, Any]) -> bool:
            if kind == CredentialKind.OPENAI_COMPATIBLE:
                return bool(slash) and prefix == auth.get("provider")
            return (kind, family) in (
                (CredentialKind.ANTHROPIC_API_KEY, "anthropic"),
                (CredentialKind.OPENAI_API_KEY, "openai"),
            )

        found = await self._session_credential(
            tenant_id, vault_ids, MODEL_PROVIDER_KINDS, serves=lambda row: serves(row.kind, row.auth)
        )
        if found is None:
            return None
        row, secret = found
        return ModelKey(
            api_key=secret["api_key"],
            base_url=row.auth.get("base_url"),
            credential_id=row.id,
            vault_id=row.vault_id,
            provider=row.auth.get("provider"),
        )

    async def environment_secret(self, tenant_id: str, vault_ids: Sequence[str], name: str) -> str | None:
        """The value of the `environment_variable` credential named `name` (e.g. E2B_API_KEY for a
        hosted sandbox runtime): from the session's vaults in order, else the tenant's default vaults."""
        found = await self._session_credential(
            tenant_id, vault_ids, [CredentialKind.ENVIRONMENT_VARIABLE], environment_identity(name)
        )
        return found[1].get("secret_value") if found else None

    async def mcp_credential(self, tenant_id: str, vault_ids: Sequence[str], url: str) -> McpCredential | None:
        """The credential for the MCP server at `url` (`static_bearer` or `mcp_oauth`): session
        vaults first, then the tenant's default vaults."""
        kinds = [CredentialKind.STATIC_BEARER, CredentialKind.MCP_OAUTH]
        found = await self._session_credential(tenant_id, vault_ids, kinds, mcp_identity(url))
        if found is None:
            return None
        row, secret = found
        token = secret.get("token") or secret.get("access_token")
        if not token:
            return None
        return McpCredential(
            token=token,
            vault_id=row.vault_id,
            credential_id=row.id,
            oauth=row.kind == CredentialKind.MCP_OAUTH,
            expires_at=row.auth.get("expires_at"),
            refreshable=bool(row.auth.get("refresh")) and bool(secret.get("refresh_token")),
        )

    async def credential_fields(
        self, tenant_id: str, vault_id: str, credential_id: str
    ) -> tuple[CredentialKind, dict[str, Any], dict[str, str]]:
        """A credential's kind, shown fields and opened secret fields (for the platform's own use)."""
        async with self.db.read() as conn:
            row = await self._credential(conn, tenant_id, vault_id, credential_id)
        secret = self._open_fields(row.secret, credential_binding(tenant_id, row.id))
        return CredentialKind(row.kind), dict(row.auth), secret

    async def _session_credential(
        self,
        tenant_id: str,
        vault_ids: Sequence[str],
        kinds: Iterable[CredentialKind],
        identity: str | None = None,
        *,
        serves: Callable[[Any], bool] = lambda row: True,
    ) -> tuple[Any, dict[str, str]] | None:
        """The first active credential of one of `kinds` (for `identity`, if given; that `serves`)
        in the session's vaults, in their order, else in the tenant's default vaults (oldest
        first); with its opened secret fields."""
        usable = (
            select(
                vault_credentials.c.id,
                vault_credentials.c.vault_id,
                vault_credentials.c.kind,
                vault_credentials.c.auth,
                vault_credentials.c.secret,
            )
            .join(vaults, vaults.c.id == vault_credentials.c.vault_id)
            .where(
                vault_credentials.c.tenant_id == tenant_id,
                vault_credentials.c.archived_at.is_(None),
                vault_credentials.c.kind.in_([k.value for k in kinds]),
                vaults.c.archived_at.is_(None),
            )
        )
        if identity is not None:
            usable = usable.where(vault_credentials.c.identity == identity)
        async with self.db.read() as conn:
            found = None
            if vault_ids:
                rows = await conn.execute(usable.where(vault_credentials.c.vault_id.in_(list(vault_ids))))
                order = {v: i for i, v in enumerate(vault_ids)}
                found = min((r for r in rows if serves(r)), key=lambda r: order[r.vault_id], default=None)
            if found is None:
                rows = await conn.execute(
                    usable.where(vaults.c.tenant_default.is_(True)).order_by(
                        vaults.c.created_at, vault_credentials.c.created_at
                    )
                )
                found = next((r for r in rows if serves(r)), None)
        if found is None:
            return None
        return found, self._open_fields(found.secret, credential_binding(tenant_id, found.id))

    async def workspace_credential(self, tenant_id: str, vault_id: str, kind: CredentialKind) -> dict[str, Any] | None:
        """The active workspace credential of `kind` in a vault: its shown fields and its secrets
        (for the workspace adapters)."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(vault_credentials).where(
                        vault_credentials.c.tenant_id == tenant_id,
                        vault_credentials.c.vault_id == vault_id,
                        vault_credentials.c.kind == kind.value,
                        vault_credentials.c.archived_at.is_(None),
                    )
                )
            ).first()
        if row is None:
            return None
        return {**row.auth, **self._open_fields(row.secret, credential_binding(tenant_id, row.id))}

    # --- keys: start-up check, rotation --------------------------------------------------------

    async def key_usage(self) -> list[KeyUsage]:
        """How many stored secrets each vault key sealed (None: plaintext from before the vault)."""
        counts: dict[str | None, int] = {}
        async with self.db.read() as conn:
            for table, live in (
                (vault_credentials, vault_credentials.c.secret.is_not(None)),
                (session_secrets, session_secrets.c.secret.is_not(None)),
            ):
                rows = await conn.execute(select(table.c.key_id, func.count()).where(live).group_by(table.c.key_id))
                for key_id, count in rows:
                    counts[key_id] = counts.get(key_id, 0) + int(count)
        return [KeyUsage(k, n) for k, n in sorted(counts.items(), key=lambda kv: kv[0] or "")]

    async def startup(self) -> None:
        """Seal session secrets stored before the vault existed, then fail fast if any stored
        secret was sealed with a key this process lacks (a wrong master key)."""
        if self.box is None:
            return
        await self.reencrypt(only_plaintext=True)
        ids = set(self.box.key_ids())
        for usage in await self.key_usage():
            if usage.key_id is not None and usage.key_id not in ids:
                raise VaultKeyMissing(
                    f"{usage.secrets} stored secret(s)",
                    usage.key_id,
                    sorted(ids),
                    self.box.source.description,
                )

    async def reencrypt(self, *, only_plaintext: bool = False, batch: int = 200) -> int:
        """Seal every stored secret with the active key (or, with `only_plaintext`, only the ones
        never sealed). Rows changed meanwhile are picked up by the next pass. Returns the count."""
        if self.box is None:
            raise VaultLocked("the stored secrets")
        done = 0
        while True:
            active = self.box.active_key_id
            changed = await self._reencrypt_credentials(active, only_plaintext, batch)
            changed += await self._reencrypt_session_secrets(active, only_plaintext, batch)
            done += changed
            if changed == 0:
                return done

    async def _reencrypt_credentials(self, active: str, only_plaintext: bool, batch: int) -> int:
        if only_plaintext:
            return 0  # credentials were sealed from the start
        c = vault_credentials.c
        async with self.db.read() as conn:
            rows = list(
                await conn.execute(
                    select(c.id, c.tenant_id, c.secret)
                    .where(c.secret.is_not(None), c.key_id != active)
                    .order_by(c.id)
                    .limit(batch)
                )
            )
        if not rows:
            return 0
        async with self.db.write() as conn:
            for row in rows:
                binding = credential_binding(row.tenant_id, row.id)
                sealed = self._seal(self._open(row.secret, binding), binding)
                await conn.execute(
                    update(vault_credentials)
                    .where(c.id == row.id, c.secret == row.secret)
                    .values(secret=sealed.envelope, key_id=sealed.key_id)
                )
        return len(rows)

    async def _reencrypt_session_secrets(self, active: str, only_plaintext: bool, batch: int) -> int:
        s = session_secrets.c
        stale = s.key_id.is_(None) if only_plaintext else (s.key_id.is_(None) | (s.key_id != active))
        async with self.db.read() as conn:
            rows = list(
                await conn.execute(
                    select(s.session_id, s.resource_id, s.secret, s.key_id, sessions.c.tenant_id)
                    .join(sessions, sessions.c.id == s.session_id)
                    .where(stale)
                    .order_by(s.session_id, s.resource_id)
                    .limit(batch)
                )
            )
        if not rows:
            return 0
        async with self.db.write() as conn:
            for row in rows:
                binding = session_secret_binding(row.tenant_id, row.session_id, row.resource_id)
                plain = row.secret.encode() if row.key_id is None else self._open(row.secret, binding)
                sealed = self._seal(plain, binding)
                await conn.execute(
                    update(session_secrets)
                    .where(s.session_id == row.session_id, s.resource_id == row.resource_id, s.secret == row.secret)
                    .values(secret=sealed.envelope, key_id=sealed.key_id)
                )
        return len(rows)


def check_session_vaults_sync(conn: Connection, tenant_id: str, vault_ids: Sequence[str]) -> None:
    """`VaultStore.check_session_vaults` in the caller's (synchronous) transaction."""
    if not vault_ids:
        return
    if len(vault_ids) > MAX_SESSION_VAULTS:
        raise InvalidRequest(f"vault_ids: at most {MAX_SESSION_VAULTS} vaults per session")
    seen: set[str] = set()
    for vault_id in vault_ids:
        if vault_id in seen:
            raise InvalidRequest(f"vault_ids: vault {vault_id} is listed twice")
        seen.add(vault_id)
    rows = conn.execute(
        select(vaults.c.id, vaults.c.archived_at).where(vaults.c.tenant_id == tenant_id, vaults.c.id.in_(vault_ids))
    )
    found = {r.id: r.archived_at for r in rows}
    for vault_id in vault_ids:
        if vault_id not in found:
            raise NotFound(f"vault_ids: vault {vault_id} not found", error_code="vault_not_found")
        if found[vault_id] is not None:
            raise InvalidRequest(
                f"vault_ids: vault {vault_id} is archived; new sessions cannot use it", error_code="vault_archived"
            )
