#!/usr/bin/env bash
# Local S3 server (Garage 2.5.0, single node) for walsync's tests, demo and
# benchmarks.
#
#   out=$(scripts/s3-server.sh start) && eval "$out"   # start (or reuse), export env
#   eval "$(scripts/s3-server.sh env)"                  # env of the running server
#   scripts/s3-server.sh stop                           # kill it, delete its data
#
# `start` prints only `export …` lines on stdout (everything else goes to
# stderr): AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3,
# AWS_REGION=garage, WALSYNC_TEST_BUCKET and WALSYNC_S3_METRICS (the URL of
# Garage's Prometheus metrics on its admin port: request counters per S3
# endpoint, read by the benchmarks; no admin token is set, so the admin API
# itself stays closed). It is idempotent: when the server of this state
# directory is already running it just prints the env again.
#
# Environment:
#   WALSYNC_CACHE      where Garage is installed (default ~/.cache/walsync)
#   WALSYNC_S3_STATE   state dir: config, data, log, pid (default /tmp/walsync-s3)
#   WALSYNC_TEST_BUCKET  bucket to create (default walsync-test)
#   WALSYNC_GARAGE_LOG   Garage log filter (default garage=info; start-up waits
#                        for its "Creating default bucket" line)
#
# Everything binds to 127.0.0.1 only, on free ports picked at start.
set -euo pipefail

GARAGE_VERSION=2.5.0
CACHE="${WALSYNC_CACHE:-$HOME/.cache/walsync}"
GARAGE_ROOT="$CACHE/garage-$GARAGE_VERSION"
GARAGE="$GARAGE_ROOT/bin/garage"
STATE="${WALSYNC_S3_STATE:-/tmp/walsync-s3}"
BUCKET="${WALSYNC_TEST_BUCKET:-walsync-test}"
START_TIMEOUT=30

say() { echo "s3-server: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Random lower-case hex of $1 bytes, without openssl.
hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# PID of this state dir's Garage if it is alive: not a zombie, and really
# Garage (not a recycled PID).
running_pid() {
    local pid stat
    [[ -f "$STATE/garage.pid" ]] || return 1
    pid=$(<"$STATE/garage.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ "${stat%% *}" != Z ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "garage -c $STATE/garage.toml" || return 1
    echo "$pid"
}

# Three distinct free TCP ports on 127.0.0.1.
free_ports() {
    if command -v python3 >/dev/null; then
        python3 - <<'PY'
import socket
socks = []
for _ in range(3):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
    else
        local found=() p
        for ((p = 20000 + RANDOM % 20000; ${#found[@]} < 3; p++)); do
            (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || found+=("$p")
        done
        echo "${found[*]}"
    fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_garage() {
    [[ -x "$GARAGE" ]] && return 0
    mkdir -p "$CACHE"
    say "installing Garage $GARAGE_VERSION into $GARAGE_ROOT (takes several minutes)"
    # The lock makes two concurrent `start`s build it once.
    (
        flock 9
        [[ -x "$GARAGE" ]] || cargo install garage --locked --version "$GARAGE_VERSION" \
            --root "$GARAGE_ROOT" >&2
    ) 9>"$CACHE/garage-install.lock"
    [[ -x "$GARAGE" ]] || die "Garage install failed"
}

print_env() {
    [[ -f "$STATE/env" ]] || die "no env file in $STATE"
    cat "$STATE/env"
}

stop_server() {
    local pid i
    if pid=$(running_pid); then
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        say "stopped Garage (pid $pid)"
    fi
    # Only delete a directory this script created.
    if [[ -f "$STATE/garage.toml" ]]; then
        rm -rf "$STATE"
    fi
}

start_server() {
    if running_pid >/dev/null; then
        print_env
        return 0
    fi
    install_garage
    stop_server # leftovers of a dead server
    [[ -e "$STATE" ]] && die "$STATE exists and is not a walsync S3 state dir; set WALSYNC_S3_STATE"
    mkdir -p "$STATE/meta" "$STATE/data"
    chmod 700 "$STATE"

    local ports s3_port rpc_port admin_port access secret rpc_secret pid i
    ports=$(free_ports)
    read -r s3_port rpc_port admin_port <<<"$ports"
    access="GK$(hex 12)"
    secret="$(hex 32)"
    rpc_secret="$(hex 32)"

    cat >"$STATE/garage.toml" <<TOML
metadata_dir = "$STATE/meta"
data_dir = "$STATE/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$rpc_secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
TOML
    chmod 600 "$STATE/garage.toml"

    # setsid: the server must outlive the shell that ran `start`.
    GARAGE_DEFAULT_ACCESS_KEY="$access" \
        GARAGE_DEFAULT_SECRET_KEY="$secret" \
        GARAGE_DEFAULT_BUCKET="$BUCKET" \
        RUST_LOG="${WALSYNC_GARAGE_LOG:-garage=info}" \
        setsid "$GARAGE" -c "$STATE/garage.toml" server --single-node --default-bucket \
        >"$STATE/garage.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$STATE/garage.pid"

    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || {
            tail -n 20 "$STATE/garage.log" >&2
            die "Garage exited during start-up (log: $STATE/garage.log)"
        }
        if port_open "$s3_port" && grep -qi "creating default bucket" "$STATE/garage.log"; then
            break
        fi
        sleep 0.1
    done
    if ((i >= START_TIMEOUT * 10)); then
        tail -n 20 "$STATE/garage.log" >&2
        kill "$pid" 2>/dev/null || true
        die "Garage not ready after ${START_TIMEOUT}s (log: $STATE/garage.log)"
    fi

    umask 077
    cat >"$STATE/env" <<ENV
export AWS_ACCESS_KEY_ID=$access
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$s3_port
export AWS_REGION=garage
export WALSYNC_TEST_BUCKET=$BUCKET
export WALSYNC_S3_METRICS=http://127.0.0.1:$admin_port/metrics
ENV
    say "Garage $GARAGE_VERSION running (pid $pid) at http://127.0.0.1:$s3_port, bucket $BUCKET, state $STATE"
    print_env
}

case "${1:-}" in
start) start_server ;;
stop) stop_server ;;
env)
    running_pid >/dev/null || die "no server running for $STATE (run: $0 start)"
    print_env
    ;;
*)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac
