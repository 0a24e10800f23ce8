#!/usr/bin/env bash
# Set up a fresh Debian 12 machine and run every test: formatting, lints, unit tests, the ISA
# suite, the integration tests that boot the real guest, the protocol simulation, and each fuzz
# target for a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo; echo "==> ISA test programs"
bash tests/isa/build.sh
echo; echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo; echo "==> cargo clippy"
cargo clippy --release --all-targets -- -D warnings
echo; echo "==> cargo test"
cargo test --release --workspace
echo; echo "==> fuzz targets, briefly (scripts/fuzz.sh SECONDS runs them longer)"
bash scripts/fuzz.sh "${FTVM_FUZZ_SECONDS:-10}"
echo; echo "all tests passed"
