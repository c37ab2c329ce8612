//! The command line around the server's settings: the subcommands, `cachelock
//! probe`'s flags, and the small value types of [`super::Config`]'s flags.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::Config;

/// The command line: `cachelock [serve] [settings]` or `cachelock probe --addr HOST:PORT`.
#[derive(Debug, Parser)]
#[command(
    name = "cachelock",
    version,
    about,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
pub struct Cli {
    /// What to run; the server when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The server's settings when no subcommand is given.
    #[command(flatten)]
    pub serve: Config,
}

/// The subcommands of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (the default).
    Serve(Box<Config>),
    /// Ask a running server's health service whether it is SERVING; exit 0 if so, 1 if not.
    Probe(ProbeArgs),
    /// Validate Envoy rate-limit rules (a file or a directory) and print the rules understood;
    /// exit 0 if valid, 1 if not.
    CheckRlsConfig(CheckRlsConfigArgs),
}

/// Settings of `cachelock check-rls-config`.
#[derive(Debug, Clone, Args)]
pub struct CheckRlsConfigArgs {
    /// The file, or directory of files, to check.
    pub path: PathBuf,
}

/// Settings of `cachelock probe`.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The server to ask, as HOST:PORT.
    #[arg(long, env = "CACHELOCK_PROBE_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// The health service name to check; empty for the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Connect with TLS (the server runs with --tls-cert).
    #[arg(long, env = "CACHELOCK_PROBE_TLS")]
    pub tls: bool,
    /// PEM CAs to verify the server's certificate with; unset: the system's trust store.
    #[arg(long, env = "CACHELOCK_PROBE_TLS_CA", requires = "tls")]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry; unset: the host of --addr.
    #[arg(long, env = "CACHELOCK_PROBE_TLS_SERVER_NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
    /// PEM client certificate, when the server requires one (--tls-client-ca).
    #[arg(long, env = "CACHELOCK_PROBE_TLS_CERT", requires_all = ["tls", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CACHELOCK_PROBE_TLS_KEY", requires_all = ["tls", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
}

/// Where the operators' HTTP listener listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

pub(super) fn parse_metrics_listen(value: &str) -> Result<MetricsListen, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(MetricsListen(None));
    }
    value
        .parse::<SocketAddr>()
        .map(|addr| MetricsListen(Some(addr)))
        .map_err(|_| format!("{value:?} is neither HOST:PORT (an IP address and a port) nor off"))
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What a rate-limit check answers when Redis cannot decide in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutagePolicy {
    /// Allow: availability over strictness.
    FailOpen,
    /// Deny: strictness over availability.
    FailClosed,
}
