#!/usr/bin/env bash
# Builds the ftvm RISC-V guest images from Debian packages:
#
#   guest/out/Image              Linux 6.12 (linux-source-6.12), tinyconfig + guest/kernel.config
#   guest/out/vmlinux            the same kernel as an ELF with its symbols, for gdb
#   guest/out/initramfs.cpio.gz  static busybox + redis-server/redis-cli + cpubench + guest/init
#   guest/out/manifest.txt       Debian package versions and SHA-256 of every artifact
#
# Idempotent: every artifact X has an X.inputs file next to it holding the
# SHA-256 of everything it is built from (config, recipe, source package
# versions, toolchain versions, files in guest/) and the SHA-256 of X itself.
# An artifact is rebuilt only when one of them changed.  Artifacts are written
# under temporary names and renamed into place; X.inputs is written last.
#
# Environment: FTVM_GUEST_OUT (default guest/out), FTVM_GUEST_VERBOSE=1 to
# show build output instead of logging it to $OUT/build/logs/STEP.log.
set -Eeuo pipefail
shopt -s inherit_errexit

GUEST=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${FTVM_GUEST_OUT:-$GUEST/out}
BUILD=$OUT/build
BIN=$BUILD/bin
LOGS=$BUILD/logs
JOBS=$(nproc)
VERBOSE=${FTVM_GUEST_VERBOSE:-0}
CROSS=riscv64-linux-gnu-
# Fixed timestamp for reproducible outputs (kernel version string, busybox
# banner, cpio mtimes).  2024-01-01T00:00:00Z.
EPOCH=1704067200
export SOURCE_DATE_EPOCH=$EPOCH
export LC_ALL=C TZ=UTC
# The build dir lives inside the ftvm git checkout; keep git (used by the
# kernel's setlocalversion and redis' mkreleasehdr.sh) from seeing it.
export GIT_CEILING_DIRECTORIES=$OUT

# The kernel source: Debian's patched tarball in /usr/src (bookworm-security
# carries linux-source-6.12, the kernel of trixie, for bookworm).
KPKG=linux-source-6.12
PACKAGES=(gcc-riscv64-linux-gnu binutils-riscv64-linux-gnu libc6-dev-riscv64-cross
	"$KPKG" build-essential dpkg-dev bc flex bison cpio xz-utils gzip
	make perl python3 ca-certificates)
SRC_PACKAGES=(busybox redis)

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi

STEP=startup
LOG=/dev/null
TMP_PATHS=()
T_START=$(date +%s)

on_err() {
	local rc=$1 line=$2
	if [ "$BASH_SUBSHELL" -gt 0 ]; then
		# inside $(...): the caller fails too and reports the step
		echo "guest/build.sh: command failed at line $line (exit status $rc)" >&2
		exit "$rc"
	fi
	trap - ERR
	local i where="line $line"
	for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do
		where+=" in ${FUNCNAME[i]}, called from line ${BASH_LINENO[i]}"
	done
	echo >&2
	echo "guest/build.sh: FAILED in step '$STEP' (exit status $rc; $where)" >&2
	if [ "$LOG" != /dev/null ] && [ -s "$LOG" ]; then
		echo "---- last lines of $LOG ----" >&2
		tail -n 40 "$LOG" >&2
		echo "---- end of $LOG ----" >&2
	fi
	if [ ${#TMP_PATHS[@]} -gt 0 ]; then rm -rf -- "${TMP_PATHS[@]}"; fi
	exit "$rc"
}
trap 'on_err $? $LINENO' ERR

step() {
	STEP=$1
	mkdir -p "$LOGS"
	LOG=$LOGS/$STEP.log
	: >"$LOG"
	echo "==> [$STEP] ${2:-}"
}

# Runs a command, its output going to the step's log (or the terminal).
run() {
	if [ "$VERBOSE" = 1 ]; then
		"$@"
	else
		"$@" >>"$LOG" 2>&1
	fi
}

sha() { sha256sum "$@" | cut -d' ' -f1; }
sha_str() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
# The text of the given shell functions: part of an artifact's inputs, so a
# change of its recipe in this script rebuilds it (and only it).
recipe() { declare -f "$@" | sha256sum | cut -d' ' -f1; }
elapsed() { echo "$(($(date +%s) - $1))s"; }

# current ARTIFACT DESCRIPTION: is ARTIFACT up to date w.r.t. DESCRIPTION?
current() {
	local f=$1 h
	h=$(sha_str "$2")
	[ -f "$f" ] && [ -f "$f.inputs" ] || return 1
	[ "$(sed -n 1p "$f.inputs")" = "inputs-sha256 $h" ] || return 1
	[ "$(sed -n 2p "$f.inputs")" = "artifact-sha256 $(sha "$f")" ] || return 1
}

# begin ARTIFACT: it is about to be rebuilt; drop its stamp so that a failed
# build can never leave it looking current.
begin() {
	rm -f -- "$1.inputs" "$1.tmp" "$1.inputs.tmp"
	TMP_PATHS+=("$1.tmp" "$1.inputs.tmp")
}

# commit ARTIFACT DESCRIPTION: ARTIFACT.tmp is complete; rename it into place,
# then write the stamp.
commit() {
	local f=$1 desc=$2
	mv -f -- "$f.tmp" "$f"
	{
		echo "inputs-sha256 $(sha_str "$desc")"
		echo "artifact-sha256 $(sha "$f")"
		echo "# inputs:"
		printf '%s\n' "$desc"
	} >"$f.inputs.tmp"
	mv -f -- "$f.inputs.tmp" "$f.inputs"
}

up_to_date_msg() { echo "    ${1#"$OUT"/}: up to date (inputs unchanged), not rebuilt"; }

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

# kconfig_verify FRAGMENT CONFIG: every line of FRAGMENT holds in CONFIG.
kconfig_verify() {
	local frag=$1 cfg=$2 line opt bad=()
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*)
			grep -qxF -- "$line" "$cfg" ||
				bad+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$cfg" || echo 'not present'))")
			;;
		'# CONFIG_'*' is not set')
			opt=${line#\# }
			opt=${opt%% *}
			if grep -q "^$opt=" "$cfg"; then bad+=("$line (got: $(grep "^$opt=" "$cfg"))"); fi
			;;
		esac
	done <"$frag"
	if [ ${#bad[@]} -gt 0 ]; then
		echo "config $cfg does not match $frag; options not set as requested:" >&2
		printf '    %s\n' "${bad[@]}" >&2
		return 1
	fi
}

# ------------------------------------------------------------ packages ---
ensure_packages() {
	step packages "Debian packages"
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != installed ]; then
			missing+=("$p")
		fi
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "    installing: ${missing[*]}"
		# A fresh machine's package lists may be older than the packages we need
		# (linux-source-6.12 came to bookworm in a point release).
		apt_retry "${SUDO[@]}" apt-get update -q -o DPkg::Lock::Timeout=900
		apt_retry "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			-o DPkg::Lock::Timeout=900 "${missing[@]}"
	else
		echo "    all build packages installed"
	fi

	# deb-src entries are needed for `apt-get source`.
	local uris
	uris=$(apt-get source --print-uris -qq busybox 2>/dev/null || true)
	if ! grep -q '\.dsc' <<<"$uris"; then
		local srcs=/etc/apt/sources.list.d/ftvm-src.sources
		echo "    no deb-src entries for bookworm: adding $srcs"
		"${SUDO[@]}" tee "$srcs" >/dev/null <<'EOF'
# Added by ftvm guest/build.sh: source packages for busybox and redis.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
		apt_retry "${SUDO[@]}" apt-get update -q -o DPkg::Lock::Timeout=900
	fi
}

# apt may be locked by another apt process: retry a few times.
apt_retry() {
	local i
	for i in 1 2 3 4 5 6; do
		if run "$@"; then return 0; fi
		echo "    apt command failed (attempt $i; apt may be locked), retrying in 20s" >&2
		sleep 20
	done
	run "$@"
}

# Source version apt-get source would fetch (without epoch), from the local
# package lists: no network access.
src_candidate() {
	local v
	v=$(apt-get source --print-uris -qq "$1" | sed -n "s/^'[^']*' $1_\([^ ]*\)\.dsc .*/\1/p")
	v=${v%%$'\n'*}
	[ -n "$v" ] || { echo "cannot determine source version of $1 (deb-src missing?)" >&2; return 1; }
	echo "$v"
}

# The source version with its epoch, as in the Sources index.
src_full_version() {
	apt-cache showsrc "$1" | awk -v want="$2" '
		/^Version:/ { v = $2; sub(/^[0-9]+:/, "", v); if (v == want && !done) { print $2; done = 1 } }'
}

toolchain_versions() {
	echo "gcc-riscv64-linux-gnu $(pkg_version gcc-riscv64-linux-gnu)"
	echo "gcc-12-riscv64-linux-gnu $(pkg_version gcc-12-riscv64-linux-gnu)"
	echo "binutils-riscv64-linux-gnu $(pkg_version binutils-riscv64-linux-gnu)"
	echo "libc6-dev-riscv64-cross $(pkg_version libc6-dev-riscv64-cross)"
	echo "linux-libc-dev-riscv64-cross $(pkg_version linux-libc-dev-riscv64-cross)"
}

# fetch_source PKG VERSION: apt-get source into $BUILD/src/PKG_VERSION/ (once);
# sets SRC_TREE to the extracted, Debian-patched tree.
fetch_source() {
	local pkg=$1 ver=$2 dir=$BUILD/src/$1_$2
	if [ ! -d "$dir" ]; then
		echo "    apt-get source $pkg ($ver)"
		rm -rf "$dir.tmp"
		TMP_PATHS+=("$dir.tmp")
		mkdir -p "$dir.tmp"
		cd "$dir.tmp"
		run apt-get source -q "$pkg"
		cd "$GUEST"
		test -f "$dir.tmp/${pkg}_$ver.dsc"
		mv "$dir.tmp" "$dir"
	fi
	SRC_TREE=$(find "$dir" -mindepth 1 -maxdepth 1 -type d -name "$pkg-*" -print -quit)
	test -n "$SRC_TREE" && test -f "$SRC_TREE/debian/changelog"
}

# Extracts /usr/src/$KPKG.tar.xz (once per package version) and sets KSRC to
# the tree.
kernel_source() {
	KSRC=$BUILD/linux-$KSRC_VERSION
	if [ ! -f "$KSRC/Makefile" ]; then
		echo "    extracting /usr/src/$KPKG.tar.xz"
		rm -rf "$KSRC" "$KSRC.tmp"
		TMP_PATHS+=("$KSRC.tmp")
		mkdir -p "$KSRC.tmp"
		tar -xJf "/usr/src/$KPKG.tar.xz" -C "$KSRC.tmp" --strip-components=1
		mv "$KSRC.tmp" "$KSRC"
	fi
}

# --------------------------------------------------------------- kernel ---
build_kernel() {
	local src obj=$BUILD/linux-obj
	kernel_source
	src=$KSRC
	local kmake=(make -C "$src" O="$obj" ARCH=riscv CROSS_COMPILE=$CROSS
		KBUILD_BUILD_USER=ftvm KBUILD_BUILD_HOST=ftvm KBUILD_BUILD_VERSION=1
		"KBUILD_BUILD_TIMESTAMP=$(date -u -d "@$EPOCH")")
	# The object dir is reused (incremental build) unless the source changed.
	if [ "$(cat "$obj/.ftvm-source" 2>/dev/null || true)" != "$KSRC_VERSION" ]; then
		rm -rf "$obj"
	fi
	mkdir -p "$obj"
	echo "$KSRC_VERSION" >"$obj/.ftvm-source"

	STEP=kernel-config
	run "${kmake[@]}" tinyconfig
	run env ARCH=riscv "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$GUEST/kernel.config"
	run "${kmake[@]}" olddefconfig
	kconfig_verify "$GUEST/kernel.config" "$obj/.config"

	STEP=kernel-build
	echo "    make -j$JOBS Image (log: ${LOG#"$OUT"/})"
	run "${kmake[@]}" -j"$JOBS" Image
	cp "$obj/.config" "$OUT/Image.config.tmp"
	mv -f "$OUT/Image.config.tmp" "$OUT/Image.config"
	cp "$obj/arch/riscv/boot/Image" "$OUT/Image.tmp"
	# The ELF the Image is cut from, with its symbol table: gdb loads it to debug the guest
	# (ftvm replay --gdb; docs/debugging.md).
	cp "$obj/vmlinux" "$OUT/vmlinux.tmp"
	KERNEL_RELEASE=$(cat "$obj/include/config/kernel.release")
}

do_kernel() {
	step kernel "Linux $KSRC_VERSION -> out/Image"
	local desc t0=$(date +%s)
	desc="$KPKG $KSRC_VERSION
$TOOLCHAIN
kernel.config $(sha "$GUEST/kernel.config")
recipe $(recipe build_kernel kernel_source kconfig_verify)"
	if current "$OUT/Image" "$desc" && current "$OUT/vmlinux" "$desc"; then
		up_to_date_msg "$OUT/Image"
		return 0
	fi
	begin "$OUT/Image"
	begin "$OUT/vmlinux"
	build_kernel
	STEP=kernel
	commit "$OUT/vmlinux" "$desc"
	commit "$OUT/Image" "$desc"
	echo "    built Image ($(stat -c %s "$OUT/Image") bytes, $KERNEL_RELEASE) in $(elapsed "$t0")"
}

# -------------------------------------------------------------- busybox ---
build_busybox() {
	local src obj=$BUILD/busybox-obj
	fetch_source busybox "$BUSYBOX_VERSION"
	src=$SRC_TREE
	rm -rf "$obj"
	mkdir -p "$obj"
	local bmake=(make -C "$src" O="$obj" CROSS_COMPILE=$CROSS)
	run "${bmake[@]}" defconfig
	# Static binary; tc does not build against current kernel headers.
	sed -i -e 's/^# CONFIG_STATIC is not set$/CONFIG_STATIC=y/' \
		-e 's/^CONFIG_TC=y$/# CONFIG_TC is not set/' "$obj/.config"
	run "${bmake[@]}" oldconfig </dev/null
	printf '%s\n' CONFIG_STATIC=y '# CONFIG_TC is not set' CONFIG_MKE2FS=y CONFIG_CTTYHACK=y \
		CONFIG_IP=y CONFIG_POWEROFF=y CONFIG_FLOAT_DURATION=y CONFIG_OD=y CONFIG_ASH=y \
		CONFIG_SH_IS_ASH=y >"$obj/ftvm-required.config"
	kconfig_verify "$obj/ftvm-required.config" "$obj/.config"
	run "${bmake[@]}" -j"$JOBS" busybox
	run "${bmake[@]}" busybox.links
	cp "$obj/busybox" "$BIN/busybox.tmp"
	cp "$obj/busybox.links" "$BIN/busybox.links.tmp"
}

do_busybox() {
	step busybox "busybox $BUSYBOX_VERSION (static)"
	local desc t0=$(date +%s)
	desc="busybox-source $BUSYBOX_VERSION
$TOOLCHAIN
recipe $(recipe build_busybox fetch_source kconfig_verify)"
	if current "$BIN/busybox" "$desc" && current "$BIN/busybox.links" "$desc"; then
		up_to_date_msg "$BIN/busybox"
		return 0
	fi
	begin "$BIN/busybox"
	begin "$BIN/busybox.links"
	build_busybox
	commit "$BIN/busybox.links" "$desc"
	commit "$BIN/busybox" "$desc"
	echo "    built busybox ($(stat -c %s "$BIN/busybox") bytes) in $(elapsed "$t0")"
}

# ---------------------------------------------------------------- redis ---
build_redis() {
	local src work=$BUILD/redis-work
	fetch_source redis "$REDIS_VERSION"
	src=$SRC_TREE
	rm -rf "$work"
	cp -a "$src" "$work"
	# The Debian source keeps redis' bundled deps (lua, hiredis, linenoise,
	# hdr_histogram, jemalloc); Debian's own build links the system jemalloc
	# and systemd (debian/rules), which we do not: libc malloc, no TLS/systemd.
	# No -g (DEBUG=, DEBUG_FLAGS= for hiredis): debug info holds the build
	# path, which would leak into the GNU build-id and make the binary
	# depend on where it was built.
	run make -C "$work/src" -j"$JOBS" \
		CC=${CROSS}gcc AR=${CROSS}ar RANLIB=${CROSS}ranlib \
		MALLOC=libc USE_SYSTEMD=no BUILD_TLS=no USE_SYSTEM_JEMALLOC=no \
		OPT=-O2 DEBUG= DEBUG_FLAGS= LDFLAGS=-static \
		redis-server redis-cli
	${CROSS}strip -o "$BIN/redis-server.tmp" "$work/src/redis-server"
	${CROSS}strip -o "$BIN/redis-cli.tmp" "$work/src/redis-cli"
}

do_redis() {
	step redis "redis $REDIS_VERSION (static redis-server, redis-cli)"
	local desc t0=$(date +%s)
	desc="redis-source $REDIS_VERSION
$TOOLCHAIN
recipe $(recipe build_redis fetch_source)"
	if current "$BIN/redis-server" "$desc" && current "$BIN/redis-cli" "$desc"; then
		up_to_date_msg "$BIN/redis-server"
		up_to_date_msg "$BIN/redis-cli"
		return 0
	fi
	begin "$BIN/redis-server"
	begin "$BIN/redis-cli"
	build_redis
	commit "$BIN/redis-cli" "$desc"
	commit "$BIN/redis-server" "$desc"
	echo "    built redis-server ($(stat -c %s "$BIN/redis-server") bytes), redis-cli in $(elapsed "$t0")"
}

# ------------------------------------------------------------- cpubench ---
build_cpubench() {
	run ${CROSS}gcc -O2 -ffp-contract=off -static -Wall -Wextra -o "$BIN/cpubench.tmp" \
		"$GUEST/cpubench.c" -lm
	run ${CROSS}strip "$BIN/cpubench.tmp"
}

do_cpubench() {
	step cpubench "guest/cpubench.c (static)"
	local desc
	desc="cpubench.c $(sha "$GUEST/cpubench.c")
$TOOLCHAIN
recipe $(recipe build_cpubench)"
	if current "$BIN/cpubench" "$desc"; then
		up_to_date_msg "$BIN/cpubench"
		return 0
	fi
	begin "$BIN/cpubench"
	build_cpubench
	commit "$BIN/cpubench" "$desc"
	echo "    built cpubench ($(stat -c %s "$BIN/cpubench") bytes)"
}

# ------------------------------------------------------------ initramfs ---
# Written with the kernel's own usr/gen_init_cpio from a file list, so that
# /dev/console can be a device node without root, every entry is owned by
# 0:0, and the archive is byte-for-byte reproducible (fixed mtimes, gzip -n).
build_initramfs() {
	local src stage=$BUILD/initramfs-stage list=$BUILD/initramfs.list gen=$BUILD/gen_init_cpio
	kernel_source
	src=$KSRC
	run gcc -O2 -o "$gen" "$src/usr/gen_init_cpio.c"

	rm -rf "$stage"
	mkdir -p "$stage"
	install -m 0755 "$GUEST/init" "$stage/init"
	install -m 0755 "$BIN/busybox" "$stage/busybox"
	install -m 0755 "$BIN/redis-server" "$stage/redis-server"
	install -m 0755 "$BIN/redis-cli" "$stage/redis-cli"
	install -m 0755 "$BIN/cpubench" "$stage/cpubench"
	printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' >"$stage/passwd"
	printf '%s\n' 'root:x:0:' >"$stage/group"
	printf '%s\n' '127.0.0.1 localhost' >"$stage/hosts"
	printf '%s\n' 'export PATH=/bin:/sbin:/usr/bin:/usr/sbin' 'export HOME=/root' \
		"PS1='ftvm:\\w# '" >"$stage/profile"
	find "$stage" -exec touch -h -d "@$EPOCH" {} +

	{
		local d
		for d in /bin /data /dev /etc /mnt /proc /run /sbin /sys /usr /usr/bin /usr/sbin /var /var/log; do
			echo "dir $d 0755 0 0"
		done
		echo "dir /root 0700 0 0"
		echo "dir /tmp 1777 0 0"
		echo "nod /dev/console 0600 0 0 c 5 1"
		echo "nod /dev/null 0666 0 0 c 1 3"
		echo "file /init $stage/init 0755 0 0"
		echo "file /bin/busybox $stage/busybox 0755 0 0"
		echo "file /usr/bin/redis-server $stage/redis-server 0755 0 0"
		echo "file /usr/bin/redis-cli $stage/redis-cli 0755 0 0"
		echo "file /bin/cpubench $stage/cpubench 0755 0 0"
		echo "file /etc/passwd $stage/passwd 0644 0 0"
		echo "file /etc/group $stage/group 0644 0 0"
		echo "file /etc/hosts $stage/hosts 0644 0 0"
		echo "file /etc/profile $stage/profile 0644 0 0"
		# busybox applet links (busybox.links lists /bin/ls, /sbin/ip, ...)
		grep -v '^/bin/busybox$' "$BIN/busybox.links" | LC_ALL=C sort -u |
			while read -r l; do echo "slink $l /bin/busybox 0777 0 0"; done
	} >"$list"
	"$gen" -t "$EPOCH" "$list" | gzip -9 -n >"$OUT/initramfs.cpio.gz.tmp"
	# sanity: the archive is readable and holds what /init needs
	local names
	names=$(gzip -dc "$OUT/initramfs.cpio.gz.tmp" | cpio -it --quiet)
	for f in init bin/busybox bin/sh sbin/ip usr/bin/redis-server usr/bin/redis-cli bin/cpubench dev/console; do
		grep -qx "$f" <<<"$names" || { echo "initramfs lacks /$f" >&2; return 1; }
	done
}

do_initramfs() {
	step initramfs "out/initramfs.cpio.gz"
	local desc f
	desc="init $(sha "$GUEST/init")"
	for f in busybox busybox.links redis-server redis-cli cpubench; do
		desc+=$'\n'"$f $(sha "$BIN/$f")"
	done
	desc+=$'\n'"gen_init_cpio $KPKG $KSRC_VERSION"
	desc+=$'\n'"recipe $(recipe build_initramfs kernel_source)"
	if current "$OUT/initramfs.cpio.gz" "$desc"; then
		up_to_date_msg "$OUT/initramfs.cpio.gz"
		return 0
	fi
	begin "$OUT/initramfs.cpio.gz"
	build_initramfs
	commit "$OUT/initramfs.cpio.gz" "$desc"
	echo "    built initramfs.cpio.gz ($(stat -c %s "$OUT/initramfs.cpio.gz") bytes)"
}

# ------------------------------------------------------------- manifest ---
do_manifest() {
	step manifest "out/manifest.txt"
	local text f
	text="# ftvm guest images, built by guest/build.sh from Debian bookworm packages.
# Check with: cd guest/out && grep -E '^[0-9a-f]{64}  ' manifest.txt | sha256sum -c

[debian packages]
$KPKG $KSRC_VERSION
$(toolchain_versions)

[debian source packages]
busybox $BUSYBOX_SRC_FULL
redis $REDIS_SRC_FULL

[kernel]
release $(grep -m1 '^# Linux/riscv' "$OUT/Image.config" | sed 's/^# Linux\/riscv \([^ ]*\).*/\1/')
config guest/kernel.config merged onto tinyconfig; full config: Image.config
build-timestamp $(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ) (SOURCE_DATE_EPOCH=$EPOCH)

[sha256]"
	for f in Image vmlinux initramfs.cpio.gz Image.config build/bin/busybox build/bin/redis-server \
		build/bin/redis-cli build/bin/cpubench; do
		text+=$'\n'"$(sha "$OUT/$f")  $f"
	done
	if current "$OUT/manifest.txt" "$text"; then
		up_to_date_msg "$OUT/manifest.txt"
		return 0
	fi
	begin "$OUT/manifest.txt"
	printf '%s\n' "$text" >"$OUT/manifest.txt.tmp"
	commit "$OUT/manifest.txt" "$text"
	echo "    wrote manifest.txt"
}

# ----------------------------------------------------------------- main ---
main() {
	mkdir -p "$OUT" "$BUILD" "$BIN" "$LOGS"
	ensure_packages

	step versions "package versions"
	KSRC_VERSION=$(pkg_version "$KPKG")
	TOOLCHAIN=$(toolchain_versions)$'\n'"build-epoch $EPOCH"
	BUSYBOX_VERSION=$(src_candidate busybox)
	REDIS_VERSION=$(src_candidate redis)
	BUSYBOX_SRC_FULL=$(src_full_version busybox "$BUSYBOX_VERSION")
	REDIS_SRC_FULL=$(src_full_version redis "$REDIS_VERSION")
	echo "    $KPKG $KSRC_VERSION, busybox $BUSYBOX_SRC_FULL, redis $REDIS_SRC_FULL"

	do_kernel
	do_busybox
	do_redis
	do_cpubench
	do_initramfs
	do_manifest

	STEP=done
	echo "guest/build.sh: all artifacts in ${OUT} are up to date ($(elapsed "$T_START") total)"
	(cd "$OUT" && ls -l Image initramfs.cpio.gz manifest.txt)
}

main "$@"
