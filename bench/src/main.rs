//! `cachelock-bench`: a closed-loop load generator for every hot RPC, with the
//! same Redis work done directly through redis-rs as a baseline, and a count of
//! the Redis commands each RPC sends.
//!
//! With no `--addr` it starts everything itself: a private redis-server and the
//! `cachelock` binary next to this one, as a separate process. With `--addr` and
//! `--redis-url` it measures a service that is already running.

#![forbid(unsafe_code)]

mod compare;
mod election;
mod fanout;
mod measure;
mod scenario;
mod setup;
mod sink;
mod stampede;
mod worst_case;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use crate::{
    compare::compare,
    election::election_handover,
    fanout::pubsub_fanout,
    measure::{Measured, commands_per_request, print_header, print_row, run},
    scenario::{Clients, Conn, Scenario, Target, Token, prepare},
    setup::{RemovedOnDrop, SecureService, Setup, bench_rules_path, plain_channels, serve_bare, set_up},
    stampede::stampede,
    worst_case::batch_worst_case,
};
use cachelock::{DEFAULT_TENANT, Keys};
use clap::Parser;
use tokio::process::Child;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

/// The allocator the service uses (see its `main.rs`), here too: for the bare
/// tonic server this binary starts, so that the floor is compared like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load-tests a cachelock service and compares it with Redis itself.
#[derive(Debug, Parser)]
#[command(name = "cachelock-bench", version)]
struct Args {
    /// The service to measure; unset: start a private redis-server and cachelock.
    #[arg(long, requires = "redis_url")]
    addr: Option<String>,
    /// The Redis the service uses (for the direct baseline and the command count).
    #[arg(long)]
    redis_url: Option<String>,
    /// The key prefix the service uses.
    #[arg(long, default_value = "cachelock")]
    key_prefix: String,
    /// Scenarios to run, comma-separated; all when unset.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Requests in flight (closed loop), comma-separated for several runs.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    concurrency: Vec<usize>,
    /// HTTP/2 connections to the service.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Warm-up before each measurement.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Length of each measurement.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Keys (and session, lock names) the requests spread over.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Requests sent one at a time under MONITOR to count Redis commands per request.
    #[arg(long, default_value_t = 200)]
    count_requests: usize,
    /// Skip the direct redis-rs baseline.
    #[arg(long)]
    no_direct: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Also measure a second service with TLS and an auth file, in the same run: a directory
    /// holding ca.pem, server.pem and server.key for the name localhost (see BENCHMARKS.md).
    #[arg(long)]
    secure: Option<PathBuf>,
    /// Also measure a second service with --metrics-listen off (no metrics kept), in the
    /// same run: the cost of the metrics on the hot path.
    #[arg(long)]
    compare_metrics_off: bool,
    /// Also measure a second service started from this cachelock binary (say, the build
    /// before a change) on the same Redis, in the same run: rows `baseline`, whose
    /// rps/dir and p50/dir columns are the baseline's figures divided by this build's.
    #[arg(long, conflicts_with_all = ["addr", "compare_metrics_off", "cluster"])]
    compare_binary: Option<PathBuf>,
    /// Also measure a second service, this build exporting every span (--otlp-endpoint,
    /// sampled at 1) to an OTLP collector the tool runs and that discards them, in the same
    /// run: rows `traced`, whose rps/dir and p50/dir columns are its figures divided by the
    /// first service's (which exports none): what traces cost.
    #[arg(long, conflicts_with_all = ["addr", "compare_metrics_off", "compare_binary", "cluster"])]
    compare_traces: bool,
    /// Run the service on a private Redis Cluster (3 primaries, 3 replicas; needs
    /// redis-server and redis-cli) instead of one redis-server. There is no direct
    /// baseline or command count then.
    #[arg(long, conflicts_with_all = ["addr", "secure", "compare_metrics_off", "batch_worst_case"])]
    cluster: bool,
    /// Instead of load: run every batch RPC once at the service's default limits and print
    /// how long Redis spent on it (from SLOWLOG), the worst a single request can cost Redis.
    #[arg(long)]
    batch_worst_case: bool,
    /// Instead of the scenarios: open this many Subscribe streams on one topic, publish to it
    /// from each --concurrency publishers in turn, and report messages delivered per second.
    #[arg(long, conflicts_with_all = ["batch_worst_case", "secure", "compare_metrics_off"])]
    pubsub_fanout: Option<usize>,
    /// Instead of the scenarios: this many callers at once on one key. First they Get one
    /// hot key for --duration (Redis reads per Get: what coalescing saves); then, in rounds,
    /// they find a missing key whose fill takes --fill-time, once with Get (each reads the
    /// source itself) and once with GetOrLease (one lease): source reads and time to value.
    #[arg(long, conflicts_with_all = ["batch_worst_case", "secure", "compare_metrics_off", "pubsub_fanout"])]
    stampede: Option<usize>,
    /// Instead of every scenario once: these two scenarios, interleaved A B A B for --rounds
    /// rounds at each concurrency (machine noise then hits both alike), then their totals
    /// and the ratio B / A (in B's total row, in the rps/dir and p50/dir columns; JSON:
    /// throughput_vs_direct, p50_vs_direct).
    #[arg(long, value_enum, value_delimiter = ',', num_args = 1, conflicts_with_all = ["stampede", "pubsub_fanout", "batch_worst_case"])]
    compare: Vec<Scenario>,
    /// Rounds of --compare.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// An extra flag for the service the tool starts, such as --service-arg=--worker-threads=1
    /// (repeatable): to measure a setting.
    #[arg(long, allow_hyphen_values = true)]
    service_arg: Vec<String>,
    /// Runs the bare tonic server of bare-floor on this address (the tool starts it itself).
    #[arg(long, hide = true)]
    serve_bare: Option<SocketAddr>,
    /// Instead of the scenarios: this many rounds of an election whose leader dies, its
    /// process (its Campaign stream closes) and then its cachelock instance (SIGKILL: the
    /// lease runs out), each timed from the death to the next candidate's election.
    #[arg(long, conflicts_with_all = ["batch_worst_case", "secure", "compare_metrics_off", "pubsub_fanout", "stampede", "cluster", "addr"])]
    election_handover: Option<usize>,
    /// The leader's lease in --election-handover.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    election_ttl: Duration,
    /// How long the source of truth takes to answer a fill in --stampede.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    fill_time: Duration,
}

/// Connects to what `setup` started (or names), and runs what `args` asks for.
async fn bench(args: Args) -> Result<(), String> {
    let setup = set_up(&args).await?;
    let redis_client = redis::Client::open(setup.redis_url.as_str()).map_err(|e| e.to_string())?;
    let mut clients = connect(&args, &setup, &redis_client).await?;
    let result = if let Some(subscribers) = args.pubsub_fanout {
        pubsub_fanout(&clients, subscribers, &args).await
    } else if let Some(rounds) = args.election_handover {
        election_handover(&clients, &setup, rounds, &args).await
    } else if let Some(callers) = args.stampede {
        stampede(&clients, callers, &args).await
    } else if args.batch_worst_case {
        batch_worst_case(&clients, &redis_client).await
    } else if !args.compare.is_empty() {
        compare(&mut clients, &args).await
    } else {
        every_scenario(&args, &mut clients, &redis_client).await
    };
    if let Some(sink) = &setup.sink {
        // The exporter sends in batches, every few seconds (OTEL_BSP_SCHEDULE_DELAY).
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        while sink.spans() == 0 && tokio::time::Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("the OTLP sink received {} spans from the traced service", sink.spans());
    }
    if let Some(mut service) = setup.service {
        let _ = service.kill().await;
    }
    result
}

/// The clients of a run: channels to every service `setup` has, and Redis.
async fn connect(args: &Args, setup: &Setup, redis_client: &redis::Client) -> Result<Clients, String> {
    let redis = redis_client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let addr: SocketAddr = setup.addr.parse().map_err(|e| format!("--addr: {e}"))?;
    let secure_channels = match &setup.secure {
        Some(secure) => secure_channels(secure, args.connections).await?,
        None => Vec::new(),
    };
    let other_channels = match &setup.other {
        Some((other, _)) => plain_channels(other, args.connections).await?,
        None => Vec::new(),
    };
    let bare_channels = match &setup.bare {
        Some((bare, _)) => plain_channels(bare, args.connections).await?,
        None => Vec::new(),
    };
    Ok(Clients {
        channels: plain_channels(&addr.to_string(), args.connections).await?,
        secure_channels,
        other_channels,
        bare_channels,
        service_pid: setup.service.as_ref().and_then(Child::id),
        bare_pid: setup.bare.as_ref().and_then(|(_, process)| process.id()),
        redis,
        keys: Keys::new(&args.key_prefix).space(DEFAULT_TENANT),
        sessions: Arc::new(Vec::new()),
        key_space: args.keys.max(1),
    })
}

/// `connections` TLS connections to the `--secure` service, each with its token.
async fn secure_channels(secure: &SecureService, connections: usize) -> Result<Vec<Conn>, String> {
    let token: MetadataValue<Ascii> = format!("Bearer {}", secure.token).parse().map_err(|_| "a bad token")?;
    let mut channels = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&secure.ca))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{}", secure.addr))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", secure.addr))?;
        channels.push(InterceptedService::new(channel, Token(Some(token.clone()))));
    }
    Ok(channels)
}

/// Every scenario asked for, at every concurrency: the service, then each other
/// target there is, each row with its ratios.
async fn every_scenario(args: &Args, clients: &mut Clients, redis_client: &redis::Client) -> Result<(), String> {
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    if !args.json {
        print_header();
    }
    for scenario in scenarios {
        if scenario == Scenario::BareFloor && clients.bare_channels.is_empty() {
            continue;
        }
        prepare(clients, scenario).await?;
        // On a Cluster one node sees only part of the commands.
        let commands = if args.cluster {
            f64::NAN
        } else {
            commands_per_request(clients, redis_client, scenario, args.count_requests).await
        };
        for &concurrency in &args.concurrency {
            let concurrency = concurrency.max(1);
            let measure = async |target| run(clients, scenario, target, concurrency, args.warmup, args.duration).await;
            // Measured in this order (the service, the other services, Redis alone), then printed.
            let service = measure(Target::Service).await;
            let mut others = Vec::new();
            for (target, present) in [
                (Target::Secure, !clients.secure_channels.is_empty()),
                (Target::Other, !clients.other_channels.is_empty()),
            ] {
                if present {
                    others.push((target, measure(target).await));
                }
            }
            let direct = if scenario.has_direct() && !args.no_direct && !args.cluster {
                Some(measure(Target::Direct).await)
            } else {
                None
            };
            let ratios = direct.as_ref().map(|direct| {
                (
                    service.per_second() / direct.per_second(),
                    service.micros(0.5) / direct.micros(0.5),
                )
            });
            let row =
                |target, measured: &Measured, extra| print_row(args, scenario, concurrency, target, measured, extra);
            row(
                Target::Service,
                &service,
                (commands, ratios.map(|r| r.0), ratios.map(|r| r.1)),
            );
            for (target, measured) in &others {
                let ratios = (
                    measured.per_second() / service.per_second(),
                    measured.micros(0.5) / service.micros(0.5),
                );
                row(*target, measured, (f64::NAN, Some(ratios.0), Some(ratios.1)));
            }
            if let Some(direct) = &direct {
                row(Target::Direct, direct, (f64::NAN, None, None));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _rules = RemovedOnDrop(bench_rules_path());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cachelock-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.serve_bare {
        return match runtime.block_on(serve_bare(addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cachelock-bench: the bare server: {error}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cachelock-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
