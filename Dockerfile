# cachelock: a multi-stage build to a small, non-root runtime image.
#
#   docker build -t cachelock .
#   docker run -p 50051:50051 -e REDIS_URL=redis://redis.internal:6379 \
#     -v /path/to/tls:/etc/cachelock/tls:ro -v /path/to/auth.toml:/etc/cachelock/auth.toml:ro \
#     -e CACHELOCK_TLS_CERT=/etc/cachelock/tls/tls.crt -e CACHELOCK_TLS_KEY=/etc/cachelock/tls/tls.key \
#     -e CACHELOCK_AUTH_FILE=/etc/cachelock/auth.toml cachelock
#
# Mounted files (the auth file, TLS keys, rate-limit rules) must be readable by the
# image's user, uid 65532: a key with mode 0600 owned by root is not.
#
# The runtime image has no redis-server: REDIS_URL must be set (see docker-compose.yml).
# It listens on every interface, so it refuses to start until it can tell its
# callers apart: an auth file (CACHELOCK_AUTH_FILE) or client certificates
# (CACHELOCK_TLS_CLIENT_CA), best with TLS (CACHELOCK_TLS_CERT/_KEY, the
# cert-manager secret layout above) — or CACHELOCK_ALLOW_INSECURE_LISTEN=true behind
# a mesh that encrypts and authenticates for it. With TLS, the HEALTHCHECK's probe needs
# CACHELOCK_PROBE_TLS=true, CACHELOCK_PROBE_TLS_CA and CACHELOCK_PROBE_TLS_SERVER_NAME.

# The runtime stage's base, and the stage its binary comes from. CI builds this same
# file without pulling anything (.ci/image): a base it assembles from the files below,
# and a binary it built already.
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY_FROM=build

# Fully qualified names: podman and buildah refuse short ones without a default registry.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs rustfmt.toml ./
COPY proto ./proto
COPY src ./src
# The workspace's other members: cargo reads their manifests to resolve the lock file.
COPY bench ./bench
COPY testkit ./testkit
RUN cargo build --release --locked --package cachelock --bin cachelock

# hadolint ignore=DL3006
FROM ${BINARY_FROM} AS binary

# distroless/cc: glibc, CA certificates for rediss://, a nonroot user, no shell.
# hadolint ignore=DL3006
FROM ${RUNTIME_BASE}
COPY --from=binary /src/target/release/cachelock /usr/local/bin/cachelock
ENV CACHELOCK_LISTEN=0.0.0.0:50051 \
    CACHELOCK_METRICS_LISTEN=0.0.0.0:9464 \
    CACHELOCK_LOG_FORMAT=json
EXPOSE 50051 9464
# 65532 is distroless's nonroot user.
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/cachelock", "probe", "--addr", "127.0.0.1:50051"]
ENTRYPOINT ["/usr/local/bin/cachelock"]
CMD ["serve"]
