//! Opaque cursors. A timeline cursor is the (occurred_at, event_id) of the last record
//! returned, so paging is stable while records arrive: a new record sorts either
//! before the cursor (not shown in later pages) or after it (shown once). A follow
//! cursor is the patient's projection sequence number of the last record delivered.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hrx_domain::{EventId, Timestamp};

const TIMELINE_V1: u8 = 1;
const FOLLOW_V1: u8 = 2;

/// Why a cursor was refused: it is not one this service issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a cursor issued by this service")]
pub struct BadCursor;

pub fn encode_timeline(at: Timestamp, id: EventId) -> String {
    let mut b = Vec::with_capacity(29);
    b.push(TIMELINE_V1);
    b.extend_from_slice(&at.seconds().to_be_bytes());
    b.extend_from_slice(&at.nanos().to_be_bytes());
    b.extend_from_slice(&id.to_bytes());
    URL_SAFE_NO_PAD.encode(b)
}

pub fn decode_timeline(s: &str) -> Result<(Timestamp, EventId), BadCursor> {
    let b = URL_SAFE_NO_PAD.decode(s).map_err(|_| BadCursor)?;
    if b.len() != 29 || b[0] != TIMELINE_V1 {
        return Err(BadCursor);
    }
    let seconds = i64::from_be_bytes(b[1..9].try_into().map_err(|_| BadCursor)?);
    let nanos = i32::from_be_bytes(b[9..13].try_into().map_err(|_| BadCursor)?);
    let at = Timestamp::new(seconds, nanos).map_err(|_| BadCursor)?;
    let uuid: [u8; 16] = b[13..29].try_into().map_err(|_| BadCursor)?;
    Ok((at, EventId::from_bytes(uuid)))
}

pub fn encode_follow(patient_seq: u64) -> String {
    let mut b = vec![FOLLOW_V1];
    b.extend_from_slice(&patient_seq.to_be_bytes());
    URL_SAFE_NO_PAD.encode(b)
}

/// Empty means "from the beginning".
pub fn decode_follow(s: &str) -> Result<u64, BadCursor> {
    if s.is_empty() {
        return Ok(0);
    }
    let b = URL_SAFE_NO_PAD.decode(s).map_err(|_| BadCursor)?;
    if b.len() != 9 || b[0] != FOLLOW_V1 {
        return Err(BadCursor);
    }
    Ok(u64::from_be_bytes(
        b[1..9].try_into().map_err(|_| BadCursor)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = Timestamp::new(1_800_000_000, 5).unwrap();
        let id = EventId::parse("0190f5a2-7c3e-7b61-9d2a-3c4b5d6e7f80").unwrap();
        assert_eq!(decode_timeline(&encode_timeline(at, id)), Ok((at, id)));
        assert_eq!(decode_follow(&encode_follow(42)), Ok(42));
        assert_eq!(decode_follow(""), Ok(0));
        for bad in ["x", "!!!", &encode_follow(1), "AAAA"] {
            assert_eq!(decode_timeline(bad), Err(BadCursor));
        }
        assert_eq!(decode_follow(&encode_timeline(at, id)), Err(BadCursor));
    }
}
