# cachelock: a multi-stage build to a small, non-root runtime image.
#
#   docker build -t cachelock .
#   docker run -p 50051:50051 -e REDIS_URL=redis://redis.internal:6379 cachelock
#
# The runtime image has no redis-server: REDIS_URL must be set (see docker-compose.yml).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs rustfmt.toml ./
COPY proto ./proto
COPY src ./src
RUN cargo build --release --locked --bin cachelock

# distroless/cc: glibc, CA certificates for rediss://, a nonroot user, no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/cachelock /usr/local/bin/cachelock
ENV CACHELOCK_LISTEN=0.0.0.0:50051 \
    CACHELOCK_LOG_FORMAT=json
EXPOSE 50051
# 65532 is distroless's nonroot user.
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/cachelock", "probe", "--addr", "127.0.0.1:50051"]
ENTRYPOINT ["/usr/local/bin/cachelock"]
CMD ["serve"]
