//! Trust boundaries that hold: certificate identities compared as names,
//! revocation that reaches open streams and waits, an auth file that cannot be
//! emptied by accident, read-only that means read-only, and write budgets that
//! keep one client from filling a shared Redis.

mod common;

use cachelock::pb::{
    cache::{SetEntry, SetManyRequest, cache_service_client::CacheServiceClient},
    lock::{
        AcquireRequest, DescribeRequest, HoldRequest, hold_response::Event as HoldEvent,
        lock_service_client::LockServiceClient,
    },
    pubsub::{SubscribeRequest, pub_sub_service_client::PubSubServiceClient, subscribe_response::Event as PubSubEvent},
    session::{CreateRequest, GetRequest as SessionGet, session_service_client::SessionServiceClient},
};
use common::requests::{self, get, set};
use common::{
    Bearer, CapturedLogs, PATIENCE, TestAuthFile, TestCa, TestRedis, TestService, assert_reason, auth_client,
    eventually, millis, tls_channel,
};
use rcgen::{DnType, SanType};
use tonic::{Code, service::interceptor::InterceptedService, transport::Channel};

type Authed = InterceptedService<Channel, Bearer>;

fn cache(service: &TestService, token: &str) -> CacheServiceClient<Authed> {
    CacheServiceClient::with_interceptor(service.channel(), Bearer::new(Some(token)))
}

fn locks(service: &TestService, token: &str) -> LockServiceClient<Authed> {
    LockServiceClient::with_interceptor(service.channel(), Bearer::new(Some(token)))
}

async fn with_auth_file(text: &str) -> (TestRedis, TestAuthFile, TestService) {
    let redis = TestRedis::start().await;
    let file = TestAuthFile::new(text);
    let service = TestService::start(&redis.url(), &["--auth-file", &file.path()]).await;
    (redis, file, service)
}

// --- Certificates -----------------------------------------------------------------

/// A TLS service requiring client certificates from `authority`, with `auth` as its auth file.
async fn mtls_service(authority: &TestCa, auth: &TestAuthFile) -> (TestRedis, TestService) {
    let (cert, key) = authority.issue("server", "localhost", &["localhost"]);
    let redis = TestRedis::start().await;
    let path = auth.path();
    let args = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-client-ca",
        authority.ca_file.as_str(),
        "--auth-file",
        path.as_str(),
    ];
    let service = TestService::start(&redis.url(), &args).await;
    (redis, service)
}

/// What the service answers a client presenting the certificate `file` of `authority`.
async fn answer(service: &TestService, authority: &TestCa, file: (String, String)) -> Result<(), Code> {
    let channel = tls_channel(service.addr, authority.certificate(), Some((&file.0, &file.1)))
        .await
        .expect("the handshake succeeds: the CA signed it");
    CacheServiceClient::new(channel)
        .get(get("k"))
        .await
        .map(|_| ())
        .map_err(|status| status.code())
}

#[tokio::test]
async fn a_subject_is_matched_as_a_name_and_an_alternative_name_by_its_type() {
    let authority = TestCa::new("clients CA");
    let auth = TestAuthFile::new(
        "[[client]]\nname = \"billing\"\nsubject = \"CN=billing,O=Acme\"\ntenant = \"bills\"\nallow = [\"cache\"]\n\
         [[client]]\nname = \"ops\"\nsan = \"dns:ops.internal\"\ntenant = \"ops\"\nallow = [\"cache\"]\n",
    );
    let (_redis, service) = mtls_service(&authority, &auth).await;
    let issue =
        |file: &str, subject: &[(DnType, &str)], sans: Vec<SanType>| authority.issue_identity(file, subject, sans);

    let genuine = issue(
        "genuine",
        &[(DnType::CommonName, "billing"), (DnType::OrganizationName, "Acme")],
        vec![],
    );
    assert_eq!(answer(&service, &authority, genuine).await, Ok(()));
    let in_certificate_order = issue(
        "ordered",
        &[(DnType::OrganizationName, "Acme"), (DnType::CommonName, "billing")],
        vec![],
    );
    assert_eq!(answer(&service, &authority, in_certificate_order).await, Ok(()));
    // One common name that reads like two RDNs is one RDN: not billing.
    let forged = issue("forged", &[(DnType::CommonName, "billing,O=Acme")], vec![]);
    assert_eq!(answer(&service, &authority, forged).await, Err(Code::Unauthenticated));

    let dns = SanType::DnsName("ops.internal".try_into().unwrap());
    assert_eq!(
        answer(
            &service,
            &authority,
            issue("ops", &[(DnType::CommonName, "x")], vec![dns])
        )
        .await,
        Ok(())
    );
    // The same text as an e-mail or URI name is not the DNS name the rule names.
    let email = SanType::Rfc822Name("ops.internal".try_into().unwrap());
    let uri = SanType::URI("ops.internal".try_into().unwrap());
    let pretender = issue("pretender", &[(DnType::CommonName, "y")], vec![email, uri]);
    assert_eq!(
        answer(&service, &authority, pretender).await,
        Err(Code::Unauthenticated)
    );
}

#[tokio::test]
async fn a_certificate_that_names_two_clients_names_none() {
    let authority = TestCa::new("clients CA");
    let auth = TestAuthFile::new(
        "[[client]]\nname = \"billing\"\nsubject = \"CN=billing\"\ntenant = \"bills\"\nallow = [\"cache\"]\n\
         [[client]]\nname = \"ops\"\nsan = \"dns:billing.internal\"\ntenant = \"ops\"\nallow = [\"cache\"]\n",
    );
    let (_redis, service) = mtls_service(&authority, &auth).await;
    let dns = SanType::DnsName("billing.internal".try_into().unwrap());
    let both = authority.issue_identity("both", &[(DnType::CommonName, "billing")], vec![dns]);
    assert_eq!(answer(&service, &authority, both).await, Err(Code::Unauthenticated));
    let one = authority.issue_identity("one", &[(DnType::CommonName, "billing")], vec![]);
    assert_eq!(answer(&service, &authority, one).await, Ok(()));
}

// --- Revocation ---------------------------------------------------------------------

fn hold(name: &str) -> HoldRequest {
    HoldRequest {
        name: name.to_owned(),
        ttl: Some(millis(3_000)),
        wait_timeout: None,
        owner: "revoked".to_owned(),
        permits: 0,
        safety_margin: None,
    }
}

fn acquire(name: &str, wait_ms: i64) -> AcquireRequest {
    requests::acquire(name, 30_000, wait_ms)
}

fn crew(worker_allow: &[&str]) -> String {
    auth_client("admin", "admin-token", "shop", &["lock", "pubsub"], "")
        + &auth_client("worker", "worker-token", "shop", worker_allow, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_client_ends_its_streams_and_waits_and_frees_its_holds() {
    let (_redis, file, service) = with_auth_file(&crew(&["lock", "pubsub"])).await;
    let mut worker = locks(&service, "worker-token");
    let mut held = worker.hold(hold("batch")).await.unwrap().into_inner();
    let first = held.message().await.unwrap().and_then(|event| event.event);
    assert!(matches!(first, Some(HoldEvent::Acquired(_))), "{first:?}");
    let mut subscriber = PubSubServiceClient::with_interceptor(service.channel(), Bearer::new(Some("worker-token")));
    let request = SubscribeRequest {
        topics: vec!["orders".to_owned()],
        patterns: Vec::new(),
    };
    let mut messages = subscriber.subscribe(request).await.unwrap().into_inner();
    let live = messages.message().await.unwrap().and_then(|event| event.event);
    assert!(matches!(live, Some(PubSubEvent::Subscribed(_))), "{live:?}");
    let mut admin = locks(&service, "admin-token");
    assert!(admin.acquire(acquire("queue", 0)).await.unwrap().into_inner().acquired);
    let waiting = tokio::spawn(async move { worker.acquire(acquire("queue", 30_000)).await });

    file.write(&auth_client("admin", "admin-token", "shop", &["lock", "pubsub"], ""));
    let lost = loop {
        // Renewals may come first.
        let event = tokio::time::timeout(PATIENCE, held.message()).await.unwrap().unwrap();
        match event.and_then(|event| event.event) {
            Some(HoldEvent::Renewed(_)) => {}
            other => break other,
        }
    };
    assert!(
        matches!(lost, Some(HoldEvent::Lost(lost)) if lost.reason == "REVOKED"),
        "the Hold is told it lost the lock"
    );
    let ended = tokio::time::timeout(PATIENCE, held.message()).await.unwrap();
    assert_reason(&ended.unwrap_err(), Code::Unauthenticated, "UNAUTHENTICATED");
    let cut = tokio::time::timeout(PATIENCE, messages.message()).await.unwrap();
    assert_reason(&cut.unwrap_err(), Code::Unauthenticated, "UNAUTHENTICATED");
    let refused = tokio::time::timeout(PATIENCE, waiting).await.unwrap().unwrap();
    assert_reason(&refused.unwrap_err(), Code::Unauthenticated, "UNAUTHENTICATED");
    eventually("the revoked Hold's lock is released", async || {
        let seen = admin
            .describe(DescribeRequest {
                name: "batch".to_owned(),
            })
            .await;
        seen.is_ok_and(|seen| !seen.into_inner().held)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_taken_back_ends_the_streams_that_need_it_and_only_those() {
    let (_redis, file, service) = with_auth_file(&crew(&["lock", "pubsub"])).await;
    let mut held = locks(&service, "worker-token")
        .hold(hold("batch"))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        held.message().await.unwrap().and_then(|event| event.event),
        Some(HoldEvent::Acquired(_))
    ));
    let mut subscriber = PubSubServiceClient::with_interceptor(service.channel(), Bearer::new(Some("worker-token")));
    let request = SubscribeRequest {
        topics: vec!["orders".to_owned()],
        patterns: Vec::new(),
    };
    let mut messages = subscriber.subscribe(request).await.unwrap().into_inner();
    assert!(messages.message().await.unwrap().is_some());

    // Locks become read-only (Describe), Pub/Sub becomes Subscribe only.
    file.write(&crew(&["lock:read", "pubsub:read"]));
    let mut events = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(PATIENCE, held.message()).await.unwrap() {
        events.push(event.event);
    }
    assert!(
        matches!(events.last(), Some(Some(HoldEvent::Lost(lost))) if lost.reason == "REVOKED"),
        "{events:?}"
    );
    let mut publisher = PubSubServiceClient::with_interceptor(service.channel(), Bearer::new(Some("admin-token")));
    let publish = cachelock::pb::pubsub::PublishRequest {
        topic: "orders".to_owned(),
        payload: b"42".to_vec(),
    };
    publisher.publish(publish).await.unwrap();
    let message = tokio::time::timeout(PATIENCE, messages.message())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(message.and_then(|event| event.event), Some(PubSubEvent::Message(_))),
        "a Subscribe, which only reads, goes on"
    );
}

// --- The auth file ----------------------------------------------------------------

#[tokio::test]
async fn an_auth_file_that_vanishes_or_empties_keeps_its_clients_and_says_so() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::WARN);
    let (_redis, file, service) = with_auth_file(&crew(&["cache"])).await;
    cache(&service, "worker-token").get(get("k")).await.unwrap();

    std::fs::remove_file(file.path()).unwrap();
    logs.wait_for("cannot be read").await;
    cache(&service, "worker-token")
        .get(get("k"))
        .await
        .expect("the clients stay");

    // A writer truncating the file in place, before it writes the new text.
    std::fs::write(file.path(), "").unwrap();
    logs.wait_for("is empty").await;
    cache(&service, "worker-token")
        .get(get("k"))
        .await
        .expect("the clients stay");

    file.write(&auth_client("admin", "admin-token", "shop", &["cache"], ""));
    eventually("the fixed file takes effect", async || {
        cache(&service, "worker-token").get(get("k")).await.is_err()
    })
    .await;
}

// --- Permissions ----------------------------------------------------------------------

/// An interceptor sending `authorization` exactly as given.
fn raw_authorization(value: &'static str) -> impl tonic::service::Interceptor + Clone {
    move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("an ASCII header"));
        Ok(request)
    }
}

#[tokio::test]
async fn a_read_only_client_cannot_slide_a_session_and_the_scheme_has_no_case() {
    let text = auth_client("app", "app-token", "shop", &["session", "cache"], "")
        + &auth_client("viewer", "viewer-token", "shop", &["session:read"], "");
    let (_redis, _file, service) = with_auth_file(&text).await;
    let create = CreateRequest {
        user_id: "ann".to_owned(),
        ..CreateRequest::default()
    };
    let mut app = SessionServiceClient::with_interceptor(service.channel(), Bearer::new(Some("app-token")));
    let id = app.create(create).await.unwrap().into_inner().session.unwrap().id;
    let mut viewer = SessionServiceClient::with_interceptor(service.channel(), Bearer::new(Some("viewer-token")));
    let look = |touch| SessionGet { id: id.clone(), touch };
    viewer.get(look(false)).await.expect("reading is allowed");
    let touched = viewer.get(look(true)).await.unwrap_err();
    assert_reason(&touched, Code::PermissionDenied, "PERMISSION_DENIED");
    assert!(touched.message().contains("touch"), "{touched:?}");

    for header in ["bearer app-token", "BEARER app-token", "Bearer   app-token"] {
        let mut client = CacheServiceClient::with_interceptor(service.channel(), raw_authorization(header));
        client
            .get(get("k"))
            .await
            .unwrap_or_else(|status| panic!("{header:?}: {status:?}"));
    }
    // Two authorization headers are one too many: which would count?
    let twice = |mut request: tonic::Request<()>| {
        for token in ["Bearer app-token", "Bearer viewer-token"] {
            request
                .metadata_mut()
                .append("authorization", token.parse().expect("an ASCII header"));
        }
        Ok(request)
    };
    let refused = CacheServiceClient::with_interceptor(service.channel(), twice)
        .get(get("k"))
        .await
        .unwrap_err();
    assert_reason(&refused, Code::Unauthenticated, "UNAUTHENTICATED");
}

// --- Write budgets --------------------------------------------------------------------

#[tokio::test]
async fn a_client_over_its_write_budget_is_refused_and_others_write_on() {
    let text = auth_client(
        "bulk",
        "bulk-token",
        "bulk",
        &["cache"],
        "max_write_bytes_per_second = 20000",
    ) + &auth_client("app", "app-token", "shop", &["cache"], "");
    let (_redis, _file, service) = with_auth_file(&text).await;
    let mut bulk = cache(&service, "bulk-token");
    let entries: Vec<SetEntry> = (0..1000)
        .map(|index| SetEntry {
            key: format!("k{index}"),
            value: vec![b'v'; 100],
            ttl: Some(millis(60_000)),
        })
        .collect();
    let too_big = bulk
        .set_many(SetManyRequest { entries, fence: None })
        .await
        .expect_err("a write larger than a second's budget");
    assert_eq!(too_big.code(), Code::ResourceExhausted);
    assert!(too_big.message().contains("max_write_bytes_per_second"), "{too_big:?}");

    let mut refused = 0;
    for index in 0..40 {
        match bulk.set(set(&format!("v{index}"), &[b'x'; 1_000])).await {
            Ok(_) => {}
            Err(status) => {
                assert_reason(&status, Code::ResourceExhausted, "WRITE_BUDGET_EXCEEDED");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "40 KB at once is over 20 KB per second");
    cache(&service, "app-token")
        .set(set("mine", &[b'y'; 10_000]))
        .await
        .expect("another client writes on");
}

#[tokio::test]
async fn refused_callers_are_counted_by_why() {
    let text = auth_client("reader", "reader-token", "shop", &["cache:read"], "");
    let (_redis, _file, service) = with_auth_file(&text).await;
    let refused = |reason: &str| format!("cachelock_requests_refused_total{{reason=\"{reason}\"}}");

    let unknown = cache(&service, "no-such-token").get(get("k")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    let read_only = cache(&service, "reader-token").set(set("k", b"v")).await.unwrap_err();
    assert_eq!(read_only.code(), Code::PermissionDenied);

    assert_eq!(service.metric(&refused("unauthenticated")).await, 1.0);
    assert_eq!(service.metric(&refused("permission_denied")).await, 1.0);
}
