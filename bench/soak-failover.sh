#!/usr/bin/env bash
# Soak the fault-tolerant pair: many randomized failover trials (SIGKILL of the primary at a
# random moment while a client writes keys over one TCP connection; every acknowledged key must
# read back on the same connection). usage: bench/soak-failover.sh [TRIALS]   (default 100; root)
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-100}
FTVM_FAILOVER_TRIALS=$trials cargo test --release -p ftvm --test failover \
	primary_killed_the_client_connection_survives -- --nocapture 2>&1 | tee bench/out/soak-failover.log |
	grep -E '^trial|test result'
