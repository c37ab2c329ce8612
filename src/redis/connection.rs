//! The connection a request is sent on: one multiplexed connection to a single
//! Redis (standalone, or the primary a Sentinel named), or a Redis Cluster
//! connection that routes each command to the primary owning its keys' slot.

use redis::{
    Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
};

use super::scripts::Invocation;
use crate::error::server_code;

/// A connection to Redis; clones share it.
#[derive(Clone)]
pub enum Connection {
    /// One node.
    Single(MultiplexedConnection),
    /// A whole Cluster: redis-rs keeps one multiplexed connection per node,
    /// follows MOVED and ASK, and refreshes the slot map after a failover.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// What is sent: one command, one script call, or one pipeline.
#[derive(Clone, Copy)]
pub enum Request<'a> {
    /// A plain command.
    Command(&'a Cmd),
    /// A Lua script (EVALSHA, loading it again on NOSCRIPT).
    Script(&'a Invocation),
    /// Several commands in one round trip (on a Cluster, all in one slot).
    Pipeline(&'a Pipeline),
    /// A Lua script followed, in the same round trip and on the same node, by
    /// `WAIT replicas timeout`; the reply is the script's and the count of
    /// replicas that acknowledged every write so far on this connection.
    ScriptThenWait {
        /// The script call.
        script: &'a Invocation,
        /// How many replicas to wait for.
        replicas: u32,
        /// WAIT blocks for half the time left until this instant, reckoned at
        /// each send (a resend after a failover has less): the other half is
        /// for the answer, or for releasing a grant too few replicas have.
        deadline: tokio::time::Instant,
    },
    /// A command for one node of a Cluster, by address (on a single node: that node).
    AtNode {
        /// The command.
        command: &'a Cmd,
        /// The node's host, as the Cluster names it.
        host: &'a str,
        /// The node's port.
        port: u16,
    },
}

impl<'a> From<&'a Cmd> for Request<'a> {
    fn from(command: &'a Cmd) -> Request<'a> {
        Request::Command(command)
    }
}

impl<'a> From<&'a Invocation> for Request<'a> {
    fn from(script: &'a Invocation) -> Request<'a> {
        Request::Script(script)
    }
}

impl<'a> From<&'a Pipeline> for Request<'a> {
    fn from(pipeline: &'a Pipeline) -> Request<'a> {
        Request::Pipeline(pipeline)
    }
}

impl Request<'_> {
    /// Sends it once. A script Redis does not know (NOSCRIPT: after a restart, a
    /// `SCRIPT FLUSH` or a failover to a node that never loaded it) is loaded and
    /// called again: Redis refused it without running it, so that is safe for any script.
    pub(super) async fn send<T: FromRedisValue>(self, connection: &mut Connection) -> RedisResult<T> {
        match self {
            Request::Command(command) => command.query_async(connection).await,
            Request::Pipeline(pipeline) => pipeline.query_async(connection).await,
            Request::AtNode { command, host, port } => match connection {
                Connection::Single(_) => command.query_async(connection).await,
                Connection::Cluster(cluster) => {
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.to_owned(),
                        port,
                    });
                    let value = cluster.route_command(command.clone(), route).await?;
                    Ok(T::from_redis_value(value)?)
                }
            },
            Request::ScriptThenWait {
                script,
                replicas,
                deadline,
            } => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now()) / 2;
                let mut call = redis::pipe();
                call.add_command(script.evalsha())
                    .cmd("WAIT")
                    .arg(replicas)
                    // At least 1 ms: 0 would block forever.
                    .arg(crate::time::millis(left).max(1));
                match call.query_async(connection).await {
                    Err(error) if server_code(&error).as_deref() == Some("NOSCRIPT") => {
                        let _: String = script.script().load().query_async(connection).await?;
                        call.query_async(connection).await
                    }
                    reply => reply,
                }
            }
            Request::Script(invocation) => {
                let call = invocation.evalsha();
                match call.query_async(connection).await {
                    Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        let _: String = invocation.script().load().query_async(connection).await?;
                        call.query_async(connection).await
                    }
                    reply => reply,
                }
            }
        }
    }

    /// Sends it once to the Cluster node at `host:port`, as the answer to an ASK
    /// redirection: `ASKING` first, so that the node serves a slot it is
    /// importing. `None` for a pipeline, which cannot be redirected this way.
    pub(super) async fn send_asking<T: FromRedisValue>(
        self,
        connection: &mut ClusterConnection,
        host: &str,
        port: u16,
    ) -> Option<RedisResult<T>> {
        let command = match self {
            Request::Command(command) => command.clone(),
            Request::Script(invocation) => invocation.evalsha(),
            Request::Pipeline(_) | Request::ScriptThenWait { .. } | Request::AtNode { .. } => return None,
        };
        let mut asking = redis::pipe();
        asking.cmd("ASKING").add_command(command);
        let route = SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        };
        let reply = connection
            .route_pipeline(asking, 1, 1, route)
            .await
            .and_then(|mut values| {
                let value = values.pop().unwrap_or(Value::Nil);
                Ok(T::from_redis_value(value.extract_error()?)?)
            });
        Some(reply)
    }
}
