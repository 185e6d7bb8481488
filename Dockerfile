# syntax=docker/dockerfile:1
# kubewire node agent image: the binary, the tools the dataplane adapters and the
# DaemonSet's init containers call, and statically linked CNI plugins that the
# `install-cni-plugins` init container copies to the node's /opt/cni/bin.
#
#   docker build -t REGISTRY/kubewire:TAG . && docker push REGISTRY/kubewire:TAG
#
# (docs/INSTALL.md; manifests/base/kustomization.yaml names the image to run.)

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

# The CNI plugins the conflist chains, built without cgo: static binaries that run on
# any node whatever its libc (Debian's containernetworking-plugins are dynamically
# linked against Debian's glibc, newer than many nodes have).
FROM golang:1 AS cni-plugins
ARG CNI_PLUGINS_VERSION=v1.7.1
RUN CGO_ENABLED=0 GOBIN=/out go install -trimpath -ldflags="-s -w" \
      github.com/containernetworking/plugins/plugins/main/bridge@${CNI_PLUGINS_VERSION} \
      github.com/containernetworking/plugins/plugins/main/loopback@${CNI_PLUGINS_VERSION} \
      github.com/containernetworking/plugins/plugins/ipam/host-local@${CNI_PLUGINS_VERSION} \
      github.com/containernetworking/plugins/plugins/meta/portmap@${CNI_PLUGINS_VERSION} \
 && echo "${CNI_PLUGINS_VERSION}" > /out/VERSION

# Same Debian release as the builder, so the binary's glibc matches.
FROM debian:trixie-slim
# nftables: firewall, routing and proxy tables; iproute2: `ip` for diagnostics;
# kmod: modprobe for the node-setup init container (br_netfilter). No ipset (sets
# live in nftables) and no iptables of our own.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iproute2 kmod nftables \
 && rm -rf /var/lib/apt/lists/*
# The install-cni-plugins init container compares /usr/lib/kubewire/cni/VERSION with
# what it installed on the node before.
COPY --from=cni-plugins /out/ /usr/lib/kubewire/cni/
COPY --from=builder /out/kubewire /usr/local/bin/kubewire
ENTRYPOINT ["/usr/local/bin/kubewire"]
CMD ["run"]
