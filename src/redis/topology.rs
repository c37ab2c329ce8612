//! Where Redis is: one node, a primary that Sentinels name, or a Cluster.
//!
//! Each [`Topology`] opens the connections a [`super::link::Link`] supervises,
//! so that the services never know which one they run on:
//!
//! - **Standalone**: one multiplexed connection to the URL's node.
//! - **Sentinel**: every connection begins by asking the Sentinels (in turn,
//!   starting with the one that answered last) which node is the primary of
//!   the named master, connects there, and checks with `ROLE` that the node
//!   agrees it is a primary. A connection is replaced — and so the primary
//!   looked up again — when it drops, when a write meets READONLY, when the
//!   health prober finds the node demoted, and when a Sentinel announces
//!   `+switch-master` (see [`watch_failovers`]). redis-rs has no
//!   Sentinel-aware connection that follows a failover; this is that piece.
//! - **Cluster**: redis-rs's async Cluster connection, which holds a
//!   connection to every node, routes each command to its slot's primary,
//!   follows MOVED and ASK, and refreshes the slot map after a failover.
//!   Scripts are loaded on every primary when it opens and again on NOSCRIPT
//!   (a promoted replica never ran SCRIPT LOAD).

use std::{
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use redis::{
    ConnectionInfo,
    cluster::{ClusterClient, ClusterClientBuilder},
    io::tcp::TcpSettings,
};
use socket2::TcpKeepalive;
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{sleep, timeout},
};
use tracing::{info, warn};

use super::link::Backoff;
use super::{
    connect::{ConnectSettings, Endpoint},
    connection::Connection,
    scripts::LuaScript,
};
use crate::error::{Cause, StartError};

/// Time between TCP keepalive probes once they have started (as for one node).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Where Redis is. Cloning is cheap and shares it.
#[derive(Clone)]
pub enum Topology {
    /// One node.
    Standalone(Endpoint),
    /// The primary of a master that Sentinels watch.
    Sentinel(Arc<Sentinels>),
    /// A Redis Cluster.
    Cluster(Arc<Cluster>),
}

/// Which topology, for code that must differ (a cross-slot check, the prober).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One node.
    Standalone,
    /// Behind Sentinels.
    Sentinel,
    /// A Redis Cluster.
    Cluster,
}

/// A connection just opened, and what ends with it.
pub struct Opened {
    /// The connection.
    pub connection: Connection,
    /// Finishes when the socket closes; `None` for a Cluster connection, which
    /// repairs its node connections itself.
    pub driver: Option<JoinHandle<()>>,
}

impl Topology {
    /// Which topology this is.
    pub fn kind(&self) -> Kind {
        match self {
            Topology::Standalone(_) => Kind::Standalone,
            Topology::Sentinel(_) => Kind::Sentinel,
            Topology::Cluster(_) => Kind::Cluster,
        }
    }

    /// Where it connects, fit for a log line (never a credential).
    pub fn describe(&self) -> String {
        match self {
            Topology::Standalone(endpoint) => endpoint.address(),
            Topology::Sentinel(sentinels) => sentinels.to_string(),
            Topology::Cluster(cluster) => cluster.to_string(),
        }
    }

    /// The primary it last reached, when there is one node to name (not a Cluster).
    pub fn primary(&self) -> Option<String> {
        match self {
            Topology::Standalone(endpoint) => Some(endpoint.address()),
            Topology::Sentinel(sentinels) => sentinels
                .last_primary
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            Topology::Cluster(_) => None,
        }
    }

    /// The longest time one connection attempt may take.
    pub fn connect_timeout(&self) -> Duration {
        match self {
            Topology::Standalone(endpoint) => endpoint.connect_timeout(),
            Topology::Sentinel(sentinels) => sentinels.data.connect_timeout(),
            Topology::Cluster(cluster) => cluster.connect_timeout,
        }
    }

    /// Opens a connection named `client_name` (on a Cluster: `exact`, one that
    /// never sends a command twice by itself) and loads `scripts`.
    ///
    /// # Errors
    /// The [`Cause`] of the step that failed.
    pub async fn open(&self, client_name: &str, scripts: &[&LuaScript], exact: bool) -> Result<Opened, Cause> {
        match self {
            Topology::Standalone(endpoint) => {
                let opened = endpoint.connect(client_name, scripts).await?;
                Ok(Opened {
                    connection: Connection::Single(opened.connection),
                    driver: Some(opened.driver),
                })
            }
            Topology::Sentinel(sentinels) => sentinels.open(client_name, scripts).await,
            Topology::Cluster(cluster) => cluster.open(scripts, exact).await,
        }
    }

    /// Opens a pub/sub connection: to the node (standalone), the primary
    /// (Sentinel), or any node (Cluster, where every node hears every PUBLISH).
    /// Returns it with the node it reached.
    ///
    /// # Errors
    /// The [`Cause`] of the last failed attempt.
    pub async fn subscriber(&self) -> Result<(redis::aio::PubSub, String), Cause> {
        match self {
            Topology::Standalone(endpoint) => Ok((endpoint.subscriber().await?, endpoint.address())),
            Topology::Sentinel(sentinels) => {
                let primary = sentinels.resolve().await?;
                Ok((primary.subscriber().await?, primary.address()))
            }
            Topology::Cluster(cluster) => cluster.subscriber().await,
        }
    }
}

/// The Sentinels watching one master, and how to log in to its nodes.
pub struct Sentinels {
    sentinels: Vec<Endpoint>,
    master: String,
    /// The data nodes' login and TLS settings; the address is the primary's.
    data: Endpoint,
    /// The Sentinel that answered last, asked first next time.
    preferred: AtomicUsize,
    /// The primary named last, to log when it changes.
    last_primary: Mutex<Option<String>>,
}

impl fmt::Display for Sentinels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<String> = self.sentinels.iter().map(Endpoint::address).collect();
        write!(f, "master {:?} via Sentinels {}", self.master, addresses.join(","))
    }
}

impl Sentinels {
    /// Sentinels at `sentinels` watching `master`; the data nodes are reached
    /// with the same TLS settings, logging in as `username`/`password` into `db`.
    pub fn new(
        sentinels: Vec<Endpoint>,
        master: String,
        username: Option<&str>,
        password: Option<&str>,
        db: i64,
    ) -> Result<Sentinels, StartError> {
        let first = sentinels
            .first()
            .ok_or_else(|| StartError::RedisConfig("no Sentinel address".to_owned()))?;
        let data = first.with_login(username, password, db);
        Ok(Sentinels {
            sentinels,
            master,
            data,
            preferred: AtomicUsize::new(0),
            last_primary: Mutex::new(None),
        })
    }

    /// The endpoint of the primary, as the first Sentinel that knows it says.
    ///
    /// # Errors
    /// [`Cause::Sentinel`] saying what each Sentinel answered when none named a primary.
    pub async fn resolve(&self) -> Result<Endpoint, Cause> {
        let mut command = redis::cmd("SENTINEL");
        command.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.master);
        let count = self.sentinels.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut answers = Vec::with_capacity(count);
        for offset in 0..count {
            let index = (start + offset) % count;
            let sentinel = &self.sentinels[index];
            match sentinel.query_once::<Option<(String, u16)>>(&command).await {
                Ok(Some((host, port))) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(self.data.at(&host, port));
                }
                Ok(None) => answers.push(format!(
                    "{} does not know a master named {:?}",
                    sentinel.address(),
                    self.master
                )),
                Err(cause) => answers.push(format!("{}: {cause}", sentinel.address())),
            }
        }
        Err(Cause::Sentinel(answers.join("; ")))
    }

    async fn open(&self, client_name: &str, scripts: &[&LuaScript]) -> Result<Opened, Cause> {
        let primary = self.resolve().await?;
        let node = primary.address();
        let opened = primary.connect(client_name, scripts).await?;
        let mut connection = opened.connection;
        // A Sentinel's answer can be a moment behind: only a node that agrees it
        // is the primary is used.
        let role = timeout(
            primary.connect_timeout(),
            redis::cmd("ROLE").query_async::<redis::Value>(&mut connection),
        )
        .await;
        let is_primary = matches!(
            role,
            Ok(Ok(redis::Value::Array(ref fields)))
                if matches!(fields.first(), Some(redis::Value::BulkString(role)) if role.as_slice() == b"master")
        );
        if !is_primary {
            opened.driver.abort();
            return Err(match role {
                Ok(Err(error)) => Cause::of(&error),
                Err(_) => Cause::Timeout(primary.connect_timeout()),
                Ok(Ok(_)) => Cause::NotPrimary(node),
            });
        }
        let changed = {
            let mut last = self.last_primary.lock().unwrap_or_else(PoisonError::into_inner);
            let changed = last.as_deref() != Some(node.as_str());
            *last = Some(node.clone());
            changed
        };
        if changed {
            info!(master = %self.master, primary = %node, "the Sentinels name this node as the primary");
        }
        Ok(Opened {
            connection: Connection::Single(connection),
            driver: Some(opened.driver),
        })
    }
}

/// Listens to the Sentinels for `+switch-master` of `sentinels`' master and
/// bumps `failovers` on each, so that every connection to the old primary is
/// replaced at once rather than when it first fails. Listens to one Sentinel
/// at a time, moving to the next when it is lost. Runs until aborted.
pub async fn watch_failovers(sentinels: Arc<Sentinels>, failovers: watch::Sender<u64>, backoff: Backoff) {
    let count = sentinels.sentinels.len();
    let mut next = 0;
    let mut delay = backoff.min;
    loop {
        let sentinel = &sentinels.sentinels[next % count];
        next += 1;
        let subscribed = async {
            let mut pubsub = sentinel.subscriber().await?;
            pubsub.subscribe("+switch-master").await.map_err(|e| Cause::of(&e))?;
            Ok::<_, Cause>(pubsub)
        };
        match timeout(sentinel.connect_timeout(), subscribed).await {
            Ok(Ok(pubsub)) => {
                delay = backoff.min;
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Ok(text) = message.get_payload::<String>() else {
                        continue;
                    };
                    // "<master name> <old ip> <old port> <new ip> <new port>"
                    let fields: Vec<&str> = text.split(' ').collect();
                    if let [name, old_host, old_port, new_host, new_port] = fields.as_slice()
                        && *name == sentinels.master
                    {
                        warn!(
                            master = %name,
                            old = %format!("{old_host}:{old_port}"),
                            new = %format!("{new_host}:{new_port}"),
                            "a Sentinel announced a failover; reconnecting to the new primary"
                        );
                        failovers.send_modify(|count| *count += 1);
                    }
                }
            }
            // Why the Sentinels are unreachable shows in the connection attempts' causes.
            Ok(Err(_)) | Err(_) => {
                sleep(delay).await;
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
}

/// A Redis Cluster, reached through its seed nodes.
pub struct Cluster {
    /// Follows redirections and resends after a lost connection by itself.
    retrying: ClusterClient,
    /// Never sends a command twice by itself: for writes that must not be repeated.
    exact: ClusterClient,
    seeds: Vec<Endpoint>,
    /// Every node the prober last saw, tried first for the subscriber.
    known: Mutex<Vec<Endpoint>>,
    connect_timeout: Duration,
}

impl fmt::Display for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<String> = self.seeds.iter().map(Endpoint::address).collect();
        write!(f, "Cluster via {}", addresses.join(","))
    }
}

/// How many times redis-rs follows a redirection or reconnects for one
/// command before the answer comes back here (each call's deadline bounds it too).
const CLUSTER_RETRIES: u32 = 8;

impl Cluster {
    /// A Cluster reached through `seeds` (URLs), logging in as `username`/`password`
    /// when given (otherwise as the URLs say).
    ///
    /// # Errors
    /// [`StartError::RedisConfig`] for seeds or TLS settings that cannot be used.
    pub fn new(
        nodes: &[ConnectionInfo],
        settings: &ConnectSettings,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Cluster, StartError> {
        let seeds = nodes
            .iter()
            .map(|node| Endpoint::new(node, settings))
            .collect::<Result<Vec<_>, _>>()?;
        let root_cert = match &settings.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| StartError::Io {
                context: format!("cannot read --redis-ca-file {}", path.display()),
                source,
            })?),
            None => None,
        };
        let build = |retries: u32| {
            let mut builder = ClusterClientBuilder::new(nodes.iter().cloned())
                .connection_timeout(settings.connect_timeout)
                .retries(retries)
                .tcp_settings(tcp_settings(settings.keepalive));
            if let Some(username) = username {
                builder = builder.username(username);
            }
            if let Some(password) = password {
                builder = builder.password(password);
            }
            if let Some(root_cert) = &root_cert {
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert.clone()),
                });
            }
            builder
                .build()
                .map_err(|e| StartError::RedisConfig(format!("the Cluster seeds cannot be used ({})", e.category())))
        };
        Ok(Cluster {
            retrying: build(CLUSTER_RETRIES)?,
            exact: build(0)?,
            seeds,
            known: Mutex::new(Vec::new()),
            connect_timeout: settings.connect_timeout,
        })
    }

    async fn open(&self, scripts: &[&LuaScript], exact: bool) -> Result<Opened, Cause> {
        let client = if exact { &self.exact } else { &self.retrying };
        let attempt = async {
            let mut connection = client.get_async_connection().await.map_err(|e| cluster_cause(&e))?;
            // SCRIPT LOAD goes to every primary.
            for script in scripts {
                let _: redis::Value = script
                    .load()
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| Cause::of(&e))?;
            }
            Ok(connection)
        };
        let connection = timeout(self.connect_timeout, attempt)
            .await
            .unwrap_or(Err(Cause::Timeout(self.connect_timeout)))?;
        Ok(Opened {
            connection: Connection::Cluster(connection),
            driver: None,
        })
    }

    /// Remembers the nodes the prober found, for the next subscriber.
    pub fn learn_nodes(&self, nodes: &[(String, u16)]) {
        let Some(template) = self.seeds.first() else {
            return;
        };
        let endpoints = nodes.iter().map(|(host, port)| template.at(host, *port)).collect();
        *self.known.lock().unwrap_or_else(PoisonError::into_inner) = endpoints;
    }

    async fn subscriber(&self) -> Result<(redis::aio::PubSub, String), Cause> {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut last = Cause::NotCluster("no seed node".to_owned());
        for node in known.iter().chain(self.seeds.iter()) {
            match node.subscriber().await {
                Ok(pubsub) => return Ok((pubsub, node.address())),
                Err(cause) => last = cause,
            }
        }
        Err(last)
    }
}

fn tcp_settings(keepalive: Duration) -> TcpSettings {
    let settings = TcpSettings::default().set_nodelay(true).set_keepalive(
        TcpKeepalive::new()
            .with_time(keepalive)
            .with_interval(KEEPALIVE_INTERVAL),
    );
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(keepalive + KEEPALIVE_INTERVAL * 3);
    settings
}

/// What went wrong opening a Cluster connection, in words for the log.
fn cluster_cause(error: &redis::RedisError) -> Cause {
    match Cause::of(error) {
        Cause::Refusal(_) if error.to_string().contains("cluster support disabled") => {
            Cause::NotCluster("a seed node has cluster support disabled (a standalone Redis: use REDIS_URL)".to_owned())
        }
        Cause::Refusal(_) | Cause::Io(_) => {
            Cause::NotCluster(format!("no seed node answered as a Cluster node: {error}"))
        }
        cause => cause,
    }
}
