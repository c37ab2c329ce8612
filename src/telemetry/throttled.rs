//! One warning per kind of event every few seconds, however many there are: a
//! caller that is refused a thousand times a second must not flood the log.

use std::{
    fmt::Display,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::warn;

/// How often one kind of event is logged, at most.
const INTERVAL: Duration = Duration::from_secs(10);

/// Counts events of one kind and logs them at most once per interval, with
/// how many there were since the last line.
pub struct ThrottledLog {
    what: &'static str,
    since_logged: AtomicU64,
    last_logged: Mutex<Option<Instant>>,
}

impl ThrottledLog {
    /// A log for events described by `what` ("requests shed: --max-in-flight reached").
    pub const fn new(what: &'static str) -> ThrottledLog {
        ThrottledLog {
            what,
            since_logged: AtomicU64::new(0),
            last_logged: Mutex::new(None),
        }
    }

    /// Records one event; logs if the last line is older than the interval.
    pub fn record(&self) {
        if let Some(count) = self.count() {
            warn!(count, "{}", self.what);
        }
    }

    /// Records one event caused by `cause`; a line that is logged names the
    /// latest cause.
    pub fn record_because(&self, cause: &dyn Display) {
        if let Some(count) = self.count() {
            warn!(count, cause = %cause, "{}", self.what);
        }
    }

    /// Counts one event; the count since the last line, when it is time for another.
    fn count(&self) -> Option<u64> {
        self.since_logged.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_logged.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|last| last.elapsed() < INTERVAL) {
            return None;
        }
        *last = Some(Instant::now());
        drop(last);
        Some(self.since_logged.swap(0, Ordering::Relaxed))
    }
}
