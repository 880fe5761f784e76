# roomcast in a container: built in a Rust image, run as a non-root user in a slim Debian image.
#
#   docker build -t roomcast .
#   docker run -d --name roomcast -p 7700:7700/udp -p 7700:7700/tcp -p 127.0.0.1:7780:7780 \
#     -v roomcast-data:/data roomcast
#
# The relay listens on every interface of the container (QUIC and WebTransport 7700/udp, the
# public web listener with the WebSocket and the browser SDK 7700/tcp, admin API 7780/tcp;
# publish the admin port on the host's loopback only) and keeps its store, generated secrets
# and development certificates in the /data volume. See the README's Deploy section.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The manifests first: the dependency layer is rebuilt only when they change.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo fetch --locked \
    && rm -rf src
COPY src ./src
RUN cargo build --release --locked --bin roomcast \
    && strip --strip-debug target/release/roomcast \
    && install -m 0755 target/release/roomcast /usr/local/bin/roomcast

FROM debian:bookworm-slim
# curl for the health check.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin roomcast \
    && mkdir -p /data \
    && chown roomcast:roomcast /data \
    && chmod 0700 /data
COPY --from=build /usr/local/bin/roomcast /usr/local/bin/roomcast
COPY LICENSE-MIT LICENSE-APACHE /usr/share/doc/roomcast/
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# Flags and files can still override these (flags > environment > config file > defaults).
ENV ROOMCAST_DATA=/data \
    ROOMCAST_QUIC=0.0.0.0:7700 \
    ROOMCAST_ADMIN=0.0.0.0:7780 \
    RUST_LOG=info
EXPOSE 7700/udp 7700/tcp 7780/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:7780/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["roomcast"]
CMD ["serve"]
