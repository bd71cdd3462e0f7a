//! The Kafka message format of the hrx log: what a message's key, value and headers
//! hold. This is a contract between hrx processes (and versions) sharing a topic.
//!
//! - **Key**: the chain key as UTF-8 (`ChainKey::as_key()`: the 5-digit facility id,
//!   `registry`, or `patient:<12-digit id>` for a patient's statements), so Kafka
//!   tooling and the default partitioner agree with hrx.
//! - **Value**: the DSSE envelope, exactly as signed — the payload is never re-encoded:
//!
//!   ```text
//!   u8   format version = 1
//!   u32  length of payload_type (big-endian), then payload_type (UTF-8)
//!   u32  length of key_id,                    then key_id (UTF-8, lowercase hex)
//!   u32  length of signature,                 then signature (raw bytes)
//!   u32  length of payload,                   then payload (the signed bytes)
//!   ```
//!
//!   Nothing may follow the payload. A reader that meets another version refuses it
//!   rather than guessing.
//! - **Headers** (text, so that `kcat -J` or the console consumer shows them), written
//!   by `append` from the `Append` it was given. The event's place in its chain, so
//!   that the chain index can be rebuilt from the log without decoding payloads (which
//!   only `hrx-proto` may do), always present:
//!   - `hrx-chain`: the chain key, as the message key;
//!   - `hrx-seq`: the seq in decimal ASCII;
//!   - `hrx-event-id`: the event id, canonical lowercase UUID text;
//!   - `hrx-event-hash`: the event hash, 64 lowercase hex digits;
//!
//!   and, each only when the `Append` has it (absent means `None`):
//!   - `hrx-recorded-at`: the event's own recorded_at, `<unix seconds>.<nanos>`: the
//!     seconds in decimal ASCII with a `-` before 1970, a `.`, then exactly 9 digits of
//!     nanoseconds added to them (`-1.999999999` is 1969-12-31T23:59:59.999999999Z), so
//!     that catch-up can give the index's head its recorded_at;
//!   - `hrx-registry-seq`: the registry chain's head seq that ingest judged the signing
//!     key against, in decimal ASCII: the entry's `registry_seq`.
//!
//!   Messages written before the last two existed lack them and read as `None`; headers
//!   this version does not know are ignored, and versions before ignore these two. The
//!   chain headers are an index aid, not a second source of truth: the projector trusts
//!   the signed payload for them, and re-derives every one (recorded_at included) from
//!   it. `hrx-registry-seq` is not in the payload: like the timestamp, it is the
//!   exchange's own record of how it received the event, which the projector uses as
//!   given. A malformed one of these two reads as `None` (logged): it is no hrx
//!   writer's, and the chain headers still index the message. Nor does the index take
//!   the chain headers on trust: it indexes a message only if an append claimed its
//!   chain, event id and event hash before producing it, and `hrx-event-hash` is the
//!   value's event hash (see [`crate`], "What the index trusts").
//! - **Timestamp**: CreateTime, set by `append` to the `Append`'s `received_at` in Unix
//!   milliseconds: the entry's `appended_at`. Receive times are whole milliseconds by
//!   the port's contract, so the entry reads back with exactly the time ingest judged
//!   it at; `append` refuses any other (and one before 1970, which Kafka cannot hold)
//!   rather than round it. The topics must keep CreateTime (`connect` refuses
//!   `LogAppendTime`, which would replace it with the broker's clock), and brokers
//!   refuse a timestamp more than `log.message.timestamp.after.max.ms` ahead of their
//!   clock (1 hour by default since Kafka 4.0) or, if configured, too far behind it
//!   (`log.message.timestamp.before.max.ms`): such an append fails as unavailable.

use hrx_domain::{Envelope, EventId, Sha256, Timestamp};
use hrx_ports::{Append, ChainKey};
use rdkafka::message::{Header, OwnedHeaders};

/// The value format this crate writes and reads.
pub const VALUE_VERSION: u8 = 1;
/// Header: the chain key.
pub const HEADER_CHAIN: &str = "hrx-chain";
/// Header: the seq, decimal.
pub const HEADER_SEQ: &str = "hrx-seq";
/// Header: the event id, canonical UUID text.
pub const HEADER_EVENT_ID: &str = "hrx-event-id";
/// Header: the event hash, lowercase hex.
pub const HEADER_EVENT_HASH: &str = "hrx-event-hash";
/// Header (optional): the event's recorded_at, `<unix seconds>.<9 digits of nanos>`.
pub const HEADER_RECORDED_AT: &str = "hrx-recorded-at";
/// Header (optional): the registry head seq ingest judged the key against, decimal.
pub const HEADER_REGISTRY_SEQ: &str = "hrx-registry-seq";

/// Why a message is not an hrx log entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message has no value")]
    NoValue,
    #[error("unknown value format version {0}")]
    Version(u8),
    #[error("value truncated in field {0}")]
    Truncated(&'static str),
    #[error("{0} bytes after the payload")]
    Trailing(usize),
    #[error("field {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("header {0} missing")]
    MissingHeader(&'static str),
    #[error("header {0} malformed")]
    BadHeader(&'static str),
}

/// The message value of `envelope`.
pub fn encode_value(envelope: &Envelope) -> Vec<u8> {
    let fields: [&[u8]; 4] = [
        envelope.payload_type.as_bytes(),
        envelope.key_id.as_bytes(),
        &envelope.signature,
        &envelope.payload,
    ];
    let mut out = Vec::with_capacity(1 + fields.iter().map(|f| 4 + f.len()).sum::<usize>());
    out.push(VALUE_VERSION);
    for field in fields {
        // Envelopes are bounded far below 4 GiB by Kafka's message size limit; a field
        // that did not fit would be a caller bug worth stopping on.
        let len = u32::try_from(field.len()).expect("an envelope field under 4 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// The envelope in a message value.
pub fn decode_value(value: &[u8]) -> Result<Envelope, WireError> {
    let (&version, mut rest) = value.split_first().ok_or(WireError::Truncated("version"))?;
    if version != VALUE_VERSION {
        return Err(WireError::Version(version));
    }
    let mut field = |name: &'static str| -> Result<Vec<u8>, WireError> {
        if rest.len() < 4 {
            return Err(WireError::Truncated(name));
        }
        let (len, tail) = rest.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if tail.len() < len {
            return Err(WireError::Truncated(name));
        }
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        Ok(bytes.to_vec())
    };
    let text = |name: &'static str, bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|_| WireError::NotUtf8(name))
    };
    let payload_type = text("payload_type", field("payload_type")?)?;
    let key_id = text("key_id", field("key_id")?)?;
    let signature = field("signature")?;
    let payload = field("payload")?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(Envelope {
        payload_type,
        payload,
        key_id,
        signature,
    })
}

/// An event's place in its chain, as carried in the headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainInfo {
    pub chain: ChainKey,
    pub seq: u64,
    pub event_id: EventId,
    pub event_hash: Sha256,
}

impl From<&Append> for ChainInfo {
    fn from(a: &Append) -> Self {
        Self {
            chain: a.chain.clone(),
            seq: a.seq,
            event_id: a.event_id,
            event_hash: a.event_hash,
        }
    }
}

/// The headers `append` writes for `append`.
pub fn headers(append: &Append) -> OwnedHeaders {
    let chain = append.chain.as_key();
    let seq = append.seq.to_string();
    let event_id = append.event_id.to_string();
    let event_hash = append.event_hash.to_hex();
    let mut headers = OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: HEADER_CHAIN,
            value: Some(&*chain),
        })
        .insert(Header {
            key: HEADER_SEQ,
            value: Some(&seq),
        })
        .insert(Header {
            key: HEADER_EVENT_ID,
            value: Some(&event_id),
        })
        .insert(Header {
            key: HEADER_EVENT_HASH,
            value: Some(&event_hash),
        });
    if let Some(t) = append.recorded_at {
        headers = headers.insert(Header {
            key: HEADER_RECORDED_AT,
            value: Some(&format_timestamp(t)),
        });
    }
    if let Some(seq) = append.registry_seq {
        headers = headers.insert(Header {
            key: HEADER_REGISTRY_SEQ,
            value: Some(&seq.to_string()),
        });
    }
    headers
}

/// `t` as `hrx-recorded-at` holds it.
pub fn format_timestamp(t: Timestamp) -> String {
    format!("{}.{:09}", t.seconds(), t.nanos())
}

/// A timestamp as `hrx-recorded-at` holds it: nothing else (no `+`, no spaces, exactly
/// nine digits after the point), and in hrx's range.
pub fn parse_timestamp(text: &str) -> Option<Timestamp> {
    let (seconds, nanos) = text.split_once('.')?;
    let digits = seconds.strip_prefix('-').unwrap_or(seconds);
    if !is_decimal(digits) || nanos.len() != 9 || !is_decimal(nanos) {
        return None;
    }
    Timestamp::new(seconds.parse().ok()?, nanos.parse().ok()?).ok()
}

/// Decimal ASCII digits only, at least one: `u64::from_str` would also take a `+`.
fn is_decimal(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The value of the optional header `name`: `None` when absent, an error when repeated,
/// valueless, not UTF-8 or not what `parse` accepts.
fn optional<'a, T>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    name: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, WireError> {
    let mut found = None;
    for (key, value) in headers {
        if key != name {
            continue;
        }
        let value = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or(WireError::BadHeader(name))?;
        if found.replace(value).is_some() {
            return Err(WireError::BadHeader(name));
        }
    }
    found
        .map(|v| parse(v).ok_or(WireError::BadHeader(name)))
        .transpose()
}

/// The event's recorded_at from `hrx-recorded-at`; `None` when the message has none.
pub fn recorded_at<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<Option<Timestamp>, WireError> {
    optional(headers, HEADER_RECORDED_AT, parse_timestamp)
}

/// The registry seq from `hrx-registry-seq`; `None` when the message has none.
pub fn registry_seq<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<Option<u64>, WireError> {
    optional(headers, HEADER_REGISTRY_SEQ, |v| {
        is_decimal(v).then(|| v.parse().ok()).flatten()
    })
}

/// The chain info in a message's headers. Unknown headers are ignored (later versions
/// may add some); a repeated hrx header is malformed, since it is ambiguous.
pub fn chain_info<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<ChainInfo, WireError> {
    let mut found: [Option<&str>; 4] = [None; 4];
    const NAMES: [&str; 4] = [HEADER_CHAIN, HEADER_SEQ, HEADER_EVENT_ID, HEADER_EVENT_HASH];
    for (key, value) in headers {
        let Some(i) = NAMES.iter().position(|n| *n == key) else {
            continue;
        };
        let value = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or(WireError::BadHeader(NAMES[i]))?;
        if found[i].replace(value).is_some() {
            return Err(WireError::BadHeader(NAMES[i]));
        }
    }
    let get = |i: usize| found[i].ok_or(WireError::MissingHeader(NAMES[i]));
    let chain = ChainKey::parse(get(0)?).ok_or(WireError::BadHeader(HEADER_CHAIN))?;
    let seq_text = get(1)?;
    if !is_decimal(seq_text) {
        return Err(WireError::BadHeader(HEADER_SEQ));
    }
    let seq = seq_text
        .parse()
        .map_err(|_| WireError::BadHeader(HEADER_SEQ))?;
    let event_id = EventId::parse(get(2)?).map_err(|_| WireError::BadHeader(HEADER_EVENT_ID))?;
    let event_hash =
        Sha256::from_hex(get(3)?).map_err(|_| WireError::BadHeader(HEADER_EVENT_HASH))?;
    Ok(ChainInfo {
        chain,
        seq,
        event_id,
        event_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn sample() -> Append {
        let envelope = Envelope {
            payload_type: "application/vnd.hrx.facility-event.v1+protobuf".into(),
            payload: b"\x0a\x03abc\x00\xff".to_vec(),
            key_id: "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925".into(),
            signature: vec![7; 64],
        };
        Append {
            chain: ChainKey::parse("26001").expect("a facility"),
            seq: 42,
            event_id: EventId::parse("00000000-0000-7000-8000-00000000002a").expect("an id"),
            event_hash: envelope.event_hash(),
            envelope,
            received_at: Timestamp::new(1_800_000_000, 123_000_000).expect("in range"),
            registry_seq: Some(7),
            recorded_at: Some(Timestamp::new(1_799_999_999, 5).expect("in range")),
        }
    }

    fn pairs(h: &OwnedHeaders) -> Vec<(&str, Option<&[u8]>)> {
        h.iter().map(|h| (h.key, h.value)).collect()
    }

    #[test]
    fn receipt_headers_round_trip_and_are_optional() {
        let a = sample();
        let h = headers(&a);
        let all = pairs(&h);
        assert_eq!(all.len(), 6);
        assert_eq!(
            all[4],
            (HEADER_RECORDED_AT, Some(&b"1799999999.000000005"[..]))
        );
        assert_eq!(all[5], (HEADER_REGISTRY_SEQ, Some(&b"7"[..])));
        assert_eq!(recorded_at(all.iter().copied()), Ok(a.recorded_at));
        assert_eq!(registry_seq(all.iter().copied()), Ok(Some(7)));
        assert_eq!(chain_info(all.iter().copied()), Ok(ChainInfo::from(&a)));

        // Absent when the Append has none, as in messages written before they existed.
        let bare = Append {
            registry_seq: None,
            recorded_at: None,
            ..sample()
        };
        let h = headers(&bare);
        let old = pairs(&h);
        assert_eq!(old.len(), 4);
        assert_eq!(recorded_at(old.iter().copied()), Ok(None));
        assert_eq!(registry_seq(old.iter().copied()), Ok(None));
        assert_eq!(chain_info(old.iter().copied()), Ok(ChainInfo::from(&bare)));
        let big = Append {
            registry_seq: Some(u64::MAX),
            ..sample()
        };
        let h = headers(&big);
        assert_eq!(registry_seq(pairs(&h)), Ok(Some(u64::MAX)));

        // Repeated or malformed: an error, which readers take for `None`.
        let mut twice = all.clone();
        twice.push(all[5]);
        assert_eq!(
            registry_seq(twice),
            Err(WireError::BadHeader(HEADER_REGISTRY_SEQ))
        );
        for bad in [&b"+7"[..], b"", b"7 ", b"-7", b"18446744073709551616"] {
            let mut h = all.clone();
            h[5] = (HEADER_REGISTRY_SEQ, Some(bad));
            assert_eq!(
                registry_seq(h),
                Err(WireError::BadHeader(HEADER_REGISTRY_SEQ))
            );
        }
        let mut valueless = all.clone();
        valueless[4] = (HEADER_RECORDED_AT, None);
        assert_eq!(
            recorded_at(valueless),
            Err(WireError::BadHeader(HEADER_RECORDED_AT))
        );
    }

    #[test]
    fn recorded_at_text_is_exact_across_the_range() {
        for (s, ns, text) in [
            (0, 0, "0.000000000"),
            (1_799_999_999, 5, "1799999999.000000005"),
            (-1, 999_999_999, "-1.999999999"),
            (-62_135_596_800, 0, "-62135596800.000000000"),
            (253_402_300_799, 999_999_999, "253402300799.999999999"),
        ] {
            let t = Timestamp::new(s, ns).expect("in range");
            assert_eq!(format_timestamp(t), text);
            assert_eq!(parse_timestamp(text), Some(t), "{text}");
        }
        for bad in [
            "1.5",
            "1.0000000005",
            "1",
            "+1.000000000",
            "1.+00000000",
            " 1.000000000",
            "--1.000000000",
            "-.000000000",
            ".000000000",
            "1.00000000a",
            "253402300800.000000000",
            "-62135596801.999999999",
            "99999999999999999999.000000000",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_round_trip_and_refuse_garbage() {
        let a = sample();
        let value = encode_value(&a.envelope);
        assert_eq!(value[0], VALUE_VERSION);
        assert_eq!(decode_value(&value), Ok(a.envelope.clone()));
        let empty = Envelope {
            payload_type: String::new(),
            payload: Vec::new(),
            key_id: String::new(),
            signature: Vec::new(),
        };
        assert_eq!(decode_value(&encode_value(&empty)), Ok(empty));

        assert_eq!(decode_value(&[]), Err(WireError::Truncated("version")));
        assert_eq!(decode_value(&[2]), Err(WireError::Version(2)));
        assert_eq!(
            decode_value(&value[..value.len() - 1]),
            Err(WireError::Truncated("payload"))
        );
        let mut long = value.clone();
        long.push(0);
        assert_eq!(decode_value(&long), Err(WireError::Trailing(1)));
        let mut bad_utf8 = encode_value(&a.envelope);
        bad_utf8[5] = 0xff;
        assert_eq!(
            decode_value(&bad_utf8),
            Err(WireError::NotUtf8("payload_type"))
        );
    }

    #[test]
    fn headers_round_trip() {
        let a = sample();
        let h = headers(&a);
        let pairs: Vec<(&str, Option<&[u8]>)> = h.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(
            pairs[1],
            (HEADER_SEQ, Some(&b"42"[..])),
            "text headers, for tooling"
        );
        assert_eq!(chain_info(pairs.iter().copied()), Ok(ChainInfo::from(&a)));

        // Other headers are ignored; missing, repeated or malformed ones are refused.
        let mut extra = pairs.clone();
        extra.push(("traceparent", Some(b"00-abc")));
        assert_eq!(chain_info(extra), Ok(ChainInfo::from(&a)));
        assert_eq!(
            chain_info(pairs[1..].iter().copied()),
            Err(WireError::MissingHeader(HEADER_CHAIN))
        );
        let mut twice = pairs.clone();
        twice.push(pairs[1]);
        assert_eq!(chain_info(twice), Err(WireError::BadHeader(HEADER_SEQ)));
        for bad_seq in [&b"+42"[..], b"", b"4x", b"99999999999999999999"] {
            let mut bad = pairs.clone();
            bad[1] = (HEADER_SEQ, Some(bad_seq));
            assert_eq!(chain_info(bad), Err(WireError::BadHeader(HEADER_SEQ)));
        }
        let mut bad_chain = pairs.clone();
        bad_chain[0] = (HEADER_CHAIN, Some(b"2600"));
        assert_eq!(
            chain_info(bad_chain),
            Err(WireError::BadHeader(HEADER_CHAIN))
        );
    }

    #[test]
    fn a_patient_chain_round_trips_through_the_headers() {
        let patient = hrx_domain::PatientId::parse("026062001234").expect("a patient id");
        let a = Append {
            chain: ChainKey::Patient(patient.clone()),
            ..sample()
        };
        let h = headers(&a);
        let pairs: Vec<(&str, Option<&[u8]>)> = h.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(pairs[0], (HEADER_CHAIN, Some(&b"patient:026062001234"[..])));
        let info = chain_info(pairs.iter().copied()).expect("hrx headers");
        assert_eq!(info.chain, ChainKey::Patient(patient));
        assert_eq!(info, ChainInfo::from(&a));

        // A patient key with a malformed id is no chain key.
        let mut bad = pairs.clone();
        bad[0] = (HEADER_CHAIN, Some(b"patient:02606200123"));
        assert_eq!(chain_info(bad), Err(WireError::BadHeader(HEADER_CHAIN)));
    }
}
