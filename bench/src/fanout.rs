//! `--pubsub-fanout`: many Subscribe streams on one topic, publishers at each
//! --concurrency, and how many messages per second reach the streams in all.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use cachelock::pb::pubsub::{
    PublishRequest, SubscribeRequest, pub_sub_service_client::PubSubServiceClient, subscribe_response::Event,
};
use tokio::{
    task::JoinHandle,
    time::{Instant, sleep},
};

use crate::{
    Args,
    scenario::{Clients, VALUE},
};

/// The topic every stream subscribes to.
const TOPIC: &str = "bench-fanout";

/// What the streams received, in all.
#[derive(Default)]
struct Received {
    delivered: AtomicU64,
    missed: AtomicU64,
}

/// Opens `subscribers` streams, then publishes at each --concurrency and prints a row each.
pub(crate) async fn pubsub_fanout(clients: &Clients, subscribers: usize, args: &Args) -> Result<(), String> {
    let received = Arc::new(Received::default());
    let readers = subscribe(clients, subscribers, &received).await?;
    println!(
        "{:<12} {:>11} {:>13} {:>15} {:>9}",
        "subscribers", "publishers", "published/s", "delivered/s", "missed"
    );
    for &publishers in &args.concurrency {
        publish(clients, subscribers, publishers, args, &received).await;
        // Let the streams catch up before the next run.
        sleep(Duration::from_millis(500)).await;
    }
    for reader in readers {
        reader.abort();
    }
    Ok(())
}

/// Opens the streams, each live before the next opens, and their readers.
async fn subscribe(
    clients: &Clients,
    subscribers: usize,
    received: &Arc<Received>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut readers = Vec::with_capacity(subscribers);
    for index in 0..subscribers {
        let channel = clients.channels[index % clients.channels.len()].clone();
        let request = SubscribeRequest {
            topics: vec![TOPIC.to_owned()],
            patterns: Vec::new(),
        };
        let mut stream = PubSubServiceClient::new(channel)
            .subscribe(request)
            .await
            .map_err(|status| format!("Subscribe: {status}"))?
            .into_inner();
        // The first event says the stream is live.
        stream
            .message()
            .await
            .map_err(|status| format!("Subscribe: {status}"))?;
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Some(answer)) = stream.message().await {
                match answer.event {
                    Some(Event::Message(_)) => received.delivered.fetch_add(1, Ordering::Relaxed),
                    Some(Event::Discontinuity(gap)) => received.missed.fetch_add(gap.missed, Ordering::Relaxed),
                    _ => 0,
                };
            }
        }));
    }
    Ok(readers)
}

/// `publishers` publishing as fast as they can for a warm-up and a measured
/// period; prints what was published and delivered per second.
async fn publish(clients: &Clients, subscribers: usize, publishers: usize, args: &Args, received: &Received) {
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..publishers)
        .map(|index| {
            let mut client = PubSubServiceClient::new(clients.channels[index % clients.channels.len()].clone());
            let (stop, published) = (stop.clone(), published.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = PublishRequest {
                        topic: TOPIC.to_owned(),
                        payload: VALUE.to_vec(),
                    };
                    if client.publish(request).await.is_ok() {
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let counts = || {
        (
            published.load(Ordering::Relaxed),
            received.delivered.load(Ordering::Relaxed),
            received.missed.load(Ordering::Relaxed),
        )
    };
    sleep(args.warmup).await;
    let (published_before, delivered_before, missed_before) = counts();
    let started = Instant::now();
    sleep(args.duration).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (published_now, delivered_now, missed_now) = counts();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    println!(
        "{:<12} {:>11} {:>13.0} {:>15.0} {:>9}",
        subscribers,
        publishers,
        (published_now - published_before) as f64 / elapsed,
        (delivered_now - delivered_before) as f64 / elapsed,
        missed_now - missed_before
    );
}
