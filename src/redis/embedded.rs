//! A private `redis-server` child process on a free loopback port: the
//! development default when no REDIS_URL is given, and the Redis every
//! integration test starts for itself.
//!
//! It keeps nothing on disk (no RDB snapshots, no AOF) and is killed when the
//! [`EmbeddedRedis`] is stopped or dropped, including when the service fails.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, TcpListener},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
    time::{Instant, sleep, timeout},
};

use crate::error::StartError;

/// How long a fresh redis-server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// Attempts at a fresh port, in case another process takes the one picked.
const PORT_ATTEMPTS: usize = 3;

/// A running private redis-server.
#[derive(Debug)]
pub struct EmbeddedRedis {
    child: Child,
    port: u16,
    log_file: PathBuf,
}

impl EmbeddedRedis {
    /// Starts `redis-server` from PATH on a free loopback port and waits until it answers PING.
    ///
    /// # Errors
    /// [`StartError::RedisServerMissing`] when there is no redis-server on PATH;
    /// [`StartError::EmbeddedRedis`] when it does not come up.
    pub async fn start() -> Result<EmbeddedRedis, StartError> {
        EmbeddedRedis::start_with(&[]).await
    }

    /// Starts `redis-server` with `extra` settings (`["--maxmemory", "1mb"]`) on a
    /// free loopback port, as [`EmbeddedRedis::start`] does.
    ///
    /// # Errors
    /// As [`EmbeddedRedis::start`].
    pub async fn start_with(extra: &[&str]) -> Result<EmbeddedRedis, StartError> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            match EmbeddedRedis::start_on_with(port, extra).await {
                Ok(redis) => return Ok(redis),
                Err(StartError::RedisServerMissing) => return Err(StartError::RedisServerMissing),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| StartError::EmbeddedRedis("no free port".to_owned())))
    }

    /// Starts `redis-server` on `port` of 127.0.0.1 (to bring one back where it was).
    ///
    /// # Errors
    /// As [`EmbeddedRedis::start`].
    pub async fn start_on(port: u16) -> Result<EmbeddedRedis, StartError> {
        EmbeddedRedis::start_on_with(port, &[]).await
    }

    /// Starts `redis-server` on `port` of 127.0.0.1 with `extra` settings.
    ///
    /// # Errors
    /// As [`EmbeddedRedis::start`].
    pub async fn start_on_with(port: u16, extra: &[&str]) -> Result<EmbeddedRedis, StartError> {
        let log_file = std::env::temp_dir().join(format!("cachelock-redis-{port}.log"));
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--logfile")
            .arg(&log_file)
            .arg("--dir")
            .arg(std::env::temp_dir())
            // Last, so that a caller's --dir (a Cluster node's nodes.conf) wins.
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| match error.kind() {
                ErrorKind::NotFound => StartError::RedisServerMissing,
                _ => StartError::EmbeddedRedis(format!("cannot run redis-server: {error}")),
            })?;
        let mut redis = EmbeddedRedis { child, port, log_file };
        redis.wait_until_ready().await?;
        Ok(redis)
    }

    async fn wait_until_ready(&mut self) -> Result<(), StartError> {
        let give_up = Instant::now() + READY_WITHIN;
        while Instant::now() < give_up {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(StartError::EmbeddedRedis(format!(
                    "redis-server exited with {status}: {}",
                    self.log_tail()
                )));
            }
            if answers_ping(self.port).await {
                return Ok(());
            }
            sleep(Duration::from_millis(20)).await;
        }
        Err(StartError::EmbeddedRedis(format!(
            "no answer on port {} within {}s: {}",
            self.port,
            READY_WITHIN.as_secs(),
            self.log_tail()
        )))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL: `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server and waits until it has exited, so that its port is free again.
    pub async fn stop(mut self) {
        // Nothing is persisted, so there is nothing a graceful SHUTDOWN would save.
        let _ = self.child.kill().await;
        let _ = std::fs::remove_file(&self.log_file);
    }
}

impl Drop for EmbeddedRedis {
    fn drop(&mut self) {
        // `kill_on_drop` ends the process; this only tidies its log.
        let _ = std::fs::remove_file(&self.log_file);
    }
}

fn free_port() -> Result<u16, StartError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| StartError::Io {
        context: "cannot find a free loopback port".to_owned(),
        source,
    })?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| StartError::Io {
            context: "cannot find a free loopback port".to_owned(),
            source,
        })
}

async fn answers_ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<bool, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(timeout(Duration::from_millis(500), attempt).await, Ok(Ok(true)))
}
