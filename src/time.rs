//! Durations in the units the service's neighbours speak: whole milliseconds
//! for Redis (PX, PTTL, script arguments), protobuf's Duration and Timestamp
//! for callers, and rounded milliseconds for messages. Every conversion
//! saturates instead of wrapping or failing.

use std::time::Duration;

/// `duration` in whole milliseconds, rounded down.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A number of milliseconds Redis answered; a negative one is none.
pub fn from_millis(millis: i64) -> Duration {
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// `duration` rounded down to whole milliseconds, for messages ("1s 250ms").
pub fn whole_millis(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(millis(duration)))
}

/// `duration` as protobuf.
pub fn duration_to_proto(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        // Below one billion, so it fits.
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// A remaining time to live in milliseconds (Redis PTTL) as protobuf, or
/// `None` for a key without expiry (-1) or a missing one (-2).
pub fn ttl_from_millis(millis: i64) -> Option<prost_types::Duration> {
    if millis < 0 {
        return None;
    }
    Some(duration_to_proto(from_millis(millis)))
}

/// A Unix time in milliseconds as a protobuf Timestamp.
pub fn timestamp(unix_millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix_millis.div_euclid(1000),
        nanos: i32::try_from(unix_millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate_and_keep_their_sign() {
        assert_eq!(millis(Duration::from_micros(1_999)), 1);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(from_millis(-2), Duration::ZERO);
        assert_eq!(ttl_from_millis(-1), None);
        let ttl = ttl_from_millis(1_250).unwrap_or_default();
        assert_eq!((ttl.seconds, ttl.nanos), (1, 250_000_000));
        let before_1970 = timestamp(-1);
        assert_eq!((before_1970.seconds, before_1970.nanos), (-1, 999_000_000));
    }
}
