//! A patient's consent state, loaded: the consent events the store holds, parsed back
//! into domain facts (the envelope is the one stored form) and folded by the domain;
//! and the facts a facility's consent event is judged against, from the store and the
//! facility's events not yet in it.

use std::sync::Arc;

use hrx_domain::consent::{
    BreakGlassWindow, ConsentEvent, ConsentFact, ConsentState, FacilityFacts, FactsNeeded,
};
use hrx_domain::dsse::PayloadType;
use hrx_domain::event::{Body, FacilityHeader};
use hrx_domain::{EventId, FacilityId, PatientId, Timestamp, content, patient};
use hrx_ports::{ConsentEventKind, ConsentEventRow, PortError, PortResult, Store};
use hrx_proto::codec;

/// The consent fact of a stored consent event. The envelope was verified when it was
/// projected; parsing it again here keeps one definition of what it says. `None` for
/// an envelope that does not parse (it could not have been projected: corruption).
pub fn fact_of(row: &ConsentEventRow) -> Option<ConsentFact> {
    match PayloadType::parse(&row.envelope.payload_type)? {
        PayloadType::PatientStatement => patient::verify_statement(
            &row.envelope,
            row.received_at,
            codec::decode_patient_statement,
        )
        .ok()
        .map(|s| ConsentFact::of_statement(&s)),
        PayloadType::FacilityEvent => {
            let event = codec::decode_facility_event(&row.envelope.payload).ok()?;
            let header = FacilityHeader::parse(event.header.as_ref()?).ok()?;
            let body = content::check_body(&header, event.body.as_ref()?).ok()?;
            ConsentFact::of_facility_body(&header.facility_id, &body)
        }
        _ => None,
    }
}

/// Parsed facts by event id: consent events never change once projected, and parsing
/// them again verifies signatures (proofs, statements), which a read should not pay for
/// every time.
pub struct FactCache {
    facts: quick_cache::sync::Cache<EventId, Arc<ConsentFact>>,
}

impl std::fmt::Debug for FactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactCache")
            .field("facts", &self.facts.len())
            .finish()
    }
}

impl Default for FactCache {
    fn default() -> Self {
        Self {
            facts: quick_cache::sync::Cache::new(1 << 16),
        }
    }
}

impl FactCache {
    /// The events of `rows`, parsed (from the cache when seen before).
    pub fn events(&self, rows: &[ConsentEventRow]) -> PortResult<Vec<ConsentEvent>> {
        rows.iter()
            .map(|row| {
                let fact = match self.facts.get(&row.event_id) {
                    Some(f) => f,
                    None => {
                        let f = Arc::new(fact_of(row).ok_or_else(|| {
                            PortError::Corrupt(format!(
                                "consent event {} does not parse",
                                row.event_id
                            ))
                        })?);
                        self.facts.insert(row.event_id, f.clone());
                        f
                    }
                };
                Ok(ConsentEvent {
                    id: row.event_id,
                    received_at: row.received_at,
                    fact: (*fact).clone(),
                })
            })
            .collect()
    }
}

/// A patient's consent state and break-glass windows, as of the store now.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub state: ConsentState,
    pub windows: Vec<BreakGlassWindow>,
    /// The stored events, for their signed artefacts.
    pub rows: Vec<ConsentEventRow>,
}

impl Loaded {
    /// The signed artefact of a consent event.
    pub fn artefact(&self, id: EventId) -> Option<&ConsentEventRow> {
        self.rows.iter().find(|r| r.event_id == id)
    }
}

/// How much of a patient's consent history one read may load. Every read folds the
/// patient's whole history (a revocation may be years older than the read), so the
/// history is bounded rather than cut: past a bound the read is refused whole, never
/// decided on a part (a missing revocation would release what it revoked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBounds {
    pub max_consent_events: usize,
    pub max_break_glass_windows: usize,
}

impl Default for ReadBounds {
    fn default() -> Self {
        Self {
            max_consent_events: 10_000,
            max_break_glass_windows: 1_000,
        }
    }
}

/// Loads and folds a patient's consent state, within `bounds`
/// ([`PortError::TooMany`](hrx_ports::PortError::TooMany) past them).
pub async fn load(
    store: &dyn Store,
    cache: &FactCache,
    patient: &PatientId,
    bounds: ReadBounds,
) -> PortResult<Loaded> {
    let (rows, windows) = tokio::try_join!(
        store.consent_events_up_to(patient, bounds.max_consent_events.saturating_add(1)),
        store.break_glass_up_to(patient, bounds.max_break_glass_windows.saturating_add(1)),
    )?;
    if rows.len() > bounds.max_consent_events {
        tracing::warn!(
            limit = bounds.max_consent_events,
            "a patient's consent history is over the read bound; read refused"
        );
        return Err(hrx_ports::PortError::TooMany {
            what: "consent events for this patient",
            limit: bounds.max_consent_events,
        });
    }
    if windows.len() > bounds.max_break_glass_windows {
        tracing::warn!(
            limit = bounds.max_break_glass_windows,
            "a patient's break-glass windows are over the read bound; read refused"
        );
        return Err(hrx_ports::PortError::TooMany {
            what: "break-glass windows for this patient",
            limit: bounds.max_break_glass_windows,
        });
    }
    let state = ConsentState::fold(cache.events(&rows)?);
    Ok(Loaded {
        state,
        windows,
        rows,
    })
}

/// What a consent event is, for the store.
pub fn kind_of_fact(fact: &ConsentFact) -> ConsentEventKind {
    use hrx_domain::patient::StatementBody as S;
    match fact {
        ConsentFact::KeyEnrolled { .. } => ConsentEventKind::KeyEnrollment,
        ConsentFact::AttestedGrant { .. } => ConsentEventKind::AttestedGrant,
        ConsentFact::FacilityRevocation { .. } => ConsentEventKind::FacilityRevocation,
        ConsentFact::Request { .. } => ConsentEventKind::Request,
        ConsentFact::Statement { body, .. } => match body {
            S::Grant(_) => ConsentEventKind::PatientGrant,
            S::Revocation(_) => ConsentEventKind::PatientRevocation,
            S::Decline { .. } => ConsentEventKind::PatientDecline,
            S::KeyRotation { .. } => ConsentEventKind::KeyRotation,
            S::KeyRevocation { .. } => ConsentEventKind::KeyRevocation,
        },
    }
}

/// An event of a facility that the store does not hold yet (earlier in the batch being
/// projected or submitted), as far as facility facts need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Earlier {
    Record {
        id: EventId,
        patient: PatientId,
        recorded_at: Timestamp,
    },
    AttestedGrant {
        id: EventId,
        patient: PatientId,
    },
    BreakGlass {
        patient: PatientId,
        declared_at: Timestamp,
        expires_at: Timestamp,
    },
}

impl Earlier {
    /// What an accepted facility event leaves for later events of the same facility.
    pub fn of(header: &FacilityHeader, body: &Body) -> Option<Self> {
        Some(match body {
            Body::Record(r) => Earlier::Record {
                id: header.link.event_id,
                patient: r.patient_id.clone(),
                recorded_at: header.link.recorded_at,
            },
            Body::ConsentGrant(g) => Earlier::AttestedGrant {
                id: header.link.event_id,
                patient: g.patient_id.clone(),
            },
            Body::BreakGlass(b) => Earlier::BreakGlass {
                patient: b.patient_id.clone(),
                declared_at: header.link.recorded_at,
                expires_at: b.expires_at,
            },
            _ => return None,
        })
    }
}

/// The facts `body` (an event of `facility`) needs, from the store and `earlier`: the
/// facility's events before it that the store does not hold yet.
pub async fn facility_facts(
    store: &dyn Store,
    facility: &FacilityId,
    header: &FacilityHeader,
    body: &Body,
    earlier: &[Earlier],
) -> PortResult<FacilityFacts> {
    let patient = body.patient_id();
    let mut facts = FacilityFacts::default();
    match hrx_domain::consent::facts_needed(header, body) {
        FactsNeeded::None => {}
        FactsNeeded::Standing => {
            let stored = store.latest_authored(facility, patient).await?;
            let pending = earlier.iter().filter_map(|e| match e {
                Earlier::Record {
                    patient: p,
                    recorded_at,
                    ..
                } if p == patient => Some(*recorded_at),
                _ => None,
            });
            facts.latest_authored = stored.into_iter().chain(pending).max();
        }
        FactsNeeded::Grantor { grant } => {
            let pending = earlier.iter().any(|e| {
                matches!(e, Earlier::AttestedGrant { id, patient: p } if *id == grant && p == patient)
            });
            facts.attested_the_grant = pending
                || store.consent_event(grant).await?.is_some_and(|row| {
                    row.kind == ConsentEventKind::AttestedGrant
                        && row.facility_id.as_ref() == Some(facility)
                        && &row.patient_id == patient
                });
        }
        FactsNeeded::BreakGlass { since, at } => {
            let stored_declared = store.break_glass_declared_since(facility, since).await?;
            let stored_open = store
                .break_glass(patient)
                .await?
                .iter()
                .filter(|w| &w.facility_id == facility && w.is_open_at(at))
                .count() as u64;
            let (mut declared, mut open) = (0u64, 0u64);
            for e in earlier {
                if let Earlier::BreakGlass {
                    patient: p,
                    declared_at,
                    expires_at,
                } = e
                {
                    if *declared_at > since {
                        declared += 1;
                    }
                    if p == patient && *declared_at <= at && at < *expires_at {
                        open += 1;
                    }
                }
            }
            facts.declared_since = stored_declared + declared;
            facts.open_for_patient = stored_open + open;
        }
        FactsNeeded::Supersedes { record } => {
            let pending = earlier.iter().any(|e| {
                matches!(e, Earlier::Record { id, patient: p, .. } if *id == record && p == patient)
            });
            facts.supersedes_own = pending
                || store
                    .record(record)
                    .await?
                    .is_some_and(|(r, _)| &r.facility_id == facility && &r.patient_id == patient);
        }
    }
    Ok(facts)
}
