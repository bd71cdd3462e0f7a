//! A deterministic synthetic population and the load it generates.
//!
//! [`Population::new`] draws, from a seed alone, facilities of the three technical levels
//! (5-digit ids), patients (12-digit personal ids), a few chronic patients with long
//! histories (≥ 1,000 records by default), and the plan of every record: which facility
//! writes it, about whom, of which kind, when. [`Population::presign`] turns the plan
//! into each facility's hash chain of signed DSSE envelopes (FHIR R4 bodies of 0.5–4 KB,
//! see [`crate::fhir`]) with the facilities' [`SigningKey`]s, in parallel, so that
//! signing is off any measured path; [`submit_streams`] submits them through
//! [`FacilityClient::submit`] in batches, as fast as possible or at a target rate, one
//! task per facility (a chain is submitted in order).
//!
//! The same seed gives the same facilities, patients, event ids and bodies; with keys
//! made when a facility is registered and `recorded_at` the signing time (what
//! `hrx bench` does), only the signatures differ between runs. A *reproducible* run
//! (what `hrx loadgen` does) also takes each facility's key from the seed
//! ([`Population::facility_key`]) and signs every event at one time (by default
//! [`Population::signed_at`], the start of the day), so that the same seed gives
//! byte-identical envelopes, and events signed on the fly
//! ([`Population::chain`]) are the very ones pre-signed to files: a run is idempotent
//! whichever way it signs. [`submit_sources`] submits such chains from any source, with
//! a concurrency limit and a global rate, and reports latencies and rejection reasons.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrx_domain::dsse::PayloadType;
use hrx_domain::event::FHIR_JSON;
use hrx_domain::{
    Envelope, EventId, FacilityId, FacilityLevel, PatientId, Purpose, RecordKind, Sha256,
    SigningKey, Timestamp,
};
use hrx_node::client::{ClientError, FacilityClient};
use hrx_proto::{codec, v1};
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message as _;

use crate::fhir;
use crate::rng::Rng;
use crate::stats::Samples;

/// Why load could not be generated or submitted.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("no signing key for facility {0}")]
    NoSigner(FacilityId),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("a submission task failed: {0}")]
    Task(String),
    /// An envelope source (e.g. a chain file) failed part-way.
    #[error("cannot read the envelopes to submit")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The run stopped part-way (the node stayed unavailable past the retries, or a
    /// call failed for good); `report` is what the node had answered until then.
    #[error("stopped after {} of the events were answered: {cause}", report.tally.submitted)]
    Interrupted {
        report: Box<SubmitReport>,
        cause: Box<LoadgenError>,
    },
}

/// Provinces the synthetic facilities and patients are in: (code, name).
const PROVINCES: &[(&str, &str)] = &[
    ("01", "Hà Nội"),
    ("79", "TP. Hồ Chí Minh"),
    ("26", "Phú Thọ"),
    ("31", "Hải Phòng"),
    ("48", "Đà Nẵng"),
    ("92", "Cần Thơ"),
    ("38", "Thanh Hóa"),
    ("40", "Nghệ An"),
];

const PLACES: &[&str] = &[
    "Vĩnh Tường",
    "Yên Lạc",
    "Tam Dương",
    "Đông Anh",
    "Thủ Đức",
    "Ninh Kiều",
    "Sầm Sơn",
    "Cửa Lò",
    "Hải An",
    "Sơn Trà",
];

/// The first day of generated clinical history, and its length.
const HISTORY_START: i64 = 1_451_606_400; // 2016-01-01T00:00:00Z
const HISTORY_SECONDS: i64 = 10 * 365 * 24 * 3600;

/// A synthetic facility.
#[derive(Clone, Debug)]
pub struct Facility {
    pub id: FacilityId,
    pub name: String,
    pub province: String,
    pub level: FacilityLevel,
}

/// A synthetic patient.
#[derive(Clone, Debug)]
pub struct Patient {
    pub id: PatientId,
    /// Index of the facility that writes most of the patient's records.
    pub home: usize,
    /// A chronic patient has a long history (`PopulationSpec::chronic_records`).
    pub chronic: bool,
}

/// One record the population will write.
#[derive(Clone, Debug)]
pub struct PlannedRecord {
    /// Index into [`Population::facilities`].
    pub facility: usize,
    /// Index into [`Population::patients`].
    pub patient: usize,
    pub kind: RecordKind,
    pub occurred_at: Timestamp,
    pub event_id: EventId,
    /// Seeds the record's body.
    body_seed: u64,
}

/// How big a population is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PopulationSpec {
    pub seed: u64,
    pub facilities: usize,
    pub patients: usize,
    /// How many of the patients are chronic (the first ones).
    pub chronic_patients: usize,
    /// Records of each chronic patient.
    pub chronic_records: usize,
    /// Mean records of every other patient (drawn uniformly in 1..2×mean).
    pub records_per_patient: usize,
}

/// A deterministic synthetic population and its record plan.
#[derive(Clone, Debug)]
pub struct Population {
    spec: PopulationSpec,
    facilities: Vec<Facility>,
    patients: Vec<Patient>,
    /// Per facility (same index as `facilities`), its records in chain order.
    plan: Vec<Vec<PlannedRecord>>,
}

fn event_id(rng: &mut Rng, at: Timestamp) -> EventId {
    // UUIDv7 layout: 48-bit milliseconds, version 7, variant 10, random bits.
    let mut b = [0u8; 16];
    let ms = at.unix_millis().max(0) as u64;
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    let r1 = rng.next_u64().to_be_bytes();
    let r2 = rng.next_u64().to_be_bytes();
    b[6..8].copy_from_slice(&r1[..2]);
    b[8..16].copy_from_slice(&r2);
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    EventId::from_bytes(b)
}

/// Sub-streams of the seed that draw facilities' signing-key seeds, away from the
/// population's (0), the spare patients' (1,000,000 + n) and spare facilities' (2,000,000 + n).
const KEY_STREAM: u64 = 3_000_000;

fn timestamp(seconds: i64) -> Timestamp {
    Timestamp::from_unix_seconds(seconds).expect("generated times are in range")
}

impl Population {
    /// `facilities` facilities and `patients` patients from `seed`, with one chronic
    /// patient per 200 (at least one) of 1,000 records each, and 8 records per other
    /// patient on average.
    pub fn new(seed: u64, facilities: usize, patients: usize) -> Self {
        Self::from_spec(PopulationSpec {
            seed,
            facilities,
            patients,
            chronic_patients: (patients / 200).max(1),
            chronic_records: 1000,
            records_per_patient: 8,
        })
    }

    pub fn from_spec(spec: PopulationSpec) -> Self {
        let mut rng = Rng::derive(spec.seed, 0);
        let n_fac = spec.facilities.max(1);
        let mut ids = std::collections::BTreeSet::new();
        let facilities: Vec<Facility> = (0..n_fac)
            .map(|i| {
                let (code, province) = *rng.pick(PROVINCES);
                // A spread of levels: roughly a third each, the first one a clinic.
                let level = match i % 3 {
                    0 => FacilityLevel::Initial,
                    1 => FacilityLevel::Basic,
                    _ => FacilityLevel::Specialized,
                };
                let id = loop {
                    let id = format!("{code}{:03}", rng.below(1000));
                    if ids.insert(id.clone()) {
                        break id;
                    }
                };
                let place = *rng.pick(PLACES);
                let name = match level {
                    FacilityLevel::Initial => format!("Phòng khám đa khoa {place}"),
                    FacilityLevel::Basic => format!("Trung tâm Y tế khu vực {place}"),
                    FacilityLevel::Specialized => format!("Bệnh viện Đa khoa tỉnh {province}"),
                };
                Facility {
                    id: FacilityId::parse(&id).expect("5 digits"),
                    name,
                    province: province.to_owned(),
                    level,
                }
            })
            .collect();

        let mut pids = std::collections::BTreeSet::new();
        let patients: Vec<Patient> = (0..spec.patients.max(1))
            .map(|i| {
                let (code, _) = *rng.pick(PROVINCES);
                let year = rng.range(1940, 2024);
                let century_sex = if year < 2000 { 0 } else { 2 } + rng.below(2);
                let id = loop {
                    let id = format!(
                        "0{code}{century_sex}{:02}{:06}",
                        year % 100,
                        rng.below(1_000_000)
                    );
                    if pids.insert(id.clone()) {
                        break id;
                    }
                };
                Patient {
                    id: PatientId::parse(&id).expect("12 digits"),
                    home: rng.below(n_fac as u64) as usize,
                    chronic: i < spec.chronic_patients,
                }
            })
            .collect();

        // The plan: every patient's records, shuffled so that facilities' streams
        // interleave patients, then grouped per facility.
        let kind_weights: Vec<u32> = fhir::KINDS.iter().map(|(_, w)| *w).collect();
        let mut all = Vec::new();
        for (p, patient) in patients.iter().enumerate() {
            let count = if patient.chronic {
                spec.chronic_records
            } else {
                rng.range(1, (2 * spec.records_per_patient).max(2) as u64 - 1) as usize
            };
            let others = [
                rng.below(n_fac as u64) as usize,
                rng.below(n_fac as u64) as usize,
            ];
            for _ in 0..count {
                let facility = if rng.chance(if patient.chronic { 0.7 } else { 0.8 }) {
                    patient.home
                } else {
                    *rng.pick(&others)
                };
                let kind = fhir::KINDS[rng.weighted(&kind_weights)].0;
                let occurred_at =
                    timestamp(HISTORY_START + rng.below(HISTORY_SECONDS as u64) as i64);
                all.push(PlannedRecord {
                    facility,
                    patient: p,
                    kind,
                    occurred_at,
                    event_id: event_id(&mut rng, occurred_at),
                    body_seed: rng.next_u64(),
                });
            }
        }
        rng.shuffle(&mut all);
        let mut plan = vec![Vec::new(); n_fac];
        for r in all {
            plan[r.facility].push(r);
        }
        Self {
            spec,
            facilities,
            patients,
            plan,
        }
    }

    pub fn spec(&self) -> &PopulationSpec {
        &self.spec
    }

    pub fn facilities(&self) -> &[Facility] {
        &self.facilities
    }

    pub fn patients(&self) -> &[Patient] {
        &self.patients
    }

    /// The chronic patients (long histories).
    pub fn chronic(&self) -> impl Iterator<Item = &Patient> {
        self.patients.iter().filter(|p| p.chronic)
    }

    /// Every planned record of facility `index`, in chain order.
    pub fn plan(&self, index: usize) -> &[PlannedRecord] {
        &self.plan[index]
    }

    /// Records planned in all.
    pub fn total_records(&self) -> usize {
        self.plan.iter().map(Vec::len).sum()
    }

    /// Records planned about patient `index`.
    pub fn records_of(&self, index: usize) -> usize {
        self.plan
            .iter()
            .flatten()
            .filter(|r| r.patient == index)
            .count()
    }

    /// A patient id of the population's provinces that none of its patients has (for
    /// a benchmark's own probe or follow patients), the `n`-th such id.
    pub fn spare_patient(&self, n: u64) -> PatientId {
        let mut rng = Rng::derive(self.spec.seed, 1_000_000 + n);
        loop {
            let id = format!("0{}1{:08}", rng.pick(PROVINCES).0, rng.below(100_000_000));
            if !self.patients.iter().any(|p| p.id.as_str() == id) {
                return PatientId::parse(&id).expect("12 digits");
            }
        }
    }

    /// A facility id that none of the population's facilities has, the `n`-th such id.
    pub fn spare_facility(&self, n: u64) -> FacilityId {
        let mut rng = Rng::derive(self.spec.seed, 2_000_000 + n);
        loop {
            let id = format!("{:05}", 90_000 + rng.below(10_000));
            if !self.facilities.iter().any(|f| f.id.as_str() == id) {
                return FacilityId::parse(&id).expect("5 digits");
            }
        }
    }

    /// The 32-byte private seed of facility `index`'s reproducible signing key, drawn
    /// from the population's seed. Anyone who knows the seed can sign as the synthetic
    /// facilities: these keys are for load generation, never for a real facility.
    pub fn facility_key_seed(&self, index: usize) -> [u8; 32] {
        let mut rng = Rng::derive(self.spec.seed, KEY_STREAM + index as u64);
        let mut seed = [0u8; 32];
        for chunk in seed.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        seed
    }

    /// Facility `index`'s reproducible signing key (see [`Self::facility_key_seed`]).
    pub fn facility_key(&self, index: usize) -> SigningKey {
        SigningKey::from_seed(&self.facility_key_seed(index))
            .expect("ring accepts every 32-byte Ed25519 seed")
    }

    /// The signing time (`recorded_at`) of every event of a reproducible run made at
    /// `now`: the start of `now`'s UTC day. Fixed for the day, so that the same seed
    /// signs the same bytes all day; recent, because the exchange refuses a
    /// `recorded_at` more than its clock bound (7 days by default) before it receives
    /// the event; never before the end of the generated history, so after every record's
    /// clinical time. Keys are registered valid from it.
    pub fn signed_at(now: Timestamp) -> Timestamp {
        let day = now.seconds() - now.seconds().rem_euclid(86_400);
        timestamp(day.max(HISTORY_START + HISTORY_SECONDS))
    }

    /// Facility `index`'s chain, signed lazily (one envelope per `next`) with `signer`
    /// at `recorded_at`: what a run that signs on the fly submits.
    pub fn chain(
        self: &Arc<Self>,
        index: usize,
        signer: ChainSigner,
        recorded_at: Timestamp,
    ) -> ChainSigning {
        ChainSigning {
            population: Arc::clone(self),
            index,
            next: 0,
            signer,
            recorded_at,
        }
    }

    /// The record body of a planned record, as signed.
    pub fn record_body(&self, r: &PlannedRecord) -> v1::facility_event::Body {
        let mut rng = Rng::new(r.body_seed);
        let patient = self.patients[r.patient].id.as_str();
        let facility = &self.facilities[r.facility];
        let body = fhir::body(&mut rng, r.kind, patient, &facility.name, r.occurred_at);
        record_body(patient, r.kind, r.occurred_at, &author(&mut rng), body)
    }

    /// Signs every facility's planned records as the next events of its chain, with
    /// `signers` (one per facility, advanced past the signed events), `recorded_at`
    /// as the signing time, on `threads` threads. Returns each facility's envelopes in
    /// chain order.
    pub fn presign(
        &self,
        signers: &mut BTreeMap<FacilityId, ChainSigner>,
        recorded_at: Timestamp,
        threads: usize,
    ) -> Result<Vec<(FacilityId, Vec<Envelope>)>, LoadgenError> {
        let mut work: Vec<(usize, &mut ChainSigner)> = Vec::new();
        let mut by_id: BTreeMap<&FacilityId, &mut ChainSigner> = signers.iter_mut().collect();
        for (i, f) in self.facilities.iter().enumerate() {
            let signer = by_id
                .remove(&f.id)
                .ok_or_else(|| LoadgenError::NoSigner(f.id.clone()))?;
            work.push((i, signer));
        }
        // Largest streams first, dealt round-robin, so threads get similar work.
        work.sort_by_key(|(i, _)| std::cmp::Reverse(self.plan[*i].len()));
        let threads = threads.clamp(1, work.len().max(1));
        let mut buckets: Vec<Vec<(usize, &mut ChainSigner)>> =
            (0..threads).map(|_| Vec::new()).collect();
        for (n, w) in work.into_iter().enumerate() {
            buckets[n % threads].push(w);
        }
        let mut out: Vec<(usize, FacilityId, Vec<Envelope>)> = std::thread::scope(|s| {
            let handles: Vec<_> = buckets
                .into_iter()
                .map(|bucket| {
                    s.spawn(move || {
                        bucket
                            .into_iter()
                            .map(|(i, signer)| {
                                let envs = self.plan[i]
                                    .iter()
                                    .map(|r| {
                                        signer.sign(r.event_id, self.record_body(r), recorded_at)
                                    })
                                    .collect();
                                (i, self.facilities[i].id.clone(), envs)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a signing thread panicked"))
                .collect()
        });
        out.sort_by_key(|(i, _, _)| *i);
        Ok(out.into_iter().map(|(_, f, e)| (f, e)).collect())
    }
}

fn author(rng: &mut Rng) -> String {
    // Practising certificate numbers (chứng chỉ hành nghề).
    format!("CCHN-{:06}", rng.below(1_000_000))
}

/// A record event body carrying a FHIR JSON resource.
pub fn record_body(
    patient: &str,
    kind: RecordKind,
    occurred_at: Timestamp,
    author: &str,
    fhir_json: Vec<u8>,
) -> v1::facility_event::Body {
    v1::facility_event::Body::Record(v1::Record {
        patient_id: patient.to_owned(),
        kind: kind.code(),
        occurred_at: Some(codec::timestamp(occurred_at)),
        author: author.to_owned(),
        sensitivity: vec![],
        supersedes: String::new(),
        content_type: FHIR_JSON.into(),
        body: fhir_json,
    })
}

/// A small synthetic record about `patient` (probes and fan-out records).
pub fn probe_record(
    rng: &mut Rng,
    patient: &PatientId,
    occurred_at: Timestamp,
) -> v1::facility_event::Body {
    let kind = RecordKind::Observation;
    let body = fhir::body(rng, kind, patient.as_str(), "Phòng khám", occurred_at);
    record_body(patient.as_str(), kind, occurred_at, &author(rng), body)
}

/// A facility-attested consent grant for `patient` to facility `grantee` for
/// `purposes`, until `expires` (the attesting facility needs standing for the patient).
pub fn grant_body(
    patient: &PatientId,
    grantee: &FacilityId,
    purposes: &[Purpose],
    expires: Timestamp,
) -> v1::facility_event::Body {
    v1::facility_event::Body::ConsentGrant(v1::ConsentGrant {
        patient_id: patient.as_str().to_owned(),
        purposes: purposes.iter().map(|p| p.code()).collect(),
        kinds: vec![],
        include_sensitive: vec![],
        data_from: None,
        data_until: None,
        expires_at: Some(codec::timestamp(expires)),
        evidence: Some(v1::ConsentEvidence {
            form_id: "PCT-BENCH-000001".into(),
            sha256: Sha256::digest(b"signed consent form").as_bytes().to_vec(),
        }),
        request_event_id: String::new(),
        grantee: Some(v1::consent_grant::Grantee::GranteeFacilityId(
            grantee.as_str().to_owned(),
        )),
    })
}

/// A facility's chain, signing offline: keeps (seq, prev hash) and signs each body as
/// the next event, exactly as [`FacilityClient::sign`] does.
pub struct ChainSigner {
    facility: FacilityId,
    key: SigningKey,
    seq: u64,
    prev: Sha256,
}

impl std::fmt::Debug for ChainSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainSigner")
            .field("facility", &self.facility)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl ChainSigner {
    /// A signer for a chain with no events yet.
    pub fn new(facility: FacilityId, key: SigningKey) -> Self {
        Self::with_head(facility, key, 0, Sha256::ZERO)
    }

    /// A signer continuing after the event `seq` whose hash is `prev`.
    pub fn with_head(facility: FacilityId, key: SigningKey, seq: u64, prev: Sha256) -> Self {
        Self {
            facility,
            key,
            seq,
            prev,
        }
    }

    pub fn facility(&self) -> &FacilityId {
        &self.facility
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn head(&self) -> (u64, Sha256) {
        (self.seq, self.prev)
    }

    /// Signs `body` as the next event.
    pub fn sign(
        &mut self,
        event_id: EventId,
        body: v1::facility_event::Body,
        recorded_at: Timestamp,
    ) -> Envelope {
        self.seq += 1;
        let event = v1::FacilityEvent {
            header: Some(v1::FacilityEventHeader {
                event_id: event_id.to_string(),
                facility_id: self.facility.to_string(),
                seq: self.seq,
                prev_hash: self.prev.as_bytes().to_vec(),
                recorded_at: Some(codec::timestamp(recorded_at)),
            }),
            body: Some(body),
        };
        let envelope = self
            .key
            .sign(PayloadType::FacilityEvent, event.encode_to_vec());
        self.prev = envelope.event_hash();
        envelope
    }
}

/// How fast to submit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Each facility submits its next batch as soon as the last one is answered.
    AsFastAsPossible,
    /// Events per second in all, shared among the facilities in proportion to their
    /// streams so that they finish together.
    Rate(f64),
}

/// What the node answered to a submission run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubmitTally {
    pub submitted: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// `SubmitEvents` calls made.
    pub calls: u64,
    /// The first rejection's reason and message, if any.
    pub first_rejection: Option<String>,
}

impl SubmitTally {
    /// Counts one call's results.
    pub fn add(&mut self, results: &[v1::SubmitResult]) {
        self.calls += 1;
        for r in results {
            self.submitted += 1;
            match v1::SubmitStatus::try_from(r.status) {
                Ok(v1::SubmitStatus::Accepted) => self.accepted += 1,
                Ok(v1::SubmitStatus::Duplicate) => self.duplicates += 1,
                _ => {
                    self.rejected += 1;
                    if self.first_rejection.is_none() {
                        self.first_rejection = Some(
                            r.rejection
                                .as_ref()
                                .map(|j| format!("{} [{}]: {}", j.reason, j.field, j.message))
                                .unwrap_or_else(|| "rejected".into()),
                        );
                    }
                }
            }
        }
    }

    fn merge(&mut self, o: SubmitTally) {
        self.submitted += o.submitted;
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.rejected += o.rejected;
        self.calls += o.calls;
        if self.first_rejection.is_none() {
            self.first_rejection = o.first_rejection;
        }
    }
}

/// Submits each facility's envelopes in order, `batch` per call, one task per facility
/// (facilities concurrently), at `pace`. Ticks `progress` per event. Returns the
/// tally and the wall time from the first call to the last answer.
pub async fn submit_streams(
    streams: Vec<(Arc<FacilityClient>, Vec<Envelope>)>,
    batch: usize,
    pace: Pace,
    progress: Option<ProgressBar>,
) -> Result<(SubmitTally, Duration), LoadgenError> {
    let total: usize = streams.iter().map(|(_, e)| e.len()).sum();
    let batch = batch.max(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (client, envelopes) in streams {
        let rate = match pace {
            Pace::AsFastAsPossible => None,
            Pace::Rate(r) => Some(r * envelopes.len() as f64 / total.max(1) as f64),
        };
        let progress = progress.clone();
        tasks.spawn(async move {
            let mut tally = SubmitTally::default();
            let mut sent = 0usize;
            let mut it = envelopes.into_iter();
            loop {
                let chunk: Vec<Envelope> = it.by_ref().take(batch).collect();
                if chunk.is_empty() {
                    break;
                }
                if let Some(rate) = rate.filter(|r| *r > 0.0) {
                    let due = started + Duration::from_secs_f64(sent as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let n = chunk.len();
                let results = client.submit_retrying(chunk).await?;
                tally.add(&results);
                sent += n;
                if let Some(p) = &progress {
                    p.inc(n as u64);
                }
            }
            Ok::<_, LoadgenError>(tally)
        });
    }
    let mut tally = SubmitTally::default();
    while let Some(joined) = tasks.join_next().await {
        tally.merge(joined.map_err(|e| LoadgenError::Task(e.to_string()))??);
    }
    Ok((tally, started.elapsed()))
}

/// A facility's chain signed one envelope at a time (see [`Population::chain`]).
#[derive(Debug)]
pub struct ChainSigning {
    population: Arc<Population>,
    index: usize,
    next: usize,
    signer: ChainSigner,
    recorded_at: Timestamp,
}

impl Iterator for ChainSigning {
    type Item = Envelope;

    fn next(&mut self) -> Option<Envelope> {
        let r = self.population.plan[self.index].get(self.next)?;
        self.next += 1;
        let body = self.population.record_body(r);
        Some(self.signer.sign(r.event_id, body, self.recorded_at))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.population.plan[self.index].len() - self.next;
        (left, Some(left))
    }
}

/// Where one facility's envelopes come from, in chain order: signed on the fly, or
/// read from a file. An error ends the run.
pub type EnvelopeSource = Box<dyn Iterator<Item = Result<Envelope, LoadgenError>> + Send>;

/// How [`submit_sources`] submits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SubmitOptions {
    /// Envelopes per `SubmitEvents` call.
    pub batch: usize,
    pub pace: Pace,
    /// `SubmitEvents` calls in flight at most, all facilities together.
    pub concurrency: usize,
}

/// What [`submit_sources`] measured.
#[derive(Clone, Debug, Default)]
pub struct SubmitReport {
    pub tally: SubmitTally,
    /// Rejections per reason name (`CHAIN_GAP`, …), ordered by name.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// The duration of every `SubmitEvents` call (the call alone, not its wait for a
    /// rate slot or a concurrency permit).
    pub latency: Samples,
    /// From the start to the last answer.
    pub elapsed: Duration,
}

impl SubmitReport {
    fn add(&mut self, results: &[v1::SubmitResult], took: Duration) {
        self.tally.add(results);
        self.latency.push(took);
        for r in results {
            if v1::SubmitStatus::try_from(r.status).is_ok_and(|s| {
                matches!(s, v1::SubmitStatus::Accepted | v1::SubmitStatus::Duplicate)
            }) {
                continue;
            }
            let reason = r
                .rejection
                .as_ref()
                .and_then(|j| hrx_domain::Reason::from_code(j.reason))
                .map_or("UNKNOWN", |reason| reason.name());
            *self
                .rejected_by_reason
                .entry(reason.to_owned())
                .or_default() += 1;
        }
    }

    fn merge(&mut self, o: SubmitReport) {
        self.tally.merge(o.tally);
        self.latency.extend(o.latency);
        for (reason, n) in o.rejected_by_reason {
            *self.rejected_by_reason.entry(reason).or_default() += n;
        }
    }
}

/// Hands out send times at a global rate: a call of `n` events is due when every event
/// before it (all facilities together) would have been sent at `rate` events/s. A
/// single schedule, rather than a share per facility, keeps the total rate right
/// whatever the streams' lengths and the concurrency limit.
struct Schedule {
    started: Instant,
    rate: f64,
    reserved: std::sync::Mutex<u64>,
}

impl Schedule {
    fn due(&self, n: usize) -> Instant {
        let mut reserved = self.reserved.lock().expect("schedule lock poisoned");
        let at = self.started + Duration::from_secs_f64(*reserved as f64 / self.rate);
        *reserved += n as u64;
        at
    }
}

/// Submits each facility's envelopes in order, `options.batch` per call, one task per
/// facility, at most `options.concurrency` calls in flight, at `options.pace`. Ticks
/// `progress` per event. A chain is submitted strictly in order (its next batch only
/// after the previous one's answer), since the node places events by seq.
pub async fn submit_sources(
    sources: Vec<(Arc<FacilityClient>, EnvelopeSource)>,
    options: SubmitOptions,
    progress: Option<ProgressBar>,
) -> Result<SubmitReport, LoadgenError> {
    let batch = options.batch.max(1);
    let started = Instant::now();
    let schedule = match options.pace {
        Pace::Rate(rate) if rate > 0.0 => Some(Arc::new(Schedule {
            started,
            rate,
            reserved: std::sync::Mutex::new(0),
        })),
        _ => None,
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (client, mut source) in sources {
        let (progress, schedule, permits) = (progress.clone(), schedule.clone(), permits.clone());
        tasks.spawn(async move {
            let mut report = SubmitReport::default();
            loop {
                // Signing on the fly (or reading a file) happens here, in the facility's
                // task: it is part of the measured path by design when signing on the
                // fly, and a batch from a file is a few hundred kilobytes at most.
                let chunk: Vec<Envelope> =
                    match source.by_ref().take(batch).collect::<Result<_, _>>() {
                        Ok(chunk) => chunk,
                        Err(e) => return (report, Some(e)),
                    };
                if chunk.is_empty() {
                    break;
                }
                let n = chunk.len();
                if let Some(s) = &schedule {
                    tokio::time::sleep_until(s.due(n).into()).await;
                }
                let _permit = match permits.acquire().await {
                    Ok(p) => p,
                    Err(e) => return (report, Some(LoadgenError::Task(e.to_string()))),
                };
                let call = Instant::now();
                // Rides out an unavailable node (a restart, a failover) with backoff:
                // what it already has comes back as duplicates, never twice.
                let results = match client.submit_retrying(chunk).await {
                    Ok(r) => r,
                    Err(e) => return (report, Some(LoadgenError::from(e))),
                };
                report.add(&results, call.elapsed());
                if let Some(p) = &progress {
                    p.inc(n as u64);
                }
            }
            (report, None)
        });
    }
    let mut report = SubmitReport::default();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((part, error)) => {
                report.merge(part);
                failure = failure.or(error);
            }
            Err(e) => failure = failure.or(Some(LoadgenError::Task(e.to_string()))),
        }
    }
    report.elapsed = started.elapsed();
    match failure {
        None => Ok(report),
        Some(cause) => Err(LoadgenError::Interrupted {
            report: Box::new(report),
            cause: Box::new(cause),
        }),
    }
}

/// A progress bar of `len` steps on stderr, in the style of `hrx bench`.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_owned());
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_plans_the_same_population() {
        let a = Population::new(9, 6, 400);
        let b = Population::new(9, 6, 400);
        assert_eq!(a.facilities().len(), 6);
        for (x, y) in a.facilities().iter().zip(b.facilities()) {
            assert_eq!(x.id, y.id);
        }
        assert_eq!(a.total_records(), b.total_records());
        assert_eq!(a.plan(0)[0].event_id, b.plan(0)[0].event_id);
        assert_eq!(a.record_body(&a.plan(0)[0]), b.record_body(&b.plan(0)[0]));
        assert_eq!(a.chronic().count(), 2);
        assert_eq!(a.records_of(0), 1000);
        let c = Population::new(10, 6, 400);
        assert_ne!(a.plan(0)[0].event_id, c.plan(0)[0].event_id);
    }

    #[test]
    fn chains_signed_on_the_fly_are_reproducible_and_verify() {
        let pop = Arc::new(Population::from_spec(PopulationSpec {
            seed: 5,
            facilities: 2,
            patients: 10,
            chronic_patients: 1,
            chronic_records: 12,
            records_per_patient: 2,
        }));
        let sign = |i: usize| -> Vec<Envelope> {
            let signer = ChainSigner::new(pop.facilities()[i].id.clone(), pop.facility_key(i));
            pop.chain(i, signer, Population::signed_at(Timestamp::now()))
                .collect()
        };
        for i in 0..2 {
            let (a, b) = (sign(i), sign(i));
            assert_eq!(a.len(), pop.plan(i).len());
            assert_eq!(a, b, "same seed, same bytes");
            for e in &a {
                pop.facility_key(i).public_key().verify(e).unwrap();
            }
        }
        assert_ne!(pop.facility_key(0).key_id(), pop.facility_key(1).key_id());
        let other = Population::from_spec(PopulationSpec {
            seed: 6,
            ..pop.spec().clone()
        });
        assert_ne!(pop.facility_key(0).key_id(), other.facility_key(0).key_id());
    }

    #[test]
    fn presigned_streams_are_chains_that_verify() {
        let pop = Population::from_spec(PopulationSpec {
            seed: 3,
            facilities: 3,
            patients: 20,
            chronic_patients: 1,
            chronic_records: 30,
            records_per_patient: 3,
        });
        let mut signers: BTreeMap<_, _> = pop
            .facilities()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let key = SigningKey::from_seed(&[i as u8 + 1; 32]).unwrap();
                (f.id.clone(), ChainSigner::new(f.id.clone(), key))
            })
            .collect();
        let streams = pop.presign(&mut signers, Timestamp::now(), 2).unwrap();
        assert_eq!(
            streams.iter().map(|(_, e)| e.len()).sum::<usize>(),
            pop.total_records()
        );
        for (f, envs) in &streams {
            let signer = &signers[f];
            let mut prev = Sha256::ZERO;
            for (seq, e) in envs.iter().enumerate() {
                signer.key().public_key().verify(e).unwrap();
                let ev = v1::FacilityEvent::decode(e.payload.as_slice()).unwrap();
                let h = ev.header.unwrap();
                assert_eq!(h.seq, seq as u64 + 1);
                assert_eq!(h.prev_hash, prev.as_bytes().to_vec());
                prev = e.event_hash();
            }
            assert_eq!(signer.head().0, envs.len() as u64);
        }
    }
}
