# The sluice gateway as a container image: built in a Rust image, run from a distroless one.
#
#   docker build -t sluice .
#   docker run --rm -p 8080:8080 -v $PWD/examples:/etc/sluice:ro sluice serve --config /etc/sluice/mock.toml
#
# Runtime: gcr.io/distroless/cc-debian12:nonroot (glibc and CA certificates, no shell, no
# package manager), as user 65532. The container's default seccomp profile blocks io_uring:
# with `driver = "auto"` the workers fall back to epoll by themselves (README, "Kubernetes").

FROM rust:1.95-bookworm AS build
WORKDIR /src
# cmake and a C compiler build the bundled SQLite and ring.
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p sluice-proxy --bin sluice \
 && install -D -m 0755 target/release/sluice /out/sluice

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sluice /usr/local/bin/sluice
USER 65532:65532
# The store's spill file and (without PostgreSQL) the SQLite file live here.
ENV STATE_DIRECTORY=/var/lib/sluice
WORKDIR /var/lib/sluice
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["serve", "--config", "/etc/sluice/sluice.toml"]
