#!/usr/bin/env bash
# One private etcd member for the Go and Python tests (the Rust tests have their own
# harness, tests/common/etcd.rs):
#
#   scripts/etcd-server.sh start DIR   starts a member with its data and log in DIR
#                                      (made if missing) on free loopback ports, waits
#                                      until it is healthy, writes DIR/pid and prints
#                                      its client URL (http://127.0.0.1:PORT) on stdout
#   scripts/etcd-server.sh stop DIR    kills that member and removes DIR
#
# ETCD_SERVER_FSYNC=1 keeps etcd's fsync of its log and database (for the benchmarks,
# which measure a member as a user would run it); by default a test member runs with
# --unsafe-no-fsync.
#
# A caller stops it whatever happens:
#   url=$(scripts/etcd-server.sh start "$dir")
#   trap 'scripts/etcd-server.sh stop "$dir"' EXIT
# The member keeps running after `start` returns, in the caller's process group (so
# an interrupt reaches it too). Its log is DIR/etcd.log. It needs Debian's etcd 3.4
# (apt-get install etcd-server etcd-client) and python3 (to find free ports).
set -euo pipefail

die() {
    echo "etcd-server.sh: $*" >&2
    exit 1
}

usage() {
    die "usage: $0 start|stop DIR"
}

# Two distinct loopback ports that were free a moment ago.
free_ports() {
    python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
'
}

# Whether process $1 exists and is not a zombie.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat:0:1}" != Z ]
}

start() {
    local dir=$1 attempt client peer pid url deadline no_fsync=(--unsafe-no-fsync)
    command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
        die "etcd is not installed: apt-get install etcd-server etcd-client"
    if [ -f "$dir/pid" ] && alive "$(cat "$dir/pid")"; then
        die "$dir has a running member already (pid $(cat "$dir/pid"))"
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ "${ETCD_SERVER_FSYNC:-0}" = 1 ] && no_fsync=()
    for attempt in 1 2 3 4 5; do
        read -r client peer < <(free_ports)
        url=http://127.0.0.1:$client
        rm -rf "$dir/data"
        : >"$dir/etcd.log"
        # --unsafe-no-fsync: accepted by 3.4.23 though not in its --help; a test
        # member need not survive a crash of the machine (ETCD_SERVER_FSYNC=1 leaves
        # it out). --bcrypt-cost 4: users authenticate fast.
        etcd --name m0 --data-dir "$dir/data" \
            --listen-client-urls "$url" --advertise-client-urls "$url" \
            --listen-peer-urls "http://127.0.0.1:$peer" \
            --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "m0=http://127.0.0.1:$peer" \
            --initial-cluster-token "etcd-server.sh-$$-$attempt" \
            --heartbeat-interval 10 --election-timeout 100 \
            "${no_fsync[@]}" --bcrypt-cost 4 \
            --logger zap --log-outputs stderr \
            </dev/null >>"$dir/etcd.log" 2>&1 &
        pid=$!
        echo "$pid" >"$dir/pid"
        deadline=$((SECONDS + 10))
        while :; do
            if ! alive "$pid"; then
                grep -q "address already in use" "$dir/etcd.log" && continue 2
                tail -n 30 "$dir/etcd.log" >&2
                die "etcd exited while starting (log above: $dir/etcd.log)"
            fi
            # It accepts connections before it serves them; its log says when it does.
            if grep -q "serving client traffic" "$dir/etcd.log" &&
                ETCDCTL_API=3 etcdctl --endpoints="$url" --dial-timeout=1s \
                    --command-timeout=2s endpoint health >/dev/null 2>&1; then
                echo "$url"
                return
            fi
            if [ $SECONDS -ge $deadline ]; then
                kill -9 "$pid" 2>/dev/null || true
                tail -n 30 "$dir/etcd.log" >&2
                die "etcd not healthy after 10 s (log above: $dir/etcd.log)"
            fi
            sleep 0.02
        done
    done
    die "etcd found its ports taken 5 times in a row"
}

stop() {
    local dir=$1 pid deadline
    [ -e "$dir" ] || return 0
    # Remove only a directory that `start` made.
    [ -f "$dir/pid" ] || [ -f "$dir/etcd.log" ] || die "$dir is not an etcd-server.sh directory"
    if [ -f "$dir/pid" ]; then
        pid=$(cat "$dir/pid")
        # Only an etcd whose data is in DIR: the pid may be another process's by now.
        if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
            grep -qF -- "--data-dir $(cd "$dir" && pwd)/data "; then
            kill -9 "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 5))
            while alive "$pid"; do
                [ $SECONDS -lt $deadline ] || die "etcd $pid does not die"
                sleep 0.01
            done
        fi
    fi
    rm -rf "$dir"
}

[ $# -eq 2 ] || usage
case $1 in
start) start "$2" ;;
stop) stop "$2" ;;
*) usage ;;
esac
