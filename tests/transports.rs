//! The ways to reach a production Redis: rediss:// with a CA file (certificates
//! verified, an untrusted server refused) and a unix socket.

mod common;

use std::{process::Stdio, time::Duration};

use cachelock::pb::cache::{GetRequest, SetRequest};
use common::{PATIENCE, TestCa, TestRedis, TestService};
use tokio::process::{Child, Command};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Starts redis-server with `args` (killed when the child is dropped) and waits
/// until `ready` can be connected to.
async fn redis_server(args: &[&str], ready: impl AsyncFn() -> bool) -> Child {
    let child = Command::new("redis-server")
        .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server on PATH (apt-get install redis-server)");
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while !ready().await {
        assert!(tokio::time::Instant::now() < give_up, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// A redis-server listening only for TLS, with a certificate for localhost
/// signed by a CA made for the test.
struct TlsRedis {
    port: u16,
    ca: String,
    _server: Child,
    _certificates: TestCa,
}

impl TlsRedis {
    async fn start() -> TlsRedis {
        let authority = TestCa::new("cachelock test CA");
        let (cert, key) = authority.issue("server", "localhost", &["localhost"]);
        let ca = authority.ca_file.clone();
        let port = TestRedis::free_port();
        let port_text = port.to_string();
        let server = redis_server(
            &[
                "--port",
                "0",
                "--tls-port",
                &port_text,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ],
            async || tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok(),
        )
        .await;
        TlsRedis {
            port,
            ca,
            _server: server,
            _certificates: authority,
        }
    }
}

async fn set_then_get(service: &TestService) {
    let mut cache = service.cache();
    cache
        .set(SetRequest {
            key: "over-tls".to_owned(),
            value: b"v".to_vec(),
            ttl: None,
            condition: 0,
            lease_token: String::new(),
            stale_ttl: None,
            fence: None,
        })
        .await
        .unwrap();
    let read = cache
        .get(GetRequest {
            key: "over-tls".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.value, b"v");
}

#[tokio::test]
async fn rediss_with_the_servers_ca_verifies_and_works() {
    let tls = TlsRedis::start().await;

    let service = TestService::start(
        &format!("rediss://localhost:{}", tls.port),
        &["--redis-ca-file", &tls.ca],
    )
    .await;
    service.wait_for_health("", ServingStatus::Serving).await;
    set_then_get(&service).await;
}

#[tokio::test]
async fn rediss_refuses_a_server_whose_certificate_it_cannot_verify() {
    let tls = TlsRedis::start().await;

    // The system trust store does not know the test CA: the connection must fail.
    let service = TestService::start(
        &format!("rediss://localhost:{}", tls.port),
        &["--operation-timeout", "300ms"],
    )
    .await;
    let status = tokio::time::timeout(PATIENCE, service.cache().get(GetRequest { key: "k".to_owned() }))
        .await
        .expect("returns")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // That it never turns SERVING can only be seen by waiting a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service.health_status("").await, Ok(ServingStatus::NotServing));
}

#[tokio::test]
async fn a_unix_socket_works() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let socket_text = socket.to_string_lossy().into_owned();
    let _redis = redis_server(
        &["--port", "0", "--unixsocket", &socket_text, "--unixsocketperm", "700"],
        async || tokio::net::UnixStream::connect(&socket).await.is_ok(),
    )
    .await;

    let service = TestService::start(&format!("unix://{socket_text}"), &[]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    set_then_get(&service).await;
}
