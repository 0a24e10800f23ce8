#!/usr/bin/env bash
# Run every cargo-fuzz target for SECONDS each (default 60); fail if any finds a crash.
# Crashes are left in fuzz/artifacts/TARGET/ (reproduce with `cargo fuzz run TARGET FILE`).
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
case "$secs" in
    ''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz needs nightly flags (-Z sanitizer); RUSTC_BOOTSTRAP lets the stable toolchain take them.
export RUSTC_BOOTSTRAP=1
failed=()
for target in $(cargo fuzz list); do
    echo "==> fuzz $target for ${secs}s"
    if ! cargo fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048; then
        failed+=("$target")
    fi
done
if ((${#failed[@]})); then
    echo "fuzzing found crashes in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzzing: no crash in ${secs}s per target"
