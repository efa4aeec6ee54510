"""The vault's sealing: no plaintext secret in the database, clear failures for a wrong master key,
a tampered ciphertext and a ciphertext moved between rows, and key rotation that re-encrypts
everything and survives a restart. On SQLite and PostgreSQL, each test on its own database."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update

from bot.cli import main as oma
from core import schemas
from core.credentials import CredentialCreate, CredentialKind, VaultCreate
from core.db import session_secrets, vault_credentials
from core.keys import create_tenant
from core.migrate import upgrade
from core.platform import Platform
from tests.scan import database_bytes, leaks
from tests.servers import database_url
from vault.errors import KeyringError, VaultKeyMissing, VaultMisplaced, VaultTampered
from vault.keyring import (
    KEYRING_FILENAME,
    Binding,
    Keyring,
    KeyringFile,
    KeyringSource,
    SecretBox,
    StaticKeyring,
    encode_key,
    envelope_key_id,
    new_key,
)

# --- sealing -----------------------------------------------------------------------------------

RECORD = Binding("vault_credential", "tenant_a", "vcrd_1")


def box() -> SecretBox:
    return SecretBox(StaticKeyring(Keyring.generate()))


def test_each_seal_is_fresh_and_names_its_key() -> None:
    sealer = box()
    plain = b'{"api_key": "sk-ant-abc"}'
    envelopes = {sealer.seal(plain, RECORD).envelope for _ in range(50)}
    assert len(envelopes) == 50  # fresh nonces and data keys every time
    for envelope in envelopes:
        version, key_id, _, _ = envelope.split(".")
        assert (version, key_id) == ("oma1", sealer.active_key_id) == ("oma1", envelope_key_id(envelope))
        assert b"sk-ant-abc" not in envelope.encode()
        assert sealer.open(envelope, RECORD) == plain


def test_a_wrong_master_key_is_named_not_guessed() -> None:
    sealed = box().seal(b"secret-value", RECORD)
    other = box()
    with pytest.raises(VaultKeyMissing) as caught:
        other.open(sealed.envelope, RECORD)
    err = caught.value
    assert err.key_id == sealed.key_id and err.error_code == "vault_key_missing" and err.status == 500
    assert f"sealed with vault key {sealed.key_id}" in err.message
    assert f"(it holds: {other.active_key_id})" in err.message
    assert "master key is not the one this secret was written with" in err.message
    assert "vault credential vcrd_1 (tenant tenant_a)" in err.message
    assert "secret-value" not in err.message


def test_a_tampered_ciphertext_fails_authentication() -> None:
    sealer = box()
    envelope = sealer.seal(b"secret-value", RECORD).envelope
    head, body = envelope.rsplit(".", 1)
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    # A bit flipped in the wrapping nonce, the wrapped data key, the data nonce, the ciphertext, the tag.
    for i in (0, 20, 70, len(payload) - 20, len(payload) - 1):
        flipped = payload[:i] + bytes([payload[i] ^ 1]) + payload[i + 1 :]
        with pytest.raises(VaultTampered) as caught:
            sealer.open(f"{head}.{base64.urlsafe_b64encode(flipped).decode()}", RECORD)
        assert "failed authentication (it was altered or corrupted" in caught.value.message
    for broken in (f"{head}.{body[:40]}", f"{head}.!!!", "plaintext", "oma1.x.y"):
        with pytest.raises(VaultTampered):
            sealer.open(broken, RECORD)


def test_a_ciphertext_moved_to_another_record_or_tenant_fails() -> None:
    sealer = box()
    envelope = sealer.seal(b"secret-value", RECORD).envelope
    for elsewhere in (
        Binding("vault_credential", "tenant_a", "vcrd_2"),
        Binding("vault_credential", "tenant_b", "vcrd_1"),
        Binding("session_secret", "tenant_a", "vcrd_1"),
    ):
        with pytest.raises(VaultMisplaced) as caught:
            sealer.open(envelope, elsewhere)
        assert "was sealed for a different record (it was moved or copied" in caught.value.message
        assert elsewhere.record_id in caught.value.message
    # Forging the fingerprint to match the new row does not help: it is authenticated.
    version, key_id, _, body = envelope.split(".")
    forged = f"{version}.{key_id}.{Binding('vault_credential', 'tenant_a', 'vcrd_2').fingerprint()}.{body}"
    with pytest.raises(VaultTampered):
        sealer.open(forged, Binding("vault_credential", "tenant_a", "vcrd_2"))


def test_master_key_setting() -> None:
    a, b = new_key(), new_key()
    one = Keyring.from_master_key(encode_key(a))
    assert one.ids == [Keyring.from_master_key(encode_key(a).rstrip("=")).active]
    urlsafe = Keyring.from_master_key(encode_key(a).replace("+", "-").replace("/", "_"))
    assert urlsafe.ids == one.ids
    rotating = SecretBox(StaticKeyring(Keyring.from_master_key(f"{encode_key(b)}, {encode_key(a)}")))
    old = SecretBox(StaticKeyring(one)).seal(b"v", RECORD)
    assert rotating.open(old.envelope, RECORD) == b"v" and rotating.active_key_id != old.key_id
    short = encode_key(a[:31])
    for bad, expected in (
        (short, "decodes to 31 bytes"),
        ("not base64!", "is not base64"),
        ("", "is empty"),
        (f"{encode_key(a)},{encode_key(a)}", "the same key twice"),
    ):
        with pytest.raises(KeyringError) as caught:
            Keyring.from_master_key(bad)
        assert expected in str(caught.value)
        assert short not in str(caught.value)


def test_keyring_file_is_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "data" / KEYRING_FILENAME
    source = KeyringFile(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = orjson.loads(path.read_bytes())
    assert data["format"] == "oma-vault-keyring" and data["version"] == 1
    assert [k["id"] for k in data["keys"]] == [data["active"]] == source.current().ids
    assert KeyringFile(path).current() == source.current()  # a second start reads the same keys

    path.chmod(0o644)
    with pytest.raises(KeyringError, match=r"accessible by group or others \(mode 0644\); run `chmod 600"):
        KeyringFile(path)
    path.chmod(0o600)
    data["keys"][0]["id"] = "k0000000000000000"
    path.write_bytes(orjson.dumps(data))
    with pytest.raises(KeyringError, match="has id 'k0000000000000000' but its key's id is"):
        KeyringFile(path)
    path.write_bytes(b"{not json")
    with pytest.raises(KeyringError, match="is not valid JSON"):
        KeyringFile(path)
    with pytest.raises(KeyringError, match="no keyring file"):
        KeyringFile(tmp_path / "absent.json", create=False)


# --- in the database ---------------------------------------------------------------------------


@dataclass
class Stored:
    """What `populate` wrote: ids, and every secret value it sent."""

    tenant: str
    vault_id: str
    session_id: str
    resource_id: str
    anthropic_key: str
    slack: dict[str, str]
    credentials: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)


def value(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(16)}"


async def populate(p: Platform) -> Stored:
    tenant = await create_tenant(p.db, "vault-test")
    vault = await p.vaults.create(tenant, VaultCreate(display_name="keys"))
    anthropic_key = value("sk-ant")
    slack = {"bot_token": value("xoxb"), "signing_secret": value("sig")}
    auths: list[dict[str, Any]] = [
        {"type": "anthropic_api_key", "api_key": anthropic_key},
        {"type": "openai_api_key", "api_key": value("sk-openai")},
        {"type": "static_bearer", "token": value("bearer"), "mcp_server_url": "https://mcp.example.com"},
        {
            "type": "mcp_oauth",
            "access_token": value("access"),
            "mcp_server_url": "https://mcp2.example.com",
            "refresh": {
                "client_id": "c",
                "refresh_token": value("refresh"),
                "token_endpoint": "https://auth.example.com/token",
                "token_endpoint_auth": {"type": "client_secret_post", "client_secret": value("clientsecret")},
            },
        },
        {
            "type": "environment_variable",
            "secret_name": "API_TOKEN",
            "secret_value": value("envvalue"),
            "networking": {"type": "unrestricted"},
        },
        {"type": "slack", **slack},
        {"type": "github_app", "app_id": "1", "private_key": value("pem"), "webhook_secret": value("ghwh")},
        {"type": "linear", "access_token": value("linear")},
        {"type": "lark", "app_id": "cli_1", "app_secret": value("larksecret")},
    ]
    stored = Stored(tenant, vault["id"], "", "", anthropic_key, slack)
    for auth in auths:
        created = await p.vaults.create_credential(tenant, vault["id"], CredentialCreate.model_validate({"auth": auth}))
        stored.credentials[auth["type"]] = created["id"]
        stored.secrets += _secret_values(auth)
    agent = await p.agents.create(tenant, schemas.AgentCreate(model="claude-sonnet-5", name="a"))
    env = await p.environments.create(tenant, schemas.EnvironmentCreate(name="e"))
    token = value("ghp")
    repo = schemas.GitHubRepositoryResource(
        type="github_repository", url="https://github.com/acme/widgets", authorization_token=token
    )
    session = await p.sessions.create(
        tenant,
        schemas.SessionCreate(agent=agent["id"], environment_id=env["id"], resources=[repo], vault_ids=[vault["id"]]),
    )
    stored.session_id, stored.resource_id = session["id"], session["resources"][0]["id"]
    stored.secrets.append(token)
    return stored


def _secret_values(auth: Any) -> list[str]:
    found: list[str] = []
    for key, item in auth.items():
        if isinstance(item, dict):
            found += _secret_values(item)
        elif key in ("api_key", "token", "access_token", "refresh_token", "client_secret", "secret_value") or key in (
            "bot_token",
            "signing_secret",
            "private_key",
            "webhook_secret",
            "app_secret",
        ):
            found.append(item)
    return found


async def opens_everything(p: Platform, s: Stored) -> None:
    """Every kind of stored secret opens to what was given."""
    key = await p.vaults.model_key(s.tenant, [s.vault_id], "claude-sonnet-5", "anthropic")
    assert (
        key is not None and key.api_key == s.anthropic_key and key.credential_id == s.credentials["anthropic_api_key"]
    )
    slack = await p.vaults.workspace_credential(s.tenant, s.vault_id, CredentialKind.SLACK)
    assert slack is not None and {k: slack[k] for k in s.slack} == s.slack
    token = await p.vaults.session_secret(s.tenant, s.session_id, s.resource_id)
    assert token == s.secrets[-1]


@pytest.fixture
def fresh_db(backend: str, tmp_path: Path) -> Iterator[str]:
    with database_url(backend, tmp_path) as url:
        upgrade(url)
        yield url


def build(url: str, source: KeyringSource) -> Platform:
    return Platform.build(url, bootstrap_key=None, keyring=source)


async def test_the_database_never_holds_a_plaintext_secret(fresh_db: str) -> None:
    p = build(fresh_db, StaticKeyring(Keyring.generate()))
    try:
        s = await populate(p)
        await opens_everything(p, s)
        assert len(s.secrets) == 14
        async with p.db.read() as conn:
            rows = list(await conn.execute(select(vault_credentials)))
            kept = list(await conn.execute(select(session_secrets)))
        active = p.vaults.box.active_key_id  # type: ignore[union-attr]
        assert {r.key_id for r in [*rows, *kept]} == {active}
        assert all(r.secret.startswith(f"oma1.{active}.") for r in [*rows, *kept])
        # Archiving purges the secret; the record stays.
        await p.vaults.archive_credential(s.tenant, s.vault_id, s.credentials["linear"])
        async with p.db.read() as conn:
            purged = (
                await conn.execute(select(vault_credentials).where(vault_credentials.c.id == s.credentials["linear"]))
            ).one()
        assert purged.secret is None and purged.key_id is None and purged.archived_at is not None
    finally:
        await p.close()
    raw = await asyncio.to_thread(database_bytes, fresh_db)
    assert s.vault_id.encode() in raw and s.credentials["slack"].encode() in raw  # the scan sees the rows
    assert leaks(raw, s.secrets) == []


async def test_tampered_swapped_and_wrong_key_secrets_fail_clearly(fresh_db: str) -> None:
    p = build(fresh_db, StaticKeyring(Keyring.generate()))
    try:
        s = await populate(p)
        t = await populate(p)  # another tenant, same kinds
        mine, theirs = s.credentials["anthropic_api_key"], t.credentials["anthropic_api_key"]
        openai_cred = s.credentials["openai_api_key"]

        async def secret_of(credential_id: str) -> str:
            async with p.db.read() as conn:
                return str(
                    (
                        await conn.execute(
                            select(vault_credentials.c.secret).where(vault_credentials.c.id == credential_id)
                        )
                    ).scalar_one()
                )

        async def put(credential_id: str, secret: str) -> None:
            async with p.db.write() as conn:
                await conn.execute(
                    update(vault_credentials).where(vault_credentials.c.id == credential_id).values(secret=secret)
                )

        original = await secret_of(mine)
        for moved_from in (openai_cred, theirs):  # another row of this tenant; a row of another tenant
            await put(mine, await secret_of(moved_from))
            with pytest.raises(VaultMisplaced) as misplaced:
                await p.vaults.model_key(s.tenant, [s.vault_id], "claude-sonnet-5", "anthropic")
            assert f"vault credential {mine} (tenant {s.tenant})" in misplaced.value.message
        head, body = original.rsplit(".", 1)
        await put(mine, f"{head}.{body[:-6]}AAAAAA")
        with pytest.raises(VaultTampered) as tampered:
            await p.vaults.model_key(s.tenant, [s.vault_id], "claude-sonnet-5", "anthropic")
        assert mine in tampered.value.message
        await put(mine, original)
        await opens_everything(p, s)
    finally:
        await p.close()

    # A restart with another master key: start-up refuses, and every open names the problem.
    wrong = build(fresh_db, StaticKeyring(Keyring.generate()))
    try:
        with pytest.raises(VaultKeyMissing) as at_start:
            await wrong.vaults.startup()
        assert "20 stored secret(s)" in at_start.value.message
        with pytest.raises(VaultKeyMissing):
            await wrong.vaults.model_key(s.tenant, [s.vault_id], "claude-sonnet-5", "anthropic")
        with pytest.raises(VaultKeyMissing):
            await wrong.vaults.session_secret(s.tenant, s.session_id, s.resource_id)
    finally:
        await wrong.close()


def test_oma_serve_refuses_a_wrong_master_key(fresh_db: str, tmp_path: Path) -> None:
    right, wrong = encode_key(new_key()), encode_key(new_key())

    async def seed() -> None:
        p = build(fresh_db, StaticKeyring(Keyring.from_master_key(right)))
        try:
            await populate(p)
        finally:
            await p.close()

    asyncio.run(seed())
    env = {
        **os.environ,
        "OMA_DATABASE_URL": fresh_db,
        "OMA_DATA_DIR": str(tmp_path / "data"),
        "OMA_MASTER_KEY": wrong,
        "OMA_LOG_LEVEL": "WARNING",
    }
    oma_bin = str(Path(sys.executable).parent / "oma")
    done = subprocess.run(
        [oma_bin, "serve", "--port", "0"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    wrong_id = Keyring.from_master_key(wrong).active
    assert done.stderr.startswith("oma: cannot open the secret of 10 stored secret(s): it was sealed with vault key")
    assert f"which the keyring (OMA_MASTER_KEY) does not hold (it holds: {wrong_id})" in done.stderr
    assert right not in done.stderr + done.stdout and wrong not in done.stderr + done.stdout


async def test_session_secrets_from_before_the_vault_are_sealed_at_start(fresh_db: str) -> None:
    p = build(fresh_db, StaticKeyring(Keyring.generate()))
    try:
        s = await populate(p)
        legacy = value("ghp-legacy")
        async with p.db.write() as conn:  # as revision 0002 stored it: plaintext, no key
            await conn.execute(
                update(session_secrets)
                .where(session_secrets.c.session_id == s.session_id)
                .values(secret=legacy, key_id=None)
            )
        assert await p.vaults.session_secret(s.tenant, s.session_id, s.resource_id) == legacy
        await p.vaults.startup()
        async with p.db.read() as conn:
            row = (
                await conn.execute(select(session_secrets).where(session_secrets.c.session_id == s.session_id))
            ).one()
        assert row.key_id == p.vaults.box.active_key_id and legacy not in row.secret  # type: ignore[union-attr]
        assert await p.vaults.session_secret(s.tenant, s.session_id, s.resource_id) == legacy
    finally:
        await p.close()


# --- rotation ----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings for `oma` commands run in this process: this test's database and data dir."""
    monkeypatch.setenv("OMA_DATABASE_URL", fresh_db)
    monkeypatch.setenv("OMA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("OMA_MASTER_KEY", raising=False)
    return tmp_path / "data"


def key_ids_in_use(url: str) -> dict[str | None, int]:
    async def read() -> dict[str | None, int]:
        p = build(url, StaticKeyring(Keyring.generate()))
        try:
            return {u.key_id: u.secrets for u in await p.vaults.key_usage()}
        finally:
            await p.close()

    return asyncio.run(read())


def test_rotate_key_reencrypts_everything_and_a_restart_still_decrypts(
    fresh_db: str, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keyring_path = cli_env / KEYRING_FILENAME

    async def seed() -> Stored:
        p = build(fresh_db, KeyringFile(keyring_path))  # the embedded default: a keyring file
        try:
            return await populate(p)
        finally:
            await p.close()

    s = asyncio.run(seed())
    (old,) = KeyringFile(keyring_path).current().ids
    assert key_ids_in_use(fresh_db) == {old: 10}

    oma(["vault", "rotate-key"])
    out = capsys.readouterr().out
    keyring = KeyringFile(keyring_path).current()
    new = keyring.active
    assert keyring.ids == [old, new] and stat.S_IMODE(keyring_path.stat().st_mode) == 0o600
    assert f"added vault key {new}" in out and f"re-encrypted 10 secret(s) with vault key {new}" in out
    assert f"older keys still open anything sealed with them until removed: {old}" in out
    assert key_ids_in_use(fresh_db) == {new: 10}

    async def restart(check_old_key_gone: bool = False) -> None:
        p = build(fresh_db, KeyringFile(keyring_path))
        try:
            await p.vaults.startup()
            await opens_everything(p, s)
            if check_old_key_gone:
                assert p.vaults.box is not None and p.vaults.box.key_ids() == [new]
        finally:
            await p.close()

    asyncio.run(restart())
    oma(["vault", "keys"])
    listing = capsys.readouterr().out
    assert f"{new} (active): seals 10 secret(s)" in listing and f"{old}: seals 0 secret(s)" in listing

    with pytest.raises(SystemExit, match="is the active key"):
        oma(["vault", "remove-key", new])
    oma(["vault", "remove-key", old])
    assert f"removed vault key {old}" in capsys.readouterr().out
    asyncio.run(restart(check_old_key_gone=True))
    assert leaks(database_bytes(fresh_db), s.secrets) == []


def test_rotation_with_master_keys_from_the_environment(
    fresh_db: str, cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = encode_key(new_key()), encode_key(new_key())
    id_a, id_b = Keyring.from_master_key(a).active, Keyring.from_master_key(b).active

    async def seed() -> Stored:
        p = build(fresh_db, StaticKeyring(Keyring.from_master_key(a)))
        try:
            return await populate(p)
        finally:
            await p.close()

    s = asyncio.run(seed())
    monkeypatch.setenv("OMA_MASTER_KEY", a)
    oma(["vault", "rotate-key"])
    assert "OMA_MASTER_KEY holds one key. To rotate it" in capsys.readouterr().out
    monkeypatch.setenv("OMA_MASTER_KEY", f"{b},{a}")
    oma(["vault", "rotate-key"])
    assert f"re-encrypted 10 secret(s) with vault key {id_b}" in capsys.readouterr().out
    assert key_ids_in_use(fresh_db) == {id_b: 10}
    with pytest.raises(SystemExit, match="remove it from OMA_MASTER_KEY"):
        oma(["vault", "remove-key", id_a])
    assert not (cli_env / KEYRING_FILENAME).exists()  # the environment's keys never touch the disk

    async def restart(master: str) -> None:
        p = build(fresh_db, StaticKeyring(Keyring.from_master_key(master)))
        try:
            await p.vaults.startup()
            await opens_everything(p, s)
        finally:
            await p.close()

    asyncio.run(restart(b))
    with pytest.raises(VaultKeyMissing):
        asyncio.run(restart(a))
