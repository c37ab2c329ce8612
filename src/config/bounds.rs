//! The ranges every setting must fall in, checked by each flag's own parser, so
//! that a setting's name is written once (in its flag) and its error names it.

use std::{fmt::Display, str::FromStr, time::Duration};

/// Largest key the service accepts at all: longer ones are almost always a bug.
pub(super) const KEY_BYTES_CEILING: usize = 64 * 1024;
/// Redis refuses strings above 512 MiB.
pub(super) const VALUE_BYTES_CEILING: usize = 512 * 1024 * 1024;
/// A batch above this would hold Redis's single thread for too long.
pub(super) const BATCH_CEILING: usize = 10_000;
/// The largest message gRPC framing can carry comfortably.
pub(super) const MESSAGE_BYTES_CEILING: usize = 512 * 1024 * 1024;
/// Room for the protobuf framing around the largest key and value in one message.
pub const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;
/// A ceiling for counts of concurrent things (requests, connections, waiters, streams).
pub(super) const CONCURRENCY_CEILING: usize = 1_000_000;
/// The longest key prefix; it is repeated in every key.
pub(super) const PREFIX_BYTES_CEILING: usize = 64;
/// Most sessions per user: Create reads them all when a user goes over the limit.
pub(super) const SESSIONS_PER_USER_CEILING: usize = 10_000;

pub(super) const SECOND: Duration = Duration::from_secs(1);
/// The most replicas `--lock-min-replicas` may ask for.
pub(super) const MIN_REPLICAS_CEILING: u32 = 64;
pub(super) const MINUTE: Duration = Duration::from_secs(60);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);
/// humantime's year: 365.25 days.
pub(super) const YEAR: Duration = Duration::from_secs(31_557_600);

/// A parser of durations between `min` and `max` (humantime syntax: `500ms`, `2s`, `1h 30m`).
pub(super) fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let value = humantime::parse_duration(text).map_err(|error| error.to_string())?;
        if value < min || value > max {
            return Err(if min.is_zero() {
                format!("must be at most {}", humantime::format_duration(max))
            } else {
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                )
            });
        }
        Ok(value)
    }
}

/// A parser of ratios from 0 to 1.
pub(super) fn ratio(text: &str) -> Result<f64, String> {
    let value: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{value} is not between 0 and 1"));
    }
    Ok(value)
}

/// A parser of counts from 1 to `ceiling`.
pub(super) fn count_in<T>(ceiling: usize) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + TryInto<u64> + Copy,
    T::Err: Display,
{
    move |text| {
        let value: T = text.trim().parse().map_err(|error: T::Err| error.to_string())?;
        let wide: u64 = value.try_into().unwrap_or(u64::MAX);
        if wide == 0 || wide > ceiling as u64 {
            return Err(format!("{wide} is not between 1 and {ceiling}"));
        }
        Ok(value)
    }
}
