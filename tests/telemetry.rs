//! What operators see: /metrics counts exactly what happened, with bounded
//! labels; /livez and /readyz follow the process and Redis; slow requests and
//! connection failures are logged with their cause.

mod common;

use std::time::Duration;

use cachelock::pb::{
    cache::SetRequest,
    lock::{AcquireRequest, ReleaseRequest},
    ratelimit::{CheckRequest, OutagePolicy},
    session::CreateRequest,
};
use common::requests::{self, get};
use common::{CapturedLogs, FaultyLink, PATIENCE, TestRedis, TestService, millis, redis_and_service};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn set(key: &str) -> SetRequest {
    requests::set(key, b"v")
}

fn check(key: &str) -> CheckRequest {
    CheckRequest {
        on_unavailable: OutagePolicy::FailClosed as i32,
        ..requests::check(key, 1, 60_000)
    }
}

fn acquire(name: &str, wait_ms: i64) -> AcquireRequest {
    requests::acquire(name, 30_000, wait_ms)
}

const CACHE: &str = "cachelock.cache.v1.CacheService";

fn handled(service: &str, method: &str, code: &str) -> String {
    format!(
        "grpc_server_handled_total{{grpc_type=\"unary\",grpc_service=\"{service}\",grpc_method=\"{method}\",grpc_code=\"{code}\"}}"
    )
}

#[tokio::test]
async fn metrics_count_exactly_what_happened() {
    let (redis, service) = redis_and_service(&["--health-interval", "60s"]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let (mut cache, mut ratelimit, mut locks) = (service.cache(), service.ratelimit(), service.locks());

    cache.set(set("a")).await.unwrap();
    cache.set(set("b")).await.unwrap();
    assert!(cache.get(get("a")).await.unwrap().into_inner().found);
    assert!(!cache.get(get("missing")).await.unwrap().into_inner().found);
    assert_eq!(cache.get(get("")).await.unwrap_err().code(), Code::InvalidArgument);
    assert!(ratelimit.check(check("login")).await.unwrap().into_inner().allowed);
    assert!(!ratelimit.check(check("login")).await.unwrap().into_inner().allowed);
    let held = locks.acquire(acquire("job", 0)).await.unwrap().into_inner();
    let attempts = redis.calls("evalsha").await;
    let mut waiter = service.locks();
    let waiting = tokio::spawn(async move { waiter.acquire(acquire("job", 20_000)).await });
    redis.wait_for_calls("evalsha", attempts + 2).await;
    locks
        .release(ReleaseRequest {
            name: "job".to_owned(),
            token: held.token,
        })
        .await
        .unwrap();
    assert!(waiting.await.unwrap().unwrap().into_inner().acquired);

    let expectations = [
        (handled(CACHE, "Set", "OK"), 2.0),
        (handled(CACHE, "Get", "OK"), 2.0),
        (handled(CACHE, "Get", "InvalidArgument"), 1.0),
        (
            format!("grpc_server_started_total{{grpc_type=\"unary\",grpc_service=\"{CACHE}\",grpc_method=\"Get\"}}"),
            3.0,
        ),
        (
            format!(
                "grpc_server_handling_seconds_count{{grpc_type=\"unary\",grpc_service=\"{CACHE}\",grpc_method=\"Get\"}}"
            ),
            3.0,
        ),
        ("cachelock_cache_reads_total{result=\"hit\"}".to_owned(), 1.0),
        ("cachelock_cache_reads_total{result=\"miss\"}".to_owned(), 1.0),
        ("cachelock_cache_writes_total".to_owned(), 2.0),
        (
            "cachelock_ratelimit_decisions_total{result=\"allowed\"}".to_owned(),
            1.0,
        ),
        ("cachelock_ratelimit_decisions_total{result=\"denied\"}".to_owned(), 1.0),
        ("cachelock_lock_grants_total".to_owned(), 2.0),
        ("cachelock_lock_waits_total".to_owned(), 1.0),
        ("cachelock_lock_wait_seconds_count".to_owned(), 1.0),
        ("cachelock_redis_up".to_owned(), 1.0),
        ("grpc_server_in_flight".to_owned(), 0.0),
    ];
    for (series, wanted) in expectations {
        assert_eq!(service.metric(&series).await, wanted, "{series}");
    }
    let (_, text) = service.http_get("/metrics").await;
    assert!(
        text.contains("cachelock_build_info{version=\""),
        "build info is exported:\n{text}"
    );
    assert!(
        text.contains("cachelock_redis_command_duration_seconds_bucket{le="),
        "{text}"
    );
}

#[tokio::test]
async fn redis_going_down_shows_in_up_readyz_and_the_error_count() {
    let (mut redis, service) = redis_and_service(&[]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    assert_eq!(service.http_get("/readyz").await.0, 200);
    assert_eq!(service.http_get("/livez").await.0, 200);

    redis.stop().await;
    service.wait_for_health("", ServingStatus::NotServing).await;
    assert_eq!(service.http_get("/readyz").await.0, 503);
    assert_eq!(service.http_get("/livez").await.0, 200, "the process itself is fine");
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while service.metric("cachelock_redis_up").await != 0.0 {
        assert!(tokio::time::Instant::now() < give_up, "redis_up stayed 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = service.cache().get(get("k")).await.unwrap_err();
    assert!(
        service
            .metric("cachelock_redis_errors_total{kind=\"connection\"}")
            .await
            >= 1.0
    );

    redis.start_again().await;
    service.wait_for_health("", ServingStatus::Serving).await;
    assert_eq!(service.http_get("/readyz").await.0, 200);
    assert_eq!(service.metric("cachelock_redis_up").await, 1.0);
}

#[tokio::test]
async fn readyz_asked_for_json_says_why_and_what_redis_the_probe_saw() {
    let (mut redis, service) = redis_and_service(&[]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let json = async || {
        let (status, body) = service.http_get_accepting("/readyz", "application/json").await;
        let report: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON: {body}"));
        (status, report)
    };
    let (status, report) = json().await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["status"], "SERVING", "{report}");
    assert_eq!(report["topology"], "standalone", "{report}");
    assert_eq!(
        report["primaries"][0],
        format!("127.0.0.1:{}", redis.port()),
        "{report}"
    );
    assert!(report["round_trip_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    assert!(
        report["redis_version"].as_str().is_some_and(|v| v.starts_with('7')),
        "{report}"
    );
    assert!(report["reason"].is_null(), "{report}");

    redis.stop().await;
    service.wait_for_health("", ServingStatus::NotServing).await;
    let (status, report) = json().await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["status"], "NOT_SERVING", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("connect")),
        "{report}"
    );
    // Probes that ask for nothing in particular keep the plain answer.
    assert_eq!(service.http_get("/readyz").await, (503, "NOT_SERVING\n".to_owned()));
}

/// A service that calls a request slow after 1 s, behind a link the test can
/// hold: a threshold no honest request on a busy machine reaches, and a request
/// held past it, so that which request is slow is decided by the test.
async fn slow_after_a_second_behind_a_link() -> (TestRedis, FaultyLink, TestService) {
    let redis = TestRedis::start().await;
    let link = FaultyLink::start(redis.port()).await;
    let service = TestService::start(
        &link.url,
        &[
            "--health-interval",
            "60s",
            "--slow-request",
            "1s",
            "--operation-timeout",
            "30s",
        ],
    )
    .await;
    service.wait_for_health("", ServingStatus::Serving).await;
    (redis, link, service)
}

#[tokio::test]
async fn a_slow_request_logs_one_warning_naming_the_rpc_never_its_arguments() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let (_redis, link, service) = slow_after_a_second_behind_a_link().await;
    let mut cache = service.cache();
    cache.set(set("fast-key")).await.unwrap();

    link.hold_requests(true);
    let slow = tokio::spawn({
        let mut cache = service.cache();
        async move { cache.get(get("slow-secret-key")).await }
    });
    // At least this long: the Get cannot be answered while its request is held.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    link.hold_requests(false);
    slow.await.unwrap().unwrap();
    // The line is written before the answer's trailers are sent.
    let text = logs.text();
    let warnings: Vec<&str> = text.lines().filter(|line| line.contains("slow request")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("Get") && warnings[0].contains(CACHE),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("redis_ms="), "{}", warnings[0]);
    assert!(
        warnings[0].contains("code=\"OK\""),
        "the status it ended with: {}",
        warnings[0]
    );
    assert!(!text.contains("slow-secret-key"), "arguments never reach the log");
}

#[tokio::test]
async fn a_slow_request_the_caller_gave_up_on_is_logged_and_counted_as_cancelled() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let (_redis, link, service) = slow_after_a_second_behind_a_link().await;
    let mut cache = service.cache();
    cache.set(set("k")).await.unwrap();

    link.hold_requests(true);
    // The caller drops its call (no deadline sent): the server's handler is dropped too.
    let gave_up = tokio::time::timeout(Duration::from_millis(1_200), cache.get(get("k"))).await;
    assert!(gave_up.is_err(), "the Get cannot be answered while its request is held");
    logs.wait_for("slow request").await;
    link.hold_requests(false);
    let text = logs.text();
    let warning = text.lines().find(|line| line.contains("slow request")).unwrap();
    assert!(
        warning.contains("Get") && warning.contains("code=\"Canceled\""),
        "{warning}"
    );
    let cancelled = handled(CACHE, "Get", "Canceled");
    common::eventually("the cancelled Get counted", async || {
        service.metric(&cancelled).await == 1.0
    })
    .await;
}

#[tokio::test]
async fn a_request_that_waits_by_design_is_not_logged_as_slow() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let (_redis, service) = redis_and_service(&["--slow-request", "1s"]).await;
    let mut locks = service.locks();
    let held = locks.acquire(acquire("report", 0)).await.unwrap().into_inner();
    let waiter = tokio::spawn({
        let mut locks = service.locks();
        async move { locks.acquire(acquire("report", 30_000)).await }
    });
    common::eventually("the Acquire waiting", async || {
        service.metric("cachelock_waiters{kind=\"lock\"}").await == 1.0
    })
    .await;
    // The waiter waits longer than --slow-request, as it asked to.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    locks
        .release(ReleaseRequest {
            name: "report".to_owned(),
            token: held.token,
        })
        .await
        .unwrap();
    assert!(waiter.await.unwrap().unwrap().into_inner().acquired);
    let text = logs.text();
    assert!(!text.contains("slow request"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_distinct_keys_users_and_locks_add_no_series() {
    use cachelock::pb::{
        cache::{GetManyRequest, SetEntry, SetManyRequest},
        ratelimit::{CheckManyRequest, Limit},
    };
    let (_redis, service) = redis_and_service(&[]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let (mut cache, mut ratelimit, mut locks, mut sessions) = (
        service.cache(),
        service.ratelimit(),
        service.locks(),
        service.sessions(),
    );
    // Every method used here, with every outcome, once; then the series are counted.
    let warm_up = |name: String| (name.clone(), name);
    let (key, user) = warm_up("warm".to_owned());
    cache.set(set(&key)).await.unwrap();
    cache.get(get(&key)).await.unwrap();
    let _ = cache.get(get("")).await;
    cache
        .get_many(GetManyRequest {
            keys: vec![key.clone()],
        })
        .await
        .unwrap();
    // A batch too big to read unsized takes the sizing path too.
    cache
        .get_many(GetManyRequest {
            keys: vec![key.clone(); 1000],
        })
        .await
        .unwrap();
    cache
        .set_many(SetManyRequest {
            entries: vec![SetEntry {
                key: key.clone(),
                value: b"v".to_vec(),
                ttl: None,
            }],
            fence: None,
        })
        .await
        .unwrap();
    let limit = |key: String| Limit {
        key,
        limit: 1000,
        period: Some(millis(60_000)),
        cost: None,
        algorithm: 0,
        calendar: None,
        leased: false,
    };
    let check_many = |limits: Vec<Limit>| CheckManyRequest {
        limits,
        on_unavailable: OutagePolicy::FailClosed as i32,
    };
    ratelimit
        .check_many(check_many(vec![limit(key.clone())]))
        .await
        .unwrap();
    locks.acquire(acquire(&key, 0)).await.unwrap();
    sessions
        .create(CreateRequest {
            user_id: user.clone(),
            ..CreateRequest::default()
        })
        .await
        .unwrap();
    let series = |text: &str| text.lines().filter(|line| !line.starts_with('#')).count();
    let before = series(&service.http_get("/metrics").await.1);

    for chunk in 0..10 {
        let keys: Vec<String> = (0..1000).map(|i| format!("key-{}", chunk * 1000 + i)).collect();
        let entries = keys
            .iter()
            .map(|key| SetEntry {
                key: key.clone(),
                value: b"v".to_vec(),
                ttl: None,
            })
            .collect();
        cache.set_many(SetManyRequest { entries, fence: None }).await.unwrap();
        cache.get_many(GetManyRequest { keys }).await.unwrap();
    }
    for chunk in 0..100 {
        let limits = (0..100).map(|i| limit(format!("limit-{}", chunk * 100 + i))).collect();
        ratelimit.check_many(check_many(limits)).await.unwrap();
    }
    let tasks: Vec<_> = (0..8)
        .map(|worker| {
            let (mut locks, mut sessions) = (locks.clone(), sessions.clone());
            tokio::spawn(async move {
                for i in 0..1_250 {
                    let n = worker * 1_250 + i;
                    locks.acquire(acquire(&format!("lock-{n}"), 0)).await.unwrap();
                    sessions
                        .create(CreateRequest {
                            user_id: format!("user-{n}"),
                            ..CreateRequest::default()
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let after = series(&service.http_get("/metrics").await.1);
    assert_eq!(
        before, after,
        "10,000 distinct keys, limits, locks and users added series"
    );
}

#[tokio::test]
async fn with_metrics_off_there_is_no_listener() {
    let (_redis, service) = redis_and_service(&["--metrics-listen", "off"]).await;
    assert!(service.metrics_addr.is_none());
    service.wait_for_health("", ServingStatus::Serving).await;
    service.cache().set(set("k")).await.unwrap();
}

#[tokio::test]
async fn the_docs_show_the_shipped_scrape_config_and_alerts_on_exported_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/docs/observing.md")).unwrap();
    let alerts = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let scrape = std::fs::read_to_string(format!("{root}/deploy/prometheus/prometheus.yml")).unwrap();
    assert!(
        readme.contains(&alerts),
        "docs/observing.md shows deploy/prometheus/alerts.yml as it is"
    );
    assert!(
        readme.contains(&scrape),
        "docs/observing.md shows deploy/prometheus/prometheus.yml as it is"
    );

    let (_redis, service) = redis_and_service(&[]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    service.ratelimit().check(check("k")).await.unwrap();
    let (_, exported) = service.http_get("/metrics").await;
    let names: Vec<&str> = alerts
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("cachelock_") || word.starts_with("grpc_server_"))
        .collect();
    assert!(names.len() >= 3, "{names:?}");
    for name in names {
        assert!(
            exported.lines().any(|line| line.starts_with(name)),
            "the alerts use {name}, which /metrics does not export"
        );
    }
}
