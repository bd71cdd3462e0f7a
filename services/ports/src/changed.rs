//! Which patients an applied batch touched, coarsely: a generation per bucket of
//! patients, so that a follower's tail re-reads the store only when a batch may have
//! changed its patient, instead of after every batch of any patient.
//!
//! A patient's bucket is a fixed hash of its id ([`bucket_of`]), the same in every
//! process, so a store can tell other processes which buckets moved in a few hundred
//! bytes (PostgreSQL's NOTIFY payload) whatever the batch size. Two patients sharing a
//! bucket only cost a re-read that finds nothing; a bucket that moved is never missed:
//! a store bumps the buckets *before* it advances [`crate::store::Store::changes`], so a
//! tail woken by `changes` that sees its bucket's generation unchanged knows the batch
//! was not its patient's. When a store cannot say which patients changed (a reset, a
//! lost notification, a registry change) it bumps every bucket.

use std::sync::atomic::{AtomicU64, Ordering};

use hrx_domain::PatientId;

use crate::store::{Projection, ProjectionBatch};

/// Buckets of patients. 1,024: a batch of a few dozen patients wakes a few percent of
/// the tails, and the set of buckets fits a NOTIFY payload as 256 hex digits.
pub const BUCKETS: usize = 1024;
const WORDS: usize = BUCKETS / 64;

/// The bucket of a patient: FNV-1a of the id's bytes (fixed, unlike std's hasher,
/// because every process must agree).
pub fn bucket_of(patient: &PatientId) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in patient.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % BUCKETS as u64) as usize
}

/// A set of buckets: what one batch touched.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BucketSet {
    words: [u64; WORDS],
}

impl BucketSet {
    /// Every bucket: "anything may have changed".
    pub fn all() -> Self {
        Self {
            words: [u64::MAX; WORDS],
        }
    }

    pub fn insert(&mut self, patient: &PatientId) {
        let b = bucket_of(patient);
        self.words[b / 64] |= 1 << (b % 64);
    }

    pub fn insert_all(&mut self) {
        *self = Self::all();
    }

    pub fn contains(&self, bucket: usize) -> bool {
        bucket < BUCKETS && self.words[bucket / 64] & (1 << (bucket % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// 256 lowercase hex digits, bucket 0 first (the NOTIFY payload form).
    pub fn to_hex(&self) -> String {
        self.words.iter().map(|w| format!("{w:016x}")).collect()
    }

    /// The inverse of [`to_hex`](Self::to_hex); `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != WORDS * 16 || !s.is_ascii() {
            return None;
        }
        let mut words = [0u64; WORDS];
        for (i, w) in words.iter_mut().enumerate() {
            *w = u64::from_str_radix(&s[i * 16..(i + 1) * 16], 16).ok()?;
        }
        Some(Self { words })
    }
}

/// The buckets a batch may change a reader's view of: the patients of its records,
/// consent events and break-glass declarations; every bucket when it changes the
/// registry (keys, facilities and certificates are judged in every patient's reads).
/// Rejections, chain links and statistics change no patient's view.
pub fn touched(batch: &ProjectionBatch) -> BucketSet {
    let mut set = BucketSet::default();
    for p in &batch.projections {
        match p {
            Projection::Record(r) => set.insert(&r.patient_id),
            Projection::ConsentEvent(c) => set.insert(&c.patient_id),
            Projection::BreakGlass(u, _) => set.insert(&u.patient_id),
            Projection::FacilityRegistered(_)
            | Projection::KeyAdded(_)
            | Projection::KeyRevoked { .. }
            | Projection::CertificateRevoked(_) => return BucketSet::all(),
            Projection::Rejection(_) => {}
        }
    }
    set
}

/// A generation per bucket, shared by a store and its followers.
pub struct PatientChanges {
    generations: Box<[AtomicU64]>,
}

impl Default for PatientChanges {
    fn default() -> Self {
        Self {
            generations: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl std::fmt::Debug for PatientChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientChanges").finish_non_exhaustive()
    }
}

impl PatientChanges {
    /// The generation of `patient`'s bucket: read it before reading the store, and
    /// compare after a wake-up.
    pub fn generation(&self, patient: &PatientId) -> u64 {
        self.generations[bucket_of(patient)].load(Ordering::Acquire)
    }

    /// Advances the buckets of `set`. Call before advancing the store's `changes`.
    pub fn bump(&self, set: &BucketSet) {
        for (b, g) in self.generations.iter().enumerate() {
            if set.contains(b) {
                g.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    pub fn bump_all(&self) {
        self.bump(&BucketSet::all());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient(s: &str) -> PatientId {
        PatientId::parse(s).expect("a patient id")
    }

    #[test]
    fn hex_round_trips_and_rejects_other_text() {
        let mut set = BucketSet::default();
        for s in ["001200000001", "001200000002"] {
            set.insert(&patient(s));
        }
        let hex = set.to_hex();
        assert_eq!(hex.len(), 256);
        assert_eq!(BucketSet::from_hex(&hex), Some(set));
        assert_eq!(
            BucketSet::from_hex(&BucketSet::all().to_hex()),
            Some(BucketSet::all())
        );
        assert_eq!(BucketSet::from_hex("abc"), None);
        assert_eq!(BucketSet::from_hex(&"g".repeat(256)), None);
        assert!(BucketSet::default().is_empty());
    }

    #[test]
    fn bumping_a_set_moves_exactly_its_buckets() {
        let changes = PatientChanges::default();
        let a = patient("001200000001");
        // A patient in another bucket than `a`.
        let b = (2..100)
            .map(|i| patient(&format!("0012000000{i:02}")))
            .find(|p| bucket_of(p) != bucket_of(&a))
            .expect("some id hashes elsewhere");
        let mut set = BucketSet::default();
        set.insert(&a);
        let (ga, gb) = (changes.generation(&a), changes.generation(&b));
        changes.bump(&set);
        assert_eq!(changes.generation(&a), ga + 1);
        assert_eq!(changes.generation(&b), gb);
        changes.bump_all();
        assert_eq!(changes.generation(&b), gb + 1);
    }

    #[test]
    fn the_bucket_of_an_id_is_fixed() {
        // Processes agree on buckets only if the hash never changes: pin one value.
        assert_eq!(bucket_of(&patient("001200000001")), 773);
    }
}
