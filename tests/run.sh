#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit and integration tests (the mesh ones
# on network-namespace topologies, which need root), and the GATEWAY-HTTP and MESH-HTTP
# conformance suites. Installs the system packages the tests need if missing.
#
#   bash tests/run.sh
#
# The conformance corpus is read from ../shared/conformance (override with STRAIT_CORPUS).
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
for tool in ip:iproute2 iptables:iptables curl:curl; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need_packages+=("${tool##*:}")
done
if [ ${#need_packages[@]} -gt 0 ]; then
    echo "== installing ${need_packages[*]}"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}"
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}"
    fi
fi

corpus="${STRAIT_CORPUS:-../shared/conformance}"

# Incremental compilation state doubles the size of a from-scratch build and buys nothing on
# a clean checkout: off unless the caller asks for it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
# The mesh tests exec the echo client inside pod namespaces: build it first.
cargo build --quiet -p strait-echo
cargo test --workspace --quiet

echo "== conformance: GATEWAY-HTTP"
mkdir -p target/conformance
cargo run --quiet -p strait-conformance -- \
    --corpus "$corpus" --profile GATEWAY-HTTP \
    --report target/conformance/gateway-http.yaml

echo "== conformance: MESH-HTTP"
cargo run --quiet -p strait-conformance -- \
    --corpus "$corpus" --profile MESH-HTTP \
    --report target/conformance/mesh-http.yaml
