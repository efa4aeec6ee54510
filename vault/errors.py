"""Errors of the vault. Messages name records and key ids, never a secret or key material."""

from __future__ import annotations

from core.errors import APIError, ConfigError


class KeyringError(ConfigError):
    """The master key or the keyring file is unusable (bad base64, wrong size, loose permissions)."""


class VaultError(APIError):
    """A sealed secret cannot be opened. The operator must act; retrying won't help."""

    status = 500
    error_type = "api_error"

    def __init__(self, message: str, *, record: str, key_id: str | None = None, error_code: str) -> None:
        super().__init__(message, error_code=error_code)
        self.record = record
        self.key_id = key_id


class VaultLocked(VaultError):
    """No master key is configured in this process."""

    def __init__(self, record: str) -> None:
        super().__init__(
            f"cannot seal or open the secret of {record}: this process has no vault key "
            "(set OMA_MASTER_KEY, or let `oma serve` create the keyring file in OMA_DATA_DIR)",
            record=record,
            error_code="vault_locked",
        )


class VaultKeyMissing(VaultError):
    """The ciphertext names a key this keyring does not hold: the master key is wrong, or the
    key was removed from the keyring while secrets still used it."""

    def __init__(self, record: str, key_id: str, available: list[str], source: str) -> None:
        have = ", ".join(available) or "none"
        super().__init__(
            f"cannot open the secret of {record}: it was sealed with vault key {key_id}, which the keyring "
            f"({source}) does not hold (it holds: {have}). The master key is not the one this secret was "
            "written with, or that key was removed; restore it (old keys must stay until "
            "`oma vault rotate-key` has re-encrypted every secret)",
            record=record,
            key_id=key_id,
            error_code="vault_key_missing",
        )


class VaultTampered(VaultError):
    """Authentication of the ciphertext failed: it was altered or corrupted."""

    def __init__(self, record: str, key_id: str | None) -> None:
        super().__init__(
            f"cannot open the secret of {record}: the ciphertext failed authentication (it was altered or "
            "corrupted in the database). Store the secret again.",
            record=record,
            key_id=key_id,
            error_code="vault_ciphertext_tampered",
        )


class VaultMisplaced(VaultError):
    """The ciphertext is intact but was sealed for another record: it was moved or copied between rows."""

    def __init__(self, record: str, key_id: str | None) -> None:
        super().__init__(
            f"cannot open the secret of {record}: the ciphertext stored there was sealed for a different record "
            "(it was moved or copied from another row or tenant). Store the secret again.",
            record=record,
            key_id=key_id,
            error_code="vault_ciphertext_misplaced",
        )
