//! Closed-loop measurement: workers, latency histograms, the CPU the server
//! and Redis spent, the Redis commands per request, and the rows printed.

use std::time::Duration;

use crate::Args;
use crate::scenario::{Clients, Scenario, Target};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use tokio::time::{Instant, sleep};

/// What a run measured.
pub(crate) struct Measured {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Histogram<u64>,
    /// CPU time of the server that answered (the service, or the bare server) over the
    /// measured period, when the tool started it.
    pub(crate) server_cpu: Option<Duration>,
    /// Redis's CPU and script time over the measured period.
    pub(crate) redis_busy: Option<RedisBusy>,
}

impl Measured {
    pub(crate) fn empty() -> Measured {
        Measured {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: latency_histogram(),
            server_cpu: Some(Duration::ZERO),
            redis_busy: Some(RedisBusy {
                cpu: Duration::ZERO,
                scripts: Duration::ZERO,
                calls: 0,
            }),
        }
    }

    /// Adds another run of the same scenario (for --compare's totals).
    pub(crate) fn add(&mut self, other: &Measured) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        let _ = self.latency.add(&other.latency);
        self.server_cpu = self.server_cpu.zip(other.server_cpu).map(|(a, b)| a + b);
        self.redis_busy = self.redis_busy.zip(other.redis_busy).map(|(a, b)| RedisBusy {
            cpu: a.cpu + b.cpu,
            scripts: a.scripts + b.scripts,
            calls: a.calls + b.calls,
        });
    }

    /// Script calls Redis ran per request, under load.
    pub(crate) fn calls_per_request(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        self.redis_busy
            .filter(|_| self.requests > 0)
            .map(|busy| busy.calls as f64 / self.requests as f64)
    }

    /// Microseconds of `time` per request.
    pub(crate) fn per_request(&self, time: Option<Duration>) -> Option<f64> {
        time.filter(|_| self.requests > 0)
            .map(|time| time.as_secs_f64() * 1e6 / self.requests as f64)
    }

    pub(crate) fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn micros(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// A histogram of latencies in nanoseconds, from 1 ns to a minute, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // Fixed, valid bounds: construction cannot fail.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid constant bounds")
}

/// Runs `concurrency` closed-loop workers for a warm-up and a measured period.
pub(crate) async fn run(
    clients: &Clients,
    scenario: Scenario,
    target: Target,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Measured {
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + duration;
    let pid = match (scenario, target) {
        (Scenario::BareFloor, _) => clients.bare_pid,
        (_, Target::Service) => clients.service_pid,
        _ => None,
    };
    let sampler = {
        let redis = clients.redis.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from).await;
            let before = (pid.and_then(process_cpu), redis_busy(&redis).await);
            tokio::time::sleep_until(stop_at).await;
            let after = (pid.and_then(process_cpu), redis_busy(&redis).await);
            (
                before
                    .0
                    .zip(after.0)
                    .map(|(before, after)| after.saturating_sub(before)),
                before.1.zip(after.1).map(|(before, after)| after.since(before)),
            )
        })
    };
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let clients = clients.clone();
            tokio::spawn(async move {
                let mut latency = latency_histogram();
                let (mut requests, mut errors) = (0u64, 0u64);
                let mut i = 0u64;
                loop {
                    let sent = Instant::now();
                    if sent >= stop_at {
                        break;
                    }
                    let result = clients.once(scenario, target, worker, i).await;
                    i += 1;
                    if sent >= measure_from {
                        requests += 1;
                        if result.is_err() {
                            errors += 1;
                        }
                        let _ = latency.record(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    }
                }
                (requests, errors, latency)
            })
        })
        .collect();
    let (server_cpu, redis_busy) = sampler.await.unwrap_or((None, None));
    let mut total = Measured {
        requests: 0,
        errors: 0,
        elapsed: duration,
        latency: latency_histogram(),
        server_cpu,
        redis_busy,
    };
    for worker in workers {
        if let Ok((requests, errors, latency)) = worker.await {
            total.requests += requests;
            total.errors += errors;
            let _ = total.latency.add(latency);
        }
    }
    total
}

/// CPU time (user and system, every thread) process `pid` has used so far, from
/// /proc/PID/stat, in clock ticks of 10 ms (USER_HZ is 100 on Linux).
pub(crate) fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // the 14th and 15th of the line (utime, stime) are the 12th and 13th here.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Redis's CPU time so far (INFO cpu: user and system, its networking included),
/// and the time it has spent in script calls (INFO commandstats: EVALSHA's usec,
/// which every hot path but cache-set uses).
pub(crate) async fn redis_busy(redis: &MultiplexedConnection) -> Option<RedisBusy> {
    let mut conn = redis.clone();
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .ok()?;
    let field = |prefix: &str| info.lines().find_map(|line| line.strip_prefix(prefix)).map(str::trim);
    let seconds = |name: &str| field(name).and_then(|value| value.parse::<f64>().ok());
    let cpu = seconds("used_cpu_user:")? + seconds("used_cpu_sys:")?;
    let evalsha = |name: &str| {
        field("cmdstat_evalsha:")
            .and_then(|stats| stats.split(name).nth(1)?.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(RedisBusy {
        cpu: Duration::from_secs_f64(cpu),
        scripts: Duration::from_micros(evalsha("usec=")),
        calls: evalsha("calls="),
    })
}

/// Redis's time, as [`redis_busy`] reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RedisBusy {
    pub(crate) cpu: Duration,
    pub(crate) scripts: Duration,
    /// Script calls (EVALSHA) made.
    pub(crate) calls: u64,
}

impl RedisBusy {
    pub(crate) fn since(self, before: RedisBusy) -> RedisBusy {
        RedisBusy {
            cpu: self.cpu.saturating_sub(before.cpu),
            scripts: self.scripts.saturating_sub(before.scripts),
            calls: self.calls.saturating_sub(before.calls),
        }
    }
}

/// Counts the top-level Redis commands `scenario` sends per request, by watching
/// MONITOR while sending requests one at a time. Commands that scripts run show
/// up under the `lua` client and are not counted; nor is the health prober's INFO.
pub(crate) async fn commands_per_request(
    clients: &Clients,
    redis: &redis::Client,
    scenario: Scenario,
    requests: usize,
) -> f64 {
    let Ok(monitor) = redis.get_async_monitor().await else {
        return f64::NAN;
    };
    let counter = tokio::spawn(async move {
        let mut lines = monitor.into_on_message::<String>();
        let mut counted = 0u64;
        while let Some(line) = lines.next().await {
            if line.contains("\"bench-count-end\"") {
                break;
            }
            let Some((client, command)) = line.split_once("] \"") else {
                continue;
            };
            let command = command.to_ascii_lowercase();
            let name = command.split('"').next().unwrap_or("");
            let internal = client.ends_with(" lua") || matches!(name, "ping" | "info" | "echo");
            if !internal {
                counted += 1;
            }
        }
        counted
    });
    sleep(Duration::from_millis(100)).await;
    for i in 0..requests {
        let _ = clients.once(scenario, Target::Service, 0, i as u64).await;
    }
    let mut conn = clients.redis.clone();
    let _: Result<String, _> = redis::cmd("ECHO").arg("bench-count-end").query_async(&mut conn).await;
    match tokio::time::timeout(Duration::from_secs(10), counter).await {
        Ok(Ok(counted)) => counted as f64 / requests as f64,
        _ => f64::NAN,
    }
}

pub(crate) fn print_row(
    args: &Args,
    scenario: Scenario,
    concurrency: usize,
    target: Target,
    measured: &Measured,
    extra: (f64, Option<f64>, Option<f64>),
) {
    let (commands, throughput_ratio, p50_ratio) = extra;
    let target_name = match target {
        Target::Service => "service",
        Target::Secure => "tls+auth",
        Target::Other if args.compare_binary.is_some() => "baseline",
        Target::Other if args.compare_traces => "traced",
        Target::Other => "no-metric",
        Target::Direct => "direct",
    };
    if args.json {
        let line = serde_json::json!({
            "scenario": scenario.name(),
            "target": target_name,
            "concurrency": concurrency,
            "requests": measured.requests,
            "errors": measured.errors,
            "requests_per_second": measured.per_second().round(),
            "p50_us": measured.micros(0.5),
            "p90_us": measured.micros(0.9),
            "p99_us": measured.micros(0.99),
            "p999_us": measured.micros(0.999),
            "redis_commands_per_request": if commands.is_nan() { serde_json::Value::Null } else { commands.into() },
            "throughput_vs_direct": throughput_ratio,
            "p50_vs_direct": p50_ratio,
            "server_cpu_us_per_request": measured.per_request(measured.server_cpu),
            "redis_cpu_us_per_request": measured.per_request(measured.redis_busy.map(|busy| busy.cpu)),
            "redis_script_us_per_request": measured.per_request(measured.redis_busy.map(|busy| busy.scripts)),
            "redis_script_calls_per_request": measured.calls_per_request(),
        });
        println!("{line}");
    } else {
        let ratio = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"));
        let commands = if commands.is_nan() {
            "-".to_owned()
        } else {
            format!("{commands:.2}")
        };
        let micros = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<26} {:<8} {:>5} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
            scenario.name(),
            target_name,
            concurrency,
            measured.per_second(),
            measured.micros(0.5),
            measured.micros(0.9),
            measured.micros(0.99),
            measured.micros(0.999),
            measured.errors,
            commands,
            ratio(throughput_ratio),
            ratio(p50_ratio),
            micros(measured.per_request(measured.server_cpu)),
            micros(measured.per_request(measured.redis_busy.map(|busy| busy.cpu))),
            micros(measured.per_request(measured.redis_busy.map(|busy| busy.scripts))),
            measured
                .calls_per_request()
                .map_or_else(|| "-".to_owned(), |calls| format!("{calls:.3}")),
        );
    }
}

pub(crate) fn print_header() {
    println!(
        "{:<26} {:<8} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "scenario",
        "target",
        "conc",
        "req/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "errors",
        "cmds",
        "rps/dir",
        "p50/dir",
        "srv µs",
        "rds µs",
        "lua µs",
        "lua/req"
    );
}
