#!/usr/bin/env bash
# Installs gemba on a board (run as root on the Jetson, or with --root DIR to stage an image):
# the binary, the systemd units, sysusers/tmpfiles, the board profiles, a config, and the path of
# the ONNX Runtime library.
#
#   scripts/install-board.sh --binary target/aarch64-unknown-linux-gnu/release/gemba \
#       --onnxruntime /usr/lib/aarch64-linux-gnu/libonnxruntime.so [--config my.toml] [--root DIR]
#
# ONNX Runtime for JetPack 6: a TensorRT-enabled build of libonnxruntime (jetson-containers, or
# ./build.sh --use_tensorrt --build_shared_lib; see shared notes). It is linked to
# /usr/lib/gemba/libonnxruntime.so, where gemba looks first after the config.
# Safe to run again: files are replaced, the config is kept unless --config is given.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="" ort="" config="" root=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) bin=$2; shift 2;;
    --onnxruntime) ort=$2; shift 2;;
    --config) config=$2; shift 2;;
    --root) root=$2; shift 2;;
    -h|--help) sed -n 2,14p "$0"; exit 0;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
[ -n "$bin" ] || bin=target/release/gemba
[ -x "$bin" ] || { echo "no gemba binary at $bin: build it (cargo build --release, or scripts/cross-build-aarch64.sh)" >&2; exit 1; }
say() { printf '[install] %s\n' "$*"; }
install -D -m 0755 "$bin" "$root/usr/local/bin/gemba"; say "binary → /usr/local/bin/gemba"
for u in systemd/*.service systemd/*.path; do
  [ -e "$u" ] || continue
  install -D -m 0644 "$u" "$root/etc/systemd/system/$(basename "$u")"; say "unit $(basename "$u")"
done
install -D -m 0644 systemd/gemba.sysusers "$root/usr/lib/sysusers.d/gemba.conf"
install -D -m 0644 systemd/gemba.tmpfiles "$root/usr/lib/tmpfiles.d/gemba.conf"
for b in board/*.toml; do install -D -m 0644 "$b" "$root/usr/share/gemba/board/$(basename "$b")"; done
say "board profiles → /usr/share/gemba/board"
if [ -n "$config" ]; then
  install -D -m 0644 "$config" "$root/etc/gemba/gemba.toml"; say "config → /etc/gemba/gemba.toml"
elif [ ! -e "$root/etc/gemba/gemba.toml" ]; then
  install -D -m 0644 systemd/gemba.toml.example "$root/etc/gemba/gemba.toml"; say "example config → /etc/gemba/gemba.toml (edit the cameras)"
fi
if [ -n "$ort" ]; then
  mkdir -p "$root/usr/lib/gemba"
  ln -sfn "$ort" "$root/usr/lib/gemba/libonnxruntime.so"; say "ONNX Runtime: /usr/lib/gemba/libonnxruntime.so → $ort"
fi
if [ -z "$root" ]; then
  systemd-sysusers gemba.conf 2>/dev/null || systemd-sysusers
  systemd-tmpfiles --create /usr/lib/tmpfiles.d/gemba.conf
  systemctl daemon-reload
  "$root/usr/local/bin/gemba" config check /etc/gemba/gemba.toml >/dev/null && say "config OK"
  say "start it: systemctl enable --now gemba.service; follow it: journalctl -fu gemba"
fi
