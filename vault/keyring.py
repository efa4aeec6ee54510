"""Keys and sealing: AES-256-GCM envelope encryption of small secrets.

A *vault key* is 32 random bytes. Its id is derived from it (`k` + 16 hex digits of
SHA-256("oma-vault-key-id" ‖ key)), so a ciphertext names its key without any registry and a wrong
master key is recognised by id before any decryption is tried.

Sealing a secret for a record draws a fresh data key, encrypts the secret with it and wraps the data
key with the keyring's active vault key, each with its own random 96-bit nonce. The envelope is text:

    oma1.<key id>.<binding>.<base64url(wrap nonce ‖ wrapped data key ‖ data nonce ‖ ciphertext)>

`binding` is a fingerprint of (purpose, tenant id, record id). Both encryptions authenticate the
header and the full (purpose, tenant id, record id) as associated data, so a ciphertext moved to
another row, tenant or kind of record fails to open; the fingerprint only lets that failure say
"moved" rather than "tampered".

Keys come from `OMA_MASTER_KEY` (base64 of 32 bytes; several comma-separated to rotate: the first
seals, all open) or from the keyring file (see `KeyringFile`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.errors import KeyringError, VaultKeyMissing, VaultMisplaced, VaultTampered

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
VERSION = "oma1"
FILE_FORMAT = "oma-vault-keyring"
FILE_VERSION = 1
KEYRING_FILENAME = "vault-keyring.json"
_WRAPPED = KEY_BYTES + TAG_BYTES
_MIN_PAYLOAD = NONCE_BYTES + _WRAPPED + NONCE_BYTES + TAG_BYTES


def key_id_for(key: bytes) -> str:
    return "k" + hashlib.sha256(b"oma-vault-key-id\x00" + key).hexdigest()[:16]


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _decode_key(text: str, where: str) -> bytes:
    # Standard or URL-safe alphabet, padding optional.
    cleaned = text.strip().replace("-", "+").replace("_", "/").rstrip("=")
    try:
        raw = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{where} is not base64 (generate a key with `oma vault generate-key`)") from None
    if len(raw) != KEY_BYTES:
        raise KeyringError(
            f"{where} decodes to {len(raw)} bytes; a vault key is base64 of exactly {KEY_BYTES} random bytes "
            "(generate one with `oma vault generate-key`)"
        )
    return raw


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True, slots=True)
class VaultKey:
    id: str
    material: bytes = field(repr=False)
    created_at: str | None = None

    @classmethod
    def from_material(cls, material: bytes, created_at: str | None = None) -> VaultKey:
        return cls(key_id_for(material), material, created_at)


@dataclass(frozen=True, slots=True)
class Keyring:
    """Vault keys by id; `active` seals, every key opens."""

    keys: tuple[VaultKey, ...]
    active: str

    def __post_init__(self) -> None:
        if not self.keys or self.active not in {k.id for k in self.keys}:
            raise KeyringError("a keyring needs at least one key, and its active key among them")

    @classmethod
    def generate(cls) -> Keyring:
        key = VaultKey.from_material(new_key(), _now_rfc3339())
        return cls((key,), key.id)

    @classmethod
    def from_master_key(cls, value: str) -> Keyring:
        """`OMA_MASTER_KEY`: one base64 key, or several separated by commas (the first seals)."""
        parts = [p for p in (s.strip() for s in value.split(",")) if p]
        if not parts:
            raise KeyringError("OMA_MASTER_KEY is empty (generate a key with `oma vault generate-key`)")
        keys = []
        for i, part in enumerate(parts, 1):
            where = "OMA_MASTER_KEY" if len(parts) == 1 else f"OMA_MASTER_KEY entry {i}"
            keys.append(VaultKey.from_material(_decode_key(part, where)))
        if len({k.id for k in keys}) != len(keys):
            raise KeyringError("OMA_MASTER_KEY lists the same key twice")
        return cls(tuple(keys), keys[0].id)

    def get(self, key_id: str) -> VaultKey | None:
        return next((k for k in self.keys if k.id == key_id), None)

    @property
    def ids(self) -> list[str]:
        return [k.id for k in self.keys]

    def with_new_active(self) -> Keyring:
        key = VaultKey.from_material(new_key(), _now_rfc3339())
        return Keyring((*self.keys, key), key.id)

    def without(self, key_id: str) -> Keyring:
        return Keyring(tuple(k for k in self.keys if k.id != key_id), self.active)


class KeyringSource(Protocol):
    """Where the keys come from; `description` names it in error messages."""

    description: str

    def current(self) -> Keyring:
        """The keyring as it is now (a file source re-reads its file when it changed)."""
        ...

    def reload(self) -> Keyring:
        """Read the keys again, e.g. after meeting a key id the cached keyring lacks."""
        ...


class StaticKeyring:
    """Keys fixed for the process's life: `OMA_MASTER_KEY`, or a generated keyring in tests."""

    def __init__(self, keyring: Keyring, description: str = "OMA_MASTER_KEY") -> None:
        self.keyring = keyring
        self.description = description

    def current(self) -> Keyring:
        return self.keyring

    def reload(self) -> Keyring:
        return self.keyring


class KeyringFile:
    """The keyring file, for setups without `OMA_MASTER_KEY` (the embedded default). Created on
    first start with mode 0600 in `OMA_DATA_DIR`; `oma vault rotate-key` appends keys to it.

        {"format": "oma-vault-keyring", "version": 1, "active": "k0123456789abcdef",
         "keys": [{"id": "k0123456789abcdef", "key": "<base64 of 32 bytes>", "created_at": "…Z"}]}

    A running server notices a rewritten file (by mtime and size) and re-reads it, so a rotation
    done by the CLI next to it takes effect without a restart.
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self.description = f"keyring file {path}"
        self._stamp: tuple[int, int] | None = None
        self._keyring: Keyring | None = None
        if not path.exists():
            if not create:
                raise KeyringError(f"no keyring file at {path} (and OMA_MASTER_KEY is not set)")
            self._create()
        self.reload()

    def current(self) -> Keyring:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise KeyringError(f"the keyring file {self.path} disappeared; restore it from a backup") from None
        if self._keyring is None or (st.st_mtime_ns, st.st_size) != self._stamp:
            return self.reload()
        return self._keyring

    def reload(self) -> Keyring:
        st = self.path.stat()
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise KeyringError(
                f"the keyring file {self.path} is accessible by group or others (mode {mode:04o}); "
                f"run `chmod 600 {self.path}`"
            )
        self._keyring = self._parse(self.path.read_bytes())
        self._stamp = (st.st_mtime_ns, st.st_size)
        return self._keyring

    def save(self, keyring: Keyring) -> None:
        """Replace the file atomically (write a 0600 temporary file, fsync, rename)."""
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        self._write_exclusive(tmp, self._render(keyring))
        try:
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.reload()

    # --- the format ----------------------------------------------------------------------------

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        self._write_exclusive(tmp, self._render(Keyring.generate()))
        try:
            os.link(tmp, self.path)  # no-clobber: another process may have created it meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()

    @staticmethod
    def _write_exclusive(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _render(keyring: Keyring) -> bytes:
        body = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "active": keyring.active,
            "keys": [{"id": k.id, "key": encode_key(k.material), "created_at": k.created_at} for k in keyring.keys],
        }
        return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"

    def _parse(self, raw: bytes) -> Keyring:
        where = f"keyring file {self.path}"
        try:
            data: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise KeyringError(f"{where} is not valid JSON; restore it from a backup") from None
        if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
            raise KeyringError(f'{where} is not an oma vault keyring (expected "format": "{FILE_FORMAT}")')
        if data.get("version") != FILE_VERSION:
            raise KeyringError(f"{where} has version {data.get('version')!r}; this oma reads version {FILE_VERSION}")
        entries = data.get("keys")
        if not isinstance(entries, list) or not entries:
            raise KeyringError(f"{where} lists no keys")
        keys = []
        for i, entry in enumerate(entries, 1):
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                raise KeyringError(f'{where}: key entry {i} has no "key"')
            key = VaultKey.from_material(_decode_key(entry["key"], f"{where}: key entry {i}"), entry.get("created_at"))
            if entry.get("id") not in (None, key.id):
                raise KeyringError(f"{where}: key entry {i} has id {entry.get('id')!r} but its key's id is {key.id}")
            keys.append(key)
        active = data.get("active")
        if active not in {k.id for k in keys}:
            raise KeyringError(f"{where}: the active key {active!r} is not among its keys")
        return Keyring(tuple(keys), str(active))


def keyring_source(master_key: str | None, data_dir: Path, *, create: bool = True) -> KeyringSource:
    """`OMA_MASTER_KEY` when set, otherwise the keyring file in the data dir (created if absent)."""
    if master_key:
        return StaticKeyring(Keyring.from_master_key(master_key))
    return KeyringFile(data_dir / KEYRING_FILENAME, create=create)


# --- sealing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Binding:
    """What a ciphertext belongs to: a kind of record, its tenant and its id."""

    purpose: str
    tenant_id: str
    record_id: str

    def describe(self) -> str:
        return f"{self.purpose.replace('_', ' ')} {self.record_id} (tenant {self.tenant_id})"

    def fingerprint(self) -> str:
        return hashlib.sha256(self._parts()).hexdigest()[:16]

    def aad(self, header: str, part: bytes) -> bytes:
        return header.encode() + b"\x00" + part + b"\x00" + self._parts()

    def _parts(self) -> bytes:
        return b"\x00".join(p.encode() for p in (self.purpose, self.tenant_id, self.record_id))


@dataclass(frozen=True, slots=True)
class Sealed:
    envelope: str
    key_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def envelope_key_id(envelope: str) -> str | None:
    parts = envelope.split(".")
    return parts[1] if len(parts) == 4 and parts[0] == VERSION else None


class SecretBox:
    """Seals and opens secrets with the keys of a `KeyringSource`."""

    def __init__(self, source: KeyringSource) -> None:
        self.source = source

    @property
    def active_key_id(self) -> str:
        return self.source.current().active

    def key_ids(self) -> list[str]:
        return self.source.current().ids

    def seal(self, plaintext: bytes, binding: Binding) -> Sealed:
        keyring = self.source.current()
        key = keyring.get(keyring.active)
        assert key is not None  # Keyring guarantees its active key is present
        header = f"{VERSION}.{key.id}.{binding.fingerprint()}"
        data_key = AESGCM.generate_key(bit_length=256)
        wrap_nonce, data_nonce = os.urandom(NONCE_BYTES), os.urandom(NONCE_BYTES)
        wrapped = AESGCM(key.material).encrypt(wrap_nonce, data_key, binding.aad(header, b"dek"))
        ciphertext = AESGCM(data_key).encrypt(data_nonce, plaintext, binding.aad(header, b"data"))
        return Sealed(f"{header}.{_b64(wrap_nonce + wrapped + data_nonce + ciphertext)}", key.id)

    def open(self, envelope: str, binding: Binding) -> bytes:
        record = binding.describe()
        parts = envelope.split(".")
        if len(parts) != 4 or parts[0] != VERSION:
            raise VaultTampered(record, None)
        _, key_id, fingerprint, body = parts
        key = self.source.current().get(key_id)
        if key is None:
            key = self.source.reload().get(key_id)
        if key is None:
            raise VaultKeyMissing(record, key_id, self.source.current().ids, self.source.description)
        if fingerprint != binding.fingerprint():
            raise VaultMisplaced(record, key_id)
        try:
            payload = _unb64(body)
        except (binascii.Error, ValueError):
            raise VaultTampered(record, key_id) from None
        if len(payload) < _MIN_PAYLOAD:
            raise VaultTampered(record, key_id)
        header = f"{VERSION}.{key_id}.{fingerprint}"
        wrap_nonce = payload[:NONCE_BYTES]
        wrapped = payload[NONCE_BYTES : NONCE_BYTES + _WRAPPED]
        data_nonce = payload[NONCE_BYTES + _WRAPPED : 2 * NONCE_BYTES + _WRAPPED]
        ciphertext = payload[2 * NONCE_BYTES + _WRAPPED :]
        try:
            data_key = AESGCM(key.material).decrypt(wrap_nonce, wrapped, binding.aad(header, b"dek"))
            return AESGCM(data_key).decrypt(data_nonce, ciphertext, binding.aad(header, b"data"))
        except InvalidTag:
            raise VaultTampered(record, key_id) from None
