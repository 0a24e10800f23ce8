#!/usr/bin/env bash
# Set up everything on a fresh Debian 12 machine, then boot the default guest on the terminal.
# Ctrl-A x quits; `poweroff` in the guest shell powers it off.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec target/release/ftvm run "$@"
