#!/usr/bin/env bash
# Regenerates crates/strait/hot-text.ld, the linker script that places the code the proxies run
# together ahead of the rest (docs/architecture.md, "One binary"). It runs a quick benchmark
# (tests/perf/run.sh --quick) with every strait process under callgrind, then writes a script
# naming the functions the proxies executed, at start and on the request paths the benchmark
# drives: the gateway's (standalone, and fed over the config stream) and the node proxy's and
# the waypoint's (fed over the config stream, as a cluster runs them). The standalones that
# stand in for the controller (serving the CA or the config stream) run unprofiled: in a
# cluster that code runs in the controller, whose layout this script does not make.
#
#   sudo tests/perf/hot-text.sh                # trains the dist build
#   sudo tests/perf/hot-text.sh --binary BIN   # trains another build of strait
#   sudo tests/perf/hot-text.sh --out FILE     # writes elsewhere (default: the checked-in file)
#
# Rebuild afterwards to use it. Regenerate after a compiler or dependency update, which renames
# the instances of generic functions the script names in full, or after moving code the proxies
# run into new functions: the idle RSS in docs/performance.md grows back when it is due.
#
# Needs root (as run.sh does) and valgrind, installed with apt-get when missing. The training
# run takes about two minutes, after the build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/crates/strait/hot-text.ld"
BINARY=""

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) BINARY="${2:?--binary needs a path}"; shift 2 ;;
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "run as root (tests/perf/run.sh needs it)" >&2; exit 1; }
if [ -n "$BINARY" ]; then
    [ -f "$BINARY" ] && [ -x "$BINARY" ] || { echo "--binary: not an executable file: $BINARY" >&2; exit 2; }
    BINARY="$(realpath -- "$BINARY")"
fi

# shellcheck source=tests/perf/training.sh
. "$ROOT/tests/perf/training.sh"
install_missing valgrind valgrind

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
if [ -z "$BINARY" ]; then
    log "building strait (dist profile)"
    (cd "$ROOT" && cargo build --profile dist -q -p strait)
    BINARY="$TARGET_DIR/dist/strait"
fi
# Built by run.sh below, with the harness.
PERF="$TARGET_DIR/release/strait-perf"

WORK="$(mktemp -d /tmp/strait-hot-text.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/profiles"
# callgrind names each profile after the process id.
train "$WORK" "$BINARY" valgrind --tool=callgrind --demangle=no --dump-instr=no \
    --callgrind-out-file="$WORK/profiles/%p.callgrind" "$BINARY"
profiles=("$WORK"/profiles/*.callgrind)
[ -e "${profiles[0]}" ] || { echo "the training run left no profile" >&2; exit 1; }

COMMIT="$(training_commit)"
# Every role the script lays out must have left a whole profile (a process killed before
# callgrind finished writing would drop out of the layout unnoticed).
"$PERF" hot-text --binary "$BINARY" --out "$OUT" --require-roles standalone,node,waypoint \
    --trained-on "$(basename "$0") on $COMMIT, ${#profiles[@]} processes of run.sh --quick --only $TRAINING_SECTIONS" \
    "${profiles[@]}"
log "written $OUT: rebuild strait to use it"
