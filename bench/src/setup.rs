//! What a run measures against: a private redis-server (or Cluster), the
//! cachelock processes it starts, the bare tonic floor, and their channels.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use crate::scenario::{BENCH_DOMAIN, Conn, RATE_LIMIT, Token};
use crate::{Args, sink::Sink};
use cachelock::{EmbeddedRedis, ProbeArgs, probe};
use cachelock_testkit::TestCluster;
use tokio::{
    process::{Child, Command},
    time::{Instant, sleep},
};
use tonic::{service::interceptor::InterceptedService, transport::Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;

/// The service and Redis the run talks to, and what must be stopped afterwards.
pub(crate) struct Setup {
    pub(crate) addr: String,
    pub(crate) redis_url: String,
    pub(crate) _redis: Option<EmbeddedRedis>,
    pub(crate) _cluster: Option<TestCluster>,
    pub(crate) service: Option<Child>,
    /// With `--secure`: the second service's address, its token, and what to clean up.
    pub(crate) secure: Option<SecureService>,
    /// With `--compare-metrics-off`, `--compare-binary` or `--compare-traces`: the
    /// second service's address and process.
    pub(crate) other: Option<(String, Child)>,
    /// With `--compare-traces`: where the second service's spans go.
    pub(crate) sink: Option<Sink>,
    /// The bare tonic server of bare-floor, when the tool starts its own service.
    pub(crate) bare: Option<(String, Child)>,
}

/// A second service on the same Redis, with TLS and an auth file.
pub(crate) struct SecureService {
    pub(crate) addr: String,
    pub(crate) token: String,
    pub(crate) ca: Vec<u8>,
    pub(crate) _process: Child,
    pub(crate) _auth_file: RemovedOnDrop,
}

/// A file or directory of this run's, removed when the run ends.
pub(crate) struct RemovedOnDrop(pub(crate) PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = if self.0.is_dir() {
            std::fs::remove_dir_all(&self.0)
        } else {
            std::fs::remove_file(&self.0)
        };
    }
}

/// Where the services the benchmark starts read the Envoy rule of
/// envoy-should-rate-limit from (removed when the benchmark ends).
pub(crate) fn bench_rules_path() -> PathBuf {
    std::env::temp_dir().join(format!("cachelock-bench-{}-rls.yaml", std::process::id()))
}

/// The rule of envoy-should-rate-limit: ratelimit-fixed-window's limit and period.
pub(crate) fn bench_rules() -> String {
    format!(
        "domain: {BENCH_DOMAIN}\ndescriptors:\n  - key: bench\n    rate_limit:\n      unit: minute\n      \
         requests_per_unit: {RATE_LIMIT}\n"
    )
}

/// Starts the cachelock `binary` with `args` and waits until it is SERVING
/// where `probe_args` looks.
pub(crate) async fn start_service(binary: &Path, args: &[String], probe_args: ProbeArgs) -> Result<Child, String> {
    let rules = bench_rules_path();
    std::fs::write(&rules, bench_rules()).map_err(|e| format!("cannot write {}: {e}", rules.display()))?;
    let service = Command::new(binary)
        .args(args)
        .arg("--rls-config")
        .arg(&rules)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    serving(&probe_args, "the service").await?;
    Ok(service)
}

pub(crate) fn free_address() -> Result<String, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

pub(crate) fn plain_probe(addr: &str) -> ProbeArgs {
    ProbeArgs {
        addr: addr.to_owned(),
        service: String::new(),
        timeout: Duration::from_secs(1),
        tls: false,
        tls_ca: None,
        tls_server_name: None,
        tls_cert: None,
        tls_key: None,
    }
}

/// Starts the TLS + auth file service of `--secure` on the Redis at `redis_url`.
pub(crate) async fn start_secure(dir: &std::path::Path, redis_url: &str) -> Result<SecureService, String> {
    let random = |_| getrandom::u64().map_err(|e| e.to_string());
    let token = format!("{:016x}{:016x}", random(0)?, random(1)?);
    let digest = cachelock_testkit::sha256_hex(&token);
    let auth = RemovedOnDrop(std::env::temp_dir().join(format!("cachelock-bench-{}-auth.toml", std::process::id())));
    std::fs::write(
        &auth.0,
        format!(
            "[[client]]\nname = \"bench\"\ntoken_sha256 = \"{digest}\"\ntenant = \"default\"\n\
             allow = [\"cache\", \"ratelimit\", \"lock\", \"session\"]\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let addr = free_address()?;
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let args = vec![
        "--listen".to_owned(),
        addr.clone(),
        "--metrics-listen".to_owned(),
        free_address()?,
        "--redis-url".to_owned(),
        redis_url.to_owned(),
        // The benchmark started this Redis, empty: no lease can be held from before.
        "--lock-trust-young-redis".to_owned(),
        "--tls-cert".to_owned(),
        path("server.pem"),
        "--tls-key".to_owned(),
        path("server.key"),
        "--auth-file".to_owned(),
        auth.0.to_string_lossy().into_owned(),
    ];
    let probe_args = ProbeArgs {
        tls: true,
        tls_ca: Some(dir.join("ca.pem")),
        tls_server_name: Some("localhost".to_owned()),
        ..plain_probe(&addr)
    };
    let process = start_service(&sibling_binary("cachelock")?, &args, probe_args).await?;
    let ca = std::fs::read(dir.join("ca.pem")).map_err(|e| format!("--secure: {e}"))?;
    Ok(SecureService {
        addr,
        token,
        ca,
        _process: process,
        _auth_file: auth,
    })
}

/// Starts what `args` asks for, or names the service it measures.
pub(crate) async fn set_up(args: &Args) -> Result<Setup, String> {
    if let (Some(addr), Some(redis_url)) = (&args.addr, &args.redis_url) {
        let secure = match &args.secure {
            Some(dir) => Some(start_secure(dir, redis_url).await?),
            None => None,
        };
        return Ok(Setup {
            addr: addr.clone(),
            redis_url: redis_url.clone(),
            _redis: None,
            _cluster: None,
            service: None,
            secure,
            other: None,
            sink: None,
            bare: None,
        });
    }
    if args.cluster {
        return on_cluster().await;
    }
    let redis = EmbeddedRedis::start().await.map_err(|e| e.to_string())?;
    let addr = free_address()?;
    let mut service_args = service_args(&addr, &redis.url(), true)?;
    service_args.extend(args.service_arg.iter().cloned());
    let service = start_service(&sibling_binary("cachelock")?, &service_args, plain_probe(&addr)).await?;
    let secure = match &args.secure {
        Some(dir) => Some(start_secure(dir, &redis.url()).await?),
        None => None,
    };
    let sink = if args.compare_traces {
        Some(Sink::start().await?)
    } else {
        None
    };
    let other = if args.compare_metrics_off || args.compare_binary.is_some() || args.compare_traces {
        let endpoint = sink.as_ref().map(|(_, endpoint)| endpoint.as_str());
        Some(start_other(args, &redis.url(), endpoint).await?)
    } else {
        None
    };
    Ok(Setup {
        addr,
        redis_url: redis.url(),
        _redis: Some(redis),
        _cluster: None,
        service: Some(service),
        secure,
        other,
        sink: sink.map(|(sink, _)| sink),
        bare: Some(start_bare().await?),
    })
}

/// The flags of a service the tool starts at `addr` on the redis-server at
/// `redis_url`, with its metrics listener on a free port, or `off` when `metrics` is false.
pub(crate) fn service_args(addr: &str, redis_url: &str, metrics: bool) -> Result<Vec<String>, String> {
    Ok(vec![
        "--listen".to_owned(),
        addr.to_owned(),
        // Each private service has metrics on a port of its own, so that runs
        // side by side do not collide.
        "--metrics-listen".to_owned(),
        if metrics { free_address()? } else { "off".to_owned() },
        "--redis-url".to_owned(),
        redis_url.to_owned(),
        // The benchmark started this Redis, empty: no lease can be held from before.
        "--lock-trust-young-redis".to_owned(),
    ])
}

/// The service on a private Redis Cluster of 3 primaries and 3 replicas.
async fn on_cluster() -> Result<Setup, String> {
    // Node timeouts of 5 s: a loaded machine does not fail a node over mid-run.
    let cluster = tokio::task::spawn_blocking(|| TestCluster::start_with_node_timeout(5_000))
        .await
        .map_err(|e| format!("the Cluster did not start: {e}"))?;
    let addr = free_address()?;
    let service_args = vec![
        "--listen".to_owned(),
        addr.clone(),
        "--metrics-listen".to_owned(),
        free_address()?,
        "--redis-cluster-nodes".to_owned(),
        cluster.seeds(),
    ];
    let service = start_service(&sibling_binary("cachelock")?, &service_args, plain_probe(&addr)).await?;
    Ok(Setup {
        addr,
        redis_url: cluster.nodes.first().map(|node| node.url()).unwrap_or_default(),
        _redis: None,
        _cluster: Some(cluster),
        service: Some(service),
        secure: None,
        other: None,
        sink: None,
        bare: None,
    })
}

/// The second service: this build without metrics (`--compare-metrics-off`),
/// the `--compare-binary` with the same flags as the first, or this build
/// exporting its spans to `otlp_endpoint` (`--compare-traces`).
async fn start_other(args: &Args, redis_url: &str, otlp_endpoint: Option<&str>) -> Result<(String, Child), String> {
    let addr = free_address()?;
    let mut other_args = service_args(&addr, redis_url, !args.compare_metrics_off)?;
    if args.compare_binary.is_some() || otlp_endpoint.is_some() {
        other_args.extend(args.service_arg.iter().cloned());
    }
    if let Some(endpoint) = otlp_endpoint {
        other_args.extend(["--otlp-endpoint".to_owned(), endpoint.to_owned()]);
    }
    let binary = match &args.compare_binary {
        Some(binary) => binary.clone(),
        None => sibling_binary("cachelock")?,
    };
    let process = start_service(&binary, &other_args, plain_probe(&addr)).await?;
    Ok((addr, process))
}

/// The bare tonic server of bare-floor, in a process of its own.
async fn start_bare() -> Result<(String, Child), String> {
    let bare = free_address()?;
    let process = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("--serve-bare")
        .arg(&bare)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the bare server: {e}"))?;
    serving(&plain_probe(&bare), "the bare server").await?;
    Ok((bare, process))
}

/// Waits until the server `probe_args` names is SERVING, for up to 20 s.
async fn serving(probe_args: &ProbeArgs, what: &str) -> Result<(), String> {
    let give_up = Instant::now() + Duration::from_secs(20);
    while probe(probe_args).await != Ok(ServingStatus::Serving) {
        if Instant::now() > give_up {
            return Err(format!(
                "{what} at {} did not become SERVING within 20 s",
                probe_args.addr
            ));
        }
        sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The bare server of bare-floor: tonic's health service alone, with the transport
/// settings of the service (TCP nodelay and keepalive, HTTP/2 pings, the stream
/// limit) on a default multi-threaded runtime, as the service's. Runs until killed.
pub(crate) async fn serve_bare(addr: SocketAddr) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| e.to_string())?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let (_reporter, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(512)
        .add_service(health)
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| e.to_string())
}

pub(crate) fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let binary = me.with_file_name(name);
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!(
            "{} not found: build it first (cargo build --release)",
            binary.display()
        ))
    }
}

/// `connections` plaintext HTTP/2 connections to `addr` (at least one).
pub(crate) async fn plain_channels(addr: &str, connections: usize) -> Result<Vec<Conn>, String> {
    let mut channels = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        channels.push(InterceptedService::new(channel, Token::default()));
    }
    Ok(channels)
}
