"""The AES-GCM key ring: round trips, field binding, tampering, rotation, indexes, key files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lequan.adapters.crypto import (
    EXAMPLE_KEY_FILE_JSON,
    AesGcmKeyRing,
    KeyRingError,
    example_keyring,
    generate_key_file,
    generate_keyring,
    is_example_keyring,
    keyring_from_json,
    keyring_to_json,
    load_key_file,
)
from lequan.ports import KeyMismatch, KeyRing

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
BIDX_KEY = bytes(range(64, 96))
BIDX_KEY_2 = bytes(range(96, 128))


def _ring(
    keys: dict[str, bytes] | None = None, active: str = "k1", bidx: bytes = BIDX_KEY
) -> AesGcmKeyRing:
    return AesGcmKeyRing(keys=keys or {"k1": KEY_A}, active_key_id=active, blind_index_key=bidx)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def _key_file_json(**overrides: object) -> str:
    document: dict[str, object] = {
        "version": 1,
        "active_key_id": "k1",
        "keys": {"k1": _b64(KEY_A)},
        "blind_index_key": _b64(BIDX_KEY),
    }
    document.update(overrides)
    return json.dumps(document)


def test_it_is_a_key_ring() -> None:
    keyring: KeyRing = _ring()  # mypy checks the structural match
    assert keyring.active_key_id == "k1"


# Encryption


@pytest.mark.parametrize(
    "plaintext",
    ["", "张三", "欧阳娜娜", "阿依古丽·买买提", "310101199001011234", "13812345678", "😀"],
)
def test_round_trip(plaintext: str) -> None:
    keyring = _ring()
    key_id, ciphertext = keyring.encrypt("name", plaintext)
    assert key_id == "k1"
    assert keyring.decrypt("name", key_id, ciphertext) == plaintext


@given(st.text(max_size=200))
def test_round_trip_of_any_text(plaintext: str) -> None:
    keyring = _ring()
    key_id, ciphertext = keyring.encrypt("name", plaintext)
    assert keyring.decrypt("name", key_id, ciphertext) == plaintext
    assert len(ciphertext) == 12 + len(plaintext.encode("utf-8")) + 16


def test_ciphertext_does_not_contain_the_plaintext() -> None:
    _, ciphertext = _ring().encrypt("id_number", "310101199001011234")
    assert b"310101199001011234" not in ciphertext


def test_two_encryptions_of_one_value_differ() -> None:
    keyring = _ring()
    ciphertexts = {keyring.encrypt("phone", "13812345678")[1] for _ in range(50)}
    assert len(ciphertexts) == 50
    assert len({ciphertext[:12] for ciphertext in ciphertexts}) == 50  # fresh nonces


def test_ciphertext_moved_to_another_field_fails() -> None:
    keyring = _ring()
    key_id, ciphertext = keyring.encrypt("phone", "13812345678")
    with pytest.raises(KeyMismatch, match="failed authentication") as error:
        keyring.decrypt("id_number", key_id, ciphertext)
    assert "13812345678" not in str(error.value)


@pytest.mark.parametrize("position", [0, 5, 11, 12, 20, -1])
def test_tampered_ciphertext_fails(position: int) -> None:
    keyring = _ring()
    key_id, ciphertext = keyring.encrypt("name", "张三")
    tampered = bytearray(ciphertext)
    tampered[position] ^= 0x01
    with pytest.raises(KeyMismatch) as error:
        keyring.decrypt("name", key_id, bytes(tampered))
    assert "张三" not in str(error.value)
    assert error.value.__cause__ is None
    assert error.value.__suppress_context__


@pytest.mark.parametrize("length", [0, 1, 12, 27])
def test_truncated_ciphertext_fails(length: int) -> None:
    keyring = _ring()
    key_id, ciphertext = keyring.encrypt("name", "张三")
    with pytest.raises(KeyMismatch):
        keyring.decrypt("name", key_id, ciphertext[:length])


def test_unknown_key_id_fails() -> None:
    keyring = _ring()
    _, ciphertext = keyring.encrypt("name", "张三")
    with pytest.raises(KeyMismatch, match="unknown key id 'k9'"):
        keyring.decrypt("name", "k9", ciphertext)


def test_another_key_under_the_same_id_fails() -> None:
    key_id, ciphertext = _ring({"k1": KEY_A}).encrypt("name", "张三")
    with pytest.raises(KeyMismatch, match="failed authentication"):
        _ring({"k1": KEY_B}).decrypt("name", key_id, ciphertext)


def test_rotation_keeps_old_data_readable() -> None:
    old = _ring({"k1": KEY_A}, active="k1")
    old_key_id, old_ciphertext = old.encrypt("phone", "13812345678")

    rotated = _ring({"k1": KEY_A, "k2": KEY_B}, active="k2")
    assert rotated.active_key_id == "k2"
    assert rotated.key_ids == ("k1", "k2")
    new_key_id, new_ciphertext = rotated.encrypt("phone", "13912345678")
    assert new_key_id == "k2"

    assert rotated.decrypt("phone", old_key_id, old_ciphertext) == "13812345678"
    assert rotated.decrypt("phone", new_key_id, new_ciphertext) == "13912345678"
    with pytest.raises(KeyMismatch, match="unknown key id 'k2'"):
        old.decrypt("phone", new_key_id, new_ciphertext)


def test_repr_shows_no_key_material() -> None:
    text = repr(_ring({"k1": KEY_A, "k2": KEY_B}, active="k2"))
    assert text == "AesGcmKeyRing(active_key_id='k2', key_ids=('k1', 'k2'))"
    for key in (KEY_A, KEY_B, BIDX_KEY):
        assert key.hex() not in text
        assert _b64(key) not in text


# Blind index


def test_blind_index_is_deterministic_hex_sha256() -> None:
    keyring = _ring()
    digest = keyring.blind_index("id_number", "310101199001011234")
    assert digest == keyring.blind_index("id_number", "310101199001011234")
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert digest == digest.lower()


def test_blind_index_is_the_documented_hmac() -> None:
    expected = hmac.new(BIDX_KEY, b"phone\x0013812345678", hashlib.sha256).hexdigest()
    assert _ring().blind_index("phone", "13812345678") == expected
    expected_name = hmac.new(BIDX_KEY, "name\x00张三".encode(), hashlib.sha256).hexdigest()
    assert _ring().blind_index("name", "张三") == expected_name


def test_blind_index_differs_by_field_value_and_key() -> None:
    keyring = _ring()
    base = keyring.blind_index("phone", "13812345678")
    assert keyring.blind_index("id_number", "13812345678") != base
    assert keyring.blind_index("phone", "13912345678") != base
    assert _ring(bidx=BIDX_KEY_2).blind_index("phone", "13812345678") != base
    # the NUL separator keeps ("ab", "c") and ("a", "bc") apart
    assert keyring.blind_index("ab", "c") != keyring.blind_index("a", "bc")


def test_blind_index_does_not_depend_on_the_encryption_keys() -> None:
    one = _ring({"k1": KEY_A}, active="k1")
    rotated = _ring({"k1": KEY_A, "k2": KEY_B}, active="k2")
    assert one.blind_index("phone", "13812345678") == rotated.blind_index("phone", "13812345678")


# Construction


@pytest.mark.parametrize(
    ("keys", "active", "bidx", "message"),
    [
        ({}, "k1", BIDX_KEY, "at least one"),
        ({"k1": KEY_A[:16]}, "k1", BIDX_KEY, "encryption key 'k1' must be 32 bytes, got 16"),
        ({"k1": KEY_A + b"\x00"}, "k1", BIDX_KEY, "must be 32 bytes, got 33"),
        ({"k1": KEY_A}, "k1", BIDX_KEY[:31], "blind-index key must be 32 bytes, got 31"),
        ({"k1": KEY_A}, "k2", BIDX_KEY, "active key id 'k2' is not among the keys"),
        ({"k1": KEY_A}, "k1", KEY_A, "must differ from every encryption key"),
        ({"": KEY_A}, "", BIDX_KEY, "key id ''"),
        ({"k 1": KEY_A}, "k 1", BIDX_KEY, "key id 'k 1'"),
        ({"k" * 33: KEY_A}, "k" * 33, BIDX_KEY, "1 to 32 characters"),
    ],
)
def test_bad_key_rings_are_refused(
    keys: dict[str, bytes], active: str, bidx: bytes, message: str
) -> None:
    with pytest.raises(KeyRingError, match=message):
        AesGcmKeyRing(keys=keys, active_key_id=active, blind_index_key=bidx)


def test_generated_key_rings_are_random() -> None:
    one, two = generate_keyring(), generate_keyring()
    assert one.blind_index("phone", "13812345678") != two.blind_index("phone", "13812345678")
    key_id, ciphertext = one.encrypt("phone", "13812345678")
    with pytest.raises(KeyMismatch):
        two.decrypt("phone", key_id, ciphertext)


# Key files


def test_key_file_json_round_trips() -> None:
    keyring = _ring({"k1": KEY_A, "k2": KEY_B}, active="k2")
    text = keyring_to_json(keyring)
    document = json.loads(text)
    assert document == {
        "version": 1,
        "active_key_id": "k2",
        "keys": {"k1": _b64(KEY_A), "k2": _b64(KEY_B)},
        "blind_index_key": _b64(BIDX_KEY),
    }
    again = keyring_from_json(text)
    key_id, ciphertext = keyring.encrypt("name", "张三")
    assert again.decrypt("name", key_id, ciphertext) == "张三"
    assert again.blind_index("name", "张三") == keyring.blind_index("name", "张三")


def test_generate_key_file_writes_0600_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "nested" / "keys.json"
    generated = generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["version"] == 1
    assert document["active_key_id"] == "k1"
    assert len(base64.b64decode(document["keys"]["k1"])) == 32
    assert len(base64.b64decode(document["blind_index_key"])) == 32

    loaded = load_key_file(path)
    key_id, ciphertext = generated.encrypt("id_number", "310101199001011234")
    assert loaded.decrypt("id_number", key_id, ciphertext) == "310101199001011234"
    assert loaded.blind_index("phone", "13812345678") == generated.blind_index(
        "phone", "13812345678"
    )
    assert not is_example_keyring(loaded)


def test_generate_key_file_sets_0600_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o377)
    try:
        generate_key_file(tmp_path / "keys.json")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600


def test_generate_key_file_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = generate_key_file(path)
    before = path.read_bytes()
    with pytest.raises(KeyRingError, match="already exists"):
        generate_key_file(path)
    assert path.read_bytes() == before
    key_id, ciphertext = first.encrypt("name", "张三")
    assert load_key_file(path).decrypt("name", key_id, ciphertext) == "张三"


def test_load_key_file_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="does not exist"):
        load_key_file(tmp_path / "absent.json")


def test_load_key_file_names_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(_key_file_json(keys={"k1": _b64(KEY_A[:16])}), encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(KeyRingError, match=r"keys\.json.*must be 32 bytes, got 16"):
        load_key_file(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        (_key_file_json(version=2), "version 2"),
        (_key_file_json(version="1"), "version '1'"),
        (_key_file_json(version=True), "version True"),
        (_key_file_json(active_key_id=1), "active_key_id must be a string"),
        (_key_file_json(active_key_id="k2"), "'k2' is not among the keys"),
        (_key_file_json(keys={}), "non-empty object"),
        (_key_file_json(keys=["k1"]), "non-empty object"),
        (_key_file_json(keys={"k1": "not base64!"}), "not valid base64"),
        (_key_file_json(keys={"k1": 42}), "must be a base64 string"),
        (_key_file_json(keys={"k1": _b64(KEY_A[:16])}), "must be 32 bytes, got 16"),
        (_key_file_json(blind_index_key=_b64(BIDX_KEY + b"!")), "must be 32 bytes, got 33"),
        (_key_file_json(blind_index_key="é"), "not valid base64"),
        (_key_file_json(blind_idx_key="x"), "unknown fields: blind_idx_key"),
        (json.dumps({"version": 1}), "lacks active_key_id, blind_index_key, keys"),
    ],
)
def test_bad_key_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message) as error:
        keyring_from_json(text)
    assert _b64(KEY_A) not in str(error.value)
    assert _b64(BIDX_KEY) not in str(error.value)


def test_a_comment_is_allowed() -> None:
    keyring = keyring_from_json(_key_file_json(comment="production, rotated 2025-01"))
    assert keyring.active_key_id == "k1"


# The example key


def test_example_key_file_is_a_valid_key_file() -> None:
    keyring = keyring_from_json(EXAMPLE_KEY_FILE_JSON)
    assert is_example_keyring(keyring)
    assert is_example_keyring(example_keyring())
    assert "EXAMPLE" in EXAMPLE_KEY_FILE_JSON
    key_id, ciphertext = keyring.encrypt("name", "张三")
    assert example_keyring().decrypt("name", key_id, ciphertext) == "张三"


def test_an_example_key_anywhere_in_the_ring_counts() -> None:
    example = json.loads(EXAMPLE_KEY_FILE_JSON)
    example_key = base64.b64decode(example["keys"]["example"])
    example_bidx = base64.b64decode(example["blind_index_key"])
    assert is_example_keyring(_ring({"k1": example_key, "k2": KEY_B}, active="k2"))
    assert is_example_keyring(_ring(bidx=example_bidx))
    assert not is_example_keyring(_ring({"k1": KEY_A, "k2": KEY_B}, active="k2"))
    assert not is_example_keyring(generate_keyring())


def test_example_key_file_written_to_disk_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "example.json"
    path.write_text(EXAMPLE_KEY_FILE_JSON, encoding="utf-8")
    path.chmod(0o600)
    assert is_example_keyring(load_key_file(path))
