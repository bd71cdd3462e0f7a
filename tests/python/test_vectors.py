"""Checks every tests/vectors/*.json with the independent implementation in hrx_ref/.

For each vector: (b) the envelope rebuilt from `input` equals `envelope` byte for byte,
(c) `pae` and `event_hash` recomputed from `envelope` match, (d) the verifier reaches the
same verdict, reason, field and extends_chain as `expected`. keys.json is checked key by
key (seed → public key → key id). An empty or thin vector directory fails.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hrx_ref import KNOWN_PAYLOAD_TYPES, PATIENT_STATEMENT_TYPE, VECTORS_DIR, dsse
from hrx_ref.proto import load
from hrx_ref.vectors import build_envelope, first_difference, load_json, load_keys
from hrx_ref.verify import Context, Envelope, verify

MIN_VALID = 5
MIN_INVALID = 12

KEYS_PATH = VECTORS_DIR / "keys.json"
VECTOR_PATHS = sorted(p for p in VECTORS_DIR.glob("*.json") if p.name != "keys.json")
KEY_ENTRIES = load_json(KEYS_PATH)["keys"] if KEYS_PATH.is_file() else []


@pytest.fixture(scope="module")
def keys():
    assert KEYS_PATH.is_file(), f"{KEYS_PATH} is missing"
    return load_keys(KEYS_PATH)


def _vector_params():
    return [pytest.param(p, id=p.stem) for p in VECTOR_PATHS]


def _describe_payloads(ours: bytes, theirs: bytes, payload_type: str) -> str:
    """Decode both payloads (when possible) so a byte mismatch can be traced to a field."""
    from google.protobuf import text_format

    pb = load()
    cls = pb.events.PatientStatement if payload_type == PATIENT_STATEMENT_TYPE else pb.events.FacilityEvent
    out = []
    for label, data in (("ours", ours), ("theirs", theirs)):
        try:
            msg = cls.FromString(data)
            out.append(f"--- {label} decoded:\n{text_format.MessageToString(msg)}")
        except Exception as e:  # noqa: BLE001 - diagnostics only
            out.append(f"--- {label}: does not decode ({e})")
    return "\n".join(out)


# ---------------------------------------------------------------------------- keys.json


def test_keys_file_present():
    assert KEYS_PATH.is_file(), f"{KEYS_PATH} is missing: generate the vectors first"
    assert KEY_ENTRIES, "keys.json lists no keys"


@pytest.mark.parametrize("entry", KEY_ENTRIES, ids=[k.get("name", "?") for k in KEY_ENTRIES])
def test_key_pair(entry):
    seed = bytes.fromhex(entry["seed"])
    assert len(seed) == 32
    public_key = dsse.public_key_from_seed(seed)
    assert public_key.hex() == entry["public_key"], "seed does not give the listed public key"
    assert dsse.key_id(public_key) == entry["key_id"], "key_id is not lowercase hex SHA-256 of the public key"
    assert entry["key_id"] == hashlib.sha256(bytes.fromhex(entry["public_key"])).hexdigest()
    fid = entry["facility_id"]
    assert fid == "" or (len(fid) == 5 and fid.isascii() and fid.isdigit()), f"odd facility_id {fid!r}"
    pid = entry.get("patient_id")
    if pid is not None:
        assert fid == "", "a patient's key belongs to no facility"
        assert len(pid) == 12 and pid.isascii() and pid.isdigit(), f"odd patient_id {pid!r}"


def test_key_names_unique():
    names = [k["name"] for k in KEY_ENTRIES]
    assert len(names) == len(set(names))


# ---------------------------------------------------------------------------- coverage


def test_enough_vectors():
    valid = [p for p in VECTOR_PATHS if p.stem.startswith("valid-")]
    invalid = [p for p in VECTOR_PATHS if p.stem.startswith("invalid-")]
    assert len(valid) >= MIN_VALID, f"only {len(valid)} valid-* vectors in {VECTORS_DIR} (need {MIN_VALID})"
    assert len(invalid) >= MIN_INVALID, f"only {len(invalid)} invalid-* vectors in {VECTORS_DIR} (need {MIN_INVALID})"
    others = [p.name for p in VECTOR_PATHS if p not in valid and p not in invalid]
    assert not others, f"vectors named neither valid-* nor invalid-*: {others}"


# ---------------------------------------------------------------------------- per vector


@pytest.mark.parametrize("path", _vector_params())
def test_vector_shape(path: Path):
    v = load_json(path)
    assert v["name"] == path.stem, "name does not match the file name"
    exp = v["expected"]
    if path.stem.startswith("valid-"):
        assert exp["verdict"] == "accepted"
    else:
        assert exp["verdict"] in ("rejected", "duplicate")
    if exp["verdict"] == "rejected":
        reasons = load().common.RejectionReason
        assert "REJECTION_REASON_" + exp["reason"] in reasons.keys(), f"unknown reason {exp['reason']!r}"
    else:
        assert exp["reason"] is None
    if exp["field"] is not None:
        assert exp["reason"] == "INVALID_FIELD"


@pytest.mark.parametrize("path", _vector_params())
def test_envelope_rebuilt_from_input(path: Path, keys):
    v = load_json(path)
    ours = build_envelope(v["input"], keys)
    theirs = Envelope.from_json(v["envelope"])
    assert ours.payload_type == theirs.payload_type
    if ours.payload != theirs.payload:
        pytest.fail(
            "payload differs: "
            + first_difference(ours.payload, theirs.payload)
            + "\n"
            + _describe_payloads(ours.payload, theirs.payload, ours.payload_type)
        )
    assert ours.key_id == theirs.key_id, "key_id differs"
    if ours.signature != theirs.signature:
        pytest.fail("signature differs: " + first_difference(ours.signature, theirs.signature))


@pytest.mark.parametrize("path", _vector_params())
def test_pae_and_event_hash(path: Path):
    v = load_json(path)
    env = Envelope.from_json(v["envelope"])
    pae = dsse.pae(env.payload_type, env.payload)
    if pae.hex() != v["pae"]:
        pytest.fail("pae differs: " + first_difference(pae, bytes.fromhex(v["pae"])))
    assert hashlib.sha256(pae).hexdigest() == v["event_hash"]
    assert dsse.event_hash(env.payload_type, env.payload).hex() == v["event_hash"]


@pytest.mark.parametrize("path", _vector_params())
def test_verdict(path: Path):
    v = load_json(path)
    got = verify(Envelope.from_json(v["envelope"]), Context.from_json(v["context"]))
    assert got.as_dict() == v["expected"], v.get("description", "")


def test_payload_types_are_the_contracts():
    assert KNOWN_PAYLOAD_TYPES == (
        "application/vnd.hrx.facility-event.v1+protobuf",
        "application/vnd.hrx.registry-event.v1+protobuf",
        "application/vnd.hrx.patient-statement.v1+protobuf",
        "application/vnd.hrx.patient-key-proof.v1+protobuf",
        "application/vnd.hrx.patient-request.v1+protobuf",
    )


@pytest.mark.parametrize("path", _vector_params())
def test_statement_vectors_never_extend_a_chain(path: Path):
    v = load_json(path)
    assert v["context"]["submitted_to"] in ("ingest", "patient_service")
    if v["context"]["submitted_to"] == "ingest":
        assert v["context"].get("patient") is None, "a facility event's context has no patient state"
        return
    assert v["context"].get("received_at") is not None, "a statement's context has received_at"
    assert v["expected"]["extends_chain"] is False
    assert v["expected"]["verdict"] in ("accepted", "rejected")
    assert v["context"].get("facility_facts") is None


def test_the_new_rules_are_covered():
    reasons = {load_json(p)["expected"]["reason"] for p in VECTOR_PATHS}
    for r in ("PATIENT_KEY_NOT_VALID", "BAD_PROOF_OF_POSSESSION", "NO_STANDING",
              "ATTESTED_GRANT_OUT_OF_BOUNDS", "NOT_GRANTOR", "BREAK_GLASS_LIMIT",
              "RECORDED_AT_OUT_OF_RANGE", "RECORDED_AT_DECREASING", "SUPERSEDES_FOREIGN_RECORD"):
        assert r in reasons, f"no vector for {r}"
    statements = [p for p in VECTOR_PATHS if load_json(p)["context"]["submitted_to"] == "patient_service"]
    assert len(statements) >= 10
