#!/usr/bin/env bash
# Installs what building and testing vhost-user-rdma needs on a fresh
# Debian machine: Debian packages (compiler for libFuzzer, python3 for the
# fuzz seed extraction, iproute2 for the namespace and TAP tests) and the
# Rust components rustfmt and clippy.
# Idempotent: installs only what is missing.
set -euo pipefail

need_apt=()
for pkg in build-essential python3 ca-certificates iproute2; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not installed. Install a Rust toolchain >= 1.89 (rustup) and rerun." >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  for comp in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$comp" || rustup component add "$comp"
  done
fi
echo "setup: ok ($(cargo --version))"
