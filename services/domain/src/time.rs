//! Instants and durations on the wire: UTC, nanosecond precision, the same range as
//! `google.protobuf.Timestamp` (years 1 to 9999).

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a timestamp or duration is out of range or unparseable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("timestamp out of range (years 1 to 9999, nanos 0 to 999999999)")]
    OutOfRange,
    #[error("expected an RFC 3339 timestamp")]
    Syntax,
}

/// An instant in UTC. Ordered; what `recorded_at`, `occurred_at`, expiries and validity
/// windows are compared with.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    seconds: i64,
    nanos: u32,
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, as in google.protobuf.Timestamp.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

impl Timestamp {
    /// 9999-12-31T23:59:59.999999999Z, the latest instant of the wire's range.
    pub const MAX: Timestamp = Timestamp {
        seconds: MAX_SECONDS,
        nanos: 999_999_999,
    };

    /// 0001-01-01T00:00:00Z, the earliest instant of the wire's range.
    pub const MIN: Timestamp = Timestamp {
        seconds: MIN_SECONDS,
        nanos: 0,
    };

    pub fn new(seconds: i64, nanos: i32) -> Result<Self, TimeError> {
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
            return Err(TimeError::OutOfRange);
        }
        Ok(Self {
            seconds,
            nanos: nanos as u32,
        })
    }

    pub fn from_unix_seconds(seconds: i64) -> Result<Self, TimeError> {
        Self::new(seconds, 0)
    }

    pub fn now() -> Self {
        Self::from_offset(OffsetDateTime::now_utc())
    }

    fn from_offset(t: OffsetDateTime) -> Self {
        Self {
            seconds: t.unix_timestamp(),
            nanos: t.nanosecond(),
        }
    }

    pub fn seconds(&self) -> i64 {
        self.seconds
    }

    pub fn nanos(&self) -> i32 {
        self.nanos as i32
    }

    /// Nanoseconds since the Unix epoch (fits i128 for the whole range).
    pub fn unix_nanos(&self) -> i128 {
        i128::from(self.seconds) * 1_000_000_000 + i128::from(self.nanos)
    }

    /// This instant with its sub-millisecond part dropped: what a Kafka timestamp
    /// holds, so a receive time reads back as it was judged.
    pub fn truncated_to_millis(&self) -> Self {
        Self {
            seconds: self.seconds,
            nanos: self.nanos - self.nanos % 1_000_000,
        }
    }

    /// Milliseconds since the Unix epoch, rounded down.
    pub fn unix_millis(&self) -> i64 {
        self.seconds * 1000 + i64::from(self.nanos / 1_000_000)
    }

    /// This instant plus a duration, or `None` past the representable range.
    pub fn checked_add(&self, d: Duration) -> Option<Self> {
        let total = self.unix_nanos() + d.as_nanos();
        let seconds = i64::try_from(total.div_euclid(1_000_000_000)).ok()?;
        let nanos = total.rem_euclid(1_000_000_000) as i32;
        Self::new(seconds, nanos).ok()
    }

    /// `self - d`, or `None` before the year 1.
    pub fn checked_sub(&self, d: Duration) -> Option<Self> {
        let nanos = self.unix_nanos() - d.as_nanos();
        let seconds = i64::try_from(nanos.div_euclid(1_000_000_000)).ok()?;
        let sub = i32::try_from(nanos.rem_euclid(1_000_000_000)).ok()?;
        Self::new(seconds, sub).ok()
    }

    pub fn parse_rfc3339(s: &str) -> Result<Self, TimeError> {
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| TimeError::Syntax)?;
        Ok(Self::from_offset(t))
    }

    /// RFC 3339 in UTC (`Z`), with fractional seconds only when non-zero.
    pub fn to_rfc3339(&self) -> String {
        let t = OffsetDateTime::from_unix_timestamp_nanos(self.unix_nanos())
            .expect("range checked at construction");
        t.format(&Rfc3339)
            .expect("RFC 3339 formats every year 1..9999")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

/// A non-negative span of time (break-glass windows).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Duration {
    seconds: i64,
    nanos: i32,
}

impl Duration {
    pub fn new(seconds: i64, nanos: i32) -> Result<Self, TimeError> {
        if seconds < 0 || !(0..1_000_000_000).contains(&nanos) {
            return Err(TimeError::OutOfRange);
        }
        Ok(Self { seconds, nanos })
    }

    pub fn from_secs(seconds: i64) -> Result<Self, TimeError> {
        Self::new(seconds, 0)
    }

    pub fn seconds(&self) -> i64 {
        self.seconds
    }

    pub fn nanos(&self) -> i32 {
        self.nanos
    }

    pub fn as_nanos(&self) -> i128 {
        i128::from(self.seconds) * 1_000_000_000 + i128::from(self.nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        let t = Timestamp::parse_rfc3339("2026-03-02T08:15:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-02T08:15:00Z");
        let t = Timestamp::parse_rfc3339("2026-03-02T15:15:00.5+07:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-02T08:15:00.5Z");
    }

    #[test]
    fn range_is_enforced() {
        assert!(Timestamp::new(MAX_SECONDS + 1, 0).is_err());
        assert!(Timestamp::new(0, 1_000_000_000).is_err());
        assert!(Timestamp::new(0, -1).is_err());
        assert!(Duration::new(-1, 0).is_err());
    }

    #[test]
    fn add_carries_nanos() {
        let t = Timestamp::new(10, 900_000_000).unwrap();
        let u = t
            .checked_add(Duration::new(1, 200_000_000).unwrap())
            .unwrap();
        assert_eq!((u.seconds(), u.nanos()), (12, 100_000_000));
    }
}
