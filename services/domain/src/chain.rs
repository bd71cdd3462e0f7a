//! Hash-chain rules: where an authenticated event stands in its facility's chain
//! (or the registry's). Pure: the caller supplies what it knows of the chain.

use crate::event::Link;
use crate::ids::{EventId, Sha256};
use crate::rejection::{Reason, Rejection};
use crate::time::Timestamp;

/// The last accepted event of a chain. An empty chain has seq 0 and a zero hash, so that
/// seq 1 must carry `prev_hash` = 32 zero bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChainHead {
    pub seq: u64,
    pub event_hash: Sha256,
    /// `None` for an empty chain.
    pub event_id: Option<EventId>,
    /// The head event's `recorded_at`: the next event may not claim an earlier one.
    /// `None` for an empty chain, and where the chain's index predates it.
    pub recorded_at: Option<Timestamp>,
}

impl ChainHead {
    pub const EMPTY: ChainHead = ChainHead {
        seq: 0,
        event_hash: Sha256::ZERO,
        event_id: None,
        recorded_at: None,
    };

    /// The head after `link` (whose hash is `event_hash`) extended the chain.
    pub fn after(link: &Link, event_hash: Sha256) -> Self {
        Self {
            seq: link.seq,
            event_hash,
            event_id: Some(link.event_id),
            recorded_at: Some(link.recorded_at),
        }
    }
}

/// An event already in the chain, found by event id or by seq.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Prior {
    pub event_id: EventId,
    pub seq: u64,
    pub event_hash: Sha256,
}

/// What the caller knows of the chain around an incoming event. A store passes the
/// accepted event with the same id and the one at the same seq, if any; a caller that
/// knows only the head (the CLI, the test vectors) uses [`ChainContext::head_only`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChainContext {
    pub head: ChainHead,
    pub same_event_id: Option<Prior>,
    pub same_seq: Option<Prior>,
}

impl ChainContext {
    /// Context from the head alone: the head itself is the only prior event known.
    pub fn head_only(head: ChainHead, link: &Link) -> Self {
        let head_prior = head.event_id.map(|event_id| Prior {
            event_id,
            seq: head.seq,
            event_hash: head.event_hash,
        });
        Self {
            head,
            same_event_id: head_prior.filter(|p| p.event_id == link.event_id),
            same_seq: head_prior.filter(|p| p.seq == link.seq),
        }
    }
}

/// An authenticated event's place in its chain.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChainStep {
    /// seq = head + 1 and prev_hash = head hash: the event extends the chain.
    Extends,
    /// The same event again (same id or seq, same hash): acknowledge, don't apply.
    Duplicate,
}

/// Step 8 of verification.
pub fn check(ctx: &ChainContext, link: &Link, event_hash: Sha256) -> Result<ChainStep, Rejection> {
    let fork = || {
        Rejection::new(
            Reason::Fork,
            "an event with this event_id or seq is already in the chain with a different hash",
        )
    };
    if let Some(prior) = ctx.same_event_id {
        return if prior.event_hash == event_hash {
            Ok(ChainStep::Duplicate)
        } else {
            Err(fork())
        };
    }
    let head = &ctx.head;
    if link.seq <= head.seq {
        // Without the event at this seq at hand, it cannot be the one recorded there.
        return match ctx.same_seq {
            Some(prior) if prior.event_hash == event_hash => Ok(ChainStep::Duplicate),
            _ => Err(fork()),
        };
    }
    if link.seq > head.seq + 1 {
        return Err(Rejection::sequence_gap(head.seq, link.seq));
    }
    if link.prev_hash != head.event_hash {
        return Err(Rejection::new(
            Reason::ChainMismatch,
            "prev_hash is not the event hash of the facility's head",
        ));
    }
    Ok(ChainStep::Extends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn link(seq: u64, prev: Sha256, id: u128) -> Link {
        Link {
            event_id: EventId::from_uuid(uuid::Uuid::from_u128(id)),
            seq,
            prev_hash: prev,
            recorded_at: Timestamp::from_unix_seconds(1_700_000_000).unwrap(),
        }
    }

    fn h(b: u8) -> Sha256 {
        Sha256::from_bytes([b; 32])
    }

    #[test]
    fn given_empty_chain_seq1_with_zero_prev_extends() {
        let l = link(1, Sha256::ZERO, 1);
        let ctx = ChainContext::head_only(ChainHead::EMPTY, &l);
        assert_eq!(check(&ctx, &l, h(1)), Ok(ChainStep::Extends));
    }

    #[test]
    fn given_head_next_with_wrong_prev_is_a_mismatch() {
        let first = link(1, Sha256::ZERO, 1);
        let head = ChainHead::after(&first, h(1));
        let l = link(2, h(9), 2);
        let ctx = ChainContext::head_only(head, &l);
        assert_eq!(
            check(&ctx, &l, h(2)).unwrap_err().reason(),
            Reason::ChainMismatch
        );
    }

    #[test]
    fn gap_duplicate_and_fork() {
        let first = link(1, Sha256::ZERO, 1);
        let head = ChainHead::after(&first, h(1));
        let gap = link(3, h(1), 3);
        assert_eq!(
            check(&ChainContext::head_only(head, &gap), &gap, h(3))
                .unwrap_err()
                .reason(),
            Reason::SequenceGap
        );
        assert_eq!(
            check(&ChainContext::head_only(head, &first), &first, h(1)),
            Ok(ChainStep::Duplicate)
        );
        let other = link(1, Sha256::ZERO, 7);
        assert_eq!(
            check(&ChainContext::head_only(head, &other), &other, h(7))
                .unwrap_err()
                .reason(),
            Reason::Fork
        );
        // Same event id re-used at a new seq with a new hash: a fork too.
        let reused = link(2, h(1), 1);
        assert_eq!(
            check(&ChainContext::head_only(head, &reused), &reused, h(8))
                .unwrap_err()
                .reason(),
            Reason::Fork
        );
    }
}
