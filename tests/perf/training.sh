# Sourced by tests/perf/hot-text.sh and tests/perf/bolt-profile.sh, which record the two code
# layouts of the shipped binary from the same training run: tests/perf/run.sh --quick, with
# each proxy process (gateway, node proxy, waypoint) started under a recorder. The standalones
# that stand in for the controller (serving the CA or the config stream) run unrecorded: in a
# cluster that code runs in the controller, which is not what the layouts are for.
# Expects ROOT (the checkout) to be set.

TRAINING_SECTIONS="h1,h2c,mesh,bulk"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# install_missing COMMAND PACKAGE: installs Debian's PACKAGE when COMMAND is not on the PATH.
install_missing() {
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1 || {
        apt-get update >/dev/null 2>&1
        apt-get install -y --no-install-recommends "$2" >/dev/null
    }
}

# train WORK PLAIN RECORDER...: runs the training, each proxy started as RECORDER... followed by
# strait's arguments, anything else (the stand-ins, and `strait --version`, which run.sh asks
# for its report) as the binary PLAIN. Exits if the run fails.
train() {
    local work="$1" plain="$2"
    shift 2
    {
        echo '#!/bin/bash'
        printf '[ "$1" = --version ] && exec %q "$@"\n' "$plain"
        printf 'case " $* " in *" --ca-listen "* | *" --config-listen "*) exec %q "$@" ;; esac\n' "$plain"
        printf 'exec'
        printf ' %q' "$@"
        printf ' "$@"\n'
    } >"$work/strait"
    chmod +x "$work/strait"
    log "training: tests/perf/run.sh --quick --only $TRAINING_SECTIONS"
    "$ROOT/tests/perf/run.sh" --quick --only "$TRAINING_SECTIONS" --binary "$work/strait" \
        --out "$work/report.md" >"$work/run.log" 2>&1 || {
        tail -20 "$work/run.log" >&2
        echo "the training run failed" >&2
        exit 1
    }
}

# The commit the checkout is at, for the recorded file's header.
training_commit() {
    git -C "$ROOT" -c safe.directory="$ROOT" describe --always --dirty 2>/dev/null || echo unknown
}
