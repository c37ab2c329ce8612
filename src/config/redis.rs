//! Which Redis the settings name, and the rules for its URLs. The URLs' errors
//! name the scheme, never echo the URL (it may hold a password).

use super::{Config, ConfigError, invalid};

/// Which Redis the configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode<'a> {
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

/// Checks one Redis URL; its errors name the scheme, never echo the URL (it may hold a password).
fn check_redis_url(url: &str, setting: &str, env: &str, unix: bool) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("redis" | "rediss") => {}
        Some("unix" | "redis+unix") if unix => {}
        _ if unix => return Err(invalid(setting, env, "must start with redis://, rediss:// or unix://")),
        _ => return Err(invalid(setting, env, "must be redis:// or rediss:// URLs")),
    }
    if let Err(error) = redis::IntoConnectionInfo::into_connection_info(url) {
        return Err(invalid(
            setting,
            env,
            format_args!("cannot be parsed ({})", error.category()),
        ));
    }
    Ok(())
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
        let urls: Vec<&str> = match self.redis_mode() {
            RedisMode::Development => {
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
                return Ok(());
            }
            RedisMode::Standalone(url) => {
                check_redis_url(url, "redis-url", "REDIS_URL", true)?;
                vec![url]
            }
            RedisMode::Cluster(nodes) => {
                for node in nodes {
                    check_redis_url(node, "redis-cluster-nodes", "CACHELOCK_REDIS_CLUSTER_NODES", false)?;
                }
                nodes.iter().map(String::as_str).collect()
            }
            RedisMode::Sentinel { nodes, master } => {
                for node in nodes {
                    check_redis_url(node, "redis-sentinel-nodes", "CACHELOCK_REDIS_SENTINEL_NODES", false)?;
                }
                if master.is_empty() || master.chars().any(char::is_whitespace) {
                    return Err(invalid(
                        "redis-sentinel-master",
                        "CACHELOCK_REDIS_SENTINEL_MASTER",
                        "must be a master name without spaces",
                    ));
                }
                nodes.iter().map(String::as_str).collect()
            }
        };
        let tls = urls.iter().filter(|url| url.starts_with("rediss://")).count();
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
        let in_urls = urls.iter().any(|url| {
            url::Url::parse(url).is_ok_and(|parsed| parsed.password().is_some() || !parsed.username().is_empty())
        });
        if in_urls
            && !matches!(self.redis_mode(), RedisMode::Sentinel { .. })
            && (self.redis_username.is_some() || self.redis_password.is_some())
        {
            return Err(invalid(
                "redis-password",
                "CACHELOCK_REDIS_PASSWORD",
                "is set, and the Redis URL carries a login too: set it in one place",
            ));
        }
        Ok(())
    }

    /// Which Redis the configuration names.
    pub fn redis_mode(&self) -> RedisMode<'_> {
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
