//! Envoy's rate limit API: envoyproxy/ratelimit's configuration examples load
//! unchanged and decide as its README documents; exactness, nesting, wildcards,
//! replaces, unlimited, shadow mode, hits_addend, hot reload and outages.

mod common;

use std::{path::Path, time::Instant};

use cachelock::{
    Rules, Unit,
    pb::envoy::{
        extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor, rate_limit_descriptor::Entry},
        service::ratelimit::v3::{
            RateLimitRequest, RateLimitResponse,
            rate_limit_response::{Code, DescriptorStatus},
            rate_limit_service_client::RateLimitServiceClient,
        },
    },
};
use common::{CapturedLogs, PATIENCE, TestRedis, TestService, assert_invalid};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

const README_EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/envoy-ratelimit-readme");

/// Rules for the tests below; a year's fixed window never rolls over during a test.
const TEST_RULES: &str = "\
domain: cachelock_tests
descriptors:
  - key: exact
    rate_limit:
      unit: year
      requests_per_unit: 100
  - key: tenant
    descriptors:
      - key: user
        rate_limit:
          unit: year
          requests_per_unit: 3
  - key: plan
    value: gold*
    rate_limit:
      unit: year
      requests_per_unit: 2
  - key: shadowed
    shadow_mode: true
    rate_limit:
      unit: year
      requests_per_unit: 1
  - key: bucket
    rate_limit:
      unit: year
      requests_per_unit: 5
      algorithm: token_bucket
";

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: 0,
    }
}

fn envoy(service: &TestService) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::new(service.channel())
}

async fn ask(client: &mut RateLimitServiceClient<Channel>, request: RateLimitRequest) -> RateLimitResponse {
    client
        .should_rate_limit(request)
        .await
        .expect("ShouldRateLimit")
        .into_inner()
}

/// Asks once about one descriptor.
async fn ask_one(
    client: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    entries: &[(&str, &str)],
) -> RateLimitResponse {
    ask(client, request(domain, vec![descriptor(entries)])).await
}

fn code(status: &DescriptorStatus) -> Code {
    Code::try_from(status.code).expect("a known code")
}

fn overall(response: &RateLimitResponse) -> Code {
    Code::try_from(response.overall_code).expect("a known code")
}

/// The limit a status reports: requests per unit and the unit.
fn limit_of(status: &DescriptorStatus) -> Option<(u32, Unit)> {
    status.current_limit.as_ref().map(|limit| {
        (
            limit.requests_per_unit,
            Unit::from_number(limit.unit).expect("a known unit"),
        )
    })
}

/// A directory holding `files` (name, text).
fn rules_dir(files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write a rules file");
    }
    dir
}

fn readme_example(name: &str) -> String {
    std::fs::read_to_string(Path::new(README_EXAMPLES).join(name)).expect("a README example")
}

async fn service_with_rules(redis: &TestRedis, dir: &Path, extra: &[&str]) -> TestService {
    let path = dir.to_str().expect("a UTF-8 path");
    let mut args = vec!["--rls-config", path];
    args.extend_from_slice(extra);
    TestService::start(&redis.url(), &args).await
}

/// What a README example's rule should be for a request descriptor.
#[derive(Debug, PartialEq)]
enum Expect {
    /// No rule applies.
    Nothing,
    /// An unlimited rule.
    Unlimited,
    /// This many per unit, in shadow mode or not, sharing its wildcard's threshold or not.
    Limit(u32, Unit, bool, Option<&'static str>),
}

/// A README example's file, domain, request descriptor and expected rule.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Expect,
);

#[test]
fn the_readme_examples_of_envoyproxy_ratelimit_load_unchanged_and_match_as_documented() {
    use Expect::{Limit, Nothing, Unlimited};
    use Unit::{Day, Hour, Minute, Second};
    let cases: &[Case] = &[
        (
            "example01.yaml",
            "mongo_cps",
            &[("database", "users")],
            Limit(500, Second, false, None),
        ),
        (
            "example01.yaml",
            "mongo_cps",
            &[("database", "default")],
            Limit(500, Second, false, None),
        ),
        ("example01.yaml", "mongo_cps", &[("database", "orders")], Nothing),
        (
            "example02.yaml",
            "messaging",
            &[("message_type", "marketing"), ("to_number", "2061111111")],
            Limit(5, Day, false, None),
        ),
        (
            "example02.yaml",
            "messaging",
            &[("to_number", "2061111111")],
            Limit(100, Day, false, None),
        ),
        (
            "example02.yaml",
            "messaging",
            &[("message_type", "transactional"), ("to_number", "2061111111")],
            Nothing,
        ),
        (
            "example03.yaml",
            "edge_proxy_per_ip",
            &[("remote_address", "50.0.0.1")],
            Limit(10, Second, false, None),
        ),
        (
            "example03.yaml",
            "edge_proxy_per_ip",
            &[("remote_address", "50.0.0.5")],
            Limit(0, Second, false, None),
        ),
        (
            "example04a.yaml",
            "example4",
            &[("key", "value"), ("subkey", "subvalue")],
            Nothing,
        ),
        (
            "example04b.yaml",
            "example4",
            &[("key", "value"), ("subkey", "subvalue")],
            Limit(300, Second, false, None),
        ),
        ("example05.yaml", "internal", &[("ldap", "any")], Unlimited),
        (
            "example05.yaml",
            "internal",
            &[("azure", "any")],
            Limit(100, Minute, false, None),
        ),
        (
            "example06.yaml",
            "example6",
            &[("service", "auth-service"), ("user", "user-a")],
            Limit(10, Second, true, None),
        ),
        (
            "example06.yaml",
            "example6",
            &[("service", "auth-service"), ("user", "user-b")],
            Limit(20, Second, false, None),
        ),
        (
            "example07.yaml",
            "example7",
            &[("key_1", "value_1"), ("user", "bkthomps")],
            Limit(5, Second, false, None),
        ),
        (
            "example07.yaml",
            "example7",
            &[("key_2", "value_2"), ("user", "bkthomps")],
            Limit(10, Second, false, None),
        ),
        (
            "example08.yaml",
            "example8",
            &[("key1", "unspecified_value")],
            Limit(10, Minute, false, None),
        ),
        (
            "example08.yaml",
            "example8",
            &[("key1", "value1")],
            Limit(20, Minute, false, None),
        ),
        (
            "example09a.yaml",
            "example9",
            &[("key1", "value1")],
            Limit(20, Minute, false, None),
        ),
        (
            "example09a.yaml",
            "example9",
            &[("key1", "valueXYZ")],
            Limit(20, Minute, false, None),
        ),
        ("example09a.yaml", "example9", &[("key1", "other")], Nothing),
        (
            "example09b.yaml",
            "example9",
            &[("path", "/api/user-id/action")],
            Limit(20, Minute, false, None),
        ),
        ("example09b.yaml", "example9", &[("path", "/api/123/other")], Nothing),
        (
            "example09c.yaml",
            "example9",
            &[("route", "/api/v2/resource/456/action")],
            Limit(20, Minute, false, None),
        ),
        (
            "example10a.yaml",
            "example10",
            &[("route", "api"), ("http_method", "GET"), ("subject_id", "123")],
            Limit(60, Minute, false, None),
        ),
        (
            "example10b.yaml",
            "example10_wildcard",
            &[("user", "alice"), ("action", "readfile"), ("resource", "documents")],
            Limit(100, Minute, false, None),
        ),
        (
            "example10b.yaml",
            "example10_wildcard",
            &[("user", "alice"), ("action", "write"), ("resource", "documents")],
            Nothing,
        ),
        (
            "example11a.yaml",
            "example11",
            &[("files", "files/a.pdf")],
            Limit(10, Hour, false, Some("files/*")),
        ),
        (
            "example11a.yaml",
            "example11",
            &[("files_no_share", "files_no_share/a.pdf")],
            Limit(10, Hour, false, None),
        ),
        (
            "example11b.yaml",
            "example11_metrics",
            &[("route", "api/v1"), ("method", "GET")],
            Limit(60, Minute, false, Some("api/*")),
        ),
    ];
    let mut loaded = 0;
    for entry in std::fs::read_dir(README_EXAMPLES).expect("the fixtures") {
        let path = entry.expect("a fixture").path();
        if path.extension().is_some_and(|extension| extension == "yaml") {
            Rules::load(&path).unwrap_or_else(|error| panic!("{error}"));
            loaded += 1;
        }
    }
    assert_eq!(loaded, 16, "every YAML block of the README's examples");
    for (file, domain, entries, expected) in cases {
        let rules = Rules::load(&Path::new(README_EXAMPLES).join(file)).unwrap_or_else(|error| panic!("{error}"));
        let found = match rules.find(domain, entries) {
            None => Nothing,
            Some(found) => match &found.rule.limit {
                None => Unlimited,
                Some(limit) => Limit(
                    limit.requests_per_unit,
                    limit.unit,
                    found.rule.shadow_mode,
                    found.shared.iter().flatten().next().map(|pattern| -> &'static str {
                        // The patterns the cases name.
                        ["files/*", "api/*"]
                            .into_iter()
                            .find(|known| known == pattern)
                            .unwrap_or("another pattern")
                    }),
                ),
            },
        };
        assert_eq!(&found, expected, "{file}: {domain} {entries:?}");
    }
}

#[tokio::test]
async fn the_readme_examples_decide_as_documented_over_grpc() {
    let redis = TestRedis::start().await;
    let files: Vec<(&str, String)> = [
        "example02.yaml",
        "example03.yaml",
        "example05.yaml",
        "example07.yaml",
        "example11a.yaml",
    ]
    .into_iter()
    .map(|name| (name, readme_example(name)))
    .collect();
    let dir = rules_dir(&files);
    let service = service_with_rules(&redis, dir.path(), &[]).await;
    let mut client = envoy(&service);

    // Example 2: five marketing messages a day to one number, and the per-number
    // limit of 100 is not charged for the one refused.
    let both = || {
        request(
            "messaging",
            vec![
                descriptor(&[("message_type", "marketing"), ("to_number", "2061111111")]),
                descriptor(&[("to_number", "2061111111")]),
            ],
        )
    };
    for sent in 1..=5 {
        let response = ask(&mut client, both()).await;
        assert_eq!(overall(&response), Code::Ok, "marketing message {sent}");
        assert_eq!(response.statuses[0].limit_remaining, 5 - sent);
    }
    let refused = ask(&mut client, both()).await;
    assert_eq!(overall(&refused), Code::OverLimit);
    assert_eq!(code(&refused.statuses[0]), Code::OverLimit);
    assert_eq!(code(&refused.statuses[1]), Code::Ok);
    assert_eq!(
        refused.statuses[1].limit_remaining, 95,
        "the refused message consumed nothing"
    );
    assert_eq!(limit_of(&refused.statuses[1]), Some((100, Unit::Day)));

    // Example 3: the listed address is refused outright, the others get 10 a second.
    let listed = ask_one(&mut client, "edge_proxy_per_ip", &[("remote_address", "50.0.0.5")]).await;
    assert_eq!(overall(&listed), Code::OverLimit);
    let other = ask_one(&mut client, "edge_proxy_per_ip", &[("remote_address", "50.0.0.1")]).await;
    assert_eq!(overall(&other), Code::Ok);
    assert_eq!(limit_of(&other.statuses[0]), Some((10, Unit::Second)));

    // Example 5: unlimited answers OK with the most remaining and no limit.
    let ldap = ask_one(&mut client, "internal", &[("ldap", "bind")]).await;
    assert_eq!(overall(&ldap), Code::Ok);
    assert_eq!(ldap.statuses[0].limit_remaining, u32::MAX);
    assert_eq!(ldap.statuses[0].current_limit, None);
    let azure = ask_one(&mut client, "internal", &[("azure", "blob")]).await;
    assert_eq!(azure.statuses[0].limit_remaining, 99);

    // Example 7: with both rules matched, the replaced one is not applied.
    let replaced = ask(
        &mut client,
        request(
            "example7",
            vec![
                descriptor(&[("key_1", "value_1"), ("user", "bkthomps")]),
                descriptor(&[("key_2", "value_2"), ("user", "bkthomps")]),
            ],
        ),
    )
    .await;
    assert_eq!(replaced.statuses[0].current_limit, None, "replaced");
    assert_eq!(limit_of(&replaced.statuses[1]), Some((10, Unit::Second)));

    // Example 11: files/* share one threshold of 10; files_no_share/* each have their own.
    for file in ["files/a.pdf", "files/b.csv"] {
        for _ in 0..5 {
            assert_eq!(
                overall(&ask_one(&mut client, "example11", &[("files", file)]).await),
                Code::Ok
            );
        }
    }
    let shared = ask_one(&mut client, "example11", &[("files", "files/c.txt")]).await;
    assert_eq!(overall(&shared), Code::OverLimit, "the shared threshold is used up");
    for _ in 0..10 {
        let response = ask_one(&mut client, "example11", &[("files_no_share", "files_no_share/a.pdf")]).await;
        assert_eq!(overall(&response), Code::Ok);
    }
    let own = ask_one(&mut client, "example11", &[("files_no_share", "files_no_share/b.csv")]).await;
    assert_eq!(overall(&own), Code::Ok, "an isolated threshold");

    // Unknown domains and descriptors no rule matches: OK, no limit.
    let unknown = ask_one(&mut client, "nobody", &[("anything", "at all")]).await;
    assert_eq!(overall(&unknown), Code::Ok);
    assert_eq!(unknown.statuses[0].current_limit, None);

    // Health and the auth layer know the service.
    service
        .wait_for_health("envoy.service.ratelimit.v3.RateLimitService", ServingStatus::Serving)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_passes_among_300_concurrent_calls() {
    let redis = TestRedis::start().await;
    let dir = rules_dir(&[("tests.yaml", TEST_RULES.to_owned())]);
    // Exactness, not speed, is under test: Redis decides every call, however slow.
    let service = service_with_rules(&redis, dir.path(), &["--ratelimit-timeout", "30s"]).await;
    let channel = service.channel();
    let calls = (0..300).map(|_| {
        let mut client = RateLimitServiceClient::new(channel.clone());
        async move { ask_one(&mut client, "cachelock_tests", &[("exact", "one")]).await }
    });
    let responses = futures_util::future::join_all(calls).await;
    let passed = responses
        .iter()
        .filter(|response| overall(response) == Code::Ok)
        .count();
    assert_eq!(passed, 100, "a limit of 100 lets exactly 100 through");
}

#[tokio::test]
async fn nesting_wildcards_hits_addend_shadow_mode_and_several_descriptors() {
    let redis = TestRedis::start().await;
    let dir = rules_dir(&[("tests.yaml", TEST_RULES.to_owned())]);
    let service = service_with_rules(&redis, dir.path(), &["--metrics-listen", "127.0.0.1:0"]).await;
    let mut client = envoy(&service);
    const DOMAIN: &str = "cachelock_tests";

    // Nested, with a key-only entry: each user of each tenant has a counter.
    for _ in 0..3 {
        let response = ask_one(&mut client, DOMAIN, &[("tenant", "a"), ("user", "u1")]).await;
        assert_eq!(overall(&response), Code::Ok);
    }
    let over = ask_one(&mut client, DOMAIN, &[("tenant", "a"), ("user", "u1")]).await;
    assert_eq!(overall(&over), Code::OverLimit);
    for other in [[("tenant", "a"), ("user", "u2")], [("tenant", "b"), ("user", "u1")]] {
        assert_eq!(
            overall(&ask_one(&mut client, DOMAIN, &other).await),
            Code::Ok,
            "{other:?}"
        );
    }
    // A descriptor deeper or shallower than the rule matches nothing.
    let shallow = ask_one(&mut client, DOMAIN, &[("tenant", "a")]).await;
    assert_eq!(shallow.statuses[0].current_limit, None);

    // A wildcard value: each matching value its own counter; others match nothing.
    for _ in 0..2 {
        assert_eq!(
            overall(&ask_one(&mut client, DOMAIN, &[("plan", "gold-1")]).await),
            Code::Ok
        );
    }
    assert_eq!(
        overall(&ask_one(&mut client, DOMAIN, &[("plan", "gold-1")]).await),
        Code::OverLimit
    );
    assert_eq!(
        overall(&ask_one(&mut client, DOMAIN, &[("plan", "gold-2")]).await),
        Code::Ok
    );
    let silver = ask_one(&mut client, DOMAIN, &[("plan", "silver")]).await;
    assert_eq!(silver.statuses[0].current_limit, None);

    // hits_addend: 0 reports without consuming (and without refusing), more
    // than 1 consumes that many; the descriptor's own overrides the request's.
    let user = || descriptor(&[("tenant", "c"), ("user", "u")]);
    let with_hits = |request_hits: u32, descriptor_hits: Option<u64>| {
        let mut one = user();
        one.hits_addend = descriptor_hits;
        RateLimitRequest {
            hits_addend: request_hits,
            ..request(DOMAIN, vec![one])
        }
    };
    let report = ask(&mut client, with_hits(0, Some(0))).await;
    assert_eq!((overall(&report), report.statuses[0].limit_remaining), (Code::Ok, 3));
    let two = ask(&mut client, with_hits(2, None)).await;
    assert_eq!((overall(&two), two.statuses[0].limit_remaining), (Code::Ok, 1));
    let too_many = ask(&mut client, with_hits(1, Some(2))).await;
    assert_eq!(
        (overall(&too_many), too_many.statuses[0].limit_remaining),
        (Code::OverLimit, 1)
    );
    let last = ask(&mut client, with_hits(0, None)).await;
    assert_eq!(
        (overall(&last), last.statuses[0].limit_remaining),
        (Code::Ok, 0),
        "0 on the request means 1"
    );
    let empty = ask(&mut client, with_hits(0, Some(0))).await;
    assert_eq!(
        (overall(&empty), empty.statuses[0].limit_remaining),
        (Code::Ok, 0),
        "a report never refuses"
    );

    // Several descriptors, one over: OVER_LIMIT, and the others consume nothing.
    let several = ask(
        &mut client,
        request(
            DOMAIN,
            vec![
                descriptor(&[("bucket", "x")]),
                descriptor(&[("tenant", "a"), ("user", "u1")]),
            ],
        ),
    )
    .await;
    assert_eq!(overall(&several), Code::OverLimit);
    assert_eq!(code(&several.statuses[0]), Code::Ok);
    assert_eq!(code(&several.statuses[1]), Code::OverLimit);
    let bucket = ask_one(&mut client, DOMAIN, &[("bucket", "x")]).await;
    assert_eq!(
        bucket.statuses[0].limit_remaining, 4,
        "the token bucket was not charged for the refusal"
    );

    // Shadow mode: decided and counted, but always OK.
    let first = ask_one(&mut client, DOMAIN, &[("shadowed", "s")]).await;
    assert_eq!((overall(&first), first.statuses[0].limit_remaining), (Code::Ok, 0));
    let second = ask_one(&mut client, DOMAIN, &[("shadowed", "s")]).await;
    assert_eq!(overall(&second), Code::Ok);
    assert_eq!(code(&second.statuses[0]), Code::Ok);
    assert_eq!(
        service
            .metric("cachelock_rls_descriptors_total{result=\"shadow_over_limit\"}")
            .await,
        1.0
    );

    // Bad requests name their field.
    let status = client
        .should_rate_limit(request("", vec![descriptor(&[("exact", "x")])]))
        .await
        .expect_err("no domain");
    assert_invalid(status, "domain");
    let status = client
        .should_rate_limit(request(DOMAIN, Vec::new()))
        .await
        .expect_err("no descriptors");
    assert_invalid(status, "descriptors");
}

/// One descriptor of `entries` charged `hits`, with `limit` (per year) as Envoy's override.
fn charged(entries: &[(&str, &str)], hits: u64, limit: Option<u32>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        hits_addend: Some(hits),
        limit: limit.map(|requests_per_unit| rate_limit_descriptor::RateLimitOverride {
            requests_per_unit,
            unit: Unit::Year.number(),
        }),
        ..descriptor(entries)
    }
}

/// What is left of a counter, read without charging it.
async fn left(client: &mut RateLimitServiceClient<Channel>, described: RateLimitDescriptor) -> u32 {
    let response = ask(
        client,
        request(
            "cachelock_tests",
            vec![RateLimitDescriptor {
                hits_addend: Some(0),
                ..described
            }],
        ),
    )
    .await;
    response.statuses[0].limit_remaining
}

#[tokio::test]
async fn a_counter_named_twice_in_one_request_is_charged_both_costs_all_or_nothing() {
    let redis = TestRedis::start().await;
    let dir = rules_dir(&[("tests.yaml", TEST_RULES.to_owned())]);
    let service = service_with_rules(&redis, dir.path(), &[]).await;
    let mut client = envoy(&service);
    let twice = |first, second| {
        request(
            "cachelock_tests",
            vec![
                charged(&[("exact", "x")], first, None),
                charged(&[("exact", "x")], second, None),
            ],
        )
    };

    // 1 then 100 of a limit of 100: the second is over, so neither is charged.
    let response = ask(&mut client, twice(1, 100)).await;
    assert_eq!(overall(&response), Code::OverLimit);
    assert_eq!(code(&response.statuses[0]), Code::Ok);
    assert_eq!(code(&response.statuses[1]), Code::OverLimit);
    assert_eq!(left(&mut client, charged(&[("exact", "x")], 0, None)).await, 100);
    // 50 and 51 fit alone, not together.
    assert_eq!(overall(&ask(&mut client, twice(50, 51)).await), Code::OverLimit);
    assert_eq!(left(&mut client, charged(&[("exact", "x")], 0, None)).await, 100);
    // 40 and 60 fit together, and each is reported after its own charge.
    let response = ask(&mut client, twice(40, 60)).await;
    assert_eq!(overall(&response), Code::Ok);
    let remaining: Vec<u32> = response.statuses.iter().map(|status| status.limit_remaining).collect();
    assert_eq!(remaining, [60, 0]);
}

/// Rules with a blocking rule (0 per unit) and a quota-mode one, beside a plain limit.
const REFUSING_RULES: &str = "\
domain: cachelock_tests
descriptors:
  - key: remote_address
    value: blocked
    rate_limit:
      unit: year
      requests_per_unit: 0
  - key: user
    rate_limit:
      unit: year
      requests_per_unit: 10
  - key: plan
    quota_mode: true
    rate_limit:
      unit: year
      requests_per_unit: 1
";

#[tokio::test]
async fn a_request_refused_by_a_blocking_or_quota_rule_consumes_nothing() {
    let redis = TestRedis::start().await;
    let dir = rules_dir(&[("tests.yaml", REFUSING_RULES.to_owned())]);
    let service = service_with_rules(&redis, dir.path(), &[]).await;
    let mut client = envoy(&service);
    let user = || charged(&[("user", "alice")], 1, None);

    // A blocked address refuses the request before Redis is asked: alice's limit is untouched.
    for _ in 0..3 {
        let blocked = charged(&[("remote_address", "blocked")], 1, None);
        let response = ask(&mut client, request("cachelock_tests", vec![blocked, user()])).await;
        assert_eq!(overall(&response), Code::OverLimit);
    }
    assert_eq!(left(&mut client, user()).await, 10);

    // Once every quota rule is over, the request is refused, and consumes nothing either.
    let plan = || charged(&[("plan", "free")], 1, None);
    assert_eq!(
        overall(&ask(&mut client, request("cachelock_tests", vec![plan(), user()])).await),
        Code::Ok
    );
    for _ in 0..3 {
        let response = ask(&mut client, request("cachelock_tests", vec![plan(), user()])).await;
        assert_eq!(overall(&response), Code::OverLimit);
    }
    assert_eq!(left(&mut client, user()).await, 9, "only the allowed request counted");
}

#[tokio::test]
async fn a_shadow_rule_on_an_enforced_counter_consumes_nothing_of_a_refused_request() {
    let redis = TestRedis::start().await;
    let dir = rules_dir(&[("tests.yaml", TEST_RULES.to_owned())]);
    let service = service_with_rules(&redis, dir.path(), &[]).await;
    let mut client = envoy(&service);
    // The shadowed rule (1 per year, shadow mode) and Envoy's override of 1 per
    // year on the same descriptor name one counter.
    let shadow = || charged(&[("shadowed", "s")], 1, None);
    let enforced = |hits| charged(&[("shadowed", "s")], hits, Some(1));
    let response = ask(&mut client, request("cachelock_tests", vec![shadow(), enforced(2)])).await;
    assert_eq!(
        overall(&response),
        Code::OverLimit,
        "the enforced override refuses 2 of 1"
    );
    assert_eq!(code(&response.statuses[0]), Code::Ok, "a shadow rule never refuses");
    assert_eq!(
        left(&mut client, enforced(0)).await,
        1,
        "the refused request consumed nothing"
    );
    let response = ask(&mut client, request("cachelock_tests", vec![shadow(), enforced(0)])).await;
    assert_eq!(overall(&response), Code::Ok);
    // They are one counter: the shadow rule alone, allowed, consumes from it.
    ask(&mut client, request("cachelock_tests", vec![shadow()])).await;
    assert_eq!(left(&mut client, enforced(0)).await, 0, "one counter");
}

#[tokio::test]
async fn headers_describe_the_tightest_limit_when_asked_for() {
    let redis = TestRedis::start().await;
    let dir = rules_dir(&[("tests.yaml", TEST_RULES.to_owned())]);
    let service = service_with_rules(&redis, dir.path(), &["--rls-headers"]).await;
    let mut client = envoy(&service);
    let response = ask(
        &mut client,
        request(
            "cachelock_tests",
            vec![
                descriptor(&[("exact", "h")]),
                descriptor(&[("tenant", "h"), ("user", "h")]),
            ],
        ),
    )
    .await;
    let headers: Vec<(&str, &str)> = response
        .response_headers_to_add
        .iter()
        .map(|header| (header.key.as_str(), header.value.as_str()))
        .collect();
    assert_eq!(&headers[..2], &[("RateLimit-Limit", "3"), ("RateLimit-Remaining", "2")]);
    assert_eq!(headers[2].0, "RateLimit-Reset");
    let reset: u64 = headers[2].1.parse().expect("seconds");
    assert!(reset > 0 && reset <= 365 * 24 * 3600, "{reset}");
}

#[tokio::test]
async fn rules_mounted_from_a_kubernetes_configmap_take_effect_when_it_is_updated() {
    let redis = TestRedis::start().await;
    let rule = |limit: &str| {
        format!(
            "domain: mounted\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      requests_per_unit: {limit}\n"
        )
    };
    let volume = common::MountedVolume::new(&[("rules.yaml", &rule("5"))]);
    let service = service_with_rules(&redis, volume.path(), &[]).await;
    let mut client = envoy(&service);
    let limit = async |client: &mut RateLimitServiceClient<Channel>| {
        limit_of(&ask_one(client, "mounted", &[("k", "v")]).await.statuses[0])
    };
    // kubelet's own directories (..data, the timestamped one) are not read as rules.
    assert_eq!(limit(&mut client).await, Some((5, Unit::Day)));

    volume.update(&[("rules.yaml", &rule("2"))]);
    common::eventually("the updated ConfigMap in force", async || {
        limit(&mut client).await == Some((2, Unit::Day))
    })
    .await;
}

#[tokio::test]
async fn an_edited_rule_takes_effect_and_a_broken_edit_keeps_the_old_rules() {
    let (logs, _guard) = CapturedLogs::start(tracing::Level::INFO);
    let redis = TestRedis::start().await;
    let rule = |limit: &str| {
        format!(
            "domain: edited\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: year\n      requests_per_unit: {limit}\n"
        )
    };
    let dir = rules_dir(&[("edited.yaml", rule("5"))]);
    let file = dir.path().join("edited.yaml");
    let service = service_with_rules(&redis, dir.path(), &[]).await;
    let mut client = envoy(&service);
    let limit = async |client: &mut RateLimitServiceClient<Channel>| {
        limit_of(&ask_one(client, "edited", &[("k", "v")]).await.statuses[0])
    };
    assert_eq!(limit(&mut client).await, Some((5, Unit::Year)));

    std::fs::write(&file, rule("2")).expect("edit the rule");
    let edited = Instant::now();
    while limit(&mut client).await != Some((2, Unit::Year)) {
        assert!(edited.elapsed() < PATIENCE, "the edit never took effect");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    eprintln!(
        "an edited rule took effect {} ms after the write",
        edited.elapsed().as_millis()
    );

    let broken = "domain: edited\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 2\n";
    std::fs::write(&file, broken).expect("break the rule");
    logs.wait_for("refused the changed Envoy rate-limit rules").await;
    let text = logs.text();
    let line = text
        .lines()
        .find(|line| line.contains("refused the changed Envoy rate-limit rules"))
        .expect("the refusal");
    assert!(
        line.contains("edited.yaml") && line.contains("invalid rate limit unit 'fortnight'") && line.contains("line 3"),
        "{line}"
    );
    assert_eq!(
        limit(&mut client).await,
        Some((2, Unit::Year)),
        "the previous rules stay"
    );

    // The validator for users' CI pipelines agrees.
    let binary = env!("CARGO_BIN_EXE_cachelock");
    let checked = std::process::Command::new(binary)
        .args(["check-rls-config", file.to_str().expect("a UTF-8 path")])
        .output()
        .expect("run check-rls-config");
    assert!(!checked.status.success());
    let message = String::from_utf8_lossy(&checked.stderr);
    assert!(
        message.contains("edited.yaml") && message.contains("fortnight"),
        "{message}"
    );
    std::fs::write(&file, rule("2")).expect("repair the rule");
    let checked = std::process::Command::new(binary)
        .args(["check-rls-config", dir.path().to_str().expect("a UTF-8 path")])
        .output()
        .expect("run check-rls-config");
    assert!(checked.status.success());
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(printed.contains("edited.k: 2 per year (fixed_window)"), "{printed}");
}

#[tokio::test]
async fn a_broken_rules_file_stops_the_start() {
    let redis = TestRedis::start().await;
    let dir = rules_dir(&[("broken.yaml", "domain: x\ndescriptors:\n  - value: no key\n".to_owned())]);
    let config = cachelock::Config::from_args([
        "cachelock",
        "--redis-url",
        &redis.url(),
        "--rls-config",
        dir.path().to_str().expect("a UTF-8 path"),
    ])
    .expect("a configuration");
    let error = TestService::start_with(config)
        .await
        .stopped()
        .await
        .expect_err("refused");
    let message = error.to_string();
    assert!(
        message.contains("broken.yaml") && message.contains("descriptor has empty key"),
        "{message}"
    );
}

#[tokio::test]
async fn with_redis_down_the_outage_policy_answers() {
    let mut redis = TestRedis::start().await;
    let dir = rules_dir(&[("tests.yaml", TEST_RULES.to_owned())]);
    let open = service_with_rules(&redis, dir.path(), &[]).await;
    let closed = service_with_rules(&redis, dir.path(), &["--ratelimit-on-unavailable", "fail-closed"]).await;
    let (mut open_client, mut closed_client) = (envoy(&open), envoy(&closed));
    assert_eq!(
        overall(&ask_one(&mut open_client, "cachelock_tests", &[("exact", "o")]).await),
        Code::Ok
    );
    redis.stop().await;
    open.wait_for_health("", ServingStatus::NotServing).await;
    closed.wait_for_health("", ServingStatus::NotServing).await;
    let asked = Instant::now();
    let response = ask_one(&mut open_client, "cachelock_tests", &[("exact", "o")]).await;
    eprintln!(
        "fail-open answered in {} ms with Redis down",
        asked.elapsed().as_millis()
    );
    assert_eq!(overall(&response), Code::Ok);
    let response = ask_one(&mut closed_client, "cachelock_tests", &[("exact", "o")]).await;
    assert_eq!(overall(&response), Code::OverLimit);
    // Descriptors no rule limits need no Redis at all.
    let response = ask_one(&mut closed_client, "cachelock_tests", &[("unknown", "o")]).await;
    assert_eq!(overall(&response), Code::Ok);
}

/// On every topology: exact under concurrency, and several descriptors decided
/// together (one script per slot on a Cluster, where their counters usually live
/// in different slots).
async fn envoy_decisions_are_exact_on_every_topology(backend: common::Backend) {
    let dir = rules_dir(&[("tests.yaml", TEST_RULES.to_owned())]);
    let path = dir.path().to_str().expect("a UTF-8 path").to_owned();
    // Exactness, not speed, is under test: Redis decides every call, however slow.
    let service = backend
        .service(&["--rls-config", &path, "--ratelimit-timeout", "30s"])
        .await;
    let channel = service.channel();
    let calls = (0..300).map(|_| {
        let mut client = RateLimitServiceClient::new(channel.clone());
        async move { ask_one(&mut client, "cachelock_tests", &[("exact", "every")]).await }
    });
    let responses = futures_util::future::join_all(calls).await;
    let passed = responses
        .iter()
        .filter(|response| overall(response) == Code::Ok)
        .count();
    assert_eq!(passed, 100, "a limit of 100 lets exactly 100 through");

    let mut client = envoy(&service);
    let several = || {
        request(
            "cachelock_tests",
            vec![
                descriptor(&[("tenant", "t"), ("user", "u")]),
                descriptor(&[("plan", "gold")]),
                descriptor(&[("exact", "every")]),
            ],
        )
    };
    let response = ask(&mut client, several()).await;
    assert_eq!(overall(&response), Code::OverLimit, "the third is used up");
    let codes: Vec<Code> = response.statuses.iter().map(code).collect();
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::OverLimit]);
    if backend.mode != common::Mode::Cluster {
        // One script decided all three: the refusal consumed nothing.
        let user = ask_one(&mut client, "cachelock_tests", &[("tenant", "t"), ("user", "u")]).await;
        assert_eq!(user.statuses[0].limit_remaining, 2);
    }
}

/// Rules with windows of several units, and windows aligned to a calendar.
const WINDOW_RULES: &str = "\
domain: windows
descriptors:
  - key: pair
    rate_limit: {unit: second, unit_multiplier: 2, requests_per_unit: 2, calendar: UTC}
  - key: five
    rate_limit: {unit: minute, unit_multiplier: 5, requests_per_unit: 1}
  - key: berlin
    rate_limit: {unit: day, requests_per_unit: 10, calendar: Europe/Berlin}
";

fn until_reset(status: &DescriptorStatus) -> std::time::Duration {
    let reset = status.duration_until_reset.unwrap_or_default();
    std::time::Duration::new(
        u64::try_from(reset.seconds).unwrap_or(0),
        u32::try_from(reset.nanos).unwrap_or(0),
    )
}

async fn unit_multipliers_and_calendar_windows_count_in_their_windows(backend: common::Backend) {
    let dir = rules_dir(&[("windows.yaml", WINDOW_RULES.to_owned())]);
    let path = dir.path().to_str().expect("a UTF-8 path").to_owned();
    let service = backend.service(&["--rls-config", &path, "--rls-headers"]).await;
    let mut client = envoy(&service);

    // 1 per 5 minutes, in windows of 300 s counted from the epoch.
    let before = common::unix_now();
    let five = ask_one(&mut client, "windows", &[("five", "a")]).await;
    let after = common::unix_now();
    assert_eq!(overall(&five), Code::Ok);
    let reset = until_reset(&five.statuses[0]);
    assert!(reset <= std::time::Duration::from_secs(300), "{reset:?}");
    common::assert_resets_at(before, after, reset, |instant| {
        instant.subsec_micros() == 0 && instant.as_secs() % 300 == 0
    });
    assert_eq!(
        overall(&ask_one(&mut client, "windows", &[("five", "a")]).await),
        Code::OverLimit
    );

    // A day in Berlin ends at midnight, Berlin time, and the header says so.
    let before = common::unix_now();
    let berlin = ask_one(&mut client, "windows", &[("berlin", "a")]).await;
    let after = common::unix_now();
    let midnight = {
        let zone = jiff::tz::TimeZone::get("Europe/Berlin").expect("a time zone");
        let today = jiff::Timestamp::now().to_zoned(zone.clone()).date();
        let tomorrow = today.tomorrow().expect("a tomorrow");
        tomorrow
            .to_zoned(zone)
            .expect("a midnight")
            .timestamp()
            .as_microsecond()
    };
    common::assert_resets_at(before, after, until_reset(&berlin.statuses[0]), |instant| {
        i64::try_from(instant.as_micros()).ok() == Some(midnight)
    });
    let header: u64 = berlin
        .response_headers_to_add
        .iter()
        .find(|header| header.key == "RateLimit-Reset")
        .and_then(|header| header.value.parse().ok())
        .expect("a RateLimit-Reset header");
    let reset = until_reset(&berlin.statuses[0]);
    assert_eq!(header, reset.as_secs() + u64::from(reset.subsec_nanos() > 0));
    assert_eq!(berlin.statuses[0].limit_remaining, 9);

    // 2 per calendar window of 2 seconds: into the start of one, then spend it.
    let first = ask_one(&mut client, "windows", &[("pair", "a")]).await;
    tokio::time::sleep(until_reset(&first.statuses[0])).await;
    let codes: Vec<Code> = futures_util::future::join_all((0..3).map(|_| {
        let mut client = envoy(&service);
        async move { overall(&ask_one(&mut client, "windows", &[("pair", "a")]).await) }
    }))
    .await;
    assert_eq!(codes.iter().filter(|code| **code == Code::Ok).count(), 2, "{codes:?}");
}

/// A leased rule: decided from slices the instances lease from Redis.
const LEASED_RULES: &str = "\
domain: leased
descriptors:
  - key: hot
    rate_limit: {unit: hour, requests_per_unit: 100, algorithm: token_bucket, leased: true}
";

async fn leased_rules_never_admit_more_than_the_limit_across_instances(backend: common::Backend) {
    let dir = rules_dir(&[("leased.yaml", LEASED_RULES.to_owned())]);
    let path = dir.path().to_str().expect("a UTF-8 path").to_owned();
    let first = backend.service(&["--rls-config", &path]).await;
    let second = backend.service(&["--rls-config", &path]).await;
    let channels = [first.channel(), second.channel()];
    let calls = (0..300).map(|i| {
        let mut client = RateLimitServiceClient::new(channels[i % 2].clone());
        async move { ask_one(&mut client, "leased", &[("hot", "key")]).await }
    });
    let responses = futures_util::future::join_all(calls).await;
    let passed = responses
        .iter()
        .filter(|response| overall(response) == Code::Ok)
        .count();
    println!("{passed} of 300 leased Envoy decisions allowed on a limit of 100");
    assert!(passed <= 100, "{passed} allowed on a limit of 100");
    assert!(passed >= 50, "only {passed} allowed: slices left too much unused");
}

in_every_mode!(
    envoy_decisions_are_exact_on_every_topology,
    unit_multipliers_and_calendar_windows_count_in_their_windows,
    leased_rules_never_admit_more_than_the_limit_across_instances,
);
