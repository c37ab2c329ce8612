//! Noticing that Redis lost its data, and pausing lock grants until every lease
//! granted before the loss has run out.
//!
//! A Redis restarted without persistence (or failed over to an empty replica, or
//! flushed) forgets every lock. Without care, the next Acquire is granted while
//! the previous holder still works under its lease: mutual exclusion is gone.
//! The Redis documentation's remedy is a delayed restart: grant nothing for as
//! long as the longest lease. Here every instance keeps the id of an epoch
//! marker key (see `src/scripts/epoch.lua`); a marker that vanished or changed
//! means the data is new, and grants pause until the marker's creation plus the
//! longest lease (`--lock-max-ttl`). The check runs on every new connection
//! before it is handed out, and at every health probe.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    connection::{Connection, Request},
    scripts::LuaScript,
};
use crate::ids::random_token;

static EPOCH: LuaScript = LuaScript::new("epoch", include_str!("../scripts/epoch.lua"));

/// How long the marker lives without being checked (it is refreshed on every check).
const MARKER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The epoch script, for loading into Redis ahead of the first check.
pub fn scripts() -> [&'static LuaScript; 1] {
    [&EPOCH]
}

/// What this instance knows of the data's epoch. Cloning shares it.
#[derive(Clone)]
pub struct DataEpoch {
    key: Arc<str>,
    pause: Duration,
    state: Arc<Mutex<Known>>,
}

#[derive(Default)]
struct Known {
    id: Option<String>,
    paused_until: Option<Instant>,
}

impl DataEpoch {
    /// Tracks the marker at `key`; a loss pauses grants for `pause` (the longest lease).
    pub fn new(key: String, pause: Duration) -> DataEpoch {
        DataEpoch {
            key: key.into(),
            pause,
            state: Arc::new(Mutex::new(Known::default())),
        }
    }

    /// How much longer lock grants stay paused; `None` when they are not.
    pub fn paused_for(&self) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .paused_until
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    /// Checks the marker over `connection`.
    ///
    /// # Errors
    /// The Redis error when the check could not run; what was known stays.
    pub async fn check(&self, connection: &mut Connection) -> redis::RedisResult<()> {
        let known = self.state.lock().unwrap_or_else(PoisonError::into_inner).id.clone();
        let fresh = random_token().unwrap_or_else(|_| format!("{:?}", Instant::now()));
        let mut invocation = EPOCH.prepare();
        invocation
            .key(&*self.key)
            .arg(known.as_deref().unwrap_or(""))
            .arg(fresh)
            .arg(millis(self.pause))
            .arg(millis(MARKER_RETENTION));
        let (id, paused_until_ms, now_ms, lost): (String, u64, u64, u8) =
            Request::Script(&invocation).send(connection).await?;
        self.observe(id, paused_until_ms.saturating_sub(now_ms), lost == 1);
        Ok(())
    }

    fn observe(&self, id: String, pause_left_ms: u64, lost: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let was_paused = state.paused_until.is_some_and(|until| until > Instant::now());
        state.paused_until = (pause_left_ms > 0).then(|| Instant::now() + Duration::from_millis(pause_left_ms));
        state.id = Some(id);
        let left = humantime::format_duration(Duration::from_secs(pause_left_ms.div_ceil(1000)));
        if lost {
            warn!(
                paused_for = %left,
                "Redis lost its data (restarted without persistence, failed over to an empty replica, \
                 or flushed): lock grants are paused until every lease granted before may have ended"
            );
        } else if pause_left_ms > 0 && !was_paused {
            warn!(
                paused_for = %left,
                "another instance saw Redis lose its data: lock grants are paused"
            );
        } else if pause_left_ms == 0 && was_paused {
            info!("lock grants resume: every lease granted before Redis lost its data has ended");
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
