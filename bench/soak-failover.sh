#!/usr/bin/env bash
# Soak the fault-tolerant pair: many randomized failover trials on netns hosts, the faults mixed
# at random (the primary killed, frozen and thawed, frozen with the replication link cut, or
# partitioned away; the backup frozen and thawed; either side stalled for less than the dead
# timeout), with the etcd and the file arbiter in turn. Each trial captures what both hosts'
# TAPs put on the wire and fails on any frame sent while the other side was live, on any
# acknowledged key that does not read back on the client's one TCP connection, and on a thawed
# side that does not stop at once.
# usage: bench/soak-failover.sh [TRIALS] [SEED]   (default 70 trials; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-70}
mkdir -p bench/out
export FTVM_FAILOVER_TRIALS=$trials
[ -n "${2:-}" ] && export FTVM_FAILOVER_SEED=$2
cargo test --release -p ftvm --test failover \
	under_every_fault_exactly_one_side_is_live_and_no_acknowledged_key_is_lost -- --nocapture 2>&1 |
	tee bench/out/soak-failover.log | grep -E '^(seed|trial|soak)|test result|panicked'
