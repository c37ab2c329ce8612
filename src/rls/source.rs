//! Where the Envoy API's rules come from: the files `--rls-config` names,
//! read again when they change, an invalid change refused and logged.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::rules::{Rules, RulesError};
use crate::telemetry::{Meter, Metrics};

/// How often the rules' files are read for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_millis(250);

/// The rules in force, and where they are read from.
pub struct RulesSource {
    /// `None`: no rules, none to reload.
    path: Option<PathBuf>,
    current: ArcSwap<Rules>,
    /// What the files held when last read: a reload happens only when it changes.
    last_read: Mutex<Vec<(PathBuf, Vec<u8>)>>,
    meter: Meter,
}

impl RulesSource {
    /// Loads the rules at `path` (a file or a directory of files).
    ///
    /// # Errors
    /// [`RulesError`] when they cannot be read or are not valid.
    pub fn load(path: &Path, meter: Meter) -> Result<RulesSource, RulesError> {
        let last_read = read_files(path);
        let rules = Rules::load(path)?;
        info!(
            path = %path.display(),
            files = rules.files().len(),
            "Envoy rate-limit rules loaded"
        );
        Ok(RulesSource {
            path: Some(path.to_owned()),
            current: ArcSwap::from_pointee(rules),
            last_read: Mutex::new(last_read),
            meter,
        })
    }

    /// No rules: every Envoy request is OK, with no limit.
    pub fn none() -> RulesSource {
        RulesSource {
            path: None,
            current: ArcSwap::from_pointee(Rules::default()),
            last_read: Mutex::new(Vec::new()),
            meter: Meter::off(),
        }
    }

    /// Whether there are files to reload the rules from.
    pub fn has_files(&self) -> bool {
        self.path.is_some()
    }

    /// The rules in force.
    pub fn current(&self) -> Arc<Rules> {
        self.current.load_full()
    }

    /// Reloads the rules if their files changed; an invalid change is logged and
    /// the previous rules stay in force.
    pub fn reload_if_changed(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let read = read_files(path);
        let mut last = self.last_read.lock().unwrap_or_else(PoisonError::into_inner);
        if *last == read {
            return;
        }
        *last = read;
        drop(last);
        match Rules::load(path) {
            Ok(rules) => {
                info!(
                    path = %path.display(),
                    files = rules.files().len(),
                    "Envoy rate-limit rules reloaded"
                );
                self.current.store(Arc::new(rules));
                self.meter
                    .record(|metrics| Metrics::count(&metrics.rls_reloads, "loaded"));
            }
            Err(error) => {
                warn!(%error, "refused the changed Envoy rate-limit rules; the previous rules stay in force");
                self.meter
                    .record(|metrics| Metrics::count(&metrics.rls_reloads, "refused"));
            }
        }
    }

    /// Reads the files for changes every [`RELOAD_INTERVAL`]; runs until aborted.
    pub async fn reload_on_change(self: Arc<Self>) {
        let mut interval = tokio::time::interval(RELOAD_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.reload_if_changed();
        }
    }
}

/// The names and contents of the files under `path` (empty where unreadable), to
/// notice a change: a comparison of contents, not of times, so that a Kubernetes
/// ConfigMap's symlink swap and a same-second edit are both seen.
fn read_files(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut files: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
            files.sort();
            files
        }
        Err(_) => vec![path.to_owned()],
    };
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read(&file).unwrap_or_default();
            (file, text)
        })
        .collect()
}
