#!/usr/bin/env bash
# Cross-builds gemba for a Jetson (aarch64, JetPack 6: Ubuntu 22.04, glibc 2.35) on a Debian/Ubuntu
# x86_64 machine: installs the cross toolchain and the arm64 ALSA headers, then
#
#   scripts/cross-build-aarch64.sh             builds target/aarch64-unknown-linux-gnu/release/gemba
#   scripts/cross-build-aarch64.sh --debug     the same, debug profile (.../debug/gemba)
#   scripts/cross-build-aarch64.sh --test-lib  builds the crate's unit tests for aarch64 and runs them
#                                              (set CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER,
#                                              e.g. qemu-aarch64: see scripts/aarch64-check)
# Further arguments go to cargo. Safe to run again.
#
# Linked with Debian 12's cross toolchain (gcc-aarch64-linux-gnu, glibc 2.36 headers and
# stubs). glibc symbols are versioned by the release that last changed them, and nothing gemba
# or its C parts (bundled SQLite, zstd, ALSA) call changed after 2.34, so the binary runs on
# glibc >= 2.34; the build checks that (readelf) and fails if a symbol newer than 2.35 appears.
# Then: scripts/package-deb --arch arm64 makes the .deb for the board.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=release
case "${1:-}" in --debug) mode=debug; shift;; --test-lib) mode=test; shift;; esac
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
if ! dpkg --print-foreign-architectures | grep -qx arm64; then $sudo dpkg --add-architecture arm64; $sudo apt-get update -q; fi
need=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libasound2-dev:arm64 libclang1 pkg-config file)
missing=(); for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
export PATH="$HOME/.cargo/bin:$PATH"
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
# cpal → alsa-sys finds the arm64 libasound through pkg-config; v4l's bindgen parses the
# kernel headers of the cross sysroot; cc builds SQLite and zstd with the cross gcc.
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu -I/usr/aarch64-linux-gnu/include"
tdir=${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu
case $mode in
  test) exec cargo test --locked --target aarch64-unknown-linux-gnu --lib "$@";;
  debug) cargo build --locked --target aarch64-unknown-linux-gnu "$@"; bin=$tdir/debug/gemba;;
  release) cargo build --release --locked --target aarch64-unknown-linux-gnu "$@"; bin=$tdir/release/gemba;;
esac
file -L "$bin" | grep -q "ARM aarch64" || { echo "$bin is not an aarch64 binary" >&2; exit 1; }
newest=$(readelf --version-info --wide "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -u -V | tail -1)
if [ "$(printf '%s\nGLIBC_2.35\n' "$newest" | sort -V | tail -1)" != GLIBC_2.35 ]; then
  echo "$bin needs $newest: newer than JetPack 6's glibc 2.35" >&2; exit 1
fi
ls -l "$bin"
echo "glibc: needs at most $newest (JetPack 6 has 2.35)"
