"""The envelope/event verifier: steps 1–9 of tests/vectors/README.md "Verification order".

The first failing step decides. The result is an `Outcome(verdict, reason, field,
extends_chain)` with `verdict` in {"accepted", "duplicate", "rejected"}, `reason` the
RejectionReason name without its prefix (or None) and `field` the dotted field path for
INVALID_FIELD (or None).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from google.protobuf.message import DecodeError

from . import FACILITY_EVENT_TYPE
from . import dsse
from .proto import load
from .times import parse_rfc3339, ts_key

MAX_BODY_BYTES = 524_288
MAX_BREAK_GLASS_REASON_BYTES = 1_000
MAX_BREAK_GLASS_SECONDS = 86_400

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

    @classmethod
    def from_json(cls, obj: Optional[dict]) -> "Head":
        if obj is None:
            return EMPTY_HEAD
        return cls(seq=int(obj["seq"]), event_hash=bytes.fromhex(obj["event_hash"]), event_id=obj.get("event_id"))


EMPTY_HEAD = Head(seq=0, event_hash=bytes(32), event_id=None)


@dataclass(frozen=True)
class Context:
    keys: tuple[KeyEntry, ...]
    head: Head

    @classmethod
    def from_json(cls, obj: dict) -> "Context":
        return cls(
            keys=tuple(KeyEntry.from_json(k) for k in obj.get("keys") or ()),
            head=Head.from_json(obj.get("head")),
        )


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


# ---------------------------------------------------------------------------- verifier


def verify(envelope: Envelope, context: Context) -> Outcome:
    pb = load()

    # 1. Payload type: this path verifies facility events only (README step 1).
    if envelope.payload_type != FACILITY_EVENT_TYPE:
        return _reject("UNKNOWN_PAYLOAD_TYPE")

    # 2. Envelope shape.
    if _KEY_ID.fullmatch(envelope.key_id) is None or len(envelope.signature) != 64:
        return _reject("MALFORMED_ENVELOPE")

    # 3. Key lookup.
    key = next((k for k in context.keys if k.key_id == envelope.key_id), None)
    if key is None:
        return _reject("UNKNOWN_KEY")

    # 4. Signature over PAE(payload_type, payload), the payload exactly as sent.
    if not dsse.verify(key.public_key, envelope.payload_type, envelope.payload, envelope.signature):
        return _reject("BAD_SIGNATURE")

    assert envelope.payload_type == FACILITY_EVENT_TYPE

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
    if h.seq < 1:
        return _reject("INVALID_FIELD", "header.seq")
    if len(h.prev_hash) != 32:
        return _reject("INVALID_FIELD", "header.prev_hash")
    if not h.HasField("recorded_at"):
        return _reject("INVALID_FIELD", "header.recorded_at")
    recorded_at = ts_key(h.recorded_at)

    # 7. The key against the facility and the time.
    if key.facility_id != h.facility_id or recorded_at < key.valid_from:
        return _reject("KEY_NOT_VALID_FOR_FACILITY")
    if key.revoked_at is not None and key.revoked_at <= recorded_at:
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

    # 9. Content: the event extends the chain whatever the outcome.
    field = _content_error(pb, event, body_kind)
    if field is not None:
        return _reject("INVALID_FIELD", field, extends_chain=True)
    return Outcome("accepted", None, None, True)


def _content_error(pb, event, body_kind: str) -> Optional[str]:
    common = pb.common
    if body_kind == "record":
        return _record_error(common, event.record)
    if body_kind == "consent_grant":
        return _grant_error(common, event.consent_grant, event.header)
    if body_kind == "consent_revocation":
        r = event.consent_revocation
        if not is_patient_id(r.patient_id):
            return "consent_revocation.patient_id"
        if not is_uuid(r.grant_event_id):
            return "consent_revocation.grant_event_id"
        return None
    if body_kind == "break_glass":
        return _break_glass_error(event.break_glass)
    raise AssertionError(f"unknown body {body_kind}")


def _record_error(common, r) -> Optional[str]:
    kinds = common.DESCRIPTOR.enum_types_by_name["RecordKind"]
    labels = common.DESCRIPTOR.enum_types_by_name["SensitivityLabel"]
    if not is_patient_id(r.patient_id):
        return "record.patient_id"
    if not _enum_ok(kinds, r.kind):
        return "record.kind"
    if not r.HasField("occurred_at"):
        return "record.occurred_at"
    if r.author == "":
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


def _grant_error(common, g, header) -> Optional[str]:
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
    if g.HasField("data_from") and g.HasField("data_until") and not ts_key(g.data_until) > ts_key(g.data_from):
        return "consent_grant.data_until"
    if not g.HasField("expires_at") or not ts_key(g.expires_at) > ts_key(header.recorded_at):
        return "consent_grant.expires_at"
    if not g.HasField("evidence") or g.evidence.form_id == "" or len(g.evidence.sha256) != 32:
        return "consent_grant.evidence"
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


def _break_glass_error(b) -> Optional[str]:
    if not is_patient_id(b.patient_id):
        return "break_glass.patient_id"
    if b.reason == "" or len(b.reason.encode("utf-8")) > MAX_BREAK_GLASS_REASON_BYTES:
        return "break_glass.reason"
    if b.clinician == "":
        return "break_glass.clinician"
    if not b.HasField("duration"):
        return "break_glass.duration"
    d = b.duration
    whole = 0 <= d.nanos < 1_000_000_000 and d.seconds >= 0
    if not whole or (d.seconds, d.nanos) <= (0, 0) or (d.seconds, d.nanos) > (MAX_BREAK_GLASS_SECONDS, 0):
        return "break_glass.duration"
    return None


def verify_json(envelope: dict, context: dict) -> Outcome:
    return verify(Envelope.from_json(envelope), Context.from_json(context))
