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
        "include_sensitive": [],
        "data_from": "2025-01-01T00:00:00Z",
        "data_until": None,
        "expires_at": "2026-04-01T00:00:00+07:00",
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


def _run(inp, head=None, ctx=None):
    env = build_envelope(inp, KEYS)
    context = {"submitted_to": "ingest", "keys": _ctx_keys(), "head": head, **(ctx or {})}
    return verify(env, Context.from_json(context)).as_dict(), env


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


def _rejects(reason, extends=True):
    return _exp("rejected", reason, None, extends)


# The facility's latest record for the patient: 30 days before HEADER's recorded_at.
STANDING = {"facility_facts": {"latest_authored": "2026-01-31T08:15:00Z"}}
GRANTOR = {"facility_facts": {"attested_the_grant": True}}
ANY = _with(_with(GRANT, "consent_grant.grantee_facility_id", _DEL), "consent_grant.any_facility", True)

CASES = [
    ("record", RECORD, {}, ACCEPT),
    ("grant", GRANT, {"ctx": STANDING}, ACCEPT),
    ("grant-any", ANY, {"ctx": STANDING}, _rejects("ATTESTED_GRANT_OUT_OF_BOUNDS")),
    ("revocation", REVOCATION, {"ctx": GRANTOR}, ACCEPT),
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
    got, _ = _run(inp, head, opts.get("ctx"))
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
    ctx = Context.from_json({"submitted_to": "ingest", "keys": _ctx_keys(), "head": None})
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
    assert list(g.include_sensitive) == []
    assert g.expires_at.seconds == 1774976400 and g.expires_at.nanos == 0  # 2026-03-31T17:00:00Z
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
        "context": {"submitted_to": "ingest", "keys": _ctx_keys(), "head": None},
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


# ---------------------------------------------------------------------------- patient keys,
# consent requests, facility facts (README steps 9 and 10)

from hrx_ref import PATIENT_KEY_PROOF_TYPE, PATIENT_STATEMENT_TYPE  # noqa: E402
from hrx_ref.vectors import build_proof  # noqa: E402

PATIENT_KEYS = {
    k.name: k
    for k in (
        _kp("patient-p1", "", 7),
        _kp("patient-p2", "", 8),
        _kp("patient-q1", "", 9),
    )
}
ALL_KEYS = {**KEYS, **PATIENT_KEYS}
P1 = PATIENT_KEYS["patient-p1"]
OTHER_PATIENT = "001085099999"


def _proof(key="patient-p1", patient=PATIENT, public_key=None, facility="10001",
           proved_at="2026-03-02T08:10:00Z", **over):
    recipe = {
        "signer": key,
        "payload_type": PATIENT_KEY_PROOF_TYPE,
        "proof": {"patient_id": patient, "public_key": (public_key or ALL_KEYS[key].public_key.hex()),
                  "facility_id": facility, "proved_at": proved_at},
        "payload_override": None,
        "key_id": None,
        "tamper": None,
    }
    recipe.update(over)
    return build_proof(recipe, ALL_KEYS)


def _enrollment(proof=None, public_key=None, patient=PATIENT):
    body = {"patient_id": patient, "public_key": public_key or P1.public_key.hex(),
            "proof": _proof() if proof is None else proof}
    if proof is _DEL:
        del body["proof"]
    return {"header": HEADER, "patient_key_enrollment": body}


REQUEST = {
    "header": HEADER,
    "consent_request": {
        "patient_id": PATIENT,
        "purposes": ["REFERRAL"],
        "kinds": ["OBSERVATION"],
        "data_from": "2025-01-01T00:00:00Z",
        "data_until": "2026-03-01T00:00:00Z",
        "duration_seconds": 30 * 86400,
        "reason": "Tiếp nhận chuyển tuyến",
        "include_sensitive": [],
    },
}

_UNIT_SEPARATOR = "\x1f"  # Python's isspace() says yes; Unicode White_Space says no.

FACT_CASES = [
    # Key enrollment: fields, then the proof of possession.
    ("enroll", _enrollment(), {}, ACCEPT),
    ("enroll-bad-patient", _enrollment(patient="1"), {}, _field("patient_key_enrollment.patient_id")),
    ("enroll-short-key", _enrollment(public_key="ab" * 31), {}, _field("patient_key_enrollment.public_key")),
    ("enroll-no-proof", _enrollment(proof=_DEL), {}, _field("patient_key_enrollment.proof")),
    ("proof-other-facility", _enrollment(_proof(facility="10002")), {}, _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-empty-facility", _enrollment(_proof(facility="")), {}, _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-other-patient", _enrollment(_proof(patient=OTHER_PATIENT)), {}, _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-names-other-key", _enrollment(_proof(public_key=PATIENT_KEYS["patient-p2"].public_key.hex())), {},
        _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-signed-by-other-key", _enrollment(_proof(key="patient-p2", public_key=P1.public_key.hex())), {},
        _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-forged-key-id", _enrollment(_proof(key="patient-p2", public_key=P1.public_key.hex(), key_id=P1.key_id)), {},
        _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-uppercase-key-id", _enrollment(_proof(key_id=P1.key_id.upper())), {}, _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-short-signature", _enrollment(_proof(tamper={"field": "signature", "byte": None, "xor": None, "truncate_to": 63})),
        {}, _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-bit-flip", _enrollment(_proof(tamper={"field": "signature", "byte": 3, "xor": 1})), {},
        _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-statement-type", _enrollment(_proof(payload_type=PATIENT_STATEMENT_TYPE)), {}, _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-garbage-payload", _enrollment(_proof(payload_override="0aff")), {}, _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-no-time", _enrollment(_proof(proved_at=None)), {}, _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-hour-early", _enrollment(_proof(proved_at="2026-03-02T07:15:00Z")), {}, ACCEPT),
    ("proof-hour-late", _enrollment(_proof(proved_at="2026-03-02T09:15:00Z")), {}, ACCEPT),
    ("proof-too-early", _enrollment(_proof(proved_at="2026-03-02T07:14:59.999999999Z")), {}, _rejects("BAD_PROOF_OF_POSSESSION")),
    ("proof-too-late", _enrollment(_proof(proved_at="2026-03-02T09:15:00.000000001Z")), {}, _rejects("BAD_PROOF_OF_POSSESSION")),
    # Consent request fields.
    ("request", REQUEST, {}, ACCEPT),
    ("request-no-purpose", _with(REQUEST, "consent_request.purposes", []), {}, _field("consent_request.purposes")),
    ("request-purpose-unspecified", _with(REQUEST, "consent_request.purposes", ["UNSPECIFIED"]), {}, _field("consent_request.purposes")),
    ("request-kind-unspecified", _with(REQUEST, "consent_request.kinds", ["UNSPECIFIED"]), {}, _field("consent_request.kinds")),
    ("request-period", _with(REQUEST, "consent_request.data_until", "2025-01-01T00:00:00Z"), {}, _field("consent_request.data_until")),
    ("request-no-duration", _with(REQUEST, "consent_request.duration_seconds", _DEL), {}, _field("consent_request.duration")),
    ("request-zero", _with(REQUEST, "consent_request.duration_seconds", 0), {}, _field("consent_request.duration")),
    ("request-365-days", _with(REQUEST, "consent_request.duration_seconds", 365 * 86400), {}, ACCEPT),
    ("request-too-long", _with(REQUEST, "consent_request.duration_seconds", 365 * 86400 + 1), {}, _field("consent_request.duration")),
    ("request-blank-reason", _with(REQUEST, "consent_request.reason", " \u3000\t\u2028"), {}, _field("consent_request.reason")),
    ("request-unit-separator-reason", _with(REQUEST, "consent_request.reason", _UNIT_SEPARATOR), {}, ACCEPT),
    ("request-long-reason", _with(REQUEST, "consent_request.reason", "ư" * 501), {}, _field("consent_request.reason")),
    ("request-1000-byte-reason", _with(REQUEST, "consent_request.reason", "a" * 1000), {}, ACCEPT),
    ("request-sensitive-unspecified", _with(REQUEST, "consent_request.include_sensitive", ["UNSPECIFIED"]), {},
        _field("consent_request.include_sensitive")),
    # Grant: request_event_id is content (step 9), then the attested bounds (step 10).
    ("grant-request-id-bad", _with(ANY, "consent_grant.request_event_id", "REQ-1"), {}, _field("consent_grant.request_event_id")),
    ("grant-no-evidence-before-request-id", _with(_with(GRANT, "consent_grant.request_event_id", "x"), "consent_grant.evidence", None),
        {}, _field("consent_grant.evidence")),
    ("grant-answers-request", _with(GRANT, "consent_grant.request_event_id", "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a77"),
        {"ctx": STANDING}, _rejects("ATTESTED_GRANT_OUT_OF_BOUNDS")),
    ("grant-sensitive", _with(GRANT, "consent_grant.include_sensitive", ["HIV"]), {"ctx": STANDING},
        _rejects("ATTESTED_GRANT_OUT_OF_BOUNDS")),
    ("grant-any-no-standing", ANY, {}, _rejects("ATTESTED_GRANT_OUT_OF_BOUNDS")),
    ("grant-90-days", _with(GRANT, "consent_grant.expires_at", "2026-05-31T08:15:00Z"), {"ctx": STANDING}, ACCEPT),
    ("grant-90-days-and-1ns", _with(GRANT, "consent_grant.expires_at", "2026-05-31T08:15:00.000000001Z"), {"ctx": STANDING},
        _rejects("ATTESTED_GRANT_OUT_OF_BOUNDS")),
    ("grant-policy-30-days", GRANT, {"ctx": {**STANDING, "policy": {"attested_max_days": 29}}},
        _rejects("ATTESTED_GRANT_OUT_OF_BOUNDS")),
    ("grant-no-standing", GRANT, {}, _rejects("NO_STANDING")),
    ("grant-standing-at-window", GRANT, {"ctx": {"facility_facts": {"latest_authored": "2025-03-02T08:15:00Z"}}}, ACCEPT),
    ("grant-standing-stale", GRANT, {"ctx": {"facility_facts": {"latest_authored": "2025-03-02T08:14:59Z"}}}, _rejects("NO_STANDING")),
    ("grant-standing-now", GRANT, {"ctx": {"facility_facts": {"latest_authored": HEADER["recorded_at"]}}}, ACCEPT),
    ("grant-standing-future", GRANT, {"ctx": {"facility_facts": {"latest_authored": "2026-03-02T08:15:00.000000001Z"}}},
        _rejects("NO_STANDING")),
    ("grant-standing-policy-window", GRANT, {"ctx": {**STANDING, "policy": {"standing_window_days": 29}}}, _rejects("NO_STANDING")),
    # Arithmetic on instants is exact, not clamped to the timestamp range: a maximum past
    # 9999 bounds nothing, a standing window starting before year 1 starts nowhere.
    ("grant-max-past-9999", _with(_with(GRANT, "header.recorded_at", "9999-12-01T00:00:00Z"),
                                  "consent_grant.expires_at", "9999-12-31T00:00:00Z"),
        {"ctx": {"facility_facts": {"latest_authored": "9999-11-30T00:00:00Z"}}}, ACCEPT),
    ("grant-window-before-year-1", _with(_with(_with(GRANT, "header.recorded_at", "0001-06-01T00:00:00Z"),
                                               "consent_grant.expires_at", "0001-07-01T00:00:00Z"), "consent_grant.data_from", None),
        {"ctx": {"facility_facts": {"latest_authored": "0001-05-01T00:00:00Z"},
                 "keys": [{**k, "valid_from": "0001-01-01T00:00:00Z"} for k in _ctx_keys()]}}, ACCEPT),
    # Revocation by a facility, break-glass limits.
    ("revocation-not-grantor", REVOCATION, {}, _rejects("NOT_GRANTOR")),
    ("revocation-bad-evidence", _with(REVOCATION, "consent_revocation.evidence", {"form_id": " ", "sha256": "ab" * 32}), {},
        _field("consent_revocation.evidence")),
    ("break-glass-19", BREAK_GLASS, {"ctx": {"facility_facts": {"declared_since": 19}}}, ACCEPT),
    ("break-glass-20", BREAK_GLASS, {"ctx": {"facility_facts": {"declared_since": 20}}}, _rejects("BREAK_GLASS_LIMIT")),
    ("break-glass-open", BREAK_GLASS, {"ctx": {"facility_facts": {"open_for_patient": 1}}}, _rejects("BREAK_GLASS_LIMIT")),
    ("break-glass-policy-open", BREAK_GLASS, {"ctx": {"facility_facts": {"open_for_patient": 1},
                                                      "policy": {"break_glass_open_per_patient": 2}}}, ACCEPT),
    ("break-glass-policy-day", BREAK_GLASS, {"ctx": {"facility_facts": {"declared_since": 3},
                                                     "policy": {"break_glass_per_day": 3}}}, _rejects("BREAK_GLASS_LIMIT")),
    ("break-glass-blank-reason", _with(BREAK_GLASS, "break_glass.reason", "\u00a0 "), {}, _field("break_glass.reason")),
    ("break-glass-past-9999", _with(_with(BREAK_GLASS, "header.recorded_at", "9999-12-31T23:00:00Z"), "break_glass.duration_seconds", 7200),
        {}, _field("break_glass.duration")),
    # Facts do not rescue content, and content failures come first.
    ("content-before-facts", _with(GRANT, "consent_grant.expires_at", None), {}, _field("consent_grant.expires_at")),
    ("record-blank-author", _with(RECORD, "record.author", "\u3000"), {}, _field("record.author")),
]


@pytest.mark.parametrize("event,opts,expected", [c[1:] for c in FACT_CASES], ids=[c[0] for c in FACT_CASES])
def test_fact_case(event, opts, expected):
    env = build_envelope(_input(event), ALL_KEYS)
    context = {"submitted_to": "ingest", "keys": _ctx_keys(), "head": None, **opts.get("ctx", {})}
    assert verify(env, Context.from_json(context)).as_dict() == expected


def test_facts_are_ignored_by_records_and_requests():
    ctx = {"facility_facts": {"declared_since": 99, "open_for_patient": 99}, "policy": {"break_glass_per_day": 0}}
    for event in (RECORD, REQUEST, _enrollment()):
        env = build_envelope(_input(event), ALL_KEYS)
        assert verify(env, Context.from_json({"submitted_to": "ingest", "keys": _ctx_keys(), "head": None, **ctx})).as_dict() == ACCEPT


@pytest.mark.parametrize("seconds,nanos", [(253_402_300_800, 0), (-62_135_596_801, 0), (0, -1), (0, 1_000_000_000)])
def test_timestamps_out_of_range(seconds, nanos):
    from hrx_ref.event_json import facility_event_from_json as fe

    msg = fe(RECORD)
    msg.header.recorded_at.seconds, msg.header.recorded_at.nanos = seconds, nanos
    got, _ = _run(_input(None, override=msg.SerializeToString().hex()))
    assert got == _exp("rejected", "INVALID_FIELD", "header.recorded_at")
    msg = fe(RECORD)
    msg.record.occurred_at.seconds, msg.record.occurred_at.nanos = seconds, nanos
    got, _ = _run(_input(None, override=msg.SerializeToString().hex()))
    assert got == _field("record.occurred_at")


def test_context_is_strict():
    with pytest.raises(ValueError):
        Context.from_json({"submitted_to": "ingest", "keys": [], "head": None, "facility_fact": {}})
    with pytest.raises(ValueError):
        Context.from_json({"submitted_to": "ingest", "keys": [], "head": None, "policy": {"attested_max": 1}})


def test_nested_proof_must_match_its_recipe():
    recipe = {"signer": "patient-p1", "payload_type": PATIENT_KEY_PROOF_TYPE,
              "proof": {"patient_id": PATIENT, "public_key": P1.public_key.hex(), "facility_id": "10001",
                        "proved_at": "2026-03-02T08:10:00Z"},
              "payload_override": None, "key_id": None, "tamper": None}
    inp = {**_input(_enrollment(build_proof(recipe, ALL_KEYS))), "proof": recipe}
    build_envelope(inp, ALL_KEYS)
    other = {**recipe, "proof": {**recipe["proof"], "facility_id": "10002"}}
    with pytest.raises(ValueError):
        build_envelope({**inp, "proof": other}, ALL_KEYS)


# ---------------------------------------------------------------------------- statements

RECEIVED = "2026-03-02T09:00:00Z"
S_HEADER = {
    "statement_id": "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4b00",
    "patient_id": PATIENT,
    "public_key": P1.public_key.hex(),
    "signed_at": "2026-03-02T08:59:00Z",
}
OWN_GRANT = {
    "patient_id": PATIENT,
    "purposes": ["TREATMENT"],
    "kinds": [],
    "include_sensitive": ["MENTAL_HEALTH"],
    "expires_at": "2027-03-02T00:00:00Z",
    "any_facility": True,
}
GRANT_ID = "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4b01"
REQUEST_ID = "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4b02"
STATE = {
    "patient_id": PATIENT,
    "active_key_id": P1.key_id,
    "grants": [GRANT_ID],
    "pending_requests": [{"request_event_id": REQUEST_ID, "facility_id": "10002"}],
}
APPROVAL = {**OWN_GRANT, "include_sensitive": [], "request_event_id": REQUEST_ID, "grantee_facility_id": "10002"}
del APPROVAL["any_facility"]


def _stmt(body_name, body, header=None):
    return {"header": header or S_HEADER, body_name: body}


def _rotation(proof=None, new_key=None):
    new = new_key or PATIENT_KEYS["patient-p2"].public_key.hex()
    body = {"new_public_key": new,
            "proof": _proof("patient-p2", facility="", proved_at="2026-03-02T08:59:00Z") if proof is None else proof}
    if proof is _DEL:
        del body["proof"]
    return _stmt("key_rotation", body)


def _s_reject(reason, field=None):
    return _exp("rejected", reason, field, False)


S_ACCEPT = _exp("accepted")

STATEMENT_CASES = [
    ("grant", _stmt("consent_grant", OWN_GRANT), {}, S_ACCEPT),
    ("grant-with-evidence", _stmt("consent_grant", {**OWN_GRANT, "evidence": {"form_id": "F", "sha256": "ab" * 32}}), {}, S_ACCEPT),
    ("grant-bad-evidence", _stmt("consent_grant", {**OWN_GRANT, "evidence": {"form_id": "", "sha256": "ab" * 32}}), {},
        _s_reject("INVALID_FIELD", "consent_grant.evidence")),
    ("grant-expires-at-received", _stmt("consent_grant", {**OWN_GRANT, "expires_at": RECEIVED}), {},
        _s_reject("INVALID_FIELD", "consent_grant.expires_at")),
    ("grant-for-another-patient", _stmt("consent_grant", {**OWN_GRANT, "patient_id": OTHER_PATIENT}), {},
        _s_reject("INVALID_FIELD", "consent_grant.patient_id")),
    ("grant-bad-patient-first", _stmt("consent_grant", {**OWN_GRANT, "patient_id": "x", "purposes": []}), {},
        _s_reject("INVALID_FIELD", "consent_grant.patient_id")),
    ("grant-purposes-before-patient-match", _stmt("consent_grant", {**OWN_GRANT, "patient_id": OTHER_PATIENT, "purposes": []}), {},
        _s_reject("INVALID_FIELD", "consent_grant.purposes")),
    ("approval", _stmt("consent_grant", APPROVAL), {}, S_ACCEPT),
    ("approval-wrong-grantee", _stmt("consent_grant", {**APPROVAL, "grantee_facility_id": "10001"}), {},
        _s_reject("INVALID_FIELD", "consent_grant.request_event_id")),
    ("approval-any-facility", _stmt("consent_grant", {**OWN_GRANT, "request_event_id": REQUEST_ID}), {},
        _s_reject("INVALID_FIELD", "consent_grant.request_event_id")),
    ("approval-not-pending", _stmt("consent_grant", {**APPROVAL, "request_event_id": GRANT_ID}), {},
        _s_reject("INVALID_FIELD", "consent_grant.request_event_id")),
    ("approval-bad-request-id", _stmt("consent_grant", {**APPROVAL, "request_event_id": REQUEST_ID.upper()}), {},
        _s_reject("INVALID_FIELD", "consent_grant.request_event_id")),
    ("revocation", _stmt("consent_revocation", {"patient_id": PATIENT, "grant_event_id": GRANT_ID}), {}, S_ACCEPT),
    ("revocation-not-theirs", _stmt("consent_revocation", {"patient_id": PATIENT, "grant_event_id": REQUEST_ID}), {},
        _s_reject("NOT_GRANTOR")),
    ("revocation-other-patient", _stmt("consent_revocation", {"patient_id": OTHER_PATIENT, "grant_event_id": GRANT_ID}), {},
        _s_reject("INVALID_FIELD", "consent_revocation.patient_id")),
    ("decline", _stmt("consent_decline", {"request_event_id": REQUEST_ID}), {}, S_ACCEPT),
    ("decline-not-pending", _stmt("consent_decline", {"request_event_id": GRANT_ID}), {},
        _s_reject("INVALID_FIELD", "consent_decline.request_event_id")),
    ("decline-bad-id", _stmt("consent_decline", {"request_event_id": ""}), {},
        _s_reject("INVALID_FIELD", "consent_decline.request_event_id")),
    ("rotation", _rotation(), {}, S_ACCEPT),
    ("rotation-same-key", _rotation(new_key=P1.public_key.hex()), {}, _s_reject("INVALID_FIELD", "key_rotation.new_public_key")),
    ("rotation-short-key", _rotation(new_key="ab" * 31), {}, _s_reject("INVALID_FIELD", "key_rotation.new_public_key")),
    ("rotation-no-proof", _rotation(proof=_DEL), {}, _s_reject("INVALID_FIELD", "key_rotation.proof")),
    ("rotation-proof-facility", _rotation(_proof("patient-p2", facility="10001", proved_at="2026-03-02T08:59:00Z")), {},
        _s_reject("BAD_PROOF_OF_POSSESSION")),
    ("rotation-proof-vs-received", _rotation(_proof("patient-p2", facility="", proved_at="2026-03-02T07:59:59Z")), {},
        _s_reject("BAD_PROOF_OF_POSSESSION")),
    ("rotation-proof-at-received-minus-hour", _rotation(_proof("patient-p2", facility="", proved_at="2026-03-02T08:00:00Z")), {},
        S_ACCEPT),
    ("key-revocation", _stmt("key_revocation", {"reason": "a" * 1000}), {}, S_ACCEPT),
    ("key-revocation-empty-reason", _stmt("key_revocation", {"reason": ""}), {}, S_ACCEPT),
    ("key-revocation-long", _stmt("key_revocation", {"reason": "a" * 1001}), {}, _s_reject("INVALID_FIELD", "key_revocation.reason")),
    # Header and envelope.
    ("header-statement-id", _stmt("consent_grant", OWN_GRANT, {**S_HEADER, "statement_id": "x"}), {},
        _s_reject("INVALID_FIELD", "statement.header.statement_id")),
    ("header-patient-id", _stmt("consent_grant", OWN_GRANT, {**S_HEADER, "patient_id": "00108501234"}), {},
        _s_reject("INVALID_FIELD", "statement.header.patient_id")),
    ("header-public-key", _stmt("consent_grant", OWN_GRANT, {**S_HEADER, "public_key": "ab" * 33}), {},
        _s_reject("INVALID_FIELD", "statement.header.public_key")),
    ("header-signed-at", _stmt("consent_grant", OWN_GRANT, {**S_HEADER, "signed_at": None}), {},
        _s_reject("INVALID_FIELD", "statement.header.signed_at")),
    ("key-id-not-header-key", _stmt("consent_grant", OWN_GRANT), {"signer": "patient-q1"}, _s_reject("BAD_SIGNATURE")),
    ("signature-flip", _stmt("consent_grant", OWN_GRANT), {"tamper": {"field": "signature", "byte": 9, "xor": 2}},
        _s_reject("BAD_SIGNATURE")),
    ("payload-flip-in-reason", _stmt("key_revocation", {"reason": "lost phone"}),
        {"tamper": {"field": "payload", "byte": -3, "xor": 0x20}}, _s_reject("BAD_SIGNATURE")),
    ("short-signature", _stmt("consent_grant", OWN_GRANT),
        {"tamper": {"field": "signature", "byte": None, "xor": None, "truncate_to": 0}}, _s_reject("MALFORMED_ENVELOPE")),
    ("facility-type", _stmt("consent_grant", OWN_GRANT), {"payload_type": FACILITY_EVENT_TYPE}, _s_reject("UNKNOWN_PAYLOAD_TYPE")),
    ("garbage-and-bad-signature", None, {"override": "0aff01", "tamper": {"field": "signature", "byte": 0, "xor": 1}},
        _s_reject("MALFORMED_PAYLOAD")),
    ("no-body", {"header": S_HEADER}, {}, _s_reject("MALFORMED_PAYLOAD")),
    ("no-header", {"consent_grant": OWN_GRANT}, {}, _s_reject("MALFORMED_PAYLOAD")),
    # The patient's key, after content.
    ("other-patients-key", _stmt("consent_grant", OWN_GRANT, {**S_HEADER, "public_key": PATIENT_KEYS["patient-q1"].public_key.hex()}),
        {"signer": "patient-q1"}, _s_reject("PATIENT_KEY_NOT_VALID")),
    ("no-active-key", _stmt("consent_grant", OWN_GRANT), {"state": {**STATE, "active_key_id": None}}, _s_reject("PATIENT_KEY_NOT_VALID")),
    ("replaced-key", _stmt("consent_grant", OWN_GRANT), {"state": {**STATE, "active_key_id": PATIENT_KEYS["patient-p2"].key_id}},
        _s_reject("PATIENT_KEY_NOT_VALID")),
    ("state-of-another-patient", _stmt("consent_grant", OWN_GRANT), {"state": {**STATE, "patient_id": OTHER_PATIENT}},
        _s_reject("PATIENT_KEY_NOT_VALID")),
    ("no-state", _stmt("consent_grant", OWN_GRANT), {"state": None}, _s_reject("PATIENT_KEY_NOT_VALID")),
    ("content-before-key", _stmt("consent_grant", {**OWN_GRANT, "kinds": ["UNSPECIFIED"]}), {"state": None},
        _s_reject("INVALID_FIELD", "consent_grant.kinds")),
    ("key-before-references", _stmt("consent_revocation", {"patient_id": PATIENT, "grant_event_id": REQUEST_ID}),
        {"state": {**STATE, "active_key_id": None}}, _s_reject("PATIENT_KEY_NOT_VALID")),
]


@pytest.mark.parametrize("statement,opts,expected", [c[1:] for c in STATEMENT_CASES], ids=[c[0] for c in STATEMENT_CASES])
def test_statement_case(statement, opts, expected):
    tamper = opts.get("tamper")
    inp = {
        "signer": opts.get("signer", "patient-p1"),
        "payload_type": opts.get("payload_type", PATIENT_STATEMENT_TYPE),
        "event": None,
        "statement": statement,
        "payload_override": opts.get("override"),
        "tamper": tamper,
    }
    if tamper is not None and tamper.get("byte") is not None and tamper["byte"] < 0:
        # Count from the end of the payload (the reason is the last field).
        from hrx_ref.event_json import encode_patient_statement

        tamper = {**tamper, "byte": len(encode_patient_statement(statement)) + tamper["byte"]}
        inp["tamper"] = tamper
    env = build_envelope(inp, ALL_KEYS)
    context = {"submitted_to": "patient_service", "keys": [], "head": None, "received_at": RECEIVED, "patient": opts.get("state", STATE)}
    assert verify(env, Context.from_json(context)).as_dict() == expected


def test_statement_json_encoding():
    pb = load()
    from hrx_ref.event_json import patient_statement_from_json

    st = patient_statement_from_json(_rotation())
    assert st.WhichOneof("body") == "key_rotation"
    proof = st.key_rotation.proof
    assert proof.payload_type == PATIENT_KEY_PROOF_TYPE and len(proof.signature) == 64
    p = pb.events.PatientKeyProof.FromString(proof.payload)
    assert p.facility_id == "" and p.public_key == PATIENT_KEYS["patient-p2"].public_key
    # PatientStatement: header is field 1 (tag 0x0a), key_rotation field 13 (tag 0x6a).
    data = st.SerializeToString()
    assert data[0] == 0x0A and data[2 + data[1]] == 0x6A


# ---------------------------------------------------------------------------- the time the
# exchange can vouch for: step 7 at the receive time, step 8b, step 6's seq bound, and
# corrections in step 10

MAX_SEQ = 2**63 - 1
T0 = HEADER["recorded_at"]  # 2026-03-02T08:15:00Z: when RECORD is recorded


def _at(recorded_at, event=RECORD):
    return _with(event, "header.recorded_at", recorded_at)


def _received(at, **more):
    return {"received_at": at, **more}


def _second(recorded_at="2026-03-02T08:15:00Z", event=RECORD):
    """RECORD's successor at seq 2, and the head (RECORD, recorded at T0) it extends."""
    head = {**_head_of(RECORD), "recorded_at": T0}
    second = _with(_with(_with(_at(recorded_at, event), "header.seq", 2), "header.prev_hash", head["event_hash"]),
                   "header.event_id", "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a61")
    return second, head


_SECOND_EQUAL, _HEAD = _second()
_SECOND_EARLIER, _ = _second("2026-03-02T08:14:59.999999999Z")
_SECOND_EARLIER_BAD, _ = _second("2026-03-02T08:14:59Z", _with(RECORD, "record.patient_id", "1"))
_MAX_HEAD = {"seq": MAX_SEQ - 1, "event_hash": "11" * 32, "event_id": "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a70",
             "recorded_at": T0}
_AT_MAX = _with(_with(RECORD, "header.seq", MAX_SEQ), "header.prev_hash", "11" * 32)
_CORRECTION = _with(RECORD, "record.supersedes", "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a99")
_OUT = _received("2026-03-02T08:09:59Z")  # RECORD is then 301 s in the future

CLOCK_CASES = [
    # Step 7 at the receive time. facility-10001-revoked is revoked at T0.
    ("revoked-received-at-revocation", _at("2026-03-02T08:10:00Z"), {"signer": "facility-10001-revoked", "ctx": _received(T0)},
        _rejects("KEY_REVOKED", extends=False)),
    ("revoked-received-1ns-before", _at("2026-03-02T08:17:00Z"),
        {"signer": "facility-10001-revoked", "ctx": _received("2026-03-02T08:14:59.999999999Z")}, ACCEPT),
    ("revoked-received-long-after", _at("2026-02-01T00:00:00Z"),
        {"signer": "facility-10001-revoked", "ctx": _received("2026-02-03T00:00:00Z")}, ACCEPT),
    # facility-10001-future is valid from 2026-04-01T00:00:00Z.
    ("future-received-1ns-before", _at("2026-04-01T00:01:00Z"),
        {"signer": "facility-10001-future", "ctx": _received("2026-03-31T23:59:59.999999999Z")},
        _rejects("KEY_NOT_VALID_FOR_FACILITY", extends=False)),
    ("future-received-at-valid-from", _at("2026-03-31T23:58:00Z"),
        {"signer": "facility-10001-future", "ctx": _received("2026-04-01T00:00:00Z")}, ACCEPT),
    ("other-facility-key-whenever", RECORD, {"signer": "facility-10002", "ctx": _received("2026-03-02T08:15:00Z")},
        _rejects("KEY_NOT_VALID_FOR_FACILITY", extends=False)),
    # Step 8b: the bounds, exact and one nanosecond over.
    ("future-bound", RECORD, {"ctx": _received("2026-03-02T08:10:00Z")}, ACCEPT),
    ("future-bound-1ns-over", RECORD, {"ctx": _received("2026-03-02T08:09:59.999999999Z")},
        _rejects("RECORDED_AT_OUT_OF_RANGE", extends=False)),
    ("past-bound", RECORD, {"ctx": _received("2026-03-09T08:15:00Z")}, ACCEPT),
    ("past-bound-1ns-over", RECORD, {"ctx": _received("2026-03-09T08:15:00.000000001Z")},
        _rejects("RECORDED_AT_OUT_OF_RANGE", extends=False)),
    ("policy-no-future", RECORD, {"ctx": _received(T0, policy={"recorded_at_max_future_seconds": 0})}, ACCEPT),
    ("policy-no-future-1ns", RECORD,
        {"ctx": _received("2026-03-02T08:14:59.999999999Z", policy={"recorded_at_max_future_seconds": 0})},
        _rejects("RECORDED_AT_OUT_OF_RANGE", extends=False)),
    ("policy-longer-future", RECORD, {"ctx": _received("2026-03-02T07:15:00Z", policy={"recorded_at_max_future_seconds": 3600})},
        ACCEPT),
    ("policy-no-past-1ns", RECORD,
        {"ctx": _received("2026-03-02T08:15:00.000000001Z", policy={"recorded_at_max_past_seconds": 0})},
        _rejects("RECORDED_AT_OUT_OF_RANGE", extends=False)),
    ("policy-longer-past", RECORD, {"ctx": _received("2026-04-01T08:15:00Z", policy={"recorded_at_max_past_seconds": 31 * 86400})},
        ACCEPT),
    # Bounds past the timestamp range bound nothing.
    ("bounds-past-9999", _at("9999-12-31T23:59:59.999999999Z"), {"ctx": _received("9999-12-31T23:58:00Z")}, ACCEPT),
    ("bounds-before-year-1", _with(_at("0001-01-01T00:00:00Z"), "record.occurred_at", "0001-01-01T00:00:00Z"),
        {"ctx": _received("0001-01-01T00:04:00Z", keys=[{**k, "valid_from": "0001-01-01T00:00:00Z"} for k in _ctx_keys()])},
        ACCEPT),
    # Step 8b: not before the head's recorded_at.
    ("equal-to-head", _SECOND_EQUAL, {"head": _HEAD}, ACCEPT),
    ("1ns-before-head", _SECOND_EARLIER, {"head": _HEAD}, _rejects("RECORDED_AT_DECREASING", extends=False)),
    ("head-time-unknown", _SECOND_EARLIER, {"head": {k: v for k, v in _HEAD.items() if k != "recorded_at"}}, ACCEPT),
    ("out-of-range-before-decreasing", _SECOND_EARLIER, {"head": _HEAD, "ctx": _received("2026-03-02T08:05:00Z")},
        _rejects("RECORDED_AT_OUT_OF_RANGE", extends=False)),
    # Order: header, key and chain before the clock; the clock before content and facts.
    ("header-before-clock", _with(RECORD, "header.seq", MAX_SEQ + 1), {"ctx": _OUT},
        _exp("rejected", "INVALID_FIELD", "header.seq")),
    ("key-before-clock", RECORD, {"signer": "facility-10001-revoked", "ctx": _received("2026-03-20T00:00:00Z")},
        _rejects("KEY_REVOKED", extends=False)),
    ("gap-before-clock", _with(RECORD, "header.seq", 3), {"ctx": _OUT}, _rejects("SEQUENCE_GAP", extends=False)),
    ("mismatch-before-clock", _with(RECORD, "header.prev_hash", "22" * 32), {"ctx": _OUT},
        _rejects("CHAIN_MISMATCH", extends=False)),
    ("duplicate-a-month-later", RECORD, {"head": "self", "ctx": _received("2026-04-02T08:15:00Z")}, _exp("duplicate")),
    ("duplicate-before-decreasing", RECORD, {"head": "self-later"}, _exp("duplicate")),
    ("fork-before-clock", _with(RECORD, "header.event_id", "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d"),
        {"head": "self", "ctx": _OUT}, _rejects("FORK", extends=False)),
    ("clock-before-content", _with(RECORD, "record.patient_id", "1"), {"ctx": _OUT},
        _rejects("RECORDED_AT_OUT_OF_RANGE", extends=False)),
    ("decreasing-before-content", _SECOND_EARLIER_BAD, {"head": _HEAD}, _rejects("RECORDED_AT_DECREASING", extends=False)),
    ("clock-before-facts", GRANT, {"ctx": _OUT}, _rejects("RECORDED_AT_OUT_OF_RANGE", extends=False)),
    # Step 6: the seq bound.
    ("largest-seq", _AT_MAX, {"head": _MAX_HEAD}, ACCEPT),
    ("seq-2-63", _with(RECORD, "header.seq", MAX_SEQ + 1), {}, _exp("rejected", "INVALID_FIELD", "header.seq")),
    ("seq-2-64-minus-1", _with(RECORD, "header.seq", 2**64 - 1), {}, _exp("rejected", "INVALID_FIELD", "header.seq")),
    ("seq-2-63-minus-1-gap", _with(RECORD, "header.seq", MAX_SEQ), {}, _rejects("SEQUENCE_GAP", extends=False)),
    # Step 10: corrections.
    ("correction-foreign", _CORRECTION, {}, _rejects("SUPERSEDES_FOREIGN_RECORD")),
    ("correction-own", _CORRECTION, {"ctx": {"facility_facts": {"supersedes_own": True}}}, ACCEPT),
    ("correction-content-first", _with(_CORRECTION, "record.author", " "), {}, _field("record.author")),
    ("no-correction-needs-no-fact", RECORD, {"ctx": {"facility_facts": {"supersedes_own": False}}}, ACCEPT),
    ("supersedes-own-is-no-standing", GRANT, {"ctx": {"facility_facts": {"supersedes_own": True}}}, _rejects("NO_STANDING")),
]


@pytest.mark.parametrize("event,opts,expected", [c[1:] for c in CLOCK_CASES], ids=[c[0] for c in CLOCK_CASES])
def test_clock_case(event, opts, expected):
    head = opts.get("head")
    if head == "self":
        head = {**_head_of(RECORD), "recorded_at": T0}
    elif head == "self-later":
        # The head is RECORD itself, but the index says it was recorded later: a resent
        # head is a duplicate before any time is compared.
        head = {**_head_of(RECORD), "recorded_at": "2026-03-02T09:00:00Z"}
    inp = _input(event, signer=opts.get("signer", "facility-10001"))
    got, _ = _run(inp, head, opts.get("ctx"))
    assert got == expected


def test_receive_time_defaults_to_recorded_at():
    # Without received_at, a facility event is judged as received when it says it was
    # recorded: every bound holds, and the key is judged at recorded_at.
    for recorded in ("2026-03-02T08:14:59.999999999Z", "0001-06-01T00:00:00Z", "2030-01-01T00:00:00Z"):
        got, _ = _run(_input(_at(recorded), signer="facility-10001-revoked"), None,
                      {"keys": [{**k, "valid_from": "0001-01-01T00:00:00Z"} for k in _ctx_keys()]})
        revoked = recorded.startswith("2030")  # at or after the revocation at T0
        assert got == (_rejects("KEY_REVOKED", extends=False) if revoked else ACCEPT), recorded


def test_clock_context_is_strict():
    base = {"submitted_to": "ingest", "keys": [], "head": None}
    with pytest.raises(ValueError):
        Context.from_json({**base, "policy": {"recorded_at_max_future": 1}})
    with pytest.raises(ValueError):
        Context.from_json({**base, "head": {"seq": 1, "event_hash": ZERO, "event_id": HEADER["event_id"], "recorded": T0}})
    with pytest.raises(ValueError):
        Context.from_json({"keys": [], "head": None})  # no submitted_to
    with pytest.raises(ValueError):
        Context.from_json({**base, "submitted_to": "patient-service"})
    with pytest.raises(ValueError):
        Context.from_json({**base, "submitted_to": "patient_service"})  # a statement needs received_at
    ctx = Context.from_json({**base, "received_at": T0, "policy": {"recorded_at_max_past_seconds": 5},
                             "facility_facts": {"supersedes_own": True},
                             "head": {"seq": 1, "event_hash": ZERO, "event_id": HEADER["event_id"], "recorded_at": T0}})
    assert ctx.policy.recorded_at_max_past_seconds == 5 and ctx.policy.recorded_at_max_future_seconds == 300
    assert ctx.facts.supersedes_own and ctx.head.recorded_at == ctx.received_at
