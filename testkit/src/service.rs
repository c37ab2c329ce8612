//! The service in-process, on free loopback ports, and clients for it.

use std::{net::SocketAddr, time::Duration};

use cachelock::{
    Config, Listeners, StartError,
    pb::{
        cache::cache_service_client::CacheServiceClient, lock::lock_service_client::LockServiceClient,
        ratelimit::rate_limit_service_client::RateLimitServiceClient,
        session::session_service_client::SessionServiceClient,
    },
    run_until_signals,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle, time::Instant};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::{PATIENCE, TestRedis};

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
        let task = tokio::spawn(run_until_signals(listeners, config, shutdown_signal));
        TestService {
            addr,
            metrics_addr,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// The text of one of the metrics listener's pages (`/metrics`, `/readyz`…) and its status.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        self.http_get_accepting(path, "*/*").await
    }

    /// As [`TestService::http_get`], asking for the media type `accept`.
    pub async fn http_get_accepting(&self, path: &str, accept: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.metrics_addr.expect("the metrics listener is on");
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the metrics listener");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\nConnection: close\r\n\r\n");
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
        let task = tokio::spawn(run_until_signals(listeners, config, signals));
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
async fn listeners(config: &Config) -> (Listeners, SocketAddr, Option<SocketAddr>) {
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = grpc.local_addr().expect("a local address");
    let metrics = match config.metrics_listen.0 {
        Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")),
        None => None,
    };
    let metrics_addr = metrics
        .as_ref()
        .map(|listener| listener.local_addr().expect("a local address"));
    (Listeners { grpc, metrics }, addr, metrics_addr)
}

/// A Redis and a service in front of it, the usual start of a test.
pub async fn redis_and_service(args: &[&str]) -> (TestRedis, TestService) {
    let redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), args).await;
    (redis, service)
}
