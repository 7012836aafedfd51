#!/usr/bin/env bash
# Records crates/strait/bolt-profile.yaml.gz, the profile crates/strait/dist.sh lays the shipped
# binary out from (docs/architecture.md, "One binary"). It builds an instrumented strait
# (`dist.sh --instrument`) and runs the layouts' training run with it (tests/perf/training.sh):
# the gateway (standalone, and fed over the config stream), the node proxy and the waypoint
# each count the branches they take, at start and on the request paths the benchmark drives,
# and write the counts when they exit. The counts of every process are merged and written in
# BOLT's YAML form, gzipped.
#
#   sudo tests/perf/bolt-profile.sh              # records the checked-in profile
#   sudo tests/perf/bolt-profile.sh --out FILE   # writes elsewhere
#
# Record again after changes to the request paths, or a compiler or dependency update: a stale
# profile still applies, less of it each time (dist.sh prints how much).
#
# Needs root (as run.sh does) and llvm-bolt (Debian's bolt-19, installed with apt-get when
# missing). About two minutes after the build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/crates/strait/bolt-profile.yaml.gz"

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="${2:?--out needs a file}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "run as root (tests/perf/run.sh needs it)" >&2; exit 1; }

# shellcheck source=tests/perf/training.sh
. "$ROOT/tests/perf/training.sh"
[ -n "${LLVM_BOLT:-}" ] || install_missing llvm-bolt-19 bolt-19
BOLT="$(readlink -f "$(command -v "${LLVM_BOLT:-llvm-bolt-19}")")"
# merge-fdata ships beside llvm-bolt.
MERGE="$(dirname "$BOLT")/merge-fdata"
[ -x "$MERGE" ] || { echo "no merge-fdata beside $BOLT" >&2; exit 1; }

WORK="$(mktemp -d /tmp/strait-bolt-profile.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/counts"

log "building an instrumented strait (dist profile)"
INSTRUMENTED="$(LLVM_BOLT="$BOLT" "$ROOT/crates/strait/dist.sh" --instrument "$WORK/counts/strait" | tail -1)"
# The same link, uninstrumented: what the counts describe, and what the stand-ins run.
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
LINKED="$TARGET_DIR/dist/strait"

train "$WORK" "$LINKED" "$INSTRUMENTED"
counts=("$WORK"/counts/*.fdata)
[ -e "${counts[0]}" ] || { echo "the training run left no counts" >&2; exit 1; }
"$MERGE" "${counts[@]}" >"$WORK/merged.fdata" 2>"$WORK/merge.log"

# BOLT converts the counts to YAML as it reads them for an optimisation run, whose output is
# discarded. The YAML is written with aligned values; one space after each key reads the same
# and saves a quarter of it.
"$BOLT" "$LINKED" -o "$WORK/discarded" -data="$WORK/merged.fdata" -w "$WORK/profile.yaml" \
    >"$WORK/convert.log" 2>&1 || { tail -20 "$WORK/convert.log" >&2; exit 1; }
COMMIT="$(training_commit)"
# The note goes after the document's first line: BOLT tells YAML from its other format by it.
{
    head -1 "$WORK/profile.yaml"
    printf '# Recorded by tests/perf/bolt-profile.sh on %s (%s), %s processes of run.sh --quick --only %s.\n' \
        "$COMMIT" "$(rustc -V)" "${#counts[@]}" "$TRAINING_SECTIONS"
    # The binary's name is this machine's path to it: BOLT keeps it for information only.
    tail -n +2 "$WORK/profile.yaml" | sed -E "s/^( *(- )?[-a-z]+:) +/\\1 /; s|^(  binary-name:).*|\\1 'strait'|"
} | gzip -9n >"$OUT.tmp"
mv -f "$OUT.tmp" "$OUT"
log "written $OUT ($(grep -c '^  - name:' "$WORK/profile.yaml") functions): rebuild with crates/strait/dist.sh to use it"
