//! The Rust client against a real cachelock and a real redis-server, both
//! started by the test: a lease lost while held, a stampede filled once, a
//! call that must not be retried, and every error decoded.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use cachelock_client::{
    Calendar, CalendarUnit, CampaignOptions, Change, Client, Event, FillOptions, Limit, LockOptions, NewSession,
    Options, Reason, Tls, Update,
};
use cachelock_testkit::{PATIENCE, TestAuthFile, TestCa, TestRedis, TestService, auth_client};
use tokio_stream::StreamExt;

const APP: &str = "app-token";
const METERED: &str = "metered-token";
const READER: &str = "reader-token";

/// A Redis, and the service in front of it with an auth file of three clients
/// of one tenant: one allowed everything, one limited to 3 requests a second,
/// one that may only read the cache.
struct Fixture {
    redis: TestRedis,
    service: TestService,
    _auth: TestAuthFile,
}

impl Fixture {
    async fn start(extra_args: &[&str]) -> Fixture {
        let all = ["cache", "ratelimit", "lock", "session", "pubsub", "election"];
        let auth = TestAuthFile::new(&format!(
            "{}{}{}",
            auth_client("app", APP, "clients", &all, ""),
            auth_client("metered", METERED, "clients", &all, "max_requests_per_second = 3"),
            auth_client("reader", READER, "clients", &["cache:read"], ""),
        ));
        let redis = TestRedis::start().await;
        let path = auth.path();
        let mut args = vec!["--auth-file", path.as_str()];
        args.extend_from_slice(extra_args);
        let service = TestService::start(&redis.url(), &args).await;
        Fixture {
            redis,
            service,
            _auth: auth,
        }
    }

    fn client(&self, token: Option<&str>) -> Client {
        self.client_with(Options {
            token: token.map(str::to_owned),
            ..Options::default()
        })
    }

    fn client_with(&self, options: Options) -> Client {
        Client::connect_with(&self.service.addr.to_string(), options).expect("a client")
    }

    /// Takes the lease of lock `name` away behind the service's back, as a
    /// flush or a failover to a replica that never saw it would.
    async fn delete_lock_keys(&self, name: &str) {
        let keys: Vec<String> = self.redis.command(&["KEYS", &format!("*:lock:*:{name}")]).await;
        assert!(!keys.is_empty(), "the lock {name} is in Redis");
        for key in keys {
            let _: i64 = self.redis.command(&["DEL", &key]).await;
        }
    }
}

#[tokio::test]
async fn a_lease_taken_away_while_held_is_reported_lost_and_the_next_holder_is_fenced_above_it() {
    let fixture = Fixture::start(&[]).await;
    let client = fixture.client(Some(APP));
    let options = LockOptions::new(Duration::from_millis(1500)).owner("test");
    let lease = client.locks().hold("invoice:42", &options).await.expect("held");
    assert_eq!(lease.lost_reason(), None);
    lease.check().expect("held at first");
    assert!(lease.certain_for() > Duration::ZERO);

    fixture.delete_lock_keys("invoice:42").await;
    let work = lease.run(std::future::pending::<()>());
    let error = tokio::time::timeout(PATIENCE, work)
        .await
        .expect("the loss is noticed at the next renewal")
        .expect_err("the work is stopped");
    assert_eq!(error.reason(), &Reason::LeaseLost);
    assert_eq!(lease.lost_reason().as_deref(), Some("LOCK_NOT_HELD"));
    assert_eq!(lease.check().expect_err("lost").reason(), &Reason::LeaseLost);
    assert_eq!(lease.certain_for(), Duration::ZERO);

    let next = client.locks().hold("invoice:42", &options).await.expect("free again");
    assert!(next.fencing_token() > lease.fencing_token());
}

#[tokio::test]
async fn a_dropped_lease_is_released_and_a_held_lock_is_not_acquired_within_the_wait() {
    let fixture = Fixture::start(&[]).await;
    let client = fixture.client(Some(APP));
    let locks = client.locks();
    let options = LockOptions::new(Duration::from_secs(30));
    let lease = locks.hold("nightly", &options).await.expect("held");
    let waited = locks
        .hold("nightly", &options.clone().wait(Duration::from_millis(200)))
        .await
        .expect_err("held by the first lease");
    assert_eq!(waited.reason(), &Reason::NotAcquired);

    drop(lease);
    // The release follows the stream's end in the server: wait for it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while locks.describe("nightly").await.expect("described").held {
        assert!(tokio::time::Instant::now() < deadline, "the dropped lease is released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stampede_on_a_missing_key_fills_it_once() {
    let fixture = Fixture::start(&[]).await;
    let client = fixture.client(Some(APP));
    let fills = Arc::new(AtomicU32::new(0));
    let options = FillOptions::new(Duration::from_secs(60));
    let callers = (0..20).map(|_| {
        let (cache, fills, options) = (client.cache(), fills.clone(), options.clone());
        tokio::spawn(async move {
            cache
                .get_or_fill("price:sku-7", &options, || async {
                    fills.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::io::Error>(Bytes::from_static(b"12.50"))
                })
                .await
        })
    });
    for caller in callers.collect::<Vec<_>>() {
        let value = caller.await.expect("joined").expect("a value");
        assert_eq!(value, Bytes::from_static(b"12.50"));
    }
    assert_eq!(fills.load(Ordering::SeqCst), 1, "one fill for twenty callers");
    let again = client
        .cache()
        .get_or_fill("price:sku-7", &options, || async {
            Err::<Bytes, _>(std::io::Error::other("not called"))
        })
        .await
        .expect("a hit");
    assert_eq!(again, Bytes::from_static(b"12.50"));
}

#[tokio::test]
async fn a_refused_increment_is_not_repeated_but_a_refused_get_is() {
    let fixture = Fixture::start(&[]).await;
    let retries: Arc<Mutex<Vec<(&'static str, Reason)>>> = Arc::default();
    let seen = retries.clone();
    let metered = fixture.client_with(Options {
        token: Some(METERED.into()),
        on_retry: Some(Arc::new(move |retry| {
            seen.lock()
                .expect("not poisoned")
                .push((retry.method, retry.error.reason().clone()));
        })),
        ..Options::default()
    });
    // Spend the client's budget of 3 a second until a refusal: each success counted once.
    let mut counted = 0;
    let refusal = loop {
        match metered.cache().increment("visits", 1, None).await {
            Ok(value) => {
                counted += 1;
                assert_eq!(value, counted);
            }
            Err(error) => break error,
        }
    };
    assert_eq!(refusal.reason(), &Reason::ClientRateLimited);
    assert!(refusal.retry_after().is_some(), "{refusal:?}");
    assert!(
        retries.lock().expect("not poisoned").is_empty(),
        "an Increment is never repeated"
    );
    let app = fixture.client(Some(APP));
    assert_eq!(app.cache().increment("visits", 0, None).await.expect("read"), counted);

    // A Get refused the same way waits as advised and goes through.
    assert_eq!(
        metered.cache().get("visits").await.expect("retried"),
        Some(Bytes::from(counted.to_string()))
    );
    let retries = retries.lock().expect("not poisoned");
    assert!(!retries.is_empty());
    assert!(
        retries
            .iter()
            .all(|(method, reason)| *method == "cache.Get" && *reason == Reason::ClientRateLimited)
    );
}

#[tokio::test]
async fn errors_are_decoded_to_their_reasons() {
    let fixture = Fixture::start(&[]).await;
    let app = fixture.client(Some(APP));

    let invalid = app
        .rate_limits()
        .check("login", &Limit::per(0, Duration::from_secs(1)), None)
        .await
        .expect_err("a zero limit");
    assert_eq!(
        (invalid.reason(), invalid.field()),
        (&Reason::InvalidField, Some("limit"))
    );
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);

    let missing = app.sessions().get("no-such-session", false).await.expect_err("unknown");
    assert_eq!(missing.reason(), &Reason::SessionNotFound);

    app.cache().set("text", "hello", None).await.expect("stored");
    let not_integer = app.cache().increment("text", 1, None).await.expect_err("text");
    assert_eq!(not_integer.reason(), &Reason::NotAnInteger);

    let anonymous = fixture.client(None).cache().get("text").await.expect_err("no token");
    assert_eq!(anonymous.reason(), &Reason::Unauthenticated);
    let reader = fixture.client(Some(READER));
    assert_eq!(
        reader.cache().get("text").await.expect("may read"),
        Some(Bytes::from_static(b"hello"))
    );
    let denied = reader.cache().set("text", "x", None).await.expect_err("may not write");
    assert_eq!(denied.reason(), &Reason::PermissionDenied);

    let locks = app.locks();
    let grant = locks
        .acquire("job", &LockOptions::new(Duration::from_secs(30)))
        .await
        .expect("asked")
        .expect("free");
    locks.release(&grant).await.expect("released");
    let released = locks
        .extend(&grant, Duration::from_secs(30))
        .await
        .expect_err("released already");
    assert_eq!(released.reason(), &Reason::LockNotHeld);
    let other = locks
        .acquire("job", &LockOptions::new(Duration::from_secs(30)))
        .await
        .expect("asked")
        .expect("free");
    let stale = locks
        .extend(&grant, Duration::from_secs(30))
        .await
        .expect_err("another holds it");
    assert_eq!(stale.reason(), &Reason::LeaseLost);
    assert!(other.fencing_token > grant.fencing_token);

    // No secret in any debug form.
    let session = app
        .sessions()
        .create(NewSession {
            user_id: "u1".into(),
            ..NewSession::default()
        })
        .await
        .expect("created");
    for shown in [format!("{app:?}"), format!("{grant:?}"), format!("{session:?}")] {
        for secret in [APP, grant.token(), session.id()] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}

#[tokio::test]
async fn cache_rate_limit_session_and_pubsub_round_trips() {
    let fixture = Fixture::start(&[]).await;
    let app = fixture.client(Some(APP));
    let cache = app.cache();
    cache.set("a", "1", Some(Duration::from_secs(60))).await.expect("set");
    cache
        .set_many(
            &[("b", Bytes::from_static(b"2")), ("c", Bytes::from_static(b"3"))],
            None,
        )
        .await
        .expect("set");
    let many = cache.get_many(&["a", "b", "missing"]).await.expect("read");
    assert_eq!(many.len(), 2);
    assert_eq!(many["b"], Bytes::from_static(b"2"));
    assert!(cache.expire("a", Duration::from_secs(5)).await.expect("expired"));
    assert_eq!(cache.take("c").await.expect("taken"), Some(Bytes::from_static(b"3")));
    assert_eq!(cache.take("c").await.expect("taken"), None);
    assert_eq!(cache.delete(&["a", "b", "c"]).await.expect("deleted"), 2);

    let limits = app.rate_limits();
    let limit = Limit::per(2, Duration::from_secs(60));
    assert!(limits.check("login:u1", &limit, None).await.expect("decided").allowed);
    assert!(limits.check("login:u1", &limit, None).await.expect("decided").allowed);
    let denied = limits.check("login:u1", &limit, None).await.expect("decided");
    assert!(!denied.allowed && denied.retry_after > Duration::ZERO);
    assert!(limits.reset("login:u1", &limit).await.expect("reset"));
    assert!(limits.check("login:u1", &limit, None).await.expect("decided").allowed);

    let sessions = app.sessions();
    let attributes = HashMap::from([("role".to_owned(), "admin".to_owned())]);
    let session = sessions
        .create(NewSession {
            user_id: "u2".into(),
            attributes,
            ..NewSession::default()
        })
        .await
        .expect("created");
    let updated = sessions
        .update(
            session.id(),
            Update {
                set: HashMap::from([("theme".into(), "dark".into())]),
                ..Update::default()
            },
        )
        .await
        .expect("updated");
    assert_eq!(updated.attributes.len(), 2);
    let conflict = sessions
        .update(
            session.id(),
            Update {
                expected_version: Some(session.version),
                ..Update::default()
            },
        )
        .await
        .expect_err("moved on");
    assert_eq!(conflict.reason(), &Reason::VersionConflict);
    let listed = sessions.list("u2").await.expect("listed");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].id().is_empty(), "a listing carries no session id");
    let rotated = sessions.rotate(session.id()).await.expect("rotated");
    assert_ne!(rotated.id(), session.id());
    sessions.delete_by_handle("u2", &listed[0].handle).await.expect("ended");
    let ended = sessions.get(rotated.id(), false).await.expect_err("ended");
    assert_eq!(ended.reason(), &Reason::SessionNotFound);

    let pubsub = app.pubsub();
    let mut subscription = pubsub.subscribe(&["orders"], &["audit.*"]).await.expect("subscribed");
    assert_eq!(pubsub.publish("orders", "o-1").await.expect("published"), 1);
    pubsub.publish("audit.login", "u1").await.expect("published");
    for (topic, pattern, payload) in [("orders", "", "o-1"), ("audit.login", "audit.*", "u1")] {
        match tokio::time::timeout(PATIENCE, subscription.next())
            .await
            .expect("delivered")
        {
            Some(Ok(Event::Message {
                topic: got,
                pattern: matched,
                payload: body,
                ..
            })) => {
                assert_eq!(
                    (got.as_str(), matched.as_str(), &body[..]),
                    (topic, pattern, payload.as_bytes())
                );
            }
            other => panic!("expected a message on {topic}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_tls_channel_trusts_the_given_ca() {
    let ca = TestCa::new("clients test CA");
    let (cert, key) = ca.issue("server", "localhost", &["localhost"]);
    let fixture = Fixture::start(&["--tls-cert", &cert, "--tls-key", &key]).await;
    let ca_pem = std::fs::read(&ca.ca_file).expect("the CA");
    let client = Client::connect_with(
        &format!("localhost:{}", fixture.service.addr.port()),
        Options {
            token: Some(APP.into()),
            tls: Some(Tls {
                ca_pem: Some(ca_pem),
                ..Tls::default()
            }),
            ..Options::default()
        },
    )
    .expect("a client");
    client
        .cache()
        .set("over-tls", "yes", None)
        .await
        .expect("stored over TLS");
    assert_eq!(
        client.cache().get("over-tls").await.expect("read"),
        Some(Bytes::from_static(b"yes"))
    );
}

#[tokio::test]
async fn a_lease_whose_renewals_stop_arriving_is_lost_before_it_could_end() {
    let fixture = Fixture::start(&[]).await;
    // The client reaches the service through a link that can hold its replies:
    // an instance frozen, or a network gone quiet, sends nothing more.
    let link = cachelock_testkit::FaultyLink::start(fixture.service.addr.port()).await;
    let port = link.url.rsplit(':').next().expect("a port").to_owned();
    let client = Client::connect_with(
        &format!("127.0.0.1:{port}"),
        Options {
            token: Some(APP.into()),
            ..Options::default()
        },
    )
    .expect("a client");
    let lease = client
        .locks()
        .hold("report", &LockOptions::new(Duration::from_millis(1500)))
        .await
        .expect("held");
    link.hold_replies(true);
    let reason = tokio::time::timeout(PATIENCE, lease.lost())
        .await
        .expect("noticed without a word from the server");
    assert_eq!(reason, "NOT_RENEWED");
    assert_eq!(lease.check().expect_err("lost").reason(), &Reason::LeaseLost);
}

async fn next_change(changes: &mut cachelock_client::Observation) -> Change {
    tokio::time::timeout(PATIENCE, changes.next())
        .await
        .expect("a change in time")
        .expect("the stream goes on")
        .expect("no error")
}

#[tokio::test]
async fn one_candidate_leads_at_a_time_and_a_replaced_leader_is_fenced_out() {
    let fixture = Fixture::start(&[]).await;
    let client = fixture.client(Some(APP));
    let elections = client.elections();
    let name = "{scheduler}";
    let mut changes = elections.observe(name).await.expect("observing");
    assert_eq!(next_change(&mut changes).await, Change::NoLeader { last_term: 0 });

    let options = |candidate: &str| CampaignOptions::new(candidate, Duration::from_millis(1500));
    let a = elections.campaign(name, &options("a")).await.expect("elected");
    assert!(!format!("{a:?}").contains(a.resign_token()), "{a:?}");
    match next_change(&mut changes).await {
        Change::Leader(leader) => assert_eq!((leader.candidate.as_str(), leader.term), ("a", a.term())),
        other => panic!("expected a, got {other:?}"),
    }
    let b = tokio::spawn({
        let elections = elections.clone();
        async move { elections.campaign(name, &options("b")).await }
    });
    // b waits in line; a resigns by dropping its leadership.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while client.locks().describe(name).await.expect("described").waiting == 0 {
        assert!(tokio::time::Instant::now() < deadline, "b stands in line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_fence = a.fence();
    a.resign();
    let b = b.await.expect("joined").expect("elected");
    assert!(b.term() > a_fence.fencing_token);
    let leader = elections.leader(name).await.expect("read").expect("a leader");
    assert_eq!((leader.candidate.as_str(), leader.term), ("b", b.term()));
    loop {
        match next_change(&mut changes).await {
            Change::NoLeader { .. } => continue,
            Change::Leader(leader) => break assert_eq!(leader.term, b.term()),
        }
    }
    let refused = client
        .cache()
        .fenced(a_fence)
        .set("{scheduler}:plan", "a", None)
        .await
        .expect_err("a's term is over");
    assert_eq!(refused.reason(), &Reason::FencedOut);
    client
        .cache()
        .fenced(b.fence())
        .set("{scheduler}:plan", "b", None)
        .await
        .expect("b leads");
    b.check().expect("b leads on");
}

#[tokio::test]
async fn a_token_budget_reserves_settles_once_and_reports_into_debt() {
    let fixture = Fixture::start(&[]).await;
    let limits = fixture.client(Some(APP)).rate_limits();
    let per_hour = |cost| Limit::per(100, Duration::from_secs(3600)).cost(cost);
    let first = limits.reserve("llm:team", &per_hour(40), None).await.expect("reserved");
    let second = limits.reserve("llm:team", &per_hour(40), None).await.expect("reserved");
    let third = limits.reserve("llm:team", &per_hour(40), None).await.expect("decided");
    assert_eq!((first.allowed, second.allowed, third.allowed), (true, true, false));
    assert_eq!(second.remaining, 20);

    let settled = limits.commit(&first, 10, false).await.expect("committed");
    assert_eq!(
        (settled.found, settled.charged, settled.refunded, settled.remaining),
        (true, 10, 30, 50)
    );
    let again = limits.commit(&first, 10, false).await.expect("answered");
    assert!(again.settled_before && again.charged == 10);
    let cancelled = limits.cancel(&second).await.expect("cancelled");
    assert_eq!((cancelled.refunded, cancelled.remaining), (40, 90));

    let reported = limits.report("llm:other", &per_hour(150)).await.expect("reported");
    assert_eq!(reported.remaining, 0);
    assert!(reported.retry_after > Duration::from_secs(1800), "{reported:?}");
    let decision = limits.check("llm:other", &per_hour(1), None).await.expect("decided");
    assert!(!decision.allowed, "the debt is seen");
}

#[tokio::test]
async fn calendar_windows_and_waiting_for_a_turn() {
    let fixture = Fixture::start(&[]).await;
    let limits = fixture.client(Some(APP)).rate_limits();
    let month = Limit::per_calendar(1000, Calendar::new(CalendarUnit::Month).in_zone("Europe/Berlin"));
    let decision = limits.check("quota:team", &month, None).await.expect("decided");
    assert!(decision.allowed && decision.remaining == 999, "{decision:?}");
    assert!(decision.reset_after > Duration::ZERO && decision.reset_after <= Duration::from_secs(31 * 86_400));
    assert!(limits.reset("quota:team", &month).await.expect("reset"));
    let odd = Limit::per_calendar(1, Calendar::new(CalendarUnit::Minute).times(7));
    let refused = limits.check("quota:odd", &odd, None).await.unwrap_err();
    assert_eq!(refused.reason(), &Reason::InvalidField);

    let steady = Limit::per(1, Duration::from_millis(300));
    assert!(limits.check("turns", &steady, None).await.expect("decided").allowed);
    let waited = limits
        .check_waiting("turns", &steady, Duration::from_secs(5), None)
        .await
        .expect("decided");
    assert!(waited.allowed && waited.waited > Duration::ZERO, "{waited:?}");
}
