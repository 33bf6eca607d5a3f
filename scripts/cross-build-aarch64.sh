#!/usr/bin/env bash
# Cross-builds gemba for a Jetson (aarch64, glibc >= 2.34: JetPack 6) on a Debian/Ubuntu x86_64
# machine: installs the cross toolchain and arm64 ALSA headers, then builds
#   target/aarch64-unknown-linux-gnu/release/gemba
# Install it on the board with scripts/install-board.sh. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
if ! dpkg --print-foreign-architectures | grep -qx arm64; then $sudo dpkg --add-architecture arm64; $sudo apt-get update -q; fi
need=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libasound2-dev:arm64 libclang1 pkg-config)
missing=(); for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
rustup target add aarch64-unknown-linux-gnu
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu -I/usr/aarch64-linux-gnu/include"
cargo build --release --locked --target aarch64-unknown-linux-gnu "$@"
ls -l target/aarch64-unknown-linux-gnu/release/gemba
