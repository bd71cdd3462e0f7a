//! `hrx verify`: judges an envelope as the exchange would, given the signer's public
//! key(s) and optionally the facility's head; prints the verdict and its reason.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use hrx_domain::chain::ChainHead;
use hrx_domain::verify::{self, ClockPolicy, KeyRecord, Receipt, Verdict};
use hrx_domain::{EventId, Sha256, Timestamp};
use hrx_proto::codec;

use super::EXIT_REJECTED;
use crate::files::{PublicKeyFile, parse_envelope};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The envelope (DSSE JSON, or protobuf SignedEnvelope).
    envelope: PathBuf,
    /// Public key file(s) from `hrx keygen` (`*.pub.json`); repeatable.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// The facility's previous envelope (its head); default: an empty chain.
    #[arg(long, conflicts_with_all = ["head_seq", "head_hash"])]
    after: Option<PathBuf>,
    /// The head's seq.
    #[arg(long, requires = "head_hash")]
    head_seq: Option<u64>,
    /// The head's event hash (hex).
    #[arg(long, requires = "head_seq")]
    head_hash: Option<String>,
    /// The head's event id, to recognise a resent head.
    #[arg(long, requires = "head_seq")]
    head_event_id: Option<String>,
    /// The head's recorded_at (RFC 3339): the event may not claim an earlier one.
    #[arg(long, requires = "head_seq")]
    head_recorded_at: Option<String>,
    /// When the exchange receives the event (RFC 3339; default now): keys are judged
    /// at this time, and recorded_at must lie within 5 minutes after it and 7 days
    /// before it.
    #[arg(long)]
    received_at: Option<String>,
    /// How far after the receive time recorded_at may lie, in seconds (the exchange's
    /// default 300).
    #[arg(long, default_value_t = 300)]
    recorded_at_max_future_secs: u32,
    /// How far before it, in seconds (the exchange's default 604800, 7 days).
    #[arg(long, default_value_t = 604_800)]
    recorded_at_max_past_secs: u32,
    /// Verify a registry event (signed by the national root key) against the registry
    /// chain, instead of a facility event.
    #[arg(long)]
    registry: bool,
}

fn head(a: &VerifyArgs) -> anyhow::Result<ChainHead> {
    if let Some(prev) = &a.after {
        let bytes =
            std::fs::read(prev).with_context(|| format!("cannot read {}", prev.display()))?;
        let env = parse_envelope(&bytes).map_err(|e| anyhow!("{}: {e}", prev.display()))?;
        let event = codec::decode_facility_event(&env.payload)
            .map_err(|_| anyhow!("{} does not hold a facility event", prev.display()))?;
        let h = event
            .header
            .ok_or_else(|| anyhow!("{} has no header", prev.display()))?;
        return Ok(ChainHead {
            seq: h.seq,
            event_hash: env.event_hash(),
            event_id: EventId::parse(&h.event_id).ok(),
            recorded_at: h
                .recorded_at
                .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok()),
        });
    }
    match (a.head_seq, &a.head_hash) {
        (Some(seq), Some(hash)) => Ok(ChainHead {
            seq,
            event_hash: Sha256::from_hex(hash).map_err(|e| anyhow!("--head-hash: {e}"))?,
            event_id: a
                .head_event_id
                .as_deref()
                .map(EventId::parse)
                .transpose()
                .map_err(|e| anyhow!("--head-event-id: {e}"))?,
            recorded_at: a
                .head_recorded_at
                .as_deref()
                .map(Timestamp::parse_rfc3339)
                .transpose()
                .map_err(|e| anyhow!("--head-recorded-at: {e}"))?,
        }),
        _ => Ok(ChainHead::EMPTY),
    }
}

pub fn run(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let keys = a
        .keys
        .iter()
        .map(|p| {
            PublicKeyFile::read(p)?
                .to_record()
                .map_err(|e| anyhow!("{}: {e}", p.display()))
        })
        .collect::<anyhow::Result<Vec<KeyRecord>>>()?;
    let head = head(&a)?;
    let bytes = std::fs::read(&a.envelope)
        .with_context(|| format!("cannot read {}", a.envelope.display()))?;
    let envelope = match parse_envelope(&bytes) {
        Ok(e) => e,
        Err(e) => {
            println!("rejected: MALFORMED_ENVELOPE: {e}");
            return Ok(ExitCode::from(EXIT_REJECTED));
        }
    };
    let event_hash = envelope.event_hash();
    let receipt = Receipt {
        received_at: match &a.received_at {
            Some(t) => Timestamp::parse_rfc3339(t).map_err(|e| anyhow!("--received-at: {e}"))?,
            None => Timestamp::now(),
        },
        registry_seq: None,
    };
    let verdict = if a.registry {
        verify::verify_registry_envelope(&envelope, &keys, head, codec::decode_registry_event).map(
            |e| {
                format!(
                    "registry event {} seq {}",
                    e.header.link.event_id, e.header.link.seq
                )
            },
        )
    } else {
        verify::verify_facility_envelope(
            envelope,
            &keys,
            head,
            &receipt,
            &ClockPolicy {
                max_future: hrx_domain::Duration::from_secs(i64::from(
                    a.recorded_at_max_future_secs,
                ))?,
                max_past: hrx_domain::Duration::from_secs(i64::from(a.recorded_at_max_past_secs))?,
            },
            codec::decode_facility_event,
        )
        .map(|e| {
            format!(
                "facility event {} from {} seq {}",
                e.header.link.event_id, e.header.facility_id, e.header.link.seq
            )
        })
    };
    Ok(match verdict {
        Verdict::Accepted(what) => {
            println!("accepted: {what}, event hash {event_hash}");
            ExitCode::SUCCESS
        }
        Verdict::Duplicate => {
            println!("duplicate: the same event as the head, event hash {event_hash}");
            ExitCode::SUCCESS
        }
        Verdict::Rejected {
            rejection,
            extends_chain,
        } => {
            let field = rejection
                .field()
                .map(|f| format!(" [{f}]"))
                .unwrap_or_default();
            let chain = if extends_chain {
                " (signature and chain are good: the event extends the chain, its content is rejected)"
            } else {
                ""
            };
            println!(
                "rejected: {}{field}: {}{chain}",
                rejection.reason(),
                rejection.message()
            );
            ExitCode::from(EXIT_REJECTED)
        }
    })
}
