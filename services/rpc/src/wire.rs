//! Wire ↔ domain conversions of request fields and projected data. Request fields are
//! parsed into domain types here, with an INVALID_ARGUMENT naming the field.

use hrx_domain::audit::AuditEntry;
use hrx_domain::consent::{Basis, ConsentForm};
use hrx_domain::event::{ConsentGrant, Grantee};
use hrx_domain::{
    EventId, FacilityId, PatientId, Purpose, RecordKind, Rejection, Sha256, Timestamp,
};
use hrx_ports::{BreakGlassUse, LogPosition, StoredRecord};
use hrx_proto::codec;
use hrx_proto::v1;

use crate::error::RequestError;

pub fn patient(field: &'static str, s: &str) -> Result<PatientId, RequestError> {
    PatientId::parse(s).map_err(|e| RequestError::invalid(field, e))
}

pub fn facility(field: &'static str, s: &str) -> Result<FacilityId, RequestError> {
    FacilityId::parse(s).map_err(|e| RequestError::invalid(field, e))
}

pub fn event_id(field: &'static str, s: &str) -> Result<EventId, RequestError> {
    EventId::parse(s).map_err(|e| RequestError::invalid(field, e))
}

/// A purpose is required on every read.
pub fn purpose(field: &'static str, code: i32) -> Result<Purpose, RequestError> {
    Purpose::from_code(code).ok_or_else(|| RequestError::invalid(field, "a purpose is required"))
}

pub fn kinds(field: &'static str, codes: &[i32]) -> Result<Vec<RecordKind>, RequestError> {
    codes
        .iter()
        .map(|c| {
            RecordKind::from_code(*c)
                .ok_or_else(|| RequestError::invalid(field, "unknown record kind"))
        })
        .collect()
}

pub fn optional_time(
    field: &'static str,
    t: Option<prost_types::Timestamp>,
) -> Result<Option<Timestamp>, RequestError> {
    t.map(|t| Timestamp::new(t.seconds, t.nanos).map_err(|e| RequestError::invalid(field, e)))
        .transpose()
}

pub fn time(t: Timestamp) -> Option<prost_types::Timestamp> {
    Some(codec::timestamp(t))
}

pub fn position(p: LogPosition) -> v1::LogPosition {
    v1::LogPosition {
        partition: p.partition,
        offset: p.offset,
    }
}

/// The answer for an envelope appended `at` a position.
pub fn accepted(event_hash: Sha256, at: LogPosition) -> v1::SubmitResult {
    v1::SubmitResult {
        status: v1::SubmitStatus::Accepted as i32,
        event_hash: event_hash.as_bytes().to_vec(),
        position: Some(position(at)),
        rejection: None,
        extends_chain: false,
    }
}

/// The answer for an envelope the log already holds (at `prior`, when known).
pub fn duplicate(event_hash: Sha256, prior: Option<LogPosition>) -> v1::SubmitResult {
    v1::SubmitResult {
        status: v1::SubmitStatus::Duplicate as i32,
        event_hash: event_hash.as_bytes().to_vec(),
        position: prior.map(position),
        rejection: None,
        extends_chain: false,
    }
}

/// The answer for a rejected envelope: appended at `appended` if it still extends its
/// chain (rejected for content), else refused outright.
pub fn rejected(
    event_hash: Option<Sha256>,
    rejection: &Rejection,
    appended: Option<LogPosition>,
) -> v1::SubmitResult {
    v1::SubmitResult {
        status: v1::SubmitStatus::Rejected as i32,
        event_hash: event_hash
            .map(|h| h.as_bytes().to_vec())
            .unwrap_or_default(),
        extends_chain: appended.is_some(),
        position: appended.map(position),
        rejection: Some(codec::rejection(rejection)),
    }
}

pub fn form(f: ConsentForm) -> v1::ConsentForm {
    match f {
        ConsentForm::PatientSigned => v1::ConsentForm::PatientSigned,
        ConsentForm::Attested => v1::ConsentForm::Attested,
    }
}

pub fn basis(b: &Basis) -> v1::Basis {
    let (basis, source, consent_form) = match b {
        Basis::Author => (v1::AccessBasis::Author, String::new(), None),
        Basis::Consent { grant, form: f } => {
            (v1::AccessBasis::Consent, grant.to_string(), Some(form(*f)))
        }
        Basis::BreakGlass(id) => (v1::AccessBasis::BreakGlass, id.to_string(), None),
    };
    v1::Basis {
        basis: basis as i32,
        source_event_id: source,
        form: consent_form.unwrap_or(v1::ConsentForm::Unspecified) as i32,
    }
}

/// A projected record as a timeline entry, with the basis that released it.
pub fn entry(r: StoredRecord, b: &Basis) -> v1::TimelineEntry {
    v1::TimelineEntry {
        event_id: r.event_id.to_string(),
        facility_id: r.facility_id.to_string(),
        seq: r.seq,
        kind: r.kind.code(),
        occurred_at: time(r.occurred_at),
        recorded_at: time(r.recorded_at),
        author: r.author,
        sensitivity: r.sensitivity.iter().map(|l| l.code()).collect(),
        supersedes: r.supersedes.map(|e| e.to_string()).unwrap_or_default(),
        superseded_by: r.superseded_by.map(|e| e.to_string()).unwrap_or_default(),
        content_type: hrx_domain::event::FHIR_JSON.to_owned(),
        body: r.body,
        event_hash: r.event_hash.as_bytes().to_vec(),
        basis: Some(basis(b)),
    }
}

fn evidence(e: &hrx_domain::event::Evidence) -> v1::ConsentEvidence {
    v1::ConsentEvidence {
        form_id: e.form_id.clone(),
        sha256: e.sha256.as_bytes().to_vec(),
    }
}

/// A grant's terms on the wire.
pub fn consent_grant(c: &ConsentGrant) -> v1::ConsentGrant {
    v1::ConsentGrant {
        patient_id: c.patient_id.to_string(),
        purposes: c.purposes.iter().map(|p| p.code()).collect(),
        kinds: c.kinds.iter().map(|k| k.code()).collect(),
        include_sensitive: c.include_sensitive.iter().map(|l| l.code()).collect(),
        data_from: c.data_from.and_then(time),
        data_until: c.data_until.and_then(time),
        expires_at: time(c.expires_at),
        evidence: c.evidence.as_ref().map(evidence),
        request_event_id: c.request.map(|r| r.to_string()).unwrap_or_default(),
        grantee: Some(match &c.grantee {
            Grantee::Facility(f) => v1::consent_grant::Grantee::GranteeFacilityId(f.to_string()),
            Grantee::AnyFacility => v1::consent_grant::Grantee::AnyFacility(true),
        }),
    }
}

/// An audit entry as the patient's "who read my records" list shows it.
pub fn access(a: &AuditEntry) -> v1::AccessEvent {
    let e = &a.event;
    v1::AccessEvent {
        audit_seq: a.seq,
        reader_facility_id: e
            .reader
            .facility()
            .map(|f| f.to_string())
            .unwrap_or_default(),
        reader_kind: e.reader.kind_code(),
        outcome: e.outcome.code(),
        patient_id: e.patient.to_string(),
        purpose: e.purpose.map_or(0, |p| p.code()),
        action: e.action.code(),
        bases: e.bases.iter().map(basis).collect(),
        records_returned: e.records_returned,
        records_withheld: e.records_withheld,
        at: time(e.at),
        prev_hash: a.prev_hash.as_bytes().to_vec(),
        entry_hash: a.entry_hash.as_bytes().to_vec(),
    }
}

/// A break-glass declaration as the monitor and the patient see it.
pub fn break_glass_use(u: &BreakGlassUse) -> v1::BreakGlassUse {
    v1::BreakGlassUse {
        event_id: u.window.event_id.to_string(),
        facility_id: u.window.facility_id.to_string(),
        patient_id: u.patient_id.to_string(),
        clinician: u.clinician.clone(),
        declared_at: time(u.window.declared_at),
        expires_at: time(u.window.expires_at),
        reads: u.reads,
        reason: u.reason.clone(),
    }
}
