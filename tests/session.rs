//! SessionService against a real redis-server: lifecycle, sliding and absolute
//! expiry, the per-user index, optimistic concurrency, ids, bad inputs, outages.

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use cachelock::pb::session::{
    ClientMetadata, CreateRequest, DeleteRequest, DeleteUserSessionsRequest, GetRequest, ListUserSessionsRequest,
    RotateRequest, Session, TouchRequest, UpdateRequest, session_service_client::SessionServiceClient,
};
use common::{Backend, PATIENCE, TestRedis, TestService, assert_invalid, assert_reason, millis};
use tonic::{Code, transport::Channel};

fn sessions(service: &TestService) -> SessionServiceClient<Channel> {
    SessionServiceClient::new(service.channel())
}

fn create(user: &str, idle_ms: Option<i64>, absolute_ms: Option<i64>) -> CreateRequest {
    CreateRequest {
        user_id: user.to_owned(),
        attributes: HashMap::from([("role".to_owned(), "reader".to_owned())]),
        idle_timeout: idle_ms.map(millis),
        absolute_timeout: absolute_ms.map(millis),
        client: Some(ClientMetadata {
            device_label: "Firefox on Linux".to_owned(),
            ip: "203.0.113.7".to_owned(),
            user_agent: "Mozilla/5.0".to_owned(),
        }),
    }
}

async fn start(client: &mut SessionServiceClient<Channel>, request: CreateRequest) -> Session {
    client.create(request).await.unwrap().into_inner().session.unwrap()
}

async fn get(client: &mut SessionServiceClient<Channel>, id: &str, touch: bool) -> Result<Session, tonic::Status> {
    client
        .get(GetRequest {
            id: id.to_owned(),
            touch,
        })
        .await
        .map(|response| response.into_inner().session.unwrap())
}

fn system_time(timestamp: &prost_types::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(timestamp.seconds as u64, timestamp.nanos as u32)
}

/// Sleeps until `instant` (by this machine's clock, which Redis shares).
async fn sleep_until(instant: SystemTime) {
    let wait = instant.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait).await;
}

/// Sleeps until just after `timestamp` (by this machine's clock, which Redis shares).
async fn sleep_past(timestamp: &prost_types::Timestamp) {
    let wait = system_time(timestamp)
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(60)).await;
}

async fn a_session_lives_from_create_through_rotate_to_delete(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = sessions(&service);

    let created = start(&mut client, create("alice", None, None)).await;
    assert_eq!(created.user_id, "alice");
    assert_eq!(created.version, 1);
    assert_eq!(created.attributes["role"], "reader");
    assert_eq!(created.client.as_ref().unwrap().device_label, "Firefox on Linux");
    assert_eq!(
        created.idle_timeout,
        Some(millis(30 * 60 * 1000)),
        "the default idle timeout"
    );
    let absolute = system_time(created.absolute_expires_at.as_ref().unwrap());
    let created_at = system_time(created.created_at.as_ref().unwrap());
    assert_eq!(
        absolute.duration_since(created_at).unwrap(),
        Duration::from_secs(24 * 3600)
    );

    let read = get(&mut client, &created.id, false).await.unwrap();
    assert_eq!(read, created, "a Get without touch changes nothing");

    let updated = client
        .update(UpdateRequest {
            id: created.id.clone(),
            set: HashMap::from([("cart".to_owned(), "3 items".to_owned())]),
            remove: vec!["role".to_owned()],
            expected_version: Some(1),
            fence: None,
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(
        updated.attributes,
        HashMap::from([("cart".to_owned(), "3 items".to_owned())])
    );

    tokio::time::sleep(Duration::from_millis(20)).await;
    let touched = client
        .touch(TouchRequest { id: created.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(system_time(touched.expires_at.as_ref().unwrap()) > system_time(created.expires_at.as_ref().unwrap()));

    let rotated = client
        .rotate(RotateRequest { id: created.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_ne!(rotated.id, created.id);
    assert_eq!(rotated.attributes, updated.attributes);
    assert_eq!(rotated.version, 2);
    assert_eq!(
        rotated.absolute_expires_at, created.absolute_expires_at,
        "rotation keeps the lifetime"
    );
    assert_reason(
        &get(&mut client, &created.id, false).await.unwrap_err(),
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    assert_eq!(
        get(&mut client, &rotated.id, true).await.unwrap().attributes,
        updated.attributes
    );

    let listed = client
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "alice".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(
        listed.iter().map(|s| s.handle.as_str()).collect::<Vec<_>>(),
        vec![rotated.handle.as_str()],
        "listed by handle, which rotation keeps"
    );
    assert_eq!(rotated.handle, created.handle);

    client
        .delete(DeleteRequest {
            id: rotated.id.clone(),
            fence: None,
        })
        .await
        .unwrap();
    assert_reason(
        &get(&mut client, &rotated.id, false).await.unwrap_err(),
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    let again = client
        .delete(DeleteRequest {
            id: rotated.id.clone(),
            fence: None,
        })
        .await
        .unwrap_err();
    assert_reason(&again, Code::NotFound, "SESSION_NOT_FOUND");
}

async fn an_untouched_session_expires_after_its_idle_timeout(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = sessions(&service);
    let session = start(&mut client, create("bob", Some(300), Some(60_000))).await;

    sleep_past(session.expires_at.as_ref().unwrap()).await;
    assert_reason(
        &get(&mut client, &session.id, true).await.unwrap_err(),
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
}

async fn touches_slide_the_idle_expiry(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = sessions(&service);
    // Seconds of slack everywhere: a loaded machine may stall a step for a while.
    let session = start(&mut client, create("carol", Some(4_000), Some(60_000))).await;
    let first_idle_expiry = system_time(session.expires_at.as_ref().unwrap());

    let mut last_expiry = first_idle_expiry;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let touched = get(&mut client, &session.id, true).await.expect("alive while touched");
        let expiry = system_time(touched.expires_at.as_ref().unwrap());
        assert!(expiry > last_expiry, "each touch moves the expiry later");
        last_expiry = expiry;
    }
    // Past its first idle expiry, it lives on because of the touches.
    sleep_until(first_idle_expiry).await;
    get(&mut client, &session.id, false)
        .await
        .expect("alive past the first idle expiry");
}

async fn touches_never_slide_past_the_absolute_expiry(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = sessions(&service);
    let session = start(&mut client, create("carol", Some(4_000), Some(5_000))).await;
    let absolute = system_time(session.absolute_expires_at.as_ref().unwrap());

    // Any touch more than a second in: idle expiry (touch + 4 s) would pass the absolute one.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let touched = get(&mut client, &session.id, true)
        .await
        .expect("alive within its lifetime");
    assert_eq!(system_time(touched.expires_at.as_ref().unwrap()), absolute);

    sleep_past(session.absolute_expires_at.as_ref().unwrap()).await;
    assert_reason(
        &get(&mut client, &session.id, true).await.unwrap_err(),
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
}

async fn listing_shows_exactly_the_live_sessions_newest_first(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = sessions(&service);

    let short = start(&mut client, create("dave", Some(200), Some(200))).await;
    let idle_short = start(&mut client, create("dave", Some(200), Some(60_000))).await;
    let deleted = start(&mut client, create("dave", None, None)).await;
    let mut live = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        live.push(start(&mut client, create("dave", None, None)).await);
    }
    start(&mut client, create("erin", None, None)).await;
    client
        .delete(DeleteRequest {
            id: deleted.id.clone(),
            fence: None,
        })
        .await
        .unwrap();
    sleep_past(short.expires_at.as_ref().unwrap()).await;
    sleep_past(idle_short.expires_at.as_ref().unwrap()).await;

    let list = |client: &mut SessionServiceClient<Channel>| {
        let mut client = client.clone();
        async move {
            client
                .list_user_sessions(ListUserSessionsRequest {
                    user_id: "dave".to_owned(),
                })
                .await
                .unwrap()
                .into_inner()
                .sessions
        }
    };
    let listed = list(&mut client).await;
    let newest_first: Vec<&str> = live.iter().rev().map(|s| s.handle.as_str()).collect();
    assert_eq!(
        listed.iter().map(|s| s.handle.as_str()).collect::<Vec<_>>(),
        newest_first
    );
    assert!(listed.iter().all(|s| s.user_id == "dave"));

    // Log out everywhere else: only the kept session remains.
    let keep = &live[1];
    let ended = client
        .delete_user_sessions(DeleteUserSessionsRequest {
            user_id: "dave".to_owned(),
            except_id: keep.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.deleted, 2);
    let listed = list(&mut client).await;
    assert_eq!(
        listed.iter().map(|s| s.handle.as_str()).collect::<Vec<_>>(),
        vec![keep.handle.as_str()]
    );
    assert_reason(
        &get(&mut client, &live[0].id, false).await.unwrap_err(),
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );

    // Another user's sessions were never touched.
    let erin = client
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "erin".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(erin.len(), 1);

    // Log out everywhere.
    let all = client
        .delete_user_sessions(DeleteUserSessionsRequest {
            user_id: "dave".to_owned(),
            except_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.deleted, 1);
    assert!(list(&mut client).await.is_empty());
}

async fn a_user_over_the_session_limit_loses_the_least_recently_used_sessions(backend: Backend) {
    let service = backend.service(&["--session-max-per-user", "3"]).await;
    let mut client = sessions(&service);
    let mut created = Vec::new();
    for _ in 0..3 {
        let response = client.create(create("fay", None, None)).await.unwrap().into_inner();
        assert_eq!(response.ended_sessions, 0);
        created.push(response.session.unwrap());
    }
    // The oldest session was used recently; the second one is now the least recently used.
    tokio::time::sleep(Duration::from_millis(5)).await;
    get(&mut client, &created[0].id, true).await.unwrap();

    let fourth = client.create(create("fay", None, None)).await.unwrap().into_inner();
    assert_eq!(fourth.ended_sessions, 1);
    assert_reason(
        &get(&mut client, &created[1].id, false).await.unwrap_err(),
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    for kept in [&created[0], &created[2], fourth.session.as_ref().unwrap()] {
        get(&mut client, &kept.id, false).await.expect("kept");
    }
    let listed = client
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "fay".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 3);
}

async fn logging_out_everywhere_ends_thousands_of_sessions_and_leaves_no_index_entry(backend: Backend) {
    // Above ~8,000 entries a single Lua unpack() fails: this must work in batches.
    let service = backend.service(&["--session-max-per-user", "10000"]).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut client = sessions(&service);
            tokio::spawn(async move {
                for _ in 0..1_125 {
                    let mut request = create("gus", None, None);
                    request.attributes.clear();
                    request.client = None;
                    client.create(request).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut client = sessions(&service);
    let ended = client
        .delete_user_sessions(DeleteUserSessionsRequest {
            user_id: "gus".to_owned(),
            except_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.deleted, 9_000);
    let left = backend.keys(&format!("{}:*:session*", backend.prefix())).await;
    assert!(left.is_empty(), "{} keys left", left.len());
}

async fn a_malformed_except_id_ends_nothing(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = sessions(&service);
    let mine = start(&mut client, create("hal", None, None)).await;
    let theirs = start(&mut client, create("ida", None, None)).await;
    for except in ["not-an-id", &theirs.id, &mine.id[..10]] {
        assert_invalid(
            client
                .delete_user_sessions(DeleteUserSessionsRequest {
                    user_id: "hal".to_owned(),
                    except_id: except.to_owned(),
                })
                .await
                .unwrap_err(),
            "except_id",
        );
    }
    get(&mut client, &mine.id, false).await.expect("nothing was ended");
}

async fn of_concurrent_updates_expecting_one_version_exactly_one_wins(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = sessions(&service);
    let session = start(&mut client, create("frank", None, None)).await;

    let updates: Vec<_> = (0..20)
        .map(|i| {
            let mut client = sessions(&service);
            let id = session.id.clone();
            tokio::spawn(async move {
                client
                    .update(UpdateRequest {
                        id,
                        set: HashMap::from([("writer".to_owned(), i.to_string())]),
                        remove: vec![],
                        expected_version: Some(1),
                        fence: None,
                    })
                    .await
            })
        })
        .collect();
    let mut won = Vec::new();
    for update in updates {
        match update.await.unwrap() {
            Ok(response) => won.push(response.into_inner().session.unwrap()),
            Err(status) => assert_reason(&status, Code::Aborted, "VERSION_CONFLICT"),
        }
    }
    assert_eq!(won.len(), 1);
    let now = get(&mut client, &session.id, false).await.unwrap();
    assert_eq!(now.version, 2);
    assert_eq!(now.attributes["writer"], won[0].attributes["writer"]);
}

async fn ten_thousand_ids_are_distinct_and_carry_128_random_bits(backend: Backend) {
    let service = backend.service(&[]).await;
    let tasks: Vec<_> = (0..8)
        .map(|worker| {
            let mut client = sessions(&service);
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(1250);
                for i in 0..1250 {
                    let mut request = create(&format!("user-{worker}-{}", i % 50), None, None);
                    request.attributes.clear();
                    ids.push(start(&mut client, request).await.id);
                }
                ids
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            let (random, tag) = id.split_once('.').expect("random part and routing tag");
            assert_eq!(URL_SAFE_NO_PAD.decode(random).expect("URL-safe base64").len(), 16);
            assert_eq!(tag.len(), 4);
            assert!(ids.insert(id));
        }
    }
    assert_eq!(ids.len(), 10_000);
}

async fn bad_inputs_are_refused_naming_the_field(backend: Backend) {
    let service = backend
        .service(&[
            "--session-max-attributes",
            "3",
            "--session-max-attribute-bytes",
            "10",
            "--session-max-lifetime",
            "1h",
            "--max-key-bytes",
            "16",
        ])
        .await;
    let mut client = sessions(&service);
    let bad = |change: &dyn Fn(&mut CreateRequest)| {
        let mut request = create("gina", None, Some(3_600_000));
        change(&mut request);
        request
    };
    let cases: Vec<(CreateRequest, &str)> = vec![
        (bad(&|r| r.user_id.clear()), "user_id"),
        (bad(&|r| r.user_id = "u".repeat(17)), "user_id"),
        (
            bad(&|r| r.attributes = (0..4).map(|i| (i.to_string(), String::new())).collect()),
            "attributes",
        ),
        (
            bad(&|r| r.attributes = HashMap::from([("k".to_owned(), "v".repeat(11))])),
            "attributes",
        ),
        (
            bad(&|r| r.attributes = HashMap::from([(String::new(), "v".to_owned())])),
            "attributes",
        ),
        (bad(&|r| r.idle_timeout = Some(millis(0))), "idle_timeout"),
        (bad(&|r| r.idle_timeout = Some(millis(-1_000))), "idle_timeout"),
        (bad(&|r| r.idle_timeout = Some(millis(3_600_001))), "idle_timeout"),
        (
            bad(&|r| r.absolute_timeout = Some(millis(3_600_001))),
            "absolute_timeout",
        ),
        (
            bad(&|r| {
                r.idle_timeout = Some(millis(60_000));
                r.absolute_timeout = Some(millis(59_000));
            }),
            "absolute_timeout",
        ),
        (
            bad(&|r| r.client.as_mut().unwrap().user_agent = "a".repeat(513)),
            "client.user_agent",
        ),
    ];
    for (request, field) in cases {
        assert_invalid(client.create(request).await.unwrap_err(), field);
    }

    let session = start(&mut client, create("gina", None, Some(3_600_000))).await;
    assert_invalid(get(&mut client, "", false).await.unwrap_err(), "id");
    assert_reason(
        &get(&mut client, "not-a-session-id", false).await.unwrap_err(),
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    let update = |set: &[(&str, &str)], remove: &[&str]| UpdateRequest {
        id: session.id.clone(),
        set: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        remove: remove.iter().map(|name| name.to_string()).collect(),
        expected_version: None,
        fence: None,
    };
    assert_invalid(
        client.update(update(&[("a", "1")], &["a"])).await.unwrap_err(),
        "remove[0]",
    );
    assert_invalid(
        client.update(update(&[("a", "12345678901")], &[])).await.unwrap_err(),
        "set",
    );
    // role + 3 new ones would be 4, above the limit of 3: refused whole.
    assert_invalid(
        client
            .update(update(&[("a", "1"), ("b", "2"), ("c", "3")], &[]))
            .await
            .unwrap_err(),
        "set",
    );
    let unchanged = get(&mut client, &session.id, false).await.unwrap();
    assert_eq!(unchanged.version, 1);
    assert_eq!(unchanged.attributes.len(), 1);
    // Removing one in the same update makes room.
    let fits = client
        .update(update(&[("a", "1"), ("b", "2"), ("c", "3")], &["role"]))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(fits.attributes.len(), 3);
}

#[tokio::test]
async fn redis_down_gives_unavailable_within_the_deadline() {
    let port = TestRedis::free_port();
    let service = TestService::start(&format!("redis://127.0.0.1:{port}"), &["--operation-timeout", "300ms"]).await;
    let mut client = sessions(&service);

    let status = tokio::time::timeout(PATIENCE, get(&mut client, "AAAAAAAAAAAAAAAAAAAAAA.0000", false))
        .await
        .expect("returns")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let listed = tokio::time::timeout(
        PATIENCE,
        client.list_user_sessions(ListUserSessionsRequest {
            user_id: "hank".to_owned(),
        }),
    )
    .await
    .expect("returns")
    .unwrap_err();
    assert_eq!(listed.code(), Code::Unavailable, "{listed:?}");
    let created = tokio::time::timeout(PATIENCE, client.create(create("hank", None, None)))
        .await
        .expect("returns")
        .unwrap_err();
    assert!(
        matches!(created.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{created:?}"
    );
}

in_every_mode!(
    ten_thousand_ids_are_distinct_and_carry_128_random_bits,
    of_concurrent_updates_expecting_one_version_exactly_one_wins,
    logging_out_everywhere_ends_thousands_of_sessions_and_leaves_no_index_entry,
    a_session_lives_from_create_through_rotate_to_delete,
    an_untouched_session_expires_after_its_idle_timeout,
    touches_slide_the_idle_expiry,
    touches_never_slide_past_the_absolute_expiry,
    listing_shows_exactly_the_live_sessions_newest_first,
    a_user_over_the_session_limit_loses_the_least_recently_used_sessions,
    a_malformed_except_id_ends_nothing,
    bad_inputs_are_refused_naming_the_field,
);
