//! A private redis-server per test, and a "Redis" that never answers.

use std::time::Duration;

use cachelock::EmbeddedRedis;
use tokio::{net::TcpListener, time::Instant};

use crate::PATIENCE;

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
