//! Opening one connection to one Redis node: name lookup, TCP (nodelay,
//! keepalive, user timeout), TLS, the handshake (AUTH, SELECT), and the setup
//! every connection gets (its client name, the Lua scripts). Each step that can
//! fail says why in a [`Cause`], so that the log can tell a wrong password from a
//! TLS mismatch from a closed port.
//!
//! The connection's driver (the task that writes requests and reads replies) is
//! spawned here and its handle returned, so that whoever holds the connection
//! learns the moment the socket closes, not at the next command.

use std::{
    fmt, io,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, RedisConnectionInfo,
    aio::{AsyncStream, MultiplexedConnection},
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use socket2::{SockRef, TcpKeepalive};
use tokio::{net::TcpStream, task::JoinHandle, time::timeout};

use super::scripts::LuaScript;
use crate::{
    error::{Cause, StartError},
    time::whole_millis,
};

/// Time between TCP keepalive probes once they have started.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How to reach one Redis node: its address, credentials and TLS settings.
#[derive(Clone)]
pub struct Endpoint {
    address: Address,
    settings: RedisConnectionInfo,
    tls: Option<tokio_rustls::TlsConnector>,
    keepalive: Duration,
    connect_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    Tcp { host: String, port: u16, tls: bool },
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port, tls: false } => write!(f, "{host}:{port}"),
            Address::Tcp { host, port, tls: true } => write!(f, "{host}:{port} (TLS)"),
            Address::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What every connection to Redis is opened with, from the configuration.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    /// PEM file of the CAs that sign Redis's certificate; `None`: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Idle time before TCP keepalive probes; also bounds unacknowledged writes.
    pub keepalive: Duration,
    /// Longest time one connection attempt (lookup, TCP, TLS, handshake, setup) may take.
    pub connect_timeout: Duration,
}

/// A freshly opened connection and the task that drives it.
pub struct Opened {
    /// The multiplexed connection; clones share the socket.
    pub connection: MultiplexedConnection,
    /// Finishes when the socket closes.
    pub driver: JoinHandle<()>,
}

impl Endpoint {
    /// The endpoint a parsed and checked Redis URL names (see the configuration's
    /// `RedisTarget`).
    ///
    /// # Errors
    /// [`StartError::RedisConfig`] for a CA file that cannot be read, or a TLS
    /// address on a machine without a trust store.
    pub fn new(info: &ConnectionInfo, settings: &ConnectSettings) -> Result<Endpoint, StartError> {
        let address = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Address::Tcp {
                host: host.clone(),
                port: *port,
                tls: false,
            },
            ConnectionAddr::TcpTls { host, port, .. } => Address::Tcp {
                host: host.clone(),
                port: *port,
                tls: true,
            },
            ConnectionAddr::Unix(path) => Address::Unix(path.clone()),
            _ => return Err(StartError::RedisConfig("unsupported Redis address".to_owned())),
        };
        let tls = match &address {
            Address::Tcp { tls: true, .. } => Some(tls_connector(settings.ca_file.as_deref())?),
            _ => None,
        };
        Ok(Endpoint {
            address,
            settings: info.redis_settings().clone(),
            tls,
            keepalive: settings.keepalive,
            connect_timeout: settings.connect_timeout,
        })
    }

    /// A plain-TCP endpoint on this machine, without a login: the development
    /// redis-server.
    pub fn loopback(port: u16, settings: &ConnectSettings) -> Endpoint {
        Endpoint {
            address: Address::Tcp {
                host: "127.0.0.1".to_owned(),
                port,
                tls: false,
            },
            settings: RedisConnectionInfo::default(),
            tls: None,
            keepalive: settings.keepalive,
            connect_timeout: settings.connect_timeout,
        }
    }

    /// The same credentials and TLS settings at another host and port (a node
    /// named by a Sentinel or a Cluster).
    pub fn at(&self, host: &str, port: u16) -> Endpoint {
        let tls = matches!(self.address, Address::Tcp { tls: true, .. });
        Endpoint {
            address: Address::Tcp {
                host: host.to_owned(),
                port,
                tls,
            },
            ..self.clone()
        }
    }

    /// The same address and TLS settings, logging in as `username` with `password`
    /// and selecting `db` (a Sentinel's data nodes, whose login differs from the Sentinels').
    pub fn with_login(&self, username: Option<&str>, password: Option<&str>, db: i64) -> Endpoint {
        let mut settings = RedisConnectionInfo::default().set_db(db);
        if let Some(username) = username {
            settings = settings.set_username(username);
        }
        if let Some(password) = password {
            settings = settings.set_password(password);
        }
        Endpoint {
            settings,
            ..self.clone()
        }
    }

    /// The database it selects.
    pub fn db(&self) -> i64 {
        self.settings.db()
    }

    /// Where it points, fit for a log line (never a credential).
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// The longest time one connection attempt may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Opens a multiplexed connection named `client_name` and loads `scripts`
    /// into Redis, all within the connect timeout.
    ///
    /// # Errors
    /// The [`Cause`] of the first step that failed.
    pub async fn connect(&self, client_name: &str, scripts: &[&LuaScript]) -> Result<Opened, Cause> {
        let progress = Progress::default();
        let attempt = async {
            let stream = self.open_stream(&progress).await?;
            progress.enter(Phase::Handshake);
            // No response timeout of its own: every caller bounds its wait by its
            // own budget, and knows whether its command may have been applied.
            let config = AsyncConnectionConfig::new()
                .set_response_timeout(None)
                .set_connection_timeout(None);
            let (mut connection, driver) = MultiplexedConnection::new_with_config(&self.settings, stream, config)
                .await
                .map_err(|e| Cause::of(&e))?;
            let driver = tokio::spawn(driver);
            let mut setup = redis::pipe();
            setup.cmd("CLIENT").arg("SETNAME").arg(client_name).ignore();
            for script in scripts {
                setup.cmd("SCRIPT").arg("LOAD").arg(script.code()).ignore();
            }
            if let Err(error) = setup.query_async::<()>(&mut connection).await {
                driver.abort();
                return Err(Cause::of(&error));
            }
            Ok(Opened { connection, driver })
        };
        timeout(self.connect_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(progress.timed_out(self.connect_timeout)))
    }

    /// Opens a pub/sub connection (it can only subscribe, so it cannot be shared).
    ///
    /// # Errors
    /// The [`Cause`] of the first step that failed.
    pub async fn subscriber(&self) -> Result<redis::aio::PubSub, Cause> {
        let progress = Progress::default();
        let attempt = async {
            let stream = self.open_stream(&progress).await?;
            progress.enter(Phase::Handshake);
            redis::aio::PubSub::new(&self.settings, stream)
                .await
                .map_err(|e| Cause::of(&e))
        };
        timeout(self.connect_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(progress.timed_out(self.connect_timeout)))
    }

    /// Opens a connection, sends `command`, and closes it again, all within the
    /// connect timeout: for asking a Sentinel, which serves no other requests.
    ///
    /// # Errors
    /// The [`Cause`] of the first step that failed, or of Redis's error reply.
    pub async fn query_once<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, Cause> {
        let progress = Progress::default();
        let attempt = async {
            let stream = self.open_stream(&progress).await?;
            progress.enter(Phase::Handshake);
            let config = AsyncConnectionConfig::new()
                .set_response_timeout(None)
                .set_connection_timeout(None);
            let (mut connection, driver) = MultiplexedConnection::new_with_config(&self.settings, stream, config)
                .await
                .map_err(|e| Cause::of(&e))?;
            let driver = tokio::spawn(driver);
            let reply = command.query_async(&mut connection).await.map_err(|e| Cause::of(&e));
            driver.abort();
            reply
        };
        timeout(self.connect_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(progress.timed_out(self.connect_timeout)))
    }

    async fn open_stream(&self, progress: &Progress) -> Result<Pin<Box<dyn AsyncStream + Send + Sync>>, Cause> {
        match &self.address {
            Address::Unix(path) => {
                progress.enter(Phase::Connecting);
                let stream = tokio::net::UnixStream::connect(path).await.map_err(io_cause)?;
                Ok(Box::pin(stream))
            }
            Address::Tcp { host, port, .. } => {
                let tcp = self.open_tcp(host, *port, progress).await?;
                match &self.tls {
                    None => Ok(Box::pin(tcp)),
                    Some(connector) => {
                        progress.enter(Phase::Tls);
                        let name = ServerName::try_from(host.clone())
                            .map_err(|_| Cause::Tls(format!("{host:?} is not a valid TLS server name")))?;
                        let stream = connector
                            .connect(name, tcp)
                            .await
                            .map_err(|error| Cause::Tls(tls_detail(&error)))?;
                        Ok(Box::pin(stream))
                    }
                }
            }
        }
    }

    async fn open_tcp(&self, host: &str, port: u16, progress: &Progress) -> Result<TcpStream, Cause> {
        progress.enter(Phase::Resolving);
        let addresses = tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| Cause::Dns(format!("{host}: {error}")))?;
        progress.enter(Phase::Connecting);
        let mut last = Cause::Dns(format!("{host}: no addresses"));
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    self.tune(&stream);
                    return Ok(stream);
                }
                Err(error) => last = io_cause(error),
            }
        }
        Err(last)
    }

    /// Nodelay, because every request is small and latency-bound; keepalive, so
    /// that a peer that vanished behind a NAT or load balancer is noticed; and a
    /// user timeout, so that a write the peer never acknowledges ends the
    /// connection instead of retransmitting for a quarter of an hour.
    fn tune(&self, stream: &TcpStream) {
        let socket = SockRef::from(stream);
        let _ = socket.set_tcp_nodelay(true);
        let _ = socket.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(self.keepalive)
                .with_interval(KEEPALIVE_INTERVAL),
        );
        #[cfg(target_os = "linux")]
        let _ = socket.set_tcp_user_timeout(Some(self.keepalive + KEEPALIVE_INTERVAL * 3));
    }
}

/// How far a connection attempt got, so that a timeout can say where it stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Resolving,
    Connecting,
    Tls,
    Handshake,
}

/// The phase of an attempt, readable after the attempt was cut off by its timeout.
#[derive(Default)]
struct Progress(AtomicU8);

impl Progress {
    fn enter(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Relaxed);
    }

    /// Why an attempt that ran out of `time` failed.
    fn timed_out(&self, time: Duration) -> Cause {
        let waited = whole_millis(time);
        match self.0.load(Ordering::Relaxed) {
            phase if phase == Phase::Resolving as u8 => Cause::Dns(format!("no answer within {waited}")),
            phase if phase == Phase::Connecting as u8 => Cause::Io(format!("no TCP connection within {waited}")),
            phase if phase == Phase::Tls as u8 => Cause::Tls(format!(
                "no answer to the TLS handshake within {waited} (does this port speak TLS? a rediss:// URL for a \
                 plain port looks like this)"
            )),
            _ => Cause::Timeout(time),
        }
    }
}

fn io_cause(error: io::Error) -> Cause {
    match error.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => Cause::Refused,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::UnexpectedEof => {
            Cause::Closed
        }
        _ => Cause::Io(error.to_string()),
    }
}

/// The rustls error inside an I/O error, in words.
fn tls_detail(error: &io::Error) -> String {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidMessage(_)) => {
            "the server does not speak TLS on this port (a rediss:// URL for a plain port?)".to_owned()
        }
        Some(tls) => tls.to_string(),
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the handshake".to_owned()
        }
        None => error.to_string(),
    }
}

/// A TLS client that verifies the server against `ca_file`, or the system's trust store.
fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<tokio_rustls::TlsConnector, StartError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| StartError::Io {
                context: format!("cannot read --redis-ca-file {}", path.display()),
                source,
            })?;
            for certificate in CertificateDer::pem_slice_iter(&pem) {
                let certificate = certificate.map_err(|e| {
                    StartError::RedisConfig(format!("--redis-ca-file {} is not PEM: {e}", path.display()))
                })?;
                roots.add(certificate).map_err(|e| {
                    StartError::RedisConfig(format!(
                        "--redis-ca-file {} holds a bad certificate: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for certificate in native.certs {
                // One unusable system certificate should not stop the others.
                let _ = roots.add(certificate);
            }
        }
    }
    if roots.is_empty() {
        return Err(StartError::RedisConfig(
            "rediss:// needs trusted certificate authorities: none were found in the system's \
             trust store; set --redis-ca-file"
                .to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::RedisConfig(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
