//! Nobody is trusted by default: TLS on the listener (and mTLS), bearer tokens
//! checked against the auth file, permissions per service, tenants kept apart,
//! per-client request budgets, secrets that never reach a listing or a log.

mod common;

use std::{collections::HashMap, time::Duration};

use cachelock::pb::election::{CampaignRequest, LeaderRequest, election_service_client::ElectionServiceClient};
use cachelock::pb::{
    cache::cache_service_client::CacheServiceClient,
    lock::{AcquireRequest, ReleaseRequest, lock_service_client::LockServiceClient},
    ratelimit::{CheckRequest, OutagePolicy, rate_limit_service_client::RateLimitServiceClient},
    session::{
        CreateRequest, DeleteUserSessionRequest, GetRequest as SessionGet, ListUserSessionsRequest,
        session_service_client::SessionServiceClient,
    },
};
use common::requests::{self, get, set};
use common::{
    Bearer, CapturedLogs, PATIENCE, TestAuthFile as AuthFile, TestCa, TestRedis, TestService, assert_reason,
    auth_client as client, millis, tls_channel,
};
use tonic::{Code, service::interceptor::InterceptedService, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

type Authed = InterceptedService<Channel, Bearer>;

fn acquire(name: &str, wait_ms: i64) -> AcquireRequest {
    requests::acquire(name, 30_000, wait_ms)
}

/// The standard cast: a full client of tenant shop, a read-only one, a lock-only
/// one, a full client of tenant bank, and a throttled one.
fn cast() -> String {
    [
        client(
            "shop",
            "shop-token",
            "shop",
            &["cache", "ratelimit", "lock", "session"],
            "",
        ),
        client("reader", "reader-token", "shop", &["cache:read"], ""),
        client("locker", "locker-token", "shop", &["lock", "election:read"], ""),
        client(
            "bank",
            "bank-token",
            "bank",
            &["cache", "ratelimit", "lock", "session"],
            "",
        ),
        client(
            "noisy",
            "noisy-token",
            "noisy",
            &["cache"],
            "max_requests_per_second = 5",
        ),
    ]
    .concat()
}

async fn with_auth_file(text: &str, args: &[&str]) -> (TestRedis, AuthFile, TestService) {
    let redis = TestRedis::start().await;
    let file = AuthFile::new(text);
    let path = file.path();
    let mut all = vec!["--auth-file", path.as_str()];
    all.extend_from_slice(args);
    let service = TestService::start(&redis.url(), &all).await;
    (redis, file, service)
}

fn interceptor(token: Option<&str>) -> Bearer {
    Bearer::new(token)
}

fn cache(service: &TestService, token: Option<&str>) -> CacheServiceClient<Authed> {
    CacheServiceClient::with_interceptor(service.channel(), interceptor(token))
}

fn locks(service: &TestService, token: &str) -> LockServiceClient<Authed> {
    LockServiceClient::with_interceptor(service.channel(), interceptor(Some(token)))
}

fn sessions(service: &TestService, token: &str) -> SessionServiceClient<Authed> {
    SessionServiceClient::with_interceptor(service.channel(), interceptor(Some(token)))
}

fn ratelimit(service: &TestService, token: &str) -> RateLimitServiceClient<Authed> {
    RateLimitServiceClient::with_interceptor(service.channel(), interceptor(Some(token)))
}

// --- TLS ------------------------------------------------------------------------------

async fn tls_service(authority: &TestCa, client_ca: Option<&str>) -> (TestRedis, TestService) {
    let (cert, key) = authority.issue("server", "localhost", &["localhost"]);
    let redis = TestRedis::start().await;
    let mut args = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    if let Some(ca) = client_ca {
        args.extend(["--tls-client-ca", ca]);
    }
    let service = TestService::start(&redis.url(), &args).await;
    (redis, service)
}

#[tokio::test]
async fn only_clients_that_trust_the_certificate_get_through() {
    let authority = TestCa::new("listener CA");
    let (_redis, service) = tls_service(&authority, None).await;

    let trusted = tls_channel(service.addr, authority.certificate(), None).await.unwrap();
    CacheServiceClient::new(trusted).set(set("k", b"v")).await.unwrap();

    assert!(service.cache().get(get("k")).await.is_err(), "plaintext is refused");
    let stranger = TestCa::new("another CA");
    assert!(tls_channel(service.addr, stranger.certificate(), None).await.is_err());
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_get_through() {
    let authority = TestCa::new("listener CA");
    let (_redis, service) = tls_service(&authority, Some(&authority.ca_file)).await;
    let (client_cert, client_key) = authority.issue("client", "checkout", &["checkout.internal"]);

    let anonymous = match tls_channel(service.addr, authority.certificate(), None).await {
        Err(_) => None,
        Ok(channel) => Some(CacheServiceClient::new(channel).get(get("k")).await),
    };
    assert!(
        anonymous.is_none() || anonymous.is_some_and(|result| result.is_err()),
        "no client certificate, no service"
    );
    let identified = tls_channel(service.addr, authority.certificate(), Some((&client_cert, &client_key)))
        .await
        .unwrap();
    CacheServiceClient::new(identified).set(set("k", b"v")).await.unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_and_open_connections_stay() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::INFO);
    let first = TestCa::new("first CA");
    let (cert, key) = first.issue("server", "localhost", &["localhost"]);
    let redis = TestRedis::start().await;
    let service = TestService::start(&redis.url(), &["--tls-cert", &cert, "--tls-key", &key]).await;
    let open = tls_channel(service.addr, first.certificate(), None).await.unwrap();
    let mut open = CacheServiceClient::new(open);
    open.set(set("k", b"v")).await.unwrap();

    // cert-manager writes the new pair over the old files.
    let second = TestCa::new("second CA");
    let (new_cert, new_key) = second.issue("server", "localhost", &["localhost"]);
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(channel) = tls_channel(service.addr, second.certificate(), None).await
            && CacheServiceClient::new(channel).get(get("k")).await.is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "new handshakes never used the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        open.get(get("k")).await.unwrap().into_inner().found,
        "the open connection was kept"
    );

    // A broken file is refused; the certificate in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    logs.wait_for("refused the changed TLS files").await;
    let still = tls_channel(service.addr, second.certificate(), None).await.unwrap();
    CacheServiceClient::new(still).get(get("k")).await.unwrap();
}

#[tokio::test]
async fn a_client_certificate_can_name_the_client_of_the_auth_file() {
    let authority = TestCa::new("listener CA");
    let (server_cert, server_key) = authority.issue("server", "localhost", &["localhost"]);
    let (client_cert, client_key) = authority.issue("billing", "billing", &["billing.internal"]);
    let (other_cert, other_key) = authority.issue("other", "other", &["other.internal"]);
    let redis = TestRedis::start().await;
    let file = AuthFile::new(
        "[[client]]\nname = \"billing\"\nsan = \"dns:billing.internal\"\ntenant = \"bills\"\nallow = [\"cache\"]\n",
    );
    let path = file.path();
    let service = TestService::start(
        &redis.url(),
        &[
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
            "--tls-client-ca",
            &authority.ca_file,
            "--auth-file",
            &path,
        ],
    )
    .await;
    let billing = tls_channel(service.addr, authority.certificate(), Some((&client_cert, &client_key)))
        .await
        .unwrap();
    CacheServiceClient::new(billing).set(set("k", b"v")).await.unwrap();
    let other = tls_channel(service.addr, authority.certificate(), Some((&other_cert, &other_key)))
        .await
        .unwrap();
    let refused = CacheServiceClient::new(other).get(get("k")).await.unwrap_err();
    assert_reason(&refused, Code::Unauthenticated, "UNAUTHENTICATED");
}

// --- Auth -------------------------------------------------------------------------

#[tokio::test]
async fn credentials_and_permissions_get_the_right_codes() {
    let (_redis, _file, service) = with_auth_file(&cast(), &[]).await;

    let missing = cache(&service, None).get(get("k")).await.unwrap_err();
    assert_reason(&missing, Code::Unauthenticated, "UNAUTHENTICATED");
    let wrong = cache(&service, Some("guessed")).get(get("k")).await.unwrap_err();
    assert_reason(&wrong, Code::Unauthenticated, "UNAUTHENTICATED");

    let other_service = cache(&service, Some("locker-token")).get(get("k")).await.unwrap_err();
    assert_reason(&other_service, Code::PermissionDenied, "PERMISSION_DENIED");
    assert!(other_service.message().contains("cache"), "{other_service:?}");

    let mut reader = cache(&service, Some("reader-token"));
    assert!(!reader.get(get("k")).await.unwrap().into_inner().found);
    let write = reader.set(set("k", b"v")).await.unwrap_err();
    assert_reason(&write, Code::PermissionDenied, "PERMISSION_DENIED");
    assert!(write.message().contains("cache:read"), "{write:?}");

    cache(&service, Some("shop-token")).set(set("k", b"v")).await.unwrap();
    assert!(
        reader.get(get("k")).await.unwrap().into_inner().found,
        "same tenant, same data"
    );

    // election:read follows who leads, and may not stand.
    let mut elections = ElectionServiceClient::with_interceptor(service.channel(), interceptor(Some("locker-token")));
    let leader = LeaderRequest { name: "e".to_owned() };
    assert!(!elections.leader(leader).await.unwrap().into_inner().elected);
    let campaign = CampaignRequest {
        name: "e".to_owned(),
        ttl: Some(millis(10_000)),
        ..CampaignRequest::default()
    };
    let stand = elections.campaign(campaign).await.map(|_| ()).unwrap_err();
    assert_reason(&stand, Code::PermissionDenied, "PERMISSION_DENIED");
    assert!(stand.message().contains("election:read"), "{stand:?}");

    // Probes need no credential; reflection neither, by default.
    assert!(service.health_status("").await.is_ok(), "health needs no credential");
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(service.channel());
    let list = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    assert!(
        reflection
            .server_reflection_info(tokio_stream::once(list))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn reflection_can_require_a_credential_and_health_never_does() {
    let (_redis, _file, service) = with_auth_file(&cast(), &["--reflection-requires-auth"]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(service.channel());
    let list = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let refused = reflection
        .server_reflection_info(tokio_stream::once(list))
        .await
        .unwrap_err();
    assert_reason(&refused, Code::Unauthenticated, "UNAUTHENTICATED");
}

#[tokio::test]
async fn the_auth_file_is_reloaded_and_a_broken_edit_keeps_the_old_clients() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::INFO);
    let (_redis, file, service) = with_auth_file(&cast(), &[]).await;
    let newcomer = cache(&service, Some("new-token")).get(get("k")).await.unwrap_err();
    assert_reason(&newcomer, Code::Unauthenticated, "UNAUTHENTICATED");

    file.write(&(cast() + &client("new", "new-token", "shop", &["cache"], "")));
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while cache(&service, Some("new-token")).get(get("k")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the edited file never took effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    file.write("[[client]]\nname = \"broken\"\n");
    logs.wait_for("refused the changed auth file").await;
    assert!(logs.text().contains("auth.toml"), "the log names the file");
    cache(&service, Some("new-token"))
        .get(get("k"))
        .await
        .expect("the previous clients stay");
}

#[tokio::test]
async fn an_auth_file_mounted_from_a_kubernetes_secret_is_reloaded_when_it_is_updated() {
    let redis = TestRedis::start().await;
    let volume = common::MountedVolume::new(&[("auth.toml", &cast())]);
    let path = volume.file("auth.toml");
    let service = TestService::start(&redis.url(), &["--auth-file", path.to_str().unwrap()]).await;
    let newcomer = cache(&service, Some("new-token")).get(get("k")).await.unwrap_err();
    assert_reason(&newcomer, Code::Unauthenticated, "UNAUTHENTICATED");

    volume.update(&[(
        "auth.toml",
        &(cast() + &client("new", "new-token", "shop", &["cache"], "")),
    )]);
    common::eventually("the updated Secret in force", async || {
        cache(&service, Some("new-token")).get(get("k")).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_client_over_its_request_budget_is_refused_and_others_are_not() {
    let (_redis, _file, service) = with_auth_file(&cast(), &[]).await;
    let mut noisy = cache(&service, Some("noisy-token"));
    let mut quiet = cache(&service, Some("shop-token"));
    let mut refused = 0;
    for _ in 0..50 {
        match noisy.get(get("k")).await {
            Ok(_) => {}
            Err(status) => {
                assert_reason(&status, Code::ResourceExhausted, "CLIENT_RATE_LIMITED");
                assert!(status.message().contains("retry after"), "{status:?}");
                refused += 1;
            }
        }
        quiet.get(get("k")).await.expect("other clients are not slowed");
    }
    assert!(refused > 0, "50 requests at once are above 5 per second");
}

// --- Tenants ------------------------------------------------------------------------

#[tokio::test]
async fn tenants_share_no_key_lock_limit_or_session() {
    let (_redis, _file, service) = with_auth_file(&cast(), &[]).await;
    let (mut shop, mut bank) = (cache(&service, Some("shop-token")), cache(&service, Some("bank-token")));
    shop.set(set("balance", b"shop")).await.unwrap();
    assert!(!bank.get(get("balance")).await.unwrap().into_inner().found);
    bank.set(set("balance", b"bank")).await.unwrap();
    assert_eq!(shop.get(get("balance")).await.unwrap().into_inner().value, b"shop");

    let check = || CheckRequest {
        key: "login".to_owned(),
        limit: 1,
        period: Some(millis(60_000)),
        cost: None,
        algorithm: 0,
        on_unavailable: OutagePolicy::FailClosed as i32,
        calendar: None,
        wait: None,
        leased: false,
    };
    assert!(
        ratelimit(&service, "shop-token")
            .check(check())
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        ratelimit(&service, "bank-token")
            .check(check())
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    let shop_lock = locks(&service, "shop-token")
        .acquire(acquire("job", 0))
        .await
        .unwrap()
        .into_inner();
    let bank_lock = locks(&service, "bank-token")
        .acquire(acquire("job", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(
        shop_lock.acquired && bank_lock.acquired,
        "one name, two tenants, two locks"
    );

    let create = || CreateRequest {
        user_id: "alice".to_owned(),
        attributes: HashMap::new(),
        idle_timeout: None,
        absolute_timeout: None,
        client: None,
    };
    let shop_session = sessions(&service, "shop-token")
        .create(create())
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let bank_listing = sessions(&service, "bank-token")
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "alice".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert!(bank_listing.is_empty());
    let stolen = sessions(&service, "bank-token")
        .get(SessionGet {
            id: shop_session.id,
            touch: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        stolen.code(),
        Code::NotFound,
        "another tenant's session id finds nothing"
    );
}

#[tokio::test]
async fn a_release_in_one_tenant_does_not_grant_in_another() {
    let (_redis, _file, service) = with_auth_file(&cast(), &[]).await;
    let bank_holder = locks(&service, "bank-token")
        .acquire(acquire("job", 0))
        .await
        .unwrap()
        .into_inner();
    let mut bank_waiter = locks(&service, "bank-token");
    let waiting = tokio::spawn(async move { bank_waiter.acquire(acquire("job", 20_000)).await });

    // The shop tenant takes and releases its own "job" again and again.
    let mut shop = locks(&service, "shop-token");
    for _ in 0..5 {
        let grant = shop.acquire(acquire("job", 0)).await.unwrap().into_inner();
        assert!(grant.acquired);
        shop.release(ReleaseRequest {
            name: "job".to_owned(),
            token: grant.token,
        })
        .await
        .unwrap();
    }
    assert!(
        !waiting.is_finished(),
        "the bank waiter is still waiting for the bank's lock"
    );

    locks(&service, "bank-token")
        .release(ReleaseRequest {
            name: "job".to_owned(),
            token: bank_holder.token,
        })
        .await
        .unwrap();
    let granted = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(granted.acquired);
}

// --- Session secrets -------------------------------------------------------------------

#[tokio::test]
async fn listings_carry_handles_not_ids_and_a_handle_ends_one_device() {
    let (_redis, _file, service) = with_auth_file(&cast(), &[]).await;
    let mut client = sessions(&service, "shop-token");
    let create = |device: &str| CreateRequest {
        user_id: "bob".to_owned(),
        attributes: HashMap::from([("secret".to_owned(), "attribute".to_owned())]),
        idle_timeout: None,
        absolute_timeout: None,
        client: Some(cachelock::pb::session::ClientMetadata {
            device_label: device.to_owned(),
            ip: String::new(),
            user_agent: String::new(),
        }),
    };
    let laptop = client
        .create(create("laptop"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let phone = client
        .create(create("phone"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert!(!laptop.handle.is_empty() && laptop.handle != phone.handle);

    let listed = client
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "bob".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 2);
    for session in &listed {
        assert!(session.id.is_empty(), "a listing never carries a session id");
        assert!(session.attributes.is_empty(), "nor attributes");
        assert!(!session.handle.is_empty());
    }

    client
        .delete_user_session(DeleteUserSessionRequest {
            user_id: "bob".to_owned(),
            handle: phone.handle.clone(),
        })
        .await
        .unwrap();
    let gone = client
        .get(SessionGet {
            id: phone.id,
            touch: false,
        })
        .await
        .unwrap_err();
    assert_reason(&gone, Code::NotFound, "SESSION_NOT_FOUND");
    client
        .get(SessionGet {
            id: laptop.id,
            touch: false,
        })
        .await
        .expect("the other device stays logged in");
    let again = client
        .delete_user_session(DeleteUserSessionRequest {
            user_id: "bob".to_owned(),
            handle: phone.handle,
        })
        .await
        .unwrap_err();
    assert_reason(&again, Code::NotFound, "SESSION_NOT_FOUND");
}

// --- Secrets in logs -----------------------------------------------------------------------

#[tokio::test]
async fn no_log_line_at_any_level_holds_a_token_session_id_lock_token_or_value() {
    let (logs, _guard) = CapturedLogs::start_filtered(&cachelock::log_filter("trace"));
    let (_redis, _file, service) = with_auth_file(&cast(), &[]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let mut cache_client = cache(&service, Some("shop-token"));
    cache_client.set(set("k", b"cached-value-7f3a")).await.unwrap();
    cache_client.get(get("k")).await.unwrap();
    let _ = cache(&service, Some("wrong-token-9c1e")).get(get("k")).await;
    let lock = locks(&service, "shop-token")
        .acquire(acquire("job", 0))
        .await
        .unwrap()
        .into_inner();
    locks(&service, "shop-token")
        .release(ReleaseRequest {
            name: "job".to_owned(),
            token: lock.token.clone(),
        })
        .await
        .unwrap();
    let session = sessions(&service, "shop-token")
        .create(CreateRequest {
            user_id: "carol".to_owned(),
            attributes: HashMap::from([("role".to_owned(), "attribute-value-2b8d".to_owned())]),
            idle_timeout: None,
            absolute_timeout: None,
            client: None,
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let text = logs.text();
    assert!(text.len() > 1000, "trace logging was on:\n{text}");
    for secret in [
        "shop-token",
        "wrong-token-9c1e",
        "cached-value-7f3a",
        "attribute-value-2b8d",
        lock.token.as_str(),
        session.id.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret:?} is in the log");
    }
}
