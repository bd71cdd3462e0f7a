//! A pre-signed population on disk, and putting a population's facilities on a node.
//!
//! A directory written by [`write_population`] holds:
//!
//! - `manifest.json` ([`Manifest`]): the population's spec, the signing time, and per
//!   facility its id, name, province, level, public key, number of events, the hash of
//!   its last event, and its two files;
//! - `chains/<id>.envelopes`: the facility's chain in order, as length-delimited
//!   protobuf `hrx.v1.SignedEnvelope` messages (a varint length, then the message), the
//!   exact bytes `SubmitEvents` carries, so that submitting costs no signing;
//! - `keys/<id>.key.pem`: the facility's private key, PKCS#8 PEM, mode 0600.
//!
//! The manifest is written last, so a directory without one is incomplete. Keys come
//! from the seed ([`Population::facility_key`]) and every event is signed at
//! [`Population::signed_at`]: the same spec gives byte-identical files.
//!
//! [`register`] puts facilities and their keys on a node through the national center,
//! idempotently: the registry applies a second "facility registered" as an update and
//! keeps the first of a key added twice (it reports nothing at submission), so what is
//! already there is looked up first and left alone, and a facility of the same id that
//! is not the population's is refused rather than overwritten.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hrx_domain::{Envelope, FacilityId, FacilityLevel, PublicKey, SigningKey, Timestamp};
use hrx_identity::TlsDir;
use hrx_node::client::{ClientError, FacilityClient, NationalCenter, connect};
use hrx_node::keys::{self, KeyFileError};
use hrx_proto::{codec, v1};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::loadgen::{ChainSigner, Facility, LoadgenError, Population, PopulationSpec};

/// The manifest's file name in a population directory.
pub const MANIFEST: &str = "manifest.json";
/// The manifest's `format`: changes whenever the layout does.
pub const FORMAT: &str = "hrx-loadgen/1";
/// No envelope hrx accepts comes near this; a larger length means a corrupt file, and
/// is refused before allocating it.
const MAX_ENVELOPE: u64 = 16 << 20;

/// Why a population directory could not be written or read, or its facilities not be
/// registered. Messages carry paths, facility ids and counts only.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already holds a population (manifest.json); choose an empty directory")]
    Exists(PathBuf),
    #[error("{path}: not a loadgen manifest: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: envelope {index} does not decode: {source}")]
    Decode {
        path: PathBuf,
        index: u64,
        source: prost::DecodeError,
    },
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Identity(#[from] hrx_identity::IdentityError),
    #[error(transparent)]
    Loadgen(#[from] LoadgenError),
    #[error("facility {facility} is registered on the node {what}; refusing to change it")]
    Conflict {
        facility: FacilityId,
        what: &'static str,
    },
    #[error("a signing thread failed")]
    Thread,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_owned(),
        source,
    }
}

fn invalid(path: &Path, what: impl Into<String>) -> FilesError {
    FilesError::Invalid {
        path: path.to_owned(),
        what: what.into(),
    }
}

/// A population directory's description (`manifest.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    pub spec: PopulationSpec,
    /// Every event's `recorded_at` (RFC 3339); the keys are registered valid from it.
    pub recorded_at: String,
    /// Events in all.
    pub events: u64,
    pub facilities: Vec<ManifestFacility>,
}

/// One facility of a [`Manifest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFacility {
    pub id: String,
    pub name: String,
    pub province: String,
    /// `INITIAL`, `BASIC` or `SPECIALIZED`.
    pub level: String,
    pub key_id: String,
    /// The Ed25519 public key, hex.
    pub public_key: String,
    /// Events in its chain.
    pub events: u64,
    /// Size of the chain file, so that a truncated copy is caught before submitting.
    pub chain_bytes: u64,
    /// The hash of its last event (hex; zeros for an empty chain).
    pub head_hash: String,
    /// The chain file, relative to the directory.
    pub chain: String,
    /// The private key file, relative to the directory.
    pub key: String,
}

/// A facility ready to be registered and to submit: who it is and its public key.
#[derive(Clone, Debug)]
pub struct LoadFacility {
    pub facility: Facility,
    pub public_key: PublicKey,
}

impl Manifest {
    pub fn recorded_at(&self) -> Result<Timestamp, FilesError> {
        Timestamp::parse_rfc3339(&self.recorded_at)
            .map_err(|_| invalid(Path::new(MANIFEST), "recorded_at is not an RFC 3339 time"))
    }

    /// The facilities as [`LoadFacility`]s, checked.
    pub fn load_facilities(&self) -> Result<Vec<LoadFacility>, FilesError> {
        let path = Path::new(MANIFEST);
        self.facilities
            .iter()
            .map(|f| {
                let id = FacilityId::parse(&f.id)
                    .map_err(|_| invalid(path, format!("bad facility id {:?}", f.id)))?;
                let level = FacilityLevel::from_name(&f.level)
                    .ok_or_else(|| invalid(path, format!("facility {id}: bad level")))?;
                let public_key = hex::decode(&f.public_key)
                    .ok()
                    .and_then(|b| PublicKey::from_slice(&b))
                    .ok_or_else(|| invalid(path, format!("facility {id}: bad public key")))?;
                Ok(LoadFacility {
                    facility: Facility {
                        id,
                        name: f.name.clone(),
                        province: f.province.clone(),
                        level,
                    },
                    public_key,
                })
            })
            .collect()
    }
}

/// Reads and checks `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, FilesError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(io(&path))?;
    let m: Manifest = serde_json::from_slice(&text).map_err(|source| FilesError::Manifest {
        path: path.clone(),
        source,
    })?;
    if m.format != FORMAT {
        return Err(invalid(
            &path,
            format!("format {:?}, this hrx reads {FORMAT:?}", m.format),
        ));
    }
    Ok(m)
}

/// The RFC 8410 PKCS#8 v1 document of an Ed25519 private seed: a fixed 16-byte DER
/// prefix (SEQUENCE, version 0, algorithm id-Ed25519, OCTET STRING of OCTET STRING)
/// and the seed. ring reads it back (`SigningKey::from_pkcs8`) but cannot write one
/// from a seed, and a key from the seed is what makes the files reproducible.
fn ed25519_pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

/// Writes `envelopes` as length-delimited `SignedEnvelope`s to `out`; returns how many
/// and the bytes written.
pub fn write_chain<W: Write>(
    out: &mut W,
    envelopes: impl IntoIterator<Item = Envelope>,
) -> std::io::Result<(u64, u64)> {
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut buf = Vec::new();
    for e in envelopes {
        buf.clear();
        v1::SignedEnvelope::from(e)
            .encode_length_delimited(&mut buf)
            .expect("a Vec grows as needed");
        out.write_all(&buf)?;
        n += 1;
        bytes += buf.len() as u64;
    }
    Ok((n, bytes))
}

/// Reads a chain file written by [`write_chain`], one envelope at a time.
pub struct ChainReader<R> {
    path: PathBuf,
    input: R,
    index: u64,
    done: bool,
}

impl<R> std::fmt::Debug for ChainReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainReader")
            .field("path", &self.path)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl ChainReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, FilesError> {
        let f = File::open(path).map_err(io(path))?;
        Ok(Self::new(path, BufReader::with_capacity(256 << 10, f)))
    }
}

impl<R: Read> ChainReader<R> {
    /// Reads from `input`; `path` names it in errors.
    pub fn new(path: &Path, input: R) -> Self {
        Self {
            path: path.to_owned(),
            input,
            index: 0,
            done: false,
        }
    }

    /// The next message's length: `None` at a clean end of file (between messages).
    fn length(&mut self) -> Result<Option<u64>, FilesError> {
        let mut value = 0u64;
        for i in 0..10 {
            let mut b = [0u8; 1];
            let n = loop {
                match self.input.read(&mut b) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r.map_err(io(&self.path))?,
                }
            };
            if n == 0 {
                return if i == 0 {
                    Ok(None)
                } else {
                    Err(invalid(&self.path, "ends inside a length prefix"))
                };
            }
            value |= u64::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                return Ok(Some(value));
            }
        }
        Err(invalid(
            &self.path,
            "a length prefix is longer than 10 bytes",
        ))
    }

    fn read_one(&mut self) -> Result<Option<Envelope>, FilesError> {
        let Some(len) = self.length()? else {
            return Ok(None);
        };
        if len > MAX_ENVELOPE {
            return Err(invalid(
                &self.path,
                format!("envelope {} claims {len} bytes", self.index),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.input.read_exact(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                invalid(&self.path, format!("ends inside envelope {}", self.index))
            } else {
                io(&self.path)(e)
            }
        })?;
        let envelope = codec::decode_envelope(&buf).map_err(|source| FilesError::Decode {
            path: self.path.clone(),
            index: self.index,
            source,
        })?;
        self.index += 1;
        Ok(Some(envelope))
    }
}

impl<R: Read> Iterator for ChainReader<R> {
    type Item = Result<Envelope, FilesError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.read_one().transpose();
        // After an error the position in the input is unknown: stop there.
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }
}

/// Owner-only: a population's directory holds its facilities' private keys.
fn create_dir(path: &Path) -> Result<(), FilesError> {
    hrx_node::keys::create_private_dir(path).map_err(io(path))
}

/// Generates `population`'s chains with its reproducible keys, signed at `recorded_at`
/// (see [`Population::signed_at`]), on `threads` threads, and writes them, the keys and
/// the manifest to `dir` (created if needed; refused if it already holds a manifest).
/// `progress` is called with the number of envelopes written, from any thread.
pub fn write_population(
    dir: &Path,
    population: &Population,
    recorded_at: Timestamp,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Manifest, FilesError> {
    let manifest_path = dir.join(MANIFEST);
    if manifest_path.exists() {
        return Err(FilesError::Exists(dir.to_owned()));
    }
    create_dir(&dir.join("chains"))?;
    create_dir(&dir.join("keys"))?;
    let population = Arc::new(population.clone());
    let n = population.facilities().len();
    // Largest chains first, dealt round-robin, so that threads get similar work.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|i| std::cmp::Reverse(population.plan(*i).len()));
    let threads = threads.clamp(1, n.max(1));
    let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); threads];
    for (k, i) in order.into_iter().enumerate() {
        buckets[k % threads].push(i);
    }
    let write_one = |i: usize| -> Result<ManifestFacility, FilesError> {
        let f = &population.facilities()[i];
        let key = population.facility_key(i);
        let key_rel = format!("keys/{}.key.pem", f.id);
        keys::write_private_key(
            &dir.join(&key_rel),
            &ed25519_pkcs8_v1(&population.facility_key_seed(i)),
        )?;
        let chain_rel = format!("chains/{}.envelopes", f.id);
        let chain_path = dir.join(&chain_rel);
        let file = File::create(&chain_path).map_err(io(&chain_path))?;
        let mut out = BufWriter::with_capacity(256 << 10, file);
        let mut signer = ChainSigner::new(f.id.clone(), population.facility_key(i));
        let (mut events, mut bytes) = (0, 0);
        let mut pending = 0u64;
        // Signed and written one envelope at a time: memory stays flat whatever the
        // chain's length.
        for r in population.plan(i) {
            let envelope = signer.sign(r.event_id, population.record_body(r), recorded_at);
            let (_, b) = write_chain(&mut out, [envelope]).map_err(io(&chain_path))?;
            events += 1;
            bytes += b;
            pending += 1;
            if pending == 256 {
                progress(pending);
                pending = 0;
            }
        }
        progress(pending);
        out.flush().map_err(io(&chain_path))?;
        out.into_inner()
            .map_err(|e| io(&chain_path)(e.into_error()))?
            .sync_all()
            .map_err(io(&chain_path))?;
        let (_, head) = signer.head();
        Ok(ManifestFacility {
            id: f.id.to_string(),
            name: f.name.clone(),
            province: f.province.clone(),
            level: f.level.name().to_owned(),
            key_id: key.key_id().to_string(),
            public_key: hex::encode(key.public_key().as_bytes()),
            events,
            chain_bytes: bytes,
            head_hash: head.to_hex(),
            chain: chain_rel,
            key: key_rel,
        })
    };
    let results: Vec<(usize, Result<ManifestFacility, FilesError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = buckets
            .into_iter()
            .map(|bucket| {
                let write_one = &write_one;
                s.spawn(move || {
                    bucket
                        .into_iter()
                        .map(|i| (i, write_one(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| FilesError::Thread))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.into_iter().flatten().collect())
    })?;
    let mut facilities: Vec<Option<ManifestFacility>> = vec![None; n];
    for (i, r) in results {
        facilities[i] = Some(r?);
    }
    let facilities: Vec<ManifestFacility> = facilities.into_iter().flatten().collect();
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        spec: population.spec().clone(),
        recorded_at: recorded_at.to_rfc3339(),
        events: facilities.iter().map(|f| f.events).sum(),
        facilities,
    };
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(|source| FilesError::Manifest {
        path: manifest_path.clone(),
        source,
    })?;
    json.push(b'\n');
    // Written whole under a temporary name, then renamed: a manifest is never partial.
    let tmp = dir.join(".manifest.json.tmp");
    std::fs::write(&tmp, &json).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &manifest_path).map_err(io(&manifest_path))?;
    Ok(manifest)
}

/// One facility of a population directory, opened for submission.
pub struct ChainFile {
    pub facility: FacilityId,
    /// Its private key, checked against the manifest's public key.
    pub key: SigningKey,
    pub reader: ChainReader<BufReader<File>>,
    pub events: u64,
}

impl std::fmt::Debug for ChainFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainFile")
            .field("facility", &self.facility)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Opens every facility's chain and key in `dir`, checking each key against the
/// manifest and each chain file's size.
pub fn open_chains(dir: &Path, manifest: &Manifest) -> Result<Vec<ChainFile>, FilesError> {
    manifest
        .facilities
        .iter()
        .map(|f| {
            let facility = FacilityId::parse(&f.id)
                .map_err(|_| invalid(&dir.join(MANIFEST), "bad facility id"))?;
            let key_path = dir.join(&f.key);
            let key = keys::read_private_key(&key_path)?;
            if hex::encode(key.public_key().as_bytes()) != f.public_key {
                return Err(invalid(
                    &key_path,
                    format!("not the key of facility {facility} in the manifest"),
                ));
            }
            let chain_path = dir.join(&f.chain);
            let len = std::fs::metadata(&chain_path)
                .map_err(io(&chain_path))?
                .len();
            if len != f.chain_bytes {
                return Err(invalid(
                    &chain_path,
                    format!("{len} bytes, the manifest says {}", f.chain_bytes),
                ));
            }
            Ok(ChainFile {
                facility,
                key,
                reader: ChainReader::open(&chain_path)?,
                events: f.events,
            })
        })
        .collect()
}

/// What [`register`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registration {
    /// Facilities newly registered (with their key).
    pub registered: usize,
    /// Keys added to facilities that were registered already.
    pub keys_added: usize,
    /// Facilities registered already, with this key: nothing to do.
    pub already: usize,
}

/// Registers `facilities` and their keys (valid from `valid_from`) at the node's
/// registry as the national center, and issues their client certificates in `tls`.
/// Idempotent: what the registry already has is left alone. Refused, before anything is
/// submitted, when a facility of the same id has another name, province or level (it
/// is not this population's), or one of the keys is registered to another facility,
/// revoked, or valid only after `valid_from`.
pub async fn register(
    nc: &NationalCenter,
    tls: &TlsDir,
    facilities: &[LoadFacility],
    valid_from: Timestamp,
) -> Result<Registration, FilesError> {
    let listed = v1::registry_service_client::RegistryServiceClient::new(nc.channel())
        .list_facilities(v1::ListFacilitiesRequest::default())
        .await
        .map_err(ClientError::from)?
        .into_inner()
        .facilities;
    let owner_of: HashMap<String, (&str, &v1::FacilityKey)> = listed
        .iter()
        .flat_map(|f| {
            f.keys
                .iter()
                .map(move |k| (k.key_id.clone(), (f.facility_id.as_str(), k)))
        })
        .collect();
    let by_id: BTreeMap<&str, &v1::Facility> =
        listed.iter().map(|f| (f.facility_id.as_str(), f)).collect();
    let mut report = Registration::default();
    let mut bodies = Vec::new();
    for lf in facilities {
        let f = &lf.facility;
        let key_id = lf.public_key.key_id().to_string();
        let conflict = |what| FilesError::Conflict {
            facility: f.id.clone(),
            what,
        };
        let known_key = match owner_of.get(&key_id) {
            Some((owner, _)) if *owner != f.id.as_str() => {
                return Err(conflict("while its key is registered to another facility"));
            }
            Some((_, k)) => {
                if k.revoked_at.is_some() {
                    return Err(conflict("with this key revoked"));
                }
                let from = k
                    .valid_from
                    .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
                    .unwrap_or(valid_from);
                if from > valid_from {
                    return Err(conflict("with this key valid only after the events' time"));
                }
                true
            }
            None => false,
        };
        match by_id.get(f.id.as_str()) {
            Some(existing) => {
                if existing.name != f.name
                    || existing.province != f.province
                    || existing.level != f.level.code()
                {
                    return Err(conflict("with another name, province or level"));
                }
                if known_key {
                    report.already += 1;
                } else {
                    report.keys_added += 1;
                    bodies.push(key_added(lf, valid_from));
                }
            }
            None => {
                report.registered += 1;
                bodies.push(v1::registry_event::Body::FacilityRegistered(
                    v1::FacilityRegistered {
                        facility_id: f.id.to_string(),
                        name: f.name.clone(),
                        province: f.province.clone(),
                        level: f.level.code(),
                    },
                ));
                bodies.push(key_added(lf, valid_from));
            }
        }
    }
    for lf in facilities {
        tls.facility(&lf.facility.id)?;
    }
    // One submission for all: the registry waits until its events are projected, so
    // the keys are known to ingest when this returns.
    if !bodies.is_empty() {
        nc.submit(bodies).await?;
    }
    Ok(report)
}

fn key_added(lf: &LoadFacility, valid_from: Timestamp) -> v1::registry_event::Body {
    v1::registry_event::Body::KeyAdded(v1::KeyAdded {
        facility_id: lf.facility.id.to_string(),
        public_key: lf.public_key.as_bytes().to_vec(),
        // Back-dated to the events' signing time: a pre-signed event must not be
        // recorded before its key is valid.
        valid_from: Some(codec::timestamp(valid_from)),
    })
}

/// A client submitting as facility `id` over mutual TLS with its certificate from
/// `tls` (issued by [`register`]). `key` is the facility's signing key; submitting
/// pre-signed envelopes does not use it.
pub async fn facility_client(
    tls: &TlsDir,
    addr: SocketAddr,
    id: &FacilityId,
    key: SigningKey,
) -> Result<Arc<FacilityClient>, FilesError> {
    let channel = connect(addr, tls.ca_cert_pem(), &tls.facility(id)?).await?;
    Ok(Arc::new(FacilityClient::with(id.clone(), key, channel)))
}

#[cfg(test)]
mod tests {
    use hrx_domain::Sha256;

    use super::*;

    /// A fixed signing time: these tests compare bytes, not what a node accepts.
    fn signed_at() -> Timestamp {
        Timestamp::parse_rfc3339("2026-12-01T00:00:00Z").unwrap()
    }

    fn small() -> Population {
        Population::from_spec(PopulationSpec {
            seed: 11,
            facilities: 3,
            patients: 12,
            chronic_patients: 1,
            chronic_records: 20,
            records_per_patient: 2,
        })
    }

    #[test]
    fn chains_round_trip_through_the_file_format() {
        let pop = Arc::new(small());
        let signer = ChainSigner::new(pop.facilities()[0].id.clone(), pop.facility_key(0));
        let envelopes: Vec<Envelope> = pop.chain(0, signer, signed_at()).collect();
        let mut bytes = Vec::new();
        let (n, len) = write_chain(&mut bytes, envelopes.clone()).unwrap();
        assert_eq!(n as usize, envelopes.len());
        assert_eq!(len as usize, bytes.len());
        let back: Vec<Envelope> = ChainReader::new(Path::new("mem"), bytes.as_slice())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, envelopes);
        // Each message is a prost length-delimited SignedEnvelope.
        let mut buf = bytes.as_slice();
        let first = v1::SignedEnvelope::decode_length_delimited(&mut buf).unwrap();
        assert_eq!(Envelope::from(first), envelopes[0]);

        // A truncated file is an error, not a shorter chain.
        let cut = &bytes[..bytes.len() - 3];
        let r: Result<Vec<Envelope>, _> = ChainReader::new(Path::new("mem"), cut).collect();
        assert!(matches!(r, Err(FilesError::Invalid { .. })), "{r:?}");
    }

    #[test]
    fn a_population_directory_is_reproducible_and_reads_back() {
        let pop = small();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let written = std::sync::atomic::AtomicU64::new(0);
        let count = |n: u64| {
            written.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        };
        let ma = write_population(a.path(), &pop, signed_at(), 2, &count).unwrap();
        let mb = write_population(b.path(), &pop, signed_at(), 1, &|_| {}).unwrap();
        assert_eq!(ma, mb);
        assert_eq!(ma.events as usize, pop.total_records());
        assert_eq!(written.into_inner(), ma.events);
        assert_eq!(read_manifest(a.path()).unwrap(), ma);
        for f in &ma.facilities {
            for rel in [&f.chain, &f.key] {
                assert_eq!(
                    std::fs::read(a.path().join(rel)).unwrap(),
                    std::fs::read(b.path().join(rel)).unwrap(),
                    "{rel} differs"
                );
            }
        }
        let loaded = ma.load_facilities().unwrap();
        assert_eq!(loaded.len(), 3);
        for (chain, lf) in open_chains(a.path(), &ma).unwrap().into_iter().zip(&loaded) {
            assert_eq!(chain.key.public_key(), lf.public_key);
            let envelopes: Vec<Envelope> = chain.reader.collect::<Result<_, _>>().unwrap();
            assert_eq!(envelopes.len() as u64, chain.events);
            let mut prev = Sha256::ZERO;
            for e in &envelopes {
                lf.public_key.verify(e).unwrap();
                let ev = v1::FacilityEvent::decode(e.payload.as_slice()).unwrap();
                assert_eq!(ev.header.unwrap().prev_hash, prev.as_bytes().to_vec());
                prev = e.event_hash();
            }
        }
        assert!(matches!(
            write_population(a.path(), &pop, signed_at(), 1, &|_| {}),
            Err(FilesError::Exists(_))
        ));
    }
}
