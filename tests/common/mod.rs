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
