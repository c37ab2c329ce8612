//! Shared test helpers: a private redis-server per test, the service in-process
//! on 127.0.0.1:0, and clients for it.
//!
//! Every test owns its Redis (started on a free loopback port, killed on drop),
//! so tests run in parallel without seeing each other's keys. A machine without
//! redis-server fails these tests with a message saying how to install it.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::{net::SocketAddr, time::Duration};

use cachelock::{
    config::Config, error::StartError, pb::cache::cache_service_client::CacheServiceClient,
    redis::embedded::EmbeddedRedis, server,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle, time::Instant};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// How long a test waits for something that should happen within a second or two.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A private redis-server for one test.
pub struct TestRedis {
    server: Option<EmbeddedRedis>,
    port: u16,
}

impl TestRedis {
    /// Starts a redis-server on a free port; panics with install instructions if there is none.
    pub async fn start() -> TestRedis {
        let server = EmbeddedRedis::start()
            .await
            .unwrap_or_else(|error| panic!("cannot start a test redis-server: {error}"));
        let port = server.port();
        TestRedis {
            server: Some(server),
            port,
        }
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
        self.server = Some(
            EmbeddedRedis::start_on(self.port)
                .await
                .unwrap_or_else(|error| panic!("cannot restart the test redis-server: {error}")),
        );
    }

    /// A direct connection, for arranging and inspecting state behind the service's back.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("a direct connection to the test redis-server")
    }
}

/// The service running in-process until dropped or shut down.
pub struct TestService {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartError>>>,
}

/// Settings that make tests quick: a fast prober and short reconnect backoff.
const TEST_ARGS: &[&str] = &[
    "--health-interval",
    "100ms",
    "--reconnect-min-backoff",
    "20ms",
    "--reconnect-max-backoff",
    "200ms",
    "--connect-timeout",
    "500ms",
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

    /// Starts the service with a complete configuration.
    pub async fn start_with(config: Config) -> TestService {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("a local address");
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, config, async {
            let _ = shutdown_rx.await;
        }));
        TestService {
            addr,
            shutdown: Some(shutdown),
            task: Some(task),
        }
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
    }
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

/// Asserts an INVALID_ARGUMENT whose message starts with the field's name.
pub fn assert_invalid(status: tonic::Status, field: &str) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}:")),
        "message {:?} should name {field}",
        status.message()
    );
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
