#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for ftvm: host packages, the release build, the guest images.
# Idempotent: a second run installs and rebuilds nothing that is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
trap 'echo "setup: failed during: ${STEP:-?}" >&2' ERR

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

STEP="host packages"
step "$STEP"
need=()
for p in build-essential pkg-config gcc-riscv64-linux-gnu libc6-dev-riscv64-cross binutils-riscv64-linux-gnu \
         iproute2 redis-tools python3 etcd-server tcpdump gdb-multiarch passt \
         prometheus chromium; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	as_root apt-get update -qq
	DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}"
fi

STEP="rust toolchain"
step "$STEP"
if ! command -v cargo >/dev/null; then
	echo "setup: cargo is missing: install Rust (stable, 1.87 or later) with rustup first" >&2
	exit 1
fi
cargo --version

STEP="release build"
step "$STEP"
cargo build --release --workspace

STEP="guest images"
step "$STEP"
bash guest/build.sh
