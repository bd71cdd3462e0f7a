//! Turning log entries into one projection batch. Pure decisions come from the domain
//! (verification, chain rules, content rules); this module strings them together and
//! overlays the batch under construction on the store's state, so events of one batch
//! can chain on each other.

use std::collections::{HashMap, HashSet};

use hrx_consent::state::{Earlier, facility_facts, kind_of_fact};
use hrx_domain::audit::{AccessAction, AccessEvent, AccessOutcome, Reader};
use hrx_domain::chain::{ChainContext, ChainHead, Prior};
use hrx_domain::consent::{
    Basis, BreakGlassWindow, Classified, ConsentFact, ConsentPolicy, classify,
};
use hrx_domain::dsse::PayloadType;
use hrx_domain::event::{Body, FacilityHeader, RegistryBody, unchecked};
use hrx_domain::report;
use hrx_domain::verify::{self, ClockPolicy, KeyOwner, KeyRecord, SignatureMemo, Verdict};
use hrx_domain::{EventId, FacilityId, KeyId, Purpose, Reason, Rejection, Sha256, Timestamp};
use hrx_ports::{
    BreakGlassUse, ChainKey, ChainLink, ConsentEventRow, FacilityInfo, LogEntry, NewRecord,
    PortResult, Projection, ProjectionBatch, RejectionRow, StatsDelta, Store,
};
use hrx_proto::codec;

/// The batch being built and what it changes in memory.
struct Builder<'s> {
    store: &'s dyn Store,
    keys: HashMap<KeyId, KeyRecord>,
    verified: &'s SignatureMemo,
    batch: ProjectionBatch,
    policy: &'s ConsentPolicy,
    clock: &'s ClockPolicy,
    /// Heads after this batch's links, per chain.
    heads: HashMap<ChainKey, ChainHead>,
    /// Per facility, what its events earlier in this batch leave for its later ones
    /// (standing, attested grants, break-glass windows): the store has them only after
    /// the batch is applied.
    earlier: HashMap<FacilityId, Vec<Earlier>>,
    /// Event ids of the records, consent events and break-glass declarations in this
    /// batch.
    used_ids: HashSet<EventId>,
    /// Facilities registered in this batch.
    facilities: HashSet<FacilityId>,
    stats: HashMap<FacilityId, StatsDelta>,
    /// The store's answers for this batch's facility events, asked for all at once.
    prefetched: Prefetched,
}

/// What the store says about a batch's facility events, read in one query per chain
/// and one for all ids before the batch is built, instead of two round trips per event
/// (which bounded a projector on PostgreSQL at ~1,700 events/s). The store does not
/// change while the batch is built (it is applied at the end); events this batch adds
/// are overlaid as before. Keyed by what each envelope claims before it is verified:
/// a claim that turns out different is only a miss, and a miss asks the store.
#[derive(Default)]
struct Prefetched {
    contexts: HashMap<(ChainKey, EventId, u64), ChainContext>,
    /// The ids asked about, and those of them the store already uses.
    asked: HashSet<EventId>,
    taken: HashSet<EventId>,
}

impl Prefetched {
    async fn load(
        store: &dyn Store,
        decoded: &[Option<unchecked::FacilityEvent>],
    ) -> PortResult<Self> {
        let mut by_chain: HashMap<ChainKey, Vec<(EventId, u64)>> = HashMap::new();
        let mut ids = Vec::new();
        for header in decoded
            .iter()
            .flatten()
            .filter_map(|e| e.header.as_ref())
            .filter_map(|h| FacilityHeader::parse(h).ok())
        {
            let chain = ChainKey::Facility(header.facility_id);
            by_chain
                .entry(chain)
                .or_default()
                .push((header.link.event_id, header.link.seq));
            ids.push(header.link.event_id);
        }
        let mut prefetched = Self::default();
        for (chain, links) in by_chain {
            let contexts = store.chain_contexts(&chain, &links).await?;
            for ((event_id, seq), ctx) in links.into_iter().zip(contexts) {
                prefetched
                    .contexts
                    .insert((chain.clone(), event_id, seq), ctx);
            }
        }
        prefetched.taken = store.event_ids_taken(&ids).await?;
        prefetched.asked = ids.into_iter().collect();
        Ok(prefetched)
    }
}

/// Builds the batch for `entries`; returns it and the keyring after it.
pub(crate) async fn build(
    store: &dyn Store,
    keys: &HashMap<KeyId, KeyRecord>,
    verified: &SignatureMemo,
    (policy, clock): (&ConsentPolicy, &ClockPolicy),
    entries: Vec<LogEntry>,
) -> PortResult<(ProjectionBatch, HashMap<KeyId, KeyRecord>)> {
    // Facility events decoded once, before verification: their claimed chain links
    // key the prefetch, and verification reuses the decoded form.
    let decoded: Vec<Option<unchecked::FacilityEvent>> = entries
        .iter()
        .map(|entry| {
            if report::is_report(&entry.envelope) {
                return None;
            }
            match PayloadType::parse(&entry.envelope.payload_type) {
                Some(PayloadType::FacilityEvent) | None => {
                    codec::decode_facility_event(&entry.envelope.payload).ok()
                }
                _ => None,
            }
        })
        .collect();
    let prefetched = Prefetched::load(store, &decoded).await?;
    let mut b = Builder {
        store,
        keys: keys.clone(),
        verified,
        policy,
        clock,
        batch: ProjectionBatch::default(),
        heads: HashMap::new(),
        earlier: HashMap::new(),
        used_ids: HashSet::new(),
        facilities: HashSet::new(),
        stats: HashMap::new(),
        prefetched,
    };
    for (entry, decoded) in entries.into_iter().zip(decoded) {
        b.entry(entry, decoded).await?;
    }
    let mut stats: Vec<_> = b.stats.into_values().collect();
    stats.sort_by(|a, c| a.facility_id.cmp(&c.facility_id));
    b.batch.stats = stats;
    Ok((b.batch, b.keys))
}

impl Builder<'_> {
    fn stats(&mut self, facility: &FacilityId, at: Timestamp) -> &mut StatsDelta {
        let s = self
            .stats
            .entry(facility.clone())
            .or_insert_with(|| StatsDelta {
                facility_id: facility.clone(),
                accepted: 0,
                duplicates: 0,
                rejected: Vec::new(),
                last_seen: at,
            });
        s.last_seen = s.last_seen.max(at);
        s
    }

    fn count_rejection(&mut self, facility: &FacilityId, reason: Reason, at: Timestamp) {
        let s = self.stats(facility, at);
        match s.rejected.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => s.rejected.push((reason, 1)),
        }
    }

    /// Whether the store already uses `id`: the prefetched answer, else the store's.
    async fn id_taken(&self, id: EventId) -> PortResult<bool> {
        if self.prefetched.asked.contains(&id) {
            Ok(self.prefetched.taken.contains(&id))
        } else {
            self.store.event_id_taken(id).await
        }
    }

    /// The store's chain context overlaid with this batch's links.
    async fn context(
        &self,
        chain: &ChainKey,
        event_id: EventId,
        seq: u64,
    ) -> PortResult<ChainContext> {
        let key = (chain.clone(), event_id, seq);
        let mut ctx = match self.prefetched.contexts.get(&key) {
            Some(ctx) => *ctx,
            None => self.store.chain_context(chain, event_id, seq).await?,
        };
        if let Some(head) = self.heads.get(chain) {
            ctx.head = *head;
        }
        for l in self.batch.links.iter().filter(|l| &l.chain == chain) {
            let prior = Prior {
                event_id: l.event_id,
                seq: l.seq,
                event_hash: l.event_hash,
            };
            if l.event_id == event_id {
                ctx.same_event_id = Some(prior);
            }
            if l.seq == seq {
                ctx.same_seq = Some(prior);
            }
        }
        Ok(ctx)
    }

    fn link(
        &mut self,
        chain: ChainKey,
        link: &hrx_domain::event::Link,
        hash: Sha256,
        entry: &LogEntry,
    ) {
        self.heads
            .insert(chain.clone(), ChainHead::after(link, hash));
        self.batch.links.push(ChainLink {
            chain,
            seq: link.seq,
            event_id: link.event_id,
            event_hash: hash,
            position: entry.position,
            // As the log's chain index has it: a head time only for entries written
            // since the log records receipts, so that the projector compares the next
            // event with exactly what ingest compared it with.
            recorded_at: entry.registry_seq.map(|_| link.recorded_at),
        });
    }

    fn reject(
        &mut self,
        entry: &LogEntry,
        facility: Option<FacilityId>,
        link: Option<&hrx_domain::event::Link>,
        rejection: &Rejection,
    ) {
        // The exchange's time, never the signer's: a facility's own clock cannot move
        // its figures (an event dated 2099 is not "last seen" in 2099).
        let at = entry.appended_at;
        if let Some(f) = &facility {
            self.count_rejection(f, rejection.reason(), at);
        }
        self.batch
            .projections
            .push(Projection::Rejection(RejectionRow {
                position: Some(entry.position),
                facility_id: facility,
                event_id: link.map(|l| l.event_id),
                seq: link.map(|l| l.seq),
                event_hash: Some(entry.envelope.event_hash()),
                reason: rejection.reason(),
                field: rejection.field(),
                message: rejection.message().to_owned(),
                at,
            }));
    }

    async fn entry(
        &mut self,
        entry: LogEntry,
        decoded: Option<unchecked::FacilityEvent>,
    ) -> PortResult<()> {
        if report::is_report(&entry.envelope) {
            self.report(&entry);
            return Ok(());
        }
        match PayloadType::parse(&entry.envelope.payload_type) {
            Some(PayloadType::RegistryEvent) => self.registry(entry).await,
            Some(PayloadType::PatientStatement) => self.statement(entry).await,
            _ => self.facility(entry, decoded).await,
        }
    }

    async fn facility(
        &mut self,
        entry: LogEntry,
        decoded: Option<unchecked::FacilityEvent>,
    ) -> PortResult<()> {
        // The payload decoded earlier is the same bytes, decoded the same way; only
        // used after the signature over those bytes checks out.
        let receipt = entry.receipt();
        let authenticated = verify::authenticate_facility_event(
            entry.envelope.clone(),
            &self.keys,
            self.verified,
            &receipt,
            |payload| match decoded {
                Some(event) => Ok(event),
                None => codec::decode_facility_event(payload),
            },
        );
        let event = match authenticated {
            Ok(e) => e,
            Err(rejection) => {
                let facility = codec::decode_facility_event(&entry.envelope.payload)
                    .ok()
                    .and_then(|e| e.header)
                    .and_then(|h| FacilityId::parse(&h.facility_id).ok());
                self.reject(&entry, facility, None, &rejection);
                return Ok(());
            }
        };
        let facility = event.header.facility_id.clone();
        let link = event.header.link.clone();
        let chain = ChainKey::Facility(facility.clone());
        let ctx = self.context(&chain, link.event_id, link.seq).await?;
        let hash = event.event_hash;
        // An entry from before the log recorded receive times was accepted without the
        // clock rules (and its chain index kept no head time): judge it so again.
        let clock = receipt.registry_seq.is_some().then_some(self.clock);
        match verify::settle_facility_event(event, &ctx, &receipt, clock) {
            Verdict::Duplicate => self.stats(&facility, entry.appended_at).duplicates += 1,
            Verdict::Rejected {
                rejection,
                extends_chain,
            } => {
                if extends_chain {
                    self.link(chain, &link, hash, &entry);
                }
                self.reject(&entry, Some(facility), Some(&link), &rejection);
            }
            Verdict::Accepted(e) => {
                self.link(chain, &link, hash, &entry);
                match self
                    .body(&entry, &facility, &e.header, hash, e.body)
                    .await?
                {
                    Ok(p) => {
                        self.batch.projections.push(p);
                        self.stats(&facility, entry.appended_at).accepted += 1;
                    }
                    Err(rejection) => self.reject(&entry, Some(facility), Some(&link), &rejection),
                }
            }
        }
        Ok(())
    }

    /// Whether `id` is used by an earlier event (this batch's or the store's). Event
    /// ids are unique across the exchange: a reused one (another facility's, or a
    /// patient's statement id) is refused here rather than failing the batch in the
    /// store. Ingest and the log refuse such an event before it is appended; this is
    /// for entries an older hrx appended.
    async fn id_reused(&mut self, id: EventId) -> PortResult<bool> {
        if self.used_ids.contains(&id) || self.id_taken(id).await? {
            return Ok(true);
        }
        self.used_ids.insert(id);
        Ok(false)
    }

    /// The projection of a valid body, or a rejection that needs projected state to
    /// decide: a reused event id, and what a facility's consent events are judged
    /// against in its own chain (standing, grantor, break-glass limits).
    async fn body(
        &mut self,
        entry: &LogEntry,
        facility: &FacilityId,
        header: &FacilityHeader,
        hash: Sha256,
        body: Body,
    ) -> PortResult<Result<Projection, Rejection>> {
        let link = &header.link;
        if self.id_reused(link.event_id).await? {
            return Ok(Err(Rejection::invalid_field(
                "header.event_id",
                "already used by another event",
            )));
        }
        let earlier = self.earlier.get(facility).map(Vec::as_slice).unwrap_or(&[]);
        let facts = facility_facts(self.store, facility, header, &body, earlier).await?;
        if let Err(rejection) =
            hrx_domain::consent::check_facility_event(self.policy, header, &body, &facts)
        {
            return Ok(Err(rejection));
        }
        if let Some(e) = Earlier::of(header, &body) {
            self.earlier.entry(facility.clone()).or_default().push(e);
        }
        let patient_id = body.patient_id().clone();
        Ok(Ok(match classify(facility, body) {
            Classified::Consent(fact) => Projection::ConsentEvent(ConsentEventRow {
                event_id: link.event_id,
                patient_id,
                kind: kind_of_fact(&fact),
                facility_id: Some(facility.clone()),
                received_at: entry.appended_at,
                envelope: entry.envelope.clone(),
            }),
            Classified::Record(r) => Projection::Record(NewRecord {
                event_id: link.event_id,
                facility_id: facility.clone(),
                seq: link.seq,
                patient_id: r.patient_id,
                kind: r.kind,
                occurred_at: r.occurred_at,
                recorded_at: link.recorded_at,
                author: r.author,
                sensitivity: r.sensitivity,
                supersedes: r.supersedes,
                body: r.body,
                event_hash: hash,
                position: entry.position,
                envelope: entry.envelope.clone(),
            }),
            Classified::BreakGlass(b) => {
                let window = BreakGlassWindow {
                    event_id: link.event_id,
                    facility_id: facility.clone(),
                    declared_at: link.recorded_at,
                    expires_at: b.expires_at,
                };
                let audit = AccessEvent {
                    reader: Reader::Facility(facility.clone()),
                    patient: b.patient_id.clone(),
                    purpose: Some(Purpose::Emergency),
                    action: AccessAction::BreakGlass,
                    bases: vec![Basis::BreakGlass(link.event_id)],
                    records_returned: 0,
                    records_withheld: 0,
                    at: link.recorded_at,
                    outcome: AccessOutcome::Allowed,
                };
                tracing::warn!(
                    facility = %facility,
                    event_id = %link.event_id,
                    "break-glass declared"
                );
                Projection::BreakGlass(
                    BreakGlassUse {
                        window,
                        patient_id: b.patient_id,
                        clinician: b.clinician,
                        reason: b.reason,
                        reads: 0,
                    },
                    audit,
                )
            }
        }))
    }

    /// An ingest report: the exchange's own count of what one call refused before the
    /// log and found duplicate, against its authenticated caller, at the time the
    /// exchange received the call. Projected like the projector's own rejections, so a
    /// replay rebuilds it.
    fn report(&mut self, entry: &LogEntry) {
        let report = match codec::decode_ingest_report(&entry.envelope.payload) {
            Ok(r) => r,
            Err(e) => {
                // Only the exchange writes reports; one that does not decode came from
                // something else with access to the log. Recorded, not trusted.
                tracing::warn!(
                    partition = entry.position.partition,
                    offset = entry.position.offset,
                    error = %e,
                    "an ingest report in the log does not decode"
                );
                let rejection =
                    Rejection::new(Reason::MalformedPayload, "an ingest report does not decode");
                self.reject(entry, None, None, &rejection);
                return;
            }
        };
        let at = entry.appended_at;
        if let Some(f) = &report.caller {
            self.stats(f, at).duplicates += report.duplicates;
        }
        for refusal in report.refusals {
            if let Some(f) = &report.caller {
                self.count_rejection(f, refusal.rejection.reason(), at);
            }
            self.batch
                .projections
                .push(Projection::Rejection(RejectionRow {
                    position: Some(entry.position),
                    facility_id: report.caller.clone(),
                    event_id: refusal.event_id,
                    seq: refusal.seq,
                    event_hash: Some(refusal.event_hash),
                    reason: refusal.rejection.reason(),
                    field: refusal.rejection.field(),
                    message: refusal.rejection.message().to_owned(),
                    at,
                }));
        }
    }

    /// A patient statement: verified from its own bytes (its header names the signing
    /// key). Whether that key was the patient's when the exchange received it is the
    /// consent state's to decide, from the log alone, whatever order the log's
    /// partitions are projected in.
    async fn statement(&mut self, entry: LogEntry) -> PortResult<()> {
        let verified = hrx_domain::patient::verify_statement(
            &entry.envelope,
            entry.appended_at,
            codec::decode_patient_statement,
        );
        let statement = match verified {
            Ok(s) => s,
            Err(rejection) => {
                self.reject(&entry, None, None, &rejection);
                return Ok(());
            }
        };
        let id = statement.header.statement_id;
        if self.id_reused(id).await? {
            let rejection = Rejection::invalid_field(
                "statement.header.statement_id",
                "already used by another event",
            );
            self.reject(&entry, None, None, &rejection);
            return Ok(());
        }
        let fact = ConsentFact::of_statement(&statement);
        self.batch
            .projections
            .push(Projection::ConsentEvent(ConsentEventRow {
                event_id: id,
                patient_id: statement.header.patient_id.clone(),
                kind: kind_of_fact(&fact),
                facility_id: None,
                received_at: entry.appended_at,
                envelope: entry.envelope,
            }));
        Ok(())
    }

    async fn registry(&mut self, entry: LogEntry) -> PortResult<()> {
        let probe = codec::decode_registry_event(&entry.envelope.payload)
            .ok()
            .and_then(|e| e.header)
            .and_then(|h| EventId::parse(&h.event_id).ok().map(|id| (id, h.seq)));
        let head = match probe {
            Some((id, seq)) => self.context(&ChainKey::Registry, id, seq).await?.head,
            None => self
                .heads
                .get(&ChainKey::Registry)
                .copied()
                .unwrap_or(ChainHead::EMPTY),
        };
        let verdict = verify::verify_registry_envelope(
            &entry.envelope,
            &self.keys,
            head,
            codec::decode_registry_event,
        );
        let hash = entry.envelope.event_hash();
        match verdict {
            Verdict::Duplicate => {}
            Verdict::Rejected {
                rejection,
                extends_chain,
            } => {
                if extends_chain && let Some(link) = registry_link(&entry) {
                    self.link(ChainKey::Registry, &link, hash, &entry);
                }
                self.reject(&entry, None, None, &rejection);
            }
            Verdict::Accepted(e) => {
                self.link(ChainKey::Registry, &e.header.link, hash, &entry);
                match self.registry_body(e.header.link.seq, e.body).await? {
                    Ok(p) => self.batch.projections.push(p),
                    Err(rejection) => self.reject(&entry, None, None, &rejection),
                }
            }
        }
        Ok(())
    }

    /// The projection of a valid registry body, or a rejection that needs registry state
    /// to decide: a key added twice or for an unregistered facility, a revocation of an
    /// unknown or already revoked key.
    /// `seq` is the registry event's: keys carry the seqs that added and revoked them,
    /// so that an event is judged against the registry as ingest knew it.
    async fn registry_body(
        &mut self,
        seq: u64,
        body: RegistryBody,
    ) -> PortResult<Result<Projection, Rejection>> {
        let existing = match &body {
            RegistryBody::KeyAdded { public_key, .. } => self.keys.get(&public_key.key_id()),
            RegistryBody::KeyRevoked { key_id, .. } => self.keys.get(key_id),
            RegistryBody::FacilityRegistered { .. } | RegistryBody::CertificateRevoked { .. } => {
                None
            }
        };
        let facility_registered = match &body {
            RegistryBody::KeyAdded { facility_id, .. } => {
                self.facilities.contains(facility_id)
                    || self.store.facility(facility_id).await?.is_some()
            }
            _ => true,
        };
        if let Err(rejection) =
            hrx_domain::content::check_registry_change(&body, existing, facility_registered)
        {
            return Ok(Err(rejection));
        }
        Ok(Ok(match body {
            RegistryBody::FacilityRegistered {
                facility_id,
                name,
                province,
                level,
            } => {
                self.facilities.insert(facility_id.clone());
                Projection::FacilityRegistered(FacilityInfo {
                    facility_id,
                    name,
                    province,
                    level,
                })
            }
            RegistryBody::KeyAdded {
                facility_id,
                public_key,
                valid_from,
            } => {
                let key = KeyRecord {
                    public_key,
                    owner: KeyOwner::Facility(facility_id),
                    valid_from,
                    revoked_at: None,
                    registered_seq: seq,
                    revoked_seq: None,
                };
                self.keys.insert(key.key_id(), key.clone());
                Projection::KeyAdded(key)
            }
            RegistryBody::KeyRevoked {
                key_id,
                revoked_at,
                reason,
            } => {
                if let Some(k) = self.keys.get_mut(&key_id) {
                    k.revoked_at = Some(revoked_at);
                    k.revoked_seq = Some(seq);
                }
                Projection::KeyRevoked {
                    key_id,
                    revoked_at,
                    revoked_seq: seq,
                    reason,
                }
            }
            RegistryBody::CertificateRevoked {
                serial,
                principal,
                revoked_at,
                reason,
            } => Projection::CertificateRevoked(hrx_ports::RevokedCertificate {
                serial,
                principal,
                revoked_at,
                reason,
                registry_seq: seq,
            }),
        }))
    }
}

/// The chain link of a registry event whose header parses.
fn registry_link(entry: &LogEntry) -> Option<hrx_domain::event::Link> {
    let raw = codec::decode_registry_event(&entry.envelope.payload)
        .ok()?
        .header?;
    hrx_domain::event::RegistryHeader::parse(&raw)
        .ok()
        .map(|h| h.link)
}
