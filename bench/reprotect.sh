#!/bin/bash
# Re-protection of a large guest: a pair with a 1 GiB guest (--mem, default 1G) whose RAM holds
# ~700 MB of data; the backup is killed, a new one attaches by pre-copy while the guest runs,
# and the primary reports the rounds and how long the guest paused. Loopback, no network
# devices; needs the release build (target/release/ftvm) and the guest images.
#
# usage: bench/reprotect.sh [MEM]          e.g. bench/reprotect.sh 1G
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/target/release/ftvm
MEM=${1:-1G}
D=$(mktemp -d /tmp/ftvm-reprotect.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$D"; }
trap cleanup EXIT
cd "$D"
head -c 32 /dev/urandom > psk
truncate -s 32M p.img b.img b2.img
mkfifo -m 600 in
exec 3<>in
COMMON=(--psk psk --arbiter "file:$D/arb" --mem "$MEM" --append console=ttyS0)
PORT=$((20000 + RANDOM % 20000))
"$B" primary --listen 127.0.0.1:$PORT "${COMMON[@]}" --disk p.img <&3 > p.out 2> p.err &
PIDS+=($!)
sleep 0.3
"$B" backup --primary 127.0.0.1:$PORT "${COMMON[@]}" --disk b.img > /dev/null 2> b.err &
BK=$!; PIDS+=($BK)
wait_for() { # FILE PATTERN SECONDS
	for _ in $(seq $(($3 * 5))); do grep -q "$2" "$1" && return 0; sleep 0.2; done
	echo "timed out waiting for '$2' in $1" >&2; tail -5 "$1" p.err b.err >&2; exit 1
}
wait_for p.out "ftvm-guest: ready" 60
echo 'yes abcdefghijklmnopqrstuvwxyz0123456789 | head -c 700000000 > /big; echo fil""led' >&3
wait_for p.out "^filled" 300
kill -9 "$BK"
wait_for p.err "runs on alone\|won generation\|unprotected\|the backup" 10 || true
sleep 1
"$B" backup --primary 127.0.0.1:$PORT "${COMMON[@]}" --disk b2.img > /dev/null 2> b2.err &
PIDS+=($!)
wait_for p.err "the guest paused" 120
grep -E "pre-copy to the backup \(generation 1\)|pre-copy round|attached \(generation 1\)|the guest paused" p.err | tail -6
echo poweroff >&3
