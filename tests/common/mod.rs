//! Shared test helpers: a private redis-server per test, the service in-process
//! on 127.0.0.1:0, and clients for it.
//!
//! Every test owns its Redis (started on a free loopback port, killed on drop),
//! so tests run in parallel without seeing each other's keys. A machine without
//! redis-server fails these tests with a message saying how to install it.

#![allow(dead_code)] // each test binary uses a different part of this module

mod topology;

#[allow(unused_imports)]
pub use topology::{
    Backend, Direct, FORMING, MASTER, Mode, Node, TestCluster, TestSentinels, cluster_port, eventually,
    eventually_within, holds_within,
};

use std::{net::SocketAddr, time::Duration};

use cachelock::{
    config::Config,
    error::StartError,
    pb::{
        cache::cache_service_client::CacheServiceClient, lock::lock_service_client::LockServiceClient,
        ratelimit::rate_limit_service_client::RateLimitServiceClient,
        session::session_service_client::SessionServiceClient,
    },
    redis::embedded::EmbeddedRedis,
    server,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle, time::Instant};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_types::StatusExt;

/// How long a test waits for something that should happen within a second or two.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A private redis-server for one test.
pub struct TestRedis {
    server: Option<EmbeddedRedis>,
    port: u16,
    extra: Vec<String>,
}

impl TestRedis {
    /// Starts a redis-server on a free port; panics with install instructions if there is none.
    pub async fn start() -> TestRedis {
        TestRedis::start_with(&[]).await
    }

    /// Starts a redis-server with `extra` settings (kept across restarts).
    pub async fn start_with(extra: &[&str]) -> TestRedis {
        let server = EmbeddedRedis::start_with(extra)
            .await
            .unwrap_or_else(|error| panic!("cannot start a test redis-server: {error}"));
        let port = server.port();
        TestRedis {
            server: Some(server),
            port,
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A free port with no Redis on it yet (start one there with [`TestRedis::start_on`]).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free loopback port")
    }

    /// Starts a redis-server on `port`.
    pub async fn start_on(port: u16) -> TestRedis {
        let server = EmbeddedRedis::start_on(port)
            .await
            .unwrap_or_else(|error| panic!("cannot start a test redis-server: {error}"));
        TestRedis {
            server: Some(server),
            port,
            extra: Vec::new(),
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Starts a fresh, empty server on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Starts the server again on its port after [`TestRedis::stop`].
    pub async fn start_again(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.server = Some(
            EmbeddedRedis::start_on_with(self.port, &extra)
                .await
                .unwrap_or_else(|error| panic!("cannot restart the test redis-server: {error}")),
        );
    }

    /// How many times Redis has run `command` (lower case, as `INFO commandstats` names it).
    pub async fn calls(&self, command: &str) -> u64 {
        let stats: String = self.command(&["INFO", "commandstats"]).await;
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until Redis has run `command` at least `count` times in all.
    pub async fn wait_for_calls(&self, command: &str, count: u64) {
        let give_up = Instant::now() + PATIENCE;
        while self.calls(command).await < count {
            assert!(Instant::now() < give_up, "Redis never ran {command} {count} times");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs one command on a fresh direct connection and returns its reply.
    pub async fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut connection = self.connection().await;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{args:?}: {error}"))
    }

    /// A direct connection, for arranging and inspecting state behind the service's back.
    /// It waits as long as Redis takes (no response timeout), so a `DEBUG SLEEP`
    /// sent on it returns when the sleep is over.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        redis::Client::open(self.url())
            .expect("a valid URL")
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("a direct connection to the test redis-server")
    }
}

/// The service running in-process until dropped or shut down.
pub struct TestService {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its metrics listener listens, unless `--metrics-listen off`.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartError>>>,
}

/// Settings that make tests quick: a fast prober and short reconnect backoff;
/// and lock grants at once on the fresh redis-servers the tests start (the
/// tests of the pause after a restart leave this out, see [`TestService::start_strict`]).
pub const TEST_ARGS: &[&str] = &[
    "--lock-trust-young-redis",
    "--health-interval",
    "100ms",
    "--reconnect-min-backoff",
    "20ms",
    "--reconnect-max-backoff",
    "200ms",
    "--connect-timeout",
    "500ms",
    "--shutdown-delay",
    "0s",
];

impl TestService {
    /// Starts the service against `redis_url`, with `args` added to (and overriding) the test settings.
    pub async fn start(redis_url: &str, args: &[&str]) -> TestService {
        let mut all = vec!["cachelock", "--redis-url", redis_url];
        all.extend_from_slice(TEST_ARGS);
        all.extend_from_slice(args);
        let config = Config::from_args(all).unwrap_or_else(|error| panic!("test configuration: {error}"));
        TestService::start_with(config).await
    }

    /// As [`TestService::start`], but without `--lock-trust-young-redis`: lock
    /// grants on a Redis that started less than `--lock-max-ttl` ago wait, as in
    /// production.
    pub async fn start_strict(redis_url: &str, args: &[&str]) -> TestService {
        let mut all = vec!["cachelock", "--redis-url", redis_url];
        all.extend(TEST_ARGS.iter().filter(|arg| **arg != "--lock-trust-young-redis"));
        all.extend_from_slice(args);
        let config = Config::from_args(all).unwrap_or_else(|error| panic!("test configuration: {error}"));
        TestService::start_with(config).await
    }

    /// Starts the service with `args` (which must say where Redis is) added to the test settings.
    pub async fn start_with_args(args: &[&str]) -> TestService {
        let mut all = vec!["cachelock"];
        all.extend_from_slice(TEST_ARGS);
        all.extend_from_slice(args);
        let config = Config::from_args(all).unwrap_or_else(|error| panic!("test configuration: {error}"));
        TestService::start_with(config).await
    }

    /// Starts the service with a complete configuration, on free loopback ports.
    pub async fn start_with(config: Config) -> TestService {
        let (listeners, addr, metrics_addr) = listeners(&config).await;
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let shutdown_signal = futures_util::stream::once(async {
            let _ = shutdown_rx.await;
        });
        let task = tokio::spawn(server::run_until_signals(listeners, config, shutdown_signal));
        TestService {
            addr,
            metrics_addr,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// The text of one of the metrics listener's pages (`/metrics`, `/readyz`…) and its status.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.metrics_addr.expect("the metrics listener is on");
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the metrics listener");
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send the request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read the response");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
        (status, body)
    }

    /// The value of the metric series `series` (name and labels as /metrics shows
    /// them, such as `cachelock_redis_up` or `grpc_server_handled_total{…}`); 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.http_get("/metrics").await;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// Starts the service against `redis_url` with `args`, stopped by signals
    /// sent on the returned sender (as SIGTERM would be), not by dropping it.
    pub async fn start_with_signals(
        redis_url: &str,
        args: &[&str],
    ) -> (TestService, tokio::sync::mpsc::UnboundedSender<()>) {
        let mut all = vec!["cachelock", "--redis-url", redis_url];
        all.extend_from_slice(TEST_ARGS);
        all.extend_from_slice(args);
        let config = Config::from_args(all).unwrap_or_else(|error| panic!("test configuration: {error}"));
        let (listeners, addr, metrics_addr) = listeners(&config).await;
        let (signal, signals) = tokio::sync::mpsc::unbounded_channel::<()>();
        let signals = tokio_stream::wrappers::UnboundedReceiverStream::new(signals);
        let task = tokio::spawn(server::run_until_signals(listeners, config, signals));
        let service = TestService {
            addr,
            metrics_addr,
            shutdown: None,
            task: Some(task),
        };
        (service, signal)
    }

    /// Waits for the server to stop by itself; returns its result.
    pub async fn stopped(mut self) -> Result<(), StartError> {
        let task = self.task.take().expect("the server task");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the server stops within the patience")
            .expect("the server task does not panic")
    }

    /// A channel to the service (connects on first use).
    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("a valid endpoint")
            .connect_lazy()
    }

    /// A cache client on a new connection.
    pub fn cache(&self) -> CacheServiceClient<Channel> {
        CacheServiceClient::new(self.channel())
    }

    /// A lock client on a new connection.
    pub fn locks(&self) -> LockServiceClient<Channel> {
        LockServiceClient::new(self.channel())
    }

    /// A session client on a new connection.
    pub fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel())
    }

    /// A rate-limit client on a new connection.
    pub fn ratelimit(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(self.channel())
    }

    /// A health client on a new connection.
    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel())
    }

    /// The health status of `service` ("" for the server), or the gRPC error code.
    pub async fn health_status(&self, service: &str) -> Result<ServingStatus, tonic::Code> {
        let response = self
            .health()
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|status| status.code())?;
        Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
    }

    /// Polls the health service until `service` reports `wanted`; panics after [`PATIENCE`].
    pub async fn wait_for_health(&self, service: &str, wanted: ServingStatus) {
        let give_up = Instant::now() + PATIENCE;
        loop {
            let status = self.health_status(service).await;
            if status == Ok(wanted) {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "health of {service:?} is {status:?}, not {wanted:?}, after {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Requests shutdown and waits for the server to finish; returns its result.
    pub async fn shutdown(mut self) -> Result<(), StartError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let task = self.task.take().expect("the server task");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the server stops within the patience")
            .expect("the server task does not panic")
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Free loopback ports for the service's listeners (no metrics listener with `--metrics-listen off`).
async fn listeners(config: &Config) -> (server::Listeners, SocketAddr, Option<SocketAddr>) {
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = grpc.local_addr().expect("a local address");
    let metrics = match config.metrics_listen.0 {
        Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")),
        None => None,
    };
    let metrics_addr = metrics
        .as_ref()
        .map(|listener| listener.local_addr().expect("a local address"));
    (server::Listeners { grpc, metrics }, addr, metrics_addr)
}

/// A Redis and a service in front of it, the usual start of a test.
pub async fn redis_and_service(args: &[&str]) -> (TestRedis, TestService) {
    let redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), args).await;
    (redis, service)
}

/// A protobuf duration of `millis` milliseconds.
pub fn millis(millis: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: millis / 1000,
        nanos: ((millis % 1000) * 1_000_000) as i32,
    }
}

/// A protobuf duration as milliseconds.
pub fn as_millis(duration: &prost_types::Duration) -> i64 {
    duration.seconds * 1000 + i64::from(duration.nanos) / 1_000_000
}

/// Asserts an INVALID_ARGUMENT whose message starts with the field's name, and
/// whose details name it too: a `BadRequest` field violation and an
/// `ErrorInfo` with reason INVALID_FIELD.
pub fn assert_invalid(status: tonic::Status, field: &str) {
    assert_reason(&status, tonic::Code::InvalidArgument, "INVALID_FIELD");
    assert!(
        status.message().starts_with(&format!("{field}:")),
        "message {:?} should name {field}",
        status.message()
    );
    let details = status.get_error_details();
    let violations = &details.bad_request().expect("a BadRequest detail").field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, field);
    assert!(!violations[0].description.is_empty());
}

/// Asserts `status` has `code` and carries an `ErrorInfo` of the cachelock.dev
/// domain with `reason`, decoded from the status details as any client would;
/// and a `RetryInfo` with a positive delay exactly when the code is UNAVAILABLE
/// or RESOURCE_EXHAUSTED and waiting can help.
pub fn assert_reason(status: &tonic::Status, code: tonic::Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "cachelock.dev");
    let retry = details.retry_info().and_then(|retry| retry.retry_delay);
    let waiting_helps =
        matches!(code, tonic::Code::Unavailable | tonic::Code::ResourceExhausted) && reason != "RESPONSE_TOO_LARGE";
    assert_eq!(retry.is_some(), waiting_helps, "RetryInfo in {status:?}");
    assert!(retry.is_none_or(|delay| !delay.is_zero()), "{status:?}");
}

/// A "Redis" that accepts connections and never answers, as a hung server does;
/// returns its URL. It lives until the test's runtime ends.
pub async fn hung_redis() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let url = format!("redis://{}", listener.local_addr().expect("a local address"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

/// A TCP proxy between the service and a real Redis that a test can make
/// misbehave: hold the requests (they never reach Redis), hold the replies (the
/// commands run but no answer comes back), or cut every connection. It reports
/// when held bytes arrive, so tests synchronise on that event instead of sleeping.
pub struct FaultyLink {
    /// `redis://127.0.0.1:<port>` of the proxy.
    pub url: String,
    control: std::sync::Arc<LinkControl>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct LinkControl {
    hold_requests: tokio::sync::watch::Sender<bool>,
    hold_replies: tokio::sync::watch::Sender<bool>,
    /// Signalled when bytes arrive while held.
    held: tokio::sync::Notify,
    /// The task of every open connection.
    connections: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl FaultyLink {
    /// Starts a proxy in front of the Redis on `upstream_port`.
    pub async fn start(upstream_port: u16) -> FaultyLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let url = format!("redis://{}", listener.local_addr().expect("a local address"));
        let control = std::sync::Arc::new(LinkControl::default());
        let shared = control.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let control = shared.clone();
                let connection = tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let requests = pump(
                        client_read,
                        server_write,
                        control.hold_requests.subscribe(),
                        &control.held,
                    );
                    let replies = pump(
                        server_read,
                        client_write,
                        control.hold_replies.subscribe(),
                        &control.held,
                    );
                    tokio::select! {
                        () = requests => {}
                        () = replies => {}
                    }
                });
                shared
                    .connections
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(connection);
            }
        });
        FaultyLink { url, control, task }
    }

    /// Requests are held (true) or passed on (false).
    pub fn hold_requests(&self, hold: bool) {
        self.control.hold_requests.send_replace(hold);
    }

    /// Replies are held (true) or passed on (false).
    pub fn hold_replies(&self, hold: bool) {
        self.control.hold_replies.send_replace(hold);
    }

    /// Ends every connection through the proxy, dropping what it held, and
    /// returns once they are all closed (new ones are accepted).
    pub async fn cut(&self) {
        let connections: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .control
                .connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for connection in &connections {
            connection.abort();
        }
        for connection in connections {
            let _ = connection.await;
        }
    }

    /// Completes once bytes arrived that are being held.
    pub async fn held_bytes_arrived(&self) {
        tokio::time::timeout(PATIENCE, self.control.held.notified())
            .await
            .expect("held bytes arrive at the proxy");
    }
}

impl Drop for FaultyLink {
    fn drop(&mut self) {
        self.task.abort();
        for connection in self
            .control
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            connection.abort();
        }
    }
}

/// Copies `from` to `to`; while `hold` is true, bytes read are kept back (and
/// `held` notified) until it turns false.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hold: tokio::sync::watch::Receiver<bool>,
    held: &tokio::sync::Notify,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if *hold.borrow_and_update() {
            held.notify_waiters();
            held.notify_one();
            if hold.wait_for(|hold| !*hold).await.is_err() {
                return;
            }
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// The log lines the service writes during a test, captured in memory.
///
/// Works with `#[tokio::test]`'s default current-thread runtime: the service's
/// tasks then run on the test's thread, where the capturing subscriber is set.
#[derive(Clone, Default)]
pub struct CapturedLogs {
    buffer: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl CapturedLogs {
    /// Captures every log line at `level` or above until the guard is dropped.
    pub fn start(level: tracing::Level) -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    /// Captures what `filter` lets through, as the binary would log it.
    pub fn start_filtered(filter: &tracing_subscriber::EnvFilter) -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter.to_string())
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned()
    }

    /// Waits until the log contains `needle`; panics after [`PATIENCE`] with what it holds.
    pub async fn wait_for(&self, needle: &str) {
        let give_up = Instant::now() + PATIENCE;
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < give_up,
                "the log never said {needle:?}:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A certificate authority made for one test, issuing certificates into a temporary directory.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The directory the files are written to (removed on drop).
    pub dir: tempfile::TempDir,
    /// The CA certificate's PEM file.
    pub ca_file: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("a key"))
            .expect("a self-signed CA");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca_file = dir.path().join("ca.pem").to_string_lossy().into_owned();
        std::fs::write(&ca_file, issuer.pem()).expect("write the CA");
        TestCa { issuer, dir, ca_file }
    }

    /// Issues a certificate for `names` (DNS subject alternative names) with
    /// common name `common_name`; writes `<file>.pem` and `<file>.key`, returns their paths.
    pub fn issue(&self, file: &str, common_name: &str, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>())
            .expect("certificate parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let certificate = params.signed_by(&key, &self.issuer).expect("a signed certificate");
        let path = |extension: &str| {
            self.dir
                .path()
                .join(format!("{file}.{extension}"))
                .to_string_lossy()
                .into_owned()
        };
        std::fs::write(path("pem"), certificate.pem()).expect("write the certificate");
        std::fs::write(path("key"), key.serialize_pem()).expect("write the key");
        (path("pem"), path("key"))
    }

    /// Issues a certificate whose subject is `subject` (each entry one RDN, in
    /// this order) with `sans` as its alternative names; returns its files.
    pub fn issue_identity(
        &self,
        file: &str,
        subject: &[(rcgen::DnType, &str)],
        sans: Vec<rcgen::SanType>,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate parameters");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.subject_alt_names = sans;
        let certificate = params.signed_by(&key, &self.issuer).expect("a signed certificate");
        let path = |extension: &str| {
            self.dir
                .path()
                .join(format!("{file}.{extension}"))
                .to_string_lossy()
                .into_owned()
        };
        std::fs::write(path("pem"), certificate.pem()).expect("write the certificate");
        std::fs::write(path("key"), key.serialize_pem()).expect("write the key");
        (path("pem"), path("key"))
    }

    /// The CA certificate, for a client's trust store.
    pub fn certificate(&self) -> tonic::transport::Certificate {
        tonic::transport::Certificate::from_pem(std::fs::read(&self.ca_file).expect("read the CA"))
    }
}

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca: tonic::transport::Certificate,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(cert).expect("read the client certificate"),
            std::fs::read(key).expect("read the client key"),
        ));
    }
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .expect("a valid endpoint")
        .tls_config(tls)?
        .connect()
        .await
}

/// An interceptor that sends a bearer token, or none.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// Sends `token`, or nothing when `None`.
    pub fn new(token: Option<&str>) -> Bearer {
        Bearer(token.map(|token| format!("Bearer {token}").parse().expect("an ASCII token")))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// An auth file in a temporary directory, rewritable while the service runs.
pub struct TestAuthFile {
    dir: tempfile::TempDir,
}

impl TestAuthFile {
    /// A file holding `text`.
    pub fn new(text: &str) -> TestAuthFile {
        let file = TestAuthFile {
            dir: tempfile::tempdir().unwrap(),
        };
        file.write(text);
        file
    }

    /// Where it is.
    pub fn path(&self) -> String {
        self.dir.path().join("auth.toml").to_string_lossy().into_owned()
    }

    /// Replaces the file in one step, as a deployment tool would.
    pub fn write(&self, text: &str) {
        let staging = self.dir.path().join("auth.toml.new");
        std::fs::write(&staging, text).unwrap();
        std::fs::rename(staging, self.path()).unwrap();
    }
}

/// One `[[client]]` of an auth file, known by the SHA-256 of `token`, with `extra` lines.
pub fn auth_client(name: &str, token: &str, tenant: &str, allow: &[&str], extra: &str) -> String {
    let allow: Vec<String> = allow.iter().map(|entry| format!("{entry:?}")).collect();
    format!(
        "[[client]]\nname = {name:?}\ntoken_sha256 = {:?}\ntenant = {tenant:?}\nallow = [{}]\n{extra}\n",
        sha256_hex(token),
        allow.join(", ")
    )
}

/// The SHA-256 of `token` in hexadecimal, as the auth file holds it.
pub fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
