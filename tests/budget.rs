//! Token budgets against every topology: Reserve counts an estimate exactly as
//! a Check would, even under concurrency; Commit refunds or charges the
//! difference; Cancel refunds; an expired reservation settles at its estimate;
//! Report counts after the fact into debt, and the next Check sees it.

mod common;

use std::time::Duration;

use cachelock::pb::ratelimit::{
    Algorithm, CancelRequest, CheckRequest, CommitRequest, Limit, ReportRequest, ReserveRequest,
    rate_limit_service_client::RateLimitServiceClient,
};
use common::{Backend, PATIENCE, assert_invalid, millis};
use tonic::transport::Channel;

type Limits = RateLimitServiceClient<Channel>;

/// 100 units an hour: a unit comes back every 36 s, so nothing refills while a test runs.
fn budget(key: &str, algorithm: Algorithm, cost: u64) -> Limit {
    Limit {
        key: key.to_owned(),
        limit: 100,
        period: Some(millis(3_600_000)),
        cost: Some(cost),
        algorithm: algorithm as i32,
        calendar: None,
        leased: false,
    }
}

async fn reserve(limits: &mut Limits, limit: Limit) -> (bool, String, u64) {
    let answer = limits
        .reserve(ReserveRequest {
            limit: Some(limit),
            reservation_ttl: None,
        })
        .await
        .unwrap()
        .into_inner();
    (answer.allowed, answer.reservation_id, answer.remaining)
}

async fn commit(limits: &mut Limits, limit: Limit, id: &str, allow_debt: bool) -> (bool, u64, u64, u64) {
    let answer = limits
        .commit(CommitRequest {
            limit: Some(limit),
            reservation_id: id.to_owned(),
            allow_debt,
        })
        .await
        .unwrap()
        .into_inner();
    (answer.found, answer.charged, answer.refunded, answer.remaining)
}

/// Waits, when a window of `limit` ends within a few seconds, until the next one
/// begins (synchronised on the reset the service reports), so that a test's
/// refunds land in the window they were counted in.
async fn clear_of_a_window_edge(limits: &mut Limits, limit: &Limit) {
    let probe = CheckRequest {
        key: format!("{}:edge", limit.key),
        limit: 1,
        period: limit.period,
        cost: Some(1),
        algorithm: limit.algorithm,
        on_unavailable: 0,
        calendar: None,
        wait: None,
        leased: false,
    };
    let reset = limits.check(probe).await.unwrap().into_inner().reset_after.unwrap();
    let reset = Duration::from_secs(u64::try_from(reset.seconds).unwrap_or(0));
    if reset < Duration::from_secs(10) {
        tokio::time::sleep(reset + Duration::from_millis(100)).await;
    }
}

async fn concurrent_reservations_grant_exactly_the_budget(backend: Backend) {
    let service = backend.service(&[]).await;
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let mut limits = service.ratelimit();
            tokio::spawn(async move {
                reserve(&mut limits, budget("llm:team-a", Algorithm::TokenBucket, 1))
                    .await
                    .0
            })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        granted += u32::from(task.await.unwrap());
    }
    assert_eq!(granted, 100, "300 reservations of 1 on a budget of 100");
}

async fn commits_refund_or_charge_the_difference(backend: Backend) {
    let service = backend.service(&[]).await;
    for algorithm in [Algorithm::TokenBucket, Algorithm::FixedWindow, Algorithm::SlidingWindow] {
        let mut limits: Limits = service.ratelimit();
        let key = format!("llm:{algorithm:?}");
        let limit = |cost| budget(&key, algorithm, cost);
        clear_of_a_window_edge(&mut limits, &limit(1)).await;

        // Reserve 10, use 4: 6 come back.
        let (allowed, id, remaining) = reserve(&mut limits, limit(10)).await;
        assert!(allowed && !id.is_empty());
        assert_eq!(remaining, 90, "{algorithm:?}");
        assert_eq!(
            commit(&mut limits, limit(4), &id, false).await,
            (true, 4, 6, 96),
            "{algorithm:?}"
        );
        // Sent again: the same answer, nothing more.
        assert_eq!(
            commit(&mut limits, limit(4), &id, false).await,
            (true, 4, 6, 96),
            "{algorithm:?}"
        );

        // Reserve 10, use 15: 5 more charged.
        let (_, id, _) = reserve(&mut limits, limit(10)).await;
        assert_eq!(
            commit(&mut limits, limit(15), &id, false).await,
            (true, 15, 0, 81),
            "{algorithm:?}"
        );

        // Reserve 10, use 200 without debt: only what fits (71 left after the estimate).
        let (_, id, remaining) = reserve(&mut limits, limit(10)).await;
        assert_eq!(remaining, 71);
        assert_eq!(
            commit(&mut limits, limit(200), &id, false).await,
            (true, 81, 0, 0),
            "{algorithm:?}"
        );

        // Cancel refunds the whole estimate.
        let check = |cost| CheckRequest {
            key: key.clone(),
            limit: 100,
            period: Some(millis(3_600_000)),
            cost: Some(cost),
            algorithm: algorithm as i32,
            on_unavailable: 0,
            calendar: None,
            wait: None,
            leased: false,
        };
        assert!(!limits.check(check(1)).await.unwrap().into_inner().allowed, "spent");
        let cancelled = limits
            .cancel(CancelRequest {
                limit: Some(limit(0)),
                reservation_id: "no-such-reservation".to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!cancelled.found);
    }
}

async fn cancel_refunds_and_an_expired_reservation_settles_at_its_estimate(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut limits: Limits = service.ratelimit();
    let limit = |cost| budget("llm:cancel", Algorithm::TokenBucket, cost);
    let (_, id, remaining) = reserve(&mut limits, limit(30)).await;
    assert_eq!(remaining, 70);
    let cancelled = limits
        .cancel(CancelRequest {
            limit: Some(limit(0)),
            reservation_id: id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            cancelled.found,
            cancelled.charged,
            cancelled.refunded,
            cancelled.remaining
        ),
        (true, 0, 30, 100)
    );

    // A reservation nobody settles: its estimate stays counted when it expires.
    let answer = limits
        .reserve(ReserveRequest {
            limit: Some(limit(25)),
            reservation_ttl: Some(millis(100)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.remaining, 75);
    let records = format!(
        "{}:*:ratelimit-reservation:*:{}",
        backend.prefix(),
        answer.reservation_id
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !backend.keys(&records).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the reservation expires");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = commit(&mut limits, limit(1), &answer.reservation_id, false).await;
    assert_eq!(late, (false, 0, 0, 0), "settled at its estimate already");
    let (_, _, remaining) = reserve(&mut limits, limit(1)).await;
    assert_eq!(remaining, 74, "the 25 stayed counted");
    let mut counted = Vec::new();
    for result in ["reserved", "cancelled", "unknown"] {
        let series = format!("cachelock_ratelimit_budget_operations_total{{result=\"{result}\"}}");
        counted.push(service.metric(&series).await);
    }
    assert_eq!(counted, [3.0, 1.0, 1.0]);
}

async fn a_report_runs_into_debt_and_the_next_check_sees_it(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut limits: Limits = service.ratelimit();
    let limit = |cost| budget("llm:report", Algorithm::TokenBucket, cost);
    let reported = limits
        .report(ReportRequest {
            limit: Some(limit(150)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reported.remaining, 0);
    let retry = reported.retry_after.unwrap();
    assert!(
        retry.seconds > 30 * 36 - 5,
        "50 units of debt to pay off first: {retry:?}"
    );
    let check = CheckRequest {
        key: "llm:report".to_owned(),
        limit: 100,
        period: Some(millis(3_600_000)),
        cost: Some(1),
        algorithm: Algorithm::TokenBucket as i32,
        on_unavailable: 0,
        calendar: None,
        wait: None,
        leased: false,
    };
    assert!(!limits.check(check).await.unwrap().into_inner().allowed);
    // An excess committed with debt allowed is charged whole.
    let other = |cost| budget("llm:debt", Algorithm::TokenBucket, cost);
    let (_, id, _) = reserve(&mut limits, other(10)).await;
    assert_eq!(commit(&mut limits, other(130), &id, true).await, (true, 130, 0, 0));
}

async fn bad_budget_requests_name_their_field(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut limits: Limits = service.ratelimit();
    let refused = limits
        .reserve(ReserveRequest {
            limit: None,
            reservation_ttl: None,
        })
        .await
        .unwrap_err();
    assert_invalid(refused, "limit");
    let refused = limits
        .reserve(ReserveRequest {
            limit: Some(budget("k", Algorithm::TokenBucket, 0)),
            reservation_ttl: None,
        })
        .await
        .unwrap_err();
    assert_invalid(refused, "limit.cost");
    let refused = limits
        .reserve(ReserveRequest {
            limit: Some(budget("k", Algorithm::TokenBucket, 1)),
            reservation_ttl: Some(millis(2 * 86_400_000)),
        })
        .await
        .unwrap_err();
    assert_invalid(refused, "reservation_ttl");
    let (_, id, _) = reserve(&mut limits, budget("k", Algorithm::TokenBucket, 1)).await;
    let other_limit = Limit {
        limit: 50,
        ..budget("k", Algorithm::TokenBucket, 1)
    };
    let refused = limits
        .commit(CommitRequest {
            limit: Some(other_limit),
            reservation_id: id,
            allow_debt: false,
        })
        .await
        .unwrap_err();
    assert_invalid(refused, "reservation_id");
    let refused = limits
        .commit(CommitRequest {
            limit: Some(budget("k", Algorithm::TokenBucket, 1)),
            reservation_id: String::new(),
            allow_debt: false,
        })
        .await
        .unwrap_err();
    assert_invalid(refused, "reservation_id");
}

async fn refunds_give_back_only_what_has_not_refilled_and_debts_are_bounded(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut limits: Limits = service.ratelimit();
    // 10 units every 4 s: the bucket refills within a test, and a unit takes 400 ms.
    let fast = |cost| Limit {
        key: "llm:fast".to_owned(),
        limit: 10,
        period: Some(millis(4_000)),
        cost: Some(cost),
        algorithm: Algorithm::TokenBucket as i32,
        calendar: None,
        leased: false,
    };
    let (_, id, _) = reserve(&mut limits, fast(10)).await;
    // Synchronised on the bucket itself: wait until it is full again.
    let look = CheckRequest {
        key: "llm:fast".to_owned(),
        limit: 10,
        period: Some(millis(4_000)),
        cost: Some(0),
        algorithm: Algorithm::TokenBucket as i32,
        on_unavailable: 0,
        calendar: None,
        wait: None,
        leased: false,
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while limits.check(look.clone()).await.unwrap().into_inner().remaining < 10 {
        assert!(tokio::time::Instant::now() < deadline, "the bucket refills");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The refilled units are spent again; a late Cancel of the reservation must not
    // give them back a second time.
    let spend = CheckRequest {
        cost: Some(10),
        ..look.clone()
    };
    assert!(limits.check(spend).await.unwrap().into_inner().allowed);
    let cancelled = limits
        .cancel(CancelRequest {
            limit: Some(fast(0)),
            reservation_id: id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cancelled.refunded, cancelled.charged), (0, 10), "refilled already");
    // Never more than the limit: a refund of 10 would have made it full (10) again.
    assert!(cancelled.remaining < 10, "{cancelled:?}");

    // A report far beyond the limit keeps a debt of 100 periods, and answers.
    let slow = |cost| budget("llm:slow", Algorithm::TokenBucket, cost);
    let reported = limits
        .report(ReportRequest {
            limit: Some(slow(1_000_000_000)),
        })
        .await
        .unwrap()
        .into_inner();
    let wait = reported.retry_after.unwrap().seconds;
    assert!(wait > 99 * 3600 && wait <= 100 * 3600, "{wait} s");

    // A Commit without a cost settles at 0; repeats and late Cancels say they come after.
    let (_, id, _) = reserve(&mut limits, budget("llm:zero", Algorithm::FixedWindow, 5)).await;
    let settle = CommitRequest {
        limit: Some(Limit {
            cost: None,
            ..budget("llm:zero", Algorithm::FixedWindow, 0)
        }),
        reservation_id: id.clone(),
        allow_debt: false,
    };
    let first = limits.commit(settle.clone()).await.unwrap().into_inner();
    assert_eq!((first.charged, first.refunded, first.settled_before), (0, 5, false));
    let again = limits.commit(settle).await.unwrap().into_inner();
    assert_eq!((again.charged, again.refunded, again.settled_before), (0, 5, true));
    let late = limits
        .cancel(CancelRequest {
            limit: Some(budget("llm:zero", Algorithm::FixedWindow, 0)),
            reservation_id: id,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(late.found && late.settled_before);
    let refused = limits
        .reserve(ReserveRequest {
            limit: Some(slow(1)),
            reservation_ttl: Some(prost_types::Duration {
                seconds: 0,
                nanos: 500_000,
            }),
        })
        .await
        .unwrap_err();
    assert_invalid(refused, "reservation_ttl");
}

/// A full Redis takes no new reservation or debt: the records are always new state.
#[tokio::test]
async fn a_full_redis_takes_no_new_reservation_or_report() {
    let (redis, service) = common::redis_and_service(&[]).await;
    let mut limits: Limits = service.ratelimit();
    let (_, id, _) = reserve(&mut limits, budget("llm:full", Algorithm::TokenBucket, 5)).await;
    let info: String = redis.command(&["INFO", "memory"]).await;
    let used: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap();
    let _: () = redis
        .command(&["CONFIG", "SET", "maxmemory", &(used / 2).to_string()])
        .await;
    let full = limits
        .reserve(ReserveRequest {
            limit: Some(budget("llm:full", Algorithm::TokenBucket, 1)),
            reservation_ttl: None,
        })
        .await
        .unwrap_err();
    common::assert_reason(&full, tonic::Code::ResourceExhausted, "REDIS_OUT_OF_MEMORY");
    let new_debt = limits
        .report(ReportRequest {
            limit: Some(budget("llm:new", Algorithm::TokenBucket, 1)),
        })
        .await
        .unwrap_err();
    common::assert_reason(&new_debt, tonic::Code::ResourceExhausted, "REDIS_OUT_OF_MEMORY");
    // What exists is still settled and counted.
    assert_eq!(
        commit(&mut limits, budget("llm:full", Algorithm::TokenBucket, 2), &id, false)
            .await
            .2,
        3
    );
    limits
        .report(ReportRequest {
            limit: Some(budget("llm:full", Algorithm::TokenBucket, 1)),
        })
        .await
        .unwrap();
}

in_every_mode!(
    refunds_give_back_only_what_has_not_refilled_and_debts_are_bounded,
    concurrent_reservations_grant_exactly_the_budget,
    commits_refund_or_charge_the_difference,
    cancel_refunds_and_an_expired_reservation_settles_at_its_estimate,
    a_report_runs_into_debt_and_the_next_check_sees_it,
    bad_budget_requests_name_their_field,
);
