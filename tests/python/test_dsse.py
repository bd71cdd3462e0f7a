"""PAE, key ids and signatures against the DSSE v1 specification and RFC 8032."""

import hashlib

import pytest

from hrx_ref import dsse


def test_pae_dsse_spec_example():
    # The example in the DSSE v1 protocol description.
    assert (
        dsse.pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_empty_fields():
    assert dsse.pae("", b"") == b"DSSEv1 0  0 "


def test_pae_lengths_are_bytes_not_characters():
    t = "application/x-\u00e9"  # é is two UTF-8 bytes
    assert dsse.pae(t, b"\x00\xff") == b"DSSEv1 16 application/x-\xc3\xa9 2 \x00\xff"


def test_pae_no_leading_zeros_and_multi_digit_length():
    body = b"x" * 1000
    assert dsse.pae("t", body) == b"DSSEv1 1 t 1000 " + body


def test_event_hash_is_sha256_of_pae():
    assert dsse.event_hash("a", b"b") == hashlib.sha256(b"DSSEv1 1 a 1 b").digest()


# RFC 8032 section 7.1, TEST 1 (empty message) — used here for the key derivation.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def test_public_key_from_seed_rfc8032():
    assert dsse.public_key_from_seed(RFC8032_SEED) == RFC8032_PUB


def test_key_id_is_lowercase_hex_sha256():
    kid = dsse.key_id(RFC8032_PUB)
    assert kid == hashlib.sha256(RFC8032_PUB).hexdigest()
    assert kid == kid.lower() and len(kid) == 64


def test_sign_verify_roundtrip_and_tamper():
    sig = dsse.sign(RFC8032_SEED, "t", b"payload")
    assert len(sig) == 64
    assert dsse.verify(RFC8032_PUB, "t", b"payload", sig)
    assert not dsse.verify(RFC8032_PUB, "t", b"payloaD", sig)
    assert not dsse.verify(RFC8032_PUB, "u", b"payload", sig)
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    assert not dsse.verify(RFC8032_PUB, "t", b"payload", bad)


def test_signature_is_over_pae_not_payload():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED).sign(b"DSSEv1 1 t 7 payload")
    assert dsse.sign(RFC8032_SEED, "t", b"payload") == raw


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33])
def test_key_id_rejects_wrong_length(bad):
    with pytest.raises(ValueError):
        dsse.key_id(bad)
