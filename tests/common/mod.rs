//! The test kit (`testkit/`), for these tests: real redis-servers the tests
//! start themselves, the service in-process, fault injectors and helpers.

#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub use cachelock_testkit::*;

/// Runs each named scenario — an `async fn(Backend)` — as a test against every
/// topology: `standalone::name`, `cluster::name` and `sentinel::name`.
#[macro_export]
macro_rules! in_every_mode {
    ($($scenario:ident),+ $(,)?) => {
        cachelock_testkit::in_every_mode!($($scenario),+);
    };
}

/// The time now, as a duration since the Unix epoch.
pub fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Asserts that `reset_after`, answered between `before` and `after` (Unix
/// times), points at an instant that `boundary` picks out: Redis read its clock
/// somewhere between the two, and rounded the reset up to the microsecond.
pub fn assert_resets_at(
    before: std::time::Duration,
    after: std::time::Duration,
    reset_after: std::time::Duration,
    boundary: impl Fn(std::time::Duration) -> bool,
) {
    let earliest = (before + reset_after).saturating_sub(std::time::Duration::from_micros(2));
    let latest = after + reset_after;
    let mut instant = earliest;
    while instant <= latest {
        if boundary(instant) {
            return;
        }
        instant += std::time::Duration::from_micros(1);
    }
    panic!("no boundary between {earliest:?} and {latest:?} (reset after {reset_after:?})");
}
