//! Health reporting, Watch streams, reflection, graceful shutdown, and connections
//! that age out so that a scale-out gets traffic.

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use cachelock::pb::cache::cache_service_client::CacheServiceClient;
use common::{FaultyLink, PATIENCE, TestRedis, TestService, redis_and_service, requests};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tonic::{Code, transport::Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_reflection::pb::{v1, v1alpha};

const CACHE: &str = "cachelock.cache.v1.CacheService";

#[tokio::test]
async fn every_name_is_not_serving_until_redis_answers() {
    let port = TestRedis::free_port();
    let service = TestService::start(&format!("redis://127.0.0.1:{port}"), &[]).await;

    assert_eq!(service.health_status("").await, Ok(ServingStatus::NotServing));
    assert_eq!(service.health_status(CACHE).await, Ok(ServingStatus::NotServing));
    assert_eq!(
        service.health_status("cachelock.ratelimit.v1.RateLimitService").await,
        Ok(ServingStatus::NotServing)
    );
    assert_eq!(service.health_status("no.such.Service").await, Err(Code::NotFound));

    let _redis = TestRedis::start_on(port).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    service.wait_for_health(CACHE, ServingStatus::Serving).await;
}

#[tokio::test]
async fn watch_streams_each_transition() {
    let port = TestRedis::free_port();
    let service = TestService::start(&format!("redis://127.0.0.1:{port}"), &[]).await;
    let mut updates = service
        .health()
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        let update = tokio::time::timeout(PATIENCE, updates.next())
            .await
            .expect("a health update in time")
            .expect("the stream stays open")
            .expect("an update, not an error");
        ServingStatus::try_from(update.status).unwrap()
    };

    assert_eq!(next().await, ServingStatus::NotServing);
    let mut redis = TestRedis::start_on(port).await;
    assert_eq!(next().await, ServingStatus::Serving);
    redis.stop().await;
    assert_eq!(next().await, ServingStatus::NotServing);
}

#[tokio::test]
async fn shutdown_turns_health_off_ends_watch_streams_and_completes() {
    let (_redis, service) = redis_and_service(&[]).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let mut updates = service
        .health()
        .watch(HealthCheckRequest {
            service: CACHE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = updates.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    service.shutdown().await.expect("a clean shutdown");

    // Whatever the stream still delivers says NOT_SERVING, and then it ends.
    let rest: Vec<_> = tokio::time::timeout(PATIENCE, updates.collect::<Vec<_>>())
        .await
        .expect("the Watch stream ends");
    for update in rest.into_iter().flatten() {
        assert_eq!(update.status, ServingStatus::NotServing as i32);
    }
}

#[tokio::test]
async fn shutdown_completes_while_redis_is_down() {
    let port = TestRedis::free_port();
    let service = TestService::start(&format!("redis://127.0.0.1:{port}"), &["--shutdown-grace", "2s"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    service.shutdown().await.expect("a clean shutdown");
}

#[tokio::test]
async fn reflection_lists_every_service_in_both_protocol_versions() {
    let (_redis, service) = redis_and_service(&[]).await;
    let wanted = [
        CACHE,
        "cachelock.election.v1.ElectionService",
        "cachelock.lock.v1.LockService",
        "cachelock.pubsub.v1.PubSubService",
        "cachelock.ratelimit.v1.RateLimitService",
        "cachelock.session.v1.SessionService",
        "envoy.service.ratelimit.v3.RateLimitService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(service.channel());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("a list of services");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|service| service.name).collect();
    names.sort();
    assert_eq!(names, wanted);

    // grpcurl (v1alpha) finds each service's file, and the error detail types,
    // so that it can print a status's details decoded.
    for symbol in [
        "cachelock.cache.v1.CacheService",
        "cachelock.election.v1.ElectionService",
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
    ] {
        let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(service.channel());
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(symbol.to_owned()),
            ),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.next().await.unwrap().unwrap().message_response;
        assert!(
            matches!(
                answer,
                Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref files))
                    if !files.file_descriptor_proto.is_empty()
            ),
            "{symbol}: {answer:?}"
        );
    }
}

/// A service whose Redis connection holds every request from now on, with a Get
/// in flight (it has reached the held connection).
async fn a_call_in_flight(
    args: &[&str],
) -> (
    TestRedis,
    FaultyLink,
    TestService,
    tokio::task::JoinHandle<Result<tonic::Response<cachelock::pb::cache::GetResponse>, tonic::Status>>,
) {
    let redis = TestRedis::start().await;
    let link = FaultyLink::start(redis.port()).await;
    let mut all = vec!["--health-interval", "60s"];
    all.extend_from_slice(args);
    let service = TestService::start(&link.url, &all).await;
    service.wait_for_health("", ServingStatus::Serving).await;
    let mut cache = service.cache();
    link.hold_requests(true);
    let in_flight = tokio::spawn(async move {
        cache
            .get(cachelock::pb::cache::GetRequest { key: "k".to_owned() })
            .await
    });
    link.held_bytes_arrived().await;
    (redis, link, service, in_flight)
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish_with_their_own_answer() {
    let (_redis, _link, service, in_flight) =
        a_call_in_flight(&["--operation-timeout", "800ms", "--shutdown-grace", "20s"]).await;

    service.shutdown().await.expect("a clean shutdown");
    // The call was answered by its handler (Redis did not answer in time), not cut off.
    let status = in_flight.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("did not answer"), "{status:?}");
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let (_redis, _link, service, in_flight) =
        a_call_in_flight(&["--operation-timeout", "60s", "--shutdown-grace", "300ms"]).await;

    // The call would take a minute; the server stops after its 300 ms grace anyway
    // (in the binary, returning from run ends the process and so the call).
    let started = std::time::Instant::now();
    service.shutdown().await.expect("the server stops");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(
        !in_flight.is_finished(),
        "the call was still running: the grace, not the call, ended the drain"
    );
    in_flight.abort();
}

#[tokio::test]
async fn a_waiting_acquire_ends_at_shutdown_instead_of_holding_the_drain() {
    use cachelock::pb::lock::{AcquireRequest, lock_service_client::LockServiceClient};
    let (redis, service) = redis_and_service(&["--shutdown-grace", "60s", "--health-interval", "60s"]).await;
    let acquire = |wait_seconds: i64| AcquireRequest {
        name: "busy".to_owned(),
        ttl: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        wait_timeout: Some(prost_types::Duration {
            seconds: wait_seconds,
            nanos: 0,
        }),
        ..AcquireRequest::default()
    };
    let mut holder = LockServiceClient::new(service.channel());
    assert!(holder.acquire(acquire(0)).await.unwrap().into_inner().acquired);
    let mut waiter = LockServiceClient::new(service.channel());
    let attempts_before = redis.calls("evalsha").await;
    let waiting = tokio::spawn(async move { waiter.acquire(acquire(50)).await });
    // The waiter's first attempt has run: it is now waiting in the server.
    redis.wait_for_calls("evalsha", attempts_before + 1).await;

    let started = std::time::Instant::now();
    service.shutdown().await.expect("a clean shutdown");
    let answer = waiting
        .await
        .unwrap()
        .expect("an answer, not a cut-off call")
        .into_inner();
    assert!(!answer.acquired);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the drain did not wait for the 50 s wait"
    );
}

/// A stand-in for a Kubernetes ClusterIP Service: each new connection goes to the
/// next backend in turn, and a connection stays with the backend it reached.
struct RoundRobin {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RoundRobin {
    async fn start(first: SocketAddr) -> RoundRobin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(Mutex::new(vec![first]));
        let chosen = backends.clone();
        let task = tokio::spawn(async move {
            let mut next = 0;
            while let Ok((mut client, _)) = listener.accept().await {
                let backend = {
                    let backends = chosen.lock().unwrap();
                    next += 1;
                    backends[next % backends.len()]
                };
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        RoundRobin { addr, backends, task }
    }

    fn add(&self, backend: SocketAddr) {
        self.backends.lock().unwrap().push(backend);
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_maximum_connection_age_a_client_of_one_connection_reaches_an_instance_added_later() {
    let redis = TestRedis::start().await;
    let args = ["--max-connection-age", "1s"];
    let first = TestService::start(&redis.url(), &args).await;
    let service = RoundRobin::start(first.addr).await;
    // One client, one channel, as a backend keeps it: every call goes through the Service.
    let channel = Endpoint::from_shared(format!("http://{}", service.addr))
        .unwrap()
        .connect_lazy();
    let mut cache = CacheServiceClient::new(channel);
    cache.set(requests::set("k", b"v")).await.unwrap();

    // A scale-out: the second instance starts after the client connected.
    let second = TestService::start(&redis.url(), &args).await;
    service.add(second.addr);
    let served_by_second = "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"cachelock.cache.v1.CacheService\",grpc_method=\"Get\",grpc_code=\"OK\"}";
    let mut failed = Vec::new();
    common::eventually("a call served by the instance added later", async || {
        if let Err(status) = cache.get(requests::get("k")).await {
            failed.push(status);
        }
        second.metric(served_by_second).await >= 1.0
    })
    .await;
    // Going away is graceful: the client moved without a failed call.
    assert!(failed.is_empty(), "{failed:?}");
}
