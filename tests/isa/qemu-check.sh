#!/bin/bash
# Differential check of the ISA tests themselves: build the -DQEMU flavour of every
# tests/isa/*.S and run it on qemu-system-riscv64 (virt, M-mode, no firmware).
# Exit status of QEMU (via the SiFive test finisher) is 0 for pass, N for failure at case N.
# Usage: tests/isa/qemu-check.sh [name...]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
QEMU="${QEMU:-qemu-system-riscv64}"
"$here/build.sh"

# Tests QEMU cannot run faithfully. Format: name -> reason.
declare -A SKIP=(
    [zicond]="QEMU 7.2 has no Zicond"
    [zbb_ctzw]="QEMU 7.2 gives ctzw(0x8000000000000000) = 63 (the spec: 32, the low word's count)"
    [cbo]="QEMU 7.2 has no Zicbom or Zicboz"
)
# Tests that need a QEMU CPU option. Format: name -> -cpu value.
declare -A CPU=(
    [svpbmt]="rv64,svpbmt=on"
)

if [ $# -gt 0 ]; then
    names=("$@")
else
    names=()
    for src in "$here"/*.S; do names+=("$(basename "$src" .S)"); done
fi

failed=0
run() { # run <elf> [cpu]; prints the exit status (smpN tests run on N harts)
    local rc=0 harts=1 base
    base="$(basename "$1" .elf)"
    case "$base" in smp[0-9]*) harts="${base#smp}" ;; esac
    timeout 10 "$QEMU" -M virt -smp "$harts" -cpu "${2:-rv64}" -bios none -nographic -m 128M -kernel "$1" \
        </dev/null >/dev/null 2>&1 || rc=$?
    echo "$rc"
}
for name in "${names[@]}"; do
    if [ -n "${SKIP[$name]:-}" ]; then
        printf '%-16s SKIP (%s)\n' "$name" "${SKIP[$name]}"
        continue
    fi
    rc="$(run "$here/out/qemu/$name.elf" "${CPU[$name]:-}")"
    if [ "$rc" = 0 ]; then
        printf '%-16s PASS\n' "$name"
    elif [ "$rc" = 124 ]; then
        printf '%-16s FAIL (timeout)\n' "$name"; failed=1
    else
        printf '%-16s FAIL (case %s)\n' "$name" "$rc"; failed=1
    fi
done

# The negative self-test must fail at case 3.
if [ $# -eq 0 ]; then
    for elf in "$here"/out/negative/qemu/*.elf; do
        rc="$(run "$elf")"
        name="$(basename "$elf" .elf)"
        if [ "$rc" = 3 ]; then
            printf '%-16s PASS (failed at case 3 as intended)\n' "$name"
        else
            printf '%-16s FAIL (exit %s, expected 3)\n' "$name" "$rc"; failed=1
        fi
    done
fi

if [ "$failed" != 0 ]; then echo "qemu-check: FAILURES"; exit 1; fi
echo "qemu-check: all passed"
