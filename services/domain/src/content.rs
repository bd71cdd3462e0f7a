//! Content rules: whether a correctly signed and chained event may be projected.
//!
//! Each function parses an unchecked body into its valid form or names the first field
//! that is wrong, in the order the test-vector README fixes so that every implementation
//! reports the same field. Messages describe the rule, never the value.

use serde_json::Value;

use crate::dsse::PublicKey;
use crate::event::{Body, RegistryBody};
use crate::event::{
    BreakGlass, ConsentGrant, ConsentRequest, ConsentRevocation, Evidence, FHIR_JSON,
    FacilityHeader, Grantee, MAX_BODY_BYTES, MAX_BREAK_GLASS_REASON_BYTES, MAX_BREAK_GLASS_SECONDS,
    MAX_REQUEST_REASON_BYTES, MAX_REQUEST_SECONDS, Record, optional_timestamp, timestamp,
    unchecked,
};
use crate::ids::{EventId, FacilityId, KeyId, PatientId, Sha256};
use crate::kinds::{FacilityLevel, Purpose, RecordKind, SensitivityLabel};
use crate::rejection::{Reason, Rejection};
use crate::time::Duration;
use crate::time::Timestamp;

/// Parses the body of a facility event whose header is already valid.
pub fn check_body(header: &FacilityHeader, body: &unchecked::Body) -> Result<Body, Rejection> {
    Ok(match body {
        unchecked::Body::Record(r) => Body::Record(check_record(r)?),
        unchecked::Body::ConsentGrant(g) => Body::ConsentGrant(check_grant(header, g)?),
        unchecked::Body::ConsentRevocation(r) => Body::ConsentRevocation(check_revocation(r)?),
        unchecked::Body::BreakGlass(b) => Body::BreakGlass(check_break_glass(header, b)?),
        unchecked::Body::PatientKeyEnrollment(e) => Body::PatientKeyEnrollment(
            crate::patient::check_enrollment(&header.facility_id, &header.link, e)?,
        ),
        unchecked::Body::ConsentRequest(r) => Body::ConsentRequest(check_request(r)?),
    })
}

fn patient(s: &str, field: &'static str) -> Result<PatientId, Rejection> {
    PatientId::parse(s).map_err(|e| Rejection::invalid_field(field, e))
}

fn codes<T>(
    raw: &[i32],
    field: &'static str,
    from_code: fn(i32) -> Option<T>,
) -> Result<Vec<T>, Rejection> {
    raw.iter()
        .map(|c| {
            from_code(*c)
                .ok_or_else(|| Rejection::invalid_field(field, "unspecified or unknown value"))
        })
        .collect()
}

fn non_empty(s: &str, field: &'static str) -> Result<String, Rejection> {
    if s.trim().is_empty() {
        Err(Rejection::invalid_field(field, "required"))
    } else {
        Ok(s.to_owned())
    }
}

/// Checks a record and its FHIR body.
pub fn check_record(r: &unchecked::Record) -> Result<Record, Rejection> {
    let patient_id = patient(&r.patient_id, "record.patient_id")?;
    let kind = RecordKind::from_code(r.kind)
        .ok_or_else(|| Rejection::invalid_field("record.kind", "unspecified or unknown kind"))?;
    let occurred_at = timestamp(r.occurred_at, "record.occurred_at")?;
    let author = non_empty(&r.author, "record.author")?;
    let sensitivity = codes(
        &r.sensitivity,
        "record.sensitivity",
        SensitivityLabel::from_code,
    )?;
    let supersedes = if r.supersedes.is_empty() {
        None
    } else {
        Some(
            EventId::parse(&r.supersedes)
                .map_err(|e| Rejection::invalid_field("record.supersedes", e))?,
        )
    };
    if r.content_type != FHIR_JSON {
        return Err(Rejection::invalid_field(
            "record.content_type",
            "must be application/fhir+json",
        ));
    }
    check_fhir_body(kind, &patient_id, &r.body)?;
    Ok(Record {
        patient_id,
        kind,
        occurred_at,
        author,
        sensitivity,
        supersedes,
        body: r.body.clone(),
    })
}

/// A FHIR body: small, a JSON object, of the kind's resource type, about this patient.
fn check_fhir_body(kind: RecordKind, patient_id: &PatientId, body: &[u8]) -> Result<(), Rejection> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Rejection::invalid_field(
            "record.body",
            format_args!(
                "{} bytes is more than the {MAX_BODY_BYTES}-byte limit",
                body.len()
            ),
        ));
    }
    let json: Value = serde_json::from_slice(body)
        .map_err(|_| Rejection::invalid_field("record.body", "must be UTF-8 JSON"))?;
    let Value::Object(resource) = json else {
        return Err(Rejection::invalid_field(
            "record.body",
            "must be a JSON object",
        ));
    };
    let expected = kind.fhir_resource_type();
    if resource.get("resourceType").and_then(Value::as_str) != Some(expected) {
        return Err(Rejection::invalid_field(
            "record.body.resourceType",
            format_args!("must be {expected} for kind {kind}"),
        ));
    }
    let (element, field) = match kind.fhir_patient_element() {
        "patient" => ("patient", "record.body.patient"),
        _ => ("subject", "record.body.subject"),
    };
    if !refers_to_patient(resource.get(element), patient_id) {
        return Err(Rejection::invalid_field(
            field,
            "must refer to the record's patient (reference Patient/<patient_id> or identifier.value)",
        ));
    }
    Ok(())
}

/// Whether a FHIR Reference names the patient, by literal reference or by identifier.
fn refers_to_patient(reference: Option<&Value>, patient_id: &PatientId) -> bool {
    let Some(Value::Object(r)) = reference else {
        return false;
    };
    let by_reference = r
        .get("reference")
        .and_then(Value::as_str)
        .and_then(|s| s.strip_prefix("Patient/"))
        == Some(patient_id.as_str());
    let by_identifier = r
        .get("identifier")
        .and_then(|i| i.get("value"))
        .and_then(Value::as_str)
        == Some(patient_id.as_str());
    by_reference || by_identifier
}

fn evidence(raw: Option<&unchecked::Evidence>, field: &'static str) -> Result<Evidence, Rejection> {
    let e = raw.ok_or_else(|| Rejection::invalid_field(field, "required"))?;
    if e.form_id.trim().is_empty() {
        return Err(Rejection::invalid_field(field, "form_id is required"));
    }
    let sha256 = Sha256::from_slice(&e.sha256)
        .map_err(|_| Rejection::invalid_field(field, "sha256 must be 32 bytes"))?;
    Ok(Evidence {
        form_id: e.form_id.clone(),
        sha256,
    })
}

/// Checks a facility-attested consent grant's fields. `recorded_at` bounds its
/// expiry; the attested bounds (grantee, labels, expiry limit) and the facility's
/// standing are checked later, against the consent policy and the facility's chain
/// ([`crate::consent::check_facility_event`]).
pub fn check_grant(
    header: &FacilityHeader,
    g: &unchecked::ConsentGrant,
) -> Result<ConsentGrant, Rejection> {
    check_grant_fields(g, header.link.recorded_at, true)
}

/// The fields of a grant, attested or patient-signed, in the contract's order.
/// `reference` is the time the expiry must lie after; `evidence_required` is true for an
/// attested grant (the paper form is the evidence).
pub fn check_grant_fields(
    g: &unchecked::ConsentGrant,
    reference: Timestamp,
    evidence_required: bool,
) -> Result<ConsentGrant, Rejection> {
    let patient_id = patient(&g.patient_id, "consent_grant.patient_id")?;
    let purposes = codes(&g.purposes, "consent_grant.purposes", Purpose::from_code)?;
    if purposes.is_empty() {
        return Err(Rejection::invalid_field(
            "consent_grant.purposes",
            "at least one purpose is required",
        ));
    }
    let kinds = codes(&g.kinds, "consent_grant.kinds", RecordKind::from_code)?;
    let include_sensitive = codes(
        &g.include_sensitive,
        "consent_grant.include_sensitive",
        SensitivityLabel::from_code,
    )?;
    let data_from = optional_timestamp(g.data_from, "consent_grant.data_from")?;
    let data_until = optional_timestamp(g.data_until, "consent_grant.data_until")?;
    if let (Some(from), Some(until)) = (data_from, data_until)
        && until <= from
    {
        return Err(Rejection::invalid_field(
            "consent_grant.data_until",
            "must be after data_from",
        ));
    }
    let expires_at = timestamp(g.expires_at, "consent_grant.expires_at")?;
    if expires_at <= reference {
        return Err(Rejection::invalid_field(
            "consent_grant.expires_at",
            if evidence_required {
                "must be after recorded_at"
            } else {
                "must be after the time the exchange received the statement"
            },
        ));
    }
    let evidence = match (&g.evidence, evidence_required) {
        (None, false) => None,
        (e, _) => Some(evidence(e.as_ref(), "consent_grant.evidence")?),
    };
    let request = if g.request_event_id.is_empty() {
        None
    } else {
        Some(
            EventId::parse(&g.request_event_id)
                .map_err(|e| Rejection::invalid_field("consent_grant.request_event_id", e))?,
        )
    };
    let grantee = match &g.grantee {
        Some(unchecked::Grantee::Facility(f)) => Grantee::Facility(
            FacilityId::parse(f)
                .map_err(|e| Rejection::invalid_field("consent_grant.grantee", e))?,
        ),
        Some(unchecked::Grantee::AnyFacility(true)) => Grantee::AnyFacility,
        Some(unchecked::Grantee::AnyFacility(false)) | None => {
            return Err(Rejection::invalid_field(
                "consent_grant.grantee",
                "required: a facility id or any_facility = true",
            ));
        }
    };
    Ok(ConsentGrant {
        patient_id,
        grantee,
        purposes,
        kinds,
        include_sensitive,
        data_from,
        data_until,
        expires_at,
        evidence,
        request,
    })
}

/// Checks a facility's consent request.
pub fn check_request(r: &unchecked::ConsentRequest) -> Result<ConsentRequest, Rejection> {
    let patient_id = patient(&r.patient_id, "consent_request.patient_id")?;
    let purposes = codes(&r.purposes, "consent_request.purposes", Purpose::from_code)?;
    if purposes.is_empty() {
        return Err(Rejection::invalid_field(
            "consent_request.purposes",
            "at least one purpose is required",
        ));
    }
    let kinds = codes(&r.kinds, "consent_request.kinds", RecordKind::from_code)?;
    let data_from = optional_timestamp(r.data_from, "consent_request.data_from")?;
    let data_until = optional_timestamp(r.data_until, "consent_request.data_until")?;
    if let (Some(from), Some(until)) = (data_from, data_until)
        && until <= from
    {
        return Err(Rejection::invalid_field(
            "consent_request.data_until",
            "must be after data_from",
        ));
    }
    let raw = r
        .duration
        .ok_or_else(|| Rejection::invalid_field("consent_request.duration", "required"))?;
    let duration = Duration::new(raw.seconds, raw.nanos)
        .ok()
        .filter(|d| {
            d.as_nanos() > 0 && d.as_nanos() <= i128::from(MAX_REQUEST_SECONDS) * 1_000_000_000
        })
        .ok_or_else(|| {
            Rejection::invalid_field(
                "consent_request.duration",
                "must be more than 0 s and at most 365 days",
            )
        })?;
    let reason = non_empty(&r.reason, "consent_request.reason")?;
    if reason.len() > MAX_REQUEST_REASON_BYTES {
        return Err(Rejection::invalid_field(
            "consent_request.reason",
            format_args!("at most {MAX_REQUEST_REASON_BYTES} bytes"),
        ));
    }
    let include_sensitive = codes(
        &r.include_sensitive,
        "consent_request.include_sensitive",
        SensitivityLabel::from_code,
    )?;
    Ok(ConsentRequest {
        patient_id,
        purposes,
        kinds,
        data_from,
        data_until,
        duration,
        reason,
        include_sensitive,
    })
}

pub fn check_revocation(r: &unchecked::ConsentRevocation) -> Result<ConsentRevocation, Rejection> {
    let patient_id = patient(&r.patient_id, "consent_revocation.patient_id")?;
    let grant_event_id = EventId::parse(&r.grant_event_id)
        .map_err(|e| Rejection::invalid_field("consent_revocation.grant_event_id", e))?;
    let evidence = r
        .evidence
        .as_ref()
        .map(|e| evidence(Some(e), "consent_revocation.evidence"))
        .transpose()?;
    Ok(ConsentRevocation {
        patient_id,
        grant_event_id,
        evidence,
    })
}

pub fn check_break_glass(
    header: &FacilityHeader,
    b: &unchecked::BreakGlass,
) -> Result<BreakGlass, Rejection> {
    let patient_id = patient(&b.patient_id, "break_glass.patient_id")?;
    let reason = non_empty(&b.reason, "break_glass.reason")?;
    if reason.len() > MAX_BREAK_GLASS_REASON_BYTES {
        return Err(Rejection::invalid_field(
            "break_glass.reason",
            format_args!("at most {MAX_BREAK_GLASS_REASON_BYTES} bytes"),
        ));
    }
    let clinician = non_empty(&b.clinician, "break_glass.clinician")?;
    let raw = b
        .duration
        .ok_or_else(|| Rejection::invalid_field("break_glass.duration", "required"))?;
    let duration = Duration::new(raw.seconds, raw.nanos)
        .map_err(|_| Rejection::invalid_field("break_glass.duration", "must be positive"))?;
    if duration.as_nanos() == 0
        || duration.as_nanos() > i128::from(MAX_BREAK_GLASS_SECONDS) * 1_000_000_000
    {
        return Err(Rejection::invalid_field(
            "break_glass.duration",
            "must be more than 0 s and at most 24 h",
        ));
    }
    let expires_at = header
        .link
        .recorded_at
        .checked_add(duration)
        .ok_or_else(|| {
            Rejection::invalid_field("break_glass.duration", "ends past the year 9999")
        })?;
    Ok(BreakGlass {
        patient_id,
        reason,
        clinician,
        duration,
        expires_at,
    })
}

/// Parses the body of a registry event.
pub fn check_registry_body(body: &unchecked::RegistryBody) -> Result<RegistryBody, Rejection> {
    Ok(match body {
        unchecked::RegistryBody::FacilityRegistered {
            facility_id,
            name,
            province,
            level,
        } => RegistryBody::FacilityRegistered {
            facility_id: FacilityId::parse(facility_id).map_err(|e| {
                Rejection::invalid_field("registry.facility_registered.facility_id", e)
            })?,
            name: non_empty(name, "registry.facility_registered.name")?,
            province: non_empty(province, "registry.facility_registered.province")?,
            level: FacilityLevel::from_code(*level).ok_or_else(|| {
                Rejection::invalid_field(
                    "registry.facility_registered.level",
                    "unspecified or unknown level",
                )
            })?,
        },
        unchecked::RegistryBody::KeyAdded {
            facility_id,
            public_key,
            valid_from,
        } => RegistryBody::KeyAdded {
            facility_id: FacilityId::parse(facility_id)
                .map_err(|e| Rejection::invalid_field("registry.key_added.facility_id", e))?,
            public_key: PublicKey::from_slice(public_key).ok_or_else(|| {
                Rejection::invalid_field(
                    "registry.key_added.public_key",
                    "must be 32 bytes (Ed25519)",
                )
            })?,
            valid_from: timestamp(*valid_from, "registry.key_added.valid_from")?,
        },
        unchecked::RegistryBody::KeyRevoked {
            key_id,
            revoked_at,
            reason,
        } => RegistryBody::KeyRevoked {
            key_id: KeyId::parse(key_id)
                .map_err(|e| Rejection::invalid_field("registry.key_revoked.key_id", e))?,
            revoked_at: timestamp(*revoked_at, "registry.key_revoked.revoked_at")?,
            reason: reason.clone(),
        },
        unchecked::RegistryBody::CertificateRevoked {
            serial,
            principal,
            revoked_at,
            reason,
        } => RegistryBody::CertificateRevoked {
            serial: crate::event::CertificateSerial::parse(serial)
                .map_err(|e| Rejection::invalid_field("registry.certificate_revoked.serial", e))?,
            principal: principal.clone(),
            revoked_at: timestamp(*revoked_at, "registry.certificate_revoked.revoked_at")?,
            reason: reason.clone(),
        },
    })
}

/// The last step of a valid registry event: what the registry already holds. A key is
/// added once, to a registered facility; only a registered, unrevoked facility key can
/// be revoked. `existing` is the registered key with the body's key id, if any;
/// `facility_registered` whether the body's facility is registered. A refusal here is
/// a content rejection: the event keeps its place in the registry chain.
pub fn check_registry_change(
    body: &RegistryBody,
    existing: Option<&crate::verify::KeyRecord>,
    facility_registered: bool,
) -> Result<(), Rejection> {
    match body {
        // Certificates are not registered (any CA the exchange trusts issues them), so
        // any serial may be revoked; revoking one twice keeps the first revocation.
        RegistryBody::FacilityRegistered { .. } | RegistryBody::CertificateRevoked { .. } => Ok(()),
        RegistryBody::KeyAdded { .. } if existing.is_some() => Err(Rejection::invalid_field(
            "registry.key_added.public_key",
            "this key is already registered",
        )),
        RegistryBody::KeyAdded { .. } if !facility_registered => Err(Rejection::invalid_field(
            "registry.key_added.facility_id",
            "no facility with this id is registered",
        )),
        RegistryBody::KeyAdded { .. } => Ok(()),
        RegistryBody::KeyRevoked { .. } => match existing {
            None => Err(Rejection::new(
                Reason::UnknownKey,
                "no registered key has this key_id: nothing was revoked",
            )),
            Some(k) if k.owner == crate::verify::KeyOwner::Root => Err(Rejection::invalid_field(
                "registry.key_revoked.key_id",
                "the national root key is not revoked through the registry",
            )),
            Some(k) if k.revoked_at.is_some() => Err(Rejection::invalid_field(
                "registry.key_revoked.key_id",
                "this key is already revoked",
            )),
            Some(_) => Ok(()),
        },
    }
}
