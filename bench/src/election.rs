//! `--election-handover`: how long an election has no leader after its leader
//! dies. Two deaths, measured in rounds: the leader's process (its Campaign
//! stream closes: the server releases at once and the next candidate in line is
//! elected), and the leader's cachelock instance (killed with SIGKILL: nothing
//! releases, the next candidate is elected when the lease runs out). Each round
//! times from the death to the follower's `elected`.

use std::time::Duration;

use cachelock::pb::{
    election::{
        CampaignRequest, CampaignResponse, campaign_response::Event, election_service_client::ElectionServiceClient,
    },
    lock::{DescribeRequest, lock_service_client::LockServiceClient},
};
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tonic::{Streaming, transport::Channel};

use crate::{
    Args,
    scenario::{Clients, Conn},
    setup::{Setup, free_address, plain_probe, service_args, sibling_binary, start_service},
};

/// How long a round may wait for an event before it counts as failed.
const PATIENCE: Duration = Duration::from_secs(30);

/// --election-handover: `rounds` of each death, with leases of `--election-ttl`.
pub(crate) async fn election_handover(
    clients: &Clients,
    setup: &Setup,
    rounds: usize,
    args: &Args,
) -> Result<(), String> {
    let channel: Conn = clients.channels.first().cloned().ok_or("no channel to the service")?;
    let ttl = args.election_ttl;
    println!(
        "{:<22} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "leader died", "rounds", "ttl ms", "p50 ms", "max ms", "min ms"
    );
    for instance_dies in [false, true] {
        let mut histogram = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        for round in 0..rounds {
            let name = format!(
                "bench-election-{}-{round}",
                if instance_dies { "instance" } else { "process" }
            );
            let handover = if instance_dies {
                instance_death(channel.clone(), &setup.redis_url, &name, ttl).await?
            } else {
                process_death(channel.clone(), &name, ttl).await?
            };
            histogram
                .record(u64::try_from(handover.as_micros()).unwrap_or(u64::MAX))
                .map_err(|e| e.to_string())?;
        }
        let ms = |micros: u64| format!("{:.1}", micros as f64 / 1000.0);
        println!(
            "{:<22} {:>7} {:>10} {:>10} {:>10} {:>10}",
            if instance_dies {
                "its cachelock instance"
            } else {
                "its process"
            },
            rounds,
            ttl.as_millis(),
            ms(histogram.value_at_quantile(0.5)),
            ms(histogram.max()),
            ms(histogram.min()),
        );
    }
    Ok(())
}

fn campaign(name: &str, candidate: &str, ttl: Duration) -> CampaignRequest {
    CampaignRequest {
        name: name.to_owned(),
        candidate: candidate.to_owned(),
        ttl: prost_types::Duration::try_from(ttl).ok(),
        safety_margin: None,
    }
}

/// Waits for `elected` on `stream`.
async fn elected(stream: &mut Streaming<CampaignResponse>) -> Result<(), String> {
    loop {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .map_err(|_| "no election within 30 s".to_owned())?
            .map_err(|status| format!("Campaign failed: {status}"))?;
        match message.and_then(|message| message.event) {
            Some(Event::Elected(_)) => return Ok(()),
            Some(Event::Renewed(_)) => continue,
            other => return Err(format!("expected elected, got {other:?}")),
        }
    }
}

/// Waits until a follower is in line for `name`.
async fn follower_in_line(locks: &mut LockServiceClient<Conn>, name: &str) -> Result<(), String> {
    let give_up = Instant::now() + PATIENCE;
    loop {
        let described = locks
            .describe(DescribeRequest { name: name.to_owned() })
            .await
            .map_err(|status| format!("Describe failed: {status}"))?
            .into_inner();
        if described.waiting > 0 {
            return Ok(());
        }
        if Instant::now() > give_up {
            return Err("the follower never stood in line".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The leader's process dies: its stream closes. From then to the follower's election.
async fn process_death(channel: Conn, name: &str, ttl: Duration) -> Result<Duration, String> {
    let mut elections = ElectionServiceClient::new(channel.clone());
    let mut leader = elections
        .campaign(campaign(name, "leader", ttl))
        .await
        .map_err(|status| format!("Campaign failed: {status}"))?
        .into_inner();
    elected(&mut leader).await?;
    let mut follower = elections
        .campaign(campaign(name, "follower", ttl))
        .await
        .map_err(|status| format!("Campaign failed: {status}"))?
        .into_inner();
    follower_in_line(&mut LockServiceClient::new(channel), name).await?;
    let died = Instant::now();
    drop(leader);
    elected(&mut follower).await?;
    Ok(died.elapsed())
}

/// The leader's cachelock instance dies (SIGKILL), the leader campaigning through
/// it; the follower campaigns through the bench's service. From the kill to the
/// follower's election.
async fn instance_death(channel: Conn, redis_url: &str, name: &str, ttl: Duration) -> Result<Duration, String> {
    let addr = free_address()?;
    let mut doomed = start_service(
        &sibling_binary("cachelock")?,
        &service_args(&addr, redis_url, false)?,
        plain_probe(&addr),
    )
    .await?;
    let doomed_channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut leader = ElectionServiceClient::new(doomed_channel)
        .campaign(campaign(name, "leader", ttl))
        .await
        .map_err(|status| format!("Campaign failed: {status}"))?
        .into_inner();
    elected(&mut leader).await?;
    let mut follower = ElectionServiceClient::new(channel.clone())
        .campaign(campaign(name, "follower", ttl))
        .await
        .map_err(|status| format!("Campaign failed: {status}"))?
        .into_inner();
    follower_in_line(&mut LockServiceClient::new(channel), name).await?;
    let died = Instant::now();
    doomed
        .kill()
        .await
        .map_err(|e| format!("cannot kill the leader's instance: {e}"))?;
    elected(&mut follower).await?;
    drop(leader);
    Ok(died.elapsed())
}
