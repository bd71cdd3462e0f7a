"""DSSE v1 pre-authentication encoding, key ids, Ed25519 and the event hash."""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def pae(payload_type: str | bytes, payload: bytes) -> bytes:
    """PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body.

    LEN is the byte length in ASCII decimal without leading zeros; SP is one 0x20 byte.
    """
    t = payload_type.encode("utf-8") if isinstance(payload_type, str) else bytes(payload_type)
    body = bytes(payload)
    return b"".join(
        [b"DSSEv1 ", str(len(t)).encode("ascii"), b" ", t, b" ", str(len(body)).encode("ascii"), b" ", body]
    )


def event_hash(payload_type: str | bytes, payload: bytes) -> bytes:
    """SHA-256 of the PAE bytes."""
    return hashlib.sha256(pae(payload_type, payload)).digest()


def public_key_from_seed(seed: bytes) -> bytes:
    if len(seed) != 32:
        raise ValueError(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
    return (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def key_id(public_key: bytes) -> str:
    """Lowercase hex SHA-256 of the raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    return hashlib.sha256(public_key).hexdigest()


def sign(seed: bytes, payload_type: str | bytes, payload: bytes) -> bytes:
    if len(seed) != 32:
        raise ValueError(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed).sign(pae(payload_type, payload))


def verify(public_key: bytes, payload_type: str | bytes, payload: bytes, signature: bytes) -> bool:
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, pae(payload_type, payload))
    except (InvalidSignature, ValueError):
        return False
    return True
