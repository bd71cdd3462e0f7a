//! The consent service's decisions, independent of any transport: the gRPC services
//! here and the FHIR API call the same methods, so there is one decision and one audit
//! whatever the door.
//!
//! Who may see what (deny by default): a facility sees its own access, the grants
//! that name it, its own requests and its own accesses; the national center sees
//! counts; the patient, authenticated by a request signed with their current key, sees
//! everything about themselves. Every call about a patient is audited — refusals too —
//! before it is answered.

use std::collections::HashMap;
use std::sync::Arc;

use hrx_domain::audit::{AccessAction, AccessEvent, AccessOutcome, AuditEntry, Reader};
use hrx_domain::consent::{
    Access, Basis, ConsentForm, ConsentPolicy, ConsentState, GrantState, GrantStatus, RequestState,
};
use hrx_domain::patient::{self, Query, Statement};
use hrx_domain::report::{IngestReport, Refusal};
use hrx_domain::{
    Envelope, EventId, FacilityId, PatientId, Purpose, Reason, Rejection, Sha256, Timestamp,
};
use hrx_identity::Principal;
use hrx_ports::{
    AccessAppend, AccessCounts, Append, BreakGlassUse, ChainKey, EventLog, LogPosition, PortError,
    Store,
};
use hrx_proto::codec;
use hrx_rpc::chains::{ChainLocks, append_reported};
use hrx_rpc::error::{ErrorCode, RequestError, ServiceError};

use crate::audit::AuditWriter;
use crate::state::{self, FactCache, Loaded};

/// Default and largest page of accesses.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// Most statements in one submission.
pub const MAX_STATEMENTS: usize = 100;

/// How long a statement waits for the projector to hold the patient's earlier ones
/// before the submission is answered UNAVAILABLE.
const PROJECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a consent call failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl ServiceError for ConsentError {
    fn code(&self) -> ErrorCode {
        match self {
            ConsentError::Port(e) => e.code(),
            ConsentError::Request(e) => e.code(),
        }
    }
}

/// A grant as a facility or the patient sees it: its state and the signed artefact.
#[derive(Clone, Debug)]
pub struct GrantItem {
    pub state: GrantState,
    /// The patient statement (patient-signed) or facility event (attested) it came in.
    pub artefact: Option<Envelope>,
}

/// A patient's grants, counted (for the national center).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantCounts {
    pub active_patient_signed: u64,
    pub active_attested: u64,
    pub revoked: u64,
    pub expired: u64,
}

/// What a caller may see of a patient's grants.
#[derive(Clone, Debug)]
pub enum GrantsAnswer {
    Grants(Vec<GrantItem>),
    Counts(GrantCounts),
}

/// What a caller may see of a patient's accesses.
#[derive(Clone, Debug)]
pub enum AccessesAnswer {
    Page {
        entries: Vec<AuditEntry>,
        /// The last entry's seq, when more follow.
        next: Option<u64>,
    },
    Counts(AccessCounts),
}

/// What ingest-like submission answers for one statement.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum StatementOutcome {
    Accepted {
        event_hash: Sha256,
        position: LogPosition,
    },
    Duplicate {
        event_hash: Sha256,
        position: Option<LogPosition>,
    },
    Rejected {
        event_hash: Sha256,
        rejection: Rejection,
    },
}

/// The patient's own view.
#[derive(Clone, Debug)]
pub struct PatientView {
    pub patient: PatientId,
    pub now: Timestamp,
    pub loaded: Loaded,
    pub break_glass: Vec<BreakGlassUse>,
    pub accesses: Vec<AuditEntry>,
    pub next: Option<u64>,
}

impl PatientView {
    pub fn grants(&self) -> Vec<GrantItem> {
        items(&self.loaded, self.loaded.state.grants.iter())
    }
}

fn items<'a>(loaded: &Loaded, grants: impl Iterator<Item = &'a GrantState>) -> Vec<GrantItem> {
    grants
        .map(|g| GrantItem {
            state: g.clone(),
            artefact: loaded
                .artefact(g.grant_event_id)
                .map(|r| r.envelope.clone()),
        })
        .collect()
}

/// A page size from a request: 0 is the default.
pub fn page_size(n: u32) -> Result<usize, RequestError> {
    match n as usize {
        0 => Ok(DEFAULT_PAGE),
        n if n <= MAX_PAGE => Ok(n),
        _ => Err(RequestError::invalid(
            "page_size",
            format_args!("at most {MAX_PAGE}"),
        )),
    }
}

/// An access-list cursor: the seq of the last entry seen.
pub fn access_cursor(s: &str) -> Result<u64, RequestError> {
    if s.is_empty() {
        return Ok(0);
    }
    s.parse::<u64>()
        .map_err(|_| RequestError::invalid("cursor", "not a cursor issued by this service"))
}

/// The consent core over a store (and the log, for patient statements).
pub struct Consent {
    store: Arc<dyn Store>,
    log: Option<Arc<dyn EventLog>>,
    locks: ChainLocks,
    policy: ConsentPolicy,
    audit: AuditWriter,
    facts: FactCache,
    bounds: state::ReadBounds,
}

impl std::fmt::Debug for Consent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consent")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Consent {
    /// Must be called within a tokio runtime: it starts the audit writer's task. Without
    /// a log, patient statements are refused as unavailable (a process without the
    /// consent role's log access).
    pub fn new(
        store: Arc<dyn Store>,
        log: Option<Arc<dyn EventLog>>,
        locks: ChainLocks,
        policy: ConsentPolicy,
    ) -> Self {
        let audit = AuditWriter::spawn(store.clone());
        Self {
            store,
            log,
            locks,
            policy,
            audit,
            facts: FactCache::default(),
            bounds: state::ReadBounds::default(),
        }
    }

    /// How much of a patient's consent history one read may load (see
    /// [`state::ReadBounds`]).
    pub fn with_read_bounds(mut self, bounds: state::ReadBounds) -> Self {
        self.bounds = bounds;
        self
    }

    pub fn policy(&self) -> &ConsentPolicy {
        &self.policy
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The patient's consent state and break-glass windows, as of the store now.
    pub async fn load(&self, patient: &PatientId) -> Result<Loaded, PortError> {
        state::load(&*self.store, &self.facts, patient, self.bounds).await
    }

    /// Appends an access event (group-committed) and returns once it is durable.
    pub async fn audit(
        &self,
        event: AccessEvent,
        authors: Vec<(FacilityId, u64)>,
    ) -> Result<(), PortError> {
        self.audit.append(AccessAppend { event, authors }).await
    }

    /// Audits a call that returned `returned` items (no purpose, no bases).
    async fn audit_call(
        &self,
        reader: Reader,
        patient: &PatientId,
        action: AccessAction,
        outcome: AccessOutcome,
        returned: u64,
    ) -> Result<(), PortError> {
        self.audit(
            AccessEvent {
                reader,
                patient: patient.clone(),
                purpose: None,
                action,
                bases: Vec::new(),
                records_returned: returned,
                records_withheld: 0,
                at: Timestamp::now(),
                outcome,
            },
            Vec::new(),
        )
        .await
    }

    /// Whether `reader` (the caller itself, for a facility) may read the patient's
    /// records for `purpose` now, and on which bases.
    pub async fn check_access(
        &self,
        caller: &Principal,
        patient: &PatientId,
        reader: Option<FacilityId>,
        purpose: Purpose,
    ) -> Result<Vec<Basis>, ConsentError> {
        let (audited_as, reader) = match (caller, reader) {
            (Principal::Facility(f), None) => (Reader::Facility(f.clone()), f.clone()),
            (Principal::Facility(f), Some(asked)) if &asked == f => {
                (Reader::Facility(f.clone()), asked)
            }
            (Principal::Facility(f), Some(_)) => {
                self.audit_call(
                    Reader::Facility(f.clone()),
                    patient,
                    AccessAction::CheckAccess,
                    AccessOutcome::Denied,
                    0,
                )
                .await?;
                return Err(RequestError::PermissionDenied(
                    "a facility may check only its own access",
                )
                .into());
            }
            (Principal::NationalCenter, Some(asked)) => (Reader::NationalCenter, asked),
            (Principal::NationalCenter, None) => {
                return Err(RequestError::invalid(
                    "reader_facility_id",
                    "required for the national center",
                )
                .into());
            }
        };
        let loaded = self.load(patient).await?;
        let bases = Access {
            reader: &reader,
            purpose,
            now: Timestamp::now(),
            grants: &loaded.state.grants,
            break_glass: &loaded.windows,
        }
        .standing();
        self.audit(
            AccessEvent {
                reader: audited_as,
                patient: patient.clone(),
                purpose: Some(purpose),
                action: AccessAction::CheckAccess,
                bases: bases.clone(),
                records_returned: 0,
                records_withheld: 0,
                at: Timestamp::now(),
                outcome: AccessOutcome::Allowed,
            },
            Vec::new(),
        )
        .await?;
        Ok(bases)
    }

    /// A facility: the patient's grants that name it (or any facility). The national
    /// center: counts only.
    pub async fn list_grants(
        &self,
        caller: &Principal,
        patient: &PatientId,
    ) -> Result<GrantsAnswer, ConsentError> {
        let loaded = self.load(patient).await?;
        let now = Timestamp::now();
        let (reader, answer, returned) = match caller {
            Principal::Facility(f) => {
                let mine = items(&loaded, loaded.state.grants.iter().filter(|g| g.names(f)));
                let n = mine.len() as u64;
                (Reader::Facility(f.clone()), GrantsAnswer::Grants(mine), n)
            }
            Principal::NationalCenter => {
                let mut c = GrantCounts::default();
                for g in &loaded.state.grants {
                    match (g.status(now), g.form) {
                        (GrantStatus::Revoked, _) => c.revoked += 1,
                        (GrantStatus::Expired, _) => c.expired += 1,
                        (_, ConsentForm::PatientSigned) => c.active_patient_signed += 1,
                        (_, ConsentForm::Attested) => c.active_attested += 1,
                    }
                }
                (Reader::NationalCenter, GrantsAnswer::Counts(c), 0)
            }
        };
        self.audit_call(
            reader,
            patient,
            AccessAction::ListGrants,
            AccessOutcome::Allowed,
            returned,
        )
        .await?;
        Ok(answer)
    }

    /// A facility: its own accesses to the patient, a page after `after`. The national
    /// center: counts only.
    pub async fn list_accesses(
        &self,
        caller: &Principal,
        patient: &PatientId,
        after: u64,
        limit: usize,
    ) -> Result<AccessesAnswer, ConsentError> {
        let (reader, answer, returned) = match caller {
            Principal::Facility(f) => {
                let reader = Reader::Facility(f.clone());
                let (entries, next) = self.page(patient, Some(&reader), after, limit).await?;
                let n = entries.len() as u64;
                (reader, AccessesAnswer::Page { entries, next }, n)
            }
            Principal::NationalCenter => {
                let counts = self.store.access_counts(patient).await?;
                (Reader::NationalCenter, AccessesAnswer::Counts(counts), 0)
            }
        };
        self.audit_call(
            reader,
            patient,
            AccessAction::ListAccesses,
            AccessOutcome::Allowed,
            returned,
        )
        .await?;
        Ok(answer)
    }

    async fn page(
        &self,
        patient: &PatientId,
        reader: Option<&Reader>,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, Option<u64>), PortError> {
        let mut entries = self
            .store
            .accesses(patient, reader, after, limit.saturating_add(1))
            .await?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next = more.then(|| entries.last().map(|e| e.seq)).flatten();
        Ok((entries, next))
    }

    /// A facility's own consent requests for the patient. Refused for the national
    /// center (requests are between the facility and the patient).
    pub async fn list_requests(
        &self,
        caller: &Principal,
        patient: &PatientId,
    ) -> Result<Vec<RequestState>, ConsentError> {
        let Principal::Facility(f) = caller else {
            self.audit_call(
                Reader::NationalCenter,
                patient,
                AccessAction::ListConsentRequests,
                AccessOutcome::Denied,
                0,
            )
            .await?;
            return Err(RequestError::PermissionDenied(
                "consent requests are seen by the requesting facility and the patient only",
            )
            .into());
        };
        let loaded = self.load(patient).await?;
        let mine: Vec<RequestState> = loaded
            .state
            .requests
            .into_iter()
            .filter(|r| &r.facility == f)
            .collect();
        self.audit_call(
            Reader::Facility(f.clone()),
            patient,
            AccessAction::ListConsentRequests,
            AccessOutcome::Allowed,
            mine.len() as u64,
        )
        .await?;
        Ok(mine)
    }

    /// Verifies and appends patient statements to their patients' chains in the log;
    /// one outcome per envelope, in order. A statement is appended only when it is
    /// valid in every respect; refusals and duplicates go into the log as an ingest
    /// report on the patients' report chain, with the last patient's statements.
    pub async fn submit_statements(
        &self,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<StatementOutcome>, ConsentError> {
        if envelopes.len() > MAX_STATEMENTS {
            return Err(RequestError::invalid(
                "statements",
                format_args!("at most {MAX_STATEMENTS} per call"),
            )
            .into());
        }
        let log = self.log.as_ref().ok_or_else(|| {
            PortError::Unavailable("this process does not write the event log".into())
        })?;
        // Received now, in whole milliseconds (what every log keeps exactly): the time
        // the statement's key must be the patient's.
        let now = Timestamp::now().truncated_to_millis();
        let mut outcomes: Vec<Option<StatementOutcome>> = vec![None; envelopes.len()];
        let mut report = IngestReport::new(None);
        let mut by_patient: HashMap<PatientId, Vec<(usize, Envelope, Statement)>> = HashMap::new();
        for (i, envelope) in envelopes.into_iter().enumerate() {
            let event_hash = envelope.event_hash();
            match patient::verify_statement(&envelope, now, codec::decode_patient_statement) {
                Ok(s) => by_patient
                    .entry(s.header.patient_id.clone())
                    .or_default()
                    .push((i, envelope, s)),
                Err(rejection) => {
                    report.refusals.push(refusal(event_hash, None, &rejection));
                    outcomes[i] = Some(StatementOutcome::Rejected {
                        event_hash,
                        rejection,
                    });
                }
            }
        }
        let mut groups = by_patient.len();
        let mut reported = false;
        for (patient, statements) in by_patient {
            groups -= 1;
            let chain = ChainKey::Patient(patient.clone());
            let _guard = self.locks.lock(&chain).await;
            // The patient's earlier statements must be in the state they are judged
            // against (a rotation just accepted makes the next statement's key valid).
            self.projected(log.as_ref(), &chain).await?;
            let loaded = self.load(&patient).await?;
            let mut events = self.facts.events(&loaded.rows)?;
            let mut state = loaded.state;
            let mut appends: Vec<(usize, Append)> = Vec::new();
            for (i, envelope, s) in statements {
                let id = s.header.statement_id;
                let event_hash = s.event_hash;
                let probe_seq = 0;
                let logged = log.chain_context(&chain, id, probe_seq).await?;
                let earlier = appends.iter().find(|(_, a)| a.event_id == id);
                let prior_hash = earlier
                    .map(|(_, a)| a.event_hash)
                    .or(logged.context.same_event_id.map(|p| p.event_hash));
                let verdict = match prior_hash {
                    Some(h) if h == event_hash => Err(None),
                    Some(_) => Err(Some(Rejection::new(
                        Reason::Fork,
                        "another statement already has this statement_id",
                    ))),
                    None if logged.id_in_other_chain || self.store.event_id_taken(id).await? => {
                        Err(Some(Rejection::invalid_field(
                            "statement.header.statement_id",
                            "already used by another event",
                        )))
                    }
                    None => state.check_statement(&s, now, &self.policy).map_err(Some),
                };
                match verdict {
                    Err(None) => {
                        report.duplicates += 1;
                        outcomes[i] = Some(StatementOutcome::Duplicate {
                            event_hash,
                            position: logged.prior_position,
                        })
                    }
                    Err(Some(rejection)) => {
                        report
                            .refusals
                            .push(refusal(event_hash, Some(id), &rejection));
                        outcomes[i] = Some(StatementOutcome::Rejected {
                            event_hash,
                            rejection,
                        });
                    }
                    Ok(()) => {
                        // Later statements of this submission see this one.
                        events.push(hrx_domain::consent::ConsentEvent {
                            id,
                            received_at: now,
                            fact: hrx_domain::consent::ConsentFact::of_statement(&s),
                        });
                        state = ConsentState::fold(events.clone());
                        let head = logged.context.head.seq + appends.len() as u64;
                        appends.push((
                            i,
                            Append {
                                chain: chain.clone(),
                                seq: head + 1,
                                event_id: id,
                                event_hash,
                                envelope,
                                received_at: now,
                                registry_seq: None,
                                recorded_at: None,
                            },
                        ));
                    }
                }
            }
            if !appends.is_empty() {
                let batch = appends.iter().map(|(_, a)| a.clone()).collect();
                // The report goes with the last patient's statements: by then it holds
                // every refusal of the call.
                let positions = if groups == 0 {
                    reported = true;
                    append_reported(log.as_ref(), &self.locks, batch, &report, now).await?
                } else {
                    log.append(batch).await?
                };
                for ((i, a), position) in appends.into_iter().zip(positions) {
                    outcomes[i] = Some(StatementOutcome::Accepted {
                        event_hash: a.event_hash,
                        position,
                    });
                }
            }
        }
        if !reported {
            append_reported(log.as_ref(), &self.locks, Vec::new(), &report, now).await?;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every statement answered"))
            .collect())
    }

    /// Waits until the projector has projected everything the log holds of `chain`.
    async fn projected(&self, log: &dyn EventLog, chain: &ChainKey) -> Result<(), PortError> {
        let probe = EventId::from_bytes([0; 16]);
        let head = log.chain_context(chain, probe, 0).await?.context.head;
        if head.seq == 0 {
            return Ok(());
        }
        let Some(last) = log
            .chain_context(chain, probe, head.seq)
            .await?
            .prior_position
        else {
            return Ok(());
        };
        let mut changes = self.store.changes();
        let deadline = tokio::time::Instant::now() + PROJECTION_WAIT;
        loop {
            changes.borrow_and_update();
            let projected = self.store.projected_offsets().await?;
            if projected
                .iter()
                .any(|(p, next)| *p == last.partition && *next > last.offset)
            {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return Err(PortError::Unavailable(
                        "the projector has not caught up with the patient's statements; retry"
                            .into(),
                    ));
                }
            }
        }
    }

    /// The patient's own view, for a signed single-use request.
    pub async fn patient_view(&self, request: &Envelope) -> Result<PatientView, ConsentError> {
        let now = Timestamp::now();
        let r = patient::verify_request(request, now, codec::decode_patient_request)
            .map_err(|e| unauthenticated(&e))?;
        let loaded = self.load(&r.patient_id).await?;
        if loaded
            .state
            .active_key()
            .is_none_or(|k| k.public_key != r.public_key)
        {
            return Err(RequestError::Unauthenticated(
                "the request is not signed by the patient's enrolled key".into(),
            )
            .into());
        }
        let forget_before = now.checked_sub(patient::request_id_memory()).unwrap_or(now);
        if !self
            .store
            .claim_request_id(r.request_id, now, forget_before)
            .await?
        {
            return Err(RequestError::Unauthenticated(
                "this request id was used already: sign a new request".into(),
            )
            .into());
        }
        let Query::View {
            page_size: size,
            cursor,
        } = r.query;
        let limit = page_size(size)?;
        let after = access_cursor(&cursor)?;
        let (accesses, next) = self.page(&r.patient_id, None, after, limit).await?;
        let break_glass = self.store.break_glass_uses_of(&r.patient_id).await?;
        self.audit(
            AccessEvent {
                reader: Reader::Patient,
                patient: r.patient_id.clone(),
                purpose: Some(Purpose::PatientRequest),
                action: AccessAction::PatientView,
                bases: Vec::new(),
                records_returned: 0,
                records_withheld: 0,
                at: now,
                outcome: AccessOutcome::Allowed,
            },
            Vec::new(),
        )
        .await?;
        Ok(PatientView {
            patient: r.patient_id,
            now,
            loaded,
            break_glass,
            accesses,
            next,
        })
    }
}

fn unauthenticated(r: &Rejection) -> ConsentError {
    RequestError::Unauthenticated(format!("patient request refused: {}", r.message())).into()
}

fn refusal(event_hash: Sha256, id: Option<EventId>, rejection: &Rejection) -> Refusal {
    Refusal {
        rejection: rejection.clone(),
        event_hash,
        event_id: id,
        seq: None,
    }
}
