"""Reading tests/vectors/*.json and rebuilding a vector's envelope from its `input`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import dsse
from .event_json import encode_facility_event, encode_key_proof, encode_patient_statement
from .verify import Envelope


@dataclass(frozen=True)
class KeyPair:
    name: str
    facility_id: str
    seed: bytes
    public_key: bytes
    key_id: str
    patient_id: str | None = None


def load_json(path: Path) -> dict:
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def load_keys(path: Path) -> dict[str, KeyPair]:
    out: dict[str, KeyPair] = {}
    for k in load_json(path)["keys"]:
        kp = KeyPair(
            name=k["name"],
            facility_id=k["facility_id"],
            seed=bytes.fromhex(k["seed"]),
            public_key=bytes.fromhex(k["public_key"]),
            key_id=k["key_id"],
            patient_id=k.get("patient_id"),
        )
        if kp.name in out:
            raise ValueError(f"duplicate key name {kp.name!r} in {path}")
        out[kp.name] = kp
    return out


INPUT_KEYS = {"signer", "payload_type", "event", "statement", "proof", "payload_override", "tamper"}
PROOF_KEYS = {"signer", "payload_type", "proof", "payload_override", "key_id", "tamper"}


def build_payload(inp: dict) -> bytes:
    override = inp.get("payload_override")
    if override is not None:
        return bytes.fromhex(override)
    event, statement = inp.get("event"), inp.get("statement")
    if event is not None and statement is not None:
        raise ValueError("input has both an event and a statement")
    if event is not None:
        return encode_facility_event(event)
    if statement is not None:
        return encode_patient_statement(statement)
    raise ValueError("input has neither event, statement nor payload_override")


def apply_tamper(payload: bytes, signature: bytes, tamper: dict | None) -> tuple[bytes, bytes]:
    """Alter the signed envelope after signing.

    {"field", "byte", "xor", "truncate_to"}: either XOR one byte (`byte`, `xor`) or cut
    the field to `truncate_to` bytes (then `byte` and `xor` are null).
    """
    if tamper is None:
        return payload, signature
    unknown = set(tamper) - {"field", "byte", "xor", "truncate_to"}
    if unknown:
        raise ValueError(f"unknown tamper keys {sorted(unknown)}")
    which = tamper["field"]
    if which not in ("payload", "signature"):
        raise ValueError(f"unknown tamper field {which!r}")
    buf = bytearray(payload if which == "payload" else signature)
    index, xor, cut = tamper.get("byte"), tamper.get("xor"), tamper.get("truncate_to")
    if (index is None) != (xor is None):
        raise ValueError("tamper needs both byte and xor, or neither")
    if (index is None) == (cut is None):
        raise ValueError("tamper needs exactly one of byte/xor and truncate_to")
    if cut is not None:
        if not 0 <= cut < len(buf):
            raise ValueError(f"truncate_to {cut} does not shorten the {len(buf)}-byte {which}")
        del buf[cut:]
    else:
        if not 0 <= index < len(buf):
            raise ValueError(f"tamper byte {index} outside {which} of {len(buf)} bytes")
        if not 0 <= xor <= 255:
            raise ValueError(f"tamper xor {xor} is not a byte")
        buf[index] ^= xor
    return (bytes(buf), signature) if which == "payload" else (payload, bytes(buf))


def _sign(keys: dict[str, KeyPair], signer_name: str, payload_type: str, payload: bytes,
          key_id: str | None, tamper: dict | None) -> Envelope:
    signer = keys[signer_name]
    signature = dsse.sign(signer.seed, payload_type, payload)
    # The key id is derived from the seed, not copied from keys.json.
    kid = key_id if key_id is not None else dsse.key_id(dsse.public_key_from_seed(signer.seed))
    payload, signature = apply_tamper(payload, signature, tamper)
    return Envelope(payload_type=payload_type, payload=payload, key_id=kid, signature=signature)


def build_proof(recipe: dict, keys: dict[str, KeyPair]) -> dict:
    """The nested proof envelope (JSON form, hex fields) a proof recipe describes."""
    unknown = set(recipe) - PROOF_KEYS
    if unknown:
        raise ValueError(f"unknown proof keys {sorted(unknown)}")
    override = recipe.get("payload_override")
    if override is not None:
        payload = bytes.fromhex(override)
    elif recipe.get("proof") is not None:
        payload = encode_key_proof(recipe["proof"])
    else:
        raise ValueError("proof recipe has neither proof nor payload_override")
    env = _sign(keys, recipe["signer"], recipe["payload_type"], payload, recipe.get("key_id"), recipe.get("tamper"))
    return {
        "payload_type": env.payload_type,
        "payload": env.payload.hex(),
        "key_id": env.key_id,
        "signature": env.signature.hex(),
    }


def nested_proof(inp: dict) -> dict | None:
    """The proof envelope inside `input.event` or `input.statement`, in JSON form."""
    body = inp.get("event") or inp.get("statement") or {}
    for name in ("patient_key_enrollment", "key_rotation"):
        if isinstance(body.get(name), dict) and body[name].get("proof") is not None:
            return body[name]["proof"]
    return None


def build_envelope(inp: dict, keys: dict[str, KeyPair]) -> Envelope:
    """The envelope as the README says it is made from `input`, computed independently.

    When `input.proof` is given, the nested proof envelope must be what it makes.
    """
    unknown = set(inp) - INPUT_KEYS
    if unknown:
        raise ValueError(f"unknown input keys {sorted(unknown)}")
    recipe = inp.get("proof")
    if recipe is not None:
        built = build_proof(recipe, keys)
        if nested_proof(inp) != built:
            raise ValueError(f"the nested proof is not what input.proof makes: {built}")
    return _sign(keys, inp["signer"], inp["payload_type"], build_payload(inp), None, inp.get("tamper"))


def first_difference(a: bytes, b: bytes) -> str:
    """Human-readable account of where two byte strings differ."""
    n = min(len(a), len(b))
    i = next((i for i in range(n) if a[i] != b[i]), n)
    lo, hi = max(0, i - 8), i + 16
    return (
        f"lengths {len(a)} vs {len(b)}; first difference at byte {i}: "
        f"ours[{lo}:{hi}]={a[lo:hi].hex()} theirs[{lo}:{hi}]={b[lo:hi].hex()}"
    )
