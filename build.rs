//! Generates the gRPC code and the reflection descriptor set from `proto/`.

use std::{env, io, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/cachelock/cache/v1/cache.proto",
    "proto/cachelock/ratelimit/v1/ratelimit.proto",
    "proto/cachelock/lock/v1/lock.proto",
    "proto/cachelock/session/v1/session.proto",
    "proto/cachelock/pubsub/v1/pubsub.proto",
    "proto/cachelock/election/v1/election.proto",
    // Envoy's rate limit service, vendored (see proto/envoy/README.md).
    "proto/envoy/service/ratelimit/v3/rls.proto",
    "proto/envoy/extensions/common/ratelimit/v3/ratelimit.proto",
    "proto/envoy/config/core/v3/base.proto",
    "proto/envoy/type/v3/ratelimit_unit.proto",
];

fn main() -> io::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| io::Error::other("OUT_DIR is not set"))?);
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(io::Error::other)?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    tonic_prost_build::configure()
        // Requests that are not valid protobuf are the caller's error: INVALID_ARGUMENT.
        .codec_path("crate::codec::CheckedCodec")
        // A Pub/Sub message goes to every subscriber: one shared buffer, not a copy each.
        .bytes(".cachelock.pubsub.v1.Message.payload")
        .file_descriptor_set_path(out_dir.join("cachelock_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["proto"])?;

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    // The files the Envoy API imports.
    println!("cargo:rerun-if-changed=proto/envoy");

    // The commit, for the build-info metric; "unknown" outside a git checkout.
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|commit| commit.trim().to_owned())
        .filter(|commit| !commit.is_empty());
    if let Some(commit) = commit {
        println!("cargo:rustc-env=CACHELOCK_GIT_COMMIT={commit}");
    }
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    Ok(())
}
