//! Leader election: a [`Leadership`] the server keeps while you lead, and who
//! leads now, once or as every change comes.

use std::{
    fmt,
    ops::Deref,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Streaming};

use crate::{
    Client, Error, Lease, Reason,
    client::Idempotent,
    lock::{Keeping, Kept},
    pb::election::{
        self as pb, campaign_response::Event as CampaignEvent, election_service_client::ElectionServiceClient,
        observe_response::Event as ObserveEvent,
    },
    time::{duration_from, time_from, to_proto},
};

/// How to campaign.
#[derive(Clone, Debug)]
pub struct CampaignOptions {
    /// Who is asking, shown by Leader and Observe: a host or pod name.
    pub candidate: String,
    /// The leader's lease, renewed by the server every third of it.
    pub ttl: Duration,
    /// How long before the lease could end the server says it is lost, at the
    /// latest: the time the leader needs to stop. `None`: a tenth of `ttl`.
    pub safety_margin: Option<Duration>,
}

impl CampaignOptions {
    /// `candidate` campaigning with a lease of `ttl`.
    pub fn new(candidate: impl Into<String>, ttl: Duration) -> CampaignOptions {
        CampaignOptions {
            candidate: candidate.into(),
            ttl,
            safety_margin: None,
        }
    }
}

/// A term of leadership, kept by the server while this value lives; dropped,
/// it resigns (and the server fences the term out). It is the lease of the
/// election's lock, and derefs to it: [`Lease::lost`] resolves at the server's
/// `lost`, a broken stream, or the certain time running out with no renewal;
/// [`Lease::run`] stops the leader's work then; [`Lease::fence`] fences its writes.
pub struct Leadership {
    lease: Lease,
    resign_token: String,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("name", &self.lease.name())
            .field("term", &self.term())
            .field("resign_token", &"<secret>")
            .field("lost", &self.lease.lost_reason())
            .finish()
    }
}

impl Deref for Leadership {
    type Target = Lease;

    fn deref(&self) -> &Lease {
        &self.lease
    }
}

impl Leadership {
    /// The term: larger than every earlier one of this election (the fencing
    /// token of its lock).
    pub fn term(&self) -> u64 {
        self.lease.fencing_token()
    }

    /// The secret that lets [`Elections::resign`] end this term from elsewhere.
    pub fn resign_token(&self) -> &str {
        &self.resign_token
    }

    /// Resigns now (dropping the leadership does the same).
    pub fn resign(self) {}
}

/// Who leads, from [`Elections::leader`] and [`Observation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leader's candidate text.
    pub candidate: String,
    /// Its term.
    pub term: u64,
    /// When it was elected, by the service's clock, when known.
    pub since: Option<SystemTime>,
    /// Its lease left, when read.
    pub ttl: Duration,
}

impl Leader {
    fn from_proto(leadership: pb::Leadership) -> Leader {
        Leader {
            candidate: leadership.candidate,
            term: leadership.term,
            since: time_from(leadership.since),
            ttl: duration_from(leadership.ttl),
        }
    }
}

/// A change of an election, from [`Observation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// This leader leads.
    Leader(Leader),
    /// Nobody leads; the last term known to have ended (0 when unknown).
    NoLeader {
        /// The last term known to have ended.
        last_term: u64,
    },
}

/// Every change of an election, as a `Stream`; dropping it stops observing.
pub struct Observation {
    stream: Streaming<pb::ObserveResponse>,
}

impl Stream for Observation {
    type Item = Result<Change, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let event = match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(Err(Error::from(status)))),
                Poll::Ready(Some(Ok(answer))) => answer.event,
            };
            match event {
                Some(ObserveEvent::Leader(leader)) => {
                    return Poll::Ready(Some(Ok(Change::Leader(Leader::from_proto(leader)))));
                }
                Some(ObserveEvent::NoLeader(none)) => {
                    return Poll::Ready(Some(Ok(Change::NoLeader {
                        last_term: none.last_term,
                    })));
                }
                None => continue,
            }
        }
    }
}

/// The election calls. Get one from [`Client::elections`].
#[derive(Clone, Debug)]
pub struct Elections {
    client: Client,
}

impl Client {
    /// Leader election.
    pub fn elections(&self) -> Elections {
        Elections { client: self.clone() }
    }
}

impl Elections {
    fn stub(&self) -> ElectionServiceClient<tonic::transport::Channel> {
        ElectionServiceClient::new(self.client.channel.clone())
    }

    /// Stands for the leadership of `name`, waiting in line for as long as it
    /// takes (drop the future to give up), and returns it once elected.
    ///
    /// # Errors
    /// Any [`Error`] the server answers with; [`Reason::LeaseLost`] when the
    /// campaign ended before it was elected (the instance stopping, say).
    pub async fn campaign(&self, name: &str, options: &CampaignOptions) -> Result<Leadership, Error> {
        let request = pb::CampaignRequest {
            name: name.to_owned(),
            candidate: options.candidate.clone(),
            ttl: Some(to_proto(options.ttl)),
            safety_margin: options.safety_margin.map(to_proto),
        };
        let mut stream = self
            .stub()
            .campaign(self.client.request(request, None))
            .await?
            .into_inner();
        let elected = loop {
            match stream.message().await? {
                Some(pb::CampaignResponse {
                    event: Some(CampaignEvent::Elected(elected)),
                }) => break elected,
                Some(pb::CampaignResponse {
                    event: Some(CampaignEvent::Lost(lost)),
                }) => {
                    return Err(crate::lock::lost_error(name, &lost.reason));
                }
                Some(_) => continue,
                None => {
                    return Err(Error::local(
                        Code::Unavailable,
                        Reason::None,
                        "the Campaign stream ended before an election",
                    ));
                }
            }
        };
        let events = stream.map(|message| {
            message.map(|response| match response.event {
                Some(CampaignEvent::Renewed(renewed)) => Kept::Renewed(duration_from(renewed.certain_for)),
                Some(CampaignEvent::Lost(lost)) => Kept::Lost(lost.reason),
                _ => Kept::Other,
            })
        });
        Ok(Leadership {
            lease: Lease::kept(
                name,
                elected.term,
                Keeping::start(events, duration_from(elected.certain_for)),
            ),
            resign_token: elected.resign_token,
        })
    }

    /// Ends the term of `resign_token` from anywhere (see [`Leadership::resign_token`]).
    ///
    /// # Errors
    /// [`Reason::LeaseLost`] or [`Reason::LockNotHeld`] when the term ended otherwise.
    pub async fn resign(&self, name: &str, resign_token: &str) -> Result<(), Error> {
        let request = pb::ResignRequest {
            name: name.to_owned(),
            resign_token: resign_token.to_owned(),
        };
        self.client
            .unary("election.Resign", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.resign(r).await }
            })
            .await
            .map(|_| ())
    }

    /// Who leads `name` now, if anyone.
    ///
    /// # Errors
    /// Any [`Error`] the call ends with, after the retries the policy allows.
    pub async fn leader(&self, name: &str) -> Result<Option<Leader>, Error> {
        let request = pb::LeaderRequest { name: name.to_owned() };
        let answer = self
            .client
            .unary("election.Leader", Idempotent::Yes, Duration::ZERO, request, |r| {
                let mut stub = self.stub();
                async move { stub.leader(r).await }
            })
            .await?;
        Ok(answer.leader.map(Leader::from_proto))
    }

    /// Every change of `name`: who leads when it opens, then each new leader
    /// and each moment nobody leads.
    ///
    /// # Errors
    /// Any [`Error`] the server answers with.
    pub async fn observe(&self, name: &str) -> Result<Observation, Error> {
        let request = pb::ObserveRequest { name: name.to_owned() };
        let stream = tokio::time::timeout_at(
            self.client.deadline(Duration::ZERO),
            self.stub().observe(self.client.request(request, None)),
        )
        .await
        .map_err(|_| Error::deadline("election.Observe"))??
        .into_inner();
        Ok(Observation { stream })
    }
}
