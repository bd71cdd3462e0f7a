"""The verifiers of tests/vectors/README.md "Verification order": facility events (steps
1–10) and patient statements (steps 1–9 of their own).

The first failing step decides. The result is an `Outcome(verdict, reason, field,
extends_chain)` with `verdict` in {"accepted", "duplicate", "rejected"}, `reason` the
RejectionReason name without its prefix (or None) and `field` the dotted field path for
INVALID_FIELD (or None). The context's `submitted_to` picks the verifier: "ingest"
(facility events) or "patient_service" (patient statements).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from google.protobuf.message import DecodeError

import hashlib

from . import FACILITY_EVENT_TYPE, PATIENT_KEY_PROOF_TYPE, PATIENT_STATEMENT_TYPE
from . import dsse
from .proto import load
from .times import parse_rfc3339

MAX_BODY_BYTES = 524_288
MAX_BREAK_GLASS_REASON_BYTES = 1_000
MAX_BREAK_GLASS_SECONDS = 86_400
MAX_REQUEST_REASON_BYTES = 1_000
MAX_REQUEST_SECONDS = 365 * 86_400
MAX_KEY_REVOCATION_REASON_BYTES = 1_000
MAX_PROOF_SKEW_SECONDS = 3_600
MAX_SEQ = 2**63 - 1
DAY_SECONDS = 86_400
NS = 1_000_000_000

# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
MIN_TS_SECONDS = -62_135_596_800
MAX_TS_SECONDS = 253_402_300_799

# Unicode White_Space: what "non-empty after trimming" trims (README "Conventions").
WHITE_SPACE = (
    "\u0009\u000a\u000b\u000c\u000d\u0020\u0085\u00a0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_KEY_ID = re.compile(r"[0-9a-f]{64}")
_FACILITY_ID = re.compile(r"[0-9]{5}")
_PATIENT_ID = re.compile(r"[0-9]{12}")

# RecordKind (name without prefix) → FHIR R4 resource type (common.proto, BRIEF §4).
RESOURCE_TYPES = {
    "ENCOUNTER": "Encounter",
    "CONDITION": "Condition",
    "OBSERVATION": "Observation",
    "DIAGNOSTIC_REPORT": "DiagnosticReport",
    "IMAGING_STUDY": "ImagingStudy",
    "MEDICATION_REQUEST": "MedicationRequest",
    "PROCEDURE": "Procedure",
    "ALLERGY": "AllergyIntolerance",
    "IMMUNIZATION": "Immunization",
    "REFERRAL": "ServiceRequest",
    "DOCUMENT": "DocumentReference",
}
# Kinds whose resource names the patient in `patient` rather than `subject`.
PATIENT_FIELD_KINDS = {"ALLERGY", "IMMUNIZATION"}


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    key_id: str
    signature: bytes

    @classmethod
    def from_json(cls, obj: dict) -> "Envelope":
        return cls(
            payload_type=obj["payload_type"],
            payload=bytes.fromhex(obj["payload"]),
            key_id=obj["key_id"],
            signature=bytes.fromhex(obj["signature"]),
        )


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    facility_id: str
    public_key: bytes
    valid_from: tuple[int, int]
    revoked_at: Optional[tuple[int, int]]

    @classmethod
    def from_json(cls, obj: dict) -> "KeyEntry":
        revoked = obj.get("revoked_at")
        return cls(
            key_id=obj["key_id"],
            facility_id=obj["facility_id"],
            public_key=bytes.fromhex(obj["public_key"]),
            valid_from=parse_rfc3339(obj["valid_from"]),
            revoked_at=None if revoked is None else parse_rfc3339(revoked),
        )


@dataclass(frozen=True)
class Head:
    seq: int
    event_hash: bytes
    event_id: Optional[str]
    recorded_at: Optional[int] = None  # nanos; None: not known (or an empty chain)

    @classmethod
    def from_json(cls, obj: Optional[dict]) -> "Head":
        if obj is None:
            return EMPTY_HEAD
        _strict(obj, {"seq", "event_hash", "event_id", "recorded_at"}, "head")
        recorded = obj.get("recorded_at")
        return cls(
            seq=int(obj["seq"]),
            event_hash=bytes.fromhex(obj["event_hash"]),
            event_id=obj.get("event_id"),
            recorded_at=None if recorded is None else _nanos_of_text(recorded),
        )


EMPTY_HEAD = Head(seq=0, event_hash=bytes(32), event_id=None)


def _nanos_of_text(text: str) -> int:
    seconds, nanos = parse_rfc3339(text)
    return seconds * NS + nanos


def _strict(obj: dict, allowed: set, what: str) -> None:
    unknown = set(obj) - allowed
    if unknown:
        raise ValueError(f"unknown {what} keys {sorted(unknown)}")


@dataclass(frozen=True)
class Policy:
    """The consent policy: defaults, overridden by the context's `policy`."""

    attested_max_days: int = 90
    standing_window_days: int = 365
    break_glass_per_day: int = 20
    break_glass_open_per_patient: int = 1
    # Step 8b: how far recorded_at may lie after / before the receive time.
    recorded_at_max_future_seconds: int = 300
    recorded_at_max_past_seconds: int = 7 * DAY_SECONDS

    @classmethod
    def from_json(cls, obj: Optional[dict]) -> "Policy":
        if obj is None:
            return cls()
        _strict(obj, set(cls.__dataclass_fields__), "policy")
        return cls(**{k: int(v) for k, v in obj.items() if v is not None})


@dataclass(frozen=True)
class FacilityFacts:
    """Facts from the facility's own chain before the event (step 10); times in nanos."""

    latest_authored: Optional[int] = None
    attested_the_grant: bool = False
    declared_since: int = 0
    open_for_patient: int = 0
    supersedes_own: bool = False

    @classmethod
    def from_json(cls, obj: Optional[dict]) -> "FacilityFacts":
        if obj is None:
            return cls()
        _strict(obj, set(cls.__dataclass_fields__), "facility_facts")
        latest = obj.get("latest_authored")
        return cls(
            latest_authored=None if latest is None else _nanos_of_text(latest),
            attested_the_grant=bool(obj.get("attested_the_grant", False)),
            declared_since=int(obj.get("declared_since", 0)),
            open_for_patient=int(obj.get("open_for_patient", 0)),
            supersedes_own=bool(obj.get("supersedes_own", False)),
        )


@dataclass(frozen=True)
class PatientState:
    """A patient's consent state when a statement is received."""

    patient_id: str
    active_key_id: Optional[str]
    grants: frozenset
    pending_requests: tuple  # of (request_event_id, facility_id)

    @classmethod
    def from_json(cls, obj: Optional[dict]) -> Optional["PatientState"]:
        if obj is None:
            return None
        _strict(obj, {"patient_id", "active_key_id", "grants", "pending_requests"}, "patient")
        pending = []
        for r in obj.get("pending_requests") or ():
            _strict(r, {"request_event_id", "facility_id"}, "pending request")
            pending.append((r["request_event_id"], r["facility_id"]))
        return cls(
            patient_id=obj["patient_id"],
            active_key_id=obj.get("active_key_id"),
            grants=frozenset(obj.get("grants") or ()),
            pending_requests=tuple(pending),
        )

    def pending_facility(self, request_event_id: str) -> Optional[str]:
        return next((f for r, f in self.pending_requests if r == request_event_id), None)


NO_STATE = PatientState(patient_id="", active_key_id=None, grants=frozenset(), pending_requests=())


SUBMITTED_TO = ("ingest", "patient_service")


@dataclass(frozen=True)
class Context:
    submitted_to: str  # "ingest" (a facility event) or "patient_service" (a statement)
    keys: tuple[KeyEntry, ...]
    head: Head
    policy: Policy = Policy()
    facts: FacilityFacts = FacilityFacts()
    # nanos; required for a statement; for a facility event None means its recorded_at
    received_at: Optional[int] = None
    patient: Optional[PatientState] = None

    @classmethod
    def from_json(cls, obj: dict) -> "Context":
        _strict(obj, {"submitted_to", "keys", "head", "policy", "facility_facts", "received_at", "patient"}, "context")
        submitted_to = obj.get("submitted_to")
        if submitted_to not in SUBMITTED_TO:
            raise ValueError(f"unknown submitted_to {submitted_to!r}")
        received = obj.get("received_at")
        if submitted_to == "patient_service" and received is None:
            raise ValueError("a statement's context needs received_at")
        return cls(
            submitted_to=submitted_to,
            keys=tuple(KeyEntry.from_json(k) for k in obj.get("keys") or ()),
            head=Head.from_json(obj.get("head")),
            policy=Policy.from_json(obj.get("policy")),
            facts=FacilityFacts.from_json(obj.get("facility_facts")),
            received_at=None if received is None else _nanos_of_text(received),
            patient=PatientState.from_json(obj.get("patient")),
        )

    def state_of(self, patient_id: str) -> PatientState:
        """The consent state of `patient_id`: the context's patient, or nothing at all."""
        if self.patient is not None and self.patient.patient_id == patient_id:
            return self.patient
        return NO_STATE


@dataclass(frozen=True)
class Outcome:
    verdict: str
    reason: Optional[str] = None
    field: Optional[str] = None
    extends_chain: bool = False

    def as_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "field": self.field,
            "extends_chain": self.extends_chain,
        }



def _reject(reason: str, field: Optional[str] = None, extends_chain: bool = False) -> Outcome:
    return Outcome("rejected", reason, field, extends_chain)


# ---------------------------------------------------------------------------- helpers


def is_uuid(s: str) -> bool:
    return _UUID.fullmatch(s) is not None


def is_facility_id(s: str) -> bool:
    return _FACILITY_ID.fullmatch(s) is not None


def is_patient_id(s: str) -> bool:
    return _PATIENT_ID.fullmatch(s) is not None


def is_key_id(s: str) -> bool:
    return _KEY_ID.fullmatch(s) is not None


def blank(s: str) -> bool:
    """Empty once Unicode White_Space is trimmed from both ends."""
    return s.strip(WHITE_SPACE) == ""


def ts_ok(ts) -> bool:
    """A google.protobuf.Timestamp within the Timestamp range, nanos 0..999,999,999."""
    return MIN_TS_SECONDS <= ts.seconds <= MAX_TS_SECONDS and 0 <= ts.nanos < NS


def nanos(ts) -> int:
    return ts.seconds * NS + ts.nanos


def present_ts(msg, name: str) -> bool:
    """A required timestamp field: present and in range."""
    return msg.HasField(name) and ts_ok(getattr(msg, name))


def optional_ts(msg, name: str) -> bool:
    """An optional timestamp field: absent, or in range."""
    return not msg.HasField(name) or ts_ok(getattr(msg, name))


def duration_nanos(d) -> Optional[int]:
    """A Duration as nanos, or None when it is not a whole non-negative span."""
    if d.seconds < 0 or not 0 <= d.nanos < NS:
        return None
    return d.seconds * NS + d.nanos


def _enum_ok(enum_desc, value: int) -> bool:
    """A known, non-UNSPECIFIED value. (Unknown numbers are not valid values either.)"""
    return value != 0 and value in enum_desc.values_by_number


def _enum_short(enum_desc, value: int) -> Optional[str]:
    v = enum_desc.values_by_number.get(value)
    if v is None:
        return None
    zero = enum_desc.values_by_number[0].name
    prefix = zero[: -len("UNSPECIFIED")]
    return v.name[len(prefix):]


class _JsonError(ValueError):
    pass


def _no_constants(name: str):
    raise _JsonError(f"non-JSON constant {name}")


def _check_strings(value: Any, depth: int = 0) -> None:
    # Python's json accepts escaped lone surrogates ("\ud800"); they are not Unicode text.
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _JsonError("lone surrogate in string") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k)
            _check_strings(v)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v)


def parse_json_object(body: bytes) -> Optional[dict]:
    """The body as a JSON object, or None if it is not UTF-8 JSON with an object on top."""
    try:
        text = body.decode("utf-8")  # strict: no BOM stripping, no surrogates, no overlongs
        value = json.loads(text, parse_constant=_no_constants)
        _check_strings(value)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _refers_to_patient(obj: Any, patient_id: str) -> bool:
    if not isinstance(obj, dict):
        return False
    if obj.get("reference") == f"Patient/{patient_id}":
        return True
    ident = obj.get("identifier")
    return isinstance(ident, dict) and ident.get("value") == patient_id


# ---------------------------------------------------------------------------- facility events


def verify(envelope: Envelope, context: Context) -> Outcome:
    """A facility event submitted to ingest (steps 1–10), or a patient statement
    submitted to PatientService."""
    if context.submitted_to == "patient_service":
        return verify_statement(envelope, context)
    pb = load()

    # 1. Payload type: this path verifies facility events only (README step 1).
    if envelope.payload_type != FACILITY_EVENT_TYPE:
        return _reject("UNKNOWN_PAYLOAD_TYPE")

    # 2. Envelope shape.
    if not is_key_id(envelope.key_id) or len(envelope.signature) != 64:
        return _reject("MALFORMED_ENVELOPE")

    # 3. Key lookup.
    key = next((k for k in context.keys if k.key_id == envelope.key_id), None)
    if key is None:
        return _reject("UNKNOWN_KEY")

    # 4. Signature over PAE(payload_type, payload), the payload exactly as sent.
    if not dsse.verify(key.public_key, envelope.payload_type, envelope.payload, envelope.signature):
        return _reject("BAD_SIGNATURE")

    # 5. Payload decodes as a FacilityEvent with a header and a body.
    try:
        event = pb.events.FacilityEvent.FromString(envelope.payload)
    except DecodeError:
        return _reject("MALFORMED_PAYLOAD")
    body_kind = event.WhichOneof("body")
    if not event.HasField("header") or body_kind is None:
        return _reject("MALFORMED_PAYLOAD")
    h = event.header

    # 6. Header fields, in order.
    if not is_uuid(h.event_id):
        return _reject("INVALID_FIELD", "header.event_id")
    if not is_facility_id(h.facility_id):
        return _reject("INVALID_FIELD", "header.facility_id")
    if not 1 <= h.seq <= MAX_SEQ:
        return _reject("INVALID_FIELD", "header.seq")
    if len(h.prev_hash) != 32:
        return _reject("INVALID_FIELD", "header.prev_hash")
    if not present_ts(h, "recorded_at"):
        return _reject("INVALID_FIELD", "header.recorded_at")
    recorded_at = nanos(h.recorded_at)
    # When the exchange received the event: the time it can vouch for. A context
    # without one means the event was received at the recorded_at it claims.
    received_at = recorded_at if context.received_at is None else context.received_at

    # 7. The key against the facility and the receive time (never recorded_at).
    valid_from = key.valid_from[0] * NS + key.valid_from[1]
    revoked_at = None if key.revoked_at is None else key.revoked_at[0] * NS + key.revoked_at[1]
    if key.facility_id != h.facility_id or received_at < valid_from:
        return _reject("KEY_NOT_VALID_FOR_FACILITY")
    if revoked_at is not None and revoked_at <= received_at:
        return _reject("KEY_REVOKED")

    # 8. Chain against the facility's head.
    head = context.head
    this_hash = dsse.event_hash(envelope.payload_type, envelope.payload)
    if (head.event_id is not None and h.event_id == head.event_id) or h.seq == head.seq:
        if this_hash == head.event_hash:
            return Outcome("duplicate", None, None, False)
        return _reject("FORK")
    if h.seq == head.seq + 1:
        if h.prev_hash != head.event_hash:
            return _reject("CHAIN_MISMATCH")
    elif h.seq > head.seq + 1:
        return _reject("SEQUENCE_GAP")
    else:
        # seq < head.seq with a new event id: with only the head known, it cannot be the
        # event recorded at that seq (README step 8).
        return _reject("FORK")

    # 8b. The event extends the chain: its recorded_at against the receive time and the
    #     head's. A refusal here keeps it out of the chain.
    policy = context.policy
    if recorded_at > received_at + policy.recorded_at_max_future_seconds * NS:
        return _reject("RECORDED_AT_OUT_OF_RANGE")
    if recorded_at < received_at - policy.recorded_at_max_past_seconds * NS:
        return _reject("RECORDED_AT_OUT_OF_RANGE")
    if head.recorded_at is not None and recorded_at < head.recorded_at:
        return _reject("RECORDED_AT_DECREASING")

    # 9. Content: the event extends the chain whatever the outcome.
    error = _content_error(pb, event, body_kind)
    if error is not None:
        reason, field = error
        return _reject(reason, field, extends_chain=True)

    # 10. Facility facts: the facility's own chain before the event.
    reason = _facts_error(pb, event, body_kind, context.policy, context.facts)
    if reason is not None:
        return _reject(reason, None, extends_chain=True)
    return Outcome("accepted", None, None, True)


def _field(name: str) -> tuple[str, str]:
    return ("INVALID_FIELD", name)


def _content_error(pb, event, body_kind: str) -> Optional[tuple[str, Optional[str]]]:
    """(reason, field) of the first content failure (step 9), or None."""
    common = pb.common
    h = event.header
    if body_kind == "record":
        f = _record_error(common, event.record)
    elif body_kind == "consent_grant":
        f = _grant_error(common, event.consent_grant, nanos(h.recorded_at), evidence_required=True)
    elif body_kind == "consent_revocation":
        f = _revocation_error(event.consent_revocation)
    elif body_kind == "break_glass":
        f = _break_glass_error(event.break_glass, nanos(h.recorded_at))
    elif body_kind == "patient_key_enrollment":
        e = event.patient_key_enrollment
        if not is_patient_id(e.patient_id):
            f = "patient_key_enrollment.patient_id"
        elif len(e.public_key) != 32:
            f = "patient_key_enrollment.public_key"
        elif not e.HasField("proof"):
            f = "patient_key_enrollment.proof"
        else:
            ok = proof_ok(pb, e.proof, e.patient_id, e.public_key, h.facility_id, nanos(h.recorded_at))
            return None if ok else ("BAD_PROOF_OF_POSSESSION", None)
    elif body_kind == "consent_request":
        f = _request_error(common, event.consent_request)
    else:
        raise AssertionError(f"unknown body {body_kind}")
    return None if f is None else _field(f)


def _facts_error(pb, event, body_kind: str, policy: Policy, facts: FacilityFacts) -> Optional[str]:
    """The reason of the first failing facility-fact check (step 10), or None."""
    at = nanos(event.header.recorded_at)
    if body_kind == "consent_grant":
        g = event.consent_grant
        if g.WhichOneof("grantee") == "any_facility":
            return "ATTESTED_GRANT_OUT_OF_BOUNDS"
        if len(g.include_sensitive) > 0:
            return "ATTESTED_GRANT_OUT_OF_BOUNDS"
        if nanos(g.expires_at) > at + policy.attested_max_days * DAY_SECONDS * NS:
            return "ATTESTED_GRANT_OUT_OF_BOUNDS"
        if g.request_event_id != "":
            return "ATTESTED_GRANT_OUT_OF_BOUNDS"
        window_start = at - policy.standing_window_days * DAY_SECONDS * NS
        latest = facts.latest_authored
        if latest is None or latest < window_start or latest > at:
            return "NO_STANDING"
        return None
    if body_kind == "consent_revocation":
        return None if facts.attested_the_grant else "NOT_GRANTOR"
    if body_kind == "break_glass":
        if facts.declared_since >= policy.break_glass_per_day:
            return "BREAK_GLASS_LIMIT"
        if facts.open_for_patient >= policy.break_glass_open_per_patient:
            return "BREAK_GLASS_LIMIT"
        return None
    if body_kind == "record":
        # A correction only of an earlier record of this facility about this patient.
        if event.record.supersedes != "" and not facts.supersedes_own:
            return "SUPERSEDES_FOREIGN_RECORD"
        return None
    return None


def _record_error(common, r) -> Optional[str]:
    kinds = common.DESCRIPTOR.enum_types_by_name["RecordKind"]
    labels = common.DESCRIPTOR.enum_types_by_name["SensitivityLabel"]
    if not is_patient_id(r.patient_id):
        return "record.patient_id"
    if not _enum_ok(kinds, r.kind):
        return "record.kind"
    if not present_ts(r, "occurred_at"):
        return "record.occurred_at"
    if blank(r.author):
        return "record.author"
    if not all(_enum_ok(labels, s) for s in r.sensitivity):
        return "record.sensitivity"
    if r.supersedes != "" and not is_uuid(r.supersedes):
        return "record.supersedes"
    if r.content_type != "application/fhir+json":
        return "record.content_type"
    if len(r.body) > MAX_BODY_BYTES:
        return "record.body"
    body = parse_json_object(r.body)
    if body is None:
        return "record.body"
    kind = _enum_short(kinds, r.kind)
    rt = body.get("resourceType")
    if not isinstance(rt, str) or rt != RESOURCE_TYPES[kind]:
        return "record.body.resourceType"
    ref_field = "patient" if kind in PATIENT_FIELD_KINDS else "subject"
    if not _refers_to_patient(body.get(ref_field), r.patient_id):
        return f"record.body.{ref_field}"
    return None


def _evidence_ok(e) -> bool:
    return not blank(e.form_id) and len(e.sha256) == 32


def _grant_error(common, g, reference: int, evidence_required: bool) -> Optional[str]:
    """The first bad field of a grant. `reference` (nanos) is the time expires_at must
    be after: recorded_at for an attested grant, received_at for a patient-signed one."""
    purposes = common.DESCRIPTOR.enum_types_by_name["Purpose"]
    kinds = common.DESCRIPTOR.enum_types_by_name["RecordKind"]
    labels = common.DESCRIPTOR.enum_types_by_name["SensitivityLabel"]
    if not is_patient_id(g.patient_id):
        return "consent_grant.patient_id"
    if len(g.purposes) == 0 or not all(_enum_ok(purposes, p) for p in g.purposes):
        return "consent_grant.purposes"
    if not all(_enum_ok(kinds, k) for k in g.kinds):
        return "consent_grant.kinds"
    if not all(_enum_ok(labels, s) for s in g.include_sensitive):
        return "consent_grant.include_sensitive"
    if not optional_ts(g, "data_from"):
        return "consent_grant.data_from"
    if not optional_ts(g, "data_until"):
        return "consent_grant.data_until"
    if g.HasField("data_from") and g.HasField("data_until") and not nanos(g.data_until) > nanos(g.data_from):
        return "consent_grant.data_until"
    if not present_ts(g, "expires_at") or not nanos(g.expires_at) > reference:
        return "consent_grant.expires_at"
    if g.HasField("evidence"):
        if not _evidence_ok(g.evidence):
            return "consent_grant.evidence"
    elif evidence_required:
        return "consent_grant.evidence"
    if g.request_event_id != "" and not is_uuid(g.request_event_id):
        return "consent_grant.request_event_id"
    grantee = g.WhichOneof("grantee")
    if grantee == "grantee_facility_id":
        ok = is_facility_id(g.grantee_facility_id)
    elif grantee == "any_facility":
        ok = g.any_facility is True
    else:
        ok = False
    if not ok:
        return "consent_grant.grantee"
    return None


def _revocation_error(r) -> Optional[str]:
    if not is_patient_id(r.patient_id):
        return "consent_revocation.patient_id"
    if not is_uuid(r.grant_event_id):
        return "consent_revocation.grant_event_id"
    if r.HasField("evidence") and not _evidence_ok(r.evidence):
        return "consent_revocation.evidence"
    return None


def _break_glass_error(b, recorded_at: int) -> Optional[str]:
    if not is_patient_id(b.patient_id):
        return "break_glass.patient_id"
    if blank(b.reason) or len(b.reason.encode("utf-8")) > MAX_BREAK_GLASS_REASON_BYTES:
        return "break_glass.reason"
    if blank(b.clinician):
        return "break_glass.clinician"
    if not b.HasField("duration"):
        return "break_glass.duration"
    d = duration_nanos(b.duration)
    if d is None or d == 0 or d > MAX_BREAK_GLASS_SECONDS * NS:
        return "break_glass.duration"
    # The window must end within the Timestamp range.
    if recorded_at + d > MAX_TS_SECONDS * NS + NS - 1:
        return "break_glass.duration"
    return None


def _request_error(common, r) -> Optional[str]:
    purposes = common.DESCRIPTOR.enum_types_by_name["Purpose"]
    kinds = common.DESCRIPTOR.enum_types_by_name["RecordKind"]
    labels = common.DESCRIPTOR.enum_types_by_name["SensitivityLabel"]
    if not is_patient_id(r.patient_id):
        return "consent_request.patient_id"
    if len(r.purposes) == 0 or not all(_enum_ok(purposes, p) for p in r.purposes):
        return "consent_request.purposes"
    if not all(_enum_ok(kinds, k) for k in r.kinds):
        return "consent_request.kinds"
    if not optional_ts(r, "data_from"):
        return "consent_request.data_from"
    if not optional_ts(r, "data_until"):
        return "consent_request.data_until"
    if r.HasField("data_from") and r.HasField("data_until") and not nanos(r.data_until) > nanos(r.data_from):
        return "consent_request.data_until"
    if not r.HasField("duration"):
        return "consent_request.duration"
    d = duration_nanos(r.duration)
    if d is None or d == 0 or d > MAX_REQUEST_SECONDS * NS:
        return "consent_request.duration"
    if blank(r.reason) or len(r.reason.encode("utf-8")) > MAX_REQUEST_REASON_BYTES:
        return "consent_request.reason"
    if not all(_enum_ok(labels, s) for s in r.include_sensitive):
        return "consent_request.include_sensitive"
    return None


# ---------------------------------------------------------------------------- proofs


def proof_ok(pb, proof, patient_id: str, public_key: bytes, facility_id: str, at: int) -> bool:
    """Whether `proof` (a SignedEnvelope message) proves possession of `public_key` by
    `patient_id`, for `facility_id` ("" in a rotation), made within an hour of `at`."""
    if proof.payload_type != PATIENT_KEY_PROOF_TYPE:
        return False
    if not is_key_id(proof.key_id) or len(proof.signature) != 64:
        return False
    if proof.key_id != hashlib.sha256(public_key).hexdigest():
        return False
    if not dsse.verify(public_key, proof.payload_type, proof.payload, proof.signature):
        return False
    try:
        p = pb.events.PatientKeyProof.FromString(proof.payload)
    except DecodeError:
        return False
    if p.patient_id != patient_id or p.public_key != public_key or p.facility_id != facility_id:
        return False
    if not present_ts(p, "proved_at"):
        return False
    return abs(nanos(p.proved_at) - at) <= MAX_PROOF_SKEW_SECONDS * NS


# ---------------------------------------------------------------------------- statements


def verify_statement(envelope: Envelope, context: Context) -> Outcome:
    """A patient statement received at `context.received_at`: accepted or rejected, never
    in a chain (extends_chain is always false)."""
    pb = load()
    received_at = context.received_at
    assert received_at is not None

    # 1. Payload type.
    if envelope.payload_type != PATIENT_STATEMENT_TYPE:
        return _reject("UNKNOWN_PAYLOAD_TYPE")

    # 2. Envelope shape.
    if not is_key_id(envelope.key_id) or len(envelope.signature) != 64:
        return _reject("MALFORMED_ENVELOPE")

    # 3. Payload decodes as a PatientStatement with a header and a body (the signing key
    #    is in the payload, so decoding comes before the signature).
    try:
        st = pb.events.PatientStatement.FromString(envelope.payload)
    except DecodeError:
        return _reject("MALFORMED_PAYLOAD")
    body_kind = st.WhichOneof("body")
    if not st.HasField("header") or body_kind is None:
        return _reject("MALFORMED_PAYLOAD")
    h = st.header

    # 4. Header fields, in order.
    if not is_uuid(h.statement_id):
        return _reject("INVALID_FIELD", "statement.header.statement_id")
    if not is_patient_id(h.patient_id):
        return _reject("INVALID_FIELD", "statement.header.patient_id")
    if len(h.public_key) != 32:
        return _reject("INVALID_FIELD", "statement.header.public_key")
    if not present_ts(h, "signed_at"):
        return _reject("INVALID_FIELD", "statement.header.signed_at")

    # 5. The key id names the header's key.
    if envelope.key_id != hashlib.sha256(h.public_key).hexdigest():
        return _reject("BAD_SIGNATURE")

    # 6. Signature.
    if not dsse.verify(h.public_key, envelope.payload_type, envelope.payload, envelope.signature):
        return _reject("BAD_SIGNATURE")

    # 7. Body content.
    error = _statement_body_error(pb, st, body_kind, received_at)
    if error is not None:
        reason, field = error
        return _reject(reason, field)

    # 8. The key is the patient's active key when the exchange received the statement.
    state = context.state_of(h.patient_id)
    if state.active_key_id is None or state.active_key_id != envelope.key_id:
        return _reject("PATIENT_KEY_NOT_VALID")

    # 9. References to the patient's state.
    if body_kind == "consent_revocation":
        if st.consent_revocation.grant_event_id not in state.grants:
            return _reject("NOT_GRANTOR")
    elif body_kind == "consent_decline":
        if state.pending_facility(st.consent_decline.request_event_id) is None:
            return _reject("INVALID_FIELD", "consent_decline.request_event_id")
    elif body_kind == "consent_grant":
        g = st.consent_grant
        if g.request_event_id != "":
            facility = state.pending_facility(g.request_event_id)
            if facility is None:
                return _reject("INVALID_FIELD", "consent_grant.request_event_id")
            if g.WhichOneof("grantee") != "grantee_facility_id" or g.grantee_facility_id != facility:
                return _reject("INVALID_FIELD", "consent_grant.request_event_id")
    return Outcome("accepted", None, None, False)


def _statement_body_error(pb, st, body_kind: str, received_at: int) -> Optional[tuple[str, Optional[str]]]:
    h = st.header
    if body_kind == "consent_grant":
        f = _grant_error(pb.common, st.consent_grant, received_at, evidence_required=False)
        if f is None and st.consent_grant.patient_id != h.patient_id:
            f = "consent_grant.patient_id"
    elif body_kind == "consent_revocation":
        f = _revocation_error(st.consent_revocation)
        if f is None and st.consent_revocation.patient_id != h.patient_id:
            f = "consent_revocation.patient_id"
    elif body_kind == "consent_decline":
        f = None if is_uuid(st.consent_decline.request_event_id) else "consent_decline.request_event_id"
    elif body_kind == "key_rotation":
        k = st.key_rotation
        if len(k.new_public_key) != 32 or k.new_public_key == h.public_key:
            f = "key_rotation.new_public_key"
        elif not k.HasField("proof"):
            f = "key_rotation.proof"
        else:
            ok = proof_ok(pb, k.proof, h.patient_id, k.new_public_key, "", received_at)
            return None if ok else ("BAD_PROOF_OF_POSSESSION", None)
    elif body_kind == "key_revocation":
        too_long = len(st.key_revocation.reason.encode("utf-8")) > MAX_KEY_REVOCATION_REASON_BYTES
        f = "key_revocation.reason" if too_long else None
    else:
        raise AssertionError(f"unknown statement body {body_kind}")
    return None if f is None else _field(f)


def verify_json(envelope: dict, context: dict) -> Outcome:
    return verify(Envelope.from_json(envelope), Context.from_json(context))
