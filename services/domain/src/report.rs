//! Ingest reports: what one call to the exchange refused before the log, and how many of
//! its envelopes were duplicates, counted against the authenticated caller.
//!
//! The exchange writes a report to the log itself, in the same append as the call's
//! events (only when there is something to report), so that every figure the monitor
//! shows is projected from the log and a replay rebuilds it. A report is unsigned: it
//! is never accepted from a client (its payload type is outside the contract's, so a
//! submitted one is an unknown payload type), and the log is written only by the
//! exchange.

use crate::dsse::Envelope;
use crate::{EventId, FacilityId, Rejection, Sha256};

/// The payload type of an ingest report in the log.
pub const PAYLOAD_TYPE: &str = "application/vnd.hrx.ingest-report.v1+protobuf";

/// What one call refused and found duplicate.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IngestReport {
    /// The entry's id in the log (a v7 UUID, fresh per report).
    pub report_id: EventId,
    /// The authenticated caller; `None` for patients' statements.
    pub caller: Option<FacilityId>,
    pub refusals: Vec<Refusal>,
    pub duplicates: u64,
}

/// One envelope refused before the log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Refusal {
    pub rejection: Rejection,
    pub event_hash: Sha256,
    /// Set when the envelope's header could be read.
    pub event_id: Option<EventId>,
    pub seq: Option<u64>,
}

impl IngestReport {
    /// An empty report for `caller`, with a fresh id.
    pub fn new(caller: Option<FacilityId>) -> Self {
        Self {
            report_id: EventId::new_v7(),
            caller,
            refusals: Vec::new(),
            duplicates: 0,
        }
    }

    /// Whether there is nothing to report (then nothing is written).
    pub fn is_empty(&self) -> bool {
        self.refusals.is_empty() && self.duplicates == 0
    }

    /// The report as a log entry's envelope, its payload encoded by `encode`.
    pub fn envelope(&self, encode: impl FnOnce(&Self) -> Vec<u8>) -> Envelope {
        Envelope {
            payload_type: PAYLOAD_TYPE.to_owned(),
            payload: encode(self),
            key_id: String::new(),
            signature: Vec::new(),
        }
    }
}

/// Whether a log entry's envelope is an ingest report.
pub fn is_report(envelope: &Envelope) -> bool {
    envelope.payload_type == PAYLOAD_TYPE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PayloadType;

    #[test]
    fn a_report_is_not_a_payload_type_a_client_may_send() {
        assert_eq!(PayloadType::parse(PAYLOAD_TYPE), None);
        let r = IngestReport::new(None);
        assert!(r.is_empty());
        let e = r.envelope(|_| vec![1]);
        assert!(is_report(&e));
        assert!(e.key_id.is_empty() && e.signature.is_empty());
        assert_ne!(IngestReport::new(None).report_id, r.report_id);
    }
}
