//! The verification pipeline of BRIEF section 4, in the order the test-vector README
//! fixes: envelope form, key, signature, payload, header, key validity, chain, content.
//!
//! The steps are separate functions so that a store-backed caller can fetch chain
//! context between them (it learns the facility and seq only after decoding);
//! [`verify_facility_envelope`] runs them all for a caller that knows only the head.
//! Decoding protobuf is the caller's business (see `hrx-proto`): this crate never
//! sees the wire format.

use std::collections::HashMap;

use crate::chain::{self, ChainContext, ChainHead, ChainStep};
use crate::content;
use crate::dsse::{Envelope, PayloadType, PublicKey};
use crate::event::{FacilityEvent, FacilityHeader, RegistryEvent, RegistryHeader, unchecked};
use crate::ids::{FacilityId, KeyId, Sha256};
use crate::rejection::{Reason, Rejection};
use crate::time::{Duration, Timestamp};

/// Who a key signs for.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KeyOwner {
    Facility(FacilityId),
    /// The national root key: signs registry events.
    Root,
}

/// A public key as the registry knows it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyRecord {
    pub public_key: PublicKey,
    pub owner: KeyOwner,
    pub valid_from: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// The registry seq of the event that added the key (0 for a configured root key).
    pub registered_seq: u64,
    /// The registry seq of the event that revoked it, when revoked.
    pub revoked_seq: Option<u64>,
}

/// When and against what the exchange received an event: the receive time it recorded
/// in the log, and the registry chain's head seq that ingest judged keys by (`None` for
/// log entries written before it was recorded: the whole registry counts).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Receipt {
    pub received_at: Timestamp,
    pub registry_seq: Option<u64>,
}

impl Receipt {
    /// Received now, against the whole registry as known.
    pub fn now() -> Self {
        Self {
            received_at: Timestamp::now(),
            registry_seq: None,
        }
    }
}

impl KeyRecord {
    pub fn key_id(&self) -> KeyId {
        self.public_key.key_id()
    }

    /// Whether the registry event at `seq` is among those `receipt` was judged by.
    fn known(seq: u64, receipt: &Receipt) -> bool {
        receipt.registry_seq.is_none_or(|v| seq <= v)
    }

    /// Step 7: is this key valid for `owner` for an event received as `receipt` says?
    /// Validity is judged at the exchange's receive time, never at the time the signer
    /// claims, and against the registry as ingest knew it: a revocation registered
    /// later cannot turn an accepted event into a refused one on replay.
    pub fn check_valid(&self, owner: &KeyOwner, receipt: &Receipt) -> Result<(), Rejection> {
        if !Self::known(self.registered_seq, receipt) {
            return Err(Rejection::new(
                Reason::UnknownKey,
                "no key with this key_id was registered when the exchange received the event",
            ));
        }
        if &self.owner != owner {
            return Err(Rejection::new(
                Reason::KeyNotValidForFacility,
                "the signing key is registered to another facility",
            ));
        }
        let at = receipt.received_at;
        if at < self.valid_from {
            return Err(Rejection::new(
                Reason::KeyNotValidForFacility,
                "the exchange received the event before the signing key's valid_from",
            ));
        }
        let revoked = self.revoked_seq.is_none_or(|s| Self::known(s, receipt));
        if revoked && self.revoked_at.is_some_and(|r| r <= at) {
            return Err(Rejection::new(
                Reason::KeyRevoked,
                "the signing key was revoked at or before the exchange received the event",
            ));
        }
        Ok(())
    }
}

/// How far a facility's `recorded_at` may lie from the exchange's receive time. Ingest
/// and the projector must use the same bounds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ClockPolicy {
    /// recorded_at may be at most this much after the receive time (clock skew).
    pub max_future: Duration,
    /// recorded_at may be at most this much before it (a facility sending late).
    pub max_past: Duration,
}

impl Default for ClockPolicy {
    fn default() -> Self {
        Self {
            max_future: Duration::from_secs(5 * 60).expect("five minutes"),
            max_past: Duration::from_secs(7 * 24 * 60 * 60).expect("seven days"),
        }
    }
}

impl ClockPolicy {
    /// Step 8b, for an event that extends its chain: recorded_at within the bounds of
    /// the receive time, and not before the chain head's.
    pub fn check(
        &self,
        recorded_at: Timestamp,
        receipt: &Receipt,
        head: &ChainHead,
    ) -> Result<(), Rejection> {
        let at = receipt.received_at;
        let latest = at.checked_add(self.max_future).unwrap_or(Timestamp::MAX);
        let earliest = at.checked_sub(self.max_past).unwrap_or(Timestamp::MIN);
        if recorded_at > latest || recorded_at < earliest {
            return Err(Rejection::new(
                Reason::RecordedAtOutOfRange,
                "recorded_at is too far from the time the exchange received the event",
            ));
        }
        if head.recorded_at.is_some_and(|h| recorded_at < h) {
            return Err(Rejection::new(
                Reason::RecordedAtDecreasing,
                "recorded_at is earlier than that of the previous event in the chain",
            ));
        }
        Ok(())
    }
}

/// Lookup of public keys by key id.
pub trait Keyring {
    fn key(&self, key_id: &KeyId) -> Option<&KeyRecord>;
}

/// A keyring as of a registry head: keys registered after it are unknown (step 3).
struct AsOf<'k, K: ?Sized> {
    keys: &'k K,
    registry_seq: Option<u64>,
}

impl<K: Keyring + ?Sized> Keyring for AsOf<'_, K> {
    fn key(&self, key_id: &KeyId) -> Option<&KeyRecord> {
        self.keys
            .key(key_id)
            .filter(|k| self.registry_seq.is_none_or(|v| k.registered_seq <= v))
    }
}

impl Keyring for HashMap<KeyId, KeyRecord> {
    fn key(&self, key_id: &KeyId) -> Option<&KeyRecord> {
        self.get(key_id)
    }
}

impl Keyring for [KeyRecord] {
    fn key(&self, key_id: &KeyId) -> Option<&KeyRecord> {
        self.iter().find(|k| &k.key_id() == key_id)
    }
}

impl Keyring for Vec<KeyRecord> {
    fn key(&self, key_id: &KeyId) -> Option<&KeyRecord> {
        self.as_slice().key(key_id)
    }
}

/// A facility event whose signature, payload, header and key are valid (steps 1–7).
/// Its place in the chain and its content are still to be checked.
#[derive(Clone, Debug)]
pub struct AuthenticatedEvent {
    pub envelope: Envelope,
    pub event_hash: Sha256,
    pub key_id: KeyId,
    pub header: FacilityHeader,
    pub body: unchecked::Body,
}

/// Signatures this process has already checked with ring, so that an envelope
/// verified by ingest is not verified again by the projector of the same process
/// (Ed25519 verification is most of the CPU an event costs).
///
/// An entry is a [`SignatureProof`]: a digest binding the public key, the signature
/// and the signed PAE bytes, so a hit means these exact bytes verified under this
/// exact key; key validity (owner, valid_from, revocation) is still checked every time.
pub trait VerifiedSignatures {
    fn contains(&self, proof: &SignatureProof) -> bool;
    fn insert(&self, proof: SignatureProof);
}

/// Remembers nothing: every signature is verified.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyAlways;

impl VerifiedSignatures for VerifyAlways {
    fn contains(&self, _: &SignatureProof) -> bool {
        false
    }
    fn insert(&self, _: SignatureProof) {}
}

/// SHA-256(public key ‖ signature ‖ SHA-256(PAE)): names one successful
/// verification. Collision resistance of SHA-256 makes a remembered proof as good as
/// verifying again.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SignatureProof(Sha256);

impl SignatureProof {
    fn of(key: &PublicKey, signature: &[u8], event_hash: &Sha256) -> Self {
        let mut bytes = Vec::with_capacity(32 + signature.len() + 32);
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(signature);
        bytes.extend_from_slice(event_hash.as_bytes());
        Self(Sha256::digest(&bytes))
    }
}

/// Steps 1–4, common to both payload types: form, key, signature. Also returns the
/// event hash, computed from the same PAE bytes the signature is checked over.
fn check_signature<'k, K: Keyring + ?Sized>(
    envelope: &Envelope,
    expected: PayloadType,
    keys: &'k K,
    memo: &dyn VerifiedSignatures,
) -> Result<(KeyId, &'k KeyRecord, Sha256), Rejection> {
    let (payload_type, key_id) = envelope.check_form()?;
    if payload_type != expected {
        return Err(Rejection::new(
            Reason::UnknownPayloadType,
            "this payload type is not accepted here",
        ));
    }
    let key = keys
        .key(&key_id)
        .ok_or_else(|| Rejection::new(Reason::UnknownKey, "no registered key has this key_id"))?;
    let pae = envelope.pae();
    let event_hash = Sha256::digest(&pae);
    let proof = SignatureProof::of(&key.public_key, &envelope.signature, &event_hash);
    if !memo.contains(&proof) {
        key.public_key.verify_pae(&pae, &envelope.signature)?;
        memo.insert(proof);
    }
    Ok((key_id, key, event_hash))
}

fn malformed() -> Rejection {
    Rejection::new(
        Reason::MalformedPayload,
        "payload is not a valid event with a header and a body",
    )
}

/// Steps 1–7 for a facility event. `decode` turns payload bytes into an unchecked
/// event; any error it returns is reported as `MALFORMED_PAYLOAD`. `memo` skips the
/// Ed25519 check of a signature this process already verified ([`VerifyAlways`] to
/// never skip).
pub fn authenticate_facility_event<K, D, E>(
    envelope: Envelope,
    keys: &K,
    memo: &dyn VerifiedSignatures,
    receipt: &Receipt,
    decode: D,
) -> Result<AuthenticatedEvent, Rejection>
where
    K: Keyring + ?Sized,
    D: FnOnce(&[u8]) -> Result<unchecked::FacilityEvent, E>,
{
    let keys = AsOf {
        keys,
        registry_seq: receipt.registry_seq,
    };
    let (key_id, key, event_hash) =
        check_signature(&envelope, PayloadType::FacilityEvent, &keys, memo)?;
    let event = decode(&envelope.payload).map_err(|_| malformed())?;
    let (Some(raw_header), Some(body)) = (event.header, event.body) else {
        return Err(malformed());
    };
    let header = FacilityHeader::parse(&raw_header)?;
    key.check_valid(&KeyOwner::Facility(header.facility_id.clone()), receipt)?;
    Ok(AuthenticatedEvent {
        envelope,
        event_hash,
        key_id,
        header,
        body,
    })
}

/// The outcome of verifying one event.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Verdict<E> {
    /// Valid in every respect; extends the chain.
    Accepted(E),
    /// The same event again: acknowledged, not applied twice.
    Duplicate,
    /// Refused. `extends_chain` is true when signature and chain were good and only the
    /// content was wrong: the event takes its place in the chain and is recorded as
    /// rejected, and the facility corrects it with a later event.
    Rejected {
        rejection: Rejection,
        extends_chain: bool,
    },
}

impl<E> Verdict<E> {
    fn refuse(rejection: Rejection) -> Self {
        Verdict::Rejected {
            rejection,
            extends_chain: false,
        }
    }

    /// The same verdict with the accepted event mapped.
    pub fn map<F>(self, f: impl FnOnce(E) -> F) -> Verdict<F> {
        match self {
            Verdict::Accepted(e) => Verdict::Accepted(f(e)),
            Verdict::Duplicate => Verdict::Duplicate,
            Verdict::Rejected {
                rejection,
                extends_chain,
            } => Verdict::Rejected {
                rejection,
                extends_chain,
            },
        }
    }

    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Verdict::Rejected { rejection, .. } => Some(rejection),
            _ => None,
        }
    }
}

/// Steps 8–9 for an authenticated facility event, given its chain context: its place
/// in the chain, then (when it extends the chain) its recorded_at against the receive
/// time and the head's, then its content. `clock` is `None` for an event the log holds
/// from before it recorded receive times: it was accepted without the clock rules, and
/// a replay must judge it as it was judged.
pub fn settle_facility_event(
    event: AuthenticatedEvent,
    ctx: &ChainContext,
    receipt: &Receipt,
    clock: Option<&ClockPolicy>,
) -> Verdict<FacilityEvent> {
    match chain::check(ctx, &event.header.link, event.event_hash) {
        Err(r) => Verdict::refuse(r),
        Ok(ChainStep::Duplicate) => Verdict::Duplicate,
        Ok(ChainStep::Extends) => {
            if let Some(clock) = clock
                && let Err(r) = clock.check(event.header.link.recorded_at, receipt, &ctx.head)
            {
                return Verdict::refuse(r);
            }
            settle_content(event)
        }
    }
}

fn settle_content(event: AuthenticatedEvent) -> Verdict<FacilityEvent> {
    {
        match content::check_body(&event.header, &event.body) {
            Ok(body) => Verdict::Accepted(FacilityEvent {
                header: event.header,
                body,
            }),
            Err(rejection) => Verdict::Rejected {
                rejection,
                extends_chain: true,
            },
        }
    }
}

/// The whole pipeline for a caller that knows the facility's head only.
pub fn verify_facility_envelope<K, D, E>(
    envelope: Envelope,
    keys: &K,
    head: ChainHead,
    receipt: &Receipt,
    clock: &ClockPolicy,
    decode: D,
) -> Verdict<FacilityEvent>
where
    K: Keyring + ?Sized,
    D: FnOnce(&[u8]) -> Result<unchecked::FacilityEvent, E>,
{
    match authenticate_facility_event(envelope, keys, &VerifyAlways, receipt, decode) {
        Err(r) => Verdict::refuse(r),
        Ok(event) => {
            let ctx = ChainContext::head_only(head, &event.header.link);
            settle_facility_event(event, &ctx, receipt, Some(clock))
        }
    }
}

/// The whole pipeline for a registry event, against the registry chain's head.
/// Registry events must be signed by a key whose owner is [`KeyOwner::Root`].
pub fn verify_registry_envelope<K, D, E>(
    envelope: &Envelope,
    keys: &K,
    head: ChainHead,
    decode: D,
) -> Verdict<RegistryEvent>
where
    K: Keyring + ?Sized,
    D: FnOnce(&[u8]) -> Result<unchecked::RegistryEvent, E>,
{
    let run = || -> Result<Verdict<RegistryEvent>, Rejection> {
        let (_, key, event_hash) =
            check_signature(envelope, PayloadType::RegistryEvent, keys, &VerifyAlways)?;
        let event = decode(&envelope.payload).map_err(|_| malformed())?;
        let (Some(raw_header), Some(body)) = (event.header, event.body) else {
            return Err(malformed());
        };
        let header = RegistryHeader::parse(&raw_header)?;
        key.check_valid(
            &KeyOwner::Root,
            &Receipt {
                received_at: header.link.recorded_at,
                registry_seq: None,
            },
        )?;
        let ctx = ChainContext::head_only(head, &header.link);
        Ok(match chain::check(&ctx, &header.link, event_hash)? {
            ChainStep::Duplicate => Verdict::Duplicate,
            ChainStep::Extends => match content::check_registry_body(&body) {
                Ok(body) => Verdict::Accepted(RegistryEvent { header, body }),
                Err(rejection) => Verdict::Rejected {
                    rejection,
                    extends_chain: true,
                },
            },
        })
    };
    run().unwrap_or_else(Verdict::refuse)
}

/// A bounded [`VerifiedSignatures`] shared by the services of one process. When full,
/// the least recently used proofs go first; a forgotten proof costs one more
/// verification, never a wrong answer.
pub struct SignatureMemo {
    proofs: quick_cache::sync::Cache<SignatureProof, ()>,
}

impl SignatureMemo {
    /// Room for the events a projector may lag behind ingest by: at ~10k events/s,
    /// 64k proofs (~6 MiB) cover several seconds of backlog.
    pub const DEFAULT_CAPACITY: usize = 1 << 16;

    pub fn new(capacity: usize) -> Self {
        Self {
            proofs: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }
}

impl Default for SignatureMemo {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl std::fmt::Debug for SignatureMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureMemo")
            .field("proofs", &self.proofs.len())
            .finish()
    }
}

impl VerifiedSignatures for SignatureMemo {
    fn contains(&self, proof: &SignatureProof) -> bool {
        self.proofs.get(proof).is_some()
    }
    fn insert(&self, proof: SignatureProof) {
        self.proofs.insert(proof, ());
    }
}
