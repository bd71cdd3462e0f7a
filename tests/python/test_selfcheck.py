"""The reference implementation on fixtures it makes itself (independent of tests/vectors).

Expected outcomes here are read off tests/vectors/README.md by hand; they guard the Python
side against regressions and keep it meaningful before the Rust vectors exist.
"""

from __future__ import annotations

import copy
import json

import pytest

from hrx_ref import FACILITY_EVENT_TYPE, REGISTRY_EVENT_TYPE, dsse
from hrx_ref.event_json import EventJsonError, facility_event_from_json
from hrx_ref.proto import load
from hrx_ref.vectors import KeyPair, apply_tamper, build_envelope, load_json, load_keys
from hrx_ref.verify import Context, Envelope, verify

PATIENT = "001085012345"
ZERO = "00" * 32


def _kp(name, fid, fill):
    seed = bytes([fill]) * 32
    pub = dsse.public_key_from_seed(seed)
    return KeyPair(name, fid, seed, pub, dsse.key_id(pub))


KEYS = {
    k.name: k
    for k in (
        _kp("facility-10001", "10001", 1),
        _kp("facility-10002", "10002", 2),
        _kp("national-root", "", 3),
        _kp("facility-10001-revoked", "10001", 4),
        _kp("facility-10001-future", "10001", 5),
        _kp("not-registered", "10001", 6),
    )
}


def _ctx_keys():
    out = []
    for k in KEYS.values():
        if k.name == "not-registered":
            continue
        out.append(
            {
                "key_id": k.key_id,
                "facility_id": k.facility_id,
                "public_key": k.public_key.hex(),
                "valid_from": "2026-04-01T00:00:00Z" if k.name.endswith("future") else "2026-01-01T00:00:00Z",
                "revoked_at": "2026-03-02T08:15:00Z" if k.name.endswith("revoked") else None,
            }
        )
    return out


HEADER = {
    "event_id": "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "facility_id": "10001",
    "seq": 1,
    "prev_hash": ZERO,
    "recorded_at": "2026-03-02T08:15:00Z",
}
OBS_BODY = json.dumps(
    {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{PATIENT}"}},
    separators=(",", ":"),
)
RECORD = {
    "header": HEADER,
    "record": {
        "patient_id": PATIENT,
        "kind": "OBSERVATION",
        "occurred_at": "2026-03-02T07:50:00.250Z",
        "author": "CCHN-000123",
        "sensitivity": [],
        "supersedes": "",
        "content_type": "application/fhir+json",
        "body": OBS_BODY,
    },
}
GRANT = {
    "header": HEADER,
    "consent_grant": {
        "patient_id": PATIENT,
        "purposes": ["TREATMENT", "REFERRAL"],
        "kinds": [],
        "include_sensitive": ["HIV"],
        "data_from": "2025-01-01T00:00:00Z",
        "data_until": None,
        "expires_at": "2026-09-01T00:00:00+07:00",
        "evidence": {"form_id": "FORM-1", "sha256": "ab" * 32},
        "grantee_facility_id": "10002",
    },
}
REVOCATION = {
    "header": HEADER,
    "consent_revocation": {
        "patient_id": PATIENT,
        "grant_event_id": "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
        "evidence": {"form_id": "FORM-2", "sha256": "cd" * 32},
    },
}
BREAK_GLASS = {
    "header": HEADER,
    "break_glass": {
        "patient_id": PATIENT,
        "reason": "unconscious on arrival",
        "clinician": "CCHN-000999",
        "duration_seconds": 3600,
    },
}


def _input(event, signer="facility-10001", payload_type=FACILITY_EVENT_TYPE, override=None, tamper=None):
    return {
        "signer": signer,
        "payload_type": payload_type,
        "event": event,
        "payload_override": override,
        "tamper": tamper,
    }


def _run(inp, head=None):
    env = build_envelope(inp, KEYS)
    return verify(env, Context.from_json({"keys": _ctx_keys(), "head": head})).as_dict(), env


def _exp(verdict, reason=None, field=None, extends=False):
    return {"verdict": verdict, "reason": reason, "field": field, "extends_chain": extends}


def _with(event, path, value):
    ev = copy.deepcopy(event)
    *parents, last = path.split(".")
    node = ev
    for p in parents:
        node = node[p]
    if value is _DEL:
        del node[last]
    else:
        node[last] = value
    return ev


_DEL = object()


def _head_of(event, seq=None):
    env = build_envelope(_input(event), KEYS)
    h = dsse.event_hash(env.payload_type, env.payload)
    return {"seq": seq or event["header"]["seq"], "event_hash": h.hex(), "event_id": event["header"]["event_id"]}


ACCEPT = _exp("accepted", extends=True)


def _field(f):
    return _exp("rejected", "INVALID_FIELD", f, True)


CASES = [
    ("record", RECORD, {}, ACCEPT),
    ("grant", GRANT, {}, ACCEPT),
    ("grant-any", _with(_with(GRANT, "consent_grant.grantee_facility_id", _DEL), "consent_grant.any_facility", True), {}, ACCEPT),
    ("revocation", REVOCATION, {}, ACCEPT),
    ("break-glass", BREAK_GLASS, {}, ACCEPT),
    ("break-glass-24h", _with(BREAK_GLASS, "break_glass.duration_seconds", 86400), {}, ACCEPT),
    ("allergy-identifier", _with(_with(RECORD, "record.kind", "ALLERGY"), "record.body",
        '{"resourceType":"AllergyIntolerance","patient":{"identifier":{"value":"001085012345"}}}'), {}, ACCEPT),
    ("unknown-type", RECORD, {"payload_type": "application/json"}, _exp("rejected", "UNKNOWN_PAYLOAD_TYPE")),
    ("unknown-key", RECORD, {"signer": "not-registered"}, _exp("rejected", "UNKNOWN_KEY")),
    ("tampered-payload", RECORD, {"tamper": {"field": "payload", "byte": 10, "xor": 1}}, _exp("rejected", "BAD_SIGNATURE")),
    ("tampered-signature", RECORD, {"tamper": {"field": "signature", "byte": 0, "xor": 128}}, _exp("rejected", "BAD_SIGNATURE")),
    ("truncated", RECORD, {"override": "0a0512"}, _exp("rejected", "MALFORMED_PAYLOAD")),
    ("no-body", {"header": HEADER}, {}, _exp("rejected", "MALFORMED_PAYLOAD")),
    ("no-header", {"record": RECORD["record"]}, {}, _exp("rejected", "MALFORMED_PAYLOAD")),
    ("uppercase-event-id", _with(RECORD, "header.event_id", HEADER["event_id"].upper()), {}, _exp("rejected", "INVALID_FIELD", "header.event_id")),
    ("facility-4-digits", _with(RECORD, "header.facility_id", "1000"), {}, _exp("rejected", "INVALID_FIELD", "header.facility_id")),
    ("seq-0", _with(RECORD, "header.seq", 0), {}, _exp("rejected", "INVALID_FIELD", "header.seq")),
    ("prev-hash-short", _with(RECORD, "header.prev_hash", "00" * 31), {}, _exp("rejected", "INVALID_FIELD", "header.prev_hash")),
    ("no-recorded-at", _with(RECORD, "header.recorded_at", None), {}, _exp("rejected", "INVALID_FIELD", "header.recorded_at")),
    ("other-facility-key", RECORD, {"signer": "facility-10002"}, _exp("rejected", "KEY_NOT_VALID_FOR_FACILITY")),
    ("root-key", RECORD, {"signer": "national-root"}, _exp("rejected", "KEY_NOT_VALID_FOR_FACILITY")),
    ("key-not-yet-valid", RECORD, {"signer": "facility-10001-future"}, _exp("rejected", "KEY_NOT_VALID_FOR_FACILITY")),
    ("key-revoked-at-recorded", RECORD, {"signer": "facility-10001-revoked"}, _exp("rejected", "KEY_REVOKED")),
    ("key-revoked-after", _with(RECORD, "header.recorded_at", "2026-03-02T08:14:59.999999999Z"),
        {"signer": "facility-10001-revoked"}, ACCEPT),
    ("gap", _with(RECORD, "header.seq", 3), {}, _exp("rejected", "SEQUENCE_GAP")),
    ("mismatch-first", _with(RECORD, "header.prev_hash", "11" * 32), {}, _exp("rejected", "CHAIN_MISMATCH")),
    ("duplicate", RECORD, {"head": "self"}, _exp("duplicate")),
    ("fork-same-seq", _with(RECORD, "header.event_id", "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d"), {"head": "self"}, _exp("rejected", "FORK")),
    ("fork-same-id", _with(RECORD, "header.seq", 2), {"head": "self"}, _exp("rejected", "FORK")),
    ("patient-11-digits", _with(RECORD, "record.patient_id", PATIENT[:-1]), {}, _field("record.patient_id")),
    ("patient-arabic-indic-digits", _with(RECORD, "record.patient_id", "\u0660" * 12), {}, _field("record.patient_id")),
    ("kind-unspecified", _with(RECORD, "record.kind", "UNSPECIFIED"), {}, _field("record.kind")),
    ("kind-unknown-number", _with(RECORD, "record.kind", 99), {}, _field("record.kind")),
    ("no-occurred-at", _with(RECORD, "record.occurred_at", _DEL), {}, _field("record.occurred_at")),
    ("no-author", _with(RECORD, "record.author", ""), {}, _field("record.author")),
    ("sensitivity-unspecified", _with(RECORD, "record.sensitivity", ["HIV", "UNSPECIFIED"]), {}, _field("record.sensitivity")),
    ("supersedes-bad", _with(RECORD, "record.supersedes", "x"), {}, _field("record.supersedes")),
    ("content-type", _with(RECORD, "record.content_type", "application/json"), {}, _field("record.content_type")),
    ("body-array", _with(RECORD, "record.body", "[]"), {}, _field("record.body")),
    ("body-nan", _with(RECORD, "record.body", '{"a":NaN}'), {}, _field("record.body")),
    ("body-too-big", _with(RECORD, "record.body", '{"x":"' + "a" * 524_288 + '"}'), {}, _field("record.body")),
    ("resource-type", _with(RECORD, "record.body", '{"resourceType":"Condition"}'), {}, _field("record.body.resourceType")),
    ("subject-other", _with(RECORD, "record.body", '{"resourceType":"Observation","subject":{"reference":"Patient/001085012346"}}'), {}, _field("record.body.subject")),
    ("immunization-uses-patient", _with(_with(RECORD, "record.kind", "IMMUNIZATION"), "record.body", '{"resourceType":"Immunization","subject":{"reference":"Patient/001085012345"}}'), {}, _field("record.body.patient")),
    ("grant-no-purpose", _with(GRANT, "consent_grant.purposes", []), {}, _field("consent_grant.purposes")),
    ("grant-kind-unspecified", _with(GRANT, "consent_grant.kinds", ["UNSPECIFIED"]), {}, _field("consent_grant.kinds")),
    ("grant-sensitive-unspecified", _with(GRANT, "consent_grant.include_sensitive", ["UNSPECIFIED"]), {}, _field("consent_grant.include_sensitive")),
    ("grant-period", _with(GRANT, "consent_grant.data_until", "2025-01-01T00:00:00Z"), {}, _field("consent_grant.data_until")),
    ("grant-expired", _with(GRANT, "consent_grant.expires_at", "2026-03-02T08:15:00Z"), {}, _field("consent_grant.expires_at")),
    ("grant-no-evidence", _with(GRANT, "consent_grant.evidence", None), {}, _field("consent_grant.evidence")),
    ("grant-evidence-hash", _with(GRANT, "consent_grant.evidence", {"form_id": "F", "sha256": "ab"}), {}, _field("consent_grant.evidence")),
    ("grant-no-grantee", _with(GRANT, "consent_grant.grantee_facility_id", _DEL), {}, _field("consent_grant.grantee")),
    ("grant-any-false", _with(_with(GRANT, "consent_grant.grantee_facility_id", _DEL), "consent_grant.any_facility", False), {}, _field("consent_grant.grantee")),
    ("revocation-bad-id", _with(REVOCATION, "consent_revocation.grant_event_id", ""), {}, _field("consent_revocation.grant_event_id")),
    ("break-glass-long-reason", _with(BREAK_GLASS, "break_glass.reason", "é" * 501), {}, _field("break_glass.reason")),
    ("break-glass-no-clinician", _with(BREAK_GLASS, "break_glass.clinician", ""), {}, _field("break_glass.clinician")),
    ("break-glass-zero", _with(BREAK_GLASS, "break_glass.duration_seconds", 0), {}, _field("break_glass.duration")),
    ("break-glass-too-long", _with(BREAK_GLASS, "break_glass.duration_seconds", 86401), {}, _field("break_glass.duration")),
    ("break-glass-absent", _with(BREAK_GLASS, "break_glass.duration_seconds", _DEL), {}, _field("break_glass.duration")),
]


@pytest.mark.parametrize("event,opts,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_case(event, opts, expected):
    head = opts.get("head")
    if head == "self":
        head = _head_of(RECORD)
    inp = _input(
        event,
        signer=opts.get("signer", "facility-10001"),
        payload_type=opts.get("payload_type", FACILITY_EVENT_TYPE),
        override=opts.get("override"),
        tamper=opts.get("tamper"),
    )
    got, _ = _run(inp, head)
    assert got == expected


def test_second_event_extends_chain():
    head = _head_of(RECORD)
    second = _with(_with(_with(RECORD, "header.seq", 2), "header.prev_hash", head["event_hash"]),
                   "header.event_id", "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a60")
    got, _ = _run(_input(second), head)
    assert got == ACCEPT
    bad = _with(second, "header.prev_hash", ZERO)
    got, _ = _run(_input(bad), head)
    assert got == _exp("rejected", "CHAIN_MISMATCH")


def test_malformed_envelopes():
    env = build_envelope(_input(RECORD), KEYS)
    ctx = Context.from_json({"keys": _ctx_keys(), "head": None})
    for e in (
        Envelope(env.payload_type, env.payload, env.key_id.upper(), env.signature),
        Envelope(env.payload_type, env.payload, env.key_id[:-1], env.signature),
        Envelope(env.payload_type, env.payload, env.key_id, env.signature[:-1]),
        Envelope(env.payload_type, env.payload, env.key_id, b""),
    ):
        assert verify(e, ctx).as_dict() == _exp("rejected", "MALFORMED_ENVELOPE")
    # Step 1 comes before step 2.
    e = Envelope("text/plain", env.payload, "zz", b"")
    assert verify(e, ctx).as_dict() == _exp("rejected", "UNKNOWN_PAYLOAD_TYPE")


def test_registry_type_is_refused_on_the_facility_path():
    inp = _input(RECORD, signer="national-root", payload_type=REGISTRY_EVENT_TYPE)
    assert _run(inp)[0] == _exp("rejected", "UNKNOWN_PAYLOAD_TYPE")


def test_encoding_field_number_order():
    # FacilityEvent: header (field 1, tag 0x0a) first, then the oneof body (record = 10,
    # tag 0x52); inside the header event_id (0x0a), facility_id (0x12), seq (0x18), ...
    data = facility_event_from_json(RECORD).SerializeToString()
    assert data[0] == 0x0A
    hlen = data[1]
    header = data[2 : 2 + hlen]
    assert header[0] == 0x0A and header[1] == 36
    assert header[38] == 0x12 and header[39] == 5 and header[40:45] == b"10001"
    assert header[45] == 0x18 and header[46] == 1
    assert data[2 + hlen] == 0x52


def test_event_json_strictness():
    with pytest.raises(EventJsonError):
        facility_event_from_json({"header": HEADER, "recrod": {}})
    with pytest.raises(EventJsonError):
        facility_event_from_json(_with(RECORD, "record.kind", "RECORD_KIND_OBSERVATION"))
    with pytest.raises(ValueError):
        facility_event_from_json(_with(RECORD, "header.recorded_at", "2026-03-02 08:15:00"))


def test_event_json_values():
    pb = load()
    ev = facility_event_from_json(GRANT)
    g = ev.consent_grant
    assert list(g.purposes) == [pb.common.PURPOSE_TREATMENT, pb.common.PURPOSE_REFERRAL]
    assert list(g.include_sensitive) == [pb.common.SENSITIVITY_LABEL_HIV]
    assert g.expires_at.seconds == 1788195600 and g.expires_at.nanos == 0  # 2026-08-31T17:00:00Z
    assert g.HasField("data_from") and not g.HasField("data_until")
    assert g.WhichOneof("grantee") == "grantee_facility_id"
    r = facility_event_from_json(RECORD).record
    assert r.occurred_at.nanos == 250_000_000
    assert r.body == OBS_BODY.encode()
    bg = facility_event_from_json(BREAK_GLASS).break_glass
    assert bg.duration.seconds == 3600 and bg.duration.nanos == 0
    # An epoch timestamp is still present (an empty Timestamp message on the wire).
    epoch = facility_event_from_json(_with(RECORD, "header.recorded_at", "1970-01-01T00:00:00Z"))
    assert epoch.header.HasField("recorded_at")


def test_tamper():
    p, s = apply_tamper(b"\x00\x01", b"\x10" * 64, {"field": "payload", "byte": 1, "xor": 3})
    assert p == b"\x00\x02" and s == b"\x10" * 64
    p, s = apply_tamper(b"\x00", b"\x10" * 64, {"field": "signature", "byte": 63, "xor": 1})
    assert s[-1] == 0x11 and p == b"\x00"
    p, s = apply_tamper(b"\x00", b"\x10" * 64, {"field": "signature", "byte": None, "xor": None, "truncate_to": 63})
    assert s == b"\x10" * 63 and p == b"\x00"
    with pytest.raises(ValueError):
        apply_tamper(b"\x00", b"\x10" * 64, {"field": "signature", "byte": 1, "xor": 1, "truncate_to": 63})
    with pytest.raises(ValueError):
        apply_tamper(b"\x00", b"\x10" * 64, {"field": "key_id", "byte": 1, "xor": 1})


def test_vector_file_roundtrip(tmp_path):
    """A self-made vector in the README's format, read back through the same loaders."""
    keys_doc = {
        "keys": [
            {"name": k.name, "facility_id": k.facility_id, "seed": k.seed.hex(),
             "public_key": k.public_key.hex(), "key_id": k.key_id}
            for k in KEYS.values()
        ]
    }
    (tmp_path / "keys.json").write_text(json.dumps(keys_doc))
    inp = _input(RECORD)
    env = build_envelope(inp, KEYS)
    vec = {
        "name": "valid-self-record",
        "description": "self-made",
        "context": {"keys": _ctx_keys(), "head": None},
        "input": inp,
        "envelope": {"payload_type": env.payload_type, "payload": env.payload.hex(),
                     "key_id": env.key_id, "signature": env.signature.hex()},
        "pae": dsse.pae(env.payload_type, env.payload).hex(),
        "event_hash": dsse.event_hash(env.payload_type, env.payload).hex(),
        "expected": ACCEPT,
    }
    (tmp_path / "valid-self-record.json").write_text(json.dumps(vec, indent=2))

    keys = load_keys(tmp_path / "keys.json")
    v = load_json(tmp_path / "valid-self-record.json")
    rebuilt = build_envelope(v["input"], keys)
    assert rebuilt == Envelope.from_json(v["envelope"])
    assert dsse.pae(rebuilt.payload_type, rebuilt.payload).hex() == v["pae"]
    assert verify(rebuilt, Context.from_json(v["context"])).as_dict() == v["expected"]
