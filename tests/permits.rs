//! Calendar windows and waiting for a permit, against every topology: a
//! calendar window resets exactly at its calendar boundary, reported to the
//! microsecond; callers that wait are answered in the order they arrived, across
//! two instances, as units come back; a waiter that goes away gives its cost back.

mod common;

use std::time::Duration;

use cachelock::pb::ratelimit::{
    Algorithm, CalendarUnit, CalendarWindow, CheckRequest, CheckResponse, ResetRequest,
    rate_limit_service_client::RateLimitServiceClient,
};
use common::{Backend, PATIENCE, assert_invalid, assert_resets_at, millis, unix_now};
use tonic::transport::Channel;

type Limits = RateLimitServiceClient<Channel>;

fn calendar(unit: CalendarUnit, multiplier: u32, zone: &str) -> Option<CalendarWindow> {
    Some(CalendarWindow {
        unit: unit as i32,
        multiplier,
        time_zone: zone.to_owned(),
    })
}

/// A Check of `cost` on `key`, `limit` per calendar window.
fn calendar_check(key: &str, limit: u64, cost: u64, window: Option<CalendarWindow>) -> CheckRequest {
    CheckRequest {
        key: key.to_owned(),
        limit,
        cost: Some(cost),
        calendar: window,
        ..CheckRequest::default()
    }
}

async fn check(limits: &mut Limits, request: CheckRequest) -> CheckResponse {
    limits.check(request).await.unwrap().into_inner()
}

fn duration(value: Option<prost_types::Duration>) -> Duration {
    let value = value.unwrap_or_default();
    Duration::new(
        u64::try_from(value.seconds).unwrap_or(0),
        u32::try_from(value.nanos).unwrap_or(0),
    )
}

async fn a_calendar_window_resets_at_its_boundary(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut limits: Limits = service.ratelimit();
    // Windows of 2 seconds, from the start of each minute.
    let window = || calendar(CalendarUnit::Second, 2, "UTC");
    let key = "cal:two-seconds";
    // Into the start of a window: the first unit's reset is where its window ends.
    let first = check(&mut limits, calendar_check(key, 3, 1, window())).await;
    assert!(first.allowed);
    tokio::time::sleep(duration(first.reset_after)).await;
    let before = unix_now();
    let spent = check(&mut limits, calendar_check(key, 3, 3, window())).await;
    let after = unix_now();
    assert!(spent.allowed, "a new window holds all 3");
    assert_eq!(spent.remaining, 0);
    let reset = duration(spent.reset_after);
    assert!(reset <= Duration::from_secs(2), "{reset:?}");
    // The window ends on an even second of UTC.
    assert_resets_at(before, after, reset, |instant| {
        instant.subsec_micros() == 0 && instant.as_secs() % 2 == 0
    });
    let refused = check(&mut limits, calendar_check(key, 3, 1, window())).await;
    assert!(!refused.allowed);
    let retry = duration(refused.retry_after);
    assert!(retry <= duration(refused.reset_after) && !retry.is_zero());
    // Synchronised on what the service reported: the window is over then.
    tokio::time::sleep(retry).await;
    let next = check(&mut limits, calendar_check(key, 3, 1, window())).await;
    assert!(next.allowed, "the next window starts whole");
    assert_eq!(next.remaining, 2);

    // A month in Berlin ends at midnight on the 1st, Berlin time.
    let before = unix_now();
    let month = check(
        &mut limits,
        calendar_check(
            "cal:month",
            100_000,
            1,
            calendar(CalendarUnit::Month, 1, "Europe/Berlin"),
        ),
    )
    .await;
    let after = unix_now();
    let end = {
        let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap());
        let first = now.date().first_of_month().saturating_add(jiff::Span::new().months(1));
        first.to_zoned(now.time_zone().clone()).unwrap().timestamp()
    };
    let end_micros = u64::try_from(end.as_microsecond()).unwrap();
    assert_resets_at(before, after, duration(month.reset_after), |instant| {
        u64::try_from(instant.as_micros()).unwrap() == end_micros
    });
    assert_eq!(month.remaining, 99_999);
    // Reset clears a calendar limit's state.
    let reset = limits
        .reset(ResetRequest {
            key: "cal:month".to_owned(),
            limit: 100_000,
            calendar: calendar(CalendarUnit::Month, 1, "Europe/Berlin"),
            ..ResetRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reset.existed);
    let whole = check(
        &mut limits,
        calendar_check(
            "cal:month",
            100_000,
            0,
            calendar(CalendarUnit::Month, 1, "europe/berlin"),
        ),
    )
    .await;
    assert_eq!(whole.remaining, 100_000, "the zone's name is read in any case");
}

async fn bad_calendar_and_wait_requests_name_their_field(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut limits: Limits = service.ratelimit();
    let day = || calendar(CalendarUnit::Day, 1, "UTC");
    let cases: Vec<(CheckRequest, &str)> = vec![
        (
            CheckRequest {
                period: Some(millis(1000)),
                ..calendar_check("k", 1, 1, day())
            },
            "calendar",
        ),
        (calendar_check("k", 1, 1, None), "period"),
        (
            calendar_check("k", 1, 1, calendar(CalendarUnit::Unspecified, 1, "UTC")),
            "calendar.unit",
        ),
        (
            CheckRequest {
                calendar: Some(CalendarWindow {
                    unit: 42,
                    ..CalendarWindow::default()
                }),
                ..calendar_check("k", 1, 1, None)
            },
            "calendar.unit",
        ),
        (
            calendar_check("k", 1, 1, calendar(CalendarUnit::Minute, 7, "UTC")),
            "calendar.multiplier",
        ),
        (
            calendar_check("k", 1, 1, calendar(CalendarUnit::Month, 5, "UTC")),
            "calendar.multiplier",
        ),
        (
            calendar_check("k", 1, 1, calendar(CalendarUnit::Day, 1, "Mars/Olympus")),
            "calendar.time_zone",
        ),
        (
            calendar_check("k", 1, 1, calendar(CalendarUnit::Day, 1, &"x".repeat(100))),
            "calendar.time_zone",
        ),
        // Longer than the default --ratelimit-max-period of 31 days.
        (
            calendar_check("k", 1, 1, calendar(CalendarUnit::Year, 1, "UTC")),
            "calendar",
        ),
        (
            CheckRequest {
                algorithm: Algorithm::TokenBucket as i32,
                ..calendar_check("k", 1, 1, day())
            },
            "algorithm",
        ),
        (
            CheckRequest {
                wait: Some(millis(3_600_001)),
                ..calendar_check("k", 1, 1, day())
            },
            "wait",
        ),
        (
            CheckRequest {
                key: "k".to_owned(),
                limit: 1,
                period: Some(millis(1000)),
                algorithm: Algorithm::SlidingWindow as i32,
                wait: Some(millis(1000)),
                ..CheckRequest::default()
            },
            "wait",
        ),
    ];
    for (request, field) in cases {
        let error = limits.check(request.clone()).await.unwrap_err();
        assert_invalid(error, field);
    }
}

/// How long until `key`'s token bucket (1 per `period_ms`) is whole: what the
/// callers counted so far have taken of it.
async fn taken(limits: &mut Limits, key: &str, period_ms: i64) -> Duration {
    let look = CheckRequest {
        key: key.to_owned(),
        limit: 1,
        period: Some(millis(period_ms)),
        cost: Some(0),
        ..CheckRequest::default()
    };
    duration(check(limits, look).await.reset_after)
}

async fn waiting_callers_are_served_in_arrival_order_across_instances(backend: Backend) {
    let first = backend.service(&[]).await;
    let second = backend.service(&[]).await;
    const PERIOD_MS: i64 = 500;
    let key = "wait:fifo";
    let one = |wait: Option<prost_types::Duration>| CheckRequest {
        key: key.to_owned(),
        limit: 1,
        period: Some(millis(PERIOD_MS)),
        wait,
        ..CheckRequest::default()
    };
    let mut look: Limits = first.ratelimit();
    assert!(check(&mut look, one(None)).await.allowed);
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for arrival in 0..4_u32 {
        let mut limits: Limits = if arrival % 2 == 0 {
            first.ratelimit()
        } else {
            second.ratelimit()
        };
        let done = done.clone();
        let request = one(Some(millis(30_000)));
        waiters.push(tokio::spawn(async move {
            let answer = check(&mut limits, request).await;
            done.send((arrival, answer)).unwrap();
        }));
        // This waiter has its place once the bucket is spent one period further.
        let wanted = Duration::from_millis(u64::try_from(PERIOD_MS).unwrap() * u64::from(arrival + 2))
            - Duration::from_millis(100);
        let started = std::time::Instant::now();
        while taken(&mut look, key, PERIOD_MS).await < wanted {
            assert!(started.elapsed() < PATIENCE, "waiter {arrival} never took its place");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Meanwhile a caller that does not wait cannot jump the line.
        assert!(!check(&mut look, one(None)).await.allowed);
    }
    let mut order = Vec::new();
    let mut waited = Vec::new();
    for _ in 0..4 {
        let (arrival, answer) = answers.recv().await.unwrap();
        assert!(answer.allowed, "waiter {arrival}");
        order.push(arrival);
        waited.push((arrival, duration(answer.waited)));
    }
    assert_eq!(
        order,
        vec![0, 1, 2, 3],
        "answered in the order they arrived: {waited:?}"
    );
    for (arrival, waited) in waited {
        assert!(!waited.is_zero(), "waiter {arrival} waited for its unit");
    }
    for waiter in waiters {
        waiter.await.unwrap();
    }
}

async fn a_waiter_that_goes_away_gives_its_cost_back(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut look: Limits = service.ratelimit();
    const PERIOD_MS: i64 = 10_000;
    let key = "wait:gone";
    let one = |wait: Option<prost_types::Duration>| CheckRequest {
        key: key.to_owned(),
        limit: 1,
        period: Some(millis(PERIOD_MS)),
        wait,
        ..CheckRequest::default()
    };
    assert!(check(&mut look, one(None)).await.allowed);
    let mut limits: Limits = service.ratelimit();
    let waiter = tokio::spawn(async move { check(&mut limits, one(Some(millis(60_000)))).await });
    let started = std::time::Instant::now();
    while taken(&mut look, key, PERIOD_MS).await < Duration::from_secs(11) {
        assert!(started.elapsed() < PATIENCE, "the waiter never took its place");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The caller goes: its stream is reset, and its unit comes back.
    waiter.abort();
    let started = std::time::Instant::now();
    while taken(&mut look, key, PERIOD_MS).await > Duration::from_secs(10) {
        assert!(started.elapsed() < PATIENCE, "the waiter's unit never came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A wait shorter than the turn is answered at once, refused, and counts nothing.
    let short = check(&mut look, one(Some(millis(100)))).await;
    assert!(!short.allowed);
    assert!(duration(short.waited).is_zero());
    assert!(taken(&mut look, key, PERIOD_MS).await <= Duration::from_secs(10));
}

async fn a_fixed_window_waiter_takes_its_place_in_the_next_window(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut limits: Limits = service.ratelimit();
    let key = "wait:window";
    let request = |cost: u64, wait: Option<prost_types::Duration>| CheckRequest {
        key: key.to_owned(),
        limit: 2,
        cost: Some(cost),
        wait,
        calendar: calendar(CalendarUnit::Second, 1, "UTC"),
        ..CheckRequest::default()
    };
    // Into the start of a window.
    let first = check(&mut limits, request(1, None)).await;
    tokio::time::sleep(duration(first.reset_after)).await;
    assert!(check(&mut limits, request(2, None)).await.allowed);
    let waited = check(&mut limits, request(1, Some(millis(5_000)))).await;
    assert!(waited.allowed, "a place in the next window");
    assert!(!duration(waited.waited).is_zero());
    // Answered as the next window began: the waiter's unit is counted in it.
    let next = check(&mut limits, request(2, None)).await;
    if next.allowed {
        // Only if that window was already over by the time this check ran.
        assert_eq!(next.remaining, 0);
    } else {
        assert_eq!(next.remaining, 1, "the waiter took one unit of this window");
    }
}

async fn a_waiter_leaving_from_the_middle_of_the_line_moves_nobody(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut look: Limits = service.ratelimit();
    const PERIOD_MS: i64 = 1_000;
    let key = "wait:middle";
    let one = |wait: Option<prost_types::Duration>| CheckRequest {
        key: key.to_owned(),
        limit: 1,
        period: Some(millis(PERIOD_MS)),
        wait,
        ..CheckRequest::default()
    };
    assert!(check(&mut look, one(None)).await.allowed);
    let queue = |taken_before: Duration| {
        let mut limits: Limits = service.ratelimit();
        let request = one(Some(millis(30_000)));
        let waiter = tokio::spawn(async move {
            let answer = check(&mut limits, request).await;
            (answer, tokio::time::Instant::now())
        });
        (waiter, taken_before + Duration::from_millis(900))
    };
    let mut queued = Vec::new();
    for _ in 0..2 {
        let before = taken(&mut look, key, PERIOD_MS).await;
        let (waiter, wanted) = queue(before);
        let started = std::time::Instant::now();
        while taken(&mut look, key, PERIOD_MS).await < wanted {
            assert!(started.elapsed() < PATIENCE, "a waiter never took its place");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        queued.push(waiter);
    }
    let with_both = taken(&mut look, key, PERIOD_MS).await;
    // The first waiter goes; the second keeps its moment, so nothing comes back.
    queued.remove(0).abort();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now_taken = taken(&mut look, key, PERIOD_MS).await;
        assert!(
            now_taken + Duration::from_millis(500) > with_both,
            "a unit came back while a waiter behind it holds its moment: {now_taken:?} < {with_both:?}"
        );
    }
    let (late, _) = queue(Duration::ZERO);
    let (second, second_at) = queued.remove(0).await.unwrap();
    let (late, late_at) = late.await.unwrap();
    assert!(second.allowed && late.allowed);
    assert!(
        late_at >= second_at + Duration::from_millis(500),
        "a later caller was given the moment of one still waiting"
    );
}

async fn a_fixed_window_serves_its_line_first(backend: Backend) {
    let service = backend.service(&["--ratelimit-max-wait", "1h"]).await;
    let mut limits: Limits = service.ratelimit();
    let key = "wait:line";
    let request = |cost: u64, wait: Option<prost_types::Duration>| CheckRequest {
        key: key.to_owned(),
        limit: 10,
        period: Some(millis(3_600_000)),
        algorithm: Algorithm::FixedWindow as i32,
        cost: Some(cost),
        wait,
        ..CheckRequest::default()
    };
    let first = check(&mut limits, request(9, None)).await;
    assert!(first.allowed);
    if duration(first.reset_after) < Duration::from_secs(60) {
        // Too near the end of the hour: start in the next one.
        tokio::time::sleep(duration(first.reset_after)).await;
        assert!(check(&mut limits, request(9, None)).await.allowed);
    }
    let mut waiting: Limits = service.ratelimit();
    let waiter = tokio::spawn(async move { check(&mut waiting, request(2, Some(millis(3_600_000)))).await });
    // Once it holds its place, the limit is whole only after the next window.
    let started = std::time::Instant::now();
    while duration(check(&mut limits, request(0, None)).await.reset_after) < Duration::from_secs(3_600) {
        assert!(started.elapsed() < PATIENCE, "the waiter never took its place");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let later = check(&mut limits, request(1, None)).await;
    assert!(
        !later.allowed,
        "a later caller took this window's last unit ahead of the line"
    );
    waiter.abort();
}

in_every_mode!(
    a_waiter_leaving_from_the_middle_of_the_line_moves_nobody,
    a_fixed_window_serves_its_line_first,
    a_calendar_window_resets_at_its_boundary,
    bad_calendar_and_wait_requests_name_their_field,
    waiting_callers_are_served_in_arrival_order_across_instances,
    a_waiter_that_goes_away_gives_its_cost_back,
    a_fixed_window_waiter_takes_its_place_in_the_next_window,
);
