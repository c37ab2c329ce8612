//! Failovers under load, on topologies each test starts for itself: a
//! `CLUSTER FAILOVER`, a `SENTINEL FAILOVER`, and a `kill -9` of a Sentinel
//! group's primary. Workers take and release locks, write and read the cache
//! and check rate limits throughout; the tests assert that cachelock follows
//! the new primary without a restart, that no lock is ever granted to two
//! holders at once, that fencing tokens never go back, and that callers only
//! ever see the documented codes. Each prints how long callers saw failures.
//!
//! Waits are on events (a node's role, a Sentinel's answer, calls succeeding
//! again), never on how long a failover should take.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cachelock::{
    Keys,
    pb::{
        cache::{GetRequest, SetRequest},
        lock::{AcquireRequest, ReleaseRequest},
        ratelimit::{Algorithm, CheckRequest},
    },
};
use common::{
    FORMING, Node, PATIENCE, TestCluster, TestSentinels, TestService, eventually, eventually_within, holds_within,
    millis,
};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Lease of every grant in these tests.
const LEASE: Duration = Duration::from_secs(2);

/// What the workers saw of the locks, checked as each grant arrives.
#[derive(Default)]
struct LeaseBook {
    /// Per lock: the worker that believes it holds it, and until when.
    holders: HashMap<String, (usize, Instant)>,
    /// Per lock: the last fencing token handed out.
    fences: HashMap<String, u64>,
    /// Grants made while another worker still rightly believed it held the lock.
    double_grants: Vec<String>,
    /// Grants whose fencing token did not exceed the one before.
    regressions: Vec<String>,
}

impl LeaseBook {
    /// Records a grant to `worker`, whose request was sent at `sent`.
    ///
    /// A holder believes in its lease until `sent + LEASE` (its lease began after
    /// it sent the request). A grant to another worker that arrives before then
    /// was made while the first lease was still running in Redis: a double grant.
    fn granted(&mut self, name: &str, worker: usize, sent: Instant, fence: u64) {
        let now = Instant::now();
        if let Some((holder, until)) = self.holders.get(name)
            && *holder != worker
            && *until > now
        {
            self.double_grants
                .push(format!("{name}: worker {worker} granted while worker {holder} held it"));
        }
        let last = self.fences.get(name).copied().unwrap_or(0);
        if fence <= last {
            self.regressions
                .push(format!("{name}: fencing token {fence} after {last}"));
        }
        self.fences.insert(name.to_owned(), fence.max(last));
        self.holders.insert(name.to_owned(), (worker, sent + LEASE));
    }

    /// `worker` stops believing it holds `name` (before it sends the Release).
    fn releasing(&mut self, name: &str, worker: usize) {
        if self.holders.get(name).is_some_and(|(holder, _)| *holder == worker) {
            self.holders.remove(name);
        }
    }
}

/// One call's outcome.
struct Outcome {
    at: Instant,
    ok: bool,
}

/// What one worker saw.
#[derive(Default)]
struct Seen {
    outcomes: Vec<Outcome>,
    /// The code and message of the last failed call.
    last_failure: Option<String>,
    /// Codes outside the documented ones for a failover (UNAVAILABLE, DEADLINE_EXCEEDED).
    unexpected: Vec<String>,
}

impl Seen {
    fn record(&mut self, result: Result<(), tonic::Status>) {
        let ok = match result {
            Ok(()) => true,
            Err(status) => {
                let failure = format!("{:?}: {}", status.code(), status.message());
                if !matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) {
                    self.unexpected.push(failure.clone());
                }
                self.last_failure = Some(failure);
                false
            }
        };
        self.outcomes.push(Outcome { at: Instant::now(), ok });
    }
}

/// Workers calling the service until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    book: Arc<Mutex<LeaseBook>>,
    seen: Vec<(String, Arc<Mutex<Seen>>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Two workers per lock name, two cache workers and a rate-limit worker.
    fn start(service: &TestService, lock_names: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let book = Arc::new(Mutex::new(LeaseBook::default()));
        let mut load = Load {
            stop,
            book,
            seen: Vec::new(),
            tasks: Vec::new(),
        };
        for (index, name) in lock_names.iter().flat_map(|name| [name, name]).enumerate() {
            let seen = load.watch(format!("lock worker {index} on {name}"));
            let (stop, book, name) = (load.stop.clone(), load.book.clone(), name.clone());
            let mut client = service.locks();
            load.tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let reply = client
                        .acquire(AcquireRequest {
                            name: name.clone(),
                            ttl: Some(millis(LEASE.as_millis() as i64)),
                            wait_timeout: Some(millis(500)),
                            owner: format!("worker-{index}"),
                            request_id: String::new(),
                            permits: 0,
                        })
                        .await;
                    let grant = match reply {
                        Ok(grant) => grant.into_inner(),
                        Err(status) => {
                            seen.lock().unwrap_or_else(PoisonError::into_inner).record(Err(status));
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    seen.lock().unwrap_or_else(PoisonError::into_inner).record(Ok(()));
                    // A grant that arrives after its lease could have ended is of no use.
                    if !grant.acquired || sent.elapsed() >= LEASE {
                        continue;
                    }
                    book.lock().unwrap_or_else(PoisonError::into_inner).granted(
                        &name,
                        index,
                        sent,
                        grant.fencing_token,
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    book.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .releasing(&name, index);
                    let released = client
                        .release(ReleaseRequest {
                            name: name.clone(),
                            token: grant.token,
                        })
                        .await
                        .map(|_| ());
                    // A lease that ended meanwhile is FAILED_PRECONDITION: not a failover symptom.
                    if !matches!(&released, Err(status) if status.code() == Code::FailedPrecondition) {
                        seen.lock().unwrap_or_else(PoisonError::into_inner).record(released);
                    }
                }
            }));
        }
        for worker in 0..2 {
            let seen = load.watch(format!("cache worker {worker}"));
            let stop = load.stop.clone();
            let mut client = service.cache();
            load.tasks.push(tokio::spawn(async move {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let key = format!("failover:{worker}:{}", round % 50);
                    let set = client
                        .set(SetRequest {
                            key: key.clone(),
                            value: round.to_string().into_bytes(),
                            ttl: Some(millis(60_000)),
                            condition: 0,
                            lease_token: String::new(),
                            stale_ttl: None,
                            fence: None,
                        })
                        .await
                        .map(|_| ());
                    seen.lock().unwrap_or_else(PoisonError::into_inner).record(set);
                    let get = client.get(GetRequest { key }).await.map(|_| ());
                    seen.lock().unwrap_or_else(PoisonError::into_inner).record(get);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        let seen = load.watch("rate-limit worker".to_owned());
        let stop = load.stop.clone();
        let mut client = service.ratelimit();
        load.tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let check = client
                    .check(CheckRequest {
                        key: "failover".to_owned(),
                        limit: 1_000_000,
                        period: Some(millis(60_000)),
                        cost: None,
                        algorithm: Algorithm::TokenBucket as i32,
                        // Decided by Redis or failed: no outage policy hides a failure.
                        on_unavailable: 0,
                        calendar: None,
                        wait: None,
                        leased: false,
                    })
                    .await
                    .and_then(|reply| {
                        if reply.get_ref().decided_by_outage_policy {
                            Err(tonic::Status::unavailable("decided by the outage policy"))
                        } else {
                            Ok(())
                        }
                    });
                seen.lock().unwrap_or_else(PoisonError::into_inner).record(check);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
        load
    }

    fn watch(&mut self, name: String) -> Arc<Mutex<Seen>> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        self.seen.push((name, seen.clone()));
        seen
    }

    /// Waits until every worker has had `count` successful calls that began
    /// after `since`.
    async fn wait_for_successes(&self, since: Instant, count: usize) {
        if let Err(lagging) = self.successes_after(since, count).await {
            panic!("{lagging}");
        }
    }

    /// Waits until every worker has had `count` successful calls that began
    /// after `since`, or [`PATIENCE`] passes: then the error names the workers
    /// still short of it, with what each saw last.
    async fn successes_after(&self, since: Instant, count: usize) -> Result<(), String> {
        let lagging = || -> Vec<String> {
            self.seen
                .iter()
                .filter_map(|(name, seen)| {
                    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                    let ok = seen
                        .outcomes
                        .iter()
                        .filter(|outcome| outcome.ok && outcome.at > since)
                        .count();
                    (ok < count).then(|| format!("{name}: {ok} ok, last failure {:?}", seen.last_failure))
                })
                .collect()
        };
        if holds_within(PATIENCE, async || lagging().is_empty()).await {
            return Ok(());
        }
        Err(format!(
            "not every worker succeeded {count} times within {PATIENCE:?}:\n{}",
            lagging().join("\n")
        ))
    }

    /// Stops the workers and reports: the longest time any worker went from
    /// `trigger` to its last failure; failed calls in all; and asserts that no
    /// lock was granted twice, no fencing token went back, and no caller saw
    /// an undocumented code.
    async fn stop(self, trigger: Instant, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a worker does not panic");
        }
        // Per kind of worker (lock, cache, rate-limit): calls, failures, and the last failure.
        let mut kinds: Vec<(&str, usize, usize, Duration)> = Vec::new();
        for (name, seen) in &self.seen {
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            assert!(seen.unexpected.is_empty(), "{name} saw {:?}", seen.unexpected);
            let kind = name.split(' ').next().unwrap_or_default();
            let index = match kinds.iter().position(|(known, ..)| *known == kind) {
                Some(index) => index,
                None => {
                    kinds.push((kind, 0, 0, Duration::ZERO));
                    kinds.len() - 1
                }
            };
            let entry = &mut kinds[index];
            entry.1 += seen.outcomes.len();
            entry.2 += seen.outcomes.iter().filter(|outcome| !outcome.ok).count();
            if let Some(last) = seen.outcomes.iter().rev().find(|outcome| !outcome.ok) {
                entry.3 = entry.3.max(last.at.saturating_duration_since(trigger));
            }
        }
        for (kind, calls, failed, last) in &kinds {
            let last = if *failed == 0 {
                "none failed".to_owned()
            } else {
                format!("the last failed {} ms after the trigger", last.as_millis())
            };
            eprintln!("{what}: {kind} calls: {calls}, {failed} failed; {last}");
        }
        let book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(book.double_grants.is_empty(), "double grants: {:?}", book.double_grants);
        assert!(
            book.regressions.is_empty(),
            "fencing tokens went back: {:?}",
            book.regressions
        );
        assert!(!book.fences.is_empty(), "no lock was ever granted");
    }
}

/// The Redis key of lock `name` in the default tenant, under the default prefix.
fn lock_key(name: &str) -> String {
    Keys::new("cachelock").space("default").lock(name).holders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_mid_load_is_followed_with_no_double_grant() {
    let cluster = TestCluster::start();
    let service = TestService::start_with_args(&["--redis-cluster-nodes", &cluster.seeds()]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let names: Vec<String> = (0..6).map(|i| format!("failover-{i}")).collect();
    let load = Load::start(&service, &names);
    load.wait_for_successes(Instant::now(), 20).await;

    // Fail over the shard that holds the first lock (the node that does not redirect).
    let owner = cluster
        .primaries()
        .into_iter()
        .find(|node| node.query::<i64>(&["EXISTS", &lock_key(&names[0])]).is_ok())
        .map(|node| node.port)
        .expect("a primary owns the lock's slot");
    let replica = cluster
        .nodes
        .iter()
        .find(|node| node.info("replication", "master_port") == owner.to_string())
        .expect("the owner has a replica");
    let trigger = Instant::now();
    let _: String = replica.query(&["CLUSTER", "FAILOVER"]).expect("CLUSTER FAILOVER");
    eventually("the replica becoming primary", async || {
        replica.info("replication", "role") == "master"
    })
    .await;
    let promoted = Instant::now();
    eprintln!(
        "CLUSTER FAILOVER: the replica was primary {} ms after the command",
        (promoted - trigger).as_millis()
    );
    load.wait_for_successes(promoted, 20).await;
    load.stop(trigger, "CLUSTER FAILOVER").await;
    assert_eq!(service.health_status("").await, Ok(ServingStatus::Serving));
}

/// A service behind `group`'s Sentinels, with `extra` flags, once it serves.
async fn behind(group: &TestSentinels, extra: &[&str]) -> TestService {
    let urls = group.urls();
    let mut args = vec![
        "--redis-sentinel-nodes",
        &urls,
        "--redis-sentinel-master",
        common::MASTER,
    ];
    args.extend_from_slice(extra);
    let service = TestService::start_with_args(&args).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    service
}

/// Waits until the Sentinels name a primary other than the one on `old_port`, and returns when.
async fn new_primary_named(group: &TestSentinels, old_port: u16) -> Instant {
    eventually("the Sentinels naming a new primary", async || {
        group.primary_port().is_some_and(|port| port != old_port)
    })
    .await;
    Instant::now()
}

/// Waits until the group is whole again after `what` at `trigger` (the
/// primary on `old` before it), and returns when.
async fn whole_again(group: &TestSentinels, old: u16, trigger: Instant, what: &str) -> Instant {
    let whole = holds_within(REJOIN, async || group.is_whole()).await;
    assert!(
        whole,
        "{what}: no primary had a replica in sync within {REJOIN:?}:\n{}",
        group.describe()
    );
    let now = Instant::now();
    let primary = if group.primary_port() == Some(old) {
        "the old one"
    } else {
        "the promoted one"
    };
    eprintln!(
        "{what}: a primary had a replica in sync again {} ms after it (primary on {primary})",
        (now - trigger).as_millis()
    );
    now
}

/// How long a Sentinel group may take to be whole again (a primary with a
/// replica in sync) once the old primary is back. A Sentinel turns the returning
/// node into a replica only after it has reported itself primary for 8 s, on
/// INFO it sends every 10 s, and it suspends every action for 30 s ("TILT")
/// whenever its own timer ran more than 2 s late, which a loaded 2-core machine
/// can cause; there it may also fail over once more while the node catches up.
const REJOIN: Duration = Duration::from_secs(120);

// SENTINEL FAILOVER is not coordinated: the old primary takes writes until the
// Sentinels turn it into a replica, and those writes are lost. So a lock granted
// there in that window could be granted again; with --lock-min-replicas 1 such a
// grant is never acknowledged (no replica follows the old primary any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_load_is_followed_with_no_double_grant_when_grants_wait_for_a_replica() {
    let group = TestSentinels::start();
    let service = behind(&group, &["--lock-min-replicas", "1"]).await;
    let names: Vec<String> = (0..3).map(|i| format!("failover-{i}")).collect();
    let load = Load::start(&service, &names);
    load.wait_for_successes(Instant::now(), 20).await;

    let old = group.primary().port;
    let trigger = Instant::now();
    let _: String = group.sentinels[0]
        .query(&["SENTINEL", "FAILOVER", common::MASTER])
        .expect("SENTINEL FAILOVER");
    let promoted = new_primary_named(&group, old).await;
    eprintln!(
        "SENTINEL FAILOVER: the Sentinels named the new primary {} ms after the command",
        (promoted - trigger).as_millis()
    );
    let rejoined = whole_again(&group, old, trigger, "SENTINEL FAILOVER").await;
    if let Err(lagging) = load.successes_after(rejoined, 20).await {
        panic!("{lagging}\n{}", group.describe());
    }
    service.wait_for_health("", ServingStatus::Serving).await;
    load.stop(trigger, "SENTINEL FAILOVER").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sentinel_primary_is_replaced_with_no_double_grant_when_grants_wait_for_a_replica() {
    let mut group = TestSentinels::start();
    let service = behind(&group, &["--lock-min-replicas", "1"]).await;
    let names: Vec<String> = (0..3).map(|i| format!("failover-{i}")).collect();
    let load = Load::start(&service, &names);
    load.wait_for_successes(Instant::now(), 20).await;

    let old = group.primary().port;
    let trigger = Instant::now();
    let killed: &mut Node = if group.first.port == old {
        &mut group.first
    } else {
        &mut group.second
    };
    killed.kill();
    let promoted = new_primary_named(&group, old).await;
    eprintln!(
        "kill -9 of the primary: the Sentinels named the new primary {} ms after the kill",
        (promoted - trigger).as_millis()
    );
    // Until the old primary is back as a replica, no grant can be acknowledged
    // by one, so Acquires answer UNAVAILABLE; it comes back empty and must not
    // confuse anyone.
    let killed: &mut Node = if group.first.port == old {
        &mut group.first
    } else {
        &mut group.second
    };
    killed.restart();
    let rejoined = whole_again(&group, old, trigger, "kill -9 of the primary").await;
    if let Err(lagging) = load.successes_after(rejoined, 20).await {
        panic!("{lagging}\n{}", group.describe());
    }
    service.wait_for_health("", ServingStatus::Serving).await;
    load.stop(trigger, "kill -9 of the primary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_primary_is_replaced_with_no_double_grant_when_grants_wait_for_a_replica() {
    let mut cluster = TestCluster::start();
    let service =
        TestService::start_with_args(&["--redis-cluster-nodes", &cluster.seeds(), "--lock-min-replicas", "1"]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let names: Vec<String> = (0..6).map(|i| format!("failover-{i}")).collect();
    let load = Load::start(&service, &names);
    load.wait_for_successes(Instant::now(), 20).await;

    let owner = cluster
        .primaries()
        .into_iter()
        .find(|node| node.query::<i64>(&["EXISTS", &lock_key(&names[0])]).is_ok())
        .map(|node| node.port)
        .expect("a primary owns the lock's slot");
    let replica = cluster
        .nodes
        .iter()
        .position(|node| node.info("replication", "master_port") == owner.to_string())
        .expect("the owner has a replica");
    let killed = cluster
        .nodes
        .iter()
        .position(|node| node.port == owner)
        .expect("the owner is a node");
    let trigger = Instant::now();
    cluster.nodes[killed].kill();
    eventually("the replica becoming primary", async || {
        cluster.nodes[replica].info("replication", "role") == "master"
    })
    .await;
    eprintln!(
        "kill -9 of a Cluster primary: its replica was primary {} ms after the kill",
        trigger.elapsed().as_millis()
    );
    // It comes back with its nodes.conf, and the Cluster makes it the new primary's replica.
    cluster.nodes[killed].restart();
    let returned = &cluster.nodes[killed];
    eventually_within(FORMING, "the old primary rejoining as a replica", async || {
        returned.info("replication", "role") == "slave" && returned.info("replication", "master_link_status") == "up"
    })
    .await;
    let rejoined = Instant::now();
    eprintln!(
        "kill -9 of a Cluster primary: the old primary was a replica in sync {} ms after the kill",
        (rejoined - trigger).as_millis()
    );
    load.wait_for_successes(rejoined, 20).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    load.stop(trigger, "kill -9 of a Cluster primary").await;
}
