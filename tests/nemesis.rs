//! A randomized adversary for the one lock invariant, the way Jepsen tests etcd
//! and ZooKeeper: never more callers believe they hold a name than its permits.
//!
//! Workers on several cachelock processes take locks (exclusive and with
//! permits) with Acquire, Extend, Release and Hold, and each records the
//! interval it *believes* it holds a grant: from the answer that granted it to
//! the moment it sends Release, is told `lost` (or its stream breaks), or its
//! lease could end by its own clock (counted from when the granting request was
//! sent). Candidates campaign for an election on two of the processes the same
//! way, believing they lead from `elected` until they resign, hear `lost`, or
//! their certain time runs out: one leader at a time is the same invariant on
//! the election's lock. Meanwhile a nemesis keeps breaking things at random: kill -9 and
//! restart of Redis without persistence, SIGSTOP/SIGCONT, CLIENT KILL, a TCP
//! black hole between one instance and Redis, kill -9 and restart of cachelock
//! processes, cache pressure under an evicting policy, Sentinel failovers and
//! Cluster primaries restarted empty. A checker then reads the whole history:
//! no instant with more believed holders than permits, fencing tokens that
//! increase with the order of exclusive grants, no token granted twice.
//!
//! `cargo test --test nemesis` runs a bounded round per topology. A soak runs
//! as long as asked and prints what it did:
//! `CACHELOCK_NEMESIS_SECONDS=3600 cargo test --release --test nemesis -- --nocapture`
//! (`CACHELOCK_NEMESIS_SEED` replays a run's random choices).

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use cachelock::pb::{
    election::{
        CampaignRequest, campaign_response::Event as CampaignEvent, election_service_client::ElectionServiceClient,
    },
    lock::{
        AcquireRequest, ExtendRequest, HoldRequest, ReleaseRequest, hold_response::Event as HoldEvent,
        lock_service_client::LockServiceClient,
    },
};
use common::{FaultyLink, MASTER, Node, PATIENCE, TestCluster, TestRedis, TestSentinels, millis};
use tokio::{sync::watch, time::Instant};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The names the workers contend for, with their permits; the last is an
/// election's lock, which only candidates use.
const LOCKS: [(&str, u32); 5] = [
    ("ledger", 1),
    ("report", 1),
    ("seats", 2),
    ("exports", 3),
    ("leader", 1),
];
/// The names of `LOCKS` that the lock workers take; after them, the election.
const LOCK_NAMES: usize = 4;
/// The election's index in `LOCKS`.
const ELECTION: usize = 4;
/// Candidates per run, campaigning on the first two instances.
const CANDIDATES: usize = 5;
/// The longest lease, and so the pause after a loss: short, so that a round sees many.
const MAX_TTL: &str = "2s";
/// Workers per run.
const WORKERS: usize = 12;
/// A bounded round per topology, unless CACHELOCK_NEMESIS_SECONDS says otherwise.
const ROUND_SECONDS: u64 = 40;

// === The random choices ===========================================================

/// xorshift64*: small, and replayable from a printed seed.
#[derive(Clone)]
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.between(low, high))
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.next() % items.len() as u64).unwrap_or(0)]
    }
}

fn seed() -> u64 {
    std::env::var("CACHELOCK_NEMESIS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15).max(1))
}

fn round() -> Duration {
    Duration::from_secs(
        std::env::var("CACHELOCK_NEMESIS_SECONDS")
            .ok()
            .and_then(|seconds| seconds.parse().ok())
            .unwrap_or(ROUND_SECONDS),
    )
}

// === The history ====================================================================

/// One interval during which a worker believed it held a grant.
#[derive(Debug, Clone)]
struct Belief {
    lock: usize,
    start: Instant,
    end: Instant,
    fencing_token: u64,
    worker: usize,
    how: &'static str,
    ended_by: &'static str,
}

/// Everything that happened, for the checker and the summary.
#[derive(Default)]
struct History {
    beliefs: Vec<Belief>,
    operations: BTreeMap<&'static str, u64>,
    faults: Vec<(Instant, String)>,
    /// The distinct refusals of no expected kind, for the summary.
    unexpected: HashSet<String>,
}

type Shared = Arc<Mutex<History>>;

fn note(history: &Shared, operation: &'static str) {
    *history
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .operations
        .entry(operation)
        .or_default() += 1;
}

fn believed(history: &Shared, belief: Belief) {
    if belief.start < belief.end {
        history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .beliefs
            .push(belief);
    }
}

// === cachelock processes ==============================================================

/// A cachelock process, killed with SIGKILL when dropped or when the test binary
/// exits however it exits (a shell that waits on its standard input kills it).
struct Instance {
    port: u16,
    args: Vec<String>,
    log: std::path::PathBuf,
    keeper: Option<(Child, u32)>,
}

impl Instance {
    fn start(args: Vec<String>) -> Instance {
        let port = TestRedis::free_port();
        let log = std::env::temp_dir().join(format!("cachelock-nemesis-{}-{port}.log", std::process::id()));
        let mut instance = Instance {
            port,
            args,
            log,
            keeper: None,
        };
        instance.spawn();
        instance
    }

    fn spawn(&mut self) {
        let script = r#"log=$1; shift; "$@" >>"$log" 2>&1 & pid=$!; echo "$pid"; read _; kill -9 "$pid" 2>/dev/null"#;
        let mut keeper = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&self.log)
            .arg(env!("CARGO_BIN_EXE_cachelock"))
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--metrics-listen",
                "off",
            ])
            .args(&self.args)
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
        self.keeper = Some((keeper, pid));
    }

    /// kill -9: no release, no goodbye; its Holds' leases stay until they run out.
    fn kill(&mut self) {
        if let Some((mut keeper, pid)) = self.keeper.take() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            let _ = keeper.kill();
            let _ = keeper.wait();
        }
    }

    /// SIGSTOP: a frozen VM or a long GC pause; its sockets stay open and silent.
    fn pause(&self) {
        if let Some((_, pid)) = &self.keeper {
            let _ = Command::new("kill").arg("-STOP").arg(pid.to_string()).status();
        }
    }

    fn resume(&self) {
        if let Some((_, pid)) = &self.keeper {
            let _ = Command::new("kill").arg("-CONT").arg(pid.to_string()).status();
        }
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Up to `most` lines of its log (across restarts) that contain one of `needles`.
    fn log_lines(&self, needles: &[&str], most: usize) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|line| needles.iter().any(|needle| line.contains(needle)))
            .take(most)
            .map(str::to_owned)
            .collect()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until its health service answers at all (it may still be NOT_SERVING).
    async fn answering(&self) {
        let channel = Endpoint::from_shared(self.address())
            .expect("an address")
            .connect_lazy();
        let give_up = Instant::now() + PATIENCE;
        let mut health = HealthClient::new(channel);
        while health.check(HealthCheckRequest::default()).await.is_err() {
            assert!(
                Instant::now() < give_up,
                "cachelock never answered:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The flags every instance runs with: production's lock rules (no trust of a
/// young Redis), short leases, and the test suite's quick reconnects.
fn instance_args(redis: &[String]) -> Vec<String> {
    let mut args: Vec<String> = redis.to_vec();
    for arg in [
        "--lock-max-ttl",
        MAX_TTL,
        "--health-interval",
        "100ms",
        "--reconnect-min-backoff",
        "20ms",
        "--reconnect-max-backoff",
        "200ms",
        "--connect-timeout",
        "500ms",
        "--operation-timeout",
        "1s",
        "--shutdown-delay",
        "0s",
    ] {
        args.push(arg.to_owned());
    }
    args
}

// === The workers ===================================================================

fn acquire_request(dice: &mut Dice, lock: usize, worker: usize) -> (AcquireRequest, Duration) {
    let ttl = dice.millis(400, 2_000);
    let wait = if dice.chance(50) {
        dice.millis(1, 2_500)
    } else {
        Duration::ZERO
    };
    let (name, permits) = LOCKS[lock];
    let request = AcquireRequest {
        name: name.to_owned(),
        ttl: Some(millis(i64::try_from(ttl.as_millis()).unwrap_or(2_000))),
        wait_timeout: (!wait.is_zero()).then(|| millis(i64::try_from(wait.as_millis()).unwrap_or(0))),
        owner: format!("worker-{worker}"),
        request_id: if dice.chance(30) {
            format!("{worker}-{}", dice.next())
        } else {
            String::new()
        },
        permits,
    };
    (request, wait)
}

/// A call that gives up by the caller's own clock, as a client with a deadline
/// does: the service may be stopped (SIGSTOP) and answer nothing.
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the worker's own deadline")))
}

/// Counts a refusal by its kind, keeping the text of unexpected ones.
fn refused(history: &Shared, status: &tonic::Status) {
    let message = status.message();
    let kind = match status.code() {
        tonic::Code::Unavailable if message.contains("paused") => "refused: paused",
        tonic::Code::Unavailable => "refused: unavailable",
        tonic::Code::FailedPrecondition if message.contains("evict") => "refused: eviction policy",
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => "refused: deadline",
        tonic::Code::ResourceExhausted => "refused: out of memory",
        tonic::Code::Unknown if message.contains("transport") || message.contains("h2 protocol") => {
            "refused: instance gone"
        }
        _ => {
            let mut history = history.lock().unwrap_or_else(PoisonError::into_inner);
            if history.unexpected.len() < 10 {
                history.unexpected.insert(format!("{:?}: {message}", status.code()));
            }
            "refused: other"
        }
    };
    note(history, kind);
}

fn as_duration(duration: Option<&prost_types::Duration>) -> Duration {
    duration.map_or(Duration::ZERO, |duration| {
        Duration::new(
            u64::try_from(duration.seconds).unwrap_or(0),
            u32::try_from(duration.nanos).unwrap_or(0),
        )
    })
}

/// Acquire, perhaps Extend a few times, then Release or let the lease lapse.
async fn acquire_round(client: &mut LockServiceClient<Channel>, dice: &mut Dice, worker: usize, history: &Shared) {
    let lock = usize::try_from(dice.next() % LOCK_NAMES as u64).unwrap_or(0);
    let (request, wait) = acquire_request(dice, lock, worker);
    let name = request.name.clone();
    let mut call = tonic::Request::new(request.clone());
    call.set_timeout(wait + Duration::from_secs(3));
    let mut sent = Instant::now();
    note(history, "acquire");
    let mut answer = within(wait + Duration::from_secs(3), client.acquire(call)).await;
    // An answer lost to a fault is retried once with the same request id, which
    // finds the grant the first attempt may have made.
    if answer.is_err() && !request.request_id.is_empty() {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(Duration::from_secs(3));
        sent = Instant::now();
        note(history, "acquire retried");
        answer = within(Duration::from_secs(3), client.acquire(call)).await;
    }
    let granted = match answer {
        Ok(granted) => granted.into_inner(),
        Err(status) => {
            refused(history, &status);
            return;
        }
    };
    if !granted.acquired {
        note(history, "acquire: held");
        return;
    }
    note(history, "grant");
    let start = Instant::now();
    // The lease is certain until then, by this worker's own clock.
    let mut certain_until = sent + as_duration(granted.ttl.as_ref());
    let mut ended_by = "lapsed";
    for _ in 0..dice.between(0, 3) {
        tokio::time::sleep(dice.millis(0, 1_200)).await;
        let sent = Instant::now();
        if sent >= certain_until {
            break;
        }
        let mut call = tonic::Request::new(ExtendRequest {
            name: name.clone(),
            token: granted.token.clone(),
            ttl: request.ttl,
        });
        call.set_timeout(Duration::from_secs(1));
        note(history, "extend");
        match within(Duration::from_secs(1), client.extend(call)).await {
            Ok(extended) => certain_until = sent + as_duration(extended.into_inner().ttl.as_ref()),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                certain_until = certain_until.min(Instant::now());
                ended_by = "extend refused";
                break;
            }
            Err(_) => {}
        }
    }
    let end = if dice.chance(70) && Instant::now() < certain_until {
        let released_at = Instant::now();
        let mut call = tonic::Request::new(ReleaseRequest {
            name,
            token: granted.token,
        });
        call.set_timeout(Duration::from_secs(1));
        note(history, "release");
        let _ = within(Duration::from_secs(1), client.release(call)).await;
        ended_by = "released";
        released_at
    } else {
        tokio::time::sleep_until(certain_until).await;
        certain_until
    };
    believed(
        history,
        Belief {
            lock,
            start,
            end: end.min(certain_until),
            fencing_token: granted.fencing_token,
            worker,
            how: "acquire",
            ended_by,
        },
    );
}

/// Hold a lock for a while, or until told it is lost.
async fn hold_round(client: &mut LockServiceClient<Channel>, dice: &mut Dice, worker: usize, history: &Shared) {
    let lock = usize::try_from(dice.next() % LOCK_NAMES as u64).unwrap_or(0);
    let (request, _) = acquire_request(dice, lock, worker);
    let hold = HoldRequest {
        name: request.name,
        ttl: request.ttl,
        wait_timeout: request.wait_timeout,
        owner: request.owner,
        permits: request.permits,
        safety_margin: None,
    };
    note(history, "hold");
    let Ok(stream) = within(Duration::from_secs(3), client.hold(hold)).await else {
        note(history, "refused: unavailable");
        return;
    };
    let mut stream = stream.into_inner();
    let first = match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Ok(Some(first))) => first,
        Ok(Err(status)) => {
            refused(history, &status);
            return;
        }
        _ => return,
    };
    let Some(HoldEvent::Acquired(acquired)) = first.event else {
        return;
    };
    note(history, "grant");
    let start = Instant::now();
    // How long the lease is certain, from each event's receipt: an instance that
    // stops (SIGSTOP) sends no more, and the worker stops believing then.
    let mut certain_until = start + as_duration(acquired.certain_for.as_ref());
    let closes_at = start + dice.millis(100, 6_000);
    let ended_by = loop {
        tokio::select! {
            event = stream.message() => match event {
                Ok(Some(response)) => match response.event {
                    Some(HoldEvent::Renewed(renewed)) => {
                        certain_until = Instant::now() + as_duration(renewed.certain_for.as_ref());
                    }
                    Some(HoldEvent::Lost(_)) => break "told lost",
                    _ => break "stream ended",
                },
                _ => break "stream ended",
            },
            () = tokio::time::sleep_until(closes_at.min(certain_until)) => {
                break if Instant::now() >= certain_until { "certainty ran out" } else { "closed by the worker" };
            }
        }
    };
    let end = Instant::now().min(certain_until);
    drop(stream);
    believed(
        history,
        Belief {
            lock,
            start,
            end,
            fencing_token: acquired.fencing_token,
            worker,
            how: "hold",
            ended_by,
        },
    );
}

async fn worker(worker: usize, addresses: Vec<String>, mut dice: Dice, history: Shared, stop: watch::Receiver<bool>) {
    let mut clients: Vec<LockServiceClient<Channel>> = addresses
        .iter()
        .map(|address| {
            let channel = Endpoint::from_shared(address.clone())
                .expect("an address")
                .connect_timeout(Duration::from_millis(500))
                .connect_lazy();
            LockServiceClient::new(channel)
        })
        .collect();
    while !*stop.borrow() {
        let index = usize::try_from(dice.next() % clients.len() as u64).unwrap_or(0);
        let client = &mut clients[index];
        if dice.chance(35) {
            hold_round(client, &mut dice, worker, &history).await;
        } else {
            acquire_round(client, &mut dice, worker, &history).await;
        }
        tokio::time::sleep(dice.millis(0, 100)).await;
    }
}

/// One campaign for the election: in line until elected (or giving up), then
/// leading for a while, believed from `elected` until the candidate closes the
/// stream, hears `lost`, the stream ends, or the certain time runs out.
async fn campaign_round(
    client: &mut ElectionServiceClient<Channel>,
    dice: &mut Dice,
    candidate: usize,
    history: &Shared,
) {
    let ttl = dice.millis(400, 2_000);
    let request = CampaignRequest {
        name: LOCKS[ELECTION].0.to_owned(),
        candidate: format!("candidate-{candidate}"),
        ttl: Some(millis(i64::try_from(ttl.as_millis()).unwrap_or(2_000))),
        safety_margin: None,
    };
    note(history, "campaign");
    let Ok(stream) = within(Duration::from_secs(3), client.campaign(request)).await else {
        note(history, "refused: unavailable");
        return;
    };
    let mut stream = stream.into_inner();
    // In line behind the others, each leading for up to 3 s: give up after a while.
    let first = match tokio::time::timeout(dice.millis(1_000, 15_000), stream.message()).await {
        Ok(Ok(Some(first))) => first,
        Ok(Err(status)) => {
            refused(history, &status);
            return;
        }
        _ => return,
    };
    let Some(CampaignEvent::Elected(elected)) = first.event else {
        return;
    };
    note(history, "elected");
    let start = Instant::now();
    let mut certain_until = start + as_duration(elected.certain_for.as_ref());
    let closes_at = start + dice.millis(100, 3_000);
    let ended_by = loop {
        tokio::select! {
            event = stream.message() => match event {
                Ok(Some(response)) => match response.event {
                    Some(CampaignEvent::Renewed(renewed)) => {
                        certain_until = Instant::now() + as_duration(renewed.certain_for.as_ref());
                    }
                    Some(CampaignEvent::Lost(_)) => break "told lost",
                    _ => break "stream ended",
                },
                _ => break "stream ended",
            },
            () = tokio::time::sleep_until(closes_at.min(certain_until)) => {
                break if Instant::now() >= certain_until { "certainty ran out" } else { "resigned" };
            }
        }
    };
    let end = Instant::now().min(certain_until);
    drop(stream);
    believed(
        history,
        Belief {
            lock: ELECTION,
            start,
            end,
            fencing_token: elected.term,
            worker: WORKERS + candidate,
            how: "campaign",
            ended_by,
        },
    );
}

async fn candidate(
    candidate: usize,
    addresses: Vec<String>,
    mut dice: Dice,
    history: Shared,
    stop: watch::Receiver<bool>,
) {
    // Two instances, as an application's replicas would campaign through.
    let mut clients: Vec<ElectionServiceClient<Channel>> = addresses
        .iter()
        .take(2)
        .map(|address| {
            let channel = Endpoint::from_shared(address.clone())
                .expect("an address")
                .connect_timeout(Duration::from_millis(500))
                .connect_lazy();
            ElectionServiceClient::new(channel)
        })
        .collect();
    while !*stop.borrow() {
        let index = usize::try_from(dice.next() % clients.len() as u64).unwrap_or(0);
        campaign_round(&mut clients[index], &mut dice, candidate, &history).await;
        tokio::time::sleep(dice.millis(0, 300)).await;
    }
}

// === The checker ===================================================================

/// Every way the history breaks the invariant, in words.
fn violations(history: &History, began: Instant) -> Vec<String> {
    let at = |instant: Instant| format!("{:.3}s", instant.duration_since(began).as_secs_f64());
    let mut found = Vec::new();
    for (lock, (name, permits)) in LOCKS.iter().enumerate() {
        let mut beliefs: Vec<&Belief> = history.beliefs.iter().filter(|belief| belief.lock == lock).collect();
        // Never more believers at once than permits: a sweep over starts and ends
        // (an end at the same instant as a start comes first).
        let mut events: Vec<(Instant, i32, &Belief)> = Vec::new();
        for belief in &beliefs {
            events.push((belief.start, 1, belief));
            events.push((belief.end, -1, belief));
        }
        events.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut holding: Vec<&Belief> = Vec::new();
        for (instant, change, belief) in events {
            if change < 0 {
                holding.retain(|held| !std::ptr::eq(*held, belief));
                continue;
            }
            holding.push(belief);
            if holding.len() > *permits as usize {
                found.push(format!(
                    "{name} (permits {permits}) had {} believed holders at {}: {}",
                    holding.len(),
                    at(instant),
                    holding
                        .iter()
                        .map(|held| format!(
                            "worker {} by {} [{}..{}] fence {} ({})",
                            held.worker,
                            held.how,
                            at(held.start),
                            at(held.end),
                            held.fencing_token,
                            held.ended_by
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
        // Exclusive grants: a grant believed after another ended has a larger token.
        if *permits == 1 {
            beliefs.sort_by_key(|belief| belief.start);
            let mut by_end = beliefs.clone();
            by_end.sort_by_key(|belief| belief.end);
            let (mut ended, mut highest) = (0, 0u64);
            for belief in &beliefs {
                while ended < by_end.len() && by_end[ended].end <= belief.start {
                    highest = highest.max(by_end[ended].fencing_token);
                    ended += 1;
                }
                if highest >= belief.fencing_token {
                    found.push(format!(
                        "{name}: worker {}'s grant at {} has fencing token {}, not above {highest} of a grant \
                         believed before it",
                        belief.worker,
                        at(belief.start),
                        belief.fencing_token
                    ));
                }
            }
        }
        // No token granted to two beliefs that overlap (the same grant comes back to its own retry only).
        let mut seen: HashSet<u64> = HashSet::new();
        let mut by_token: Vec<&Belief> = beliefs.clone();
        by_token.sort_by_key(|belief| (belief.fencing_token, belief.start));
        for pair in by_token.windows(2) {
            if pair[0].fencing_token == pair[1].fencing_token
                && pair[1].start < pair[0].end
                && seen.insert(pair[0].fencing_token)
            {
                found.push(format!(
                    "{name}: fencing token {} was believed by two callers at once (workers {} and {})",
                    pair[0].fencing_token, pair[0].worker, pair[1].worker
                ));
            }
        }
    }
    found
}

// === The nemesis ===================================================================

/// What a topology lets the nemesis break.
trait Target: Send {
    /// Breaks something and heals it, returning what it did.
    fn strike(&mut self, dice: &mut Dice) -> impl std::future::Future<Output = String> + Send;
}

/// The cachelock processes, restarted by a nemesis loop of their own, so that
/// their deaths fall at random among the topology's faults.
type Instances = Arc<Mutex<Vec<Instance>>>;

/// kill -9 of a random instance and a restart after up to a second, or a
/// SIGSTOP of one for up to four seconds.
async fn strike_instance(instances: &Instances, dice: &mut Dice) -> String {
    let index = usize::try_from(dice.next() % instances.lock().unwrap_or_else(PoisonError::into_inner).len() as u64)
        .unwrap_or(0);
    let instance =
        |act: &dyn Fn(&mut Instance)| act(&mut instances.lock().unwrap_or_else(PoisonError::into_inner)[index]);
    if dice.chance(50) {
        instance(&|instance| instance.kill());
        tokio::time::sleep(dice.millis(0, 1_000)).await;
        instance(&|instance| instance.spawn());
        format!("kill -9 of cachelock {index} and a restart")
    } else {
        let stalled = dice.millis(300, 4_000);
        instance(&|instance| instance.pause());
        tokio::time::sleep(stalled).await;
        instance(&|instance| instance.resume());
        format!("SIGSTOP of cachelock {index} for {stalled:?}")
    }
}

/// One redis-server, each instance reaching it through a proxy the nemesis can black-hole.
struct Standalone {
    redis: Node,
    links: Vec<FaultyLink>,
}

impl Target for Standalone {
    async fn strike(&mut self, dice: &mut Dice) -> String {
        match dice.between(0, 4) {
            0 => {
                let empty = dice.chance(50);
                tokio::task::block_in_place(|| self.redis.kill());
                if empty {
                    self.redis.forget_data();
                }
                tokio::time::sleep(dice.millis(0, 800)).await;
                tokio::task::block_in_place(|| self.redis.restart());
                if empty {
                    "kill -9 of Redis and a restart, empty".to_owned()
                } else {
                    "kill -9 of Redis and a restart from its last snapshot".to_owned()
                }
            }
            1 => {
                let stalled = dice.millis(200, 2_500);
                self.redis.pause();
                tokio::time::sleep(stalled).await;
                self.redis.resume();
                format!("SIGSTOP of Redis for {stalled:?}")
            }
            2 => {
                let _ = self.redis.query::<redis::Value>(&["CLIENT", "KILL", "TYPE", "normal"]);
                let _ = self.redis.query::<redis::Value>(&["CLIENT", "KILL", "TYPE", "pubsub"]);
                "CLIENT KILL of every connection".to_owned()
            }
            3 => {
                let index = usize::try_from(dice.next() % self.links.len() as u64).unwrap_or(0);
                let cut = dice.millis(300, 4_000);
                self.links[index].hold_requests(true);
                self.links[index].hold_replies(true);
                tokio::time::sleep(cut).await;
                self.links[index].hold_requests(false);
                self.links[index].hold_replies(false);
                format!("black hole between cachelock {index} and Redis for {cut:?}")
            }
            _ => self.cache_pressure(dice).await,
        }
    }
}

impl Standalone {
    /// An evicting policy under cache pressure, then the policy set back.
    async fn cache_pressure(&mut self, dice: &mut Dice) -> String {
        let info: String = self.redis.query(&["INFO", "memory"]).unwrap_or_default();
        let used: u64 = info
            .lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(2_000_000);
        let policy = *dice.pick(&["allkeys-lru", "volatile-lru", "allkeys-random"]);
        let _ = self.redis.query::<()>(&["CONFIG", "SET", "maxmemory-policy", policy]);
        let _ = self
            .redis
            .query::<()>(&["CONFIG", "SET", "maxmemory", &(used + 300_000).to_string()]);
        let filler = "f".repeat(20_000);
        for key in 0..100 {
            let _ = self
                .redis
                .query::<()>(&["SET", &format!("pressure:{key}"), &filler, "PX", "30000"]);
        }
        tokio::time::sleep(dice.millis(100, 1_500)).await;
        let _ = self
            .redis
            .query::<()>(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
        let _ = self.redis.query::<()>(&["CONFIG", "SET", "maxmemory", "0"]);
        format!("cache pressure under maxmemory-policy {policy}")
    }
}

/// A primary, its replica and three Sentinels; grants wait for the replica.
struct Sentinel {
    group: TestSentinels,
}

impl Target for Sentinel {
    async fn strike(&mut self, dice: &mut Dice) -> String {
        let done = match dice.between(0, 3) {
            0 => {
                let port = self.group.primary_port();
                let node = if Some(self.group.first.port) == port {
                    &mut self.group.first
                } else {
                    &mut self.group.second
                };
                tokio::task::block_in_place(|| node.kill());
                tokio::time::sleep(dice.millis(0, 5_000)).await;
                tokio::task::block_in_place(|| node.restart());
                "kill -9 of the primary and a restart, empty".to_owned()
            }
            1 => {
                let _ = self.group.sentinels[0].query::<redis::Value>(&["SENTINEL", "FAILOVER", MASTER]);
                "SENTINEL FAILOVER".to_owned()
            }
            2 => {
                let stalled = dice.millis(200, 2_000);
                let primary = self.group.primary();
                primary.pause();
                tokio::time::sleep(stalled).await;
                self.group.primary().resume();
                self.group.first.resume();
                self.group.second.resume();
                format!("SIGSTOP of the primary for {stalled:?}")
            }
            _ => {
                let _ = self
                    .group
                    .primary()
                    .query::<redis::Value>(&["CLIENT", "KILL", "TYPE", "normal"]);
                "CLIENT KILL on the primary".to_owned()
            }
        };
        // One failover at a time: the next fault waits until the group is whole.
        let give_up = Instant::now() + common::FORMING;
        while !tokio::task::block_in_place(|| self.group.is_whole()) && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done
    }
}

/// Three primaries with a replica each; grants wait for a replica.
struct Cluster {
    cluster: TestCluster,
}

impl Target for Cluster {
    async fn strike(&mut self, dice: &mut Dice) -> String {
        let primaries: Vec<usize> = tokio::task::block_in_place(|| {
            (0..self.cluster.nodes.len())
                .filter(|&index| self.cluster.nodes[index].info("replication", "role") == "master")
                .collect()
        });
        let Some(&primary) = primaries.get(usize::try_from(dice.next() % 3).unwrap_or(0)) else {
            return "nothing: the Cluster is still forming".to_owned();
        };
        let done = match dice.between(0, 2) {
            0 => {
                tokio::task::block_in_place(|| {
                    self.cluster.nodes[primary].kill();
                    self.cluster.nodes[primary].restart();
                });
                "kill -9 of a Cluster primary and an immediate restart, empty".to_owned()
            }
            1 => {
                let stalled = dice.millis(200, 2_500);
                self.cluster.nodes[primary].pause();
                tokio::time::sleep(stalled).await;
                self.cluster.nodes[primary].resume();
                format!("SIGSTOP of a Cluster primary for {stalled:?}")
            }
            _ => {
                let _ = self.cluster.nodes[primary].query::<redis::Value>(&["CLIENT", "KILL", "TYPE", "normal"]);
                "CLIENT KILL on a Cluster primary".to_owned()
            }
        };
        tokio::task::block_in_place(|| self.cluster.wait_until_formed());
        done
    }
}

// === A run =========================================================================

/// Faults struck by the nemesis loops, with when.
fn struck(history: &Shared, at: Instant, what: String) {
    history
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .faults
        .push((at, what));
}

/// Runs workers against `instances` while `target` strikes (and a loop of its
/// own kills and restarts instances), then checks the history.
async fn run(topology: &str, mut target: impl Target, instances: Vec<Instance>) {
    // One topology at a time: the workers' clocks matter, and two cores are few.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    for instance in &instances {
        instance.answering().await;
    }
    let addresses: Vec<String> = instances.iter().map(Instance::address).collect();
    let instances: Instances = Arc::new(Mutex::new(instances));
    let seed = seed();
    let began = Instant::now();
    let history: Shared = Arc::default();
    let (stop, stopped) = watch::channel(false);
    let mut workers: Vec<_> = (0..WORKERS)
        .map(|index| {
            let dice = Dice(seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            tokio::spawn(worker(index, addresses.clone(), dice, history.clone(), stopped.clone()))
        })
        .collect();
    workers.extend((0..CANDIDATES).map(|index| {
        let dice = Dice(seed ^ ((WORKERS + index) as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        tokio::spawn(candidate(
            index,
            addresses.clone(),
            dice,
            history.clone(),
            stopped.clone(),
        ))
    }));
    let ends = began + round();
    let restarts = {
        let (instances, history, mut dice) = (instances.clone(), history.clone(), Dice(seed.rotate_left(17)));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(dice.millis(2_000, 8_000)).await;
                if Instant::now() >= ends {
                    break;
                }
                let at = Instant::now();
                let what = strike_instance(&instances, &mut dice).await;
                struck(&history, at, what);
            }
        })
    };
    let mut dice = Dice(seed);
    while Instant::now() < ends {
        // Quiet spells between faults, long enough for a pause (the longest lease) to pass.
        tokio::time::sleep(dice.millis(1_000, 5_000)).await;
        let at = Instant::now();
        let what = target.strike(&mut dice).await;
        struck(&history, at, what);
    }
    restarts.await.expect("the restart loop does not panic");
    // A round whose faults left too few grants to say anything (on a loaded
    // machine a Sentinel failover and an empty restart can take most of it) goes
    // on without faults until there are enough, within a bound.
    let quiet = Instant::now();
    while grants(&history) <= 10 && quiet.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = stop.send(true);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .expect("every worker finishes its last round")
            .expect("no worker panics");
    }
    let history = history.lock().unwrap_or_else(PoisonError::into_inner);
    let found = violations(&history, began);
    println!("{}", summary(topology, seed, &history, began, &found));
    if !history.unexpected.is_empty() {
        // What the service said of them: its own account of an INTERNAL answer.
        let instances = instances.lock().unwrap_or_else(PoisonError::into_inner);
        for instance in instances.iter() {
            for line in instance.log_lines(&["internal error", "unexpected Redis error"], 5) {
                println!("  {line}");
            }
        }
    }
    assert!(
        found.is_empty(),
        "{} violation(s) on {topology} (seed {seed}):\n{}\nfaults:\n{}",
        found.len(),
        found.join("\n"),
        history
            .faults
            .iter()
            .map(|(at, what)| format!("{:.3}s {what}", at.duration_since(began).as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        history.operations.get("grant").copied().unwrap_or(0) > 10,
        "too few grants to say anything: {:?}",
        history.operations
    );
}

/// How many grants the workers have seen so far.
fn grants(history: &Shared) -> u64 {
    history
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .operations
        .get("grant")
        .copied()
        .unwrap_or(0)
}

fn summary(topology: &str, seed: u64, history: &History, began: Instant, found: &[String]) -> String {
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    for (_, what) in &history.faults {
        let kind = what.split(" for ").next().unwrap_or(what).to_owned();
        *faults.entry(kind).or_default() += 1;
    }
    format!(
        "nemesis on {topology}: {:.0}s, seed {seed}\n  operations: {:?}\n  believed grants: {}\n  faults: {:?}\n  \
         unexpected refusals: {:?}\n  violations: {}",
        began.elapsed().as_secs_f64(),
        history.operations,
        history.beliefs.len(),
        faults,
        history.unexpected,
        found.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lock_is_held_by_more_callers_than_its_permits_on_one_redis() {
    // RDB snapshots every second with a change: a restart may bring back data
    // that misses the last grants.
    let redis = Node::standalone(&["--save", "1 1"]);
    let mut links = Vec::new();
    let mut instances = Vec::new();
    for _ in 0..3 {
        let link = FaultyLink::start(redis.port).await;
        instances.push(Instance::start(instance_args(&[
            "--redis-url".to_owned(),
            link.url.clone(),
        ])));
        links.push(link);
    }
    run("one Redis", Standalone { redis, links }, instances).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lock_is_held_by_more_callers_than_its_permits_behind_sentinel() {
    let group = TestSentinels::start();
    let redis = [
        "--redis-sentinel-nodes".to_owned(),
        group.urls(),
        "--redis-sentinel-master".to_owned(),
        MASTER.to_owned(),
        "--lock-min-replicas".to_owned(),
        "1".to_owned(),
    ];
    let instances = (0..2).map(|_| Instance::start(instance_args(&redis))).collect();
    run("Sentinel", Sentinel { group }, instances).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lock_is_held_by_more_callers_than_its_permits_on_a_cluster() {
    let cluster = TestCluster::start();
    let redis = [
        "--redis-cluster-nodes".to_owned(),
        cluster.seeds(),
        "--lock-min-replicas".to_owned(),
        "1".to_owned(),
    ];
    let instances = (0..2).map(|_| Instance::start(instance_args(&redis))).collect();
    run("Cluster", Cluster { cluster }, instances).await;
}
