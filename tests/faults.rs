//! What callers see when Redis misbehaves: real redis-servers killed, restarted,
//! paused, flushed, filled, demoted, locked out and made busy, and a proxy that
//! holds or cuts the connection at chosen moments. Every test synchronises on
//! events (health changes, log lines, bytes arriving at the proxy), never on
//! how long something should take.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cachelock::pb::{
    cache::{GetOrLeaseRequest, IncrementRequest, SetCondition, SetRequest, TakeRequest},
    lock::{AcquireRequest, DescribeRequest, ExtendRequest, ReleaseRequest},
    ratelimit::{CheckRequest, OutagePolicy},
    session::{CreateRequest, GetRequest as SessionGet, ListUserSessionsRequest},
};
use common::requests::{self, get};
use common::{CapturedLogs, FaultyLink, PATIENCE, TestRedis, TestService, assert_reason, millis, redis_and_service};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

const SERVING: ServingStatus = ServingStatus::Serving;
const NOT_SERVING: ServingStatus = ServingStatus::NotServing;

fn set(key: &str, condition: SetCondition) -> SetRequest {
    SetRequest {
        condition: condition as i32,
        ..requests::set(key, b"v")
    }
}

fn increment(key: &str) -> IncrementRequest {
    IncrementRequest {
        key: key.to_owned(),
        delta: 1,
        ttl: None,
        fence: None,
    }
}

fn acquire(name: &str, ttl_ms: i64) -> AcquireRequest {
    requests::acquire(name, ttl_ms, 0)
}

fn check(key: &str) -> CheckRequest {
    CheckRequest {
        on_unavailable: OutagePolicy::FailClosed as i32,
        ..requests::check(key, 1_000_000, 60_000)
    }
}

fn new_session(user: &str) -> CreateRequest {
    CreateRequest {
        user_id: user.to_owned(),
        attributes: HashMap::new(),
        idle_timeout: None,
        absolute_timeout: None,
        client: None,
    }
}

/// Runs `call` but fails the test instead of hanging if it never returns.
async fn returns<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the call returns instead of hanging")
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, reason: &str, words: &str) {
    match result {
        Err(status) => {
            assert_reason(&status, code, reason);
            assert!(status.message().contains(words), "{words:?} not in {status:?}");
        }
        Ok(answer) => panic!("expected {code:?}, got {answer:?}"),
    }
}

// --- Load across the four services, for restarts under load ---------------------

/// One call's start and whether it got the answer it asked for.
#[derive(Debug, Clone)]
struct Outcome {
    started: Instant,
    service: &'static str,
    failure: Option<String>,
}

/// Eight callers over the four services, each recording every call.
struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(service: &TestService) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..8)
            .map(|worker| {
                let (stop, outcomes) = (stop.clone(), outcomes.clone());
                let (mut cache, mut ratelimit, mut locks, mut sessions) = (
                    service.cache(),
                    service.ratelimit(),
                    service.locks(),
                    service.sessions(),
                );
                tokio::spawn(async move {
                    let mut round = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        round += 1;
                        let started = Instant::now();
                        let key = format!("w{worker}-{round}");
                        let (service, failure) = match worker % 4 {
                            0 => ("cache", {
                                let stored = cache.set(set(&key, SetCondition::Always)).await;
                                match stored {
                                    Ok(_) => cache.get(get(&key)).await.err().map(|s| s.to_string()),
                                    Err(status) => Some(status.to_string()),
                                }
                            }),
                            1 => (
                                "ratelimit",
                                match ratelimit.check(check(&key)).await {
                                    Ok(answer) if answer.get_ref().decided_by_outage_policy => {
                                        Some("decided by the outage policy".to_owned())
                                    }
                                    Ok(_) => None,
                                    Err(status) => Some(status.to_string()),
                                },
                            ),
                            2 => (
                                "lock",
                                match locks.acquire(acquire(&key, 10_000)).await {
                                    Ok(grant) => locks
                                        .release(ReleaseRequest {
                                            name: key.clone(),
                                            token: grant.into_inner().token,
                                        })
                                        .await
                                        .err()
                                        .map(|s| s.to_string()),
                                    Err(status) => Some(status.to_string()),
                                },
                            ),
                            _ => (
                                "session",
                                match sessions.create(new_session(&key)).await {
                                    Ok(created) => {
                                        let id = created.into_inner().session.map(|s| s.id).unwrap_or_default();
                                        sessions
                                            .get(SessionGet { id, touch: true })
                                            .await
                                            .err()
                                            .map(|s| s.to_string())
                                    }
                                    Err(status) => Some(status.to_string()),
                                },
                            ),
                        };
                        outcomes.lock().unwrap().push(Outcome {
                            started,
                            service,
                            failure,
                        });
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            workers,
        }
    }

    /// Waits until `count` calls that started after `since` have finished.
    async fn wait_for_calls_after(&self, since: Instant, count: usize) {
        let give_up = tokio::time::Instant::now() + PATIENCE;
        loop {
            let done = self
                .outcomes
                .lock()
                .unwrap()
                .iter()
                .filter(|outcome| outcome.started >= since)
                .count();
            if done >= count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "only {done} calls finished after the restart"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = returns(worker).await;
        }
        Arc::try_unwrap(self.outcomes).unwrap().into_inner().unwrap()
    }
}

/// Kills Redis under load and starts it again with its data after `gap`; no call
/// that started once Redis was back may fail.
async fn restart_under_load(gap: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let mut redis = TestRedis::start_with(&["--dir", &dir_arg, "--dbfilename", "faults.rdb"]).await;
    // The snapshot is taken just before the stop, so it misses nothing: locks need no pause.
    let service = TestService::start(&redis.url(), &["--lock-trust-persistence"]).await;
    service.wait_for_health("", SERVING).await;
    let load = Load::start(&service);
    load.wait_for_calls_after(Instant::now(), 100).await;

    // The data survives the restart (as with persistence), so locks need no pause.
    let _: () = redis.command(&["SAVE"]).await;
    redis.stop().await;
    let down = Instant::now();
    if !gap.is_zero() {
        tokio::time::sleep(gap).await;
    }
    redis.start_again().await;
    let back = Instant::now();
    service.wait_for_health("", SERVING).await;
    let serving_again = back.elapsed();
    load.wait_for_calls_after(back, 400).await;
    let outcomes = load.stop().await;

    let failed_after: Vec<&Outcome> = outcomes
        .iter()
        .filter(|outcome| outcome.started >= back && outcome.failure.is_some())
        .collect();
    let mut failed_during: HashMap<&str, usize> = HashMap::new();
    for outcome in &outcomes {
        if outcome.started >= down && outcome.started < back && outcome.failure.is_some() {
            *failed_during.entry(outcome.service).or_default() += 1;
        }
    }
    eprintln!(
        "restart after {gap:?}: {} calls, failed while Redis was down {failed_during:?}, {} failed after it was \
         back; health SERVING {serving_again:?} after it was back",
        outcomes.len(),
        failed_after.len()
    );
    assert!(
        failed_after.is_empty(),
        "calls failed after Redis was back: {failed_after:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_made_after_a_fast_restart_fails() {
    restart_under_load(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_made_after_redis_is_back_from_an_outage_fails() {
    restart_under_load(Duration::from_secs(1)).await;
}

// --- Down, and back ----------------------------------------------------------------

#[tokio::test]
async fn while_redis_is_down_calls_are_refused_by_a_fresh_attempt_not_a_timeout() {
    let (mut redis, service) = redis_and_service(&["--operation-timeout", "30s"]).await;
    let mut cache = service.cache();
    cache.set(set("k", SetCondition::Always)).await.unwrap();
    service.wait_for_health("", SERVING).await;

    redis.stop().await;
    service.wait_for_health("", NOT_SERVING).await;
    // The answer names the refused connection: it came from an attempt made for
    // this call, not from waiting out the 30 s operation timeout.
    for _ in 0..3 {
        let started = Instant::now();
        assert_code(
            returns(cache.get(get("k"))).await,
            Code::Unavailable,
            "REDIS_UNAVAILABLE",
            "connection refused",
        );
        eprintln!("UNAVAILABLE while Redis is down after {:?}", started.elapsed());
    }
    assert_code(
        returns(cache.increment(increment("n"))).await,
        Code::Unavailable,
        "REDIS_UNAVAILABLE",
        "nothing was applied",
    );

    redis.start_again().await;
    // The first call after Redis is back succeeds.
    returns(cache.set(set("k", SetCondition::Always))).await.unwrap();
    service.wait_for_health("", SERVING).await;
}

#[tokio::test]
async fn the_service_starts_while_redis_is_down_and_serves_once_it_is_up() {
    let port = TestRedis::free_port();
    let service = TestService::start(&format!("redis://127.0.0.1:{port}"), &[]).await;
    let mut cache = service.cache();

    assert_eq!(service.health_status("").await, Ok(NOT_SERVING));
    assert_code(
        returns(cache.get(get("k"))).await,
        Code::Unavailable,
        "REDIS_UNAVAILABLE",
        "",
    );

    let _redis = TestRedis::start_on(port).await;
    assert!(
        returns(cache.set(set("k", SetCondition::Always)))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    service.wait_for_health("", SERVING).await;
}

#[tokio::test]
async fn redis_closing_idle_connections_costs_no_call() {
    let (redis, service) = redis_and_service(&["--health-interval", "30s"]).await;
    let mut cache = service.cache();
    cache.set(set("k", SetCondition::Always)).await.unwrap();
    let ours = |list: String| -> Vec<String> {
        list.lines()
            .filter(|line| line.contains("name=cachelock-"))
            .filter_map(|line| line.split(' ').next().map(str::to_owned))
            .collect()
    };
    let before = ours(redis.command(&["CLIENT", "LIST"]).await);
    assert_eq!(before.len(), 2, "one read and one write connection");

    let _: () = redis.command(&["CONFIG", "SET", "timeout", "1"]).await;
    // Wait until Redis has closed both idle connections and the service has
    // reconnected (new client ids), which it does as soon as the socket closes.
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = ours(redis.command(&["CLIENT", "LIST"]).await);
        if now.len() == 2 && now.iter().all(|id| !before.contains(id)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the service did not reconnect: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _: () = redis.command(&["CONFIG", "SET", "timeout", "0"]).await;
    assert!(cache.get(get("k")).await.unwrap().into_inner().found);
}

#[tokio::test]
async fn killing_the_shared_connections_under_load_fails_no_read() {
    let (redis, service) = redis_and_service(&[]).await;
    let mut cache = service.cache();
    cache.set(set("k", SetCondition::Always)).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (mut cache, stop) = (service.cache(), stop.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    reads += 1;
                    if let Err(status) = cache.get(get("k")).await {
                        failures.push(status);
                    }
                }
                (reads, failures)
            })
        })
        .collect();
    for _ in 0..5 {
        let _: i64 = redis
            .command(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let (reads, failures) = returns(reader).await.unwrap();
        assert!(reads > 0);
        assert!(failures.is_empty(), "reads failed: {failures:?}");
    }
}

// --- A connection cut with a request in flight (the proxy) -------------------------

/// A Redis, a proxy in front of it, and the service through the proxy. The slow
/// prober keeps its traffic out of the way of the held requests.
async fn behind_a_faulty_link() -> (TestRedis, FaultyLink, TestService) {
    let redis = TestRedis::start().await;
    let link = FaultyLink::start(redis.port()).await;
    let service = TestService::start(&link.url, &["--health-interval", "60s"]).await;
    service.wait_for_health("", SERVING).await;
    (redis, link, service)
}

#[tokio::test]
async fn a_read_whose_connection_is_cut_is_sent_again_on_the_next() {
    let (_redis, link, service) = behind_a_faulty_link().await;
    let mut cache = service.cache();
    cache.set(set("k", SetCondition::Always)).await.unwrap();

    link.hold_requests(true);
    let call = tokio::spawn(async move { cache.get(get("k")).await });
    link.held_bytes_arrived().await;
    link.cut().await;
    link.hold_requests(false);
    assert!(returns(call).await.unwrap().unwrap().into_inner().found);
}

#[tokio::test]
async fn an_increment_whose_connection_is_cut_may_have_applied_and_is_not_repeated() {
    let (redis, link, service) = behind_a_faulty_link().await;
    let mut cache = service.cache();

    // The increment reaches Redis and runs; its answer never comes back.
    link.hold_replies(true);
    let call = tokio::spawn(async move { cache.increment(increment("n")).await });
    link.held_bytes_arrived().await;
    link.cut().await;
    link.hold_replies(false);
    assert_code(
        returns(call).await.unwrap(),
        Code::DeadlineExceeded,
        "MAY_HAVE_APPLIED",
        "may or may not",
    );
    // It ran once, and only once: the service did not send it again.
    let counter: Vec<String> = redis.command(&["KEYS", "cachelock:*:cache:*n"]).await;
    let value: String = redis.command(&["GET", &counter[0]]).await;
    assert_eq!(value, "1");
}

#[tokio::test]
async fn an_acquire_whose_answer_was_lost_is_sent_again_and_finds_its_own_grant() {
    let (_redis, link, service) = behind_a_faulty_link().await;
    let mut locks = service.locks();

    link.hold_replies(true);
    let mut first = locks.clone();
    let call = tokio::spawn(async move { first.acquire(acquire("job", 30_000)).await });
    link.held_bytes_arrived().await;
    link.cut().await;
    link.hold_replies(false);
    let grant = returns(call).await.unwrap().unwrap().into_inner();
    assert!(grant.acquired, "the grant made before the cut is this call's");

    let other = locks.acquire(acquire("job", 30_000)).await.unwrap().into_inner();
    assert!(!other.acquired, "one holder only");
    locks
        .release(ReleaseRequest {
            name: "job".to_owned(),
            token: grant.token,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_release_whose_answer_was_lost_is_sent_again_and_still_succeeds() {
    let (_redis, link, service) = behind_a_faulty_link().await;
    let mut locks = service.locks();
    let grant = locks.acquire(acquire("job", 30_000)).await.unwrap().into_inner();

    link.hold_replies(true);
    let mut releaser = locks.clone();
    let token = grant.token.clone();
    let call = tokio::spawn(async move {
        releaser
            .release(ReleaseRequest {
                name: "job".to_owned(),
                token,
            })
            .await
    });
    link.held_bytes_arrived().await;
    link.cut().await;
    link.hold_replies(false);
    returns(call)
        .await
        .unwrap()
        .expect("a repeated Release by the same token succeeds");
    let state = locks
        .describe(DescribeRequest { name: "job".to_owned() })
        .await
        .unwrap()
        .into_inner();
    assert!(!state.held);
}

#[tokio::test]
async fn a_session_create_whose_answer_was_lost_creates_one_session() {
    let (_redis, link, service) = behind_a_faulty_link().await;
    let mut sessions = service.sessions();

    link.hold_replies(true);
    let mut creator = sessions.clone();
    let call = tokio::spawn(async move { creator.create(new_session("zoe")).await });
    link.held_bytes_arrived().await;
    link.cut().await;
    link.hold_replies(false);
    let created = returns(call).await.unwrap().unwrap().into_inner().session.unwrap();
    let listed = sessions
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "zoe".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handle, created.handle);
}

#[tokio::test]
async fn writes_that_timed_out_say_whether_they_may_have_applied() {
    let redis = TestRedis::start().await;
    let link = FaultyLink::start(redis.port()).await;
    let service = TestService::start(&link.url, &["--health-interval", "60s", "--operation-timeout", "300ms"]).await;
    service.wait_for_health("", SERVING).await;
    let (mut cache, mut locks, mut sessions) = (service.cache(), service.locks(), service.sessions());

    // Every command runs in Redis, but no answer comes back in time.
    link.hold_replies(true);
    assert_code(
        cache.increment(increment("n")).await,
        Code::DeadlineExceeded,
        "MAY_HAVE_APPLIED",
        "may or may not",
    );
    assert_code(
        cache.set(set("once", SetCondition::IfAbsent)).await,
        Code::DeadlineExceeded,
        "MAY_HAVE_APPLIED",
        "may or may not",
    );
    assert_code(
        locks.acquire(acquire("job", 30_000)).await,
        Code::DeadlineExceeded,
        "MAY_HAVE_APPLIED",
        "may or may not",
    );
    assert_code(
        sessions.create(new_session("yves")).await,
        Code::DeadlineExceeded,
        "MAY_HAVE_APPLIED",
        "may or may not",
    );
    // A plain SET is safe to repeat, so the caller is told to retry.
    assert_code(
        cache.set(set("k", SetCondition::Always)).await,
        Code::Unavailable,
        "REDIS_TIMEOUT",
        "retry",
    );
    link.hold_replies(false);

    // They had all been applied.
    let value: String = redis
        .command(&["GET", &redis.command::<Vec<String>>(&["KEYS", "*:cache:*:n"]).await[0]])
        .await;
    assert_eq!(value, "1");
    let retried = cache
        .set(set("once", SetCondition::IfAbsent))
        .await
        .unwrap()
        .into_inner();
    assert!(!retried.stored, "the first SET IF_ABSENT had stored it");
}

#[tokio::test]
async fn debug_sleep_answers_each_write_truthfully() {
    let redis = TestRedis::start_with(&["--enable-debug-command", "local"]).await;
    let service = TestService::start(&redis.url(), &["--operation-timeout", "200ms"]).await;
    service.wait_for_health("", SERVING).await;
    let mut cache = service.cache();

    let mut sleeper = redis.connection().await;
    let sleeping = tokio::spawn(async move {
        let _: redis::RedisResult<()> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("1")
            .query_async(&mut sleeper)
            .await;
    });
    // A moment for the sleep to begin: Redis answers nothing while it sleeps, so
    // its start cannot be awaited. The assertions hold whether or not a call meets it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Whether or not each call met the sleep, its answer must be true to what happened.
    let mut may_have_applied = 0;
    let mut applied = 0;
    for _ in 0..3 {
        match cache.increment(increment("n")).await {
            Ok(_) => applied += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
                may_have_applied += 1;
            }
        }
    }
    returns(sleeping).await.unwrap();
    let counted = returns(cache.increment(IncrementRequest {
        key: "n".to_owned(),
        delta: 0,
        ttl: None,
        fence: None,
    }))
    .await
    .unwrap()
    .into_inner()
    .value;
    assert!(
        counted >= applied && counted <= applied + may_have_applied,
        "{counted} increments stored; {applied} confirmed, {may_have_applied} maybe"
    );
}

// --- Redis refusing work ------------------------------------------------------------

#[tokio::test]
async fn a_script_flush_costs_no_call() {
    let (redis, service) = redis_and_service(&[]).await;
    let (mut cache, mut locks, mut ratelimit) = (service.cache(), service.locks(), service.ratelimit());
    cache.set(set("k", SetCondition::Always)).await.unwrap();

    let _: () = redis.command(&["SCRIPT", "FLUSH"]).await;
    assert!(cache.get(get("k")).await.unwrap().into_inner().found);
    assert!(
        locks
            .acquire(acquire("job", 10_000))
            .await
            .unwrap()
            .into_inner()
            .acquired
    );
    let decided = ratelimit.check(check("api")).await.unwrap().into_inner();
    assert!(decided.allowed && !decided.decided_by_outage_policy);
}

#[tokio::test]
async fn a_busy_script_makes_calls_unavailable_and_health_not_serving_until_it_ends() {
    let redis = TestRedis::start_with(&["--busy-reply-threshold", "50"]).await;
    let service = TestService::start(&redis.url(), &[]).await;
    service.wait_for_health("", SERVING).await;
    let mut cache = service.cache();

    // Another client's script that never yields (until killed).
    let mut hog = redis.connection().await;
    let busy = tokio::spawn(async move {
        let _: redis::RedisResult<()> = redis::cmd("EVAL")
            .arg("while true do redis.call('TIME') end")
            .arg(0)
            .query_async(&mut hog)
            .await;
    });
    service.wait_for_health("", NOT_SERVING).await;
    assert_code(
        cache.get(get("k")).await,
        Code::Unavailable,
        "REDIS_UNAVAILABLE",
        "busy",
    );

    let _: () = redis.command(&["SCRIPT", "KILL"]).await;
    returns(busy).await.unwrap();
    service.wait_for_health("", SERVING).await;
    assert!(!cache.get(get("k")).await.unwrap().into_inner().found);
}

#[tokio::test]
async fn a_full_redis_refuses_growth_but_frees_keeps_and_reads() {
    let (redis, service) = redis_and_service(&[]).await;
    let (mut cache, mut locks, mut sessions, mut ratelimit) = (
        service.cache(),
        service.locks(),
        service.sessions(),
        service.ratelimit(),
    );
    let held = locks.acquire(acquire("job", 30_000)).await.unwrap().into_inner();
    let extra = locks.acquire(acquire("other", 30_000)).await.unwrap().into_inner();
    let session = sessions
        .create(new_session("ann"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    // A limiter whose state lives a while (3 a minute: 20 s).
    let limited = || CheckRequest {
        limit: 3,
        ..check("api")
    };
    assert!(ratelimit.check(limited()).await.unwrap().into_inner().allowed);

    let _: () = redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await;
    let _: () = redis.command(&["CONFIG", "SET", "maxmemory", "1"]).await;

    assert_code(
        cache.set(set("k", SetCondition::Always)).await,
        Code::ResourceExhausted,
        "REDIS_OUT_OF_MEMORY",
        "out of memory",
    );
    assert_code(
        locks.acquire(acquire("new", 30_000)).await,
        Code::ResourceExhausted,
        "REDIS_OUT_OF_MEMORY",
        "out of memory",
    );
    // What frees, keeps or only reads memory still works.
    locks
        .extend(ExtendRequest {
            name: "job".to_owned(),
            token: held.token.clone(),
            ttl: Some(millis(30_000)),
        })
        .await
        .expect("extend keeps the size");
    locks
        .release(ReleaseRequest {
            name: "other".to_owned(),
            token: extra.token,
        })
        .await
        .expect("release frees memory");
    sessions
        .get(SessionGet {
            id: session.id.clone(),
            touch: true,
        })
        .await
        .expect("a touch keeps the size");
    let listed = sessions
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "ann".to_owned(),
        })
        .await
        .expect("listing only reads and prunes");
    assert_eq!(listed.into_inner().sessions.len(), 1);
    assert!(!cache.get(get("k")).await.unwrap().into_inner().found);
    // Rate limits are still decided, not left to the outage policy.
    let decided = ratelimit.check(limited()).await.unwrap().into_inner();
    assert!(!decided.decided_by_outage_policy && decided.allowed, "{decided:?}");
}

#[tokio::test]
async fn a_redis_filled_with_cache_values_still_decides_every_limit_and_takes() {
    let (redis, service) = redis_and_service(&[]).await;
    let mut cache = service.cache();
    cache.set(set("code", SetCondition::Always)).await.unwrap();
    let info: String = redis.command(&["INFO", "memory"]).await;
    let used: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap();
    let _: () = redis
        .command(&["CONFIG", "SET", "maxmemory", &(used + 2_000_000).to_string()])
        .await;
    // One tenant fills what is left with cache values.
    let mut filled = false;
    for index in 0..100 {
        let mut big = set(&format!("fill:{index}"), SetCondition::Always);
        big.value = vec![b'f'; 100_000];
        if let Err(status) = cache.set(big).await {
            assert_reason(&status, Code::ResourceExhausted, "REDIS_OUT_OF_MEMORY");
            filled = true;
            break;
        }
    }
    assert!(filled, "2 MB of 100 KB values fill it");

    let mut ratelimit = service.ratelimit();
    let login = |_| CheckRequest {
        limit: 3,
        on_unavailable: OutagePolicy::FailOpen as i32,
        ..check("login:ann")
    };
    let mut answers = Vec::new();
    for attempt in 0..4 {
        let decided = ratelimit.check(login(attempt)).await.unwrap().into_inner();
        assert!(
            !decided.decided_by_outage_policy,
            "decided by Redis, not the outage policy"
        );
        answers.push(decided.allowed);
    }
    assert_eq!(
        answers,
        [true, true, true, false],
        "the limit holds although Redis is full"
    );
    let taken = cache
        .take(TakeRequest {
            key: "code".to_owned(),
            fence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(taken.found, "Take frees memory, so a full Redis serves it");
}

#[tokio::test]
async fn a_full_redis_takes_no_new_limiter_or_lease_past_its_headroom() {
    let (redis, service) = redis_and_service(&[]).await;
    let info: String = redis.command(&["INFO", "memory"]).await;
    let used: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap();
    let mut ratelimit = service.ratelimit();
    let refusing = |key: String| CheckRequest {
        on_unavailable: OutagePolicy::FailClosed as i32,
        ..check(&key)
    };
    // A limiter whose state lives a while: 3 a minute keeps it 20 s.
    let kept = || CheckRequest {
        limit: 3,
        ..refusing("kept".to_owned())
    };
    assert!(ratelimit.check(kept()).await.unwrap().into_inner().allowed);
    let _: () = redis.command(&["CONFIG", "SET", "maxmemory", &used.to_string()]).await;
    // Once the prober has seen the maxmemory, the scripts read INFO themselves.
    let started = std::time::Instant::now();
    while service.metric("cachelock_redis_max_memory_bytes").await <= 0.0 {
        assert!(started.elapsed() < PATIENCE, "the prober never saw the maxmemory");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Checks on ever new keys: once Redis is 5% past maxmemory, a new limiter is
    // not created; the outage policy answers instead.
    let mut by_policy = None;
    for index in 0..20_000 {
        let answer = ratelimit
            .check(refusing(format!("new:{index}")))
            .await
            .unwrap()
            .into_inner();
        if answer.decided_by_outage_policy {
            by_policy = Some(index);
            break;
        }
    }
    // About a hundred bytes a limiter: 5% of a megabyte takes hundreds, never thousands.
    let created = by_policy.expect("Redis grew without bound");
    assert!(created < 3_000, "{created} new limiters in a full Redis");
    // An existing limiter is still decided.
    let existing = ratelimit.check(kept()).await.unwrap().into_inner();
    assert!(!existing.decided_by_outage_policy && existing.allowed, "{existing:?}");
    // A lease on a new key would grow it too.
    let lease = service
        .cache()
        .get_or_lease(GetOrLeaseRequest {
            key: "missing".to_owned(),
            ..GetOrLeaseRequest::default()
        })
        .await;
    assert_code(lease, Code::ResourceExhausted, "REDIS_OUT_OF_MEMORY", "out of memory");
}

#[tokio::test]
async fn with_redis_stalled_every_answer_comes_before_the_callers_deadline() {
    let (_redis, link, service) = behind_a_faulty_link().await;
    service.wait_for_health("", SERVING).await;
    link.hold_requests(true);
    let mut cache = service.cache();
    let mut late = 0;
    for _ in 0..200 {
        let mut request = tonic::Request::new(get("k"));
        request.set_timeout(Duration::from_millis(50));
        // The caller's own timer, as a client with a deadline keeps one.
        match tokio::time::timeout(Duration::from_millis(50), cache.get(request)).await {
            Ok(Err(status)) => assert_reason(&status, Code::Unavailable, "REDIS_TIMEOUT"),
            Ok(Ok(answer)) => panic!("Redis is stalled, yet: {answer:?}"),
            Err(_) => late += 1,
        }
    }
    link.hold_requests(false);
    assert_eq!(late, 0, "answers that came after the caller's deadline");
}

#[tokio::test]
async fn an_eviction_policy_is_noticed_at_every_probe_and_can_be_required_away() {
    let (redis, service) = redis_and_service(&["--require-noeviction"]).await;
    service.wait_for_health("", SERVING).await;

    let _: () = redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"])
        .await;
    service.wait_for_health("", NOT_SERVING).await;
    let _: () = redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await;
    service.wait_for_health("", SERVING).await;
}

#[tokio::test]
async fn an_eviction_policy_set_at_run_time_is_logged() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let (redis, service) = redis_and_service(&[]).await;
    service.wait_for_health("", SERVING).await;
    let _: () = redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])
        .await;
    logs.wait_for("Redis may evict keys").await;
    assert!(logs.text().contains("allkeys-lru"));
}

#[tokio::test]
async fn a_primary_demoted_to_replica_is_not_serving_and_writes_are_unavailable() {
    let (redis, service) = redis_and_service(&[]).await;
    let other = TestRedis::start().await;
    service.wait_for_health("", SERVING).await;
    let mut cache = service.cache();

    let port = other.port().to_string();
    let _: () = redis.command(&["REPLICAOF", "127.0.0.1", &port]).await;
    service.wait_for_health("", NOT_SERVING).await;
    assert_code(
        cache.set(set("k", SetCondition::Always)).await,
        Code::Unavailable,
        "REDIS_UNAVAILABLE",
        "read-only",
    );

    let _: () = redis.command(&["REPLICAOF", "NO", "ONE"]).await;
    service.wait_for_health("", SERVING).await;
    cache.set(set("k", SetCondition::Always)).await.unwrap();
}

#[tokio::test]
async fn reads_keep_answering_while_writes_are_paused() {
    let (redis, service) = redis_and_service(&["--operation-timeout", "20s"]).await;
    let mut cache = service.cache();
    cache.set(set("k", SetCondition::Always)).await.unwrap();

    let _: () = redis.command(&["CLIENT", "PAUSE", "20000", "WRITE"]).await;
    let mut writer = service.cache();
    let write = tokio::spawn(async move { writer.set(set("k2", SetCondition::Always)).await });
    for _ in 0..12 {
        assert!(returns(cache.get(get("k"))).await.unwrap().into_inner().found);
    }
    assert!(
        !write.is_finished(),
        "the write is still paused while every read answered"
    );
    let _: () = redis.command(&["CLIENT", "UNPAUSE"]).await;
    returns(write).await.unwrap().unwrap();
}

// --- Credentials --------------------------------------------------------------------

#[tokio::test]
async fn it_comes_back_after_its_credentials_are_revoked_and_restored() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let redis = TestRedis::start().await;
    let _: () = redis
        .command(&["ACL", "SETUSER", "app", "on", ">s3cret", "~*", "&*", "+@all"])
        .await;
    let url = format!("redis://app:s3cret@127.0.0.1:{}", redis.port());
    let service = TestService::start(&url, &[]).await;
    service.wait_for_health("", SERVING).await;

    let _: () = redis.command(&["ACL", "SETUSER", "app", "off"]).await;
    let _: i64 = redis.command(&["CLIENT", "KILL", "USER", "app"]).await;
    service.wait_for_health("", NOT_SERVING).await;
    logs.wait_for("authentication failed").await;

    let _: () = redis.command(&["ACL", "SETUSER", "app", "on"]).await;
    service.wait_for_health("", SERVING).await;
    service.cache().set(set("k", SetCondition::Always)).await.unwrap();
    assert!(!logs.text().contains("s3cret"), "the password never reaches the log");
}

#[tokio::test]
async fn a_wrong_password_fixed_on_the_server_is_picked_up() {
    let redis = TestRedis::start().await;
    let _: () = redis.command(&["CONFIG", "SET", "requirepass", "old-password"]).await;
    let url = format!("redis://:new-password@127.0.0.1:{}", redis.port());
    let service = TestService::start(&url, &[]).await;
    service.wait_for_health("", NOT_SERVING).await;
    assert_code(
        service.cache().get(get("k")).await,
        Code::Unavailable,
        "REDIS_UNAVAILABLE",
        "authentication failed",
    );

    let mut admin = redis::Client::open(format!("redis://:old-password@127.0.0.1:{}", redis.port()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("new-password")
        .query_async(&mut admin)
        .await
        .unwrap();
    service.wait_for_health("", SERVING).await;
}

#[tokio::test]
async fn each_connection_failure_is_logged_with_its_own_cause() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let plain = TestRedis::start().await;
    let _: () = plain.command(&["CONFIG", "SET", "requirepass", "right"]).await;
    let closed = TestRedis::free_port();

    let wrong_password = TestService::start(&format!("redis://:wrong@127.0.0.1:{}", plain.port()), &[]).await;
    logs.wait_for("authentication failed").await;
    drop(wrong_password);
    let tls_on_plain = TestService::start(&format!("rediss://localhost:{}", plain.port()), &[]).await;
    logs.wait_for("speak TLS").await;
    drop(tls_on_plain);
    let _refused = TestService::start(&format!("redis://127.0.0.1:{closed}"), &[]).await;
    logs.wait_for("connection refused").await;
    let _unknown_host = TestService::start("redis://no-such-host.invalid:6379", &[]).await;
    logs.wait_for("DNS lookup failed").await;
    let _hung = TestService::start(&common::hung_redis().await, &[]).await;
    logs.wait_for("no answer within").await;
    assert!(!logs.text().contains("wrong"), "the password never reaches the log");
}

// --- Data loss and shutdown -----------------------------------------------------------

#[tokio::test]
async fn after_redis_loses_its_data_lock_grants_pause_for_the_longest_lease() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let (mut redis, service) = redis_and_service(&["--lock-max-ttl", "2s"]).await;
    let mut locks = service.locks();
    let first = locks.acquire(acquire("job", 2_000)).await.unwrap().into_inner();
    assert!(first.acquired);

    redis.restart().await; // no persistence: the lock is forgotten
    service.wait_for_health("", SERVING).await;
    // The first holder may still be working under its lease: nobody else may have it yet.
    assert_code(
        locks.acquire(acquire("job", 2_000)).await,
        Code::Unavailable,
        "LOCKS_PAUSED",
        "paused",
    );
    logs.wait_for("lost its data").await;

    // An Acquire whose wait covers the rest of the pause is granted when it ends.
    let mut waiting = acquire("job", 2_000);
    waiting.wait_timeout = Some(millis(10_000));
    let second = returns(locks.acquire(waiting)).await.unwrap().into_inner();
    assert!(second.acquired);
    assert!(second.fencing_token > first.fencing_token);
}

#[tokio::test]
async fn on_sigterm_calls_are_served_through_the_shutdown_delay() {
    let (_redis, redis_url) = {
        let redis = TestRedis::start().await;
        let url = redis.url();
        (redis, url)
    };
    let (service, signal) = TestService::start_with_signals(&redis_url, &["--shutdown-delay", "60s"]).await;
    service.wait_for_health("", SERVING).await;
    let mut cache = service.cache();

    signal.send(()).unwrap();
    service.wait_for_health("", NOT_SERVING).await;
    // Load balancers are still catching up: calls keep being served.
    cache.set(set("k", SetCondition::Always)).await.unwrap();
    assert!(cache.get(get("k")).await.unwrap().into_inner().found);

    // A second signal ends the delay at once.
    signal.send(()).unwrap();
    service.stopped().await.expect("a clean shutdown");
}
