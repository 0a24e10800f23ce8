#!/bin/bash
# Build the bare-metal ISA tests.
#   tests/isa/*.S          -> tests/isa/out/<name>.elf       (ftvm flavour: tohost)
#                          -> tests/isa/out/qemu/<name>.elf  (-DQEMU: SiFive test finisher)
#   tests/isa/negative/*.S -> tests/isa/out/negative/<name>.elf (tests that must FAIL; ftvm only)
# An ELF is rebuilt only when it is older than its source, test.h, link.ld or this script.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/out"
CC="${RISCV_CC:-riscv64-linux-gnu-gcc}"

if ! command -v "$CC" >/dev/null 2>&1; then
    echo "build.sh: $CC not found, installing gcc-riscv64-linux-gnu" >&2
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        gcc-riscv64-linux-gnu binutils-riscv64-linux-gnu
    command -v "$CC" >/dev/null 2>&1 || { echo "build.sh: cannot install $CC" >&2; exit 1; }
fi

CFLAGS=(-march=rv64gc -mabi=lp64d -nostdlib -nostartfiles -static -fno-pic -no-pie
        -Wl,--build-id=none -Wl,--no-warn-rwx-segments -Wa,--fatal-warnings -I "$here" -T "$here/link.ld")
deps=("$here/test.h" "$here/link.ld" "$here/build.sh")

# build <source> <output> [extra flags...]
build() {
    local src="$1" elf="$2"
    shift 2
    local stale=0 d
    if [ ! -e "$elf" ] || [ "$src" -nt "$elf" ]; then stale=1; fi
    for d in "${deps[@]}"; do
        if [ "$d" -nt "$elf" ]; then stale=1; fi
    done
    if [ "$stale" = 1 ]; then
        echo "  CC  ${elf#"$here"/}"
        mkdir -p "$(dirname "$elf")"
        "$CC" "${CFLAGS[@]}" "$@" -o "$elf.tmp" "$src"
        mv -f "$elf.tmp" "$elf"
    fi
}

shopt -s nullglob
for src in "$here"/*.S; do
    name="$(basename "$src" .S)"
    build "$src" "$out/$name.elf"
    build "$src" "$out/qemu/$name.elf" -DQEMU
done
for src in "$here"/negative/*.S; do
    name="$(basename "$src" .S)"
    build "$src" "$out/negative/$name.elf"
    build "$src" "$out/negative/qemu/$name.elf" -DQEMU
done
