//! The `cachelock` binary: parses the configuration, sets up tracing, and runs
//! the server until SIGTERM or SIGINT (or runs `cachelock probe`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use cachelock::{
    config::{Cli, Command, Config, ConfigError, LogFormat, ProbeArgs},
    probe, server, telemetry,
};
use clap::Parser;
use tokio::{
    net::TcpListener,
    runtime::Runtime,
    signal::unix::{Signal, SignalKind, signal},
};
use tracing::{error, info, warn};

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
        Some(Command::Serve(config)) => run_server(*config),
        None => run_server(cli.serve),
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
    init_tracing(config.log_format);
    runtime.block_on(async {
        let shutdown = shutdown_signal();
        let listener = match TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                error!(listen = %config.listen, %error, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        match server::run(listener, config, shutdown).await {
            Ok(()) => {
                info!("cachelock stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                error!(%error, "cachelock stopped");
                ExitCode::from(error.exit_code())
            }
        }
    })
}

fn run_probe(args: &ProbeArgs) -> ExitCode {
    let Some(runtime) = runtime(Some(1)) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(probe::check(args)) {
        Ok(status) => {
            println!("{}", status.as_str_name());
            if status == probe::SERVING {
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

fn init_tracing(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter = telemetry::log_filter(&directives);
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Registers for SIGINT and SIGTERM (the signal Kubernetes and Docker send) at
/// once, so that a signal arriving during start-up is not lost to the default
/// action (which would skip the drain and leave a development Redis behind);
/// the returned future completes on the first of them.
fn shutdown_signal() -> impl Future<Output = ()> {
    let sigterm = signal(SignalKind::terminate());
    let sigint = signal(SignalKind::interrupt());
    async move {
        let wait = |registered: std::io::Result<Signal>, name: &'static str| async move {
            match registered {
                Ok(mut signal) => {
                    signal.recv().await;
                    info!("{name} received");
                }
                Err(error) => {
                    warn!(%error, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(sigterm, "SIGTERM") => {}
            () = wait(sigint, "SIGINT") => {}
        }
    }
}
