//! Keeps the benchmark tool working: every scenario runs for a moment against a
//! private Redis and service, and completes with no errors. (Speed is measured
//! by running the tool, never asserted here.)

use std::process::Command;

/// Runs the tool with `args` against its own private Redis and service; its
/// standard output, once it has succeeded.
fn bench(args: &[&str]) -> String {
    bench_with(args, &[]).0
}

/// As [`bench`], with `env` set for it (and its services); its standard output and error.
fn bench_with(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cachelock-bench"))
        .args(args)
        .env_remove("REDIS_URL")
        .envs(env.iter().copied())
        .output()
        .expect("the benchmark runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The rows of a `--json` run: one JSON object per line.
fn json_rows(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[test]
fn every_scenario_runs_without_errors() {
    let stdout = bench(&[
        "--json",
        "--warmup",
        "0s",
        "--duration",
        "150ms",
        "--concurrency",
        "2",
        "--keys",
        "50",
        "--count-requests",
        "5",
    ]);

    let rows = json_rows(&stdout);
    let scenarios = [
        "bare-floor",
        "grpc-floor",
        "cache-get",
        "cache-set",
        "ratelimit-token-bucket",
        "ratelimit-fixed-window",
        "ratelimit-sliding-window",
        "session-get",
        "lock-acquire-release",
    ];
    for scenario in scenarios {
        let service = rows
            .iter()
            .find(|row| row["scenario"] == scenario && row["target"] == "service")
            .unwrap_or_else(|| panic!("a row for {scenario}: {stdout}"));
        assert!(service["requests"].as_u64().unwrap() > 0, "{service}");
        assert_eq!(service["errors"], 0, "{service}");
        let commands = service["redis_commands_per_request"].as_f64().expect("a command count");
        let expected = match scenario {
            "bare-floor" | "grpc-floor" => 0.0,
            // Both in one round trip: the SET, and the UNLINK of the key's fill record
            // (a write ends a GetOrLease lease and drops a stale copy).
            "cache-set" => 2.0,
            "lock-acquire-release" => 2.0,
            _ => 1.0,
        };
        assert_eq!(commands, expected, "{scenario}: Redis commands per request");
        // The tool started the server: its CPU per request is known.
        assert!(service["server_cpu_us_per_request"].as_f64().is_some(), "{service}");
        assert!(service["redis_cpu_us_per_request"].as_f64().is_some(), "{service}");
    }
    for row in rows.iter().filter(|row| row["target"] == "direct") {
        assert_eq!(row["errors"], 0, "{row}");
    }
}

#[test]
fn the_pubsub_fanout_delivers_to_every_subscriber() {
    let stdout = bench(&[
        "--pubsub-fanout",
        "10",
        "--warmup",
        "0s",
        "--duration",
        "200ms",
        "--concurrency",
        "2",
    ]);
    let row: Vec<&str> = stdout.lines().nth(1).expect("a row").split_whitespace().collect();
    assert_eq!(row[0], "10", "{stdout}");
    let delivered: f64 = row[3].parse().expect("delivered/s");
    assert!(delivered > 0.0, "{stdout}");
}

#[test]
fn the_stampede_gives_one_lease_per_round() {
    let stdout = bench(&[
        "--stampede",
        "10",
        "--warmup",
        "0s",
        "--duration",
        "200ms",
        "--fill-time",
        "5ms",
    ]);
    let row = |name: &str| -> Vec<String> {
        stdout
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("a {name} row: {stdout}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let leased = row("GetOrLease ");
    assert_eq!(
        (leased[2].as_str(), leased[3].as_str(), leased[6].as_str()),
        ("1.0", "1.00", "0"),
        "{stdout}"
    );
    // Without leases, how many callers read the source depends on timing: not asserted.
    assert_eq!(row("Get ")[6], "0", "{stdout}");
}

#[test]
fn compare_interleaves_two_scenarios_and_totals_them() {
    let stdout = bench(&[
        "--json",
        "--compare",
        "grpc-floor,ratelimit-token-bucket",
        "--rounds",
        "2",
        "--warmup",
        "0s",
        "--duration",
        "100ms",
        "--concurrency",
        "2",
    ]);
    let rows = json_rows(&stdout);
    let names: Vec<&str> = rows.iter().filter_map(|row| row["scenario"].as_str()).collect();
    // A B A B, then the totals of A and B.
    assert_eq!(
        names,
        [
            "grpc-floor",
            "ratelimit-token-bucket",
            "grpc-floor",
            "ratelimit-token-bucket",
            "grpc-floor",
            "ratelimit-token-bucket"
        ],
        "{stdout}"
    );
    let runs: u64 = rows[..4]
        .iter()
        .filter(|row| row["scenario"] == "grpc-floor")
        .map(|row| row["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(rows[4]["requests"].as_u64(), Some(runs), "the totals add the rounds up");
    assert!(
        rows[5]["throughput_vs_direct"].as_f64().is_some(),
        "B / A is given: {stdout}"
    );
    assert!(rows.iter().all(|row| row["errors"] == 0), "{stdout}");
}

#[test]
fn a_baseline_binary_is_measured_beside_this_build() {
    // This build stands in for the one before a change.
    let stdout = bench(&[
        "--json",
        "--compare-binary",
        env!("CARGO_BIN_EXE_cachelock-bench")
            .strip_suffix("cachelock-bench")
            .map(|dir| format!("{dir}cachelock"))
            .as_deref()
            .unwrap_or("cachelock"),
        "--scenarios",
        "cache-set",
        "--warmup",
        "0s",
        "--duration",
        "100ms",
        "--concurrency",
        "2",
        "--count-requests",
        "5",
    ]);
    let rows = json_rows(&stdout);
    let baseline = rows
        .iter()
        .find(|row| row["target"] == "baseline")
        .unwrap_or_else(|| panic!("a baseline row: {stdout}"));
    assert!(baseline["requests"].as_u64().is_some_and(|n| n > 0), "{stdout}");
    assert!(baseline["throughput_vs_direct"].as_f64().is_some(), "{stdout}");
    assert!(rows.iter().all(|row| row["errors"] == 0), "{stdout}");
}

#[test]
fn a_traced_service_is_measured_beside_this_build_and_its_spans_arrive() {
    let (stdout, stderr) = bench_with(
        &[
            "--json",
            "--compare-traces",
            "--scenarios",
            "cache-get",
            "--no-direct",
            "--warmup",
            "0s",
            "--duration",
            "100ms",
            "--concurrency",
            "2",
            "--count-requests",
            "5",
        ],
        // Batches sent every 100 ms instead of every 5 s.
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let rows = json_rows(&stdout);
    let traced = rows
        .iter()
        .find(|row| row["target"] == "traced")
        .unwrap_or_else(|| panic!("a traced row: {stdout}"));
    assert!(traced["requests"].as_u64().is_some_and(|n| n > 0), "{stdout}");
    let received: u64 = stderr
        .split("the OTLP sink received ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("the sink's count: {stderr}"));
    assert!(received > 0, "{stderr}");
}

#[test]
fn the_batch_worst_case_reports_every_batch_rpc_at_the_default_limits() {
    let stdout = bench(&["--batch-worst-case"]);
    for row in [
        "SetMany: 1000 entries",
        "GetMany: 1000 keys",
        "Delete: 1000 keys",
        "CheckMany: 100 limits",
        "session Create: 64 attributes",
        "ListUserSessions: 100 sessions",
        "DeleteUserSessions: 100 sessions",
    ] {
        assert!(stdout.contains(row), "{row}: {stdout}");
    }
}

#[test]
fn the_election_handover_times_both_deaths() {
    let stdout = bench(&["--election-handover", "1", "--election-ttl", "500ms"]);
    for death in ["its process", "its cachelock instance"] {
        let row = stdout
            .lines()
            .find(|line| line.starts_with(death))
            .unwrap_or_else(|| panic!("a row for {death}: {stdout}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        // The figures themselves are the benchmark's to report, not this test's.
        assert!(
            columns.iter().rev().take(3).all(|figure| figure.parse::<f64>().is_ok()),
            "{row}"
        );
    }
}
