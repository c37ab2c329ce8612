//! LockService against a real redis-server: mutual exclusion, expiry, waiting,
//! idempotent acquire, fencing after data loss, bad inputs and outages.

mod common;

use std::time::{Duration, Instant};

use cachelock::pb::lock::{
    AcquireRequest, AcquireResponse, DescribeRequest, ExtendRequest, HoldRequest, HoldResponse, ReleaseRequest,
    hold_response::Event as HoldEvent, lock_service_client::LockServiceClient,
};
use common::requests::acquire;
use common::{
    Backend, FaultyLink, PATIENCE, TestRedis, TestService, assert_invalid, assert_reason, millis, redis_and_service,
};
use redis::AsyncCommands;
use tonic::{Code, transport::Channel};

fn locks(service: &TestService) -> LockServiceClient<Channel> {
    LockServiceClient::new(service.channel())
}

async fn take(client: &mut LockServiceClient<Channel>, request: AcquireRequest) -> AcquireResponse {
    client.acquire(request).await.unwrap().into_inner()
}

async fn release(client: &mut LockServiceClient<Channel>, name: &str, token: &str) -> Result<(), tonic::Status> {
    client
        .release(ReleaseRequest {
            name: name.to_owned(),
            token: token.to_owned(),
        })
        .await
        .map(|_| ())
}

async fn contending_workers_never_overlap_and_fencing_tokens_increase_in_grant_order(backend: Backend) {
    let service = backend.service(&[]).await;
    let workers = 16;
    let rounds = 50;

    // The protected resource: a counter updated by read-then-write, which
    // loses updates unless the lock keeps workers apart.
    let counter = format!("{}:resource:counter", backend.prefix());
    let direct = backend.connection().await;
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let mut client = locks(&service);
            let mut resource = direct.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut grants = Vec::new();
                for _ in 0..rounds {
                    let mut request = acquire("counter", 10_000, 30_000);
                    request.owner = format!("worker-{worker}");
                    let grant = take(&mut client, request).await;
                    assert!(grant.acquired, "a waiting acquire within 30 s");
                    let seen: i64 = resource.get(&counter).await.unwrap_or(0);
                    let _: () = resource.set(&counter, seen + 1).await.unwrap();
                    grants.push((seen, grant.fencing_token));
                    release(&mut client, "counter", &grant.token).await.unwrap();
                }
                grants
            })
        })
        .collect();
    let mut grants = Vec::new();
    for task in tasks {
        grants.extend(task.await.unwrap());
    }

    let mut direct = direct;
    let total: i64 = direct.get(&counter).await.unwrap();
    assert_eq!(total, workers * rounds);
    // The value each holder read orders the grants; their fencing tokens follow that order.
    grants.sort_unstable();
    assert_eq!(grants.len() as i64, workers * rounds);
    for pair in grants.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "each holder saw the previous holder's write");
        assert!(pair[1].1 > pair[0].1, "fencing tokens strictly increase: {pair:?}");
    }
}

async fn an_expired_lease_is_lost_and_the_next_grant_fences_it_out(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = locks(&service);

    let first = take(&mut client, acquire("job", 200, 0)).await;
    assert!(first.acquired);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let second = take(&mut client, acquire("job", 10_000, 0)).await;
    assert!(second.acquired, "the expired lease no longer blocks");
    assert!(second.fencing_token > first.fencing_token);

    let released = release(&mut client, "job", &first.token).await.unwrap_err();
    assert_reason(&released, Code::FailedPrecondition, "LEASE_LOST");
    assert!(released.message().contains("lease was lost"), "{}", released.message());
    let extended = client
        .extend(ExtendRequest {
            name: "job".to_owned(),
            token: first.token.clone(),
            ttl: Some(millis(10_000)),
        })
        .await
        .unwrap_err();
    assert_reason(&extended, Code::FailedPrecondition, "LEASE_LOST");

    // The stale holder's failed calls did not disturb the new holder.
    let described = client
        .describe(DescribeRequest { name: "job".to_owned() })
        .await
        .unwrap()
        .into_inner();
    assert!(described.held);
    assert_eq!(described.fencing_token, second.fencing_token);
}

async fn a_lease_that_ran_out_with_nobody_holding_the_lock_is_not_held(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = locks(&service);

    let grant = take(&mut client, acquire("lapsed", 100, 0)).await;
    assert!(grant.acquired);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let extended = client
        .extend(ExtendRequest {
            name: "lapsed".to_owned(),
            token: grant.token.clone(),
            ttl: Some(millis(10_000)),
        })
        .await
        .unwrap_err();
    assert_reason(&extended, Code::FailedPrecondition, "LOCK_NOT_HELD");
    let released = release(&mut client, "lapsed", &grant.token).await.unwrap_err();
    assert_reason(&released, Code::FailedPrecondition, "LOCK_NOT_HELD");
    assert!(released.message().contains("not held"), "{}", released.message());

    // A token that was never granted finds the free lock the same way, and one
    // that is not this lock's while another holds it finds the lease lost.
    let stranger = take(&mut client, acquire("other", 10_000, 0)).await;
    let free = release(&mut client, "lapsed", &stranger.token).await.unwrap_err();
    assert_reason(&free, Code::FailedPrecondition, "LOCK_NOT_HELD");
    let holder = take(&mut client, acquire("lapsed", 10_000, 0)).await;
    assert!(holder.acquired);
    let taken = release(&mut client, "lapsed", &stranger.token).await.unwrap_err();
    assert_reason(&taken, Code::FailedPrecondition, "LEASE_LOST");
}

async fn extend_renews_the_lease_of_the_holder(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = locks(&service);
    let granted_at = Instant::now();
    let grant = take(&mut client, acquire("renewed", 1_000, 0)).await;

    let extended = client
        .extend(ExtendRequest {
            name: "renewed".to_owned(),
            token: grant.token.clone(),
            ttl: Some(millis(5_000)),
        })
        .await
        .expect("extended within the first lease")
        .into_inner();
    assert_eq!(extended.fencing_token, grant.fencing_token);
    // Past the first lease, and still held thanks to the extension.
    tokio::time::sleep(Duration::from_millis(1_200).saturating_sub(granted_at.elapsed())).await;
    assert!(!take(&mut client, acquire("renewed", 1_000, 0)).await.acquired);
    release(&mut client, "renewed", &grant.token).await.unwrap();
}

async fn a_waiter_is_granted_promptly_after_release(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut holder = locks(&service);
    let mut waiter = locks(&service);
    let held = take(&mut holder, acquire("busy", 60_000, 0)).await;

    let started = Instant::now();
    let waiting = tokio::spawn(async move { take(&mut waiter, acquire("busy", 10_000, 20_000)).await });
    until_waiting(&mut holder, "busy", 1).await;
    assert!(!waiting.is_finished(), "the waiter waits while the lock is held");
    release(&mut holder, "busy", &held.token).await.unwrap();

    let granted = waiting.await.unwrap();
    assert!(granted.acquired);
    assert!(granted.fencing_token > held.fencing_token);
    // Woken by the release, long before the holder's 60 s lease or the 20 s wait ran out.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

async fn a_waiter_is_granted_when_the_holder_expires_without_releasing(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = locks(&service);
    let held = take(&mut client, acquire("abandoned", 400, 0)).await;

    let started = Instant::now();
    let granted = take(&mut client, acquire("abandoned", 10_000, 20_000)).await;
    assert!(granted.acquired);
    assert!(granted.fencing_token > held.fencing_token);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "it waited for the lease: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "woken at the expiry, not the wait's end: {waited:?}"
    );
}

async fn a_waiter_whose_wait_runs_out_is_not_granted(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = locks(&service);
    let held = take(&mut client, acquire("long", 60_000, 0)).await;

    let started = Instant::now();
    let denied = take(&mut client, acquire("long", 10_000, 300)).await;
    assert!(!denied.acquired);
    assert!(denied.token.is_empty());
    assert_eq!(denied.fencing_token, 0);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A caller's deadline shorter than its wait ends the wait too, without an error.
    let mut request = tonic::Request::new(acquire("long", 10_000, 30_000));
    request.set_timeout(Duration::from_millis(500));
    let cut_short = client.acquire(request).await.unwrap().into_inner();
    assert!(!cut_short.acquired);
    release(&mut client, "long", &held.token).await.unwrap();
}

async fn a_retry_with_the_same_request_id_gets_the_same_grant(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = locks(&service);
    let with_id = |id: &str| {
        let mut request = acquire("charge:42", 10_000, 0);
        request.request_id = id.to_owned();
        request
    };

    let first = take(&mut client, with_id("3f1c-retry")).await;
    assert!(first.acquired);
    let again = take(&mut client, with_id("3f1c-retry")).await;
    assert!(again.acquired);
    assert_eq!(again.token, first.token);
    assert_eq!(again.fencing_token, first.fencing_token);

    let other = take(&mut client, with_id("other-request")).await;
    assert!(!other.acquired);
    let anonymous = take(&mut client, acquire("charge:42", 10_000, 0)).await;
    assert!(!anonymous.acquired);

    // Once released, the old request id holds nothing: a retry is a new grant,
    // and the lock's state keeps nothing of the holder or its request id.
    release(&mut client, "charge:42", &first.token).await.unwrap();
    let state = backend.keys(&format!("{}:*lock-fence*", backend.prefix())).await;
    assert_eq!(state.len(), 1, "{state:?}");
    let mut fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&state[0])
        .query_async(&mut backend.connection().await)
        .await
        .expect("HKEYS");
    fields.sort();
    assert_eq!(fields, ["f", "p", "r"]);
    let fresh = take(&mut client, with_id("3f1c-retry")).await;
    assert!(fresh.acquired);
    assert_ne!(fresh.token, first.token);
    assert!(fresh.fencing_token > first.fencing_token);
}

async fn a_request_id_returns_the_grant_only_to_the_same_owner(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = locks(&service);
    let mut mine = acquire("payout:7", 10_000, 0);
    mine.request_id = "retry-key".to_owned();
    let granted = take(&mut client, mine.clone()).await;
    assert!(granted.acquired);

    let mut stranger = mine.clone();
    stranger.owner = "someone-else".to_owned();
    let refused = take(&mut client, stranger).await;
    assert!(
        !refused.acquired,
        "another owner replaying the request id is a new contender"
    );
    assert!(refused.token.is_empty());
    assert_eq!(take(&mut client, mine).await.token, granted.token);
}

async fn lock_names_with_braces_keep_their_keys_in_one_slot(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = locks(&service);
    for name in ["}", "{", "a}b{c", "{}", "{x}y"] {
        let grant = take(&mut client, acquire(name, 10_000, 0)).await;
        assert!(grant.acquired, "{name}");
        let keys = backend.keys(&format!("{}:*:lock*:{name}", backend.prefix())).await;
        // What Redis Cluster hashes: the text between the first `{` and the next `}`.
        let hashed: std::collections::HashSet<&str> = keys
            .iter()
            .map(|key| {
                let open = key.find('{').unwrap();
                let close = open + key[open..].find('}').unwrap();
                &key[open + 1..close]
            })
            .collect();
        assert_eq!(keys.len(), 2, "{name}: {keys:?}");
        assert_eq!(hashed.len(), 1, "{name}: {keys:?} span slots");
        assert!(hashed.iter().all(|tag| tag.len() == 4), "{name}: {hashed:?}");
        release(&mut client, name, &grant.token).await.unwrap();
    }
}

#[tokio::test]
async fn fencing_tokens_keep_increasing_after_redis_loses_its_data() {
    // Grants pause for the longest lease after a data loss; keep it short here.
    let (mut redis, service) = redis_and_service(&["--lock-max-ttl", "1s"]).await;
    let mut client = locks(&service);
    let before = take(&mut client, acquire("fenced", 1_000, 0)).await;
    assert!(before.acquired);

    redis.restart().await; // no persistence: every key is gone
    service
        .wait_for_health("", tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let after = tokio::time::timeout(PATIENCE, async {
        loop {
            match client.acquire(acquire("fenced", 1_000, 0)).await {
                Ok(response) => return response.into_inner(),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .unwrap();
    assert!(after.acquired, "the lock was lost with the data");
    assert!(after.fencing_token > before.fencing_token);
}

async fn describe_shows_the_holder_but_never_the_token(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = locks(&service);
    let describe = |name: &str| DescribeRequest { name: name.to_owned() };

    let free = client.describe(describe("report")).await.unwrap().into_inner();
    assert!(!free.held);
    assert_eq!(free.fencing_token, 0);
    assert_eq!(free.ttl, None);

    let mut request = acquire("report", 30_000, 0);
    request.owner = "billing-worker-3".to_owned();
    let grant = take(&mut client, request).await;
    let held = client.describe(describe("report")).await.unwrap().into_inner();
    assert!(held.held);
    assert_eq!(held.owner, "billing-worker-3");
    assert_eq!(held.fencing_token, grant.fencing_token);
    assert!(held.ttl.is_some() && held.expires_at.is_some());
    assert!(
        !format!("{held:?}").contains(&grant.token),
        "the token never leaves Acquire"
    );

    release(&mut client, "report", &grant.token).await.unwrap();
    let released = client.describe(describe("report")).await.unwrap().into_inner();
    assert!(!released.held);
    assert_eq!(released.fencing_token, grant.fencing_token, "the last token granted");
}

async fn bad_inputs_are_refused_naming_the_field(backend: Backend) {
    let service = backend
        .service(&["--lock-max-ttl", "1m", "--lock-max-wait", "10s"])
        .await;
    let mut client = locks(&service);
    let bad = |change: &dyn Fn(&mut AcquireRequest)| {
        let mut request = acquire("ok", 1_000, 0);
        change(&mut request);
        request
    };

    let cases: Vec<(AcquireRequest, &str)> = vec![
        (bad(&|r| r.name.clear()), "name"),
        (bad(&|r| r.name = "n".repeat(2000)), "name"),
        (bad(&|r| r.ttl = None), "ttl"),
        (bad(&|r| r.ttl = Some(millis(0))), "ttl"),
        (bad(&|r| r.ttl = Some(millis(-5))), "ttl"),
        (bad(&|r| r.ttl = Some(millis(60_001))), "ttl"),
        (bad(&|r| r.wait_timeout = Some(millis(10_001))), "wait_timeout"),
        (bad(&|r| r.wait_timeout = Some(millis(-1))), "wait_timeout"),
        (bad(&|r| r.owner = "o".repeat(257)), "owner"),
        (bad(&|r| r.permits = 10_001), "permits"),
        (bad(&|r| r.request_id = "r".repeat(129)), "request_id"),
    ];
    for (request, field) in cases {
        assert_invalid(client.acquire(request).await.unwrap_err(), field);
    }
    assert_invalid(release(&mut client, "ok", "").await.unwrap_err(), "token");
    assert_invalid(release(&mut client, "", "t").await.unwrap_err(), "name");
    assert_invalid(
        client
            .extend(ExtendRequest {
                name: "ok".to_owned(),
                token: String::new(),
                ttl: Some(millis(1_000)),
            })
            .await
            .unwrap_err(),
        "token",
    );
    assert_invalid(
        client
            .extend(ExtendRequest {
                name: "ok".to_owned(),
                token: "t".to_owned(),
                ttl: None,
            })
            .await
            .unwrap_err(),
        "ttl",
    );

    // Nothing was granted by the refused requests, and the server keeps serving.
    assert!(take(&mut client, acquire("ok", 1_000, 0)).await.acquired);
}

#[tokio::test]
async fn redis_down_gives_unavailable_within_the_deadline() {
    let port = TestRedis::free_port();
    let service = TestService::start(&format!("redis://127.0.0.1:{port}"), &["--operation-timeout", "300ms"]).await;
    let mut client = locks(&service);

    for status in [
        tokio::time::timeout(PATIENCE, client.acquire(acquire("x", 1_000, 0)))
            .await
            .unwrap()
            .unwrap_err(),
        tokio::time::timeout(PATIENCE, release(&mut client, "x", "token"))
            .await
            .unwrap()
            .unwrap_err(),
        tokio::time::timeout(PATIENCE, client.describe(DescribeRequest { name: "x".to_owned() }))
            .await
            .unwrap()
            .unwrap_err(),
    ] {
        // An Acquire that timed out may have been granted: it says so with DEADLINE_EXCEEDED.
        assert!(
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
            "{status:?}"
        );
    }

    // A waiting Acquire also returns within its wait, not later.
    let started = Instant::now();
    let waited = tokio::time::timeout(PATIENCE, client.acquire(acquire("x", 1_000, 500)))
        .await
        .unwrap();
    assert!(waited.is_err() || !waited.unwrap().into_inner().acquired);
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn hold(name: &str, ttl_ms: i64, wait_ms: i64) -> HoldRequest {
    HoldRequest {
        name: name.to_owned(),
        ttl: Some(millis(ttl_ms)),
        wait_timeout: (wait_ms > 0).then(|| millis(wait_ms)),
        owner: "holder".to_owned(),
        permits: 0,
        safety_margin: None,
    }
}

async fn hold_event(stream: &mut tonic::Streaming<HoldResponse>) -> Option<HoldEvent> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an event within the patience")
        .unwrap()
        .and_then(|response| response.event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_keeps_the_lease_past_its_ttl_and_closing_the_stream_frees_the_lock() {
    let (_redis, service) = redis_and_service(&[]).await;
    let mut client = locks(&service);
    let mut held = client.hold(hold("report", 300, 0)).await.unwrap().into_inner();
    let Some(HoldEvent::Acquired(acquired)) = hold_event(&mut held).await else {
        panic!("the lock was free");
    };

    // Several leases later, the same grant still holds the lock.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let described = client
        .describe(DescribeRequest {
            name: "report".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(described.held);
    assert_eq!(described.owner, "holder");
    assert_eq!(described.fencing_token, acquired.fencing_token);
    let refused = take(&mut client, acquire("report", 10_000, 0)).await;
    assert!(!refused.acquired);

    // A second Hold waits; closing the first hands it the lock.
    let mut second = client.hold(hold("report", 10_000, 20_000)).await.unwrap().into_inner();
    drop(held);
    let Some(HoldEvent::Acquired(next)) = hold_event(&mut second).await else {
        panic!("the second Hold got the lock once the first closed");
    };
    assert!(next.fencing_token > acquired.fencing_token);

    // A Hold that cannot get the lock in its wait says so, and ends.
    let mut third = client.hold(hold("report", 10_000, 100)).await.unwrap().into_inner();
    assert!(matches!(hold_event(&mut third).await, Some(HoldEvent::NotAcquired(_))));
    assert!(hold_event(&mut third).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_share_a_semaphore_up_to_its_permits() {
    let (_redis, service) = redis_and_service(&[]).await;
    let mut client = locks(&service);
    let semaphore = |wait_ms| HoldRequest {
        permits: 2,
        ..hold("seats", 300, wait_ms)
    };
    // One after the other, so that the grants come in a known order.
    let mut first = client.hold(semaphore(0)).await.unwrap().into_inner();
    let Some(HoldEvent::Acquired(one)) = hold_event(&mut first).await else {
        panic!("a permit was free");
    };
    let mut second = client.hold(semaphore(0)).await.unwrap().into_inner();
    let Some(HoldEvent::Acquired(two)) = hold_event(&mut second).await else {
        panic!("a second permit was free");
    };
    assert!(two.fencing_token > one.fencing_token);
    // Both leases outlive their ttl; a third Hold waits in line.
    let mut third = client.hold(semaphore(20_000)).await.unwrap().into_inner();
    until_waiting(&mut client, "seats", 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let seen = describe(&mut client, "seats").await;
    assert_eq!((seen.holders, seen.waiting, seen.permits), (2, 1, 2));
    drop(first);
    let Some(HoldEvent::Acquired(three)) = hold_event(&mut third).await else {
        panic!("the third Hold got the permit the first gave back");
    };
    assert!(three.fencing_token > two.fencing_token);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_whose_client_vanished_without_closing_frees_the_lock_when_pings_go_unanswered() {
    let (_redis, service) =
        redis_and_service(&["--client-ping-interval", "300ms", "--client-ping-timeout", "300ms"]).await;
    // The client reaches the service through a link that can go silent both
    // ways, as when the client's machine dies: no FIN, no RST, nothing.
    let link = FaultyLink::start(service.addr.port()).await;
    let endpoint = link.url.replace("redis://", "http://");
    let vanishing = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut held = LockServiceClient::new(vanishing)
        .hold(hold("orphan", 2_000, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(hold_event(&mut held).await, Some(HoldEvent::Acquired(_))));
    link.hold_requests(true);
    link.hold_replies(true);

    // Without the pings the lease would be renewed for ever; with them the
    // connection is closed, the stream with it, and the lock is released.
    let mut client = locks(&service);
    let next = take(&mut client, acquire("orphan", 10_000, 14_000)).await;
    assert!(
        next.acquired,
        "the lock is freed once the silent client's pings go unanswered"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_whose_lease_cannot_be_kept_says_it_is_lost() {
    let (mut redis, service) = redis_and_service(&[]).await;
    let mut client = locks(&service);

    // Taken over: the lease is gone from under it (here, deleted by hand).
    let mut held = client.hold(hold("taken", 300, 0)).await.unwrap().into_inner();
    assert!(matches!(hold_event(&mut held).await, Some(HoldEvent::Acquired(_))));
    let keys: Vec<String> = redis.command(&["KEYS", "cachelock:*:lock:*taken"]).await;
    let _: i64 = redis.command(&["DEL", &keys[0]]).await;
    let Some(HoldEvent::Lost(lost)) = hold_event(&mut held).await else {
        panic!("the Hold learns that it lost the lock");
    };
    assert_eq!(lost.reason, "LOCK_NOT_HELD");
    assert!(hold_event(&mut held).await.is_none(), "the stream ends");

    // Redis gone for longer than the lease.
    let mut held = client.hold(hold("outage", 300, 0)).await.unwrap().into_inner();
    assert!(matches!(hold_event(&mut held).await, Some(HoldEvent::Acquired(_))));
    redis.stop().await;
    let Some(HoldEvent::Lost(lost)) = hold_event(&mut held).await else {
        panic!("the Hold learns that it lost the lock");
    };
    assert_eq!(lost.reason, "REDIS_UNAVAILABLE");
}

async fn describe(client: &mut LockServiceClient<Channel>, name: &str) -> cachelock::pb::lock::DescribeResponse {
    client
        .describe(DescribeRequest { name: name.to_owned() })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until `count` callers wait for `name`, as Describe sees it.
async fn until_waiting(client: &mut LockServiceClient<Channel>, name: &str, count: u32) {
    let deadline = Instant::now() + PATIENCE;
    while describe(client, name).await.waiting != count {
        assert!(Instant::now() < deadline, "{count} waiters queue for {name}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn waiters_on_two_instances_are_granted_in_the_order_they_queued(backend: Backend) {
    let first = backend.service(&[]).await;
    let second = backend.service(&[]).await;
    let mut client = locks(&first);
    let holder = take(&mut client, acquire("line", 30_000, 0)).await;
    assert!(holder.acquired);

    // Twenty waiters, alternately on each instance, each queued before the next starts.
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for place in 0..20u32 {
        let mut waiter = locks(if place % 2 == 0 { &first } else { &second });
        let order = order.clone();
        waiters.push(tokio::spawn(async move {
            let mut request = acquire("line", 30_000, 60_000);
            request.owner = format!("waiter {place}");
            let granted = take(&mut waiter, request).await;
            assert!(granted.acquired, "waiter {place} is granted the lock");
            order.lock().unwrap().push(place);
            release(&mut waiter, "line", &granted.token).await.unwrap();
        }));
        until_waiting(&mut client, "line", place + 1).await;
    }
    // The holder's lease runs out with no release to name the next waiter:
    // every waiter attempts again at about the same time, and the queue decides.
    client
        .extend(ExtendRequest {
            name: "line".to_owned(),
            token: holder.token.clone(),
            ttl: Some(millis(300)),
        })
        .await
        .unwrap();
    // Free now, until the first waiter attempts (within a second): a caller that
    // does not wait is still not let in ahead of those that queued. (Should the
    // first waiter take it the moment the lease ends, there is no such window.)
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = describe(&mut client, "line").await;
        if !seen.held && seen.waiting == 20 {
            assert!(!take(&mut client, acquire("line", 30_000, 0)).await.acquired);
            break;
        }
        if seen.waiting < 20 {
            break;
        }
        assert!(Instant::now() < deadline, "the holder's lease runs out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for waiter in waiters {
        tokio::time::timeout(PATIENCE, waiter).await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<u32>>());
    let after = describe(&mut client, "line").await;
    assert_eq!((after.held, after.waiting), (false, 0));
}

async fn a_semaphore_never_has_more_holders_than_permits(backend: Backend) {
    let first = backend.service(&[]).await;
    let second = backend.service(&[]).await;
    let permits = 3;
    let contenders = 30;
    let started = Instant::now();

    // Each contender records when it held a permit: from after the grant's answer
    // to before its release, so each recorded span lies inside the real one.
    let tasks: Vec<_> = (0..contenders)
        .map(|contender| {
            let mut client = locks(if contender % 2 == 0 { &first } else { &second });
            tokio::spawn(async move {
                let mut request = acquire("pool", 30_000, 60_000);
                request.permits = permits;
                let granted = take(&mut client, request).await;
                assert!(granted.acquired, "contender {contender} is granted a permit");
                let from = started.elapsed();
                let seen = describe(&mut client, "pool").await;
                assert!(seen.holders >= 1 && seen.holders <= permits, "{seen:?}");
                assert_eq!(seen.permits, permits);
                tokio::time::sleep(Duration::from_millis(20)).await;
                let to = started.elapsed();
                release(&mut client, "pool", &granted.token).await.unwrap();
                (from, to, granted.fencing_token)
            })
        })
        .collect();
    let mut spans = Vec::new();
    for task in tasks {
        spans.push(tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap());
    }

    // The overlap checker: at no instant more holders than permits.
    let mut edges: Vec<(Duration, i32)> = spans.iter().flat_map(|&(from, to, _)| [(from, 1), (to, -1)]).collect();
    // Ends before starts at the same instant: touching spans do not overlap.
    edges.sort();
    let mut holding = 0;
    let mut most = 0;
    for (_, change) in edges {
        holding += change;
        most = most.max(holding);
    }
    assert!(most <= 3, "{most} holders at once with {permits} permits");

    // Fencing tokens: all distinct, and a grant after another ended has a larger one.
    let mut tokens: Vec<u64> = spans.iter().map(|span| span.2).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), contenders);
    for earlier in &spans {
        for later in &spans {
            if earlier.1 <= later.0 {
                assert!(earlier.2 < later.2, "{earlier:?} then {later:?}");
            }
        }
    }
    let after = describe(&mut locks(&first), "pool").await;
    assert_eq!((after.holders, after.waiting), (0, 0));
}

in_every_mode!(
    waiters_on_two_instances_are_granted_in_the_order_they_queued,
    a_semaphore_never_has_more_holders_than_permits,
    contending_workers_never_overlap_and_fencing_tokens_increase_in_grant_order,
    an_expired_lease_is_lost_and_the_next_grant_fences_it_out,
    a_lease_that_ran_out_with_nobody_holding_the_lock_is_not_held,
    extend_renews_the_lease_of_the_holder,
    a_waiter_is_granted_promptly_after_release,
    a_waiter_is_granted_when_the_holder_expires_without_releasing,
    a_waiter_whose_wait_runs_out_is_not_granted,
    a_retry_with_the_same_request_id_gets_the_same_grant,
    a_request_id_returns_the_grant_only_to_the_same_owner,
    lock_names_with_braces_keep_their_keys_in_one_slot,
    describe_shows_the_holder_but_never_the_token,
    bad_inputs_are_refused_naming_the_field,
);
