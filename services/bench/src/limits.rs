//! The machine's limits for the same work: ring Ed25519 verification of the very PAE
//! bytes the node will verify, on one core and on all of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hrx_domain::{Envelope, PublicKey};
use ring::signature::{ED25519, UnparsedPublicKey};

/// One signed message, as the verifier sees it.
#[derive(Clone, Debug)]
pub struct VerifyItem {
    pub public_key: [u8; 32],
    pub pae: Vec<u8>,
    pub signature: Vec<u8>,
}

impl VerifyItem {
    pub fn new(key: &PublicKey, envelope: &Envelope) -> Self {
        Self {
            public_key: *key.as_bytes(),
            pae: envelope.pae(),
            signature: envelope.signature.clone(),
        }
    }
}

/// Verifies `items` round-robin for at least `duration` on one thread; returns
/// verifications per second. Panics if a signature does not verify (the harness
/// signed them: that would be a bug, and the figure would be meaningless).
fn verify_loop(items: &[VerifyItem], duration: Duration) -> (u64, Duration) {
    let started = Instant::now();
    let mut n = 0u64;
    'outer: loop {
        for item in items {
            UnparsedPublicKey::new(&ED25519, &item.public_key)
                .verify(&item.pae, &item.signature)
                .expect("the harness's own signatures verify");
            n += 1;
            if n.is_multiple_of(64) && started.elapsed() >= duration {
                break 'outer;
            }
        }
        if items.is_empty() {
            break;
        }
    }
    (n, started.elapsed())
}

/// Verifications per second on `threads` threads, each verifying for `duration`.
pub fn verify_rate(items: Arc<Vec<VerifyItem>>, threads: usize, duration: Duration) -> f64 {
    let threads = threads.max(1);
    let started = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let items = items.clone();
                s.spawn(move || {
                    // Each thread starts at a different place in the stream.
                    let offset = if items.is_empty() {
                        0
                    } else {
                        t * items.len() / threads
                    };
                    let rotated: Vec<VerifyItem> = items[offset..]
                        .iter()
                        .chain(&items[..offset])
                        .cloned()
                        .collect();
                    verify_loop(&rotated, duration).0
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a verify thread panicked"))
            .sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrx_domain::SigningKey;
    use hrx_domain::dsse::PayloadType;

    #[test]
    fn verifies_real_signatures() {
        let key = SigningKey::from_seed(&[5; 32]).unwrap();
        let items: Vec<_> = (0..10u8)
            .map(|i| {
                let e = key.sign(PayloadType::FacilityEvent, vec![i; 700]);
                VerifyItem::new(&key.public_key(), &e)
            })
            .collect();
        let rate = verify_rate(Arc::new(items), 2, Duration::from_millis(50));
        assert!(rate > 0.0);
    }
}
