//! Ingest: facilities submit signed events; each gets its own answer.
//!
//! For every envelope: authenticate (form, key, signature, payload, header, key
//! validity), check the submitter is the event's facility, then place it in its chain
//! against the *log's* chain index (not the projections, which may lag), with earlier
//! events of the same batch overlaid. Events that extend a chain — valid ones, and
//! ones rejected for content only — are appended in one atomic append per facility;
//! only after the append returns is anything answered "accepted". What the call refused
//! before the log, and how many of its envelopes were duplicates, go into the same
//! append as an ingest report on the caller's report chain
//! ([`hrx_domain::report`]): nothing is silently dropped, and the monitor's figures
//! are projected from the log like everything else.
//!
//! Appends to one chain are serialised by a per-chain lock held from the chain lookup
//! to the append, so concurrent submissions can never fork a chain.

mod grpc;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use std::time::Duration;

use hrx_consent::state::{Earlier, facility_facts};
use hrx_domain::chain::{ChainContext, ChainHead, Prior};
use hrx_domain::consent::{ConsentPolicy, check_facility_event};
use hrx_domain::event::unchecked;
use hrx_domain::report::{IngestReport, Refusal};
use hrx_domain::verify::{self, ClockPolicy, KeyRecord, Receipt, SignatureMemo, Verdict};
use hrx_domain::{Envelope, EventId, FacilityId, KeyId, Reason, Rejection, Sha256, Timestamp};
use hrx_ports::{Append, ChainKey, EventLog, LogPosition, PortError, PortResult, Store};
use hrx_proto::codec;
use hrx_rpc::chains::ChainLocks;

pub use grpc::IngestGrpc;

/// Most envelopes accepted in one SubmitEvents call.
pub const MAX_BATCH: usize = 1000;

/// The default largest envelope: a 512 KiB body (the contract's bound) with room for its
/// header, well below Kafka's default `message.max.bytes` (1 MiB).
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 640 * 1024;

/// How long a facility consent event waits for the projector to catch up with the
/// facility's chain (its standing and break-glass counts are judged on the projected
/// chain, as the projector will judge them) before ingest answers UNAVAILABLE.
const PROJECTION_WAIT: Duration = Duration::from_secs(5);

/// What ingest answers for one envelope.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    Accepted {
        event_hash: Sha256,
        position: LogPosition,
    },
    Duplicate {
        event_hash: Sha256,
        position: Option<LogPosition>,
    },
    Rejected {
        event_hash: Option<Sha256>,
        rejection: Rejection,
        /// Set when the event was appended all the same (content-only rejection).
        position: Option<LogPosition>,
    },
}

/// The ingest service's logic, independent of gRPC.
pub struct Ingest {
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    locks: ChainLocks,
    /// Registered facility keys as of a registry head seq, reloaded from the store when
    /// the registry has moved on in the log.
    keys: RwLock<(u64, Arc<HashMap<KeyId, KeyRecord>>)>,
    /// Signatures verified here, shared with the projector of the same process.
    verified: Arc<SignatureMemo>,
    /// The bounds of facility consent events; the projector's must be the same.
    policy: ConsentPolicy,
    /// The bounds of recorded_at around the receive time; the projector's too.
    clock: ClockPolicy,
    /// Largest envelope (payload and signature) ingest lets into the log.
    max_envelope_bytes: usize,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

/// An envelope that passed authentication, waiting for its place in the chain.
struct Pending {
    index: usize,
    event: verify::AuthenticatedEvent,
}

impl Ingest {
    pub fn new(log: Arc<dyn EventLog>, store: Arc<dyn Store>, locks: ChainLocks) -> Self {
        Self {
            log,
            store,
            locks,
            keys: RwLock::new((u64::MAX, Arc::new(HashMap::new()))),
            verified: Arc::default(),
            policy: ConsentPolicy::default(),
            clock: ClockPolicy::default(),
            max_envelope_bytes: DEFAULT_MAX_ENVELOPE_BYTES,
        }
    }

    /// The largest envelope (payload and signature, in bytes) ingest lets into the log;
    /// a larger one is refused `INVALID_FIELD envelope.payload` before it is verified.
    pub fn with_max_envelope_bytes(mut self, bytes: usize) -> Self {
        self.max_envelope_bytes = bytes;
        self
    }

    /// The bounds of recorded_at around the receive time.
    pub fn with_clock(mut self, clock: ClockPolicy) -> Self {
        self.clock = clock;
        self
    }

    /// The consent policy facility consent events are judged by.
    pub fn with_policy(mut self, policy: ConsentPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Waits until the projector has projected `chain` up to `seq`.
    async fn projected(&self, chain: &ChainKey, seq: u64) -> PortResult<()> {
        let probe = EventId::from_bytes([0; 16]);
        let mut changes = self.store.changes();
        let deadline = tokio::time::Instant::now() + PROJECTION_WAIT;
        loop {
            changes.borrow_and_update();
            if self.store.chain_context(chain, probe, 0).await?.head.seq >= seq {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return Err(PortError::Unavailable(format!(
                        "the projector has not caught up with {chain}; retry"
                    )));
                }
            }
        }
    }

    /// The content verdict of an accepted facility event, judged against its facility's
    /// chain too: what the projector will decide.
    async fn judge(
        &self,
        facility: &FacilityId,
        event: &hrx_domain::event::FacilityEvent,
        earlier: &[Earlier],
    ) -> PortResult<Option<Rejection>> {
        let facts =
            facility_facts(&*self.store, facility, &event.header, &event.body, earlier).await?;
        Ok(check_facility_event(&self.policy, &event.header, &event.body, &facts).err())
    }

    /// Shares `verified` with a projector in the same process, which then skips the
    /// Ed25519 check of every envelope this ingest accepted.
    pub fn with_verified(mut self, verified: Arc<SignatureMemo>) -> Self {
        self.verified = verified;
        self
    }

    /// The registry as of now: the registry chain's head seq in the log, and every key
    /// it registered. Registry changes reach this process before its next decision:
    /// the head is read from the log on every call, and when it moved, ingest waits
    /// until the projector holds it and reloads the keys. Events are judged against
    /// that head, which goes into the log with them, so the projector and every replay
    /// judge them the same way.
    async fn registry(&self) -> PortResult<(u64, Arc<HashMap<KeyId, KeyRecord>>)> {
        let probe = EventId::from_bytes([0; 16]);
        let head = self
            .log
            .chain_context(&ChainKey::Registry, probe, 0)
            .await?
            .context
            .head
            .seq;
        {
            let (seq, keys) = &*self.keys.read().expect("keyring lock poisoned");
            if *seq == head {
                return Ok((head, keys.clone()));
            }
        }
        self.projected(&ChainKey::Registry, head).await?;
        let keys: HashMap<_, _> = self
            .store
            .keys(None)
            .await?
            .into_iter()
            .map(|k| (k.key.key_id(), k.key))
            .collect();
        let keys = Arc::new(keys);
        *self.keys.write().expect("keyring lock poisoned") = (head, keys.clone());
        Ok((head, keys))
    }

    /// Judges and appends a batch submitted by `caller`; one outcome per envelope, in
    /// order. Fails only when the log or store is unavailable, in which case nothing
    /// of the batch was appended.
    pub async fn submit(
        &self,
        caller: &FacilityId,
        envelopes: Vec<Envelope>,
    ) -> PortResult<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; envelopes.len()];
        // What this call refuses before the log and finds duplicate, counted against
        // the authenticated caller, never against the facility a refused payload
        // claims to be.
        let mut report = IngestReport::new(Some(caller.clone()));
        // Received now (whole milliseconds: what every log keeps exactly), against the
        // registry as the log holds it now.
        let (registry_seq, keys) = self.registry().await?;
        let receipt = Receipt {
            received_at: Timestamp::now().truncated_to_millis(),
            registry_seq: Some(registry_seq),
        };
        // Group authenticated events by facility, keeping submission order within each.
        let mut groups: Vec<(FacilityId, Vec<Pending>)> = Vec::new();
        for (index, envelope) in envelopes.into_iter().enumerate() {
            let event_hash = envelope.event_hash();
            // Too large for the log (whatever it holds): refused before it is verified.
            if envelope.payload.len() + envelope.signature.len() > self.max_envelope_bytes {
                let rejection = Rejection::invalid_field(
                    "envelope.payload",
                    format_args!("larger than {} bytes", self.max_envelope_bytes),
                );
                report.refusals.push(Refusal {
                    rejection: rejection.clone(),
                    event_hash,
                    event_id: None,
                    seq: None,
                });
                outcomes[index] = Some(Outcome::Rejected {
                    event_hash: Some(event_hash),
                    rejection,
                    position: None,
                });
                continue;
            }
            let authenticated = verify::authenticate_facility_event(
                envelope,
                &*keys,
                &*self.verified,
                &receipt,
                codec::decode_facility_event,
            );
            let authenticated = match authenticated {
                Ok(a) if &a.header.facility_id != caller => Err(Rejection::new(
                    Reason::NotAuthorised,
                    "a facility may submit only its own events",
                )),
                other => other,
            };
            match authenticated {
                Ok(event) => {
                    let f = event.header.facility_id.clone();
                    match groups.iter_mut().find(|(g, _)| *g == f) {
                        Some((_, v)) => v.push(Pending { index, event }),
                        None => groups.push((f, vec![Pending { index, event }])),
                    }
                }
                Err(rejection) => {
                    report.refusals.push(Refusal {
                        rejection: rejection.clone(),
                        event_hash,
                        event_id: None,
                        seq: None,
                    });
                    outcomes[index] = Some(Outcome::Rejected {
                        event_hash: Some(event_hash),
                        rejection,
                        position: None,
                    });
                }
            }
        }
        // Every chain's lock is held until the append: what was judged is what goes in.
        let mut guards = Vec::with_capacity(groups.len());
        let mut appends = Vec::new();
        for (facility, pending) in groups {
            let placed = self
                .place(&facility, pending, &receipt, &mut report)
                .await?;
            guards.push(placed.guard);
            for (index, outcome) in placed.answered {
                outcomes[index] = Some(outcome);
            }
            appends.extend(placed.appends);
        }
        let batch = appends.iter().map(|(_, a, _)| a.clone()).collect();
        let positions = hrx_rpc::chains::append_reported(
            &*self.log,
            &self.locks,
            batch,
            &report,
            receipt.received_at,
        )
        .await?;
        drop(guards);
        for ((index, a, rejection), position) in appends.into_iter().zip(positions) {
            outcomes[index] = Some(match rejection {
                None => Outcome::Accepted {
                    event_hash: a.event_hash,
                    position,
                },
                Some(rejection) => Outcome::Rejected {
                    event_hash: Some(a.event_hash),
                    rejection,
                    position: Some(position),
                },
            });
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every envelope answered"))
            .collect())
    }

    /// Places one facility's events in its chain: answers its duplicates and refusals
    /// (into `report`), and returns the events that extend it, to be appended while the
    /// returned lock is held.
    async fn place(
        &self,
        facility: &FacilityId,
        pending: Vec<Pending>,
        receipt: &Receipt,
        report: &mut IngestReport,
    ) -> PortResult<Placed> {
        let chain = ChainKey::Facility(facility.clone());
        let guard = self.locks.lock(&chain).await;
        let mut appends: Vec<(usize, Append, Option<Rejection>)> = Vec::new();
        let mut answered = Vec::new();
        // Head after the events of this batch that extend the chain.
        let mut batch_head: Option<ChainHead> = None;
        // The log as of now (we hold the chain's lock); the loop overlays this batch.
        let links: Vec<_> = pending
            .iter()
            .map(|p| (p.event.header.link.event_id, p.event.header.link.seq))
            .collect();
        let logged_contexts = self.log.chain_contexts(&chain, &links).await?;
        // Consent events and corrections of a facility are judged against its own chain:
        // wait until the projector holds all of it that is in the log (the rest is in
        // this batch).
        let stateful = pending.iter().any(|p| match &p.event.body {
            unchecked::Body::ConsentGrant(_)
            | unchecked::Body::ConsentRevocation(_)
            | unchecked::Body::BreakGlass(_) => true,
            unchecked::Body::Record(r) => !r.supersedes.is_empty(),
            _ => false,
        });
        if stateful && let Some(first) = logged_contexts.first() {
            self.projected(&chain, first.context.head.seq).await?;
        }
        let mut earlier: Vec<Earlier> = Vec::new();
        for (Pending { index, event }, logged) in pending.into_iter().zip(logged_contexts) {
            let link = event.header.link.clone();
            let mut ctx = logged.context;
            let mut prior_position = logged.prior_position;
            if let Some(head) = batch_head {
                ctx.head = head;
            }
            // Earlier events of this same batch are priors too.
            for (_, a, _) in &appends {
                let prior = Prior {
                    event_id: a.event_id,
                    seq: a.seq,
                    event_hash: a.event_hash,
                };
                if a.event_id == link.event_id {
                    ctx.same_event_id = Some(prior);
                    prior_position = None;
                }
                if a.seq == link.seq {
                    ctx.same_seq = Some(prior);
                }
            }
            let ctx: ChainContext = ctx;
            let event_hash = event.event_hash;
            let envelope = event.envelope.clone();
            let verdict =
                match verify::settle_facility_event(event, &ctx, receipt, Some(&self.clock)) {
                    // Event ids are unique across the exchange. One another chain holds
                    // would extend this chain yet never be projected, so it is refused
                    // here, as the projector would refuse it; the log's append refuses it
                    // too, should another chain take the id between this look and it.
                    Verdict::Accepted(_)
                    | Verdict::Rejected {
                        extends_chain: true,
                        ..
                    } if logged.id_in_other_chain => Verdict::Rejected {
                        rejection: Rejection::invalid_field(
                            "header.event_id",
                            "already used by another event",
                        ),
                        extends_chain: false,
                    },
                    v => v,
                };
            match verdict {
                Verdict::Duplicate => {
                    report.duplicates += 1;
                    answered.push((
                        index,
                        Outcome::Duplicate {
                            event_hash,
                            position: prior_position,
                        },
                    ))
                }
                Verdict::Rejected {
                    rejection,
                    extends_chain: false,
                } => {
                    report.refusals.push(Refusal {
                        rejection: rejection.clone(),
                        event_hash,
                        event_id: Some(link.event_id),
                        seq: Some(link.seq),
                    });
                    answered.push((
                        index,
                        Outcome::Rejected {
                            event_hash: Some(event_hash),
                            rejection,
                            position: None,
                        },
                    ));
                }
                verdict => {
                    // Accepted, or rejected for content only: either way it extends the
                    // chain and goes to the log; the projector records the rejection.
                    let rejection = match &verdict {
                        Verdict::Accepted(e) => {
                            let rejection = self.judge(facility, e, &earlier).await?;
                            if rejection.is_none()
                                && let Some(left) = Earlier::of(&e.header, &e.body)
                            {
                                earlier.push(left);
                            }
                            rejection
                        }
                        other => other.rejection().cloned(),
                    };
                    batch_head = Some(ChainHead::after(&link, event_hash));
                    appends.push((
                        index,
                        Append {
                            chain: chain.clone(),
                            seq: link.seq,
                            event_id: link.event_id,
                            event_hash,
                            envelope,
                            received_at: receipt.received_at,
                            registry_seq: receipt.registry_seq,
                            recorded_at: Some(link.recorded_at),
                        },
                        rejection,
                    ));
                }
            }
        }
        Ok(Placed {
            guard,
            answered,
            appends,
        })
    }

    /// The facility's head as written to the log.
    pub async fn head(&self, facility: &FacilityId) -> PortResult<ChainHead> {
        Ok(self
            .log
            .chain_context(&ChainKey::Facility(facility.clone()), probe(), 0)
            .await?
            .context
            .head)
    }
}

/// What [`Ingest::place`] leaves for the append: the chain's lock, the envelopes
/// answered without the log, and the events that extend the chain.
struct Placed {
    guard: tokio::sync::OwnedMutexGuard<()>,
    answered: Vec<(usize, Outcome)>,
    appends: Vec<(usize, Append, Option<Rejection>)>,
}

/// Any event id with seq 0: a chain lookup that only fetches the head.
fn probe() -> EventId {
    EventId::from_bytes([0; 16])
}
