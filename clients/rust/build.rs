//! Generates the client code from the protocol's .proto files (`proto/`, a link to
//! the repository's own, copied into the packaged crate).

use std::io;

const PROTOS: &[&str] = &[
    "proto/cachelock/cache/v1/cache.proto",
    "proto/cachelock/ratelimit/v1/ratelimit.proto",
    "proto/cachelock/lock/v1/lock.proto",
    "proto/cachelock/session/v1/session.proto",
    "proto/cachelock/pubsub/v1/pubsub.proto",
    "proto/cachelock/election/v1/election.proto",
];

fn main() -> io::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(io::Error::other)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .bytes(".")
        .compile_with_config(config, PROTOS, &["proto"])?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
