//! The Redis topologies the tests run against: a private standalone
//! redis-server per test, a Redis Cluster (3 primaries, 3 replicas) and a
//! Sentinel group (a primary, a replica, 3 Sentinels).
//!
//! A Cluster or a Sentinel group takes seconds to form, so each test binary
//! starts at most one of each, shared by its tests ([`TestCluster::shared`],
//! [`TestSentinels::shared`]); every test gets a key prefix of its own on them.
//! Tests that break a topology (failovers) start their own.
//!
//! Every process runs under a small shell that waits on its standard input:
//! when the test binary exits, however it exits, the pipe closes and the shell
//! kills the process and removes its directory. Nothing outlives the tests.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use redis::{
    Cmd, RedisFuture, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster_async::ClusterConnection,
};

use crate::{PATIENCE, TestRedis, TestService};

/// Where the service's Redis is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A private redis-server.
    Standalone,
    /// The shared Redis Cluster.
    Cluster,
    /// The shared Sentinel group.
    Sentinel,
}

/// How long a topology may take to form.
pub const FORMING: Duration = Duration::from_secs(60);

/// One redis-server or Sentinel process.
pub struct Node {
    /// Its port on 127.0.0.1.
    pub port: u16,
    pid: u32,
    args: Vec<String>,
    dir: PathBuf,
    /// What it requires to log in (`requirepass`).
    password: Option<String>,
    /// The shell that kills the process when its standard input closes.
    keeper: Child,
}

impl Node {
    /// Starts `redis-server` with `args` on `port`, in a directory of its own,
    /// and waits until it answers PING.
    pub fn start(port: u16, args: &[String]) -> Node {
        Node::start_in(port, args, node_dir(port), None)
    }

    /// As [`Node::start`], for a node whose `args` set `requirepass` to `password`.
    pub fn start_with_password(port: u16, args: &[String], password: &str) -> Node {
        Node::start_in(port, args, node_dir(port), Some(password.to_owned()))
    }

    fn start_in(port: u16, args: &[String], dir: PathBuf, password: Option<String>) -> Node {
        Node::try_start_in(port, args, dir, password)
            .unwrap_or_else(|log| panic!("redis-server on port {port} exited at start:\n{log}"))
    }

    /// Starts the process and waits until it answers PING; its log when it exits first
    /// (a port taken since it was found free, for one).
    fn try_start_in(port: u16, args: &[String], dir: PathBuf, password: Option<String>) -> Result<Node, String> {
        let script = r#"dir=$1; shift; redis-server "$@" >"$dir/log.txt" 2>&1 & pid=$!; echo "$pid"; read _; kill -9 "$pid" 2>/dev/null; rm -rf "$dir""#;
        let mut keeper = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh runs");
        let mut line = String::new();
        BufReader::new(keeper.stdout.take().expect("the keeper's stdout"))
            .read_line(&mut line)
            .expect("the keeper names the process");
        let pid = line.trim().parse().expect("a process id");
        let node = Node {
            port,
            pid,
            args: args.to_vec(),
            dir,
            password,
            keeper,
        };
        let give_up = Instant::now() + FORMING;
        while node.ping().is_err() {
            if node.exited() {
                let log = std::fs::read_to_string(node.dir.join("log.txt")).unwrap_or_default();
                return Err(if log.is_empty() {
                    "no log (is redis-server installed? Debian/Ubuntu: apt-get install redis-server \
                     redis-tools)"
                        .to_owned()
                } else {
                    log
                });
            }
            assert!(
                Instant::now() < give_up,
                "redis-server on port {port} did not start (is redis-server installed? \
                 Debian/Ubuntu: apt-get install redis-server redis-tools)"
            );
            sleep(Duration::from_millis(20));
        }
        Ok(node)
    }

    /// Whether the process has ended (its keeper has not reaped it yet: a zombie).
    fn exited(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).map_or(true, |stat| {
            stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z'))
        })
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("log.txt")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    fn ping(&self) -> redis::RedisResult<String> {
        let mut connection = self.sync_connection()?;
        redis::cmd("PING").query(&mut connection)
    }

    fn sync_connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// Runs one command on a fresh blocking connection.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut connection = self.sync_connection()?;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut connection)
    }

    /// One field of `INFO <section>`, or "" when absent or unreachable.
    pub fn info(&self, section: &str, field: &str) -> String {
        let text: String = self.query(&["INFO", section]).unwrap_or_default();
        text.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Kills the process with SIGKILL (no chance to save or hand over anything)
    /// and waits until its port is closed.
    pub fn kill(&mut self) {
        let _ = Command::new("kill").arg("-9").arg(self.pid.to_string()).status();
        let give_up = Instant::now() + FORMING;
        while self.ping().is_ok() {
            assert!(
                Instant::now() < give_up,
                "port {} still answers after kill -9",
                self.port
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process with SIGSTOP: it keeps its sockets and answers nothing
    /// until [`Node::resume`] (a stalled VM, a long fork).
    pub fn pause(&self) {
        let _ = Command::new("kill").arg("-STOP").arg(self.pid.to_string()).status();
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        let _ = Command::new("kill").arg("-CONT").arg(self.pid.to_string()).status();
    }

    /// Removes what it persisted (its RDB snapshot), so that a restart after
    /// [`Node::kill`] starts empty.
    pub fn forget_data(&self) {
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
    }

    /// A standalone redis-server without persistence on a free port, with `extra` settings.
    pub fn standalone(extra: &[&str]) -> Node {
        let port = TestRedis::free_port();
        let dir = node_dir(port);
        let args = node_args(port, &dir, extra);
        Node::start_in(port, &args, dir, None)
    }

    /// Starts the process again on its port with its settings, after [`Node::kill`].
    pub fn restart(&mut self) {
        let _ = self.keeper.kill();
        let _ = self.keeper.wait();
        std::fs::create_dir_all(&self.dir).expect("a directory for the node");
        let again = Node::start_in(self.port, &self.args, self.dir.clone(), self.password.clone());
        *self = again;
    }
}

/// A free loopback port at most 55535 whose Cluster bus port (port + 10000) is free too.
pub fn cluster_port() -> u16 {
    loop {
        let port = TestRedis::free_port();
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

fn node_args(port: u16, dir: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--loglevel",
        "warning",
        "--dir",
        &dir.to_string_lossy(),
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

fn node_dir(port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cachelock-test-{port}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the node");
    dir
}

/// Waits until `condition` holds, panicking with `what` after [`FORMING`].
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + FORMING;
    while !condition() {
        assert!(Instant::now() < give_up, "{what} did not happen within {FORMING:?}");
        sleep(Duration::from_millis(50));
    }
}

/// A Redis Cluster of 3 primaries, each with one replica.
pub struct TestCluster {
    /// The six nodes; the first three start as primaries.
    pub nodes: Vec<Node>,
}

impl TestCluster {
    /// Starts one Cluster node. Its two ports were free when chosen but another process
    /// may take one before the node binds it: then the node starts again on new ones.
    fn start_node(node_timeout_ms: u32) -> Node {
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = cluster_port();
            let dir = node_dir(port);
            let args = node_args(
                port,
                &dir,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &node_timeout_ms.to_string(),
                ],
            );
            match Node::try_start_in(port, &args, dir, None) {
                Ok(node) => return node,
                Err(log) => last_log = log,
            }
        }
        panic!("no Cluster node started on five pairs of ports; the last one's log:\n{last_log}");
    }

    /// Starts six nodes and joins them into a Cluster with `redis-cli --cluster create`.
    /// A node is failed over after a second of silence.
    pub fn start() -> TestCluster {
        TestCluster::start_with_node_timeout(1_000)
    }

    /// As [`TestCluster::start`], failing a node over after `node_timeout_ms` of silence.
    pub fn start_with_node_timeout(node_timeout_ms: u32) -> TestCluster {
        let nodes: Vec<Node> = (0..6).map(|_| TestCluster::start_node(node_timeout_ms)).collect();
        let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs (Debian/Ubuntu: apt-get install redis-tools)");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = TestCluster { nodes };
        cluster.wait_until_formed();
        cluster
    }

    /// The Cluster every test of this binary shares (started on first use).
    pub fn shared() -> &'static TestCluster {
        static SHARED: OnceLock<TestCluster> = OnceLock::new();
        SHARED.get_or_init(TestCluster::start)
    }

    /// Waits until every node sees every slot served and each primary has an
    /// in-sync replica.
    pub fn wait_until_formed(&self) {
        wait_until("the Cluster forming", || {
            self.nodes.iter().all(|node| {
                node.query::<String>(&["CLUSTER", "INFO"]).is_ok_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                })
            }) && self
                .nodes
                .iter()
                .filter(|node| node.info("replication", "role") == "slave")
                .filter(|node| node.info("replication", "master_link_status") == "up")
                .count()
                == self.nodes.len() / 2
        });
    }

    /// The seed URLs, comma-separated, for `--redis-cluster-nodes`.
    pub fn seeds(&self) -> String {
        self.nodes.iter().take(2).map(Node::url).collect::<Vec<_>>().join(",")
    }

    /// The nodes that are primaries now.
    pub fn primaries(&self) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|node| node.info("replication", "role") == "master")
            .collect()
    }

    /// A connection that routes each command by its keys, as a client would.
    pub async fn connection(&self) -> ClusterConnection {
        redis::cluster::ClusterClient::new(self.nodes.iter().map(Node::url).collect::<Vec<_>>())
            .expect("valid seeds")
            .get_async_connection()
            .await
            .expect("a connection to the test Cluster")
    }
}

/// The master name the test Sentinels monitor.
pub const MASTER: &str = "testmaster";

/// How long a data node must be silent before a Sentinel thinks it down. A
/// Sentinel pings every second and counts from the last answer, and after a
/// failover it starts a fresh link to the promoted node; with 1000 ms a link
/// that took a moment to come back marked the new primary down one second after
/// its promotion, and the Sentinels failed over again, to the old primary that
/// had just restarted empty. 3000 ms leaves two seconds for that.
const DOWN_AFTER_MS: u32 = 3000;

/// A primary, its replica and three Sentinels that monitor them.
pub struct TestSentinels {
    /// The node that starts as primary.
    pub first: Node,
    /// The node that starts as its replica.
    pub second: Node,
    /// The Sentinels.
    pub sentinels: Vec<Node>,
}

impl TestSentinels {
    /// Starts the group and waits until every Sentinel knows the primary, its
    /// replica and the other Sentinels.
    pub fn start() -> TestSentinels {
        TestSentinels::start_with_passwords(None, None)
    }

    /// As [`TestSentinels::start`], with `data` as the data nodes' password and
    /// `sentinel` as the Sentinels' own.
    pub fn start_with_passwords(data: Option<&str>, sentinel: Option<&str>) -> TestSentinels {
        let data_node = |port: u16, extra: &[&str]| {
            let mut extra = extra.to_vec();
            if let Some(password) = data {
                extra.extend(["--requirepass", password, "--masterauth", password]);
            }
            let args = node_args(port, &node_dir(port), &extra);
            match data {
                Some(password) => Node::start_with_password(port, &args, password),
                None => Node::start(port, &args),
            }
        };
        let first = data_node(TestRedis::free_port(), &[]);
        let primary = first.port.to_string();
        let second = data_node(TestRedis::free_port(), &["--replicaof", "127.0.0.1", &primary]);
        let sentinels: Vec<Node> = (0..3)
            .map(|_| {
                let port = TestRedis::free_port();
                let dir = node_dir(port);
                let config = dir.join("sentinel.conf");
                let mut text = format!(
                    "bind 127.0.0.1\nport {port}\nprotected-mode no\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {MASTER} 5000\n",
                    dir = dir.display(),
                );
                if let Some(password) = data {
                    text.push_str(&format!("sentinel auth-pass {MASTER} {password}\n"));
                }
                if let Some(password) = sentinel {
                    text.push_str(&format!("requirepass {password}\nsentinel sentinel-pass {password}\n"));
                }
                std::fs::write(&config, text).expect("write the Sentinel's configuration");
                let args = [
                    config.to_string_lossy().into_owned(),
                    "--sentinel".to_owned(),
                    "--loglevel".to_owned(),
                    "warning".to_owned(),
                ];
                match sentinel {
                    Some(password) => Node::start_with_password(port, &args, password),
                    None => Node::start(port, &args),
                }
            })
            .collect();
        let group = TestSentinels {
            first,
            second,
            sentinels,
        };
        group.wait_until_settled();
        group
    }

    /// The group every test of this binary shares (started on first use).
    pub fn shared() -> &'static TestSentinels {
        static SHARED: OnceLock<TestSentinels> = OnceLock::new();
        SHARED.get_or_init(TestSentinels::start)
    }

    /// Waits until every Sentinel agrees on the primary, sees one replica and the
    /// two other Sentinels, and the replica is in sync.
    pub fn wait_until_settled(&self) {
        wait_until("the Sentinels settling", || {
            let primary = self.primary_port();
            primary.is_some()
                && self.sentinels.iter().all(|sentinel| {
                    let fields: Vec<String> = sentinel.query(&["SENTINEL", "MASTER", MASTER]).unwrap_or_default();
                    let field = |name: &str| {
                        fields
                            .iter()
                            .position(|field| field == name)
                            .and_then(|index| fields.get(index + 1))
                            .cloned()
                            .unwrap_or_default()
                    };
                    field("port").parse::<u16>().ok() == primary
                        && field("num-slaves") == "1"
                        && field("num-other-sentinels") == "2"
                        && field("flags") == "master"
                })
                && [&self.first, &self.second]
                    .iter()
                    .any(|node| node.info("replication", "master_link_status") == "up")
        });
    }

    /// The port the first Sentinel names as the primary's.
    pub fn primary_port(&self) -> Option<u16> {
        let answer: Option<(String, u16)> = self.sentinels[0]
            .query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])
            .ok()?;
        answer.map(|(_, port)| port)
    }

    /// What each Sentinel and data node reports, for a failure message: whether
    /// a Sentinel is in TILT mode, which primary and replicas it knows, each
    /// data node's replication state, and the events in the first Sentinel's log
    /// (down, failover, switch and TILT are logged at its warning level).
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for sentinel in &self.sentinels {
            let replicas: Vec<Vec<String>> = sentinel.query(&["SENTINEL", "REPLICAS", MASTER]).unwrap_or_default();
            text.push_str(&format!(
                "sentinel {}: tilt {}, primary {:?}, replicas {:?}\n",
                sentinel.port,
                sentinel.info("sentinel", "sentinel_tilt"),
                sentinel
                    .query::<Vec<String>>(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])
                    .unwrap_or_default(),
                replicas
                    .iter()
                    .map(|fields| fields
                        .chunks(2)
                        .filter(|pair| ["port", "flags", "role-reported"].contains(&pair[0].as_str()))
                        .map(|pair| pair.join("="))
                        .collect::<Vec<_>>()
                        .join(" "))
                    .collect::<Vec<_>>(),
            ));
        }
        for node in [&self.first, &self.second] {
            text.push_str(&format!(
                "node {}: role {:?}, master_port {:?}, link {:?}\n",
                node.port,
                node.info("replication", "role"),
                node.info("replication", "master_port"),
                node.info("replication", "master_link_status"),
            ));
        }
        text.push_str(&format!(
            "the log of sentinel {}:\n{}\n",
            self.sentinels[0].port,
            self.sentinels[0].log_tail(40)
        ));
        text
    }

    /// Whether the group is whole: the node the first Sentinel names as primary
    /// says it is one, and the other node follows it with its link up. Which
    /// node is which does not matter: on a loaded machine a Sentinel may fail
    /// over once more while a returning node catches up.
    pub fn is_whole(&self) -> bool {
        let Some(port) = self.primary_port() else {
            return false;
        };
        let (primary, replica) = if self.first.port == port {
            (&self.first, &self.second)
        } else {
            (&self.second, &self.first)
        };
        primary.port == port
            && primary.info("replication", "role") == "master"
            && replica.info("replication", "role") == "slave"
            && replica.info("replication", "master_port") == port.to_string()
            && replica.info("replication", "master_link_status") == "up"
    }

    /// The Sentinel URLs, comma-separated, for `--redis-sentinel-nodes`.
    pub fn urls(&self) -> String {
        self.sentinels.iter().map(Node::url).collect::<Vec<_>>().join(",")
    }

    /// The data node that is primary now.
    pub fn primary(&self) -> &Node {
        let port = self.primary_port().expect("the Sentinels name a primary");
        [&self.first, &self.second]
            .into_iter()
            .find(|node| node.port == port)
            .expect("the primary is one of the two nodes")
    }
}

/// A Redis of one topology for one test, with a key prefix of its own.
pub struct Backend {
    /// The topology.
    pub mode: Mode,
    own: Option<TestRedis>,
    prefix: String,
}

impl Backend {
    /// A private redis-server, or the shared Cluster or Sentinel group.
    pub async fn start(mode: Mode) -> Backend {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let (own, prefix) = match mode {
            Mode::Standalone => (Some(TestRedis::start().await), "cachelock".to_owned()),
            Mode::Cluster | Mode::Sentinel => {
                // Forming blocks this test's thread for a few seconds, once per binary.
                if mode == Mode::Cluster {
                    TestCluster::shared();
                } else {
                    TestSentinels::shared();
                }
                let number = NEXT.fetch_add(1, Ordering::Relaxed);
                (None, format!("t{}n{number}", std::process::id()))
            }
        };
        Backend { mode, own, prefix }
    }

    /// The key prefix the service uses.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The flags that point the service here.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = match (self.mode, &self.own) {
            (Mode::Standalone, Some(redis)) => vec!["--redis-url".into(), redis.url()],
            (Mode::Cluster, _) => vec!["--redis-cluster-nodes".into(), TestCluster::shared().seeds()],
            (Mode::Sentinel, _) => vec![
                "--redis-sentinel-nodes".into(),
                TestSentinels::shared().urls(),
                "--redis-sentinel-master".into(),
                MASTER.into(),
            ],
            (Mode::Standalone, None) => unreachable!("a standalone backend owns its Redis"),
        };
        args.extend(["--key-prefix".to_owned(), self.prefix.clone()]);
        args
    }

    /// The service in front of it, with `extra` flags.
    pub async fn service(&self, extra: &[&str]) -> TestService {
        let args = self.args();
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        TestService::start_with_args(&all).await
    }

    /// A direct connection for looking behind the service's back.
    pub async fn connection(&self) -> Direct {
        match (self.mode, &self.own) {
            (Mode::Standalone, Some(redis)) => Direct::Single(redis.connection().await),
            (Mode::Cluster, _) => Direct::Cluster(TestCluster::shared().connection().await),
            _ => {
                let primary = TestSentinels::shared().primary().url();
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                Direct::Single(
                    redis::Client::open(primary)
                        .expect("a valid URL")
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .expect("a connection to the primary"),
                )
            }
        }
    }

    /// The keys matching `pattern` on every primary.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut self.connection().await)
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }
}

/// A direct connection to the test Redis: one node, or a whole Cluster.
#[derive(Clone)]
pub enum Direct {
    /// One node.
    Single(MultiplexedConnection),
    /// The Cluster, routing by key.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Direct {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Direct::Single(connection) => connection.req_packed_command(cmd),
            Direct::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Direct::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Direct::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Runs each named scenario — an `async fn(Backend)` — as a test against every
/// topology: `standalone::name`, `cluster::name` and `sentinel::name`.
#[macro_export]
macro_rules! in_every_mode {
    ($($scenario:ident),+ $(,)?) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::Backend::start($crate::Mode::Standalone).await).await;
                }
            )+
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::Backend::start($crate::Mode::Cluster).await).await;
                }
            )+
        }
        mod sentinel {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::Backend::start($crate::Mode::Sentinel).await).await;
                }
            )+
        }
    };
}

/// Waits until `condition` holds (checked every 20 ms), panicking after [`PATIENCE`].
pub async fn eventually(what: &str, condition: impl AsyncFnMut() -> bool) {
    eventually_within(PATIENCE, what, condition).await;
}

/// Waits until `condition` holds (checked every 20 ms), panicking after `limit`:
/// for what a topology takes its own time over (a Sentinel reconfigures a
/// returning node only after it has been back for several seconds).
pub async fn eventually_within(limit: Duration, what: &str, condition: impl AsyncFnMut() -> bool) {
    assert!(
        holds_within(limit, condition).await,
        "{what} did not happen within {limit:?}"
    );
}

/// Whether `condition` comes to hold (checked every 20 ms) within `limit`.
pub async fn holds_within(limit: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let give_up = tokio::time::Instant::now() + limit;
    while !condition().await {
        if tokio::time::Instant::now() >= give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
