//! The `cachelock` binary: parses the configuration, sets up tracing, and runs
//! the server until SIGTERM or SIGINT (or runs `cachelock probe`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use cachelock::{
    config::{Cli, Command, Config, ConfigError, LogFormat, ProbeArgs},
    probe, server,
};
use clap::Parser;
use tokio::{net::TcpListener, runtime::Runtime};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

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
    let runtime = match Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cachelock: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Probe(args)) => run_probe(&runtime, &args),
        Some(Command::Serve(config)) => run_server(&runtime, config),
        None => run_server(&runtime, cli.serve),
    }
}

fn run_server(runtime: &Runtime, config: Config) -> ExitCode {
    let config = match config.validate() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cachelock: {error}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    runtime.block_on(async {
        let listener = match TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                error!(listen = %config.listen, %error, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        match server::run(listener, config, shutdown_signal()).await {
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

fn run_probe(runtime: &Runtime, args: &ProbeArgs) -> ExitCode {
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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGINT or SIGTERM (the signal Kubernetes and Docker send).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM; only SIGINT will stop the server");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            if let Err(error) = result {
                warn!(%error, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
            info!("SIGINT received");
        }
        () = terminate => info!("SIGTERM received"),
    }
}
