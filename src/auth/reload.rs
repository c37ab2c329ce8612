//! The auth file as loaded, read again when it changes: a change takes effect
//! for the next request and ends what it revokes; a file that cannot be used
//! leaves the clients loaded before in force.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    file::{AuthFileError, Client, Clients},
    tls::ReloadableTls,
};
use crate::redis::Keys;

/// How often the TLS files and the auth file are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// How often a problem reading the auth file is logged again while it lasts.
const PROBLEM_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The clients of the auth file as last loaded, with their request and write
/// budgets (each with the rate it was made for).
pub(super) struct Loaded {
    /// The clients.
    pub(super) clients: Clients,
    /// Each client's budget of requests per second, if it has one.
    pub(super) budgets: HashMap<Arc<str>, Budget>,
    /// Each client's budget of written bytes per second, if it has one.
    pub(super) write_budgets: HashMap<Arc<str>, Budget>,
}

/// A client's budget, and the rate per second it allows.
#[derive(Clone)]
pub(super) struct Budget {
    per_second: NonZeroU32,
    /// Shared by every request of the client.
    pub(super) limiter: Arc<DefaultDirectRateLimiter>,
}

impl Loaded {
    /// The clients of a file just read; a client whose budget did not change
    /// since `before` keeps what it had used of it (a reload is no refill).
    fn new(clients: Clients, before: Option<&Loaded>) -> Loaded {
        let budgets_of = |rate: fn(&Client) -> Option<NonZeroU32>, kept: Option<&HashMap<Arc<str>, Budget>>| {
            clients
                .clients
                .iter()
                .filter_map(|client| {
                    let per_second = rate(client)?;
                    let budget = kept
                        .and_then(|kept| kept.get(&client.name))
                        .filter(|budget| budget.per_second == per_second)
                        .cloned()
                        .unwrap_or_else(|| Budget {
                            per_second,
                            limiter: Arc::new(RateLimiter::direct(Quota::per_second(per_second))),
                        });
                    Some((client.name.clone(), budget))
                })
                .collect::<HashMap<_, _>>()
        };
        let budgets = budgets_of(
            |client| client.max_requests_per_second,
            before.map(|before| &before.budgets),
        );
        let write_budgets = budgets_of(
            |client| client.max_write_bytes_per_second,
            before.map(|before| &before.write_budgets),
        );
        Loaded {
            clients,
            budgets,
            write_budgets,
        }
    }
}

/// The auth file, reloaded when it changes.
pub struct AuthFile {
    path: PathBuf,
    keys: Keys,
    current: ArcSwap<Loaded>,
    last_text: Mutex<Vec<u8>>,
    /// Bumped at every reload that took effect, for [`Caller::revoked`].
    changes: watch::Sender<u64>,
    /// The last problem reading the file, and when it was logged.
    problem: Mutex<Option<(String, Instant)>>,
}

impl AuthFile {
    /// The clients as loaded now.
    pub(super) fn loaded(&self) -> arc_swap::Guard<Arc<Loaded>> {
        self.current.load()
    }

    /// Changes with every reload that takes effect.
    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Reads the auth file at `path`.
    ///
    /// # Errors
    /// An [`AuthFileError`] naming the file, the line and the problem.
    pub fn load(path: PathBuf, keys: Keys) -> Result<AuthFile, AuthFileError> {
        let text = std::fs::read(&path).unwrap_or_default();
        let clients = Clients::load(&path, &keys)?;
        info!(path = %path.display(), clients = clients.clients.len(), "auth file loaded");
        Ok(AuthFile {
            path,
            keys,
            current: ArcSwap::from_pointee(Loaded::new(clients, None)),
            last_text: Mutex::new(text),
            changes: watch::Sender::new(0),
            problem: Mutex::new(None),
        })
    }

    /// Reads the file again; when it changed and is good, it takes effect for the
    /// next request, and every open stream or wait of a client it removed, or
    /// whose credential, tenant or permission it changed, ends. A file that
    /// cannot be read, is missing or is empty (a writer truncating it in place)
    /// says nothing: the previous clients stay, and a warning is logged until it
    /// is fixed, as for a broken edit. Replace the file atomically (write another
    /// and rename it over this one), as Kubernetes does with a mounted Secret.
    pub fn reload_if_changed(&self) {
        let text = match std::fs::read(&self.path) {
            Ok(text) if text.iter().all(u8::is_ascii_whitespace) => {
                return self.problem("the auth file is empty (a writer truncating it?)".to_owned());
            }
            Ok(text) => text,
            Err(error) => return self.problem(format!("the auth file cannot be read: {error}")),
        };
        let mut last = self.last_text.lock().unwrap_or_else(PoisonError::into_inner);
        if *last == text {
            drop(last);
            *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = None;
            return;
        }
        let parsed = std::str::from_utf8(&text)
            .map_err(|_| AuthFileError(format!("{}: is not UTF-8", self.path.display())))
            .and_then(|text| {
                Clients::parse(text, &self.keys)
                    .map_err(|AuthFileError(reason)| AuthFileError(format!("{}: {reason}", self.path.display())))
            });
        match parsed {
            Ok(clients) => {
                *last = text;
                drop(last);
                *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = None;
                info!(path = %self.path.display(), clients = clients.clients.len(), "auth file reloaded");
                let loaded = Loaded::new(clients, Some(&self.current.load()));
                self.current.store(Arc::new(loaded));
                self.changes.send_modify(|count| *count += 1);
            }
            Err(error) => {
                drop(last);
                self.problem(format!("refused the changed auth file: {error}"));
            }
        }
    }

    /// Logs why the file says nothing new, once per change of reason and then
    /// every [`PROBLEM_LOG_INTERVAL`] while it lasts.
    fn problem(&self, reason: String) {
        let mut problem = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        let due = match problem.as_ref() {
            Some((last, logged)) => *last != reason || logged.elapsed() >= PROBLEM_LOG_INTERVAL,
            None => true,
        };
        if due {
            warn!(
                path = %self.path.display(),
                "{reason}; the clients loaded before stay in force until it is fixed"
            );
            *problem = Some((reason, Instant::now()));
        }
    }
}

/// Re-reads the TLS files and the auth file every [`RELOAD_INTERVAL`]; runs
/// until its task is aborted.
pub async fn reload_on_change(tls: Option<Arc<ReloadableTls>>, auth: Option<Arc<AuthFile>>) {
    let mut interval = tokio::time::interval(RELOAD_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Some(tls) = &tls {
            tls.reload_if_changed();
        }
        if let Some(auth) = &auth {
            auth.reload_if_changed();
        }
    }
}
