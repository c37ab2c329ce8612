//! The one Redis connection the whole process shares, the development
//! redis-server, and the key builder.
//!
//! [`Redis`] wraps a lazily connected, multiplexed, self-reconnecting
//! [`ConnectionManager`]: the process starts while Redis is down, every RPC
//! pipelines its commands onto the same socket, and a lost connection is
//! re-established in the background with capped exponential backoff.

pub mod embedded;
pub mod keys;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{
    Client, IntoConnectionInfo, RedisResult, TlsCertificates,
    aio::{ConnectionManager, ConnectionManagerConfig},
    io::tcp::{TcpSettings, socket2::TcpKeepalive},
};

use crate::{
    config::Config,
    error::{Effect, Error, StartError},
};

pub use keys::Keys;

/// How many reconnect attempts one outage triggers before the next command or
/// health probe starts a fresh series.
const RECONNECT_ATTEMPTS: usize = 8;
/// Time between TCP keepalive probes once they have started.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// The shared Redis connection. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct Redis {
    client: Client,
    manager: ConnectionManager,
    /// What the health prober last saw; true until it has seen otherwise.
    reachable: Arc<AtomicBool>,
}

impl Redis {
    /// Sets up the connection to `url` without connecting yet; the first command
    /// (or the health prober) connects.
    ///
    /// # Errors
    /// [`StartError::RedisConfig`] when the URL or the CA file cannot be used.
    pub fn connect_lazily(url: &str, config: &Config) -> Result<Redis, StartError> {
        let config_error = |e: redis::RedisError| StartError::RedisConfig(e.category().to_owned());
        let tcp = TcpSettings::default().set_nodelay(true).set_keepalive(
            TcpKeepalive::new()
                .with_time(config.redis_keepalive)
                .with_interval(KEEPALIVE_INTERVAL),
        );
        let info = url.into_connection_info().map_err(config_error)?.set_tcp_settings(tcp);
        let client = match &config.redis_ca_file {
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|source| StartError::Io {
                    context: format!("cannot read --redis-ca-file {}", path.display()),
                    source,
                })?;
                Client::build_with_tls(
                    info,
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
            }
            None => Client::open(info),
        }
        .map_err(config_error)?;

        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.operation_timeout))
            .set_min_delay(config.reconnect_min_backoff)
            .set_max_delay(config.reconnect_max_backoff)
            .set_exponent_base(2.0)
            .set_number_of_retries(RECONNECT_ATTEMPTS);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config).map_err(config_error)?;
        Ok(Redis {
            client,
            manager,
            reachable: Arc::new(AtomicBool::new(true)),
        })
    }

    /// The client behind the shared connection, for the one connection that
    /// cannot be shared: the pub/sub subscriber.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the last health probe reached Redis. Callers that have a cheap
    /// fallback (the rate limiter's outage policy) use it to skip a wait that
    /// would only end in a timeout.
    pub fn seems_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Records what the health prober saw.
    pub(crate) fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    /// A handle on the shared connection for one operation (a reference-count bump).
    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }
}

/// Runs one Redis operation within `budget`.
///
/// # Errors
/// [`Error::Timeout`] when the budget runs out (`effect` tells the caller whether
/// the command may still have been applied); otherwise the classified Redis error.
pub async fn bounded<T>(
    budget: Duration,
    effect: Effect,
    operation: impl Future<Output = RedisResult<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(budget, operation).await {
        Ok(result) => result.map_err(Error::from),
        Err(_) => Err(Error::Timeout { waited: budget, effect }),
    }
}

/// The URL with any password replaced by `***`, fit for a log line.
pub fn redacted(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<unparseable URL>".to_owned();
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have a password, which this one has.
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let secret = matches!(name.as_ref(), "pass" | "password");
                (
                    name.into_owned(),
                    if secret { "***".to_owned() } else { value.into_owned() },
                )
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(redacted("redis://:hunter2@db:6379/0"), "redis://:***@db:6379/0");
        assert_eq!(redacted("rediss://app:hunter2@db:6380"), "rediss://app:***@db:6380");
        assert!(!redacted("redis+unix:///run/redis.sock?db=1&pass=hunter2").contains("hunter2"));
        assert_eq!(redacted("redis://db:6379"), "redis://db:6379");
        assert_eq!(redacted("not a url"), "<unparseable URL>");
    }
}
