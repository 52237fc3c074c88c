"""Envelope encryption primitives: round trips, tampering, moved ciphertexts, wrong keys."""

from __future__ import annotations

import pytest

from llamahost.store.crypto import CryptoError, DataKey, MasterKey, key_version, open_sealed


def test_round_trip_and_version():
    key = DataKey.generate(team_id=1, version=3)
    blob = key.seal("canary-Ω-123", "requests", "abc", "prompt")
    assert b"canary" not in blob
    assert key_version(blob) == 3
    assert open_sealed(key, blob, "requests", "abc", "prompt") == "canary-Ω-123".encode()


def test_flipped_byte_fails_clearly():
    key = DataKey.generate(1, 1)
    blob = bytearray(key.seal("secret", "r1"))
    blob[-5] ^= 0x01
    with pytest.raises(CryptoError, match="tampered"):
        open_sealed(key, bytes(blob), "r1")


def test_ciphertext_moved_to_another_record_or_team_fails():
    team_a = DataKey.generate(1, 1)
    blob = team_a.seal("secret", "record-1", "prompt")
    with pytest.raises(CryptoError):
        open_sealed(team_a, blob, "record-2", "prompt")
    with pytest.raises(CryptoError):
        open_sealed(team_a, blob, "record-1", "output")
    # Same key bytes presented as another team's key: the team is bound too.
    with pytest.raises(CryptoError):
        open_sealed(DataKey(2, 1, team_a.key), blob, "record-1", "prompt")


def test_wrong_master_key_cannot_unwrap():
    master, other = MasterKey.generate(), MasterKey.generate()
    data_key = DataKey.generate(7, 1)
    wrapped = master.wrap(data_key.key, 7, 1)
    assert master.unwrap(wrapped, 7, 1) == data_key.key
    with pytest.raises(CryptoError, match="wrong master key"):
        other.unwrap(wrapped, 7, 1)
    with pytest.raises(CryptoError):
        master.unwrap(wrapped, 8, 1)  # wrapped key moved to another team
    assert master.key_id != other.key_id


def test_master_key_parsing_and_file(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMAHOST_MASTER_KEY", raising=False)
    created = MasterKey.load(tmp_path)
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    assert MasterKey.load(tmp_path) == created
    assert MasterKey.parse(created.key.hex()) == created
    monkeypatch.setenv("LLAMAHOST_MASTER_KEY", created.encoded())
    assert MasterKey.load(tmp_path / "elsewhere") == created
    with pytest.raises(CryptoError):
        MasterKey.parse("too-short")


def test_truncated_or_foreign_blobs():
    key = DataKey.generate(1, 1)
    with pytest.raises(CryptoError):
        open_sealed(key, b"abc", "x")
    with pytest.raises(CryptoError):
        open_sealed(key, b"xyz" + bytes(40), "x")
