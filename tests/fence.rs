//! Fenced writes against every topology: a holder whose lease ran out and whose
//! lock was granted again is refused (FENCED_OUT) on every write kind, with
//! nothing changed, while the new holder's writes apply; a semaphore and bad
//! fences are refused; on a Cluster, a lock in another slot than the written
//! keys is refused naming the fix.

mod common;

use std::{collections::HashMap, time::Duration};

use cachelock::pb::{
    cache::{
        DeleteRequest, ExpireRequest, GetRequest, IncrementRequest, SetEntry, SetManyRequest, SetRequest, TakeRequest,
        cache_service_client::CacheServiceClient,
    },
    lock::{AcquireRequest, Fence, ReleaseRequest},
    session::{
        CreateRequest, DeleteRequest as EndRequest, GetRequest as ReadRequest, UpdateRequest,
        session_service_client::SessionServiceClient,
    },
};
use common::{
    Backend, FaultyLink, Mode, PATIENCE, TestRedis, TestService, assert_invalid, assert_reason, millis,
    requests::acquire,
};
use tonic::{Code, transport::Channel};

/// Two grants of `name` one after the other: the first one's lease runs out
/// (100 ms), and the second, waiting for it, is granted then.
async fn old_and_new_grant(service: &TestService, name: &str) -> (Fence, Fence) {
    let mut locks = service.locks();
    let old = locks.acquire(acquire(name, 100, 0)).await.unwrap().into_inner();
    assert!(old.acquired);
    let new = locks.acquire(acquire(name, 60_000, 30_000)).await.unwrap().into_inner();
    assert!(new.acquired, "granted once the first lease ran out");
    assert!(new.fencing_token > old.fencing_token);
    let fence = |fencing_token| Fence {
        lock: name.to_owned(),
        fencing_token,
    };
    (fence(old.fencing_token), fence(new.fencing_token))
}

fn set(key: &str, value: &[u8], fence: &Fence) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: value.to_vec(),
        ttl: Some(millis(60_000)),
        fence: Some(fence.clone()),
        ..SetRequest::default()
    }
}

async fn value(cache: &mut CacheServiceClient<Channel>, key: &str) -> Option<Vec<u8>> {
    let answer = cache
        .get(GetRequest { key: key.to_owned() })
        .await
        .unwrap()
        .into_inner();
    answer.found.then_some(answer.value)
}

fn fenced_out(result: Result<impl std::fmt::Debug, tonic::Status>) {
    let status = result.expect_err("fenced out");
    assert_reason(&status, Code::FailedPrecondition, "FENCED_OUT");
}

async fn a_holder_granted_over_is_fenced_out_of_every_cache_write_while_the_new_holder_writes(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    // One hash tag for the lock and its keys: one slot on a Cluster.
    let (old, new) = old_and_new_grant(&service, "{order:42}").await;
    let key = |name: &str| format!("{{order:42}}:{name}");
    cache.set(set(&key("total"), b"100", &new)).await.unwrap();
    cache.set(set(&key("code"), b"otp", &new)).await.unwrap();
    cache.set(set(&key("count"), b"7", &new)).await.unwrap();

    // The old holder, woken from a long pause: every write refused, nothing changed.
    fenced_out(cache.set(set(&key("total"), b"1", &old)).await);
    let entry = |name: &str, value: &[u8]| SetEntry {
        key: key(name),
        value: value.to_vec(),
        ttl: Some(millis(60_000)),
    };
    let many = |fence: &Fence| SetManyRequest {
        entries: vec![entry("total", b"2"), entry("lines", b"3")],
        fence: Some(fence.clone()),
    };
    fenced_out(cache.set_many(many(&old)).await);
    let delete = |fence: &Fence| DeleteRequest {
        keys: vec![key("total")],
        fence: Some(fence.clone()),
    };
    fenced_out(cache.delete(delete(&old)).await);
    let take = |fence: &Fence| TakeRequest {
        key: key("code"),
        fence: Some(fence.clone()),
    };
    fenced_out(cache.take(take(&old)).await);
    let increment = |fence: &Fence| IncrementRequest {
        key: key("count"),
        delta: 5,
        ttl: None,
        fence: Some(fence.clone()),
    };
    fenced_out(cache.increment(increment(&old)).await);
    let expire = |fence: &Fence, ttl_ms| ExpireRequest {
        key: key("count"),
        ttl: Some(millis(ttl_ms)),
        fence: Some(fence.clone()),
    };
    fenced_out(cache.expire(expire(&old, 1)).await);
    assert_eq!(value(&mut cache, &key("total")).await.as_deref(), Some(&b"100"[..]));
    assert_eq!(value(&mut cache, &key("lines")).await, None);
    assert_eq!(value(&mut cache, &key("code")).await.as_deref(), Some(&b"otp"[..]));
    assert_eq!(value(&mut cache, &key("count")).await.as_deref(), Some(&b"7"[..]));
    let refused = service
        .metric("cachelock_fenced_writes_total{result=\"fenced_out\"}")
        .await;
    assert_eq!(refused, 6.0);

    // The new holder's writes apply.
    assert!(
        cache
            .set(set(&key("total"), b"101", &new))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    assert_eq!(cache.set_many(many(&new)).await.unwrap().into_inner().stored, 2);
    assert_eq!(value(&mut cache, &key("lines")).await.as_deref(), Some(&b"3"[..]));
    let taken = cache.take(take(&new)).await.unwrap().into_inner();
    assert_eq!((taken.found, taken.value.as_slice()), (true, &b"otp"[..]));
    assert_eq!(cache.increment(increment(&new)).await.unwrap().into_inner().value, 12);
    assert!(cache.expire(expire(&new, 60_000)).await.unwrap().into_inner().found);
    assert_eq!(cache.delete(delete(&new)).await.unwrap().into_inner().deleted, 1);
    assert_eq!(value(&mut cache, &key("total")).await, None);
    let applied = service
        .metric("cachelock_fenced_writes_total{result=\"applied\"}")
        .await;
    assert!(applied >= 6.0, "{applied}");
}

async fn a_holder_granted_over_is_fenced_out_of_session_writes_while_the_new_holder_writes(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut sessions: SessionServiceClient<Channel> = service.sessions();
    let created = sessions
        .create(CreateRequest {
            user_id: "u-7".to_owned(),
            attributes: HashMap::from([("cart".to_owned(), "1".to_owned())]),
            ..CreateRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    // A lock named by the user id lives in the slot of the user's sessions.
    let (old, new) = old_and_new_grant(&service, "u-7").await;
    let update = |fence: &Fence, cart: &str| UpdateRequest {
        id: created.id.clone(),
        set: HashMap::from([("cart".to_owned(), cart.to_owned())]),
        fence: Some(fence.clone()),
        ..UpdateRequest::default()
    };
    let end = |fence: &Fence| EndRequest {
        id: created.id.clone(),
        fence: Some(fence.clone()),
    };
    fenced_out(sessions.update(update(&old, "2")).await);
    fenced_out(sessions.delete(end(&old)).await);
    let read = ReadRequest {
        id: created.id.clone(),
        touch: false,
    };
    let kept = sessions.get(read.clone()).await.unwrap().into_inner().session.unwrap();
    assert_eq!((kept.attributes["cart"].as_str(), kept.version), ("1", created.version));

    let updated = sessions
        .update(update(&new, "3"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(updated.attributes["cart"], "3");
    sessions.delete(end(&new)).await.unwrap();
    assert_reason(
        &sessions.get(read).await.expect_err("ended"),
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
}

async fn a_fence_on_a_semaphore_or_a_bad_fence_is_refused(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    let mut locks = service.locks();
    let grant = locks
        .acquire(AcquireRequest {
            permits: 3,
            ..acquire("{pool}", 60_000, 0)
        })
        .await
        .unwrap()
        .into_inner();
    let pooled = Fence {
        lock: "{pool}".to_owned(),
        fencing_token: grant.fencing_token,
    };
    let status = cache
        .set(set("{pool}:a", b"x", &pooled))
        .await
        .expect_err("a semaphore");
    assert_reason(&status, Code::FailedPrecondition, "PERMITS_MISMATCH");

    let unnamed = Fence {
        lock: String::new(),
        fencing_token: 1,
    };
    assert_invalid(cache.set(set("k", b"x", &unnamed)).await.unwrap_err(), "fence.lock");
    let zero = Fence {
        lock: "job".to_owned(),
        fencing_token: 0,
    };
    assert_invalid(
        cache.set(set("k", b"x", &zero)).await.unwrap_err(),
        "fence.fencing_token",
    );
    let filling = SetRequest {
        lease_token: "a-lease".to_owned(),
        ..set("k", b"x", &pooled)
    };
    assert_invalid(cache.set(filling).await.unwrap_err(), "fence");
}

async fn a_fenced_write_outside_the_locks_slot_is_refused_on_a_cluster_naming_the_fix(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut cache = service.cache();
    let mut locks = service.locks();
    let grant = locks
        .acquire(acquire("{order:42}", 60_000, 0))
        .await
        .unwrap()
        .into_inner();
    let fence = Fence {
        lock: "{order:42}".to_owned(),
        fencing_token: grant.fencing_token,
    };
    let result = cache.set(set("{order:43}:total", b"1", &fence)).await;
    match backend.mode {
        Mode::Cluster => {
            let status = result.expect_err("another slot");
            assert_invalid(status.clone(), "fence.lock");
            assert!(status.message().contains("one hash tag"), "{}", status.message());
        }
        // One node holds everything: any names work.
        Mode::Standalone | Mode::Sentinel => assert!(result.unwrap().into_inner().stored),
    }
}

in_every_mode!(
    a_holder_granted_over_is_fenced_out_of_every_cache_write_while_the_new_holder_writes,
    a_holder_granted_over_is_fenced_out_of_session_writes_while_the_new_holder_writes,
    a_fence_on_a_semaphore_or_a_bad_fence_is_refused,
    a_fenced_write_outside_the_locks_slot_is_refused_on_a_cluster_naming_the_fix,
);

/// A fenced write whose answer is lost after it applied, and whose lock is
/// granted again meanwhile, is never sent again (the resend would be refused):
/// the caller hears MAY_HAVE_APPLIED, not FENCED_OUT "nothing changed".
#[tokio::test]
async fn a_fenced_write_whose_answer_is_lost_may_have_applied_and_is_not_sent_again() {
    let redis = TestRedis::start().await;
    let link = FaultyLink::start(redis.port()).await;
    let through_link = TestService::start(&link.url, &["--health-interval", "60s"]).await;
    let direct = TestService::start(&redis.url(), &[]).await;
    let old = direct
        .locks()
        .acquire(acquire("{o}", 60_000, 0))
        .await
        .unwrap()
        .into_inner();
    let fence = Fence {
        lock: "{o}".to_owned(),
        fencing_token: old.fencing_token,
    };

    // Connected, and the scripts loaded, before the link starts holding replies.
    let mut cache = through_link.cache();
    assert_eq!(value(&mut cache, "{o}:v").await, None);
    link.hold_replies(true);
    let write = tokio::spawn(async move { cache.set(set("{o}:v", b"old-holder", &fence)).await });
    // Synchronised on Redis itself: the write ran (its answer is what is held).
    let mut reader = direct.cache();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while value(&mut reader, "{o}:v").await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the fenced write reaches Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The write ran in Redis; its answer is held. The lock goes to another.
    let mut locks = direct.locks();
    locks
        .release(ReleaseRequest {
            name: "{o}".to_owned(),
            token: old.token,
        })
        .await
        .unwrap();
    assert!(
        locks
            .acquire(acquire("{o}", 60_000, 0))
            .await
            .unwrap()
            .into_inner()
            .acquired
    );
    link.cut().await;

    let status = write.await.unwrap().expect_err("the answer was lost");
    assert_reason(&status, Code::DeadlineExceeded, "MAY_HAVE_APPLIED");
    let mut cache = direct.cache();
    assert_eq!(value(&mut cache, "{o}:v").await.as_deref(), Some(&b"old-holder"[..]));
}
