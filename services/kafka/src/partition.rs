//! Where a chain lives: Kafka's default partitioner (murmur2) for facilities and
//! patients' statement chains (both on the facility-events topic, by message key; a
//! facility's ingest reports go with its chain, by the facility id), and the mapping between the trait's partition numbers and (topic, Kafka partition).
//!
//! The trait sees one partition space, `0..=N`: facility-events partitions `0..N` keep
//! their numbers, and the registry topic's single partition is `N`. `partitions()` is
//! therefore `N + 1`.

use hrx_ports::ChainKey;

/// Kafka's `Utils.murmur2` (the Java client's default partitioner, and librdkafka's
/// `murmur2_random` for non-null keys), bit for bit: seed `0x9747b28c`, little-endian
/// 4-byte blocks, the same tail handling and final mix.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    // Java's switch falls through from the longest tail to the shortest.
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The facility-events partition of a message key, as Kafka's default partitioner
/// computes it: `toPositive(murmur2(key)) % partitions`.
pub fn key_partition(key: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key.as_bytes()) as u32) & 0x7fff_ffff) % partitions
}

/// The two topics and how the trait's partitions map onto them.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub facility_topic: String,
    pub registry_topic: String,
    /// Partitions of the facility-events topic (N).
    pub facility_partitions: u32,
}

/// One trait partition as Kafka names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    /// The trait's partition number.
    pub partition: u32,
    pub topic: String,
    pub kafka_partition: i32,
}

impl Layout {
    /// `N + 1`: the facility partitions and the registry's.
    pub fn partitions(&self) -> u32 {
        self.facility_partitions + 1
    }

    /// The trait partition holding `chain`.
    pub fn partition_of(&self, chain: &ChainKey) -> u32 {
        match chain {
            ChainKey::Facility(f) => key_partition(f.as_str(), self.facility_partitions),
            // A patient's statements share the facility-events topic, partitioned by
            // their message key like a facility's events.
            ChainKey::Patient(_) => key_partition(&chain.as_key(), self.facility_partitions),
            ChainKey::Registry => self.facility_partitions,
            // A facility's reports sit in its own chain's partition (one append to one
            // partition carries a call's events and its report); the patients' report
            // chain is placed by its key.
            ChainKey::Reports(Some(f)) => key_partition(f.as_str(), self.facility_partitions),
            ChainKey::Reports(None) => key_partition(&chain.as_key(), self.facility_partitions),
        }
    }

    /// The trait partition of a Kafka (topic, partition); `None` for another topic.
    pub fn trait_partition(&self, topic: &str, kafka_partition: i32) -> Option<u32> {
        if topic == self.facility_topic {
            u32::try_from(kafka_partition)
                .ok()
                .filter(|p| *p < self.facility_partitions)
        } else if topic == self.registry_topic && kafka_partition == 0 {
            Some(self.facility_partitions)
        } else {
            None
        }
    }

    /// The topic and Kafka partition of a trait partition; `None` past the end.
    pub fn locate(&self, partition: u32) -> Option<Location> {
        let (topic, kafka_partition) = if partition < self.facility_partitions {
            (&self.facility_topic, partition as i32)
        } else if partition == self.facility_partitions {
            (&self.registry_topic, 0)
        } else {
            return None;
        };
        Some(Location {
            partition,
            topic: topic.clone(),
            kafka_partition,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own vectors (`UtilsTest.testMurmur2`), checked against kafka-clients
    /// 4.4.0's `Utils.murmur2`, plus facility ids of the test suite.
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&str, i32); 10] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
            ("26001", -1_786_071_495),
            ("26012", -151_782_076),
            ("registry", -1_884_019_219),
            ("", 275_646_681),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key.as_bytes()), hash, "murmur2({key:?})");
        }
        // toPositive(h) % 12, as computed by the Java client.
        assert_eq!(key_partition("26001", 12), 5);
        assert_eq!(key_partition("26012", 12), 4);
        assert_eq!(key_partition("26105", 12), 6);
        assert_eq!(key_partition("foobar", 12), 6);
    }

    #[test]
    fn the_registry_is_the_last_partition() {
        let layout = Layout {
            facility_topic: "f".into(),
            registry_topic: "r".into(),
            facility_partitions: 3,
        };
        assert_eq!(layout.partitions(), 4);
        assert_eq!(layout.partition_of(&ChainKey::Registry), 3);
        let registry = layout.locate(3).expect("the registry partition");
        assert_eq!(
            (registry.topic.as_str(), registry.kafka_partition),
            ("r", 0)
        );
        let facility = layout.locate(2).expect("a facility partition");
        assert_eq!(
            (facility.topic.as_str(), facility.kafka_partition),
            ("f", 2)
        );
        assert_eq!(layout.locate(4), None);
        let f = ChainKey::parse("26001").expect("a facility id");
        assert_eq!(layout.partition_of(&f), key_partition("26001", 3));
    }

    #[test]
    fn patient_chains_go_to_the_facility_topic_by_key() {
        let layout = Layout {
            facility_topic: "f".into(),
            registry_topic: "r".into(),
            facility_partitions: 12,
        };
        let chain = ChainKey::parse("patient:026062001234").expect("a patient chain");
        assert!(matches!(chain, ChainKey::Patient(_)));
        let p = layout.partition_of(&chain);
        assert_eq!(p, key_partition("patient:026062001234", 12));
        assert!(
            p < layout.facility_partitions,
            "never the registry partition"
        );
        assert_eq!(layout.locate(p).expect("a partition").topic, "f");
    }

    #[test]
    fn a_facility_s_reports_share_its_chain_s_partition() {
        let layout = Layout {
            facility_topic: "f".into(),
            registry_topic: "r".into(),
            facility_partitions: 12,
        };
        for f in ["26001", "26002", "01001", "79999"] {
            let facility = ChainKey::parse(f).expect("a facility");
            let reports = ChainKey::parse(&format!("reports:{f}")).expect("a report chain");
            assert_eq!(
                layout.partition_of(&reports),
                layout.partition_of(&facility)
            );
        }
        let patients = ChainKey::parse("reports:patients").expect("the patients' reports");
        assert!(layout.partition_of(&patients) < layout.facility_partitions);
    }
}
