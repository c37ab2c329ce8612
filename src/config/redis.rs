//! Which Redis the settings name, and the rules for its URLs, parsed once into
//! the [`RedisTarget`] the connection code is given. The URLs' errors name the
//! scheme, never echo the URL (it may hold a password).

use ::redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::{Config, ConfigError, invalid};

/// Which Redis the settings name, before its URLs are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedisMode<'a> {
    /// None: a private development redis-server.
    Development,
    /// One node (REDIS_URL).
    Standalone(&'a str),
    /// A Redis Cluster's seed nodes.
    Cluster(&'a [String]),
    /// Sentinels and the master name they monitor.
    Sentinel {
        /// The Sentinels' URLs.
        nodes: &'a [String],
        /// The master name.
        master: &'a str,
    },
}

/// The Redis the configuration names, every URL parsed and checked once, here:
/// the connection code is given these, never a URL.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// None: a private development redis-server.
    Development,
    /// One node (REDIS_URL).
    Standalone(ConnectionInfo),
    /// A Redis Cluster's seed nodes.
    Cluster(Vec<ConnectionInfo>),
    /// Sentinels and the master name they monitor.
    Sentinel {
        /// The Sentinels.
        nodes: Vec<ConnectionInfo>,
        /// The master name.
        master: String,
    },
}

/// Whether a parsed URL is `rediss://`.
fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

/// Parses one Redis URL by every rule the service has for it. Its errors name
/// the scheme, never echo the URL (it may hold a password).
fn parse_redis_url(url: &str, setting: &str, env: &str, unix: bool) -> Result<ConnectionInfo, ConfigError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("redis" | "rediss") => {}
        Some("unix" | "redis+unix") if unix => {}
        _ if unix => return Err(invalid(setting, env, "must start with redis://, rediss:// or unix://")),
        _ => return Err(invalid(setting, env, "must be redis:// or rediss:// URLs")),
    }
    let info = url
        .into_connection_info()
        .map_err(|error| invalid(setting, env, format_args!("cannot be parsed ({})", error.category())))?;
    match info.addr() {
        ConnectionAddr::Tcp(..) | ConnectionAddr::Unix(_) => {}
        ConnectionAddr::TcpTls { insecure: false, .. } => {}
        ConnectionAddr::TcpTls { insecure: true, .. } => {
            return Err(invalid(
                setting,
                env,
                "rediss:// with #insecure is refused: certificates are always verified \
                 (use --redis-ca-file for a private CA)",
            ));
        }
        _ => return Err(invalid(setting, env, "names an unsupported kind of address")),
    }
    Ok(info)
}

impl Config {
    pub(super) fn validate_redis(&self) -> Result<(), ConfigError> {
        let chosen: Vec<&str> = [
            (self.redis_url.is_some(), "REDIS_URL"),
            (!self.redis_cluster_nodes.is_empty(), "--redis-cluster-nodes"),
            (!self.redis_sentinel_nodes.is_empty(), "--redis-sentinel-nodes"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if chosen.len() > 1 {
            return Err(invalid(
                "redis-url",
                "REDIS_URL",
                format_args!(
                    "set exactly one of REDIS_URL, --redis-cluster-nodes and --redis-sentinel-nodes, not {}",
                    chosen.join(" and ")
                ),
            ));
        }
        if self.redis_sentinel_nodes.is_empty() != self.redis_sentinel_master.is_none() {
            return Err(invalid(
                "redis-sentinel-master",
                "CACHELOCK_REDIS_SENTINEL_MASTER",
                "and --redis-sentinel-nodes go together: set both or neither",
            ));
        }
        let urls: Vec<ConnectionInfo> = match self.redis_target()? {
            RedisTarget::Development => return self.validate_development_redis(),
            RedisTarget::Standalone(info) => vec![info],
            RedisTarget::Cluster(nodes) => nodes,
            RedisTarget::Sentinel { nodes, master } => {
                if master.is_empty() || master.chars().any(char::is_whitespace) {
                    return Err(invalid(
                        "redis-sentinel-master",
                        "CACHELOCK_REDIS_SENTINEL_MASTER",
                        "must be a master name without spaces",
                    ));
                }
                nodes
            }
        };
        let sentinel = matches!(self.redis_mode(), RedisMode::Sentinel { .. });
        self.validate_redis_nodes(&urls, sentinel)
    }

    /// Checks the nodes' URLs against each other and the TLS and login settings;
    /// `sentinel`: the URLs are the Sentinels'.
    fn validate_redis_nodes(&self, urls: &[ConnectionInfo], sentinel: bool) -> Result<(), ConfigError> {
        let tls = urls.iter().filter(|info| is_tls(info)).count();
        if tls != 0 && tls != urls.len() {
            return Err(invalid(
                "redis-cluster-nodes",
                "CACHELOCK_REDIS_CLUSTER_NODES",
                "mixes rediss:// and redis:// URLs: use one scheme for every node",
            ));
        }
        if let Some(ca_file) = &self.redis_ca_file {
            if tls == 0 {
                return Err(invalid(
                    "redis-ca-file",
                    "CACHELOCK_REDIS_CA_FILE",
                    "needs rediss:// Redis URLs",
                ));
            }
            if !ca_file.is_file() {
                return Err(invalid(
                    "redis-ca-file",
                    "CACHELOCK_REDIS_CA_FILE",
                    format_args!("{} is not a readable file", ca_file.display()),
                ));
            }
        }
        // Behind Sentinel the URLs' login is the Sentinels'; elsewhere the data
        // nodes' login comes from one place only.
        let in_urls = urls.iter().any(|info| {
            let login = info.redis_settings();
            login.username().is_some() || login.password().is_some()
        });
        if in_urls && !sentinel && (self.redis_username.is_some() || self.redis_password.is_some()) {
            return Err(invalid(
                "redis-password",
                "CACHELOCK_REDIS_PASSWORD",
                "is set, and the Redis URL carries a login too: set it in one place",
            ));
        }
        Ok(())
    }

    /// The development Redis is for a developer's machine: it takes no Redis
    /// settings, and no public listener.
    fn validate_development_redis(&self) -> Result<(), ConfigError> {
        for (set, setting, env) in [
            (self.redis_ca_file.is_some(), "redis-ca-file", "CACHELOCK_REDIS_CA_FILE"),
            (
                self.redis_username.is_some(),
                "redis-username",
                "CACHELOCK_REDIS_USERNAME",
            ),
            (
                self.redis_password.is_some(),
                "redis-password",
                "CACHELOCK_REDIS_PASSWORD",
            ),
        ] {
            if set {
                return Err(invalid(setting, env, "needs a Redis: set REDIS_URL"));
            }
        }
        // A development Redis behind a public listener is almost always a
        // mistyped or missing REDIS_URL on a real host.
        if !self.listen.ip().is_loopback() {
            return Err(invalid(
                "redis-url",
                "REDIS_URL",
                format_args!(
                    "is not set, and the private development redis-server is only started for a \
                     loopback --listen address, not {}: set REDIS_URL",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// The Redis the configuration names, its URLs parsed.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the setting whose URL cannot be used.
    pub fn redis_target(&self) -> Result<RedisTarget, ConfigError> {
        let parse_all = |urls: &[String], setting: &str, env: &str| {
            urls.iter()
                .map(|url| parse_redis_url(url, setting, env, false))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match self.redis_mode() {
            RedisMode::Development => RedisTarget::Development,
            RedisMode::Standalone(url) => {
                RedisTarget::Standalone(parse_redis_url(url, "redis-url", "REDIS_URL", true)?)
            }
            RedisMode::Cluster(nodes) => RedisTarget::Cluster(parse_all(
                nodes,
                "redis-cluster-nodes",
                "CACHELOCK_REDIS_CLUSTER_NODES",
            )?),
            RedisMode::Sentinel { nodes, master } => RedisTarget::Sentinel {
                nodes: parse_all(nodes, "redis-sentinel-nodes", "CACHELOCK_REDIS_SENTINEL_NODES")?,
                master: master.to_owned(),
            },
        })
    }

    /// Which Redis the configuration names.
    fn redis_mode(&self) -> RedisMode<'_> {
        if let Some(url) = &self.redis_url {
            RedisMode::Standalone(url)
        } else if !self.redis_cluster_nodes.is_empty() {
            RedisMode::Cluster(&self.redis_cluster_nodes)
        } else if let (false, Some(master)) = (self.redis_sentinel_nodes.is_empty(), &self.redis_sentinel_master) {
            RedisMode::Sentinel {
                nodes: &self.redis_sentinel_nodes,
                master,
            }
        } else {
            RedisMode::Development
        }
    }
}
