//! Configuration parsing and the binary's behaviour as a process: exit codes,
//! the development Redis, SIGTERM.

use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cachelock::{Config, LogFormat};

const BINARY: &str = env!("CARGO_BIN_EXE_cachelock");

fn parse(args: &[&str]) -> Result<Config, String> {
    let mut all = vec!["cachelock"];
    all.extend_from_slice(args);
    Config::from_args(all).map_err(|error| error.to_string())
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = parse(&["--redis-url", "redis://127.0.0.1:6379"]).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(config.key_prefix, "cachelock");
    assert_eq!(config.operation_timeout, Duration::from_secs(1));
    assert_eq!(config.health_interval, Duration::from_secs(1));
    assert_eq!(config.shutdown_grace, Duration::from_secs(10));
    assert_eq!(config.default_ttl, Duration::from_secs(3600));
    assert_eq!(config.max_batch, 1000);
    assert_eq!(config.log_format, LogFormat::Text);
}

#[test]
fn accepted_redis_urls() {
    for url in [
        "redis://127.0.0.1:6379/2",
        "redis://user:secret@db.internal:6380",
        "rediss://db.internal:6380",
        "unix:///run/redis/redis.sock",
        "redis+unix:///run/redis/redis.sock",
    ] {
        parse(&["--redis-url", url]).unwrap_or_else(|error| panic!("{url}: {error}"));
    }
}

#[test]
fn an_empty_redis_url_means_the_development_redis() {
    assert_eq!(parse(&["--redis-url", ""]).unwrap().redis_url, None);
}

#[test]
fn bad_values_are_refused_naming_the_setting() {
    let cases: &[(&[&str], &str)] = &[
        (&["--operation-timeout", "0s"], "--operation-timeout"),
        (&["--operation-timeout", "soon"], "--operation-timeout"),
        (&["--connect-timeout", "0ms"], "--connect-timeout"),
        (&["--health-interval", "0s"], "--health-interval"),
        (
            &["--reconnect-min-backoff", "2s", "--reconnect-max-backoff", "1s"],
            "--reconnect-max-backoff",
        ),
        (&["--default-ttl", "2h", "--max-ttl", "1h"], "--default-ttl"),
        (&["--max-ttl", "0s"], "--max-ttl"),
        (&["--max-key-bytes", "0"], "--max-key-bytes"),
        (&["--max-value-bytes", "lots"], "--max-value-bytes"),
        (&["--max-value-bytes", "0"], "--max-value-bytes"),
        (&["--max-batch", "1000000"], "--max-batch"),
        (&["--key-prefix", ""], "--key-prefix"),
        (&["--key-prefix", "a{b"], "--key-prefix"),
        (&["--key-prefix", "has space"], "--key-prefix"),
        (&["--key-prefix", "glob*"], "--key-prefix"),
        (&["--lock-max-ttl", "0s"], "--lock-max-ttl"),
        (&["--worker-threads", "0"], "--worker-threads"),
        (&["--redis-keepalive", "0s"], "--redis-keepalive"),
        (&["--ratelimit-timeout", "0s"], "--ratelimit-timeout"),
        (&["--ratelimit-max-period", "0s"], "--ratelimit-max-period"),
        (&["--ratelimit-on-unavailable", "maybe"], "--ratelimit-on-unavailable"),
        (&["--listen", "localhost"], "--listen"),
        (&["--log-format", "xml"], "--log-format"),
        (&["--metrics-listen", "everywhere"], "--metrics-listen"),
        (&["--slow-request", "0s"], "--slow-request"),
        (&["--redis-url", "http://db:6379"], "--redis-url"),
        // Every duration has a ceiling: beyond it PX overflows, doubles lose
        // precision, or adding it to a clock panics.
        (&["--max-ttl", "11years"], "--max-ttl"),
        (&["--max-ttl", "100000000000years"], "--max-ttl"),
        (&["--ratelimit-max-period", "2years"], "--ratelimit-max-period"),
        (&["--lock-max-wait", "2h"], "--lock-max-wait"),
        (&["--lock-max-wait", "1000000000years"], "--lock-max-wait"),
        (&["--lock-max-ttl", "2days"], "--lock-max-ttl"),
        (&["--lock-fence-retention", "0s"], "--lock-fence-retention"),
        (&["--session-max-lifetime", "11years"], "--session-max-lifetime"),
        (&["--operation-timeout", "2h"], "--operation-timeout"),
        (&["--shutdown-delay", "1h"], "--shutdown-delay"),
        (&["--session-max-per-user", "0"], "--session-max-per-user"),
        (&["--session-max-per-user", "20000"], "--session-max-per-user"),
        // A development Redis behind a public address is a mistyped REDIS_URL.
        (&["--listen", "0.0.0.0:50051", "--allow-insecure-listen"], "--redis-url"),
        // A public listener needs a way to tell callers apart, or an explicit opt-out:
        // TLS alone is not one.
        (
            &["--redis-url", "redis://db:6379", "--listen", "0.0.0.0:50051"],
            "--listen",
        ),
        (
            &[
                "--redis-url",
                "redis://db:6379",
                "--listen",
                "0.0.0.0:50051",
                "--tls-cert",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
                "--tls-key",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ],
            "--listen",
        ),
        (
            &["--redis-url", "redis://db:6379", "--tls-cert", "/etc/hostname"],
            "--tls-key",
        ),
        (
            &["--redis-url", "redis://db:6379", "--tls-client-ca", "/etc/hostname"],
            "--tls-client-ca",
        ),
        (
            &["--redis-url", "redis://db:6379", "--auth-file", "/no/such/auth.toml"],
            "--auth-file",
        ),
        (
            &["--redis-url", "redis://db:6379", "--redis-ca-file", "/etc/hostname"],
            "--redis-ca-file",
        ),
        (
            &["--redis-url", "rediss://db:6379", "--redis-ca-file", "/no/such/ca.pem"],
            "--redis-ca-file",
        ),
    ];
    for (args, setting) in cases {
        let error = parse(args).expect_err(&format!("{args:?} should be refused"));
        assert!(error.contains(setting), "{args:?}: {error:?} should name {setting}");
        assert!(!error.contains('\n'), "{args:?}: one line, got {error:?}");
    }
}

#[test]
fn the_ceilings_themselves_are_accepted() {
    parse(&[
        "--redis-url",
        "redis://db:6379",
        "--max-ttl",
        "10years",
        "--default-ttl",
        "10years",
        "--ratelimit-max-period",
        "1year",
        "--lock-max-wait",
        "1h",
        "--lock-max-ttl",
        "1day",
        "--session-max-lifetime",
        "10years",
        "--session-max-per-user",
        "10000",
        "--listen",
        "0.0.0.0:50051",
        "--allow-insecure-listen",
    ])
    .unwrap();
    // A public listener protected by an auth file needs no opt-out.
    parse(&[
        "--redis-url",
        "redis://db:6379",
        "--listen",
        "0.0.0.0:50051",
        "--auth-file",
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
    ])
    .unwrap();
}

#[test]
fn a_refused_redis_url_never_echoes_its_password() {
    let error = parse(&["--redis-url", "http://user:hunter2@db:6379"]).unwrap_err();
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn a_login_is_set_in_one_place_even_for_a_unix_socket() {
    let error = parse(&[
        "--redis-url",
        "unix:///run/redis.sock?pass=hunter2",
        "--redis-password",
        "other",
    ])
    .unwrap_err();
    assert!(error.contains("carries a login too"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    parse(&["--redis-url", "unix:///run/redis.sock?pass=hunter2"]).unwrap();
}

#[test]
fn an_unverified_tls_redis_url_is_refused_when_the_configuration_is_read() {
    for args in [
        &["--redis-url", "rediss://user:hunter2@db:6379/#insecure"][..],
        &["--redis-cluster-nodes", "rediss://db:7000/#insecure"][..],
    ] {
        let error = parse(args).unwrap_err();
        assert!(error.contains("#insecure is refused"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}

#[test]
fn the_binary_exits_2_with_one_line_for_bad_configuration() {
    let output = Command::new(BINARY)
        .args(["--max-ttl", "0s"])
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--max-ttl"), "{stderr}");

    let output = Command::new(BINARY)
        .env("CACHELOCK_OPERATION_TIMEOUT", "never")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--operation-timeout"));

    // A mistyped flag is answered with the one meant.
    let output = Command::new(BINARY).arg("--listn").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("'--listn'") && stderr.contains("'--listen'"),
        "{stderr}"
    );
}

#[test]
fn invalid_rate_limit_rules_at_start_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, "domain: edge\ndescriptors: [\n").unwrap();
    // Redis is never reached: the rules are read before anything is served.
    let output = Command::new(BINARY)
        .arg("--rls-config")
        .arg(&rules)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--rls-config") && stderr.contains("rules.yaml"),
        "{stderr}"
    );
}

#[test]
fn without_redis_url_or_redis_server_the_binary_says_what_to_install() {
    let empty_path = tempfile::tempdir().unwrap();
    let output = Command::new(BINARY)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--log-format",
            "json",
        ])
        .env_remove("REDIS_URL")
        .env("PATH", empty_path.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(all.contains("apt-get install redis-server"), "{all}");
    assert!(all.contains("REDIS_URL"), "{all}");
}

/// The port the development redis-server was started on, read from the JSON log.
fn embedded_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("\"port\":")? + 7..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn sigterm_drains_stops_the_development_redis_and_exits_0() {
    let mut child = Command::new(BINARY)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(["--shutdown-delay", "0s"])
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();

    let mut port = None;
    let give_up = Instant::now() + Duration::from_secs(15);
    for line in lines.by_ref() {
        let line = line.unwrap();
        // JSON lines carry message, level, target and timestamp at the top level.
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        for field in ["message", "level", "target", "timestamp"] {
            assert!(parsed.get(field).is_some(), "no top-level {field}: {line}");
        }
        port = port.or_else(|| embedded_port(&line));
        if line.contains("connected to Redis") || Instant::now() > give_up {
            break;
        }
    }
    let port = port.expect("the log names the development Redis port");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the development Redis runs"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter()
            .any(|line| line.contains("stopped the development redis-server")),
        "{rest:?}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the development Redis is gone after exit"
    );
}

#[test]
fn the_readme_opens_with_the_commands_that_run_the_service_and_the_tests() {
    // `cargo run --release` must pick the service among the crate's binaries.
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(manifest.contains("default-run = \"cachelock\""));
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let opening: Vec<&str> = readme
        .lines()
        .skip_while(|line| !line.starts_with("```"))
        .skip(1)
        .take(2)
        .collect();
    assert!(opening[0].starts_with("cargo run --release"), "{opening:?}");
    assert!(opening[1].starts_with("cargo test"), "{opening:?}");
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(
        ci.lines().any(|line| line.trim() == "cargo test"),
        "CI runs the README's test command"
    );
}

#[test]
fn the_configuration_page_lists_exactly_the_flags_of_help() {
    let help = Command::new(BINARY).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let mut from_help: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with("--"))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let mut from_readme: Vec<&str> = page
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|flag| flag.starts_with("--"))
        .collect();
    from_help.sort_unstable();
    from_readme.sort_unstable();
    assert_eq!(from_help, from_readme);
}

#[test]
fn the_errors_page_lists_exactly_the_error_reasons_the_service_sends() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/errors.md")).unwrap();
    let section = page.split("\n## ").next().expect("the page's opening section");
    let mut from_readme: Vec<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    let mut sent: Vec<&str> = cachelock::Reason::ALL.iter().map(|reason| reason.as_str()).collect();
    from_readme.sort_unstable();
    sent.sort_unstable();
    assert_eq!(from_readme, sent);
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour() {
    let output = Command::new(BINARY)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .args(["--max-ttl", "0s"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    // Refused at once (exit 2); what matters is that nothing on stderr is an escape sequence.
    assert_eq!(output.status.code(), Some(2));
    assert!(
        !output.stderr.contains(&0x1b),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut child = Command::new(BINARY)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--shutdown-delay",
            "0s",
        ])
        .args(["--redis-url", "redis://127.0.0.1:1"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(first.contains("cachelock starting"), "{first}");
    assert!(!first.contains('\u{1b}'), "colour codes in a piped log: {first:?}");
}
