//! Conversions between the generated wire types and `hrx-domain` types.
//!
//! Decoding goes to the domain's *unchecked* forms: protobuf decoding only proves the
//! bytes are well-formed protobuf, and the domain's parsers decide everything else, so
//! that there is one place where validity is defined.

use hrx_domain::event::unchecked;
use hrx_domain::patient::raw;
use hrx_domain::report::{IngestReport, Refusal};
use hrx_domain::{Envelope, Rejection, Timestamp};
use prost::Message;

use crate::v1;

pub use prost::DecodeError;

impl From<v1::SignedEnvelope> for Envelope {
    fn from(e: v1::SignedEnvelope) -> Self {
        Envelope {
            payload_type: e.payload_type,
            payload: e.payload,
            key_id: e.key_id,
            signature: e.signature,
        }
    }
}

impl From<Envelope> for v1::SignedEnvelope {
    fn from(e: Envelope) -> Self {
        v1::SignedEnvelope {
            payload_type: e.payload_type,
            payload: e.payload,
            key_id: e.key_id,
            signature: e.signature,
        }
    }
}

/// Decodes a protobuf-encoded `SignedEnvelope`.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    v1::SignedEnvelope::decode(bytes).map(Envelope::from)
}

/// Encodes an envelope as a protobuf `SignedEnvelope`.
pub fn encode_envelope(e: &Envelope) -> Vec<u8> {
    v1::SignedEnvelope::from(e.clone()).encode_to_vec()
}

fn raw(t: Option<prost_types::Timestamp>) -> Option<unchecked::RawTime> {
    t.map(|t| unchecked::RawTime {
        seconds: t.seconds,
        nanos: t.nanos,
    })
}

fn raw_duration(d: Option<prost_types::Duration>) -> Option<unchecked::RawTime> {
    d.map(|d| unchecked::RawTime {
        seconds: d.seconds,
        nanos: d.nanos,
    })
}

/// A domain timestamp on the wire.
pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds(),
        nanos: t.nanos(),
    }
}

/// A domain duration on the wire.
pub fn duration(d: hrx_domain::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.seconds(),
        nanos: d.nanos(),
    }
}

fn evidence(e: Option<v1::ConsentEvidence>) -> Option<unchecked::Evidence> {
    e.map(|e| unchecked::Evidence {
        form_id: e.form_id,
        sha256: e.sha256,
    })
}

fn grant(g: v1::ConsentGrant) -> unchecked::ConsentGrant {
    unchecked::ConsentGrant {
        patient_id: g.patient_id,
        purposes: g.purposes,
        kinds: g.kinds,
        include_sensitive: g.include_sensitive,
        data_from: raw(g.data_from),
        data_until: raw(g.data_until),
        expires_at: raw(g.expires_at),
        evidence: evidence(g.evidence),
        request_event_id: g.request_event_id,
        grantee: g.grantee.map(|g| match g {
            v1::consent_grant::Grantee::GranteeFacilityId(f) => unchecked::Grantee::Facility(f),
            v1::consent_grant::Grantee::AnyFacility(a) => unchecked::Grantee::AnyFacility(a),
        }),
    }
}

fn revocation(r: v1::ConsentRevocation) -> unchecked::ConsentRevocation {
    unchecked::ConsentRevocation {
        patient_id: r.patient_id,
        grant_event_id: r.grant_event_id,
        evidence: evidence(r.evidence),
    }
}

/// A proof-of-possession envelope, with its `PatientKeyProof` payload decoded when it
/// decodes (the domain checks the rest).
fn proof(e: Option<v1::SignedEnvelope>) -> Option<raw::Proof> {
    e.map(|e| {
        let decoded = v1::PatientKeyProof::decode(e.payload.as_slice())
            .ok()
            .map(|p| raw::KeyProof {
                patient_id: p.patient_id,
                public_key: p.public_key,
                facility_id: p.facility_id,
                proved_at: raw(p.proved_at),
            });
        raw::Proof {
            envelope: e.into(),
            decoded,
        }
    })
}

/// Decodes a patient-statement payload into its raw form.
pub fn decode_patient_statement(payload: &[u8]) -> Result<raw::Statement, DecodeError> {
    use v1::patient_statement::Body as W;
    let s = v1::PatientStatement::decode(payload)?;
    Ok(raw::Statement {
        header: s.header.map(|h| raw::StatementHeader {
            statement_id: h.statement_id,
            patient_id: h.patient_id,
            public_key: h.public_key,
            signed_at: raw(h.signed_at),
        }),
        body: s.body.map(|b| match b {
            W::ConsentGrant(g) => raw::StatementBody::ConsentGrant(grant(g)),
            W::ConsentRevocation(r) => raw::StatementBody::ConsentRevocation(revocation(r)),
            W::ConsentDecline(d) => raw::StatementBody::ConsentDecline {
                request_event_id: d.request_event_id,
            },
            W::KeyRotation(k) => raw::StatementBody::KeyRotation {
                new_public_key: k.new_public_key,
                proof: proof(k.proof),
            },
            W::KeyRevocation(k) => raw::StatementBody::KeyRevocation { reason: k.reason },
        }),
    })
}

/// Decodes a patient-request payload into its raw form.
pub fn decode_patient_request(payload: &[u8]) -> Result<raw::Request, DecodeError> {
    let r = v1::PatientRequest::decode(payload)?;
    Ok(raw::Request {
        request_id: r.request_id,
        patient_id: r.patient_id,
        public_key: r.public_key,
        issued_at: raw(r.issued_at),
        query: r.query.map(|q| match q {
            v1::patient_request::Query::View(v) => raw::Query::View {
                page_size: v.accesses_page_size,
                cursor: v.accesses_cursor,
            },
        }),
    })
}

/// Decodes a facility-event payload into its unchecked form.
pub fn decode_facility_event(payload: &[u8]) -> Result<unchecked::FacilityEvent, DecodeError> {
    use v1::facility_event::Body as W;
    let e = v1::FacilityEvent::decode(payload)?;
    Ok(unchecked::FacilityEvent {
        header: e.header.map(|h| unchecked::FacilityHeader {
            event_id: h.event_id,
            facility_id: h.facility_id,
            seq: h.seq,
            prev_hash: h.prev_hash,
            recorded_at: raw(h.recorded_at),
        }),
        body: e.body.map(|b| match b {
            W::Record(r) => unchecked::Body::Record(unchecked::Record {
                patient_id: r.patient_id,
                kind: r.kind,
                occurred_at: raw(r.occurred_at),
                author: r.author,
                sensitivity: r.sensitivity,
                supersedes: r.supersedes,
                content_type: r.content_type,
                body: r.body,
            }),
            W::ConsentGrant(g) => unchecked::Body::ConsentGrant(grant(g)),
            W::ConsentRevocation(r) => unchecked::Body::ConsentRevocation(revocation(r)),
            W::PatientKeyEnrollment(e) => {
                unchecked::Body::PatientKeyEnrollment(unchecked::PatientKeyEnrollment {
                    patient_id: e.patient_id,
                    public_key: e.public_key,
                    proof: proof(e.proof),
                })
            }
            W::ConsentRequest(r) => unchecked::Body::ConsentRequest(unchecked::ConsentRequest {
                patient_id: r.patient_id,
                purposes: r.purposes,
                kinds: r.kinds,
                data_from: raw(r.data_from),
                data_until: raw(r.data_until),
                duration: raw_duration(r.duration),
                reason: r.reason,
                include_sensitive: r.include_sensitive,
            }),
            W::BreakGlass(b) => unchecked::Body::BreakGlass(unchecked::BreakGlass {
                patient_id: b.patient_id,
                reason: b.reason,
                clinician: b.clinician,
                duration: raw_duration(b.duration),
            }),
        }),
    })
}

/// Decodes a registry-event payload into its unchecked form.
pub fn decode_registry_event(payload: &[u8]) -> Result<unchecked::RegistryEvent, DecodeError> {
    use v1::registry_event::Body as W;
    let e = v1::RegistryEvent::decode(payload)?;
    Ok(unchecked::RegistryEvent {
        header: e.header.map(|h| unchecked::RegistryHeader {
            event_id: h.event_id,
            seq: h.seq,
            prev_hash: h.prev_hash,
            recorded_at: raw(h.recorded_at),
        }),
        body: e.body.map(|b| match b {
            W::FacilityRegistered(f) => unchecked::RegistryBody::FacilityRegistered {
                facility_id: f.facility_id,
                name: f.name,
                province: f.province,
                level: f.level,
            },
            W::KeyAdded(k) => unchecked::RegistryBody::KeyAdded {
                facility_id: k.facility_id,
                public_key: k.public_key,
                valid_from: raw(k.valid_from),
            },
            W::KeyRevoked(k) => unchecked::RegistryBody::KeyRevoked {
                key_id: k.key_id,
                revoked_at: raw(k.revoked_at),
                reason: k.reason,
            },
            W::CertificateRevoked(c) => unchecked::RegistryBody::CertificateRevoked {
                serial: c.serial,
                principal: c.principal,
                revoked_at: raw(c.revoked_at),
                reason: c.reason,
            },
        }),
    })
}

/// Encodes an ingest report for the log.
pub fn encode_ingest_report(r: &IngestReport) -> Vec<u8> {
    v1::IngestReport {
        report_id: r.report_id.to_string(),
        caller_facility_id: r
            .caller
            .as_ref()
            .map(|f| f.as_str().to_owned())
            .unwrap_or_default(),
        refusals: r
            .refusals
            .iter()
            .map(|f| v1::Refusal {
                rejection: Some(rejection(&f.rejection)),
                event_hash: f.event_hash.as_bytes().to_vec(),
                event_id: f.event_id.map(|id| id.to_string()).unwrap_or_default(),
                has_seq: f.seq.is_some(),
                seq: f.seq.unwrap_or_default(),
            })
            .collect(),
        duplicates: r.duplicates,
    }
    .encode_to_vec()
}

/// Why an ingest report read back from the log does not decode. The exchange wrote it,
/// so this means the log was written by something else.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("not protobuf: {0}")]
    Protobuf(#[from] DecodeError),
    #[error("field {0} does not hold what the exchange writes")]
    Field(&'static str),
}

/// Decodes an ingest report read back from the log.
pub fn decode_ingest_report(payload: &[u8]) -> Result<IngestReport, ReportError> {
    use hrx_domain::{EventId, FacilityId, Reason, Sha256};
    let r = v1::IngestReport::decode(payload)?;
    let caller = match r.caller_facility_id.as_str() {
        "" => None,
        f => Some(FacilityId::parse(f).map_err(|_| ReportError::Field("caller_facility_id"))?),
    };
    let mut refusals = Vec::with_capacity(r.refusals.len());
    for f in r.refusals {
        let w = f
            .rejection
            .ok_or(ReportError::Field("refusals.rejection"))?;
        let reason =
            Reason::from_code(w.reason).ok_or(ReportError::Field("refusals.rejection.reason"))?;
        let field = match w.field.as_str() {
            "" => None,
            s => Some(
                hrx_domain::rejection::field_path(s)
                    .ok_or(ReportError::Field("refusals.rejection.field"))?,
            ),
        };
        refusals.push(Refusal {
            rejection: Rejection::restore(reason, field, w.message),
            event_hash: Sha256::from_slice(&f.event_hash)
                .map_err(|_| ReportError::Field("refusals.event_hash"))?,
            event_id: match f.event_id.as_str() {
                "" => None,
                id => {
                    Some(EventId::parse(id).map_err(|_| ReportError::Field("refusals.event_id"))?)
                }
            },
            seq: f.has_seq.then_some(f.seq),
        });
    }
    Ok(IngestReport {
        report_id: EventId::parse(&r.report_id).map_err(|_| ReportError::Field("report_id"))?,
        caller,
        refusals,
        duplicates: r.duplicates,
    })
}

/// A domain rejection on the wire.
pub fn rejection(r: &Rejection) -> v1::Rejection {
    v1::Rejection {
        reason: r.reason().code(),
        field: r.field().unwrap_or_default().to_owned(),
        message: r.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        assert!(decode_facility_event(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode_envelope(&[0x0a, 0x10]).is_err());
    }

    #[test]
    fn envelope_round_trips() {
        let e = Envelope {
            payload_type: "t".into(),
            payload: vec![1, 2, 3],
            key_id: "k".into(),
            signature: vec![4; 64],
        };
        assert_eq!(decode_envelope(&encode_envelope(&e)).unwrap(), e);
    }

    #[test]
    fn ingest_reports_round_trip() {
        use hrx_domain::{EventId, FacilityId, Reason, Sha256};
        let mut r = IngestReport::new(Some(FacilityId::parse("26012").unwrap()));
        r.duplicates = 3;
        r.refusals = vec![
            Refusal {
                rejection: Rejection::new(Reason::BadSignature, "the signature does not verify"),
                event_hash: Sha256::digest(b"a"),
                event_id: None,
                seq: None,
            },
            Refusal {
                rejection: Rejection::invalid_field("header.event_id", "already used"),
                event_hash: Sha256::digest(b"b"),
                event_id: Some(EventId::new_v7()),
                seq: Some(0),
            },
        ];
        assert_eq!(decode_ingest_report(&encode_ingest_report(&r)).unwrap(), r);
        let patients = IngestReport::new(None);
        assert_eq!(
            decode_ingest_report(&encode_ingest_report(&patients)).unwrap(),
            patients
        );
        assert!(decode_ingest_report(&[0xff]).is_err());
    }
}
