# syntax=docker/dockerfile:1
# kubewire node agent image: the binary, the tools the dataplane adapters call, and
# the standard CNI plugins that the DaemonSet's init container copies to the node's
# /opt/cni/bin when it has none.

FROM rust:1-trixie AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The workspace's lab crate must be present for cargo to load the workspace; only
# the agent (`-p kubewire`) is built, and it links nothing of the lab.
COPY lab ./lab
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kubewire --bin kubewire \
 && install -D -m 0755 target/release/kubewire /out/kubewire \
 && strip /out/kubewire

# Same Debian release as the builder, so the binary's glibc matches.
FROM debian:trixie-slim
# nftables: firewall and nftables proxy; iproute2: `ip` for diagnostics and netns
# work; containernetworking-plugins: bridge, host-local, portmap, loopback in
# /usr/lib/cni; no ipset (sets live in nftables) and no iptables of our own.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates iproute2 nftables containernetworking-plugins \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/kubewire /usr/local/bin/kubewire
ENTRYPOINT ["/usr/local/bin/kubewire"]
CMD ["run"]
