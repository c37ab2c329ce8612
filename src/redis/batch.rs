//! Group commit of Redis calls: while a call is in flight on a lane (one Redis
//! Cluster slot; everything on one node), the requests that arrive queue, and go
//! together in the next call. A lone request goes at once; there is no timer.
//! Under load this divides the calls — their parsing, their system calls, a
//! script's setup — by the batch size, on both sides, and adds no latency a
//! request would not have waited anyway behind the call in flight.
//!
//! What a batch means is the [`Calls`]' business: the rate limiter's script
//! decides its requests one after the other in arrival order; cache reads are
//! independent.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{
    sync::oneshot,
    time::{Instant, timeout_at},
};

use crate::error::{Effect, Error};

/// Calls one lane may have in flight before requests queue for the next.
const CALLS_IN_FLIGHT: usize = 1;

/// What a batch sends: one call answering several requests.
pub trait Calls: Clone + Send + Sync + 'static {
    /// One request.
    type Request: Send + Sync + 'static;
    /// Its answer.
    type Answer: Send + 'static;

    /// One call answering `requests`, in order.
    fn call(
        &self,
        requests: &[&Self::Request],
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<Self::Answer>, Error>> + Send;

    /// What a request that timed out in the queue may have done: [`Effect::Write`]
    /// when its call may have been sent and applied, [`Effect::Read`] for reads.
    fn effect(&self) -> Effect;
}

/// Requests in flight and queued, per lane.
pub struct Batcher<C: Calls> {
    calls: C,
    lanes: Arc<Mutex<HashMap<u16, Lane<C>>>>,
}

impl<C: Calls> Clone for Batcher<C> {
    fn clone(&self) -> Batcher<C> {
        Batcher {
            calls: self.calls.clone(),
            lanes: self.lanes.clone(),
        }
    }
}

struct Lane<C: Calls> {
    in_flight: usize,
    queue: Vec<Queued<C>>,
}

struct Queued<C: Calls> {
    request: C::Request,
    deadline: Instant,
    answer: oneshot::Sender<Result<C::Answer, Error>>,
}

/// Hands a lane's turn on when its call ends, however it ends (a caller that
/// went away included): the queued requests go as the next call, or the lane
/// has one call fewer in flight.
struct Turn<'b, C: Calls> {
    batcher: &'b Batcher<C>,
    lane: u16,
}

impl<C: Calls> Drop for Turn<'_, C> {
    fn drop(&mut self) {
        self.batcher.hand_on(self.lane);
    }
}

impl<C: Calls> Batcher<C> {
    /// Batches of `calls`.
    pub fn new(calls: C) -> Batcher<C> {
        Batcher {
            calls,
            lanes: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Answers `request` on `lane`: at once if the lane is free, else with the next call.
    ///
    /// # Errors
    /// Those of the call; [`Error::Timeout`] when `deadline` passes in the queue.
    pub async fn run(&self, lane: u16, request: C::Request, deadline: Instant) -> Result<C::Answer, Error> {
        // Ok: this request goes now; Err: it waits for the next call.
        let turn = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let state = lanes.entry(lane).or_insert_with(|| Lane {
                in_flight: 0,
                queue: Vec::new(),
            });
            if state.in_flight < CALLS_IN_FLIGHT {
                state.in_flight += 1;
                Ok(request)
            } else {
                let (answer, answered) = oneshot::channel();
                state.queue.push(Queued {
                    request,
                    deadline,
                    answer,
                });
                Err(answered)
            }
        };
        match turn {
            Ok(mine) => {
                let _turn = Turn { batcher: self, lane };
                let mut answers = self.calls.call(&[&mine], deadline).await?;
                answers
                    .pop()
                    .ok_or_else(|| Error::Internal("a batched Redis call answered no request".to_owned()))
            }
            Err(answered) => {
                let started = Instant::now();
                match timeout_at(deadline, answered).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(_)) => Err(Error::Internal("a batched Redis call was dropped".to_owned())),
                    // It may be in a call already sent.
                    Err(_) => Err(Error::Timeout {
                        waited: started.elapsed(),
                        effect: self.calls.effect(),
                    }),
                }
            }
        }
    }

    /// Sends the requests queued on `lane` as one call (on a task of its own,
    /// which hands on again when it ends), or frees the lane's turn.
    fn hand_on(&self, lane: u16) {
        let batch: Vec<Queued<C>> = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(state) = lanes.get_mut(&lane) else {
                return;
            };
            // Requests whose caller stopped waiting are dropped before they are sent.
            state.queue.retain(|queued| !queued.answer.is_closed());
            if state.queue.is_empty() {
                state.in_flight = state.in_flight.saturating_sub(1);
                if state.in_flight == 0 {
                    lanes.remove(&lane);
                }
                return;
            }
            std::mem::take(&mut state.queue)
        };
        let batcher = self.clone();
        tokio::spawn(async move {
            let _turn = Turn {
                batcher: &batcher,
                lane,
            };
            let deadline = batch
                .iter()
                .map(|queued| queued.deadline)
                .max()
                .unwrap_or_else(Instant::now);
            let requests: Vec<&C::Request> = batch.iter().map(|queued| &queued.request).collect();
            let answers = batcher.calls.call(&requests, deadline).await;
            match answers {
                Ok(answers) if answers.len() == batch.len() => {
                    for (queued, answer) in batch.into_iter().zip(answers) {
                        let _ = queued.answer.send(Ok(answer));
                    }
                }
                Ok(_) => {
                    let error = Error::Internal("a batched Redis call answered too few requests".to_owned());
                    for queued in batch {
                        let _ = queued.answer.send(Err(error.clone()));
                    }
                }
                Err(error) => {
                    for queued in batch {
                        let _ = queued.answer.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}
