//! The `cachelock` binary: parses the configuration, sets up tracing, and runs
//! the server until SIGTERM or SIGINT (or runs `cachelock probe`).

#![forbid(unsafe_code)]

/// mimalloc instead of the system allocator: every RPC allocates and frees dozens
/// of small buffers, and glibc's malloc took 13% of the server's CPU per Check.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use cachelock::{
    Cli, Command, Config, ConfigError, Listeners, LogFormat, ProbeArgs, Rules, Traces, log_filter, probe, trace_filter,
};
use clap::Parser;
use std::io::IsTerminal;

use futures_util::{Stream, StreamExt, stream};
use tokio::{
    runtime::Runtime,
    signal::unix::{SignalKind, signal},
};
use tokio_stream::wrappers::SignalStream;
use tracing::{error, info, warn};
use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if error.use_stderr() => {
            eprintln!("cachelock: {}", ConfigError::from(error));
            return ExitCode::from(2);
        }
        Err(help_or_version) => {
            let _ = help_or_version.print();
            return ExitCode::SUCCESS;
        }
    };
    match cli.command {
        Some(Command::Probe(args)) => run_probe(&args),
        Some(Command::CheckRlsConfig(args)) => check_rls_config(&args.path),
        Some(Command::Serve(config)) => run_server(*config),
        None => run_server(cli.serve),
    }
}

/// Prints the rules at `path`, or what is wrong with them.
fn check_rls_config(path: &std::path::Path) -> ExitCode {
    match Rules::load(path) {
        Ok(rules) => {
            for file in rules.files() {
                println!("# {}", file.display());
            }
            print!("{}", rules.describe());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cachelock: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A multi-threaded runtime with `worker_threads` workers (one per core when unset).
fn runtime(worker_threads: Option<usize>) -> Option<Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    match builder.build() {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("cachelock: cannot start the async runtime: {error}");
            None
        }
    }
}

fn run_server(config: Config) -> ExitCode {
    let config = match config.validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cachelock: {error}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime(config.worker_threads) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        // Inside the runtime: the OTLP exporter's gRPC channel lives there.
        let traces = match Traces::start(config.otlp_endpoint.as_deref(), config.otlp_sample_ratio) {
            Ok(traces) => traces,
            Err(message) => {
                eprintln!("cachelock: {message}");
                return ExitCode::from(2);
            }
        };
        init_tracing(config.log_format, traces.as_ref());
        let code = serve(config).await;
        if let Some(traces) = traces {
            traces.shutdown();
        }
        code
    })
}

/// Serves until SIGTERM or SIGINT; the exit status says how it ended.
async fn serve(config: Config) -> ExitCode {
    let signals = shutdown_signals();
    let listeners = match Listeners::bind(&config).await {
        Ok(listeners) => listeners,
        Err(error) => {
            error!(%error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match cachelock::run_until_signals(listeners, config, signals).await {
        Ok(()) => {
            info!("cachelock stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            error!(%error, "cachelock stopped");
            ExitCode::from(error.exit_code())
        }
    }
}

fn run_probe(args: &ProbeArgs) -> ExitCode {
    let Some(runtime) = runtime(Some(1)) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(probe(args)) {
        Ok(status) => {
            println!("{}", status.as_str_name());
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("cachelock probe: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr as RUST_LOG filters them and, with `traces`, cachelock's spans
/// to the OTLP exporter, each layer with its own filter.
fn init_tracing(format: LogFormat, traces: Option<&Traces>) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter = log_filter(&directives);
    // Colours only for a person at a terminal, and never when NO_COLOR is set.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        // `message` at the top level, beside level, target and timestamp.
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    };
    let spans = traces.map(|traces| {
        tracing_opentelemetry::layer()
            .with_tracer(traces.tracer())
            .with_filter(trace_filter())
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .init();
}

/// SIGINT and SIGTERM (the signal Kubernetes and Docker send), each time one
/// arrives: the first starts the shutdown, the next ones hurry it. Registered at
/// once, so that a signal arriving during start-up is not lost to the default
/// action (which would skip the drain and leave a development Redis behind).
fn shutdown_signals() -> impl Stream<Item = ()> {
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(signal) => SignalStream::new(signal)
            .map(move |()| info!("{name} received"))
            .boxed(),
        Err(error) => {
            warn!(%error, "cannot listen for {name}");
            stream::pending().boxed()
        }
    };
    stream::select(
        listen(SignalKind::terminate(), "SIGTERM"),
        listen(SignalKind::interrupt(), "SIGINT"),
    )
}
