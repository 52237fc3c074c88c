"""Envelope encryption for content and PII at rest.

- A 256-bit **master key** (``LLAMAHOST_MASTER_KEY``, or a key file under the data dir
  generated on first start) wraps per-team **data keys**; it never encrypts content.
- A **data key** (256-bit, one active version per team) encrypts content with
  AES-256-GCM. Rotating the master re-wraps data keys without touching content;
  deleting a team's data keys crypto-shreds everything encrypted under them.
- Every ciphertext carries **associated data** naming what it is (purpose, team,
  record, field), so a ciphertext copied to another row or team fails to decrypt
  instead of yielding the wrong plaintext.

AES-GCM comes from ``cryptography``; only the small framing below is ours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..config import ENV_MASTER_KEY, ENV_MASTER_KEY_FILE, env

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
# Framing: magic "lh1" | data-key version (uint32 BE) | nonce | ciphertext+tag.
_MAGIC = b"lh1"
_HEADER = struct.Struct(">3sI")


class CryptoError(Exception):
    """Data could not be decrypted: tampered, moved, or the wrong key. Never wrong plaintext."""


def _aad(*parts: object) -> bytes:
    # Length-prefixed so ("a:b", "c") and ("a", "b:c") can never collide.
    return b"".join(struct.pack(">I", len(p)) + p for p in (str(x).encode() for x in parts))


@dataclass(frozen=True)
class MasterKey:
    key: bytes = field(repr=False)  # never in a log line or a traceback

    @property
    def key_id(self) -> str:
        """A fingerprint stored beside wrapped keys, to tell 'wrong master key' from tampering."""
        return hashlib.sha256(b"llamahost-master-key-id" + self.key).hexdigest()[:16]

    @classmethod
    def parse(cls, text: str) -> MasterKey:
        text = text.strip()
        for decode in (bytes.fromhex, base64.urlsafe_b64decode, base64.b64decode):
            try:
                key = decode(text)
            except ValueError:
                continue
            if len(key) == KEY_BYTES:
                return cls(key)
        raise CryptoError("a master key must be 32 bytes, given as 64 hex digits or base64")

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    def encoded(self) -> str:
        return base64.urlsafe_b64encode(self.key).decode()

    @staticmethod
    def key_file(data_dir: Path) -> Path:
        """``LLAMAHOST_MASTER_KEY_FILE``, else ``master.key`` in the data dir."""
        configured = env(ENV_MASTER_KEY_FILE)
        return Path(configured).expanduser() if configured else data_dir / "master.key"

    @classmethod
    def configured(cls, data_dir: Path) -> MasterKey | None:
        """``LLAMAHOST_MASTER_KEY``, else the key file if it exists, else None."""
        value = env(ENV_MASTER_KEY)
        if value:
            return cls.parse(value)
        path = cls.key_file(data_dir)
        if path.exists():
            try:
                return cls.parse(path.read_text())
            except CryptoError as exc:
                raise CryptoError(f"master key file {path}: {exc}") from None
        return None

    @classmethod
    def create_file(cls, path: Path) -> MasterKey:
        """Generate a master key into ``path`` (mode 0600, never overwriting), loudly."""
        master = cls.generate()
        master.write(path, exclusive=True)
        log.warning(
            "GENERATED A NEW MASTER KEY at %s. Everything stored encrypted is lost without it: "
            "back it up now, away from the database (or set LLAMAHOST_MASTER_KEY).",
            path,
        )
        return master

    def write(self, path: Path, *, exclusive: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.encoded() + "\n")
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, data_dir: Path) -> MasterKey:
        """``LLAMAHOST_MASTER_KEY``, else the key file (created with a loud warning if absent)."""
        return cls.configured(data_dir) or cls.create_file(cls.key_file(data_dir))

    def wrap(self, data_key: bytes, team_id: int, version: int, purpose: str = "data-key") -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + AESGCM(self.key).encrypt(nonce, data_key, _aad(purpose, team_id, version))

    def unwrap(self, wrapped: bytes, team_id: int, version: int, purpose: str = "data-key") -> bytes:
        try:
            return AESGCM(self.key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _aad(purpose, team_id, version))
        except InvalidTag:
            raise CryptoError(f"cannot unwrap {purpose} v{version} of team {team_id}: wrong master key or tampered") from None


@dataclass(frozen=True)
class DataKey:
    team_id: int
    version: int
    key: bytes = field(repr=False)
    # Built once per key: constructing the cipher costs more than sealing a small record.
    _aead: AESGCM = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_aead", AESGCM(self.key))

    @classmethod
    def generate(cls, team_id: int, version: int) -> DataKey:
        return cls(team_id, version, secrets.token_bytes(KEY_BYTES))

    def seal(self, plaintext: str | bytes, *context: object) -> bytes:
        """Encrypt, binding the ciphertext to this team and ``context`` (record id, field...)."""
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, data, _aad("content", self.team_id, *context))
        return _HEADER.pack(_MAGIC, self.version) + nonce + sealed


def blind_index(key: bytes, *parts: object, length: int = 32) -> str:
    """A keyed hash (HMAC-SHA256, hex, ``length`` digits) of ``parts``: equal inputs give
    equal tokens, so an encrypted value can still be looked up by equality; without the
    key a token says nothing about its input."""
    return hmac.new(key, _aad(*parts), hashlib.sha256).hexdigest()[:length]


def subkey(key: bytes, *context: object) -> bytes:
    """A key derived from ``key`` for one purpose (HMAC-SHA256 as a PRF, as in HKDF-Expand)."""
    return hmac.new(key, b"llamahost-subkey" + _aad(*context), hashlib.sha256).digest()


def key_version(blob: bytes) -> int:
    """Which data-key version sealed ``blob`` (to pick the key that opens it)."""
    if len(blob) < _HEADER.size + NONCE_BYTES + 16:
        raise CryptoError("ciphertext is truncated")
    magic, version = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise CryptoError("not a llamahost ciphertext")
    return version


def open_sealed(key: DataKey, blob: bytes, *context: object) -> bytes:
    if key_version(blob) != key.version:
        raise CryptoError(f"ciphertext was sealed with data key v{key_version(blob)}, not v{key.version}")
    body = blob[_HEADER.size :]
    try:
        return key._aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], _aad("content", key.team_id, *context))
    except InvalidTag:
        raise CryptoError("ciphertext does not open here: tampered, or moved from another record or team") from None
