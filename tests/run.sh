#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit and integration tests (the mesh ones
# on network-namespace topologies, which need root), the GATEWAY-HTTP and MESH-HTTP
# conformance suites, and the shipped build (crates/strait/dist.sh: LTO, then llvm-bolt) serving
# the built-in demo. Installs the system packages the tests need if missing.
#
#   bash tests/run.sh
#
# The conformance corpus is read from ../shared/conformance (override with STRAIT_CORPUS).
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
for tool in ip:iproute2 iptables:iptables curl:curl llvm-bolt-19:bolt-19; do
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

echo "== the shipped build serves the demo"
# The image ships crates/strait/dist.sh's binary, not the one the tests above ran: a different
# profile (fat LTO), a linker script and llvm-bolt's rewrite, any of which could break it.
shipped="$(crates/strait/dist.sh -- --locked | tail -1)"
demo_log="target/conformance/dist-demo.log"
"$shipped" standalone --port-offset 30000 --no-watch >"$demo_log" 2>&1 &
demo_pid=$!
trap 'kill "$demo_pid" 2>/dev/null || true' EXIT
# expect CODE HOST PATH: the demo's listener (port 8080 + 30000) answers CODE.
expect() {
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $2" "http://127.0.0.1:38080$3" || true)"
    code="${code#000}" # curl's code when nothing answered
    [ "$code" = "$1" ] || { echo "shipped build: $2$3 answered ${code:-nothing}, not $1 (log: $demo_log)" >&2; return 1; }
}
for _ in $(seq 100); do
    expect 200 store.example.com /api/items 2>/dev/null && break
    kill -0 "$demo_pid" 2>/dev/null || { cat "$demo_log" >&2; echo "shipped build: the demo exited" >&2; exit 1; }
    sleep 0.2
done
expect 200 store.example.com /api/items
expect 301 store.example.com /old/items
expect 404 other.example.com /
echo "shipped build ($shipped): the demo answers 200, 301 and 404 as it should"
