# syntax=docker/dockerfile:1
#
# One image for every role (`strait controller`, `node`, `gateway`, `waypoint`):
#
#   docker build -t ghcr.io/strait-mesh/strait:0.1.0 .
#
# The controller, gateways and waypoints run as the image's non-root user. The node proxy
# runs as root with NET_ADMIN, SYS_ADMIN and NET_RAW (set by its DaemonSet), and execs
# iptables-restore inside pod network namespaces, which is why iptables is in the image.

# The compiler crates/strait/hot-text.ld and crates/strait/bolt-profile.yaml.gz were recorded
# with (named in their headers): both name functions by their full symbol, which another
# compiler version renames. bookworm: bolt-19 is in its archive.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- recipe: what the dependency layer depends on --------------------------------------------
# Every Cargo manifest and the lockfile, with every Rust source replaced by an empty program.
# Its content changes only when dependencies or the crate layout change, so the expensive
# dependency build below is reused across ordinary source edits.
FROM ${RUST_IMAGE} AS recipe
WORKDIR /src
COPY . .
RUN set -eu; \
    mkdir -p /recipe; \
    find . -path ./target -prune -o -type f \( -name Cargo.toml -o -name Cargo.lock \
        -o -name 'rust-toolchain*' -o -path './.cargo/*' \) -print \
    | while read -r f; do install -D -m 0644 "$f" "/recipe/$f"; done; \
    find . -path ./target -prune -o -type f -name '*.rs' -print \
    | while read -r f; do \
        mkdir -p "/recipe/$(dirname "$f")"; \
        printf '#![allow(warnings)]\nfn main() {}\n' >"/recipe/$f"; \
    done

# --- builder ------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# llvm-bolt lays the linked binary out from crates/strait/bolt-profile.yaml.gz (dist.sh).
RUN apt-get update \
    && apt-get install -y --no-install-recommends bolt-19 \
    && rm -rf /var/lib/apt/lists/*
# The `dist` profile: release with fat LTO over one codegen unit (see Cargo.toml), then the
# code layout llvm-bolt applies (crates/strait/dist.sh): the build tests/perf/run.sh measures.
# LTO runs again at the final link, so the dependency layer saves compiling the dependencies,
# not the whole-program optimisation.
# Dependency layer: compiles every third-party crate `strait` needs against the stubs.
COPY --from=recipe /recipe/ ./
RUN cargo build --profile dist --locked -p strait
# The real sources. COPY keeps the build context's timestamps, which may be older than the
# stubs just compiled: touch them so cargo rebuilds every workspace crate.
COPY . .
RUN find . -path ./target -prune -o -type f -name '*.rs' -exec touch {} + \
    && crates/strait/dist.sh -- --locked >/tmp/dist.out \
    && install -m 0755 "$(tail -1 /tmp/dist.out)" /usr/local/bin/strait \
    && /usr/local/bin/strait --version

# --- runtime ------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
# iptables: the node proxy's capture rules (iptables-restore / iptables-save, nf_tables
# backend by default; the rules live in each pod's own network namespace, so the host's
# backend does not matter). iproute2: `ip`, with which the node proxy installs the routing
# that goes with those rules (iptables/README.md), and `ip netns` for operators debugging a node.
# ca-certificates: TLS to the API server and to backends outside the cluster.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables iproute2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The conventional non-root id (65532), the one the provisioned Deployments run as.
RUN groupadd --system --gid 65532 strait \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin strait
COPY --from=builder /usr/local/bin/strait /usr/local/bin/strait
USER 65532:65532
# 15010 config stream, 15012 CA (controller); 15001/15006/15008 capture and HBONE (proxies);
# 15020 metrics; 15021 health.
EXPOSE 15001 15006 15008 15010 15012 15020 15021
LABEL org.opencontainers.image.title="strait" \
      org.opencontainers.image.description="Gateway API gateway and ambient-style service mesh" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/strait"]
