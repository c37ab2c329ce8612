//! cachelock's test kit: real redis-servers (one node, a Cluster, a Sentinel
//! group) that the tests start themselves on free loopback ports, the service
//! in-process, fault injectors, captured logs, certificates and auth files,
//! directories mounted as Kubernetes mounts them, and
//! the requests every test builds ([`requests`]). Used by the integration tests
//! and the benchmark.
//!
//! A machine without redis-server fails with a message saying how to install
//! it; nothing here ever skips or uses a Redis someone left running.

#![forbid(unsafe_code)]

mod faults;
mod logs;
mod mounted;
mod redis;
pub mod requests;
mod security;
mod service;
mod status;
mod topology;

use std::time::Duration;

pub use faults::FaultyLink;
pub use logs::CapturedLogs;
pub use mounted::MountedVolume;
pub use redis::{TestRedis, hung_redis};
pub use security::{Bearer, TestAuthFile, TestCa, auth_client, sha256_hex, tls_channel};
pub use service::{TEST_ARGS, TestService, redis_and_service};
pub use status::{as_millis, assert_invalid, assert_reason, millis};
pub use topology::{
    Backend, Direct, FORMING, MASTER, Mode, Node, TestCluster, TestSentinels, cluster_port, eventually,
    eventually_within, holds_within,
};

/// How long a test waits for something that should happen within a second or two.
pub const PATIENCE: Duration = Duration::from_secs(15);
