//! ElectionService against every topology: one leader at a time with the
//! candidates in line, Observe seeing every change in order (NO_LEADER when the
//! leader's process goes, or its lease vanishes without a word), Leader, Resign,
//! and the term fencing out a leader that resigned or was replaced.

mod common;

use std::time::Duration;

use cachelock::pb::{
    cache::{SetRequest, cache_service_client::CacheServiceClient},
    election::{
        CampaignRequest, CampaignResponse, Elected, LeaderRequest, ObserveRequest, ObserveResponse, ResignRequest,
        campaign_response::Event as CampaignEvent, election_service_client::ElectionServiceClient,
        observe_response::Event as ObserveEvent,
    },
    lock::{DescribeRequest, Fence},
};
use common::{Backend, PATIENCE, TestService, assert_invalid, assert_reason, millis};
use redis::AsyncCommands;
use tonic::{Code, Streaming, transport::Channel};

fn elections(service: &TestService) -> ElectionServiceClient<Channel> {
    ElectionServiceClient::new(service.channel())
}

fn campaign(name: &str, candidate: &str) -> CampaignRequest {
    CampaignRequest {
        name: name.to_owned(),
        candidate: candidate.to_owned(),
        ttl: Some(millis(1_500)),
        safety_margin: None,
    }
}

async fn next_campaign_event(stream: &mut Streaming<CampaignResponse>) -> CampaignEvent {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an event in time")
        .expect("no error")
        .expect("the stream goes on")
        .event
        .expect("an event")
}

async fn elected(stream: &mut Streaming<CampaignResponse>) -> Elected {
    match next_campaign_event(stream).await {
        CampaignEvent::Elected(elected) => elected,
        other => panic!("expected elected, got {other:?}"),
    }
}

/// The next change Observe reports: a leader's (candidate, term), or `None` for nobody.
async fn next_change(stream: &mut Streaming<ObserveResponse>) -> Option<(String, u64)> {
    let event = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a change in time")
        .expect("no error")
        .expect("the stream goes on")
        .event
        .expect("an event");
    match event {
        ObserveEvent::Leader(leader) => Some((leader.candidate, leader.term)),
        ObserveEvent::NoLeader(_) => None,
    }
}

/// The next change that names a leader, past the moments with nobody leading
/// that a hand-over may show.
async fn next_leader(stream: &mut Streaming<ObserveResponse>) -> (String, u64) {
    loop {
        if let Some(leader) = next_change(stream).await {
            return leader;
        }
    }
}

/// Waits until `waiting` candidates are in line for `name`.
async fn in_line(service: &TestService, name: &str, waiting: u32) {
    let mut locks = service.locks();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let described = locks
            .describe(DescribeRequest { name: name.to_owned() })
            .await
            .unwrap()
            .into_inner();
        if described.waiting == waiting {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{waiting} candidates in line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fenced_set(key: &str, fence: Fence) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: b"v".to_vec(),
        ttl: Some(millis(60_000)),
        fence: Some(fence),
        ..SetRequest::default()
    }
}

async fn candidates_lead_one_at_a_time_in_line_and_observe_sees_every_change(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = elections(&service);
    let name = "{scheduler}";
    let mut observer = client
        .observe(ObserveRequest { name: name.to_owned() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_change(&mut observer).await, None, "nobody leads at first");

    let mut first = client.campaign(campaign(name, "a")).await.unwrap().into_inner();
    let a = elected(&mut first).await;
    assert_eq!(a.term, a.fencing_token);
    assert!(!a.resign_token.is_empty());
    assert_eq!(next_leader(&mut observer).await, ("a".to_owned(), a.term));

    // The others wait in line, in the order they came.
    let mut second = client.campaign(campaign(name, "b")).await.unwrap().into_inner();
    in_line(&service, name, 1).await;
    let mut third = client.campaign(campaign(name, "c")).await.unwrap().into_inner();
    in_line(&service, name, 2).await;
    let leader = client
        .leader(LeaderRequest { name: name.to_owned() })
        .await
        .unwrap()
        .into_inner();
    let leadership = leader.leader.expect("a leader");
    assert!(leader.elected);
    assert_eq!((leadership.candidate.as_str(), leadership.term), ("a", a.term));
    assert!(leadership.since.is_some() && leadership.ttl.is_some());

    // The leader's process goes (its stream closes): the next in line leads.
    drop(first);
    let b = elected(&mut second).await;
    assert!(b.term > a.term);
    assert_eq!(next_leader(&mut observer).await, ("b".to_owned(), b.term));

    // The replaced leader's fenced writes are refused; the leader's apply.
    let mut cache = CacheServiceClient::new(service.channel());
    let fence = |term| Fence {
        lock: name.to_owned(),
        fencing_token: term,
    };
    let refused = cache
        .set(fenced_set("{scheduler}:plan", fence(a.term)))
        .await
        .expect_err("a's term is over");
    assert_reason(&refused, Code::FailedPrecondition, "FENCED_OUT");
    cache.set(fenced_set("{scheduler}:plan", fence(b.term))).await.unwrap();

    // b resigns from elsewhere with its token: c leads, and b's stream ends with lost.
    client
        .resign(ResignRequest {
            name: name.to_owned(),
            resign_token: b.resign_token.clone(),
        })
        .await
        .unwrap();
    let c = elected(&mut third).await;
    assert!(c.term > b.term);
    assert_eq!(next_leader(&mut observer).await, ("c".to_owned(), c.term));
    // c leads by now, so b's next renewal finds the lock another's.
    loop {
        match next_campaign_event(&mut second).await {
            CampaignEvent::Renewed(_) => continue,
            CampaignEvent::Lost(lost) => break assert_eq!(lost.reason, "LEASE_LOST"),
            other => panic!("expected lost, got {other:?}"),
        }
    }
    // Resign sent again (its answer lost): accepted, and c leads on.
    client
        .resign(ResignRequest {
            name: name.to_owned(),
            resign_token: b.resign_token,
        })
        .await
        .unwrap();
    let leader = client
        .leader(LeaderRequest { name: name.to_owned() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leader.leader.map(|leader| leader.term), Some(c.term));

    // The last leader resigns by closing its stream, with nobody in line: no leader,
    // and its term is fenced out although nobody was elected after it.
    drop(third);
    assert_eq!(next_change(&mut observer).await, None);
    let refused = cache
        .set(fenced_set("{scheduler}:plan", fence(c.term)))
        .await
        .expect_err("c resigned");
    assert_reason(&refused, Code::FailedPrecondition, "FENCED_OUT");
    let leader = client
        .leader(LeaderRequest { name: name.to_owned() })
        .await
        .unwrap()
        .into_inner();
    assert!(!leader.elected && leader.leader.is_none());
    assert_eq!(service.metric("cachelock_election_terms_total").await, 3.0);
}

async fn a_leader_whose_lease_vanished_without_a_word_is_seen_gone(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = elections(&service);
    let name = "{vanishing}";
    let mut observer = client
        .observe(ObserveRequest { name: name.to_owned() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_change(&mut observer).await, None);
    let mut leader = client.campaign(campaign(name, "a")).await.unwrap().into_inner();
    let a = elected(&mut leader).await;
    assert_eq!(next_leader(&mut observer).await, ("a".to_owned(), a.term));
    // Behind the service's back, as a flush or a failover to an empty replica
    // would: nobody announces it; the observer finds it on its own.
    let mut direct = backend.connection().await;
    for key in backend.keys(&format!("{}:*:lock:*{name}", backend.prefix())).await {
        let _: () = direct.del(&key).await.unwrap();
    }
    assert_eq!(next_change(&mut observer).await, None);
    // The leader hears of it at its next renewal.
    loop {
        match next_campaign_event(&mut leader).await {
            CampaignEvent::Renewed(_) => continue,
            CampaignEvent::Lost(lost) => break assert_eq!(lost.reason, "LOCK_NOT_HELD"),
            other => panic!("expected lost, got {other:?}"),
        }
    }
}

fn status<T>(result: Result<T, tonic::Status>) -> tonic::Status {
    result.map(|_| ()).expect_err("refused")
}

async fn bad_campaigns_and_resigns_are_invalid_arguments(backend: Backend) {
    let service = backend.service(&[]).await;
    let mut client = elections(&service);
    assert_invalid(status(client.campaign(campaign("", "a")).await), "name");
    let no_ttl = CampaignRequest {
        ttl: None,
        ..campaign("e", "a")
    };
    assert_invalid(status(client.campaign(no_ttl).await), "ttl");
    assert_invalid(
        status(client.campaign(campaign("e", &"x".repeat(257))).await),
        "candidate",
    );
    let resign = ResignRequest {
        name: "e".to_owned(),
        resign_token: String::new(),
    };
    assert_invalid(status(client.resign(resign).await), "resign_token");
    assert_invalid(
        status(client.leader(LeaderRequest { name: String::new() }).await),
        "name",
    );
}

in_every_mode!(
    candidates_lead_one_at_a_time_in_line_and_observe_sees_every_change,
    a_leader_whose_lease_vanished_without_a_word_is_seen_gone,
    bad_campaigns_and_resigns_are_invalid_arguments,
);
