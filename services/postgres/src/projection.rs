//! [`ProjectionStore`]: the projector's batches, each one transaction with its offsets,
//! and `reset_projections` for `hrx reproject`.
//!
//! A batch is written one statement per table, every row of that table at once
//! (`INSERT … SELECT FROM unnest($1::…[], …)`), so a batch costs a dozen round trips
//! whatever its size. The statements run in a fixed order: records (with their
//! envelopes and supersede links), consent events, break-glass windows, facilities,
//! keys added, keys revoked, rejections, chain links, stats, offsets, the break-glass
//! audit entries, and the notification. Within a table, rows keep their order in the
//! batch (identity columns are assigned `ORDER BY` ordinality), so "projection order"
//! is batch order. Consent events are stored as they came (their envelopes), and the
//! consent state is folded from them when read, so a revocation is one more row, not an
//! update of its grant. Across tables the only dependency is a key revocation following
//! its key, which that order honours. Any failure rolls the whole batch back, offsets
//! included, so the projector re-reads the same entries.
//!
//! Lock order, which keeps concurrent projectors from deadlocking each other: patient
//! counter rows (sorted by patient id), then stats rows (sorted by facility), then the
//! audit head, last, so that it is held for as short a time as possible.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Transaction};
use hrx_domain::audit::{AccessEvent, AuditEntry};
use hrx_domain::chain::{ChainContext, ChainHead, Prior};
use hrx_domain::verify::KeyRecord;
use hrx_domain::{EventId, FacilityId, KeyId, Timestamp};
use hrx_ports::changed::{self, BucketSet, PatientChanges};
use hrx_ports::{
    BreakGlassUse, ChainKey, ChainLink, ConsentEventRow, FacilityInfo, NewRecord, PortResult,
    Projection, ProjectionBatch, ProjectionStore, ProjectorSnapshot, RejectionRow,
    RevokedCertificate, StatsDelta,
};
use tokio::sync::watch;
use tokio_postgres::IsolationLevel;

use crate::codec::{self, Cols, execute, query};
use crate::consent::consent_event_by_id;
use crate::error::{PgError, Result, db, int};
use crate::registry::all_keys;
use crate::schema::SOURCE_PROJECTOR;
use crate::{PgStore, audit, notify};

/// A key revocation: the key, when, the registry seq of the revocation, why.
type Revocation<'a> = (&'a KeyId, Timestamp, u64, &'a str);

/// A batch's projections, grouped by the table they write, each group in batch order.
#[derive(Default)]
struct Groups<'a> {
    records: Vec<&'a NewRecord>,
    consent_events: Vec<&'a ConsentEventRow>,
    break_glass: Vec<(&'a BreakGlassUse, &'a AccessEvent)>,
    facilities: Vec<&'a FacilityInfo>,
    keys_added: Vec<&'a KeyRecord>,
    keys_revoked: Vec<Revocation<'a>>,
    certificates_revoked: Vec<&'a RevokedCertificate>,
    rejections: Vec<&'a RejectionRow>,
}

impl<'a> Groups<'a> {
    fn of(projections: &'a [Projection]) -> Self {
        let mut g = Groups::default();
        for p in projections {
            match p {
                Projection::Record(r) => g.records.push(r),
                Projection::ConsentEvent(row) => g.consent_events.push(row),
                Projection::BreakGlass(u, e) => g.break_glass.push((u, e)),
                Projection::FacilityRegistered(f) => g.facilities.push(f),
                Projection::KeyAdded(k) => g.keys_added.push(k),
                Projection::KeyRevoked {
                    key_id,
                    revoked_at,
                    revoked_seq,
                    reason,
                } => g
                    .keys_revoked
                    .push((key_id, *revoked_at, *revoked_seq, reason)),
                Projection::CertificateRevoked(c) => g.certificates_revoked.push(c),
                Projection::Rejection(r) => g.rejections.push(r),
            }
        }
        g
    }
}

async fn apply(tx: &Transaction<'_>, batch: &ProjectionBatch, instance: &str) -> Result<()> {
    check_offsets(tx, &batch.expected_offsets).await?;
    let g = Groups::of(&batch.projections);
    insert_records(tx, &g.records).await?;
    insert_consent_events(tx, &g.consent_events).await?;
    insert_windows(tx, &g.break_glass).await?;
    upsert_facilities(tx, &g.facilities).await?;
    insert_keys(tx, &g.keys_added).await?;
    revoke_keys(tx, &g.keys_revoked).await?;
    revoke_certificates(tx, &g.certificates_revoked).await?;
    insert_rejections(tx, SOURCE_PROJECTOR, &g.rejections).await?;
    insert_links(tx, &batch.links).await?;
    add_stats(tx, SOURCE_PROJECTOR, &batch.stats).await?;
    save_offsets(tx, &batch.offsets).await?;
    audit_declarations(tx, &g.break_glass).await?;
    notify(tx, instance, &changed::touched(batch)).await
}

/// Queues the change notification; PostgreSQL delivers it to every listener when (and
/// only if) the transaction commits. Its payload names the instance and the buckets of
/// the patients touched ([`notify::payload`]).
async fn notify(tx: &Transaction<'_>, instance: &str, touched: &BucketSet) -> Result<()> {
    execute(
        tx,
        "notifying listeners",
        "SELECT pg_notify($1, $2)",
        &[&notify::CHANNEL, &notify::payload(instance, touched)],
    )
    .await?;
    Ok(())
}

/// Hands out the next `patient_seq`s: one upsert over every patient of the batch adds
/// its count to the patient's counter and returns the new last value. The upsert
/// row-locks each patient's counter until commit, so a concurrent batch for the same
/// patient waits and then continues after our seqs: per patient, seqs are gap-free and
/// commit in order. Patients go in sorted order, so two batches lock in the same order.
async fn next_patient_seqs(
    tx: &Transaction<'_>,
    records: &[&NewRecord],
) -> Result<HashMap<String, i64>> {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for r in records {
        *counts.entry(r.patient_id.as_str()).or_default() += 1;
    }
    let patients: Vec<&str> = counts.keys().copied().collect();
    let added: Vec<i64> = counts.values().copied().collect();
    let rows = query(
        tx,
        &format!(
            "apply: counting patient_seq for {} patients",
            patients.len()
        ),
        "INSERT INTO patient_counters (patient_id, last_seq) \
         SELECT * FROM unnest($1::text[], $2::bigint[]) \
         ON CONFLICT (patient_id) DO UPDATE \
           SET last_seq = patient_counters.last_seq + excluded.last_seq \
         RETURNING patient_id, last_seq",
        &[&patients, &added],
    )
    .await?;
    let mut first = HashMap::with_capacity(rows.len());
    for row in &rows {
        let mut c = Cols::new(row);
        let patient = c.text()?;
        let last = i64::try_from(c.u64()?)
            .map_err(|_| PgError::Corrupt("patient_counters.last_seq is out of range".into()))?;
        let k = counts.get(patient.as_str()).copied().ok_or_else(|| {
            PgError::Corrupt("patient_counters returned a patient not in the batch".into())
        })?;
        first.insert(patient, last - k + 1);
    }
    Ok(first)
}

/// Inserts the records (and their envelopes) with their `patient_seq`s, then links
/// corrections.
async fn insert_records(tx: &Transaction<'_>, records: &[&NewRecord]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut next = next_patient_seqs(tx, records).await?;
    let n = records.len();
    let mut event_id = Vec::with_capacity(n);
    let mut facility_id = Vec::with_capacity(n);
    let mut seq = Vec::with_capacity(n);
    let mut patient_id = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut occurred_s = Vec::with_capacity(n);
    let mut occurred_ns = Vec::with_capacity(n);
    let mut recorded_s = Vec::with_capacity(n);
    let mut recorded_ns = Vec::with_capacity(n);
    let mut author = Vec::with_capacity(n);
    let mut sensitivity = Vec::with_capacity(n);
    let mut supersedes = Vec::with_capacity(n);
    let mut event_hash = Vec::with_capacity(n);
    let mut partition = Vec::with_capacity(n);
    let mut offset = Vec::with_capacity(n);
    let mut patient_seq = Vec::with_capacity(n);
    let mut body = Vec::with_capacity(n);
    let mut payload_type = Vec::with_capacity(n);
    let mut key_id = Vec::with_capacity(n);
    let mut signature = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    for r in records {
        let slot = next.get_mut(r.patient_id.as_str()).ok_or_else(|| {
            PgError::Corrupt(format!(
                "no patient_seq was handed out for record {}",
                r.event_id
            ))
        })?;
        patient_seq.push(*slot);
        *slot += 1;
        event_id.push(codec::id(&r.event_id));
        facility_id.push(r.facility_id.as_str());
        seq.push(int(r.seq, "seq")?);
        patient_id.push(r.patient_id.as_str());
        kind.push(r.kind.code());
        let (s, ns) = codec::ts(r.occurred_at);
        occurred_s.push(s);
        occurred_ns.push(ns);
        let (s, ns) = codec::ts(r.recorded_at);
        recorded_s.push(s);
        recorded_ns.push(ns);
        author.push(r.author.as_str());
        sensitivity.push(codec::codes(&r.sensitivity, |l| l.code()));
        supersedes.push(codec::opt_id(r.supersedes.as_ref()));
        event_hash.push(r.event_hash.as_bytes().as_slice());
        partition.push(i64::from(r.position.partition));
        offset.push(int(r.position.offset, "offset")?);
        body.push(r.body.as_slice());
        payload_type.push(r.envelope.payload_type.as_str());
        key_id.push(r.envelope.key_id.as_str());
        signature.push(r.envelope.signature.as_slice());
        payload.push(r.envelope.payload.as_slice());
    }
    execute(
        tx,
        &format!("apply: inserting {n} records"),
        "WITH r AS ( \
           INSERT INTO records (event_id, facility_id, seq, patient_id, kind, occurred_s, \
             occurred_ns, recorded_s, recorded_ns, author, sensitivity, supersedes, \
             event_hash, log_partition, log_offset, patient_seq, body) \
           SELECT u.event_id, u.facility_id, u.seq, u.patient_id, u.kind, u.occurred_s, \
             u.occurred_ns, u.recorded_s, u.recorded_ns, u.author, \
             string_to_array(u.sensitivity, ',')::integer[], u.supersedes, u.event_hash, \
             u.log_partition, u.log_offset, u.patient_seq, u.body \
           FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::text[], $5::integer[], \
             $6::bigint[], $7::integer[], $8::bigint[], $9::integer[], $10::text[], \
             $11::text[], $12::bytea[], $13::bytea[], $14::bigint[], $15::bigint[], \
             $16::bigint[], $17::bytea[]) \
             AS u(event_id, facility_id, seq, patient_id, kind, occurred_s, occurred_ns, \
               recorded_s, recorded_ns, author, sensitivity, supersedes, event_hash, \
               log_partition, log_offset, patient_seq, body)) \
         INSERT INTO record_envelopes (event_id, payload_type, key_id, signature, payload) \
         SELECT * FROM unnest($1::bytea[], $18::text[], $19::text[], $20::bytea[], \
           $21::bytea[])",
        &[
            &event_id,
            &facility_id,
            &seq,
            &patient_id,
            &kind,
            &occurred_s,
            &occurred_ns,
            &recorded_s,
            &recorded_ns,
            &author,
            &sensitivity,
            &supersedes,
            &event_hash,
            &partition,
            &offset,
            &patient_seq,
            &body,
            &payload_type,
            &key_id,
            &signature,
            &payload,
        ],
    )
    .await?;
    link_corrections(tx, records).await
}

/// Sets `superseded_by` on every record this batch touches either way: those its
/// records name in `supersedes`, and its own records, which an earlier record may
/// already name (a correction projected first). Each gets the latest record (highest
/// `patient_seq`) naming it, within its patient so that a timeline never points into
/// another patient's records, never itself: what the embedded store reaches by linking
/// row by row.
async fn link_corrections(tx: &Transaction<'_>, records: &[&NewRecord]) -> Result<()> {
    let mut touched: HashSet<Vec<u8>> = HashSet::new();
    for r in records {
        touched.insert(codec::id(&r.event_id));
        if let Some(s) = &r.supersedes {
            touched.insert(codec::id(s));
        }
    }
    let touched: Vec<Vec<u8>> = touched.into_iter().collect();
    execute(
        tx,
        &format!("apply: linking corrections among {} records", touched.len()),
        "UPDATE records t SET superseded_by = latest.event_id \
         FROM (SELECT DISTINCT ON (c.supersedes, c.patient_id) \
                 c.supersedes, c.patient_id, c.event_id \
               FROM records c \
               WHERE c.supersedes = ANY($1::bytea[]) AND c.supersedes <> c.event_id \
               ORDER BY c.supersedes, c.patient_id, c.patient_seq DESC) latest \
         WHERE t.event_id = latest.supersedes AND t.patient_id = latest.patient_id \
           AND t.superseded_by IS DISTINCT FROM latest.event_id",
        &[&touched],
    )
    .await?;
    Ok(())
}

/// Inserts consent events as they came, in batch order (their `id`s).
async fn insert_consent_events(tx: &Transaction<'_>, rows: &[&ConsentEventRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let mut event_id = Vec::with_capacity(n);
    let mut patient_id = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut facility_id = Vec::with_capacity(n);
    let mut received_s = Vec::with_capacity(n);
    let mut received_ns = Vec::with_capacity(n);
    let mut payload_type = Vec::with_capacity(n);
    let mut key_id = Vec::with_capacity(n);
    let mut signature = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    for r in rows {
        event_id.push(codec::id(&r.event_id));
        patient_id.push(r.patient_id.as_str());
        kind.push(r.kind.code());
        facility_id.push(r.facility_id.as_ref().map(FacilityId::as_str));
        let (s, ns) = codec::ts(r.received_at);
        received_s.push(s);
        received_ns.push(ns);
        payload_type.push(r.envelope.payload_type.as_str());
        key_id.push(r.envelope.key_id.as_str());
        signature.push(r.envelope.signature.as_slice());
        payload.push(r.envelope.payload.as_slice());
    }
    execute(
        tx,
        &format!("apply: inserting {n} consent events"),
        "INSERT INTO consent_events (event_id, patient_id, kind, facility_id, received_s, \
           received_ns, payload_type, key_id, signature, payload) \
         SELECT u.event_id, u.patient_id, u.kind, u.facility_id, u.received_s, \
           u.received_ns, u.payload_type, u.key_id, u.signature, u.payload \
         FROM unnest($1::bytea[], $2::text[], $3::integer[], $4::text[], $5::bigint[], \
           $6::integer[], $7::text[], $8::text[], $9::bytea[], $10::bytea[]) WITH ORDINALITY \
           AS u(event_id, patient_id, kind, facility_id, received_s, received_ns, \
             payload_type, key_id, signature, payload, ord) \
         ORDER BY u.ord",
        &[
            &event_id,
            &patient_id,
            &kind,
            &facility_id,
            &received_s,
            &received_ns,
            &payload_type,
            &key_id,
            &signature,
            &payload,
        ],
    )
    .await?;
    Ok(())
}

/// The windows only: their reads are counted on the audit side (`break_glass_reads`),
/// and the `reads` the projector passes (0) is not stored.
async fn insert_windows(
    tx: &Transaction<'_>,
    uses: &[(&BreakGlassUse, &AccessEvent)],
) -> Result<()> {
    if uses.is_empty() {
        return Ok(());
    }
    let n = uses.len();
    let mut event_id = Vec::with_capacity(n);
    let mut patient_id = Vec::with_capacity(n);
    let mut facility_id = Vec::with_capacity(n);
    let mut clinician = Vec::with_capacity(n);
    let mut declared_s = Vec::with_capacity(n);
    let mut declared_ns = Vec::with_capacity(n);
    let mut expires_s = Vec::with_capacity(n);
    let mut expires_ns = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    for (u, _) in uses {
        let w = &u.window;
        event_id.push(codec::id(&w.event_id));
        patient_id.push(u.patient_id.as_str());
        facility_id.push(w.facility_id.as_str());
        clinician.push(u.clinician.as_str());
        let (s, ns) = codec::ts(w.declared_at);
        declared_s.push(s);
        declared_ns.push(ns);
        let (s, ns) = codec::ts(w.expires_at);
        expires_s.push(s);
        expires_ns.push(ns);
        reason.push(u.reason.as_str());
    }
    execute(
        tx,
        &format!("apply: inserting {n} break-glass windows"),
        "INSERT INTO break_glass (event_id, patient_id, facility_id, clinician, declared_s, \
           declared_ns, expires_s, expires_ns, reason) \
         SELECT u.event_id, u.patient_id, u.facility_id, u.clinician, u.declared_s, \
           u.declared_ns, u.expires_s, u.expires_ns, u.reason \
         FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
           $6::integer[], $7::bigint[], $8::integer[], $9::text[]) WITH ORDINALITY \
           AS u(event_id, patient_id, facility_id, clinician, declared_s, declared_ns, \
             expires_s, expires_ns, reason, ord) \
         ORDER BY u.ord",
        &[
            &event_id,
            &patient_id,
            &facility_id,
            &clinician,
            &declared_s,
            &declared_ns,
            &expires_s,
            &expires_ns,
            &reason,
        ],
    )
    .await?;
    Ok(())
}

/// Each declaration's audit entry, keyed by the declaration's event id: a replay after
/// `reset_projections` finds it and writes no second one. The declaration is not itself
/// a read under the window. Checked after locking the audit head, so two processes
/// replaying the same declaration cannot both write it.
async fn audit_declarations(
    tx: &Transaction<'_>,
    uses: &[(&BreakGlassUse, &AccessEvent)],
) -> Result<()> {
    if uses.is_empty() {
        return Ok(());
    }
    let (mut seq, mut hash) = audit::lock_head(tx).await?;
    let ids: Vec<Vec<u8>> = uses
        .iter()
        .map(|(u, _)| codec::id(&u.window.event_id))
        .collect();
    let mut written: HashSet<Vec<u8>> = query(
        tx,
        "apply: finding declarations already audited",
        "SELECT break_glass_event_id FROM audit_log \
         WHERE break_glass_event_id = ANY($1::bytea[])",
        &[&ids],
    )
    .await?
    .iter()
    .map(|row| Cols::new(row).blob())
    .collect::<Result<_>>()?;
    let mut entries = Vec::new();
    for (u, event) in uses {
        if written.insert(codec::id(&u.window.event_id)) {
            let entry = AuditEntry::chain(seq, hash, (*event).clone());
            (seq, hash) = (entry.seq, entry.entry_hash);
            entries.push((entry, Some(u.window.event_id)));
        }
    }
    audit::write(tx, &entries, None, &[]).await
}

/// A facility registered again (renamed, moved, re-levelled) replaces its entry; within
/// a batch the last registration wins.
async fn upsert_facilities(tx: &Transaction<'_>, facilities: &[&FacilityInfo]) -> Result<()> {
    if facilities.is_empty() {
        return Ok(());
    }
    // One upsert cannot change a row twice: keep each facility's last registration.
    let mut last: BTreeMap<&str, &FacilityInfo> = BTreeMap::new();
    for f in facilities {
        last.insert(f.facility_id.as_str(), f);
    }
    let ids: Vec<&str> = last.keys().copied().collect();
    let names: Vec<&str> = last.values().map(|f| f.name.as_str()).collect();
    let provinces: Vec<&str> = last.values().map(|f| f.province.as_str()).collect();
    let levels: Vec<i32> = last.values().map(|f| f.level.code()).collect();
    execute(
        tx,
        &format!("apply: registering {} facilities", ids.len()),
        "INSERT INTO facilities (facility_id, name, province, level) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[]) \
         ON CONFLICT (facility_id) DO UPDATE SET \
           name = excluded.name, province = excluded.province, level = excluded.level",
        &[&ids, &names, &provinces, &levels],
    )
    .await?;
    Ok(())
}

/// Keys added by the registry. A second `KeyAdded` for a registered key id changes
/// nothing: re-adding must not undo a revocation or move a key to another facility,
/// and failing the batch instead would stop projection for good (the registry event is
/// in the log and would be replayed forever). It is logged for the operators.
async fn insert_keys(tx: &Transaction<'_>, keys: &[&KeyRecord]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut seen = HashSet::new();
    let mut firsts = Vec::with_capacity(keys.len());
    for k in keys {
        let key_id = k.key_id();
        if seen.insert(key_id.clone()) {
            firsts.push((key_id, *k));
        } else {
            tracing::warn!(key_id = %key_id, "registry re-added a registered key; kept the first");
        }
    }
    let key_ids: Vec<&str> = firsts.iter().map(|(id, _)| id.as_str()).collect();
    let public: Vec<&[u8]> = firsts
        .iter()
        .map(|(_, k)| k.public_key.as_bytes().as_slice())
        .collect();
    let owners: Vec<&str> = firsts
        .iter()
        .map(|(_, k)| crate::registry::owner_text(&k.owner))
        .collect();
    let valid_s: Vec<i64> = firsts.iter().map(|(_, k)| k.valid_from.seconds()).collect();
    let valid_ns: Vec<i32> = firsts.iter().map(|(_, k)| k.valid_from.nanos()).collect();
    let revoked: Vec<(Option<i64>, Option<i32>)> = firsts
        .iter()
        .map(|(_, k)| codec::opt_ts(k.revoked_at))
        .collect();
    let revoked_s: Vec<Option<i64>> = revoked.iter().map(|r| r.0).collect();
    let revoked_ns: Vec<Option<i32>> = revoked.iter().map(|r| r.1).collect();
    let registered_seq: Vec<i64> = firsts
        .iter()
        .map(|(_, k)| int(k.registered_seq, "registry seq"))
        .collect::<Result<_>>()?;
    let revoked_seq: Vec<Option<i64>> = firsts
        .iter()
        .map(|(_, k)| k.revoked_seq.map(|s| int(s, "registry seq")).transpose())
        .collect::<Result<_>>()?;
    let inserted: HashSet<String> = query(
        tx,
        &format!("apply: adding {} keys", key_ids.len()),
        "INSERT INTO keys (key_id, public_key, owner, valid_from_s, valid_from_ns, revoked_s, \
           revoked_ns, registered_seq, revoked_seq) \
         SELECT u.key_id, u.public_key, u.owner, u.valid_from_s, u.valid_from_ns, \
           u.revoked_s, u.revoked_ns, u.registered_seq, u.revoked_seq \
         FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bigint[], $5::integer[], \
           $6::bigint[], $7::integer[], $8::bigint[], $9::bigint[]) WITH ORDINALITY \
           AS u(key_id, public_key, owner, valid_from_s, valid_from_ns, revoked_s, \
             revoked_ns, registered_seq, revoked_seq, ord) \
         ORDER BY u.ord \
         ON CONFLICT (key_id) DO NOTHING \
         RETURNING key_id",
        &[
            &key_ids,
            &public,
            &owners,
            &valid_s,
            &valid_ns,
            &revoked_s,
            &revoked_ns,
            &registered_seq,
            &revoked_seq,
        ],
    )
    .await?
    .iter()
    .map(|row| Cols::new(row).text())
    .collect::<Result<_>>()?;
    for id in key_ids.iter().filter(|id| !inserted.contains(**id)) {
        tracing::warn!(key_id = %id, "registry re-added a registered key; kept the first");
    }
    Ok(())
}

/// Revokes keys. The first revocation stands (its time and registry seq must not move).
/// A revocation of a key the registry never added changes nothing and is logged, for the
/// same reason a re-added key is not an error.
async fn revoke_keys(tx: &Transaction<'_>, revocations: &[Revocation<'_>]) -> Result<()> {
    if revocations.is_empty() {
        return Ok(());
    }
    let mut seen = HashSet::new();
    let firsts: Vec<_> = revocations
        .iter()
        .filter(|(k, ..)| seen.insert(k.as_str()))
        .collect();
    let key_ids: Vec<&str> = firsts.iter().map(|(k, ..)| k.as_str()).collect();
    let revoked_s: Vec<i64> = firsts.iter().map(|(_, at, ..)| at.seconds()).collect();
    let revoked_ns: Vec<i32> = firsts.iter().map(|(_, at, ..)| at.nanos()).collect();
    let revoked_seq: Vec<i64> = firsts
        .iter()
        .map(|(_, _, seq, _)| int(*seq, "registry seq"))
        .collect::<Result<_>>()?;
    let reasons: Vec<&str> = firsts.iter().map(|(.., r)| *r).collect();
    let changed: HashSet<String> = query(
        tx,
        &format!("apply: revoking {} keys", key_ids.len()),
        "UPDATE keys k SET revoked_s = u.revoked_s, revoked_ns = u.revoked_ns, \
           revoked_seq = u.revoked_seq, revocation_reason = u.reason \
         FROM unnest($1::text[], $2::bigint[], $3::integer[], $4::bigint[], $5::text[]) \
           AS u(key_id, revoked_s, revoked_ns, revoked_seq, reason) \
         WHERE k.key_id = u.key_id AND k.revoked_s IS NULL \
         RETURNING k.key_id",
        &[&key_ids, &revoked_s, &revoked_ns, &revoked_seq, &reasons],
    )
    .await?
    .iter()
    .map(|row| Cols::new(row).text())
    .collect::<Result<_>>()?;
    for (key, ..) in revocations
        .iter()
        .filter(|(k, ..)| !changed.contains(k.as_str()))
    {
        tracing::warn!(key_id = %key, "registry revoked a key that is unknown or already revoked");
    }
    Ok(())
}

/// Records revoked certificates; a serial already revoked keeps its first row.
async fn revoke_certificates(tx: &Transaction<'_>, revoked: &[&RevokedCertificate]) -> Result<()> {
    if revoked.is_empty() {
        return Ok(());
    }
    let serials: Vec<&str> = revoked.iter().map(|c| c.serial.as_str()).collect();
    let principals: Vec<&str> = revoked.iter().map(|c| c.principal.as_str()).collect();
    let revoked_s: Vec<i64> = revoked.iter().map(|c| c.revoked_at.seconds()).collect();
    let revoked_ns: Vec<i32> = revoked.iter().map(|c| c.revoked_at.nanos()).collect();
    let reasons: Vec<&str> = revoked.iter().map(|c| c.reason.as_str()).collect();
    let seqs: Vec<i64> = revoked
        .iter()
        .map(|c| int(c.registry_seq, "registry seq"))
        .collect::<Result<_>>()?;
    execute(
        tx,
        "apply: revoking certificates",
        "INSERT INTO revoked_certificates \
           (serial, principal, revoked_s, revoked_ns, reason, registry_seq) \
         SELECT s, p, rs, rn, r, q FROM unnest($1::text[], $2::text[], $3::bigint[], $4::integer[], \
           $5::text[], $6::bigint[]) WITH ORDINALITY AS u(s, p, rs, rn, r, q, o) \
         ORDER BY o \
         ON CONFLICT (serial) DO NOTHING",
        &[&serials, &principals, &revoked_s, &revoked_ns, &reasons, &seqs],
    )
    .await?;
    Ok(())
}

/// Inserts rejection rows in order; `source` says whether a reset deletes them.
pub(crate) async fn insert_rejections<C: GenericClient>(
    c: &C,
    source: i16,
    rows: &[&RejectionRow],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let mut partition = Vec::with_capacity(n);
    let mut offset = Vec::with_capacity(n);
    let mut facility_id = Vec::with_capacity(n);
    let mut event_id = Vec::with_capacity(n);
    let mut seq = Vec::with_capacity(n);
    let mut event_hash = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut field = Vec::with_capacity(n);
    let mut message = Vec::with_capacity(n);
    let mut at_s = Vec::with_capacity(n);
    let mut at_ns = Vec::with_capacity(n);
    for r in rows {
        match r.position {
            Some(p) => {
                partition.push(Some(i64::from(p.partition)));
                offset.push(Some(int(p.offset, "offset")?));
            }
            None => {
                partition.push(None);
                offset.push(None);
            }
        }
        facility_id.push(r.facility_id.as_ref().map(|f| f.as_str()));
        event_id.push(codec::opt_id(r.event_id.as_ref()));
        seq.push(r.seq.map(|s| int(s, "seq")).transpose()?);
        event_hash.push(r.event_hash.as_ref().map(|h| h.as_bytes().as_slice()));
        reason.push(r.reason.code());
        field.push(r.field);
        message.push(r.message.as_str());
        let (s, ns) = codec::ts(r.at);
        at_s.push(s);
        at_ns.push(ns);
    }
    execute(
        c,
        &format!("inserting {n} rejections"),
        "INSERT INTO rejections (source, log_partition, log_offset, facility_id, event_id, \
           seq, event_hash, reason, field, message, at_s, at_ns) \
         SELECT $1::smallint, u.log_partition, u.log_offset, u.facility_id, u.event_id, \
           u.seq, u.event_hash, u.reason, u.field, u.message, u.at_s, u.at_ns \
         FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bytea[], $6::bigint[], \
           $7::bytea[], $8::integer[], $9::text[], $10::text[], $11::bigint[], \
           $12::integer[]) WITH ORDINALITY \
           AS u(log_partition, log_offset, facility_id, event_id, seq, event_hash, reason, \
             field, message, at_s, at_ns, ord) \
         ORDER BY u.ord",
        &[
            &source,
            &partition,
            &offset,
            &facility_id,
            &event_id,
            &seq,
            &event_hash,
            &reason,
            &field,
            &message,
            &at_s,
            &at_ns,
        ],
    )
    .await?;
    Ok(())
}

/// Inserts the chain links. A link at a taken (chain, seq) or (chain, event_id) is a
/// conflict; `ON CONFLICT DO NOTHING` plus a count finds which one without aborting the
/// statement, so the error can name it.
async fn insert_links(tx: &Transaction<'_>, links: &[ChainLink]) -> Result<()> {
    if links.is_empty() {
        return Ok(());
    }
    let n = links.len();
    let chains: Vec<String> = links
        .iter()
        .map(|l| l.chain.as_key().into_owned())
        .collect();
    let seqs: Vec<i64> = links
        .iter()
        .map(|l| int(l.seq, "seq"))
        .collect::<Result<_>>()?;
    let ids: Vec<Vec<u8>> = links.iter().map(|l| codec::id(&l.event_id)).collect();
    let hashes: Vec<&[u8]> = links
        .iter()
        .map(|l| l.event_hash.as_bytes().as_slice())
        .collect();
    let partitions: Vec<i64> = links
        .iter()
        .map(|l| i64::from(l.position.partition))
        .collect();
    let offsets: Vec<i64> = links
        .iter()
        .map(|l| int(l.position.offset, "offset"))
        .collect::<Result<_>>()?;
    let (recorded_s, recorded_ns): (Vec<Option<i64>>, Vec<Option<i32>>) =
        links.iter().map(|l| codec::opt_ts(l.recorded_at)).unzip();
    let rows = query(
        tx,
        &format!("apply: inserting {n} chain links"),
        "INSERT INTO chain_links (chain, seq, event_id, event_hash, log_partition, log_offset, \
           recorded_s, recorded_ns) \
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::bytea[], \
           $5::bigint[], $6::bigint[], $7::bigint[], $8::integer[]) \
         ON CONFLICT DO NOTHING \
         RETURNING chain, seq, event_id",
        &[
            &chains,
            &seqs,
            &ids,
            &hashes,
            &partitions,
            &offsets,
            &recorded_s,
            &recorded_ns,
        ],
    )
    .await?;
    if rows.len() == n {
        return Ok(());
    }
    let mut inserted: HashMap<(String, i64, Vec<u8>), usize> = HashMap::new();
    for row in &rows {
        let mut c = Cols::new(row);
        let key = (
            c.text()?,
            i64::try_from(c.u64()?).unwrap_or(i64::MAX),
            c.blob()?,
        );
        *inserted.entry(key).or_default() += 1;
    }
    for (i, l) in links.iter().enumerate() {
        let key = (chains[i].clone(), seqs[i], ids[i].clone());
        match inserted.get_mut(&key) {
            Some(k) if *k > 0 => *k -= 1,
            _ => {
                return Err(PgError::Conflict(format!(
                    "chain {} already has a projected event at seq {} or with id {}",
                    l.chain, l.seq, l.event_id
                )));
            }
        }
    }
    Err(PgError::Conflict(format!(
        "{} of {n} chain links were already projected",
        n - rows.len()
    )))
}

/// Adds deltas to the facilities' counters (`source` as for rejections); `last_seen`
/// keeps the latest time either side has seen. Deltas for one facility are summed
/// first (one upsert cannot change a row twice), facilities in sorted order.
pub(crate) async fn add_stats<C: GenericClient>(
    c: &C,
    source: i16,
    deltas: &[StatsDelta],
) -> Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut per_facility: BTreeMap<&str, (u64, u64, Timestamp)> = BTreeMap::new();
    let mut rejected: BTreeMap<(&str, i32), u64> = BTreeMap::new();
    for d in deltas {
        let f = d.facility_id.as_str();
        let e = per_facility.entry(f).or_insert((0, 0, d.last_seen));
        e.0 = e.0.saturating_add(d.accepted);
        e.1 = e.1.saturating_add(d.duplicates);
        e.2 = e.2.max(d.last_seen);
        for (reason, n) in &d.rejected {
            let r = rejected.entry((f, reason.code())).or_default();
            *r = r.saturating_add(*n);
        }
    }
    let facilities: Vec<&str> = per_facility.keys().copied().collect();
    let mut accepted = Vec::with_capacity(facilities.len());
    let mut duplicates = Vec::with_capacity(facilities.len());
    let mut seen_s = Vec::with_capacity(facilities.len());
    let mut seen_ns = Vec::with_capacity(facilities.len());
    for (a, d, seen) in per_facility.values() {
        accepted.push(int(*a, "accepted count")?);
        duplicates.push(int(*d, "duplicate count")?);
        let (s, ns) = codec::ts(*seen);
        seen_s.push(s);
        seen_ns.push(ns);
    }
    execute(
        c,
        &format!("adding stats of {} facilities", facilities.len()),
        "INSERT INTO stats (source, facility_id, accepted, duplicates, last_seen_s, \
           last_seen_ns) \
         SELECT $1::smallint, u.* FROM unnest($2::text[], $3::bigint[], $4::bigint[], \
           $5::bigint[], $6::integer[]) \
           AS u(facility_id, accepted, duplicates, last_seen_s, last_seen_ns) \
         ON CONFLICT (source, facility_id) DO UPDATE SET \
           accepted = stats.accepted + excluded.accepted, \
           duplicates = stats.duplicates + excluded.duplicates, \
           last_seen_s = CASE WHEN (excluded.last_seen_s, excluded.last_seen_ns) \
             > (stats.last_seen_s, stats.last_seen_ns) \
             THEN excluded.last_seen_s ELSE stats.last_seen_s END, \
           last_seen_ns = CASE WHEN (excluded.last_seen_s, excluded.last_seen_ns) \
             > (stats.last_seen_s, stats.last_seen_ns) \
             THEN excluded.last_seen_ns ELSE stats.last_seen_ns END",
        &[
            &source,
            &facilities,
            &accepted,
            &duplicates,
            &seen_s,
            &seen_ns,
        ],
    )
    .await?;
    if rejected.is_empty() {
        return Ok(());
    }
    let r_facilities: Vec<&str> = rejected.keys().map(|(f, _)| *f).collect();
    let r_reasons: Vec<i32> = rejected.keys().map(|(_, r)| *r).collect();
    let r_counts: Vec<i64> = rejected
        .values()
        .map(|n| int(*n, "rejected count"))
        .collect::<Result<_>>()?;
    execute(
        c,
        &format!("adding {} rejection counts", r_counts.len()),
        "INSERT INTO stats_rejected (source, facility_id, reason, n) \
         SELECT $1::smallint, u.* FROM unnest($2::text[], $3::integer[], $4::bigint[]) \
           AS u(facility_id, reason, n) \
         ON CONFLICT (source, facility_id, reason) DO UPDATE SET \
           n = stats_rejected.n + excluded.n",
        &[&source, &r_facilities, &r_reasons, &r_counts],
    )
    .await?;
    Ok(())
}

/// Refuses the batch when a partition's stored offset is not where the batch started
/// (another projector replica applied it first). The row lock taken here is held until
/// commit, so two replicas applying the same partition serialise and the second one
/// sees the first one's offset.
async fn check_offsets(tx: &Transaction<'_>, expected: &[(u32, u64)]) -> Result<()> {
    for (partition, start) in expected {
        let p = i64::from(*partition);
        // Lock the row (creating it at 0 if absent) so concurrent appliers queue here.
        execute(
            tx,
            "apply: claiming the partition offset",
            "INSERT INTO projector_offsets (log_partition, next_offset) VALUES ($1, 0) \
             ON CONFLICT (log_partition) DO NOTHING",
            &[&p],
        )
        .await?;
        let rows = query(
            tx,
            "apply: reading the partition offset",
            "SELECT next_offset FROM projector_offsets WHERE log_partition = $1 FOR UPDATE",
            &[&p],
        )
        .await?;
        let stored: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
        if stored != int(*start, "offset")? {
            return Err(PgError::Conflict(format!(
                "partition {partition} was projected to offset {stored}, not {start}: another projector got there first"
            )));
        }
    }
    Ok(())
}

/// Where the projector resumes; within a batch the last offset of a partition wins.
async fn save_offsets(tx: &Transaction<'_>, offsets: &[(u32, u64)]) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for (p, o) in offsets {
        last.insert(*p, *o);
    }
    let partitions: Vec<i64> = last.keys().map(|p| i64::from(*p)).collect();
    let next: Vec<i64> = last
        .values()
        .map(|o| int(*o, "offset"))
        .collect::<Result<_>>()?;
    execute(
        tx,
        &format!("apply: saving offsets of {} partitions", partitions.len()),
        "INSERT INTO projector_offsets (log_partition, next_offset) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[]) \
         ON CONFLICT (log_partition) DO UPDATE SET next_offset = excluded.next_offset",
        &[&partitions, &next],
    )
    .await?;
    Ok(())
}

/// Deletes every projection; keeps the audit log and what hangs off it (the exchange
/// matrix, break-glass read counts), and ingest's rejections and counters, which are
/// not in the log and so could not be rebuilt. TRUNCATE rather than DELETE: instant on
/// a large store, at the price of readers waiting for the reset to commit.
async fn reset(tx: &Transaction<'_>, instance: &str) -> Result<()> {
    let what = "resetting projections";
    tx.batch_execute(
        "TRUNCATE records, record_envelopes, patient_counters, consent_events, break_glass, \
           facilities, keys, revoked_certificates, chain_links, projector_offsets",
    )
    .await
    .map_err(|e| db(what, &e))?;
    for table in ["stats", "stats_rejected", "rejections"] {
        execute(
            tx,
            what,
            &format!("DELETE FROM {table} WHERE source = $1"),
            &[&SOURCE_PROJECTOR],
        )
        .await?;
    }
    notify(tx, instance, &BucketSet::all()).await
}

/// Where the projector resumes, per partition.
pub(crate) async fn offsets<C: GenericClient>(c: &C) -> Result<Vec<(u32, u64)>> {
    let rows = query(
        c,
        "reading projector offsets",
        "SELECT log_partition, next_offset FROM projector_offsets ORDER BY log_partition",
        &[],
    )
    .await?;
    codec::collect(&rows, |c| Ok((c.u32()?, c.u64()?)))
}

/// The projected chain around each of `links` (events of `chain`), in order, in one
/// statement (one snapshot, one round trip for a whole batch): the head (with its
/// recorded_at), the event with this id, the event at this seq.
async fn chain_contexts<C: GenericClient>(
    c: &C,
    chain: &ChainKey,
    links: &[(EventId, u64)],
) -> Result<Vec<ChainContext>> {
    if links.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Vec<u8>> = links.iter().map(|(id, _)| codec::id(id)).collect();
    // A seq past i64::MAX cannot be stored, so nothing can be at it: NULL matches none.
    let seqs: Vec<Option<i64>> = links.iter().map(|(_, s)| i64::try_from(*s).ok()).collect();
    let rows = query(
        c,
        "reading a projected chain",
        "WITH q AS (SELECT * FROM unnest($2::bytea[], $3::int8[]) \
                      WITH ORDINALITY AS q(event_id, seq, i)) \
         (SELECT 1 AS which, 0::int8 AS i, seq, event_id, event_hash, recorded_s, \
             recorded_ns FROM chain_links WHERE chain = $1 ORDER BY seq DESC LIMIT 1) \
         UNION ALL \
         SELECT 2, q.i, l.seq, l.event_id, l.event_hash, NULL, NULL \
           FROM q JOIN chain_links l ON l.chain = $1 AND l.event_id = q.event_id \
         UNION ALL \
         SELECT 3, q.i, l.seq, l.event_id, l.event_hash, NULL, NULL \
           FROM q JOIN chain_links l ON l.chain = $1 AND l.seq = q.seq",
        &[&chain.as_key(), &ids, &seqs],
    )
    .await?;
    let mut head = ChainHead::EMPTY;
    let mut found = vec![(None, None); links.len()];
    for row in &rows {
        let mut c = Cols::new(row);
        let which = c.code(Some)?;
        let ordinal = c.u64()?;
        let prior = Prior {
            seq: c.u64()?,
            event_id: c.event_id()?,
            event_hash: c.sha256()?,
        };
        if which == 1 {
            head = ChainHead {
                seq: prior.seq,
                event_hash: prior.event_hash,
                event_id: Some(prior.event_id),
                recorded_at: c.opt_ts()?,
            };
            continue;
        }
        // WITH ORDINALITY counts from 1.
        let slot = usize::try_from(ordinal)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| found.get_mut(i))
            .ok_or_else(|| PgError::Corrupt("chain lookup: ordinal out of range".into()))?;
        match which {
            2 => slot.0 = Some(prior),
            _ => slot.1 = Some(prior),
        }
    }
    Ok(found
        .into_iter()
        .map(|(same_event_id, same_seq)| ChainContext {
            head,
            same_event_id,
            same_seq,
        })
        .collect())
}

/// Those of `ids` that a record, consent event or break-glass declaration already uses,
/// in one statement.
async fn event_ids_taken<C: GenericClient>(c: &C, ids: &[EventId]) -> Result<HashSet<EventId>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let bytes: Vec<Vec<u8>> = ids.iter().map(codec::id).collect();
    let rows = query(
        c,
        "checking event ids",
        // Three index lookups by `= ANY`: the correlated form (unnest … WHERE EXISTS …
        // OR EXISTS …) let the planner hash a whole table per call ("hashed SubPlan"),
        // which made the projector 3× slower on a grown `records`.
        "SELECT event_id FROM records WHERE event_id = ANY ($1) \
         UNION SELECT event_id FROM consent_events WHERE event_id = ANY ($1) \
         UNION SELECT event_id FROM break_glass WHERE event_id = ANY ($1)",
        &[&bytes],
    )
    .await?;
    rows.iter().map(|r| Cols::new(r).event_id()).collect()
}

impl PgStore {
    /// Advances this process's change counter, after a commit (other processes advance
    /// theirs when the commit's notification reaches them).
    /// `touched`: the buckets of the patients the commit changed, bumped first.
    fn bump(&self, touched: &BucketSet) {
        self.inner.patient_changes.bump(touched);
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[async_trait]
impl ProjectionStore for PgStore {
    async fn projector_snapshot(&self) -> PortResult<ProjectorSnapshot> {
        let what = "reading the projector snapshot";
        let mut client = self.client(what).await?;
        // One snapshot for the offsets and the keys.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| db(what, &e))?;
        let snapshot = ProjectorSnapshot {
            offsets: offsets(&tx).await?,
            keys: all_keys(&tx).await?.into_iter().map(|k| k.key).collect(),
        };
        tx.commit().await.map_err(|e| db(what, &e))?;
        Ok(snapshot)
    }

    async fn chain_context(
        &self,
        chain: &ChainKey,
        event_id: EventId,
        seq: u64,
    ) -> PortResult<ChainContext> {
        let mut contexts = self.chain_contexts(chain, &[(event_id, seq)]).await?;
        contexts
            .pop()
            .ok_or_else(|| PgError::Corrupt("chain lookup: no context".into()).into())
    }

    async fn chain_contexts(
        &self,
        chain: &ChainKey,
        links: &[(EventId, u64)],
    ) -> PortResult<Vec<ChainContext>> {
        let client = self.client("reading a projected chain").await?;
        Ok(chain_contexts(&client, chain, links).await?)
    }

    async fn consent_event(&self, event_id: EventId) -> PortResult<Option<ConsentEventRow>> {
        let client = self.client("reading a consent event").await?;
        Ok(consent_event_by_id(&client, &event_id).await?)
    }

    async fn event_id_taken(&self, event_id: EventId) -> PortResult<bool> {
        Ok(self.event_ids_taken(&[event_id]).await?.contains(&event_id))
    }

    async fn event_ids_taken(&self, ids: &[EventId]) -> PortResult<HashSet<EventId>> {
        let client = self.client("checking event ids").await?;
        Ok(event_ids_taken(&client, ids).await?)
    }

    async fn apply(&self, batch: ProjectionBatch) -> PortResult<()> {
        let what = format!(
            "apply: batch of {} projections, {} links",
            batch.projections.len(),
            batch.links.len()
        );
        let mut client = self.client(&what).await?;
        let tx = client.transaction().await.map_err(|e| db(&what, &e))?;
        // On an error the transaction is dropped, which rolls it back before the
        // connection serves anyone else.
        apply(&tx, &batch, &self.inner.instance).await?;
        tx.commit().await.map_err(|e| db(&what, &e))?;
        self.bump(&changed::touched(&batch));
        Ok(())
    }

    async fn reset_projections(&self) -> PortResult<()> {
        let what = "resetting projections";
        tracing::warn!("postgres store: deleting every projection for a replay of the log");
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db(what, &e))?;
        reset(&tx, &self.inner.instance).await?;
        tx.commit().await.map_err(|e| db(what, &e))?;
        self.bump(&BucketSet::all());
        Ok(())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn patient_changes(&self) -> Arc<PatientChanges> {
        self.inner.patient_changes.clone()
    }
}
