#!/usr/bin/env bash
# The main job on a fresh machine: install what is needed, build the
# release binary, then boot the Debian test guest (built and cached on
# first use) on the daemon's virtio-net face, with the daemon in its
# embedded default (its own TAP, MAC and socket; it prints the QEMU
# options, which QEMU is started with). The guest pings the host side,
# and its kernel rxe runs ibv_rc_pingpong and ib_write_bw through the
# daemon against `vhost-user-rdma peer`. Prints PASS or FAIL.
# Everything runs in a network namespace that is removed at the end.
# Needs root. See qemu-configs/vhost-user-guest.sh (--shell for a guest
# shell instead).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p backend
exec qemu-configs/vhost-user-guest.sh "$@"
