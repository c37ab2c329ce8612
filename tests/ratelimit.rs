//! RateLimitService against a real redis-server: exactness under concurrency,
//! refill and windows, CheckMany's all-or-nothing, outages, and bad inputs.

mod common;

use std::time::Duration;

use cachelock::pb::ratelimit::{
    Algorithm, CheckManyRequest, CheckRequest, CheckResponse, Limit, OutagePolicy, ResetRequest,
    rate_limit_service_client::RateLimitServiceClient,
};
use common::{Backend, PATIENCE, TestRedis, TestService, as_millis, assert_invalid, hung_redis, millis};
use tonic::{Request, transport::Channel};

/// Settings for tests of Redis's decisions: a budget so long that even a busy
/// machine never falls back to the outage policy (tested on its own below).
const DECIDED_BY_REDIS: &[&str] = &["--ratelimit-timeout", "30s", "--operation-timeout", "30s"];

const ALGORITHMS: [Algorithm; 3] = [Algorithm::TokenBucket, Algorithm::FixedWindow, Algorithm::SlidingWindow];

fn check(key: &str, limit: u64, period_ms: i64, algorithm: Algorithm) -> CheckRequest {
    CheckRequest {
        key: key.to_owned(),
        limit,
        period: Some(millis(period_ms)),
        cost: None,
        algorithm: algorithm as i32,
        on_unavailable: OutagePolicy::Unspecified as i32,
        calendar: None,
        wait: None,
        leased: false,
    }
}

fn with_cost(mut request: CheckRequest, cost: u64) -> CheckRequest {
    request.cost = Some(cost);
    request
}

fn to_duration(duration: &prost_types::Duration) -> Duration {
    Duration::new(duration.seconds as u64, duration.nanos as u32)
}

async fn ask(client: &mut RateLimitServiceClient<Channel>, request: CheckRequest) -> CheckResponse {
    client.check(request).await.unwrap().into_inner()
}

fn ratelimit(service: &TestService) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::new(service.channel())
}

/// Sends `request` until it is denied and returns the denial. A window edge or a
/// refill between two calls (on a busy machine) only means a few more calls.
async fn consume_until_denied(client: &mut RateLimitServiceClient<Channel>, request: CheckRequest) -> CheckResponse {
    for _ in 0..(4 * request.limit) {
        let response = ask(client, request.clone()).await;
        if !response.allowed {
            return response;
        }
    }
    panic!("{request:?} was never denied");
}

async fn concurrent_checks_allow_exactly_the_limit_for_every_algorithm(backend: Backend) {
    let service = backend.service(DECIDED_BY_REDIS).await;
    // Several HTTP/2 connections, so requests really race in the service and in Redis.
    let clients: Vec<_> = (0..6).map(|_| ratelimit(&service)).collect();

    for algorithm in ALGORITHMS {
        let key = format!("exact-{}", algorithm.as_str_name());
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let mut client = clients[i % clients.len()].clone();
                let request = check(&key, 100, 86_400_000, algorithm);
                tokio::spawn(async move { ask(&mut client, request).await })
            })
            .collect();
        let mut remaining_when_allowed = Vec::new();
        let mut denied = 0;
        for task in tasks {
            let response = task.await.unwrap();
            assert!(!response.decided_by_outage_policy);
            assert_eq!(response.limit, 100);
            if response.allowed {
                remaining_when_allowed.push(response.remaining);
            } else {
                denied += 1;
                assert_eq!(response.remaining, 0, "{algorithm:?}");
            }
        }
        remaining_when_allowed.sort_unstable();
        assert_eq!(
            remaining_when_allowed,
            (0..100).collect::<Vec<u64>>(),
            "{algorithm:?}: each allowed check saw one less remaining"
        );
        assert_eq!(denied, 200, "{algorithm:?}");
    }
    // Requests that arrived while a call was in flight went together in the next
    // one (group commit), and were still decided one by one, exactly.
    let calls = service.metric("cachelock_ratelimit_batches_total").await;
    let requests = service.metric("cachelock_ratelimit_batched_requests_total").await;
    assert_eq!(requests, 900.0);
    assert!(calls < requests, "{calls} calls for {requests} requests");
}

async fn a_denied_request_retried_after_retry_after_is_allowed(backend: Backend) {
    let service = backend.service(DECIDED_BY_REDIS).await;
    let mut client = ratelimit(&service);

    for algorithm in ALGORITHMS {
        let key = format!("retry-{}", algorithm.as_str_name());
        let denied = consume_until_denied(&mut client, check(&key, 3, 600, algorithm)).await;
        let wait = to_duration(denied.retry_after.as_ref().expect("a retry_after"));
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(1200),
            "{algorithm:?}: {wait:?}"
        );

        tokio::time::sleep(wait).await;
        let retried = ask(&mut client, check(&key, 3, 600, algorithm)).await;
        assert!(retried.allowed, "{algorithm:?}: retried after {wait:?}");
        assert_eq!(retried.retry_after, Some(millis(0)));
    }
}

async fn the_full_limit_is_back_after_reset_after(backend: Backend) {
    let service = backend.service(DECIDED_BY_REDIS).await;
    let mut client = ratelimit(&service);

    for algorithm in ALGORITHMS {
        let key = format!("reset-after-{}", algorithm.as_str_name());
        let spent = ask(&mut client, with_cost(check(&key, 5, 400, algorithm), 5)).await;
        assert!(spent.allowed);
        assert_eq!(spent.remaining, 0);

        tokio::time::sleep(to_duration(spent.reset_after.as_ref().unwrap())).await;
        let report = ask(&mut client, with_cost(check(&key, 5, 400, algorithm), 0)).await;
        assert_eq!(report.remaining, 5, "{algorithm:?}");
        let all_at_once = ask(&mut client, with_cost(check(&key, 5, 400, algorithm), 5)).await;
        assert!(all_at_once.allowed, "{algorithm:?}");
    }
}

async fn the_token_bucket_refills_one_token_per_interval(backend: Backend) {
    let service = backend.service(DECIDED_BY_REDIS).await;
    let mut client = ratelimit(&service);
    // 10 per 5 seconds: a token every 500 ms, spaced wide enough that a busy
    // machine's scheduling delays between two calls cannot pass for a refill.
    let request = || check("gcra", 10, 5000, Algorithm::TokenBucket);

    // The whole burst at once, then nothing.
    assert!(ask(&mut client, with_cost(request(), 10)).await.allowed);
    let denied = ask(&mut client, request()).await;
    assert!(!denied.allowed);
    let mut wait = to_duration(denied.retry_after.as_ref().unwrap());
    assert!(
        wait <= Duration::from_millis(500),
        "one token takes at most 500 ms: {wait:?}"
    );

    // Each token comes back about 500 ms after the previous one, one at a time.
    for _ in 0..3 {
        tokio::time::sleep(wait).await;
        let granted = ask(&mut client, request()).await;
        assert!(granted.allowed);
        let denied = ask(&mut client, request()).await;
        assert!(!denied.allowed, "only one token refilled");
        wait = to_duration(denied.retry_after.as_ref().unwrap());
        assert!(
            wait > Duration::from_millis(250) && wait <= Duration::from_millis(500),
            "the next token is about 500 ms away: {wait:?}"
        );
    }
}

async fn the_fixed_window_starts_afresh_at_the_window_edge(backend: Backend) {
    let service = backend.service(DECIDED_BY_REDIS).await;
    let mut client = ratelimit(&service);
    let request = || check("fixed", 3, 500, Algorithm::FixedWindow);

    let spent = ask(&mut client, with_cost(request(), 3)).await;
    assert!(spent.allowed);
    let denied = ask(&mut client, request()).await;
    if denied.allowed {
        // The window ended between the two calls: the new one started with its full limit.
        assert_eq!(denied.remaining, 2);
        return;
    }
    // A denial waits exactly for the window's end, which is also when it resets.
    assert_eq!(denied.retry_after, denied.reset_after);
    assert!(
        denied
            .retry_after
            .as_ref()
            .is_some_and(|retry| to_duration(retry) <= Duration::from_millis(500))
    );

    tokio::time::sleep(to_duration(denied.retry_after.as_ref().unwrap())).await;
    let fresh = ask(&mut client, request()).await;
    assert!(fresh.allowed);
    assert_eq!(fresh.remaining, 2, "the new window has its full limit");
}

async fn the_sliding_window_weighs_the_previous_window(backend: Backend) {
    let service = backend.service(DECIDED_BY_REDIS).await;
    let mut client = ratelimit(&service);
    let request = || check("sliding", 10, 2000, Algorithm::SlidingWindow);

    assert!(ask(&mut client, with_cost(request(), 10)).await.allowed);
    let denied = ask(&mut client, request()).await;
    assert!(!denied.allowed);

    // Allowed again once the previous window's weighted count leaves room for one
    // request: just into the next window, where a fixed window would have all 10.
    tokio::time::sleep(to_duration(denied.retry_after.as_ref().unwrap())).await;
    let one = ask(&mut client, request()).await;
    assert!(one.allowed);
    assert!(one.remaining <= 1, "the previous window still counts: {one:?}");
    let mut allowed_now = 1;
    for _ in 0..5 {
        if ask(&mut client, request()).await.allowed {
            allowed_now += 1;
        }
    }
    // The weight shrinks by one request per 200 ms: five more would take a second.
    assert!(
        allowed_now < 5,
        "far fewer than a fresh window's 10 requests: {allowed_now}"
    );
}

async fn cost_zero_reports_and_a_cost_above_the_limit_never_passes(backend: Backend) {
    let service = backend.service(DECIDED_BY_REDIS).await;
    let mut client = ratelimit(&service);

    for algorithm in ALGORITHMS {
        let key = format!("cost-{}", algorithm.as_str_name());
        for _ in 0..2 {
            let report = ask(&mut client, with_cost(check(&key, 4, 86_400_000, algorithm), 0)).await;
            assert!(report.allowed, "{algorithm:?}");
            assert_eq!(report.remaining, 4, "{algorithm:?}: reporting consumes nothing");
        }
        let spent = ask(&mut client, with_cost(check(&key, 4, 86_400_000, algorithm), 3)).await;
        assert!(spent.allowed);
        assert_eq!(spent.remaining, 1, "{algorithm:?}");

        let too_big = ask(&mut client, with_cost(check(&key, 4, 86_400_000, algorithm), 5)).await;
        assert!(!too_big.allowed, "{algorithm:?}");
        assert_eq!(
            too_big.retry_after, None,
            "{algorithm:?}: no wait lets a cost above the limit pass"
        );
        let report = ask(&mut client, with_cost(check(&key, 4, 86_400_000, algorithm), 0)).await;
        assert_eq!(report.remaining, 1, "{algorithm:?}: a denial consumes nothing");
    }
}

fn limit(key: &str, limit: u64, algorithm: Algorithm) -> Limit {
    Limit {
        key: key.to_owned(),
        limit,
        period: Some(millis(86_400_000)),
        cost: None,
        algorithm: algorithm as i32,
        calendar: None,
        leased: false,
    }
}

async fn check_many_consumes_nothing_unless_every_limit_allows(backend: Backend) {
    let service = backend.service(DECIDED_BY_REDIS).await;
    let mut client = ratelimit(&service);
    // One hash tag: on a Cluster, CheckMany is all-or-nothing within one slot.

    let both = client
        .check_many(CheckManyRequest {
            limits: vec![
                limit("{user:1}", 10, Algorithm::TokenBucket),
                limit("{user:1}:ip:1", 1, Algorithm::SlidingWindow),
            ],
            on_unavailable: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(both.allowed);
    assert_eq!(both.decisions.len(), 2);
    assert_eq!(both.decisions[0].remaining, 9);
    assert_eq!(both.decisions[1].remaining, 0);

    // The IP limit is spent now: the pair is denied and the user limit keeps its 9.
    let denied = client
        .check_many(CheckManyRequest {
            limits: vec![
                limit("{user:1}", 10, Algorithm::TokenBucket),
                limit("{user:1}:ip:1", 1, Algorithm::SlidingWindow),
            ],
            on_unavailable: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!denied.allowed);
    assert!(denied.decisions[0].allowed, "the user limit alone would allow");
    assert!(!denied.decisions[1].allowed);
    assert_eq!(denied.decisions[0].remaining, 9);
    assert!(
        denied
            .retry_after
            .is_some_and(|retry| to_duration(&retry) > Duration::ZERO)
    );

    let mut user_only = check("{user:1}", 10, 86_400_000, Algorithm::TokenBucket);
    user_only.cost = Some(0);
    assert_eq!(ask(&mut client, user_only).await.remaining, 9);
}

async fn two_instances_on_one_redis_enforce_one_combined_limit(backend: Backend) {
    let first = backend.service(DECIDED_BY_REDIS).await;
    let second = backend.service(DECIDED_BY_REDIS).await;
    let mut clients = [ratelimit(&first), ratelimit(&second)];

    for algorithm in ALGORITHMS {
        let key = format!("shared-{}", algorithm.as_str_name());
        let mut allowed = 0;
        for i in 0..40 {
            if ask(&mut clients[i % 2], check(&key, 10, 86_400_000, algorithm))
                .await
                .allowed
            {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 10, "{algorithm:?}");
    }
}

async fn reset_makes_the_full_limit_available(backend: Backend) {
    let service = backend.service(DECIDED_BY_REDIS).await;
    let mut client = ratelimit(&service);
    for algorithm in ALGORITHMS {
        assert!(ask(&mut client, check("r", 1, 86_400_000, algorithm)).await.allowed);
        assert!(!ask(&mut client, check("r", 1, 86_400_000, algorithm)).await.allowed);
    }

    let one = client
        .reset(reset("r", 1, 86_400_000, Algorithm::FixedWindow))
        .await
        .unwrap()
        .into_inner();
    assert!(one.existed);
    assert!(
        ask(&mut client, check("r", 1, 86_400_000, Algorithm::FixedWindow))
            .await
            .allowed
    );
    assert!(
        !ask(&mut client, check("r", 1, 86_400_000, Algorithm::TokenBucket))
            .await
            .allowed
    );

    let all = client
        .reset(reset("r", 1, 86_400_000, Algorithm::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert!(all.existed);
    for algorithm in ALGORITHMS {
        assert!(ask(&mut client, check("r", 1, 86_400_000, algorithm)).await.allowed);
    }
    let nothing = client
        .reset(reset("never-used", 1, 86_400_000, Algorithm::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert!(!nothing.existed);
}

fn reset(key: &str, limit: u64, period_ms: i64, algorithm: Algorithm) -> ResetRequest {
    ResetRequest {
        key: key.to_owned(),
        algorithm: algorithm as i32,
        limit,
        period: Some(millis(period_ms)),
        calendar: None,
    }
}

/// Checks a fresh limit of 10 ten times, asserting remaining 9 down to 0; false, with
/// nothing asserted after it, when a fixed window turned over on the way (its
/// reset_after grew: a new window began).
async fn drains_in_one_window(client: &mut RateLimitServiceClient<Channel>, request: &CheckRequest) -> bool {
    let fixed = request.algorithm == Algorithm::FixedWindow as i32;
    let mut last_reset = i64::MAX;
    for expected in (0..10).rev() {
        let answer = ask(client, request.clone()).await;
        let reset_after = answer.reset_after.as_ref().map_or(0, as_millis);
        if fixed && reset_after > last_reset {
            return false;
        }
        last_reset = reset_after;
        assert!(answer.allowed, "{request:?}");
        assert_eq!(answer.remaining, expected, "{request:?}");
    }
    true
}

async fn limits_of_different_size_on_one_key_keep_separate_state(backend: Backend) {
    let service = backend.service(DECIDED_BY_REDIS).await;
    let mut client = ratelimit(&service);
    for algorithm in ALGORITHMS {
        let key = format!("login-{}", algorithm.as_str_name());
        // One check under a generous daily limit must not drain an hourly one. (An hour,
        // not a second: ten checks on a busy machine can outlast a second's refill.)
        let daily = ask(&mut client, check(&key, 1000, 86_400_000, algorithm)).await;
        assert!(daily.allowed);
        assert_eq!(daily.remaining, 999, "{algorithm:?}");
        let hourly = check(&key, 10, 3_600_000, algorithm);
        while !drains_in_one_window(&mut client, &hourly).await {
            // A fixed window turned over mid-way (the hour struck): drain it afresh.
            client.reset(reset(&key, 10, 3_600_000, algorithm)).await.unwrap();
        }
        assert!(!ask(&mut client, hourly.clone()).await.allowed);
        // Resetting the hourly limiter leaves the daily one as it was.
        let reset_one = client
            .reset(reset(&key, 10, 3_600_000, algorithm))
            .await
            .unwrap()
            .into_inner();
        assert!(reset_one.existed);
        let daily = ask(&mut client, check(&key, 1000, 86_400_000, algorithm)).await;
        assert_eq!(daily.remaining, 998, "{algorithm:?}");
    }
}

async fn idle_keys_expire_on_their_own(backend: Backend) {
    let service = backend.service(DECIDED_BY_REDIS).await;
    let mut client = ratelimit(&service);
    let mut direct = backend.connection().await;

    for (algorithm, suffix) in ALGORITHMS.into_iter().zip(["tb", "fw", "sw"]) {
        assert!(ask(&mut client, check("idle", 1, 500, algorithm)).await.allowed);
        let keys = backend
            .keys(&format!(
                "{}:default:ratelimit:*:{suffix}:1:500000:idle",
                backend.prefix()
            ))
            .await;
        let ttl: i64 = match keys.first() {
            Some(key) => redis::cmd("PTTL").arg(key).query_async(&mut direct).await.unwrap(),
            None => -2,
        };
        // -2: already gone (a fixed window may have just ended); -1 would never expire.
        assert!(
            ttl == -2 || (0..=1001).contains(&ttl),
            "{algorithm:?}: state expires within two periods, got {ttl}"
        );
    }

    tokio::time::sleep(Duration::from_millis(1050)).await;
    let left = backend.keys(&format!("{}:default:ratelimit:*", backend.prefix())).await;
    assert!(left.is_empty(), "{left:?}");
}

/// Runs `call`, failing the test if it takes longer than `deadline` to return.
async fn within<T>(deadline: Duration, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(deadline, call)
        .await
        .expect("answered within the deadline")
}

fn with_policy(mut request: CheckRequest, policy: OutagePolicy) -> Request<CheckRequest> {
    request.on_unavailable = policy as i32;
    let mut request = Request::new(request);
    request.set_timeout(Duration::from_secs(2));
    request
}

#[tokio::test]
async fn when_redis_is_down_the_outage_policy_answers_promptly() {
    let mut redis = TestRedis::start().await;
    let open = TestService::start(&redis.url(), &[]).await;
    let closed = TestService::start(&redis.url(), &["--ratelimit-on-unavailable", "fail-closed"]).await;
    open.wait_for_health("", tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let (mut open_client, mut closed_client) = (ratelimit(&open), ratelimit(&closed));
    assert!(
        !ask(&mut open_client, check("k", 5, 86_400_000, Algorithm::TokenBucket))
            .await
            .decided_by_outage_policy
    );

    redis.stop().await;
    let deadline = Duration::from_secs(2);
    let request = || check("k", 5, 86_400_000, Algorithm::TokenBucket);

    // Straight after the outage (the prober may not have noticed yet) and after it has.
    for _ in 0..2 {
        let fail_open = within(
            deadline,
            open_client.check(with_policy(request(), OutagePolicy::Unspecified)),
        )
        .await
        .unwrap()
        .into_inner();
        assert!(fail_open.allowed && fail_open.decided_by_outage_policy, "{fail_open:?}");

        let fail_closed = within(
            deadline,
            closed_client.check(with_policy(request(), OutagePolicy::Unspecified)),
        )
        .await
        .unwrap()
        .into_inner();
        assert!(
            !fail_closed.allowed && fail_closed.decided_by_outage_policy,
            "{fail_closed:?}"
        );
        assert!(
            fail_closed
                .retry_after
                .is_some_and(|retry| to_duration(&retry) > Duration::ZERO)
        );

        let overridden_closed = within(
            deadline,
            open_client.check(with_policy(request(), OutagePolicy::FailClosed)),
        )
        .await
        .unwrap()
        .into_inner();
        assert!(!overridden_closed.allowed && overridden_closed.decided_by_outage_policy);
        let overridden_open = within(
            deadline,
            closed_client.check(with_policy(request(), OutagePolicy::FailOpen)),
        )
        .await
        .unwrap()
        .into_inner();
        assert!(overridden_open.allowed && overridden_open.decided_by_outage_policy);

        let many = within(
            deadline,
            closed_client.check_many(CheckManyRequest {
                limits: vec![limit("a", 1, Algorithm::TokenBucket)],
                on_unavailable: 0,
            }),
        )
        .await
        .unwrap()
        .into_inner();
        assert!(!many.allowed && many.decided_by_outage_policy);

        open.wait_for_health("", tonic_health::pb::health_check_response::ServingStatus::NotServing)
            .await;
    }
}

#[tokio::test]
async fn a_hung_redis_is_answered_by_the_policy_within_the_ratelimit_timeout() {
    let url = hung_redis().await;
    let service = TestService::start(&url, &["--ratelimit-timeout", "100ms", "--operation-timeout", "30s"]).await;
    let mut client = ratelimit(&service);

    let answer = within(
        PATIENCE,
        client.check(with_policy(
            check("k", 1, 1000, Algorithm::TokenBucket),
            OutagePolicy::FailOpen,
        )),
    )
    .await
    .unwrap()
    .into_inner();
    assert!(answer.allowed && answer.decided_by_outage_policy);
}

async fn bad_inputs_are_refused_naming_the_field(backend: Backend) {
    let service = backend
        .service(&["--ratelimit-max-period", "2days", "--ratelimit-max-batch", "2"])
        .await;
    let mut client = ratelimit(&service);
    let good = || check("k", 10, 1000, Algorithm::TokenBucket);
    let bad = |change: &dyn Fn(&mut CheckRequest)| {
        let mut request = good();
        change(&mut request);
        request
    };

    let cases: Vec<(CheckRequest, &str)> = vec![
        (bad(&|r| r.key.clear()), "key"),
        (bad(&|r| r.limit = 0), "limit"),
        (bad(&|r| r.limit = 1_000_000_001), "limit"),
        (
            bad(&|r| {
                // More than one per microsecond of the period.
                r.limit = 2_000;
                r.period = Some(millis(1));
            }),
            "limit",
        ),
        (bad(&|r| r.period = None), "period"),
        (bad(&|r| r.period = Some(millis(0))), "period"),
        (bad(&|r| r.period = Some(millis(-1000))), "period"),
        (bad(&|r| r.period = Some(millis(172_800_001))), "period"),
        (
            bad(&|r| {
                r.period = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 999_000,
                })
            }),
            "period",
        ),
        (bad(&|r| r.cost = Some(1_000_000_001)), "cost"),
        // An enum number the server does not know is refused, never read as the default.
        (bad(&|r| r.algorithm = 99), "algorithm"),
        (bad(&|r| r.algorithm = -1), "algorithm"),
        (bad(&|r| r.on_unavailable = 3), "on_unavailable"),
        (bad(&|r| r.on_unavailable = -1), "on_unavailable"),
    ];
    for (request, field) in cases {
        assert_invalid(client.check(request).await.unwrap_err(), field);
    }

    let many = |limits: Vec<Limit>| CheckManyRequest {
        limits,
        on_unavailable: 0,
    };
    assert_invalid(client.check_many(many(vec![])).await.unwrap_err(), "limits");
    let three = vec![
        limit("a", 1, Algorithm::TokenBucket),
        limit("b", 1, Algorithm::TokenBucket),
        limit("c", 1, Algorithm::TokenBucket),
    ];
    assert_invalid(client.check_many(many(three)).await.unwrap_err(), "limits");
    let repeated = vec![
        limit("a", 1, Algorithm::TokenBucket),
        limit("a", 1, Algorithm::Unspecified),
    ];
    assert_invalid(client.check_many(many(repeated)).await.unwrap_err(), "limits[1]");
    let mut no_period = limit("b", 1, Algorithm::TokenBucket);
    no_period.period = None;
    assert_invalid(
        client
            .check_many(many(vec![limit("a", 1, Algorithm::TokenBucket), no_period]))
            .await
            .unwrap_err(),
        "limits[1].period",
    );
    assert_invalid(
        client
            .reset(reset("", 1, 1000, Algorithm::Unspecified))
            .await
            .unwrap_err(),
        "key",
    );
    assert_invalid(
        client
            .reset(reset("k", 0, 1000, Algorithm::Unspecified))
            .await
            .unwrap_err(),
        "limit",
    );
    let mut no_period = reset("k", 1, 1000, Algorithm::Unspecified);
    no_period.period = None;
    assert_invalid(client.reset(no_period).await.unwrap_err(), "period");
    let mut unknown = limit("b", 1, Algorithm::TokenBucket);
    unknown.algorithm = 4;
    assert_invalid(
        client
            .check_many(many(vec![limit("a", 1, Algorithm::TokenBucket), unknown]))
            .await
            .unwrap_err(),
        "limits[1].algorithm",
    );
    let mut unknown_policy = many(vec![limit("a", 1, Algorithm::TokenBucket)]);
    unknown_policy.on_unavailable = 7;
    assert_invalid(client.check_many(unknown_policy).await.unwrap_err(), "on_unavailable");
    let mut unknown = reset("k", 1, 1000, Algorithm::Unspecified);
    unknown.algorithm = 4;
    assert_invalid(client.reset(unknown).await.unwrap_err(), "algorithm");

    // The server keeps serving, and refused requests consumed nothing.
    let fine = ask(&mut client, good()).await;
    assert!(fine.allowed);
    assert_eq!(fine.remaining, 9);
}

in_every_mode!(
    two_instances_on_one_redis_enforce_one_combined_limit,
    concurrent_checks_allow_exactly_the_limit_for_every_algorithm,
    a_denied_request_retried_after_retry_after_is_allowed,
    the_full_limit_is_back_after_reset_after,
    the_token_bucket_refills_one_token_per_interval,
    the_fixed_window_starts_afresh_at_the_window_edge,
    the_sliding_window_weighs_the_previous_window,
    cost_zero_reports_and_a_cost_above_the_limit_never_passes,
    check_many_consumes_nothing_unless_every_limit_allows,
    reset_makes_the_full_limit_available,
    limits_of_different_size_on_one_key_keep_separate_state,
    idle_keys_expire_on_their_own,
    bad_inputs_are_refused_naming_the_field,
);
