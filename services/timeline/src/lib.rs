//! Timeline: a patient's shared history for the facilities the patient allowed.
//!
//! - `GetTimeline`: newest first by `occurred_at` (ties by event id), filtered by kind,
//!   facility and date, in pages of up to 500 with an opaque cursor that stays stable
//!   while records arrive. Consent is enforced per record; each entry says which basis
//!   released it, and the response counts what was withheld (never what it was).
//! - `GetRecord`: one record with its original envelope, so the reader can verify the
//!   hospital's signature itself.
//! - `Follow`: the backlog after a cursor, then each new record as it is projected,
//!   with heartbeats; ends with PERMISSION_DENIED when the reader's consent is revoked
//!   or expires.
//!
//! Every call appends an access event to the audit log before answering.

mod audit;
pub mod cursor;
mod follow;
mod grpc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hrx_domain::FacilityId;
use hrx_domain::audit::{AccessAction, AccessEvent};
use hrx_domain::consent::{Access, Basis, RecordFacts};
use hrx_domain::{PatientId, Purpose, Timestamp};
use hrx_ports::{AccessAppend, PortResult, Store, StoredRecord, TimelineQuery};

use crate::audit::AuditWriter;

pub use grpc::TimelineGrpc;

/// Default and largest page sizes.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 500;
/// Most records read per store query while filling a page.
const MAX_SCAN: usize = 1000;

/// Timeline settings.
#[derive(Clone, Debug)]
pub struct TimelineConfig {
    /// How often an idle follow stream sends a heartbeat.
    pub heartbeat: Duration,
}

impl Default for TimelineConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// The timeline's logic over a store.
pub struct Timeline {
    store: Arc<dyn Store>,
    config: TimelineConfig,
    audit: AuditWriter,
    tails: follow::Tails,
    /// Set when the node shuts down: follow streams end so the server can stop.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One page, decided.
#[derive(Debug)]
pub struct Page {
    pub entries: Vec<(StoredRecord, Basis)>,
    /// The last returned record's cursor, when more records follow.
    pub next: Option<String>,
    pub withheld: u64,
}

/// The facts a consent decision needs, from a stored record.
pub fn facts(r: &StoredRecord) -> RecordFacts<'_> {
    RecordFacts {
        author: &r.facility_id,
        kind: r.kind,
        occurred_at: r.occurred_at,
        sensitivity: &r.sensitivity,
    }
}

/// Distinct bases in first-use order, and records returned per author facility.
fn summary<'a>(
    entries: impl Iterator<Item = &'a (StoredRecord, Basis)>,
) -> (Vec<Basis>, Vec<(FacilityId, u64)>) {
    let mut bases = Vec::new();
    let mut authors: BTreeMap<FacilityId, u64> = BTreeMap::new();
    for (r, b) in entries {
        if !bases.contains(b) {
            bases.push(*b);
        }
        *authors.entry(r.facility_id.clone()).or_default() += 1;
    }
    (bases, authors.into_iter().collect())
}

impl Timeline {
    /// Must be called within a tokio runtime: it starts the audit writer's task.
    pub fn new(store: Arc<dyn Store>, config: TimelineConfig) -> Self {
        let audit = AuditWriter::spawn(store.clone());
        Self {
            store,
            config,
            audit,
            tails: follow::Tails::default(),
            stopping: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Ends every follow stream with UNAVAILABLE (the client resumes from its last
    /// cursor on another replica): a graceful server shutdown waits for open streams,
    /// and follow streams never end by themselves.
    pub fn shut_down(&self) {
        self.stopping.send_replace(true);
    }

    /// A page of `query` (its `limit` is the page size) as `reader` may see it, audited.
    pub async fn page(
        &self,
        reader: &FacilityId,
        purpose: Purpose,
        query: TimelineQuery,
    ) -> PortResult<Page> {
        let page_size = query.limit;
        let grants = self.store.grants(&query.patient_id).await?;
        let glass = self.store.break_glass(&query.patient_id).await?;
        let now = Timestamp::now();
        let access = Access {
            reader,
            purpose,
            now,
            grants: &grants,
            break_glass: &glass,
        };
        // Scan in chunks until the page is full and one more visible record proves
        // there is a next page, or the records run out. Withheld records are counted up
        // to the last returned one (or to the end on the last page), so the counts of
        // all pages add up to the total withheld.
        // The first chunk is exactly enough when every record is visible (the common
        // case: a page and the one record proving a next page); later chunks double,
        // so a reader who may see few records still needs few round trips.
        let mut scan = TimelineQuery {
            limit: page_size + 1,
            ..query.clone()
        };
        let mut entries = Vec::new();
        let (mut withheld, mut since_last) = (0u64, 0u64);
        let mut more = false;
        'scan: loop {
            let rows = self.store.timeline(&scan).await?;
            let exhausted = rows.len() < scan.limit;
            for r in rows {
                scan.after = Some((r.occurred_at, r.event_id));
                match access.decide(&facts(&r)) {
                    Some(_) if entries.len() == page_size => {
                        more = true;
                        break 'scan;
                    }
                    Some(b) => {
                        entries.push((r, b));
                        withheld += since_last;
                        since_last = 0;
                    }
                    None => since_last += 1,
                }
            }
            if exhausted {
                break;
            }
            scan.limit = (scan.limit * 2).min(MAX_SCAN);
        }
        if !more {
            withheld += since_last;
        }
        let next = more.then(|| {
            let (r, _) = entries.last().expect("a full page has a last entry");
            cursor::encode_timeline(r.occurred_at, r.event_id)
        });
        let (bases, authors) = summary(entries.iter());
        self.audit(
            reader,
            &query.patient_id,
            purpose,
            AccessAction::GetTimeline,
            bases,
            entries.len() as u64,
            withheld,
            &authors,
        )
        .await?;
        Ok(Page {
            entries,
            next,
            withheld,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn audit(
        &self,
        reader: &FacilityId,
        patient: &PatientId,
        purpose: Purpose,
        action: AccessAction,
        bases: Vec<Basis>,
        returned: u64,
        withheld: u64,
        authors: &[(FacilityId, u64)],
    ) -> PortResult<()> {
        let event = AccessEvent {
            reader: reader.clone(),
            patient: patient.clone(),
            purpose,
            action,
            bases,
            records_returned: returned,
            records_withheld: withheld,
            at: Timestamp::now(),
        };
        self.audit
            .append(AccessAppend {
                event,
                authors: authors.to_vec(),
            })
            .await
    }
}
