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
//! Every call appends an access event to the audit log before answering, refusals
//! too; every batch a follow stream delivers is audited before it is sent. A facility
//! with no basis for the patient — no grant for the purpose, no open break-glass (for
//! the emergency purpose), no record it authored — is refused with no counts, and the
//! withheld count covers the patient's whole timeline, whatever the filters.

pub mod cursor;
mod follow;
mod grpc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hrx_consent::Consent;
use hrx_consent::state::Loaded;
use hrx_domain::FacilityId;
use hrx_domain::audit::{AccessAction, AccessEvent, AccessOutcome, Reader};
use hrx_domain::consent::{Access, Basis, RecordFacts};
use hrx_domain::{PatientId, Purpose, Timestamp};
use hrx_ports::{PortError, PortResult, Store, StoredRecord, TimelineQuery};

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
    /// Follow streams one facility may have open at once.
    pub max_follow_streams_per_caller: u32,
}

impl Default for TimelineConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
            max_follow_streams_per_caller: 16,
        }
    }
}

/// The timeline's logic over a store.
pub struct Timeline {
    store: Arc<dyn Store>,
    config: TimelineConfig,
    /// Consent state and the audit log.
    consent: Arc<Consent>,
    tails: follow::Tails,
    /// Open follow streams per facility, bounded by the config's limit.
    streams: std::sync::Mutex<std::collections::HashMap<FacilityId, Arc<tokio::sync::Semaphore>>>,
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
    /// The patient's records this reader may not see for this purpose, in the whole
    /// timeline (not only the filtered or paged part).
    pub withheld: u64,
}

/// Why a read was not answered.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The reader has no basis for this patient and purpose (audited as refused).
    #[error(
        "no grant, open break-glass or authored record gives this reader access to this patient for this purpose"
    )]
    NoStanding,
    /// The record is not the reader's to see (audited as refused).
    #[error("no consent covers this record for this reader and purpose")]
    Withheld,
    /// The reader already has as many follow streams open as it may.
    #[error("at most {0} follow streams may be open per facility; close one first")]
    TooManyStreams(u32),
    #[error(transparent)]
    Port(#[from] PortError),
}

impl hrx_rpc::ServiceError for ReadError {
    fn code(&self) -> hrx_rpc::ErrorCode {
        match self {
            ReadError::NoStanding | ReadError::Withheld => hrx_rpc::ErrorCode::PermissionDenied,
            ReadError::TooManyStreams(_) => hrx_rpc::ErrorCode::ResourceExhausted,
            ReadError::Port(e) => e.code(),
        }
    }
}

/// A reader's standing towards a patient, as of one read.
pub(crate) struct Standing {
    pub loaded: Loaded,
    pub now: Timestamp,
    /// Whether the reader authored any record of the patient (asked only when the
    /// consent state gives it no standing for the purpose: `false` otherwise).
    pub authored: bool,
}

impl Standing {
    pub(crate) fn access<'a>(&'a self, reader: &'a FacilityId, purpose: Purpose) -> Access<'a> {
        Access {
            reader,
            purpose,
            now: self.now,
            grants: &self.loaded.state.grants,
            break_glass: &self.loaded.windows,
        }
    }

    /// Whether the reader has any basis at all for the patient and purpose.
    pub(crate) fn any(&self, reader: &FacilityId, purpose: Purpose) -> bool {
        self.authored || !self.access(reader, purpose).standing().is_empty()
    }
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
    pub fn new(consent: Arc<Consent>, config: TimelineConfig) -> Self {
        Self {
            store: consent.store().clone(),
            config,
            consent,
            tails: follow::Tails::default(),
            streams: Default::default(),
            stopping: tokio::sync::watch::Sender::new(false),
        }
    }

    /// A place for one more follow stream of `reader`, held for as long as the stream
    /// lives; refused when the reader has as many open as it may.
    pub fn follow_permit(
        &self,
        reader: &FacilityId,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ReadError> {
        let limit = self.config.max_follow_streams_per_caller;
        let semaphore = self
            .streams
            .lock()
            .expect("stream table poisoned")
            .entry(reader.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit as usize)))
            .clone();
        semaphore
            .try_acquire_owned()
            .map_err(|_| ReadError::TooManyStreams(limit))
    }

    /// Ends every follow stream with UNAVAILABLE (the client resumes from its last
    /// cursor on another replica): a graceful server shutdown waits for open streams,
    /// and follow streams never end by themselves.
    pub fn shut_down(&self) {
        self.stopping.send_replace(true);
    }

    /// The reader's standing towards the patient now, for `purpose`. Whether the reader
    /// authored a record of the patient is asked of the store only when no grant or
    /// break-glass gives it standing already (it matters only then, and a read saves a
    /// round trip in the common case).
    pub(crate) async fn standing(
        &self,
        reader: &FacilityId,
        patient: &PatientId,
        purpose: Purpose,
    ) -> PortResult<Standing> {
        let mut standing = Standing {
            loaded: self.consent.load(patient).await?,
            now: Timestamp::now(),
            authored: false,
        };
        if standing.access(reader, purpose).standing().is_empty() {
            standing.authored = self.store.latest_authored(reader, patient).await?.is_some();
        }
        Ok(standing)
    }

    /// Audits a refused read and returns the refusal.
    pub(crate) async fn refuse(
        &self,
        reader: &FacilityId,
        patient: &PatientId,
        purpose: Purpose,
        action: AccessAction,
        refusal: ReadError,
    ) -> Result<std::convert::Infallible, ReadError> {
        self.audit_as(
            reader,
            patient,
            purpose,
            action,
            AccessOutcome::Denied,
            Vec::new(),
            (0, 0),
            &[],
        )
        .await?;
        Err(refusal)
    }

    /// A page of `query` (its `limit` is the page size) as `reader` may see it, audited.
    pub async fn page(
        &self,
        reader: &FacilityId,
        purpose: Purpose,
        query: TimelineQuery,
    ) -> Result<Page, ReadError> {
        let page_size = query.limit;
        let standing = self.standing(reader, &query.patient_id, purpose).await?;
        if !standing.any(reader, purpose) {
            self.refuse(
                reader,
                &query.patient_id,
                purpose,
                AccessAction::GetTimeline,
                ReadError::NoStanding,
            )
            .await?;
        }
        let access = standing.access(reader, purpose);
        // Scan in chunks until the page is full and one more visible record proves
        // there is a next page, or the records run out.
        // The first chunk is exactly enough when every record is visible (the common
        // case: a page and the one record proving a next page); later chunks double,
        // so a reader who may see few records still needs few round trips.
        let mut scan = TimelineQuery {
            limit: page_size + 1,
            ..query.clone()
        };
        let mut entries = Vec::new();
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
                    Some(b) => entries.push((r, b)),
                    None => {}
                }
            }
            if exhausted {
                break;
            }
            scan.limit = (scan.limit * 2).min(MAX_SCAN);
        }
        // What is withheld is counted over the whole timeline, never over the filtered
        // part: counts that moved with the filters would tell, filter by filter, where
        // and when the patient was seen.
        let withheld = self.withheld(&access, &query.patient_id).await?;
        let next = more.then(|| {
            let (r, _) = entries.last().expect("a full page has a last entry");
            cursor::encode_timeline(r.occurred_at, r.event_id)
        });
        let (bases, authors) = summary(entries.iter());
        self.audit_as(
            reader,
            &query.patient_id,
            purpose,
            AccessAction::GetTimeline,
            AccessOutcome::Allowed,
            bases,
            (entries.len() as u64, withheld),
            &authors,
        )
        .await?;
        Ok(Page {
            entries,
            next,
            withheld,
        })
    }

    /// How many of the patient's records `access` withholds.
    pub(crate) async fn withheld(
        &self,
        access: &Access<'_>,
        patient: &PatientId,
    ) -> PortResult<u64> {
        let all = self.store.record_facts(patient).await?;
        Ok(all
            .iter()
            .filter(|r| {
                access
                    .decide(&RecordFacts {
                        author: &r.facility_id,
                        kind: r.kind,
                        occurred_at: r.occurred_at,
                        sensitivity: &r.sensitivity,
                    })
                    .is_none()
            })
            .count() as u64)
    }

    /// Appends an access event by facility `reader`; returns once it is durable.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn audit_as(
        &self,
        reader: &FacilityId,
        patient: &PatientId,
        purpose: Purpose,
        action: AccessAction,
        outcome: AccessOutcome,
        bases: Vec<Basis>,
        (returned, withheld): (u64, u64),
        authors: &[(FacilityId, u64)],
    ) -> PortResult<()> {
        let event = AccessEvent {
            reader: Reader::Facility(reader.clone()),
            patient: patient.clone(),
            purpose: Some(purpose),
            action,
            bases,
            records_returned: returned,
            records_withheld: withheld,
            at: Timestamp::now(),
            outcome,
        };
        self.consent.audit(event, authors.to_vec()).await
    }
}
