#!/usr/bin/env bash
# Boots guest/out/Image + guest/out/initramfs.cpio.gz with Debian's
# qemu-system-riscv64 (-M virt, default OpenSBI firmware) and checks that the
# guest works: this is the reference behaviour ftvm is compared against.
#
#   boot 1: blank virtio-blk disk -> the guest formats it, redis answers PING,
#           SET/GET work, `poweroff` typed on the console powers qemu off.
#   boot 2: same disk -> the key written in boot 1 is still there (AOF on disk).
#
# usage: guest/qemu-check.sh [--no-disk]
# env:   QEMU_CHECK_TIMEOUT (seconds to wait for "ftvm-guest: ready", default 120)
#        QEMU_CHECK_SMP (harts, default 2), QEMU_CHECK_PORT (host port, default: a free one)
#        FTVM_GUEST_OUT (default guest/out)
set -euo pipefail

GUEST=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${FTVM_GUEST_OUT:-$GUEST/out}
TIMEOUT=${QEMU_CHECK_TIMEOUT:-120}
SMP=${QEMU_CHECK_SMP:-2}
USE_DISK=1
for a in "$@"; do
	case $a in
	--no-disk) USE_DISK=0 ;;
	-h | --help) sed -n '2,14p' "$0"; exit 0 ;;
	*) echo "qemu-check: unknown argument $a" >&2; exit 2 ;;
	esac
done

die() {
	echo "qemu-check: FAIL: $*" >&2
	if [ -n "${CONSOLE:-}" ] && [ -f "$CONSOLE" ]; then
		echo "---- last lines of the guest console ($CONSOLE) ----" >&2
		tail -n 40 "$CONSOLE" >&2
		echo "---- end of console ----" >&2
	fi
	exit 1
}

# ------------------------------------------------------------ packages ---
need=()
command -v qemu-system-riscv64 >/dev/null || need+=(qemu-system-misc)
command -v redis-cli >/dev/null || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
	echo "qemu-check: installing ${need[*]}"
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		-o DPkg::Lock::Timeout=900 "${need[@]}" >/dev/null
fi

for f in Image initramfs.cpio.gz; do
	[ -f "$OUT/$f" ] || die "$OUT/$f is missing; run guest/build.sh first"
done

# ------------------------------------------------------------- helpers ---
TMP=$(mktemp -d /tmp/ftvm-qemu-check.XXXXXX)
QEMU_PID=
CONSOLE=
cleanup() {
	exec 3>&- 2>/dev/null || true
	if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
		kill "$QEMU_PID" 2>/dev/null || true
		wait "$QEMU_PID" 2>/dev/null || true
	fi
	if [ "${KEEP_TMP:-0}" = 1 ]; then echo "qemu-check: kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${QEMU_CHECK_PORT:-}" ]; then
	PORT=$QEMU_CHECK_PORT
else
	PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
		echo $((20000 + RANDOM % 20000)))
fi

APPEND="console=ttyS0 earlycon ftvm.ip=10.0.2.15/24,10.0.2.2"
DISK=$TMP/disk.raw
if [ $USE_DISK = 1 ]; then truncate -s 64M "$DISK"; fi

rcli() { redis-cli -h 127.0.0.1 -p "$PORT" "$@"; }

# boot NAME: start qemu with the console on a fifo and wait for the ready line.
boot() {
	local name=$1 t0 i
	CONSOLE=$TMP/console-$name.log
	rm -f "$TMP/console-in"
	mkfifo "$TMP/console-in"
	local cmd=(qemu-system-riscv64 -M virt -smp "$SMP" -m 512M -nographic
		-kernel "$OUT/Image" -initrd "$OUT/initramfs.cpio.gz" -append "$APPEND"
		-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:6379"
		-device virtio-net-device,netdev=n0)
	if [ $USE_DISK = 1 ]; then
		cmd+=(-drive "file=$DISK,format=raw,if=none,id=d0" -device virtio-blk-device,drive=d0)
	fi
	echo "qemu-check: [$name] ${cmd[*]}"
	"${cmd[@]}" <"$TMP/console-in" >"$CONSOLE" 2>&1 &
	QEMU_PID=$!
	exec 3>"$TMP/console-in"
	t0=$(date +%s.%N)
	for ((i = 0; i < TIMEOUT * 10; i++)); do
		if grep -q '^ftvm-guest: ready' "$CONSOLE" 2>/dev/null; then
			printf 'qemu-check: [%s] %s (%.1f s after qemu start)\n' "$name" \
				"$(grep -m1 '^ftvm-guest: ready' "$CONSOLE" | tr -d '\r')" \
				"$(echo "$(date +%s.%N) - $t0" | bc)"
			return 0
		fi
		kill -0 "$QEMU_PID" 2>/dev/null || die "[$name] qemu exited before the guest was ready"
		grep -q '^ftvm-guest: ERROR' "$CONSOLE" && die "[$name] guest reported an error"
		sleep 0.1
	done
	die "[$name] no 'ftvm-guest: ready' on the console within ${TIMEOUT}s"
}

# poweroff NAME: type `poweroff` on the console, qemu must exit by itself.
poweroff_guest() {
	local name=$1 i
	echo "poweroff" >&3
	for ((i = 0; i < 300; i++)); do
		if ! kill -0 "$QEMU_PID" 2>/dev/null; then
			wait "$QEMU_PID" || die "[$name] qemu exit status $?"
			QEMU_PID=
			exec 3>&-
			grep -q 'reboot: Power down' "$CONSOLE" || die "[$name] no 'reboot: Power down' on the console"
			echo "qemu-check: [$name] guest powered off, qemu exited"
			return 0
		fi
		sleep 0.1
	done
	die "[$name] qemu still running 30s after 'poweroff'"
}

# ---------------------------------------------------------------- boot 1 ---
VALUE="ftvm-$(date +%s)-$RANDOM"
boot boot1
r=$(rcli ping) || die "redis-cli ping failed"
[ "$r" = PONG ] || die "PING answered '$r', expected PONG"
echo "qemu-check: [boot1] redis-cli -p $PORT ping -> $r"
r=$(rcli set ftvm:check "$VALUE") || die "redis-cli set failed"
[ "$r" = OK ] || die "SET answered '$r'"
r=$(rcli get ftvm:check) || die "redis-cli get failed"
[ "$r" = "$VALUE" ] || die "GET answered '$r', expected '$VALUE'"
echo "qemu-check: [boot1] SET/GET ftvm:check -> $r"
if [ $USE_DISK = 1 ]; then
	grep -q 'ftvm-guest: /dev/vda mounted at /data' "$CONSOLE" || die "[boot1] /dev/vda not mounted"
fi
poweroff_guest boot1

# ---------------------------------------------------------------- boot 2 ---
if [ $USE_DISK = 1 ]; then
	boot boot2
	grep -q 'formatting' "$CONSOLE" && die "[boot2] the disk was formatted again"
	r=$(rcli get ftvm:check) || die "redis-cli get failed"
	[ "$r" = "$VALUE" ] || die "[boot2] GET after reboot answered '$r', expected '$VALUE'"
	echo "qemu-check: [boot2] GET ftvm:check after reboot -> $r (persisted on /dev/vda)"
	poweroff_guest boot2
fi

echo "qemu-check: PASS (kernel command line: $APPEND)"
