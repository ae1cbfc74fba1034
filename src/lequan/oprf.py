"""National pseudonyms by an oblivious PRF: RFC 9497, ristretto255-SHA512, verifiable
mode (VOPRF) with batch proofs, through the ``voprf`` package.

Both ends live here, since both must agree on every byte: central holds the
key and evaluates blinded inputs (``PseudonymKey``); a province blinds its
ID numbers, has central evaluate them, checks central's batch proof against
central's published public key and finalizes (``blind``, ``finalize``).
Central never sees an ID number; the province never holds the key, so it
cannot compute a pseudonym alone, nor test ID numbers offline.

The key is derived from a 32-byte seed with RFC 9497's ``DeriveKeyPair``
and the info string ``OPRF_INFO``; the pseudonym is the first 32 bytes of
the 64-byte OPRF output, as 64 lowercase hex characters. The input is the
normalised ID number's UTF-8 (``lequan.domain.identity.normalize_id_number``).

``voprf`` 0.2.0 quirk: ``Client.finalize_batch`` with a proof that does not
verify panics in Rust (``pyo3_runtime.PanicException``, a ``BaseException``,
not an ``Exception``) where ``finalize`` raises ``ValueError``; ``finalize``
below turns both into ``ProofInvalid``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from voprf import ristretto

from lequan.domain.errors import InvalidInput

__all__ = [
    "BLINDED_BYTES",
    "OPRF_INFO",
    "SEED_BYTES",
    "ProofInvalid",
    "PseudonymKey",
    "blind",
    "decode_blinded",
    "finalize",
    "public_key_from_hex",
]

OPRF_INFO = b"lequan national pseudonym v1"
SEED_BYTES = 32
BLINDED_BYTES = 32  # a ristretto255 element
PSEUDONYM_BYTES = 32


class ProofInvalid(Exception):
    """Central's answer does not verify against its public key: a wrong key, a
    tampered answer, or not central. Nothing derived from it may be used."""


class PseudonymKey:
    """Central's OPRF key: evaluates blinded inputs with a proof that it used this key."""

    __slots__ = ("_evaluator", "public_key_hex")

    def __init__(self, seed: bytes) -> None:
        assert len(seed) == SEED_BYTES, "the seed is 32 bytes"
        self._evaluator = ristretto.Evaluator.from_seed(seed, OPRF_INFO)
        self.public_key_hex: str = self._evaluator.public_key.serialize().hex()

    def __repr__(self) -> str:
        return f"PseudonymKey(public_key={self.public_key_hex[:16]}...)"

    def evaluate(self, blinded: Sequence[bytes]) -> bytes:
        """The batch answer (evaluated elements and one proof), serialised."""
        assert blinded, "at least one input"
        inputs = [decode_blinded_element(item, index) for index, item in enumerate(blinded)]
        return bytes(self._evaluator.evaluate_batch(inputs).serialize())

    def pseudonym_of(self, id_number: str) -> str:
        """The pseudonym computed with the key directly (RFC 9497 ``Evaluate``): for
        central's own tools and tests; a province always goes through ``blind``."""
        return bytes(self._evaluator.evaluate_known_input(id_number.encode("utf-8")))[
            :PSEUDONYM_BYTES
        ].hex()


def decode_blinded_element(data: bytes, index: int) -> Any:
    try:
        return ristretto.BlindedInput.deserialize(data)
    except ValueError:
        raise InvalidInput(
            "central_invalid_blinded_input",
            f"blinded input {index} is not a ristretto255 element",
            details={"index": index},
        ) from None


def decode_blinded(items: Sequence[str]) -> list[bytes]:
    """Blinded inputs as sent (base64 of 32 bytes each), as bytes."""
    decoded: list[bytes] = []
    for index, item in enumerate(items):
        try:
            raw = base64.b64decode(item.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            raw = b""
        if len(raw) != BLINDED_BYTES:
            raise InvalidInput(
                "central_invalid_blinded_input",
                f"blinded input {index} is not the base64 of {BLINDED_BYTES} bytes",
                details={"index": index},
            )
        decoded.append(raw)
    return decoded


def public_key_from_hex(text: str) -> Any:
    """Central's public key as the province's config holds it (64 hex characters)."""
    try:
        return ristretto.PublicKey.deserialize(bytes.fromhex(text))
    except ValueError:
        raise ValueError("the central public key is not a ristretto255 element in hex") from None


def blind(id_numbers: Sequence[str]) -> tuple[list[Any], list[bytes]]:
    """Blind each ID number with a fresh random scalar: the clients (kept by the
    province until the answer comes) and the blinded inputs (sent to central)."""
    clients: list[Any] = []
    blinded: list[bytes] = []
    for id_number in id_numbers:
        client, element = ristretto.Client.blind(id_number.encode("utf-8"))
        clients.append(client)
        blinded.append(bytes(element.serialize()))
    return clients, blinded


def finalize(clients: Sequence[Any], answer: bytes, public_key: Any) -> list[str]:
    """The pseudonyms, once central's batch proof verifies against ``public_key``;
    ``ProofInvalid`` otherwise (or when the answer is not one)."""
    try:
        output = ristretto.VerifiableBatchOutput.deserialize(answer)
        outputs = ristretto.Client.finalize_batch(list(clients), output, public_key)
    except ValueError:
        raise ProofInvalid("central's answer is malformed or does not match the inputs") from None
    except BaseException as error:
        if type(error).__name__ != "PanicException":
            raise
        raise ProofInvalid("central's proof does not verify against its public key") from None
    return [bytes(out)[:PSEUDONYM_BYTES].hex() for out in outputs]
