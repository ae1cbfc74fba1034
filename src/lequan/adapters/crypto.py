"""Field encryption and blind indexes for personal information: the real KeyRing.

ID numbers, phones and names are stored encrypted, one field at a time, with
AES-256-GCM. Each ciphertext is ``nonce (12 bytes) || ciphertext || tag (16
bytes)`` with a fresh random nonce, and the field name is bound as associated
data, so a ciphertext copied into another column fails to decrypt instead of
showing up as someone's phone. The key id is stored next to each ciphertext;
several keys can be known at once so a new key can become active while old
rows still decrypt (rotation).

Equality lookups ("is this ID number already registered?") use a blind index:
HMAC-SHA256 under a separate key over ``field + "\\x00" + value``. It is
deterministic, so it must only ever be computed on normalised values
(``lequan.domain.identity``).

Keys live in a JSON key file, readable and writable by its owner alone (mode
0600; ``load_key_file`` refuses one open to anyone else)::

    {"version": 1, "active_key_id": "k1",
     "keys": {"k1": "<base64 of 32 bytes>"},
     "blind_index_key": "<base64 of 32 bytes>"}

Random 96-bit nonces are safe for about 2**32 encryptions under one key;
rotate well before that. Nothing here logs, and no error message carries a
plaintext or any key material.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lequan.ports import KeyMismatch

__all__ = [
    "EXAMPLE_KEY_FILE_JSON",
    "KEY_FILE_VERSION",
    "AesGcmKeyRing",
    "KeyRingError",
    "example_keyring",
    "generate_key_file",
    "generate_keyring",
    "is_example_keyring",
    "keyring_from_json",
    "keyring_to_json",
    "load_key_file",
]

KEY_FILE_VERSION = 1
KEY_LENGTH = 32  # AES-256 and the HMAC-SHA256 blind-index key alike
NONCE_LENGTH = 12
TAG_LENGTH = 16
# Key ids are stored in a column next to every ciphertext: short and plain.
_KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_KEY_FILE_FIELDS = frozenset({"version", "active_key_id", "keys", "blind_index_key"})
# A key file may carry a free-text "comment"; anything else is a typo worth refusing.
_KEY_FILE_OPTIONAL_FIELDS = frozenset({"comment"})
_KEY_FILE_SIZE_MAX = 1 << 20


class KeyRingError(Exception):
    """A key file or key is missing or malformed.

    An operating error, not a client's mistake. Its message names the file,
    the field or the key id, never key material. A ciphertext that does not
    open is the port's ``KeyMismatch`` instead (wrong keys, corrupted data or
    tampering), which the platform answers 503 ``key_mismatch``.
    """


class AesGcmKeyRing:
    """AES-256-GCM field encryption and HMAC-SHA256 blind indexes (implements ``KeyRing``).

    Encrypts with ``active_key_id``; decrypts with any key it knows. The
    blind-index key must differ from every encryption key.
    """

    __slots__ = ("_active_key_id", "_aeads", "_blind_index_key", "_keys")

    def __init__(
        self, *, keys: Mapping[str, bytes], active_key_id: str, blind_index_key: bytes
    ) -> None:
        if not keys:
            raise KeyRingError("a key ring needs at least one encryption key")
        for key_id, key in keys.items():
            if not _KEY_ID_PATTERN.fullmatch(key_id):
                raise KeyRingError(
                    f"key id {key_id!r} must be 1 to 32 characters of A-Z, a-z, 0-9, '_', '.', '-'"
                )
            _check_key_length(f"encryption key {key_id!r}", key)
        if active_key_id not in keys:
            raise KeyRingError(f"the active key id {active_key_id!r} is not among the keys")
        _check_key_length("the blind-index key", blind_index_key)
        if any(hmac.compare_digest(blind_index_key, key) for key in keys.values()):
            raise KeyRingError("the blind-index key must differ from every encryption key")
        self._keys: dict[str, bytes] = {key_id: bytes(key) for key_id, key in keys.items()}
        self._aeads: dict[str, AESGCM] = {key_id: AESGCM(key) for key_id, key in self._keys.items()}
        self._active_key_id = active_key_id
        self._blind_index_key = bytes(blind_index_key)

    def __repr__(self) -> str:
        # Key ids only: a repr ends up in logs and tracebacks.
        return f"AesGcmKeyRing(active_key_id={self._active_key_id!r}, key_ids={self.key_ids!r})"

    @property
    def active_key_id(self) -> str:
        """The key new ciphertexts are made with."""
        return self._active_key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this ring can decrypt with, sorted."""
        return tuple(sorted(self._keys))

    def encrypt(self, field: str, plaintext: str) -> tuple[str, bytes]:
        """Encrypt one field value under the active key; returns (key_id, nonce || ct || tag)."""
        assert field, "a field name is required: it is the associated data"
        nonce = os.urandom(NONCE_LENGTH)
        sealed = self._aeads[self._active_key_id].encrypt(
            nonce, plaintext.encode("utf-8"), field.encode("utf-8")
        )
        return self._active_key_id, nonce + sealed

    def decrypt(self, field: str, key_id: str, ciphertext: bytes) -> str:
        """Decrypt what ``encrypt`` made for this same field; ``KeyMismatch`` otherwise
        (the port's error: answered 503 ``key_mismatch``, for an operator to act on)."""
        assert field, "a field name is required: it is the associated data"
        aead = self._aeads.get(key_id)
        if aead is None:
            raise KeyMismatch(f"unknown key id {key_id!r} for field {field!r}")
        if len(ciphertext) < NONCE_LENGTH + TAG_LENGTH:
            raise KeyMismatch(f"ciphertext for field {field!r} is too short to be one")
        nonce, sealed = ciphertext[:NONCE_LENGTH], ciphertext[NONCE_LENGTH:]
        try:
            plaintext = aead.decrypt(nonce, sealed, field.encode("utf-8"))
        except InvalidTag:
            # The cause is deliberately dropped: nothing about the data leaks.
            raise KeyMismatch(
                f"ciphertext for field {field!r} under key {key_id!r} failed authentication "
                "(wrong field, wrong key, or altered data)"
            ) from None
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyMismatch(
                f"ciphertext for field {field!r} under key {key_id!r} is not UTF-8 text"
            ) from None

    def blind_index(self, field: str, value: str) -> str:
        """HMAC-SHA256 of ``field + "\\x00" + value`` under the blind-index key, 64 hex chars.

        Deterministic, so equal normalised values match; keyed, so the index
        alone cannot be brute-forced over the small space of ID numbers or
        phones without the key. The field is mixed in so that equal values in
        different fields do not match.
        """
        assert field, "a field name is required"
        assert "\x00" not in field, "the field name is separated from the value by NUL"
        message = (field + "\x00" + value).encode("utf-8")
        # hmac.digest is the one-shot HMAC: the same bytes as hmac.new, without its object.
        return hmac.digest(self._blind_index_key, message, "sha256").hex()

    def _key_material(self) -> tuple[bytes, ...]:
        return (*self._keys.values(), self._blind_index_key)


def _check_key_length(what: str, key: bytes) -> None:
    if len(key) != KEY_LENGTH:
        raise KeyRingError(f"{what} must be {KEY_LENGTH} bytes, got {len(key)}")


def generate_keyring(*, active_key_id: str = "k1") -> AesGcmKeyRing:
    """A key ring of fresh random keys, held in memory only (tests, throwaway runs)."""
    return AesGcmKeyRing(
        keys={active_key_id: os.urandom(KEY_LENGTH)},
        active_key_id=active_key_id,
        blind_index_key=os.urandom(KEY_LENGTH),
    )


def _b64_key(what: str, text: object) -> bytes:
    if not isinstance(text, str):
        raise KeyRingError(f"{what} must be a base64 string")
    try:
        key = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise KeyRingError(f"{what} is not valid base64") from None
    _check_key_length(what, key)
    return key


def keyring_from_json(text: str) -> AesGcmKeyRing:
    """Parse a key file's JSON text; ``KeyRingError`` names what is wrong, never the keys."""
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as error:
        raise KeyRingError(
            f"the key file is not valid JSON (line {error.lineno}, column {error.colno})"
        ) from None
    if not isinstance(document, dict):
        raise KeyRingError("the key file must hold a JSON object")
    missing = _KEY_FILE_FIELDS - document.keys()
    if missing:
        raise KeyRingError(f"the key file lacks {', '.join(sorted(missing))}")
    unknown = document.keys() - _KEY_FILE_FIELDS - _KEY_FILE_OPTIONAL_FIELDS
    if unknown:
        raise KeyRingError(f"the key file has unknown fields: {', '.join(sorted(unknown))}")
    version = document["version"]
    if type(version) is not int or version != KEY_FILE_VERSION:
        raise KeyRingError(
            f"the key file has version {version!r}; this lequan reads version {KEY_FILE_VERSION}"
        )
    active_key_id = document["active_key_id"]
    if not isinstance(active_key_id, str):
        raise KeyRingError("active_key_id must be a string")
    raw_keys = document["keys"]
    if not isinstance(raw_keys, dict) or not raw_keys:
        raise KeyRingError("keys must be a non-empty object of key id to base64 key")
    keys = {
        key_id: _b64_key(f"encryption key {key_id!r}", value) for key_id, value in raw_keys.items()
    }
    return AesGcmKeyRing(
        keys=keys,
        active_key_id=active_key_id,
        blind_index_key=_b64_key("the blind-index key", document["blind_index_key"]),
    )


def keyring_to_json(keyring: AesGcmKeyRing, *, comment: str | None = None) -> str:
    """The key file text of a key ring (it holds every key in the clear: write it 0600)."""
    document: dict[str, Any] = {"version": KEY_FILE_VERSION}
    if comment is not None:
        document["comment"] = comment
    document["active_key_id"] = keyring.active_key_id
    document["keys"] = {
        key_id: base64.b64encode(key).decode("ascii")
        for key_id, key in sorted(keyring._keys.items())
    }
    document["blind_index_key"] = base64.b64encode(keyring._blind_index_key).decode("ascii")
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def load_key_file(path: str | os.PathLike[str]) -> AesGcmKeyRing:
    """Read a key file written by ``generate_key_file`` (or by hand, in the same format)."""
    file_path = Path(path)
    try:
        with file_path.open("rb") as handle:
            _check_private(file_path, os.fstat(handle.fileno()).st_mode)
            data = handle.read(_KEY_FILE_SIZE_MAX + 1)
    except FileNotFoundError:
        raise KeyRingError(f"key file {str(file_path)!r} does not exist") from None
    except OSError as error:
        raise KeyRingError(
            f"key file {str(file_path)!r} cannot be read: {error.strerror}"
        ) from None
    if len(data) > _KEY_FILE_SIZE_MAX:
        raise KeyRingError(f"key file {str(file_path)!r} is larger than {_KEY_FILE_SIZE_MAX} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyRingError(f"key file {str(file_path)!r} is not UTF-8 text") from None
    try:
        return keyring_from_json(text)
    except KeyRingError as error:
        raise KeyRingError(f"key file {str(file_path)!r}: {error}") from None


def _check_private(file_path: Path, mode: int) -> None:
    """Refuse a key file that anyone but its owner may read or write: its keys open
    every ID number, and whoever can write it can swap them."""
    if mode & 0o077:
        raise KeyRingError(
            f"key file {str(file_path)!r} is open to others (mode {stat.S_IMODE(mode):04o}); "
            f"make it its owner's alone: chmod 600 {file_path}"
        )


def generate_key_file(path: str | os.PathLike[str]) -> AesGcmKeyRing:
    """Create a key file of fresh random keys (mode 0600) and return its key ring.

    Refuses to overwrite an existing file: losing a key loses every value
    encrypted under it. Missing parent directories are created (mode 0700).
    """
    file_path = Path(path)
    keyring = generate_keyring()
    file_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # O_EXCL makes "refuse to overwrite" atomic, even against a racing writer.
        descriptor = os.open(file_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyRingError(
            f"key file {str(file_path)!r} already exists; refusing to overwrite it"
        ) from None
    try:
        # The umask can only take bits away; set the mode exactly all the same.
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(keyring_to_json(keyring))
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        file_path.unlink(missing_ok=True)
        raise
    return keyring


_EXAMPLE_ENCRYPTION_KEY = b"lequan-example-key-do-not-use!!!"
_EXAMPLE_BLIND_INDEX_KEY = b"lequan-example-blind-index-key!!"

EXAMPLE_KEY_FILE_JSON: str = keyring_to_json(
    AesGcmKeyRing(
        keys={"example": _EXAMPLE_ENCRYPTION_KEY},
        active_key_id="example",
        blind_index_key=_EXAMPLE_BLIND_INDEX_KEY,
    ),
    comment="EXAMPLE ONLY: these keys are published; generate your own with generate_key_file",
)
"""The key file shown in the docs; its keys are public, so ``serve`` refuses them."""


def example_keyring() -> AesGcmKeyRing:
    """The key ring of ``EXAMPLE_KEY_FILE_JSON``: for the embedded default and the demo only."""
    return keyring_from_json(EXAMPLE_KEY_FILE_JSON)


def is_example_keyring(keyring: AesGcmKeyRing) -> bool:
    """True when any key of the ring is a published example key.

    Data under a published key is as good as clear, so one example key
    anywhere in the ring (even an old, inactive one) counts.
    """
    examples = (_EXAMPLE_ENCRYPTION_KEY, _EXAMPLE_BLIND_INDEX_KEY)
    return any(
        hmac.compare_digest(key, example) for key in keyring._key_material() for example in examples
    )
