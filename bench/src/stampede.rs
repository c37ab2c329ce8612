//! `--stampede`: many callers on one key. What coalescing saves Redis (every
//! caller Gets one hot key), and what fill leases save the source of truth (a
//! missing key found by every caller at once, filled by each of them with Get,
//! by one of them with GetOrLease).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use cachelock::pb::cache::{
    GetOrLeaseRequest, GetRequest, LeaseOutcome, SetRequest, cache_service_client::CacheServiceClient,
};
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use tokio::time::{Instant, sleep};

use crate::{
    Args,
    scenario::{Clients, Conn, VALUE},
};

/// Rounds of the fill stampede, each on a key of its own.
const ROUNDS: usize = 20;

type Cache = CacheServiceClient<Conn>;

/// --stampede: what coalescing saves Redis, and what leases save the source of truth.
pub(crate) async fn stampede(clients: &Clients, callers: usize, args: &Args) -> Result<(), String> {
    coalescing(clients, callers, args).await?;
    println!(
        "{:<12} {:>8} {:>15} {:>15} {:>13} {:>13} {:>7}",
        "stampede", "callers", "source reads", "leases/round", "p50 ms", "max ms", "errors"
    );
    for leased in [false, true] {
        fill_stampede(clients, callers, args, leased).await?;
    }
    Ok(())
}

/// A client on the caller's channel.
fn cache(clients: &Clients, caller: usize) -> Cache {
    let channel: Conn = clients.channels[caller % clients.channels.len()].clone();
    CacheServiceClient::new(channel)
}

/// The Set that fills `key`, under `lease_token` ("" for none).
fn set(key: &str, lease_token: String) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: VALUE.to_vec(),
        ttl: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
        condition: 0,
        lease_token,
        stale_ttl: None,
        fence: None,
    }
}

/// Calls of EVALSHA so far, from INFO commandstats: every cache read is one.
async fn script_calls(redis: &MultiplexedConnection) -> Result<u64, String> {
    let mut conn = redis.clone();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0))
}

/// Every caller Gets one hot key, again and again: Gets per Redis read.
async fn coalescing(clients: &Clients, callers: usize, args: &Args) -> Result<(), String> {
    cache(clients, 0)
        .set(set("stampede-hot", String::new()))
        .await
        .map_err(|status| format!("Set: {status}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let gets = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..callers)
        .map(|caller| {
            let (mut client, stop, gets) = (cache(clients, caller), stop.clone(), gets.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = GetRequest {
                        key: "stampede-hot".to_owned(),
                    };
                    if client.get(request).await.is_ok_and(|answer| answer.into_inner().found) {
                        gets.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    sleep(args.warmup).await;
    let (gets_before, reads_before) = (gets.load(Ordering::Relaxed), script_calls(&clients.redis).await?);
    let started = Instant::now();
    sleep(args.duration).await;
    let (gets_after, reads_after) = (gets.load(Ordering::Relaxed), script_calls(&clients.redis).await?);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.await;
    }
    let (gets, reads) = (gets_after - gets_before, (reads_after - reads_before).max(1));
    println!(
        "coalescing: {callers} callers Get one key: {:.0} Gets/s, {:.0} Redis reads/s: {:.1} Gets per read, {:.1}% of reads saved",
        gets as f64 / elapsed,
        reads as f64 / elapsed,
        gets as f64 / reads as f64,
        100.0 * (1.0 - reads as f64 / gets.max(1) as f64)
    );
    Ok(())
}

/// What the callers of one fill stampede counted together.
#[derive(Default)]
struct Tally {
    source_reads: AtomicU64,
    leases: AtomicU64,
    errors: AtomicU64,
}

/// Rounds of a missing key found by every caller at once (with GetOrLease when
/// `leased`, else with Get), whose fill takes --fill-time; prints one row.
async fn fill_stampede(clients: &Clients, callers: usize, args: &Args, leased: bool) -> Result<(), String> {
    let tally = Arc::new(Tally::default());
    let mut times = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for round in 0..ROUNDS {
        let key = format!("stampede-{leased}-{round}-{}", std::process::id());
        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let (client, key, tally) = (cache(clients, caller), key.clone(), tally.clone());
                tokio::spawn(one_caller(client, key, tally, args.fill_time, leased))
            })
            .collect();
        for task in tasks {
            let micros = task.await.map_err(|e| e.to_string())?;
            let _ = times.record(micros);
        }
    }
    println!(
        "{:<12} {:>8} {:>15.1} {:>15.2} {:>13.1} {:>13.1} {:>7}",
        if leased { "GetOrLease" } else { "Get" },
        callers,
        tally.source_reads.load(Ordering::Relaxed) as f64 / ROUNDS as f64,
        tally.leases.load(Ordering::Relaxed) as f64 / ROUNDS as f64,
        times.value_at_quantile(0.5) as f64 / 1000.0,
        times.max() as f64 / 1000.0,
        tally.errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One caller that needs `key`: reads it, fills it from the source when it must;
/// the microseconds until it had the value.
async fn one_caller(mut client: Cache, key: String, tally: Arc<Tally>, fill_time: Duration, leased: bool) -> u64 {
    let started = Instant::now();
    let from_source = async || {
        tally.source_reads.fetch_add(1, Ordering::Relaxed);
        sleep(fill_time).await;
    };
    let had_it = if leased {
        let request = GetOrLeaseRequest {
            key: key.clone(),
            lease_ttl: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
            wait: None,
            refresh_ahead: 0.0,
        };
        match client.get_or_lease(request).await.map(tonic::Response::into_inner) {
            Ok(answer) if answer.outcome() == LeaseOutcome::Lease => {
                tally.leases.fetch_add(1, Ordering::Relaxed);
                from_source().await;
                client.set(set(&key, answer.lease_token)).await.is_ok()
            }
            Ok(answer) => answer.outcome() == LeaseOutcome::Hit,
            Err(_) => false,
        }
    } else {
        match client.get(GetRequest { key: key.clone() }).await {
            Ok(answer) if answer.get_ref().found => true,
            Ok(_) => {
                from_source().await;
                client.set(set(&key, String::new())).await.is_ok()
            }
            Err(_) => false,
        }
    };
    if !had_it {
        tally.errors.fetch_add(1, Ordering::Relaxed);
    }
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}
