#!/usr/bin/env bash
# One-run performance comparison: Strait vs HAProxy vs nginx vs direct, on loopback and on a
# network-namespace mesh topology (198.18.0.0/15 only). Interleaved rounds, medians reported,
# table printed and written to docs/performance.md (see that file for the method).
#
#   sudo tests/perf/run.sh            # 3 rounds of 10 s tests
#   sudo tests/perf/run.sh --rounds 5
#   sudo tests/perf/run.sh --quick    # smoke run: 1 round of 3 s tests
#   sudo tests/perf/run.sh --only bulk,idle --out /tmp/p.md   # some sections, while tuning
#   sudo tests/perf/run.sh --only mesh --hold   # set up, warm up, then keep running to profile
#   sudo tests/perf/run.sh --binary BIN   # measure another build of strait (an image's, a branch's)
#
# Needs root (network namespaces, iptables in the pods). Installs wrk, nghttp2-client (h2load),
# haproxy, nginx and iperf3 with apt-get when missing. Sends traffic only to loopback and to
# its own namespaces; every process and namespace it made is removed on exit, Ctrl-C or error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROUNDS=3
DURATION=10
QUICK=0
OUT="$ROOT/docs/performance.md"
KEEP_WORK=0
HOLD=0
ONLY="h1,h2c,mesh,bulk,idle"
BINARY=""

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo "options: --rounds N  --quick  --duration SECONDS  --out FILE  --keep-work  --only h1,h2c,mesh,bulk,idle  --hold  --binary PATH"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
        --quick) QUICK=1; ROUNDS=1; DURATION=3; shift ;;
        --duration) DURATION="${2:?--duration needs seconds}"; shift 2 ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        --keep-work) KEEP_WORK=1; shift ;;
        --only) ONLY="${2:?--only needs a list of sections}"; shift 2 ;;
        --hold) HOLD=1; shift ;;
        --binary) BINARY="${2:?--binary needs a path}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$ROUNDS" in ''|*[!0-9]*) echo "--rounds: not a number: $ROUNDS" >&2; exit 2 ;; esac
case "$DURATION" in ''|*[!0-9]*) echo "--duration: not a number: $DURATION" >&2; exit 2 ;; esac
[ "$ROUNDS" -ge 1 ] || { echo "--rounds must be at least 1" >&2; exit 2; }
# Bulk transfers: three per round at half the duration (at least 3 s); one in a quick run.
if [ "$QUICK" -eq 1 ]; then
    BULK_REPEATS=1 BULK_DURATION=$DURATION
else
    BULK_REPEATS=3 BULK_DURATION=$(( DURATION / 2 > 3 ? DURATION / 2 : 3 ))
fi
for section in ${ONLY//,/ }; do
    case "$section" in h1|h2c|mesh|bulk|idle) ;; *) echo "--only: unknown section: $section" >&2; exit 2 ;; esac
done
if [ -n "$BINARY" ]; then
    [ -f "$BINARY" ] && [ -x "$BINARY" ] || { echo "--binary: not an executable file: $BINARY" >&2; exit 2; }
    BINARY="$(realpath -- "$BINARY")"
fi
# wants SECTION: whether this run measures SECTION (see --only).
wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, iptables)" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Ports (all on 127.0.0.1) and load shapes.
BACKEND_H1=18001      # nginx: return 200 "hello, world\n"
BACKEND_H2C=18002     # the same server, h2c prior knowledge
GATEWAY_OFFSET=18000  # strait standalone --port-offset: listener port 80 -> 18080
STRAIT_PORT=18080     # HTTP/1.1 and h2c on one listener
HAPROXY_H1=18180
HAPROXY_H2C=18181
NGINX_H1=18280
NGINX_H2C=18281
# The same three as deployed (a worker per CPU, unpinned), for the "as deployed" rows only.
STRAIT_PERCPU_OFFSET=18700  # listener port 80 -> 18780
STRAIT_PERCPU_PORT=18780
HAPROXY_PERCPU_H1=18190
HAPROXY_PERCPU_H2C=18191
NGINX_PERCPU_H1=18290
NGINX_PERCPU_H2C=18291
CA_PORT=18512         # the mesh CA (loopback only)
CONFIG_STREAM_PORT=18510  # a standalone serving the config stream to the fed gateway
MESH_CONFIG_PORT=18511    # a standalone serving the config stream to the node proxy and waypoint
FED_PORT=18580        # the gateway fed over the config stream (its config server: +1000)
HAPROXY_TCP=15202     # inside the plain client pod: HAProxy TCP mode
HAPROXY_TCP_SPLICE=15203
IPERF_PORT=5201
CAPTURED_PORT=5202    # the captured client pod dials this; its capture rule takes it to HAProxy
MESH_HTTP_PORT=8080   # nginx inside the server pods
PATH_URL="/api/hello"
HOST_HEADER="example.com"
WRK_THREADS=1
WRK_CONNS=64
LIGHT_CONNS=4         # the light-load mesh rows
# Every Strait process runs its default worker count unless a section says otherwise.
unset STRAIT_WORKERS
H2_CLIENTS=16
H2_STREAMS=10
IDLE_CONNS=10000

# Pinning: the proxy under test gets CPU 0, load generators and backends CPU 1, so each proxy
# has exactly one core to itself and the figures do not depend on who wins the scheduler.
NCPU="$(nproc)"
if [ "$NCPU" -ge 2 ]; then
    PROXY_CPU=0; LOAD_CPU=1
    PIN_PROXY=(taskset -c "$PROXY_CPU"); PIN_LOAD=(taskset -c "$LOAD_CPU")
else
    PIN_PROXY=(); PIN_LOAD=()
fi
CLK_TCK="$(getconf CLK_TCK)"

# ---------------------------------------------------------------------------------------------
# Cleanup: every process we start is recorded; the mesh helper tears its namespaces down on
# SIGTERM, and anything it left is removed by name from its env file.
WORK="$(mktemp -d /tmp/strait-perf.XXXXXX)"
PIDS=()
MESH_PID=""
FINISHED=0

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    if [ -n "$MESH_PID" ] && kill -0 "$MESH_PID" 2>/dev/null; then
        kill -TERM "$MESH_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$MESH_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$MESH_PID" 2>/dev/null
    fi
    wait 2>/dev/null
    # Namespaces the helper could not remove (killed hard): delete them by name.
    if [ -f "$WORK/mesh/env" ]; then
        local ns
        for ns in $(grep -E '_NETNS=' "$WORK/mesh/env" | cut -d= -f2); do
            ip netns delete "$ns" 2>/dev/null
            rm -rf "/etc/netns/$ns"
        done
    fi
    if [ "$FINISHED" -eq 1 ] && [ "$KEEP_WORK" -eq 0 ]; then
        rm -rf "$WORK"
    else
        echo "logs kept in $WORK" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
note() { printf -- '- %s\n' "$*" >>"$WORK/notes.md"; log "note: $*"; }

# ---------------------------------------------------------------------------------------------
# Tools.
need=()
for pair in wrk:wrk h2load:nghttp2-client haproxy:haproxy nginx:nginx iperf3:iperf3 \
    taskset:util-linux ip:iproute2 iptables:iptables ss:iproute2 llvm-bolt-19:bolt-19; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1 || {
        apt-get update >>"$WORK/apt.log" 2>&1
        apt-get install -y --no-install-recommends "${need[@]}" >>"$WORK/apt.log" 2>&1
    }
fi
# Packaged services may have been started by the install: we use our own instances only.

# Strait as it ships: crates/strait/dist.sh's build, the `dist` profile (release + fat LTO, see
# Cargo.toml) laid out by llvm-bolt from the recorded profile. The harness itself (load
# generator, mesh helper, report) is an ordinary release build.
# cargo runs in $ROOT, so a relative CARGO_TARGET_DIR is relative to it.
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
PERF="$TARGET_DIR/release/strait-perf"
log "building strait-perf (release)"
(cd "$ROOT" && cargo build --release -q -p strait-perf)
if [ -n "$BINARY" ]; then
    STRAIT="$BINARY"
    LINKED="$STRAIT"
    BUILD="given with --binary: $STRAIT"
else
    log "building strait (crates/strait/dist.sh)"
    "$ROOT/crates/strait/dist.sh" >"$WORK/dist.out" 2>"$WORK/dist.log" || {
        cat "$WORK/dist.log" >&2
        exit 1
    }
    STRAIT="$(tail -1 "$WORK/dist.out")"
    # dist.sh says how much of the profile applied ("the profile applied to N of the M
    # functions it records"), and warns when it is stale for this build.
    PROFILED="$(sed -n 's/^dist.sh: the profile applied to //p' "$WORK/dist.log" | head -1)"
    BUILD="dist profile: release, fat LTO, one codegen unit; laid out by llvm-bolt from crates/strait/bolt-profile.yaml.gz, applied to ${PROFILED:-an unknown share of the functions it records}"
    while read -r warning; do
        note "crates/strait/dist.sh: $warning: the speed rows are lower than they need be"
    done < <(sed -n 's/^dist.sh: warning: //p' "$WORK/dist.log")
    # What llvm-bolt rewrote: the link, laid out by crates/strait/hot-text.ld.
    LINKED="$TARGET_DIR/dist/strait"
fi
# A file just written stays in the page cache as its writer left it, and mapping it then brings
# in more than the pages a process touches: llvm-bolt's output idled 5-7 MB larger than the
# same file read back from disk. Dropped from the cache, it is read as a node reads its image.
dd if="$STRAIT" iflag=nocache count=0 status=none || note "could not drop $STRAIT from the page cache"

HARD_NOFILE="$(ulimit -Hn)"
if [ "$HARD_NOFILE" = unlimited ] || [ "$HARD_NOFILE" -gt 65536 ]; then HARD_NOFILE=65536; fi
ulimit -n "$HARD_NOFILE"
[ "$HARD_NOFILE" -ge $((IDLE_CONNS + 1000)) ] ||
    note "open-file limit is $HARD_NOFILE: fewer than $IDLE_CONNS idle connections can be held"

# ---------------------------------------------------------------------------------------------
# Helpers.

# start NAME CMD...: runs CMD in the background, logging to $WORK/NAME.log; sets LAST_PID.
start() {
    local name="$1"; shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# The process and all its descendants.
pid_tree() {
    local pid child
    for pid in "$@"; do
        [ -d "/proc/$pid" ] || continue
        echo "$pid"
        for child in $(pgrep -P "$pid" 2>/dev/null || true); do pid_tree "$child"; done
    done
}

# cores_jiffies: "busy available" jiffies so far of the proxy's core and the load's core
# (/proc/stat: user+nice+system+irq+softirq, and that plus idle and iowait; time the hypervisor
# stole is neither); empty when nothing is pinned.
cores_jiffies() {
    [ -n "${PROXY_CPU:-}" ] && [ ${#PIN_LOAD[@]} -gt 0 ] || return 0
    awk -v p="cpu$PROXY_CPU" -v l="cpu$LOAD_CPU" '
        $1 == p || $1 == l { busy = $2 + $3 + $4 + $7 + $8; j[$1] = busy " " busy + $5 + $6 }
        END { print j[p], j[l] }' /proc/stat
}

# cores_busy BEFORE PROXIES: how busy each pinned core was since BEFORE (a cores_jiffies), as
# `proxy_core_busy_pct` (unless PROXIES, the number of proxy processes, is 0: direct) and
# `load_core_busy_pct` lines. They tell whether the proxy capped a run (its core near 100%) or
# had time to spare, waiting for the load's core or for wake-ups.
cores_busy() {
    [ -n "$1" ] || return 0
    awk -v a="$1" -v b="$(cores_jiffies)" -v proxies="$2" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        if (proxies > 0 && y[2] > x[2]) printf "proxy_core_busy_pct\t%.1f\n", 100 * (y[1] - x[1]) / (y[2] - x[2])
        if (y[4] > x[4]) printf "load_core_busy_pct\t%.1f\n", 100 * (y[3] - x[3]) / (y[4] - x[4])
    }'
}

# utime+stime (clock ticks) of the processes and their descendants.
cpu_ticks() {
    local total=0 pid t
    for pid in $(pid_tree "$@"); do
        t="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')" || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# VmRSS (KiB) of the processes and their descendants; with RSS_FIELD=RssAnon, only the
# anonymous part (heap and stacks, without the mapped program and libraries).
rss_kib() {
    local total=0 pid r
    for pid in $(pid_tree "$@"); do
        r="$(awk -v f="${RSS_FIELD:-VmRSS}:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null)" || r=0
        total=$((total + ${r:-0}))
    done
    echo "$total"
}
kib_to_mb() { awk -v k="$1" 'BEGIN{printf "%.2f", k / 1024}'; }

# record ROUND SECTION TARGET < "metric<TAB>value" lines
record() {
    local round="$1" section="$2" target="$3" metric value
    while IFS=$'\t' read -r metric value; do
        [ -n "$metric" ] && printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$section" "$target" \
            "$metric" "$value" >>"$WORK/results.tsv"
    done
}

# http_probe HOST PORT THEN: a bash script sending GET $PATH_URL (Host $HOST_HEADER, closing)
# to HOST:PORT on fd 3, then running THEN on the answer.
http_probe() {
    echo "exec 3<>/dev/tcp/$1/$2 || exit 1
        printf 'GET $PATH_URL HTTP/1.1\r\nHost: $HOST_HEADER\r\nConnection: close\r\n\r\n' >&3
        $3"
}

# http_ok [NETNS] HOST PORT: one HTTP/1.1 request, succeeds on a 200.
http_ok() {
    local netns="" probe
    if [ $# -eq 3 ]; then netns="$1"; shift; fi
    # shellcheck disable=SC2016 # expanded by the probe's shell
    probe="$(http_probe "$1" "$2" 'IFS= read -r -t 3 line <&3 || exit 1
        case "$line" in *" 200 "*) exit 0 ;; *) exit 1 ;; esac')"
    if [ -n "$netns" ]; then
        timeout 5 ip netns exec "$netns" bash -c "$probe" 2>/dev/null
    else
        timeout 5 bash -c "$probe" 2>/dev/null
    fi
}

# wait_listening WHAT PORT: up to 30 s for something to listen on loopback PORT.
wait_listening() {
    local what="$1" port="$2"
    for _ in $(seq 150); do
        [ -n "$(ss -Hltn "( sport = :$port )")" ] && return 0
        sleep 0.2
    done
    echo "$what did not listen on port $port within 30 s (logs: $WORK)" >&2
    return 1
}

# wait_http WHAT [NETNS] HOST PORT: up to 30 s for a 200.
wait_http() {
    local what="$1"; shift
    for _ in $(seq 150); do
        http_ok "$@" && return 0
        sleep 0.2
    done
    echo "$what did not answer 200 on ${*: -2:1}:${*: -1} within 30 s (logs: $WORK)" >&2
    return 1
}

# ---------------------------------------------------------------------------------------------
# Configuration files.
mkdir -p "$WORK/backend" "$WORK/nginx" "$WORK/gateway" "$WORK/tmp"
BODY='hello, world\n'   # 13 bytes

nginx_common() { # DIR [WORKER_PROCESSES]
    cat <<EOF
daemon off;
master_process on;
worker_processes ${2:-1};
worker_rlimit_nofile $HARD_NOFILE;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $((HARD_NOFILE - 100)); multi_accept on; }
EOF
}
nginx_http_common() {
    cat <<EOF
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    client_body_temp_path $WORK/tmp/body;
    proxy_temp_path $WORK/tmp/proxy;
    fastcgi_temp_path $WORK/tmp/fastcgi;
    uwsgi_temp_path $WORK/tmp/uwsgi;
    scgi_temp_path $WORK/tmp/scgi;
EOF
}

# The backend: nginx answering every request with 200 and a 13-byte body.
backend_conf() { # DIR LISTEN_H1 LISTEN_H2C
    nginx_common "$1"
    cat <<EOF
http {
$(nginx_http_common)
    server {
        listen $2 reuseport;
        $( [ -n "$3" ] && echo "listen $3 http2 reuseport;" )
        location / { default_type text/plain; return 200 "$BODY"; }
        # What a proxy sent: the check below compares it across the three.
        location = /api/echo-fields {
            default_type text/plain;
            return 200 "host=\$host x-routed-by=\$http_x_routed_by x-forwarded-for=\$http_x_forwarded_for x-forwarded-proto=\$http_x_forwarded_proto\n";
        }
    }
}
EOF
}
backend_conf "$WORK/backend" "127.0.0.1:$BACKEND_H1" "127.0.0.1:$BACKEND_H2C" >"$WORK/backend/nginx.conf"

# nginx as the proxy: Host example.com, PathPrefix /api, a header added, upstream keep-alive.
# X-Forwarded-For and -Proto as Strait sets them (see the method): the backend gets the same
# request from each proxy.
NGINX_PROXY_BLOCK="proxy_pass http://backend; proxy_http_version 1.1;
            proxy_set_header Connection \"\"; proxy_set_header Host \$host;
            proxy_set_header x-routed-by strait;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;"
nginx_proxy_conf() { # DIR WORKER_PROCESSES LISTEN_H1_PORT LISTEN_H2C_PORT
    nginx_common "$1" "$2"
    cat <<EOF
http {
$(nginx_http_common)
    upstream backend {
        server 127.0.0.1:$BACKEND_H1;
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }
    server {
        listen 127.0.0.1:$3 default_server;
        listen 127.0.0.1:$4 http2 default_server;
        server_name _;
        return 404;
    }
    server {
        listen 127.0.0.1:$3;
        listen 127.0.0.1:$4 http2;
        server_name $HOST_HEADER;
        location = /api { $NGINX_PROXY_BLOCK }
        location /api/ { $NGINX_PROXY_BLOCK }
        location / { return 404; }
    }
}
EOF
}
nginx_proxy_conf "$WORK/nginx" 1 "$NGINX_H1" "$NGINX_H2C" >"$WORK/nginx/nginx.conf"

# HAProxy: the same route; HTTP mode for the gateway comparison. It refuses to start unless
# the open-file limit covers two descriptors per connection, so a low hard limit caps it.
HAPROXY_MAXCONN=$((IDLE_CONNS + 500))
if [ $((HAPROXY_MAXCONN * 2 + 100)) -gt "$HARD_NOFILE" ]; then
    HAPROXY_MAXCONN=$(((HARD_NOFILE - 100) / 2))
    note "HAProxy maxconn capped at $HAPROXY_MAXCONN by the open-file hard limit ($HARD_NOFILE): it cannot hold $IDLE_CONNS idle connections here"
fi
haproxy_http_cfg() { # THREADS LISTEN_H1_PORT LISTEN_H2C_PORT
    cat <<EOF
global
    nbthread $1
    maxconn $HAPROXY_MAXCONN
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    timeout http-request 600s
frontend gateway
    bind 127.0.0.1:$2
    bind 127.0.0.1:$3 proto h2
    acl host_ok hdr(host) -i $HOST_HEADER
    acl api path /api
    acl api path_beg /api/
    use_backend fast if host_ok api
    default_backend not_found
backend fast
    http-reuse always
    http-request add-header x-routed-by strait
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    server backend 127.0.0.1:$BACKEND_H1
backend not_found
    http-request return status 404
EOF
}
haproxy_http_cfg 1 "$HAPROXY_H1" "$HAPROXY_H2C" >"$WORK/haproxy.cfg"

# Strait: one Gateway + HTTPRoute, backend = the same nginx via a Service + EndpointSlice.
cat >"$WORK/gateway/gateway.yaml" <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: strait}
spec: {controllerName: strait.dev/gateway-controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: perf}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway, namespace: perf}
spec:
  gatewayClassName: strait
  listeners:
  - {name: http, port: 80, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: perf}
spec:
  parentRefs: [{name: gateway}]
  hostnames: ["$HOST_HEADER"]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add: [{name: x-routed-by, value: strait}]
    backendRefs: [{name: backend, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: perf}
spec:
  ports: [{name: http, port: 80, targetPort: $BACKEND_H1, appProtocol: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-local
  namespace: perf
  labels: {kubernetes.io/service-name: backend}
addressType: IPv4
ports: [{name: http, port: $BACKEND_H1, appProtocol: http}]
endpoints: [{addresses: ["127.0.0.1"]}]
EOF

# ---------------------------------------------------------------------------------------------
# Machine.
# How much of the code layout crates/strait/hot-text.ld describes the link has (the code
# between its two markers; llvm-bolt moves the profiled functions out of it afterwards): the
# script names some functions by symbols that another compiler or dependency version renames,
# and the idle RSS rows grow back when it no longer applies (docs/architecture.md, "One
# binary").
read -r HOT_START HOT_END < <(nm "$LINKED" 2>/dev/null | awk '
    $3 == "__strait_hot_text_start" { start = $1 }
    $3 == "__strait_hot_text_end" { end = $1 }
    END { print start, end }') || true
HOT_PLACED="$(grep -o -m1 '[0-9]* KiB placed' "$ROOT/crates/strait/hot-text.ld" 2>/dev/null | cut -d' ' -f1 || true)"
if readelf -S "$LINKED" 2>/dev/null | grep -q '\.note\.bolt_info'; then
    # A --binary that llvm-bolt already rewrote: its functions moved out from between the
    # markers, which therefore say nothing about the link's layout.
    LAYOUT="rewritten by llvm-bolt; the link's crates/strait/hot-text.ld layout cannot be read from it"
elif [ -z "$HOT_START" ] || [ -z "$HOT_END" ]; then
    LAYOUT="linked without crates/strait/hot-text.ld (no __strait_hot_text_start/_end)"
else
    HOT_KIB=$(( (16#$HOT_END - 16#$HOT_START) / 1024 ))
    LAYOUT="$HOT_KIB KiB placed first in .text; crates/strait/hot-text.ld places ${HOT_PLACED:-?} KiB"
    if [ -n "$HOT_PLACED" ] && [ $(( HOT_KIB * 10 )) -lt $(( HOT_PLACED * 8 )) ]; then
        note "only $HOT_KIB of the $HOT_PLACED KiB crates/strait/hot-text.ld places are placed in this binary: the script is stale for this build (another compiler or dependency versions), so the idle RSS rows are higher than they need be; regenerate it with tests/perf/hot-text.sh"
    fi
fi
{
    echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu:      $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
    echo "cores:    $NCPU (proxy under test pinned to CPU ${PROXY_CPU:-none}, load and backends to CPU ${LOAD_CPU:-none})"
    echo "memory:   $(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel:   $(uname -sr)"
    echo "load:     $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15-min load average when the run started; other work on the machine skews every figure)"
    echo "strait:   $("$STRAIT" --version 2>&1 | head -1) ($BUILD)"
    # The compiler that built the binary measured (recorded in its .comment section).
    echo "rustc:    $(readelf -p .comment "$STRAIT" 2>/dev/null | grep -o -m1 'rustc version .*' || echo unknown)"
    echo "layout:   $LAYOUT"
    echo "haproxy:  $(haproxy -v 2>&1 | head -1)"
    echo "nginx:    $(nginx -v 2>&1 | head -1)"
    echo "wrk:      $(wrk -v 2>&1 | head -1)"
    echo "h2load:   $(h2load --version 2>&1 | head -1)"
    echo "iperf3:   $(iperf3 --version 2>&1 | head -1)"
} >"$WORK/machine.txt"
: >"$WORK/results.tsv"

# ---------------------------------------------------------------------------------------------
# Loopback: backend and the three proxies.
log "starting the backend, Strait, HAProxy and nginx on 127.0.0.1"
start backend "${PIN_LOAD[@]}" nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log"
BACKEND_PID=$LAST_PID
start strait env RUST_LOG=warn "${PIN_PROXY[@]}" "$STRAIT" standalone "$WORK/gateway" \
    --address 127.0.0.1 --port-offset "$GATEWAY_OFFSET" --no-mesh --no-watch
STRAIT_PID=$LAST_PID
start haproxy "${PIN_PROXY[@]}" haproxy -db -f "$WORK/haproxy.cfg"
HAPROXY_PID=$LAST_PID
start nginx "${PIN_PROXY[@]}" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
NGINX_PID=$LAST_PID

wait_http "backend" 127.0.0.1 "$BACKEND_H1"
wait_http "strait gateway" 127.0.0.1 "$STRAIT_PORT"
wait_http "haproxy" 127.0.0.1 "$HAPROXY_H1"
wait_http "nginx" 127.0.0.1 "$NGINX_H1"
# A request that must not match (wrong path) proves the route is really applied.
for port in "$STRAIT_PORT" "$HAPROXY_H1" "$NGINX_H1"; do
    if (PATH_URL=/other; http_ok 127.0.0.1 "$port"); then
        note "port $port answered 200 for /other: the route match is not applied"
    fi
done
# The three must send the backend the same request, the fields each adds included (the
# backend's /api/echo-fields answers with them): otherwise they do unequal work.
backend_view() { # PORT
    timeout 5 bash -c "$(PATH_URL=/api/echo-fields http_probe 127.0.0.1 "$1" 'tail -n 1 <&3')" 2>/dev/null
}
views="$(for port in "$STRAIT_PORT" "$HAPROXY_H1" "$NGINX_H1"; do echo "$(backend_view "$port")"; done)"
if [ "$(sort -u <<<"$views" | wc -l)" -ne 1 ] || [ -z "$(head -1 <<<"$views")" ]; then
    note "the proxies do not send the backend the same request fields (Strait, HAProxy, nginx): $(tr '\n' ';' <<<"$views")"
else
    log "the backend gets the same fields from each proxy: $(head -1 <<<"$views")"
fi

# proxy_pid / h1_port / h2c_port TARGET: a contender's process and ports, read from
# STRAIT_PID, HAPROXY_H1, ...; with PROXY_SET=_PERCPU from STRAIT_PERCPU_PID, HAPROXY_PERCPU_H1,
# ..., the worker-per-CPU proxies of the as-deployed rows.
proxy_pid() { case "$1" in strait | haproxy | nginx) value_of "${1^^}${PROXY_SET:-}_PID" ;; *) echo "" ;; esac; }
h1_port() { case "$1" in direct) echo "$BACKEND_H1" ;; strait) value_of "STRAIT${PROXY_SET:-}_PORT" ;; *) value_of "${1^^}${PROXY_SET:-}_H1" ;; esac; }
h2c_port() { case "$1" in direct) echo "$BACKEND_H2C" ;; strait) value_of "STRAIT${PROXY_SET:-}_PORT" ;; *) value_of "${1^^}${PROXY_SET:-}_H2C" ;; esac; }
value_of() { echo "${!1:-}"; }

for target in strait haproxy nginx; do
    printf '0\trss\t%s\tidle_mb\t%s\n' "$target" "$(kib_to_mb "$(rss_kib "$(proxy_pid "$target")")")" >>"$WORK/results.tsv"
    printf '0\trss\t%s\tidle_anon_mb\t%s\n' "$target" "$(kib_to_mb "$(RSS_FIELD=RssAnon rss_kib "$(proxy_pid "$target")")")" >>"$WORK/results.tsv"
done

# start_config_server NAME DIR PORT: a standalone compiling DIR and serving its configs over the
# controller's config stream on 127.0.0.1:PORT (as the controller would), logging to NAME.log;
# returns once it listens. Its own Gateways, if any, are served on their ports + 1000.
start_config_server() {
    local name="$1" dir="$2" port="$3"
    start "$name" env RUST_LOG=warn "${PIN_LOAD[@]}" "$STRAIT" standalone "$dir" \
        --address 127.0.0.1 --port-offset 1000 --no-mesh --no-watch \
        --config-listen "127.0.0.1:$port"
    wait_listening "the config stream ($name)" "$port"
}

# The gateway as a cluster runs it: `strait gateway`, fed over the controller's config stream
# instead of reading files. A standalone compiling the same route (as a Gateway of its own, on
# FED_PORT) serves that stream with --config-listen. The fed gateway runs code the standalone
# one does not (the gRPC subscription, applying each version on a blocking-pool thread), so its
# idle RSS is read on its own, after the same single request; both are stopped before any load.
measure_fed_gateway() {
    mkdir -p "$WORK/gateway-fed"
    sed -e 's/name: gateway, namespace: perf/name: gateway-fed, namespace: perf/' \
        -e 's/parentRefs: \[{name: gateway}\]/parentRefs: [{name: gateway-fed}]/' \
        -e "s/port: 80, protocol: HTTP/port: $FED_PORT, protocol: HTTP/" \
        "$WORK/gateway/gateway.yaml" >"$WORK/gateway-fed/gateway.yaml"
    start_config_server config-stream "$WORK/gateway-fed" "$CONFIG_STREAM_PORT" || return 1
    local server_pid=$LAST_PID
    start strait-fed env RUST_LOG=warn "${PIN_PROXY[@]}" "$STRAIT" gateway \
        --control-plane "http://127.0.0.1:$CONFIG_STREAM_PORT" --gateway perf/gateway-fed \
        --token-file "$WORK/no-token" --health-listen 127.0.0.1:18523
    local fed_pid=$LAST_PID
    wait_http "strait gateway (config stream)" 127.0.0.1 "$FED_PORT" || return 1
    printf '0\trss\tstrait-fed\tidle_mb\t%s\n' "$(kib_to_mb "$(rss_kib "$fed_pid")")" >>"$WORK/results.tsv"
    printf '0\trss\tstrait-fed\tidle_anon_mb\t%s\n' "$(kib_to_mb "$(RSS_FIELD=RssAnon rss_kib "$fed_pid")")" >>"$WORK/results.tsv"
    kill -TERM "$fed_pid" "$server_pid" 2>/dev/null
    wait "$fed_pid" "$server_pid" 2>/dev/null
    return 0
}
if [ "$HOLD" -eq 0 ]; then
    measure_fed_gateway || note "the gateway fed over the config stream did not start; its idle RSS is not measured (logs: $WORK/strait-fed.log, $WORK/config-stream.log)"
fi

# load_h1 ROUND SECTION TARGET URL NETNS PROXY_PIDS...: one wrk run, recorded (CPU of
# PROXY_PIDS; with RSS_TARGET and RSS_PIDS set, the highest RSS of RSS_PIDS as RSS_TARGET).
load_h1() {
    local round="$1" section="$2" target="$3" url="$4" netns="$5"; shift 5
    local out="$WORK/wrk-$section-$target-$round.txt" exec_in=() before after cores_before=""
    [ -n "$netns" ] && exec_in=(ip netns exec "$netns")
    before="$(cpu_ticks "$@")"
    [ -z "$netns" ] && cores_before="$(cores_jiffies)"
    "${exec_in[@]}" "${PIN_LOAD[@]}" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" --latency \
        -H "Host: $HOST_HEADER" "$url" >"$out" 2>&1 &
    local wrk_pid=$!
    local watch_pid=""
    if [ -n "${RSS_PIDS:-}" ]; then
        # The watcher shares the load generator's core and reads /proc without forking: a
        # shell loop forking every 0.5 s stalled that core and added ~1 ms to every p99.
        # shellcheck disable=SC2086
        "${PIN_LOAD[@]}" "$PERF" rss-peak --while "$wrk_pid" $RSS_PIDS >"$out.rss" 2>/dev/null &
        watch_pid=$!
    fi
    if ! wait "$wrk_pid"; then
        note "round $round $section/$target: wrk failed: $(tail -1 "$out")"
        [ -n "$watch_pid" ] && wait "$watch_pid" 2>/dev/null
        return 0
    fi
    after="$(cpu_ticks "$@")"
    [ -n "$watch_pid" ] && { wait "$watch_pid" 2>/dev/null || true; }
    local cpu=()
    [ $# -gt 0 ] && cpu=(--cpu-ticks "$((after - before))" --clk-tck "$CLK_TCK")
    if ! "$PERF" parse wrk "$out" "${cpu[@]}" >"$out.parsed" 2>"$out.err"; then
        note "round $round $section/$target: $(cat "$out.err")"
        return 0
    fi
    cores_busy "$cores_before" "$#" >>"$out.parsed"
    record "$round" "$section" "$target" <"$out.parsed"
    if [ -n "$watch_pid" ] && [ -s "$out.rss" ]; then
        printf 'load_mb\t%s\n' "$(kib_to_mb "$(cat "$out.rss")")" | record "$round" rss "$RSS_TARGET"
    fi
    log "round $round $section/$target: $(awk -F'\t' '{printf "%s=%s ", $1, $2}' "$out.parsed")"
}

# warm_up NAME URL NETNS: one 1 s wrk run that is not recorded (connection pools, certificates,
# page cache).
warm_up() {
    local saved_duration=$DURATION
    DURATION=1
    RSS_PIDS="" load_h1 0 warmup "$1" "$2" "$3" >/dev/null 2>&1 || true
    DURATION=$saved_duration
    sed -i '/\twarmup\t/d' "$WORK/results.tsv"
}

# load_h2c ROUND SECTION TARGET PORT PROXY_PIDS...: one h2load run, recorded.
load_h2c() {
    local round="$1" section="$2" target="$3" port="$4"; shift 4
    local out="$WORK/h2load-$section-$target-$round.txt" log_file="$WORK/h2load-$section-$target-$round.log" before after cores_before
    before="$(cpu_ticks "$@")"
    cores_before="$(cores_jiffies)"
    if ! "${PIN_LOAD[@]}" h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "$DURATION" \
        --log-file="$log_file" -H ":authority: $HOST_HEADER" \
        "http://127.0.0.1:$port$PATH_URL" >"$out" 2>&1; then
        note "round $round $section/$target: h2load failed: $(tail -1 "$out")"
        return 0
    fi
    after="$(cpu_ticks "$@")"
    local cpu=()
    [ $# -gt 0 ] && cpu=(--cpu-ticks "$((after - before))" --clk-tck "$CLK_TCK")
    if ! "$PERF" parse h2load "$out" "$log_file" "${cpu[@]}" >"$out.parsed" 2>"$out.err"; then
        note "round $round $section/$target: $(cat "$out.err")"
        return 0
    fi
    cores_busy "$cores_before" "$#" >>"$out.parsed"
    rm -f "$log_file"
    record "$round" "$section" "$target" <"$out.parsed"
    log "round $round $section/$target: $(awk -F'\t' '{printf "%s=%s ", $1, $2}' "$out.parsed")"
}

# ---------------------------------------------------------------------------------------------
# Mesh topology: namespaces by the helper, nginx + iperf3 in the server pods, and as separate
# strait processes the control plane (the CA, and a standalone compiling the topology that serves
# the config stream) and the node proxy and waypoint it feeds, as a cluster runs them.
MESH_OK=0
# haproxy_tcp_head: global and defaults of the HAProxy TCP-mode configurations.
haproxy_tcp_head() {
    cat <<EOF
global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
EOF
}
# haproxy_tcp_listener NAME PORT [splice]: an HAProxy TCP-mode listener on 127.0.0.1:PORT to
# the plain server pod, moving bytes with splice when asked.
haproxy_tcp_listener() {
    printf 'listen %s\n    bind 127.0.0.1:%s\n' "$1" "$2"
    [ "${3:-}" = splice ] && printf '    option splice-request\n    option splice-response\n'
    printf '    server s %s:%s\n' "$PLAIN_SERVER_IP" "$IPERF_PORT"
}
# start_mesh_proxies LOG_SUFFIX [PIN...]: the node proxy and the waypoint (NODE_PID,
# WAYPOINT_PID), fed over the config stream, logging to mesh-node$LOG_SUFFIX.log and
# mesh-waypoint$LOG_SUFFIX.log.
start_mesh_proxies() {
    local suffix="$1"; shift
    start "mesh-node$suffix" env RUST_LOG=warn "$@" "$STRAIT" node \
        --control-plane "http://127.0.0.1:$MESH_CONFIG_PORT" --token-file "$WORK/no-token" \
        --ca "http://127.0.0.1:$CA_PORT" --node-name strait-node --health-listen 127.0.0.1:18521
    NODE_PID=$LAST_PID
    start "mesh-waypoint$suffix" env RUST_LOG=warn "$@" "$STRAIT" waypoint \
        --control-plane "http://127.0.0.1:$MESH_CONFIG_PORT" --token-file "$WORK/no-token" \
        --namespace bench --name waypoint --ca "http://127.0.0.1:$CA_PORT" \
        --netns "$WAYPOINT_NETNS" --health-listen 127.0.0.1:18522
    WAYPOINT_PID=$LAST_PID
}
start_mesh() {
    log "building the mesh topology"
    mkdir -p "$WORK/mesh" "$WORK/ca-empty"
    "$PERF" mesh --dir "$WORK/mesh" >"$WORK/mesh-helper.out" 2>"$WORK/mesh-helper.log" &
    MESH_PID=$!
    for _ in $(seq 300); do
        grep -q '^READY=1' "$WORK/mesh-helper.out" 2>/dev/null && break
        kill -0 "$MESH_PID" 2>/dev/null || { note "mesh helper failed: $(tail -3 "$WORK/mesh-helper.log")"; return 1; }
        sleep 0.2
    done
    grep -q '^READY=1' "$WORK/mesh-helper.out" || { note "mesh helper not ready after 60 s"; return 1; }
    # shellcheck disable=SC1091
    . "$WORK/mesh/env"
    local ns
    for ns in MESH_SERVER_NETNS PLAIN_SERVER_NETNS; do
        local dir="$WORK/pod-$ns"
        mkdir -p "$dir"
        backend_conf "$dir" "0.0.0.0:$MESH_HTTP_PORT" "" >"$dir/nginx.conf"
        start "pod-nginx-$ns" ip netns exec "${!ns}" "${PIN_LOAD[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
        start "pod-iperf3-$ns" ip netns exec "${!ns}" "${PIN_LOAD[@]}" iperf3 -s -p "$IPERF_PORT"
    done
    # HAProxy TCP mode inside the plain client pod: client -> 127.0.0.1 -> HAProxy -> veth ->
    # server pod, the same wires as the node proxy's in-pod listener.
    {
        haproxy_tcp_head
        haproxy_tcp_listener plain "$HAPROXY_TCP"
        haproxy_tcp_listener spliced "$HAPROXY_TCP_SPLICE" splice
    } >"$WORK/haproxy-tcp.cfg"
    start haproxy-tcp ip netns exec "$PLAIN_CLIENT_NETNS" "${PIN_PROXY[@]}" haproxy -db -f "$WORK/haproxy-tcp.cfg"
    HAPROXY_TCP_PID=$LAST_PID
    # The same spliced HAProxy in the captured client pod, reached the way the node's in-pod
    # listener is: the client dials the server pod, a routing rule as the node installs in an
    # enrolled pod sends the connection through lo from its first lookup (so the client sizes
    # its segments for loopback, iptables/README.md), and a nat REDIRECT rule takes it to
    # 127.0.0.1. Connection tracking and the address rewrite then cost HAProxy what they cost
    # the passthrough. Both rules match their own port only, so HAProxy's connection to the
    # server is neither rerouted nor taken back.
    {
        haproxy_tcp_head
        haproxy_tcp_listener spliced "$HAPROXY_TCP_SPLICE" splice
    } >"$WORK/haproxy-captured.cfg"
    ip netns exec "$CAPTURED_CLIENT_NETNS" iptables -t nat -A OUTPUT -p tcp -d "$PLAIN_SERVER_IP" \
        --dport "$CAPTURED_PORT" -j REDIRECT --to-ports "$HAPROXY_TCP_SPLICE" ||
        { note "cannot add the capture rule in the captured client pod"; return 1; }
    { ip -n "$CAPTURED_CLIENT_NETNS" route add 0.0.0.0/0 dev lo src "$CAPTURED_CLIENT_IP" table 1337 &&
        ip -n "$CAPTURED_CLIENT_NETNS" rule add priority 1338 iif lo ipproto tcp dport "$CAPTURED_PORT" lookup 1337; } ||
        { note "cannot add the capture routing in the captured client pod"; return 1; }
    start haproxy-captured ip netns exec "$CAPTURED_CLIENT_NETNS" "${PIN_PROXY[@]}" haproxy -db -f "$WORK/haproxy-captured.cfg"
    HAPROXY_CAPTURED_PID=$LAST_PID
    start mesh-ca env RUST_LOG=warn "$STRAIT" standalone "$WORK/ca-empty" --no-watch \
        --ca-listen "127.0.0.1:$CA_PORT" --node-name perf-no-such-node
    CA_PID=$LAST_PID
    # A node started before the CA listens logs a retry, and that error path's code (cold, so
    # scattered over the binary) would count in its idle RSS.
    wait_listening "the mesh CA" "$CA_PORT" || return 1
    # The topology has no Gateway of class strait: this standalone only compiles and publishes.
    start_config_server mesh-config "$MESH_DIR" "$MESH_CONFIG_PORT" || return 1
    start_mesh_proxies "" "${PIN_PROXY[@]}"
    wait_http "plain server pod" "$PLAIN_CLIENT_NETNS" "$PLAIN_SERVER_IP" "$MESH_HTTP_PORT" || return 1
    # Idle RSS before the first mesh request, once both proxies have applied a config from the
    # stream (their health endpoints say so).
    PATH_URL=/healthz/ready wait_http "the node proxy's health" 127.0.0.1 18521 || return 1
    PATH_URL=/healthz/ready wait_http "the waypoint's health" 127.0.0.1 18522 || return 1
    sleep 1
    printf '0\trss\tnode\tidle_mb\t%s\n' "$(kib_to_mb "$(rss_kib "$NODE_PID")")" >>"$WORK/results.tsv"
    printf '0\trss\twaypoint\tidle_mb\t%s\n' "$(kib_to_mb "$(rss_kib "$WAYPOINT_PID")")" >>"$WORK/results.tsv"
    printf '0\trss\tnode\tidle_anon_mb\t%s\n' "$(kib_to_mb "$(RSS_FIELD=RssAnon rss_kib "$NODE_PID")")" >>"$WORK/results.tsv"
    printf '0\trss\twaypoint\tidle_anon_mb\t%s\n' "$(kib_to_mb "$(RSS_FIELD=RssAnon rss_kib "$WAYPOINT_PID")")" >>"$WORK/results.tsv"
    wait_http "mesh (node, HBONE)" "$MESH_CLIENT_NETNS" "$MESH_SERVER_IP" "$MESH_HTTP_PORT" || return 1
    wait_http "mesh (waypoint)" "$MESH_CLIENT_NETNS" "$ROUTED_VIP" 80 || return 1
    # The pod-to-pod bulk baseline and the passthrough path must reach the server.
    for check in "$PLAIN_CLIENT_NETNS" "$MESH_CLIENT_NETNS"; do
        timeout 10 ip netns exec "$check" iperf3 -c "$PLAIN_SERVER_IP" -p "$IPERF_PORT" -t 1 -J >/dev/null 2>&1 ||
            note "iperf3 from $check to the plain server pod failed"
    done
    timeout 10 ip netns exec "$CAPTURED_CLIENT_NETNS" iperf3 -c "$PLAIN_SERVER_IP" -p "$CAPTURED_PORT" -t 1 -J >/dev/null 2>&1 ||
        note "iperf3 from the captured client pod through HAProxy failed"
    MESH_OK=1
}
if ! start_mesh; then
    note "mesh part skipped (logs: $WORK/mesh-*.log)"
fi

# load_bulk ROUND TARGET NETNS HOST PORT PROXY_PIDS...: one iperf3 run, recorded.
load_bulk() {
    local round="$1" target="$2" netns="$3" host="$4" port="$5"; shift 5
    local out="$WORK/iperf3-$target-$round.json" before after
    before="$(cpu_ticks "$@")"
    if ! ip netns exec "$netns" "${PIN_LOAD[@]}" iperf3 -c "$host" -p "$port" -t "$DURATION" -J >"$out" 2>&1; then
        note "round $round bulk/$target: iperf3 failed: $(grep -o '"error":.*' "$out" | head -1)"
        return 0
    fi
    after="$(cpu_ticks "$@")"
    if ! "$PERF" parse iperf3 "$out" >"$out.parsed" 2>"$out.err"; then
        note "round $round bulk/$target: $(cat "$out.err")"
        return 0
    fi
    if [ $# -gt 0 ]; then
        # Proxy CPU seconds per GB moved.
        awk -F'\t' -v t="$((after - before))" -v hz="$CLK_TCK" -v d="$DURATION" \
            '$1=="gbps" && $2 > 0 {printf "cpu_s_per_gb\t%.3f\n", (t/hz) / ($2*d/8)}' "$out.parsed" >>"$out.parsed"
    fi
    record "$round" bulk "$target" <"$out.parsed"
    log "round $round bulk/$target: $(awk -F'\t' '{printf "%s=%s ", $1, $2}' "$out.parsed")"
}

# ---------------------------------------------------------------------------------------------
# Warm-up (not recorded): connection pools, certificates, page cache.
log "warming up"
for target in direct strait haproxy nginx; do
    warm_up "$target" "http://127.0.0.1:$(h1_port "$target")$PATH_URL" ""
done
if [ "$MESH_OK" -eq 1 ]; then
    warm_up mesh-waypoint "http://$ROUTED_VIP:80$PATH_URL" "$MESH_CLIENT_NETNS"
    warm_up mesh-hbone "http://$MESH_SERVER_IP:$MESH_HTTP_PORT$PATH_URL" "$MESH_CLIENT_NETNS"
fi

# --hold: keep everything running for profiling instead of measuring; Ctrl-C tears it down.
if [ "$HOLD" -eq 1 ]; then
    {
        printf 'STRAIT_PID=%s\nHAPROXY_PID=%s\nNGINX_PID=%s\n' "$(proxy_pid strait)" "$(proxy_pid haproxy)" "$(proxy_pid nginx)"
        if [ "$MESH_OK" -eq 1 ]; then
            printf 'NODE_PID=%s\nWAYPOINT_PID=%s\n' "$NODE_PID" "$WAYPOINT_PID"
            printf 'MESH_WAYPOINT_URL=http://%s:80%s\n' "$ROUTED_VIP" "$PATH_URL"
            printf 'MESH_HBONE_URL=http://%s:%s%s\n' "$MESH_SERVER_IP" "$MESH_HTTP_PORT" "$PATH_URL"
            grep -E '_NETNS=' "$WORK/mesh/env"
        fi
    } >"$WORK/hold.env"
    log "holding; processes and addresses are in $WORK/hold.env; Ctrl-C (or SIGTERM) to tear down"
    KEEP_WORK=1
    # The sleep is recorded so that the teardown kills it: its final `wait` would otherwise
    # wait out the hour.
    while true; do sleep 3600 & PIDS+=("$!"); wait $!; done
fi

# ---------------------------------------------------------------------------------------------
# Interleaved rounds.
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    if wants h1; then
        for target in direct strait haproxy nginx; do
            pid="$(proxy_pid "$target")"
            RSS_TARGET="$target" RSS_PIDS="$pid" load_h1 "$round" h1 "$target" "http://127.0.0.1:$(h1_port "$target")$PATH_URL" "" $pid
        done
    fi
    if wants h2c; then
        for target in direct strait haproxy nginx; do
            pid="$(proxy_pid "$target")"
            load_h2c "$round" h2c "$target" "$(h2c_port "$target")" $pid
        done
    fi
    if [ "$MESH_OK" -eq 1 ] && wants mesh; then
        RSS_PIDS="" load_h1 "$round" mesh pod "http://$PLAIN_SERVER_IP:$MESH_HTTP_PORT$PATH_URL" "$PLAIN_CLIENT_NETNS"
        RSS_TARGET=node RSS_PIDS="$NODE_PID" load_h1 "$round" mesh hbone "http://$MESH_SERVER_IP:$MESH_HTTP_PORT$PATH_URL" "$MESH_CLIENT_NETNS" "$NODE_PID"
        RSS_TARGET=waypoint RSS_PIDS="$WAYPOINT_PID" load_h1 "$round" mesh waypoint "http://$ROUTED_VIP:80$PATH_URL" "$MESH_CLIENT_NETNS" "$NODE_PID" "$WAYPOINT_PID"
    fi
    if [ "$MESH_OK" -eq 1 ] && wants bulk; then
        # Bulk throughput swings more from one transfer to the next than the other figures
        # (see method.md): shorter transfers, more of them, each one interleaved.
        saved_duration=$DURATION
        DURATION=$BULK_DURATION
        for _ in $(seq "$BULK_REPEATS"); do
            load_bulk "$round" pod "$PLAIN_CLIENT_NETNS" "$PLAIN_SERVER_IP" "$IPERF_PORT"
            load_bulk "$round" hbone "$MESH_CLIENT_NETNS" "$MESH_SERVER_IP" "$IPERF_PORT" "$NODE_PID"
            load_bulk "$round" passthrough "$MESH_CLIENT_NETNS" "$PLAIN_SERVER_IP" "$IPERF_PORT" "$NODE_PID"
            load_bulk "$round" haproxy "$PLAIN_CLIENT_NETNS" 127.0.0.1 "$HAPROXY_TCP" "$HAPROXY_TCP_PID"
            load_bulk "$round" haproxy-splice "$PLAIN_CLIENT_NETNS" 127.0.0.1 "$HAPROXY_TCP_SPLICE" "$HAPROXY_TCP_PID"
            load_bulk "$round" haproxy-splice-captured "$CAPTURED_CLIENT_NETNS" "$PLAIN_SERVER_IP" "$CAPTURED_PORT" "$HAPROXY_CAPTURED_PID"
        done
        DURATION=$saved_duration
    fi
done
# ---------------------------------------------------------------------------------------------
# The mesh as deployed: node proxy and waypoint unpinned, sharing the CPUs with the load, at a
# light load. Its latency shows scheduling delays that a pinned proxy cannot have, such as a
# wake-up that waits for a CPU busy with another process. Twice: with the default single
# runtime worker each, then with `STRAIT_WORKERS=auto` (a worker per CPU), whose tasks also
# move between threads.
# light_mesh SECTION LOG_SUFFIX [ENV_ASSIGNMENT...]: restart both proxies unpinned with those
# environment variables, then interleaved rounds of direct, HBONE path and waypoint path.
light_mesh() {
    local section="$1" suffix="$2"; shift 2
    log "restarting the node proxy and the waypoint unpinned${*:+ with $*}"
    kill -TERM "$NODE_PID" "$WAYPOINT_PID" 2>/dev/null
    wait "$NODE_PID" "$WAYPOINT_PID" 2>/dev/null
    start_mesh_proxies "$suffix" "$@"
    if ! wait_http "mesh (node, HBONE)" "$MESH_CLIENT_NETNS" "$MESH_SERVER_IP" "$MESH_HTTP_PORT" ||
        ! wait_http "mesh (waypoint)" "$MESH_CLIENT_NETNS" "$ROUTED_VIP" 80; then
        note "the node proxy and the waypoint did not come back unpinned${*:+ with $*}: $section rows skipped"
        return 0
    fi
    local saved_conns=$WRK_CONNS round
    WRK_CONNS=$LIGHT_CONNS
    # Certificates are fetched on the first request.
    warm_up mesh-hbone "http://$MESH_SERVER_IP:$MESH_HTTP_PORT$PATH_URL" "$MESH_CLIENT_NETNS"
    warm_up mesh-waypoint "http://$ROUTED_VIP:80$PATH_URL" "$MESH_CLIENT_NETNS"
    for round in $(seq "$ROUNDS"); do
        RSS_PIDS="" load_h1 "$round" "$section" pod "http://$PLAIN_SERVER_IP:$MESH_HTTP_PORT$PATH_URL" "$PLAIN_CLIENT_NETNS"
        RSS_PIDS="" load_h1 "$round" "$section" hbone "http://$MESH_SERVER_IP:$MESH_HTTP_PORT$PATH_URL" "$MESH_CLIENT_NETNS" "$NODE_PID"
        RSS_PIDS="" load_h1 "$round" "$section" waypoint "http://$ROUTED_VIP:80$PATH_URL" "$MESH_CLIENT_NETNS" "$NODE_PID" "$WAYPOINT_PID"
    done
    WRK_CONNS=$saved_conns
}
if [ "$MESH_OK" -eq 1 ] && wants mesh && [ "$NCPU" -ge 2 ]; then
    light_mesh mesh-light -unpinned
    light_mesh mesh-light-percpu -unpinned-percpu STRAIT_WORKERS=auto
fi

# ---------------------------------------------------------------------------------------------
# The gateway as deployed: each proxy unpinned with a worker per CPU (Strait's default for a
# gateway, HAProxy `nbthread`, nginx `worker_processes`), sharing every CPU with the load
# generator and the backend, as on a node. Started for these rows only, so the pinned
# single-worker proxies above stay the ones the idle and 10,000-connection rows measure.
# deployed_gateways: start them; sets STRAIT_PERCPU_PID, HAPROXY_PERCPU_PID and
# NGINX_PERCPU_PID, or returns 1.
deployed_gateways() {
    mkdir -p "$WORK/nginx-percpu"
    nginx_proxy_conf "$WORK/nginx-percpu" "$NCPU" "$NGINX_PERCPU_H1" "$NGINX_PERCPU_H2C" >"$WORK/nginx-percpu/nginx.conf"
    haproxy_http_cfg "$NCPU" "$HAPROXY_PERCPU_H1" "$HAPROXY_PERCPU_H2C" >"$WORK/haproxy-percpu.cfg"
    start strait-percpu env RUST_LOG=warn "$STRAIT" standalone "$WORK/gateway" \
        --address 127.0.0.1 --port-offset "$STRAIT_PERCPU_OFFSET" --no-mesh --no-watch
    STRAIT_PERCPU_PID="$LAST_PID"
    start haproxy-percpu haproxy -db -f "$WORK/haproxy-percpu.cfg"
    HAPROXY_PERCPU_PID="$LAST_PID"
    start nginx-percpu nginx -p "$WORK/nginx-percpu" -c "$WORK/nginx-percpu/nginx.conf" -e "$WORK/nginx-percpu/error.log"
    NGINX_PERCPU_PID="$LAST_PID"
    wait_http "strait gateway (a worker per CPU)" 127.0.0.1 "$STRAIT_PERCPU_PORT" &&
        wait_http "haproxy (a thread per CPU)" 127.0.0.1 "$HAPROXY_PERCPU_H1" &&
        wait_http "nginx (a worker per CPU)" 127.0.0.1 "$NGINX_PERCPU_H1"
}
if { wants h1 || wants h2c; } && [ "$NCPU" -ge 2 ]; then
    log "starting Strait, HAProxy and nginx with a worker per CPU ($NCPU), unpinned"
    if deployed_gateways; then
        saved_pin=("${PIN_LOAD[@]}")
        PIN_LOAD=()
        PROXY_SET=_PERCPU
        # Each worker's connections to the backend.
        for target in strait haproxy nginx; do
            warm_up "$target" "http://127.0.0.1:$(h1_port "$target")$PATH_URL" ""
        done
        for round in $(seq "$ROUNDS"); do
            for target in direct strait haproxy nginx; do
                wants h1 || break
                # shellcheck disable=SC2046
                RSS_PIDS="" load_h1 "$round" h1-percpu "$target" "http://127.0.0.1:$(h1_port "$target")$PATH_URL" "" $(proxy_pid "$target")
            done
            for target in direct strait haproxy nginx; do
                wants h2c || break
                # shellcheck disable=SC2046
                load_h2c "$round" h2c-percpu "$target" "$(h2c_port "$target")" $(proxy_pid "$target")
            done
        done
        PROXY_SET=
        PIN_LOAD=("${saved_pin[@]}")
    else
        note "a proxy with a worker per CPU did not start: the as-deployed rows are skipped (logs: $WORK/strait-percpu.log, $WORK/haproxy-percpu.log, $WORK/nginx-percpu/error.log)"
    fi
    # One that failed to start has exited already.
    kill -TERM "$STRAIT_PERCPU_PID" "$HAPROXY_PERCPU_PID" "$NGINX_PERCPU_PID" 2>/dev/null || true
    wait "$STRAIT_PERCPU_PID" "$HAPROXY_PERCPU_PID" "$NGINX_PERCPU_PID" 2>/dev/null || true
fi

# ---------------------------------------------------------------------------------------------
# 10,000 idle keep-alive connections per proxy.
for target in strait haproxy nginx; do
    wants idle || break
    port="$(h1_port "$target")"
    pid="$(proxy_pid "$target")"
    log "holding $IDLE_CONNS idle connections to $target"
    "${PIN_LOAD[@]}" "$PERF" hold "127.0.0.1:$port" --count "$IDLE_CONNS" --host "$HOST_HEADER" --path "$PATH_URL" \
        >"$WORK/hold-$target.out" 2>"$WORK/hold-$target.log" &
    hold_pid=$!
    for _ in $(seq 600); do
        grep -q '^held=' "$WORK/hold-$target.out" 2>/dev/null && break
        kill -0 "$hold_pid" 2>/dev/null || break
        sleep 0.1
    done
    sleep 2
    held="$(ss -Htn state established "( sport = :$port )" | wc -l)"
    rss="$(kib_to_mb "$(rss_kib "$pid")")"
    kill -TERM "$hold_pid" 2>/dev/null || true
    wait "$hold_pid" 2>/dev/null || true
    printf '0\trss\t%s\tconns_mb\t%s\n0\trss\t%s\tconns_held\t%s\n' "$target" "$rss" "$target" "$held" >>"$WORK/results.tsv"
    opened="$(cat "$WORK/hold-$target.out" 2>/dev/null || true)"
    [ "$held" -ge "$IDLE_CONNS" ] || note "$target: only $held of $IDLE_CONNS idle connections established ($opened; $(head -1 "$WORK/hold-$target.log" 2>/dev/null))"
    # What the burst leaves behind: memory a proxy keeps once those connections are gone.
    sleep 3
    printf '0\trss\t%s\tconns_closed_mb\t%s\n' "$target" "$(kib_to_mb "$(rss_kib "$pid")")" >>"$WORK/results.tsv"
done

# Errors logged by the proxies during the run.
for name in strait strait-percpu mesh-node mesh-waypoint mesh-node-unpinned mesh-waypoint-unpinned mesh-node-unpinned-percpu mesh-waypoint-unpinned-percpu mesh-ca mesh-config config-stream strait-fed; do
    f="$WORK/$name.log"
    [ -s "$f" ] || continue
    n="$(grep -c -iE 'error|warn' "$f" || true)"
    [ "$n" -gt 0 ] && note "$name logged $n warning/error lines, e.g. \`$(grep -m1 -iE 'error|warn' "$f" | cut -c1-200)\`"
done

# ---------------------------------------------------------------------------------------------
mode="full"; [ "$QUICK" -eq 1 ] && mode="quick (smoke run: figures are not meaningful)"
[ "$ONLY" = "h1,h2c,mesh,bulk,idle" ] || mode="$mode, sections $ONLY only"
RUN_LINE="Run: $mode, $ROUNDS interleaved round(s) of ${DURATION} s tests (bulk: $BULK_REPEATS transfers of ${BULK_DURATION} s per round); medians (errors: sums)."
mkdir -p "$(dirname "$OUT")"
"$PERF" report "$WORK/results.tsv" --machine "$WORK/machine.txt" --notes "$WORK/notes.md" \
    --run "$RUN_LINE" --out "$OUT"
cp "$WORK/results.tsv" "$WORK/results.kept.tsv"
log "written $OUT"
FINISHED=1
