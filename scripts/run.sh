#!/usr/bin/env bash
# The main job on a fresh machine: install what is needed, build the
# release binary, then boot a stock Debian guest (built and cached on
# first use) with RDMA from the daemon: QEMU 11.1's vmxnet3 on the
# daemon's stream port and the daemon's PVRDMA function beside it over
# vfio-user, the daemon in its embedded default plus --pvrdma (its own
# TAP, MAC and sockets; it prints the QEMU options, which QEMU is started
# with). The guest's unchanged vmw_pvrdma driver and Debian's rdma-core
# run ibv_rc_pingpong, ib_write_bw and ib_send_lat on vmw_pvrdma0
# against `vhost-user-rdma peer` on the host side. Prints PASS or FAIL.
# Everything runs in a network namespace that is removed at the end.
# Needs root. See qemu-configs/pvrdma-guest.sh (--shell for a guest
# shell instead); qemu-configs/vhost-user-guest.sh shows the virtio-net
# face with kernel rxe.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p backend
exec qemu-configs/pvrdma-guest.sh "$@"
