#!/usr/bin/env bash
# Builds the strait binary the container image ships and tests/perf/run.sh measures: the `dist`
# profile (Cargo.toml), then the code layout of a recorded profile applied by llvm-bolt
# (docs/architecture.md, "One binary"). Prints the binary's path on its last line.
#
#   crates/strait/dist.sh                     # target/dist/bolt/strait, laid out from the
#                                             # recorded profile, bolt-profile.yaml.gz
#   crates/strait/dist.sh --profile FILE      # laid out from another (YAML, gzipped or not)
#   crates/strait/dist.sh --instrument PREFIX # target/dist/bolt-instrumented/strait instead: each
#                                             # process counts what it runs, and writes the
#                                             # counts to PREFIX.<pid>.fdata when it exits
#   crates/strait/dist.sh -- --locked         # arguments after -- go to cargo build
#
# Needs llvm-bolt: Debian 12's bolt-19 package; LLVM_BOLT=PATH names another. A profile recorded
# from older code still applies: functions whose code changed since get counts inferred from
# their unchanged blocks, and functions it does not name keep the linker's order.
# tests/perf/bolt-profile.sh records a new one.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROFILE="$HERE/bolt-profile.yaml.gz"
INSTRUMENT=""
CARGO_ARGS=()

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE="${2:?--profile needs a file}"; shift 2 ;;
        --instrument) INSTRUMENT="${2:?--instrument needs a file name prefix}"; shift 2 ;;
        --) shift; CARGO_ARGS=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

BOLT="${LLVM_BOLT:-}"
if [ -z "$BOLT" ]; then
    for candidate in llvm-bolt llvm-bolt-19 /usr/lib/llvm-19/bin/llvm-bolt; do
        if command -v "$candidate" >/dev/null 2>&1; then BOLT="$(command -v "$candidate")"; break; fi
    done
fi
[ -n "$BOLT" ] || { echo "llvm-bolt not found: install Debian's bolt-19 package, or set LLVM_BOLT" >&2; exit 1; }
if [ -z "$INSTRUMENT" ] && [ ! -f "$PROFILE" ]; then
    echo "no profile at $PROFILE (tests/perf/bolt-profile.sh records one)" >&2
    exit 1
fi

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
# STRAIT_BOLT=1: link with the relocations llvm-bolt needs (build.rs).
(cd "$ROOT" && STRAIT_BOLT=1 cargo build --profile dist -q -p strait "${CARGO_ARGS[@]}")
LINKED="$TARGET_DIR/dist/strait"

if [ -n "$INSTRUMENT" ]; then
    OUT="$TARGET_DIR/dist/bolt-instrumented/strait"
    BOLT_ARGS=(-instrument --instrumentation-file="$INSTRUMENT" --instrumentation-file-append-pid)
else
    OUT="$TARGET_DIR/dist/bolt/strait"
    # Hot blocks first within each function, cold blocks split off to a section of their own,
    # functions ordered by how densely they call each other. The profile is read in BOLT's YAML
    # form, which records a hash per function and per block: that is what lets a profile of
    # older code apply (-infer-stale-profile).
    BOLT_ARGS=(-data="$OUT.profile.yaml" -infer-stale-profile -reorder-blocks=ext-tsp
        -reorder-functions=cdsort -split-functions -split-all-cold -split-eh -use-gnu-stack)
fi
mkdir -p "$(dirname "$OUT")"
if [ -z "$INSTRUMENT" ]; then
    case "$PROFILE" in
        *.gz) gzip -dc "$PROFILE" ;;
        *) cat "$PROFILE" ;;
    esac >"$OUT.profile.yaml"
fi
LOG="$(dirname "$OUT")/llvm-bolt.log"
if ! "$BOLT" "$LINKED" -o "$OUT.tmp" "${BOLT_ARGS[@]}" >"$LOG" 2>&1; then
    tail -20 "$LOG" >&2
    echo "llvm-bolt failed on $LINKED (log: $LOG)" >&2
    exit 1
fi
mv -f "$OUT.tmp" "$OUT"
if [ -z "$INSTRUMENT" ]; then
    # How much of the profile applied. A profile recorded from other code (another compiler,
    # other dependency versions) names functions this build lacks, and the layout gives less.
    RECORDED="$(grep -c '^  - name:' "$OUT.profile.yaml" || true)"
    APPLIED="$(sed -n 's/^BOLT-INFO: \([0-9]*\) out of [0-9]* functions.*non-empty execution profile.*/\1/p' "$LOG" | head -1)"
    echo "dist.sh: the profile applied to ${APPLIED:-?} of the $RECORDED functions it records" >&2
    if [ -z "$APPLIED" ] || [ $((APPLIED * 10)) -lt $((RECORDED * 8)) ]; then
        echo "dist.sh: warning: the profile is stale for this build; record it again with tests/perf/bolt-profile.sh" >&2
    fi
fi
echo "$OUT"
