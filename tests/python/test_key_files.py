"""hrx's key files as other libraries read them, and a facility signing with standard
tools only.

A hospital system is written in .NET, Java, PHP or Python, not against hrx's code: the
private key `hrx keygen` writes must load in Python's `cryptography` (PKCS#8 v1 PEM,
RFC 8410), a key `cryptography` writes must load in hrx, and an envelope signed by a few
lines of Python with it must be accepted by `hrx verify`.

Needs the hrx executable (`HRX_BIN`, exported by tests/run.sh); skipped without it,
except under `HRX_TEST_REQUIRE_SERVICES=1`, where it must be there.
"""

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hrx_ref import dsse, event_json

HRX = os.environ.get("HRX_BIN")
if not HRX and os.environ.get("HRX_TEST_REQUIRE_SERVICES") == "1":
    raise RuntimeError("HRX_BIN (the hrx executable) is required under HRX_TEST_REQUIRE_SERVICES=1")
pytestmark = pytest.mark.skipif(not HRX, reason="HRX_BIN (the hrx executable) not given")

FACILITY_EVENT = "application/vnd.hrx.facility-event.v1+protobuf"
RECORDED_AT = "2026-03-02T08:15:00Z"
BODY = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
    "subject": {"reference": "Patient/026062001234"},
    "effectiveDateTime": "2026-03-02T09:10:00+07:00",
    "valueQuantity": {"value": 8.1, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
}


def hrx(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HRX, *args], capture_output=True, text=True, env={**os.environ, "RUST_LOG": "error"})


def first_event() -> bytes:
    """The facility's first event (seq 1 of an empty chain), as the contract encodes it."""
    return event_json.encode_facility_event(
        {
            "header": {
                "event_id": "019cab6a-101c-701c-8000-00000000f001",
                "facility_id": "26012",
                "prev_hash": "00" * 32,
                "recorded_at": RECORDED_AT,
                "seq": 1,
            },
            "record": {
                "author": "CCHN-002614",
                "body": json.dumps(BODY),
                "content_type": "application/fhir+json",
                "kind": "OBSERVATION",
                "occurred_at": "2026-03-02T02:00:00Z",
                "patient_id": "026062001234",
                "sensitivity": [],
                "supersedes": "",
            },
        }
    )


def sign_with_cryptography(key: Ed25519PrivateKey, payload: bytes) -> dict:
    """What a facility's integrator writes: DSSE PAE, Ed25519, base64 — nothing of hrx's."""
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = key.sign(dsse.pae(FACILITY_EVENT, payload))
    return {
        "payloadType": FACILITY_EVENT,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": dsse.key_id(public), "sig": base64.b64encode(signature).decode()}],
    }


def test_a_key_hrx_writes_loads_in_cryptography_and_signs_what_hrx_accepts(tmp_path: Path):
    out = hrx("keygen", "--facility", "26012", "--out", str(tmp_path / "k"), "--valid-from", "2026-01-01T00:00:00Z")
    assert out.returncode == 0, out.stderr
    pem = (tmp_path / "k.key.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----"), pem[:40]
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    public = json.loads((tmp_path / "k.pub.json").read_text())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert public["public_key"] == raw.hex()
    assert public["key_id"] == dsse.key_id(raw)

    envelope = tmp_path / "event.dsse.json"
    envelope.write_text(json.dumps(sign_with_cryptography(key, first_event())))
    out = hrx("verify", str(envelope), "--key", str(tmp_path / "k.pub.json"), "--received-at", RECORDED_AT)
    assert out.returncode == 0 and out.stdout.startswith("accepted"), out.stdout + out.stderr

    # A signature over other bytes is refused: the check is real.
    tampered = sign_with_cryptography(key, first_event())
    tampered["payload"] = base64.b64encode(first_event().replace(b"CCHN-002614", b"CCHN-002615")).decode()
    envelope.write_text(json.dumps(tampered))
    out = hrx("verify", str(envelope), "--key", str(tmp_path / "k.pub.json"), "--received-at", RECORDED_AT)
    assert out.returncode != 0 and "BAD_SIGNATURE" in out.stdout, out.stdout + out.stderr


def test_a_key_cryptography_writes_signs_in_hrx(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "theirs.key.pem").write_bytes(pem)
    fhir = tmp_path / "obs.json"
    fhir.write_text(json.dumps(BODY))
    out = hrx(
        "sign", str(fhir), "--key", str(tmp_path / "theirs.key.pem"), "--facility", "26012",
        "--author", "CCHN-002614", "--seq", "1", "--recorded-at", RECORDED_AT,
        "--out", str(tmp_path / "signed.json"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads((tmp_path / "signed.json").read_text())
    [sig] = doc["signatures"]
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert sig["keyid"] == dsse.key_id(raw)
    payload = base64.b64decode(doc["payload"])
    key.public_key().verify(base64.b64decode(sig["sig"]), dsse.pae(doc["payloadType"], payload))
