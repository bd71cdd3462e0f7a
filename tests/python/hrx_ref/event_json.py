"""Builds hrx.v1 messages from the JSON form used in tests/vectors (README "JSON form").

One set of rules for a FacilityEvent (`input.event`), a PatientStatement
(`input.statement`) and a PatientKeyProof (a proof's `proof`): field names as in
events.proto; enum values without their prefix ("OBSERVATION" → RECORD_KIND_OBSERVATION;
integers are taken as raw enum numbers); times in RFC 3339 → google.protobuf.Timestamp;
bytes in hex, except `record.body`, which is the exact UTF-8 text of the body; a Duration
field `x` is given as `"x_seconds"`; a nested message (a proof's SignedEnvelope, evidence)
is an object by the same rules; absent (or null) fields take the protobuf default. Any
other key is an error, so a mismatch with the generator shows up instead of being ignored.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from .proto import load
from .times import parse_rfc3339

_TS = "google.protobuf.Timestamp"
_DUR = "google.protobuf.Duration"


class EventJsonError(ValueError):
    pass


def enum_prefix(enum_desc) -> str:
    zero = enum_desc.values_by_number[0].name
    if not zero.endswith("_UNSPECIFIED"):
        raise EventJsonError(f"enum {enum_desc.full_name} has no *_UNSPECIFIED zero value")
    return zero[: -len("UNSPECIFIED")]


def _enum_value(field, value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise EventJsonError(f"{path}: boolean is not an enum value")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise EventJsonError(f"{path}: enum value must be a name or a number, got {value!r}")
    enum_desc = field.enum_type
    full = enum_prefix(enum_desc) + value
    v = enum_desc.values_by_name.get(full)
    if v is None:
        raise EventJsonError(f"{path}: {value!r} is not a value of {enum_desc.full_name}")
    return v.number


def _bytes_value(field, value: Any, path: str) -> bytes:
    if not isinstance(value, str):
        raise EventJsonError(f"{path}: bytes must be a hex string, got {value!r}")
    if field.containing_type.full_name == "hrx.v1.Record" and field.name == "body":
        return value.encode("utf-8")
    try:
        return bytes.fromhex(value)
    except ValueError as e:
        raise EventJsonError(f"{path}: bad hex: {e}") from None


def _scalar(field, value: Any, path: str):
    t = field.type
    if t == FieldDescriptor.TYPE_ENUM:
        return _enum_value(field, value, path)
    if t == FieldDescriptor.TYPE_BYTES:
        return _bytes_value(field, value, path)
    if t == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise EventJsonError(f"{path}: expected a string, got {value!r}")
        return value
    if t == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise EventJsonError(f"{path}: expected a boolean, got {value!r}")
        return value
    if t in (
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_INT32,
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise EventJsonError(f"{path}: expected an integer, got {value!r}")
        return value
    raise EventJsonError(f"{path}: unsupported field type {t}")


def _fill(msg, obj: Any, path: str) -> None:
    if not isinstance(obj, dict):
        raise EventJsonError(f"{path or 'event'}: expected an object, got {obj!r}")
    desc = msg.DESCRIPTOR
    for key, value in obj.items():
        fpath = f"{path}.{key}" if path else key
        if value is None:
            if key not in desc.fields_by_name and not (
                key.endswith("_seconds") and key[: -len("_seconds")] in desc.fields_by_name
            ):
                raise EventJsonError(f"{fpath}: no such field in {desc.full_name}")
            continue
        field = desc.fields_by_name.get(key)
        if field is None and key.endswith("_seconds"):
            base = desc.fields_by_name.get(key[: -len("_seconds")])
            if base is not None and base.message_type is not None and base.message_type.full_name == _DUR:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise EventJsonError(f"{fpath}: expected whole seconds, got {value!r}")
                sub = getattr(msg, base.name)
                sub.SetInParent()
                sub.seconds = value
                sub.nanos = 0
                continue
        if field is None:
            raise EventJsonError(f"{fpath}: no such field in {desc.full_name}")
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if repeated:
                raise EventJsonError(f"{fpath}: repeated messages are not used by events")
            sub = getattr(msg, field.name)
            mt = field.message_type.full_name
            if mt == _TS:
                if not isinstance(value, str):
                    raise EventJsonError(f"{fpath}: expected an RFC 3339 string, got {value!r}")
                seconds, nanos = parse_rfc3339(value)
                sub.SetInParent()
                sub.seconds = seconds
                sub.nanos = nanos
            elif mt == _DUR:
                raise EventJsonError(f"{fpath}: give durations as {field.name}_seconds")
            else:
                sub.SetInParent()
                _fill(sub, value, fpath)
        elif repeated:
            if not isinstance(value, list):
                raise EventJsonError(f"{fpath}: expected a list, got {value!r}")
            getattr(msg, field.name).extend(_scalar(field, v, f"{fpath}[{i}]") for i, v in enumerate(value))
        else:
            setattr(msg, field.name, _scalar(field, value, fpath))


def _from_json(cls, obj: dict):
    msg = cls()
    _fill(msg, obj, "")
    return msg


def facility_event_from_json(obj: dict):
    """The FacilityEvent message described by `obj` (the README's `input.event`)."""
    pb = load()
    msg = pb.events.FacilityEvent()
    _fill(msg, obj, "")
    return msg


def encode_facility_event(obj: dict) -> bytes:
    return facility_event_from_json(obj).SerializeToString()


def patient_statement_from_json(obj: dict):
    """The PatientStatement message described by `obj` (the README's `input.statement`)."""
    return _from_json(load().events.PatientStatement, obj)


def encode_patient_statement(obj: dict) -> bytes:
    return patient_statement_from_json(obj).SerializeToString()


def key_proof_from_json(obj: dict):
    """The PatientKeyProof message described by `obj` (a proof recipe's `proof`)."""
    return _from_json(load().events.PatientKeyProof, obj)


def encode_key_proof(obj: dict) -> bytes:
    return key_proof_from_json(obj).SerializeToString()
