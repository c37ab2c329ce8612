//! Single-flight reads: identical Gets of one key that arrive while a read of
//! it is in flight on this instance share that read's answer instead of sending
//! their own, so a hot key costs Redis one read per round trip per instance,
//! whatever the fan-in.
//!
//! A write through this instance ends the sharing for its key when it completes
//! ([`Flights::forget`]), so a Get that starts after a local write completed
//! always reads afresh. A write through another instance is not seen: a Get may
//! then be answered by a read that was sent up to one round trip before it
//! arrived, as if it had arrived that much earlier.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{sync::watch, time::Instant};

use crate::error::{Effect, Error};

/// The reads in flight, by Redis key.
pub struct Flights<V> {
    reading: Arc<Mutex<HashMap<String, Flight<V>>>>,
    next: Mutex<u64>,
}

struct Flight<V> {
    id: u64,
    answer: watch::Receiver<Option<V>>,
}

impl<V: Clone + Send + Sync> Flights<V> {
    /// No reads in flight.
    pub fn new() -> Flights<V> {
        Flights {
            reading: Arc::new(Mutex::new(HashMap::new())),
            next: Mutex::new(0),
        }
    }

    /// The answer of the read of `key` in flight, or of `read` when there is none
    /// (or the one in flight fails or is cancelled: each caller then reads for itself).
    /// `joined` is called when this call joins a read in flight.
    ///
    /// # Errors
    /// Those of `read`; [`Error::Timeout`] when `deadline` passes while waiting
    /// for the read in flight.
    pub async fn read(
        &self,
        key: &str,
        deadline: Instant,
        read: impl Future<Output = Result<V, Error>>,
        joined: impl FnOnce(),
    ) -> Result<V, Error> {
        let in_flight = self
            .reading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|flight| flight.answer.clone());
        if let Some(mut answer) = in_flight {
            joined();
            let started = Instant::now();
            let shared = tokio::time::timeout_at(deadline, answer.wait_for(Option::is_some))
                .await
                .map_err(|_| Error::Timeout {
                    waited: started.elapsed(),
                    effect: Effect::Read,
                })?
                .ok()
                .and_then(|shared| shared.clone());
            return match shared {
                Some(value) => Ok(value),
                None => read.await,
            };
        }
        let (sender, answer) = watch::channel(None);
        let id = {
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            *next += 1;
            *next
        };
        self.reading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), Flight { id, answer });
        // Taken out however this ends, a cancelled call included.
        let landing = Landing {
            reading: self.reading.clone(),
            key: key.to_owned(),
            id,
        };
        let result = read.await;
        // Later arrivals read afresh; those already waiting get this answer.
        drop(landing);
        if let Ok(value) = &result {
            sender.send_replace(Some(value.clone()));
        }
        result
    }

    /// Ends the sharing of the read of `key` in flight, if any: called when a
    /// write of `key` completes, so that no later Get is answered from before it.
    pub fn forget(&self, key: &str) {
        self.reading.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}

impl<V: Clone + Send + Sync> Default for Flights<V> {
    fn default() -> Flights<V> {
        Flights::new()
    }
}

/// Removes a flight from the map when its read ends, unless a write already did
/// (and another flight of the key may have started since).
struct Landing<V> {
    reading: Arc<Mutex<HashMap<String, Flight<V>>>>,
    key: String,
    id: u64,
}

impl<V> Drop for Landing<V> {
    fn drop(&mut self) {
        let mut reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        if reading.get(&self.key).is_some_and(|flight| flight.id == self.id) {
            reading.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{sync::oneshot, task::JoinHandle};

    use super::*;

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// A read of "k" that answers `answer` once released, started and in flight.
    async fn leader(
        flights: &Arc<Flights<u32>>,
        answer: Result<u32, Error>,
    ) -> (JoinHandle<Result<u32, Error>>, oneshot::Sender<()>) {
        let (release, released) = oneshot::channel::<()>();
        let read = async move {
            let _ = released.await;
            answer
        };
        let leader = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.read("k", deadline(), read, || ()).await })
        };
        while !flights
            .reading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key("k")
        {
            tokio::task::yield_now().await;
        }
        (leader, release)
    }

    /// A read of "k" that would answer `own` by itself, started (and joined, if it can).
    async fn follower(flights: &Arc<Flights<u32>>, own: u32) -> JoinHandle<Result<u32, Error>> {
        let flights = flights.clone();
        let follower = tokio::spawn(async move { flights.read("k", deadline(), async move { Ok(own) }, || ()).await });
        tokio::task::yield_now().await;
        follower
    }

    #[tokio::test]
    async fn reads_share_the_one_in_flight_until_a_write_ends_the_sharing() {
        let flights = Arc::new(Flights::<u32>::new());
        let (leader, release) = leader(&flights, Ok(1)).await;
        let follower = follower(&flights, 2).await;

        // A write completed: a read that starts now does not join the old one.
        flights.forget("k");
        assert_eq!(
            flights.read("k", deadline(), async { Ok(3) }, || ()).await.ok(),
            Some(3)
        );

        let _ = release.send(());
        assert_eq!(leader.await.ok().and_then(Result::ok), Some(1));
        assert_eq!(
            follower.await.ok().and_then(Result::ok),
            Some(1),
            "it joined before the write"
        );
        assert!(
            !flights
                .reading
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key("k")
        );
    }

    #[tokio::test]
    async fn a_failed_read_is_not_shared_and_each_waiter_reads_for_itself() {
        let flights = Arc::new(Flights::<u32>::new());
        let (leader, release) = leader(&flights, Err(Error::Internal("failed".to_owned()))).await;
        let follower = follower(&flights, 2).await;
        let _ = release.send(());
        assert!(leader.await.ok().is_some_and(|result| result.is_err()));
        assert_eq!(follower.await.ok().and_then(Result::ok), Some(2));
    }
}
