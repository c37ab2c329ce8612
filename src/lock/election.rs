//! `cachelock.election.v1.ElectionService`: leader election on the lock of the
//! election's name. A Campaign is a Hold that waits for as long as its stream is
//! open, so one leader at a time is the lock's guarantee, decided by
//! `lock_grant.lua`, and the term is the grant's fencing token. What this module
//! adds is the waiting without end, the term's record (its candidate and start),
//! and Observe: the leadership read again whenever a change is announced.

use std::{
    pin::Pin,
    time::{Duration, UNIX_EPOCH},
};

use futures_util::Stream;
use tokio::{sync::mpsc, time::Instant};
use tonic::{Request, Response, Status};

use super::{LockApi, acquire::WaitPlan, bounded_text, keeper, lapsed, safety_margin};
use crate::{
    auth::Caller,
    error::Error,
    ids::random_token,
    notices::Woken,
    pb::{
        election::{
            CampaignRequest, CampaignResponse, Elected, LeaderRequest, LeaderResponse, Leadership, NoLeader,
            ObserveRequest, ObserveResponse, ResignRequest, ResignResponse, campaign_response, election_service_server,
            observe_response,
        },
        lock::{AcquireRequest, HoldResponse, Lost, hold_response},
    },
    redis::{KeySpace, LockKeys},
    request::deadline,
    time::duration_to_proto,
};

/// Longest candidate text.
const MAX_CANDIDATE_BYTES: usize = 256;

/// How long a Campaign waits for its turn: as long as its stream is open (this
/// only keeps the wait's clock finite).
const CAMPAIGN_WAIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How often Observe reads the leadership again without a notice: a notice
/// can be lost (the subscriber reconnecting), and a leader whose instance died
/// is announced by nobody; its lease's end is watched for too.
const OBSERVE_RECHECK: Duration = Duration::from_secs(1);

/// The gRPC handlers of the election service, over the lock service's parts.
#[derive(Clone)]
pub struct ElectionApi {
    lock: LockApi,
}

impl ElectionApi {
    /// Elections on the locks of `lock`.
    pub fn new(lock: LockApi) -> ElectionApi {
        ElectionApi { lock }
    }

    /// After `term` ended (its lock released): fences it out, and tells the
    /// watchers. Best effort: a term whose fencing-out fails is fenced out
    /// anyway by the next leader's grant.
    async fn end_term(&self, keys: &LockKeys, term: u64) {
        let deadline = Instant::now() + self.lock.settings.operation_timeout;
        if let Err(error) = self.lock.store.fence_out(keys, term, deadline).await {
            tracing::debug!(%error, "could not fence out an ended term; the next leader's grant will");
        }
        self.lock.store.announce_change(keys, deadline).await;
    }

    /// Who leads the election of `keys` now: `None` when nobody does.
    async fn leadership(&self, space: &KeySpace, name: &str, keys: &LockKeys) -> Result<Option<Leadership>, Error> {
        let deadline = Instant::now() + self.lock.settings.operation_timeout;
        let holder = self.lock.store.describe(keys, deadline).await?;
        if holder.holders == 0 {
            return Ok(None);
        }
        let since = self
            .lock
            .store
            .term_since(&space.election(name), holder.fencing_token, deadline)
            .await?;
        Ok(Some(Leadership {
            candidate: holder.owner,
            term: holder.fencing_token,
            since: since.map(|millis| prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(millis))),
            ttl: holder.ttl.map(duration_to_proto),
        }))
    }
}

type CampaignStream = Pin<Box<dyn Stream<Item = Result<CampaignResponse, Status>> + Send>>;
type ObserveStream = Pin<Box<dyn Stream<Item = Result<ObserveResponse, Status>> + Send>>;

fn campaign_event(event: campaign_response::Event) -> Result<CampaignResponse, Status> {
    Ok(CampaignResponse { event: Some(event) })
}

#[tonic::async_trait]
impl election_service_server::ElectionService for ElectionApi {
    type CampaignStream = CampaignStream;

    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignStream>, Status> {
        let caller = Caller::of(&request)?.clone();
        caller.charge(request.get_ref(), 2)?;
        let request = request.into_inner();
        let candidate = bounded_text("candidate", &request.candidate, MAX_CANDIDATE_BYTES)?.to_owned();
        let acquire = AcquireRequest {
            name: request.name,
            ttl: request.ttl,
            owner: candidate.clone(),
            ..AcquireRequest::default()
        };
        let mut ask = self.lock.ask(&caller, &acquire, None)?;
        // In line for as long as the stream is open: a place of its own in the queue.
        ask.ticket = random_token()?;
        ask.plan = WaitPlan::new(CAMPAIGN_WAIT, None, self.lock.settings.operation_timeout);
        let lease = Duration::from_millis(ask.ttl.millis());
        let margin = safety_margin(request.safety_margin.as_ref(), lease)?;
        // The grant's token (a fresh one: no request id) is the term's resign token.
        let resign_token = ask.token.clone();
        let keys = ask.keys.clone();
        let record = caller.space.election(&acquire.name);
        let (mut holding, task) = self.lock.start_holding(&caller, ask, margin);
        let (events, stream) = mpsc::channel(keeper::EVENTS);
        let api = self.clone();
        tokio::spawn(async move {
            let mut elected = None;
            loop {
                let event = tokio::select! {
                    event = holding.recv() => event,
                    () = events.closed() => None,
                };
                let Some(event) = event else { break };
                let forward = match event {
                    Ok(HoldResponse {
                        event: Some(hold_response::Event::Acquired(acquired)),
                    }) => {
                        let term = acquired.fencing_token;
                        elected = Some(term);
                        api.lock.meter.record(|metrics| metrics.election_terms.inc());
                        let event = campaign_event(campaign_response::Event::Elected(Elected {
                            term,
                            fencing_token: term,
                            ttl: acquired.ttl,
                            certain_for: acquired.certain_for,
                            resign_token: resign_token.clone(),
                        }));
                        // The leader hears first, while its certain time is fresh; the
                        // record (what Leader reports as the term's start: the
                        // leadership itself is the lock's) and the observers' notice follow.
                        if events.send(event).await.is_err() {
                            break;
                        }
                        let deadline = Instant::now() + api.lock.settings.operation_timeout;
                        if let Err(error) = api.lock.store.record_term(&record, term, &candidate, deadline).await {
                            tracing::debug!(%error, "could not record a term's start; Leader reports it without");
                        }
                        api.lock.store.announce_change(&keys, deadline).await;
                        continue;
                    }
                    Ok(HoldResponse {
                        event: Some(hold_response::Event::Renewed(renewed)),
                    }) => campaign_event(campaign_response::Event::Renewed(renewed)),
                    Ok(HoldResponse {
                        event: Some(hold_response::Event::Lost(lost)),
                    }) => campaign_event(campaign_response::Event::Lost(lost)),
                    // A wait without end ends only when this instance stops.
                    Ok(HoldResponse {
                        event: Some(hold_response::Event::NotAcquired(_)),
                    }) => campaign_event(campaign_response::Event::Lost(Lost {
                        reason: "SHUTTING_DOWN".to_owned(),
                    })),
                    Ok(HoldResponse { event: None }) => continue,
                    Err(status) => Err(status),
                };
                if events.send(forward).await.is_err() {
                    break;
                }
            }
            // The keeper sees its stream closed and releases; once it has, the
            // term is fenced out (a leader that resigned cannot write as one) and
            // the watchers are told, so that they read the lock free (or the next leader).
            drop(holding);
            let _ = task.await;
            if let Some(term) = elected {
                api.end_term(&keys, term).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            stream,
        ))))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let deadline = deadline(request.metadata(), self.lock.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let keys = space.lock(self.lock.limits.key("name", &request.name)?);
        if request.resign_token.is_empty() {
            return Err(Error::invalid("resign_token", "must not be empty").into());
        }
        let token = self
            .lock
            .token(&request.resign_token)
            .map_err(|_| Error::invalid("resign_token", "is not a resign token this service issued"))?;
        let term = self.lock.store.fencing_token_of(&keys, token, deadline).await?;
        if let Err(lapse) = self.lock.store.release(&keys, token, "", deadline).await? {
            return Err(lapsed(lapse).into());
        }
        // A token released already (this Resign sent again) has no term left to end.
        if let Some(term) = term {
            self.end_term(&keys, term).await;
        }
        Ok(Response::new(ResignResponse {}))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        // The deadline is checked here; each read has the operation timeout.
        deadline(request.metadata(), self.lock.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let name = request.into_inner().name;
        let keys = space.lock(self.lock.limits.key("name", &name)?);
        let leader = self.leadership(&space, &name, &keys).await?;
        Ok(Response::new(LeaderResponse {
            elected: leader.is_some(),
            leader,
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, request: Request<ObserveRequest>) -> Result<Response<ObserveStream>, Status> {
        let space = Caller::of(&request)?.space.clone();
        let name = request.into_inner().name;
        let keys = space.lock(self.lock.limits.key("name", &name)?);
        // An observer counts as a waiter of the lock: bounded as they are.
        let mut registration = self
            .lock
            .acquirer
            .notices()
            .register(keys.released.clone(), random_token()?)?;
        let (events, stream) = mpsc::channel(keeper::EVENTS);
        let api = self.clone();
        tokio::spawn(async move {
            // What the observer was last told: a leader's term, or nobody; None before the first event.
            let mut told: Option<Option<u64>> = None;
            let mut last_term = 0;
            loop {
                // SAFETY (no lost change): marked before the read, so a change
                // announced after the read wakes the wait below at once.
                registration.mark_seen();
                let mut nap = OBSERVE_RECHECK;
                match api.leadership(&space, &name, &keys).await {
                    Ok(leader) => {
                        // The lease's end is a change nobody announces when the
                        // leader's instance died: look again then.
                        if let Some(ttl) = leader
                            .as_ref()
                            .and_then(|leader| leader.ttl)
                            .and_then(|ttl| Duration::try_from(ttl).ok())
                        {
                            nap = nap.min(ttl + Duration::from_millis(5));
                        }
                        let now = leader.as_ref().map(|leader| leader.term);
                        if told != Some(now) {
                            let event = match leader {
                                Some(leader) => {
                                    last_term = leader.term;
                                    observe_response::Event::Leader(leader)
                                }
                                None => observe_response::Event::NoLeader(NoLeader { last_term }),
                            };
                            if events.send(Ok(ObserveResponse { event: Some(event) })).await.is_err() {
                                return;
                            }
                            told = Some(now);
                        }
                    }
                    // Redis unreachable for now: the observer hears of the next
                    // change once it is again; the stream stays open.
                    Err(error) => tracing::debug!(%error, "an election's observer could not read it; trying again"),
                }
                let woken = tokio::select! {
                    woken = api.lock.acquirer.notices().wait(Some(&mut registration), nap, &api.lock.draining) => woken,
                    () = events.closed() => return,
                };
                // The stream ends with the instance, as Subscribe's: observe again elsewhere.
                if woken == Woken::Draining {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            stream,
        ))))
    }
}
