//! Durations and timestamps between Rust and the protocol.

use std::time::{Duration, SystemTime};

/// `duration` as the protocol sends it.
pub(crate) fn to_proto(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        // Below one billion: fits.
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// A duration the service sent; zero when unset (or, never, negative).
pub(crate) fn duration_from(duration: Option<prost_types::Duration>) -> Duration {
    duration
        .and_then(|duration| Duration::try_from(duration).ok())
        .unwrap_or_default()
}

/// A timestamp the service sent; `None` when unset.
pub(crate) fn time_from(timestamp: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    timestamp.and_then(|timestamp| SystemTime::try_from(timestamp).ok())
}
