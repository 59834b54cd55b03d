#!/usr/bin/env bash
# Boots a Debian guest with RDMA from our daemon, the way a cloud operator
# would run it, and shows standard verbs working on stock software:
#
#   guest vmxnet3 (05.0, 10.77.0.1) == -netdev stream ==+
#   guest PVRDMA  (05.1, vmw_pvrdma0) == vfio-user ======+=> vhost-user-rdma daemon
#        --> TAP (daemon-made, 10.77.0.254) --> vhost-user-rdma peer (UDP)
#
# The guest (tests/interop/build-guest.sh) is stock Debian 12: its kernel's
# vmw_pvrdma driver is built unchanged from Debian's linux-source (Debian's
# config leaves it out), and rdma-core, ibverbs-utils, perftest and
# rdmacm-utils are Debian's packages. The daemon runs with `--pvrdma` and
# otherwise its embedded default (its own TAP, a random MAC, sockets
# named after the TAP) and prints the QEMU options, which are used as
# printed. The guest runs ibv_rc_pingpong, ib_write_bw and ib_send_lat on
# vmw_pvrdma0 against our peer on the host side of the TAP. Everything
# runs in a network namespace this script creates and removes, and it
# stops only the processes it started.
#
# Usage: qemu-configs/pvrdma-guest.sh [--shell]
#   --shell   boot the guest with a root shell on this terminal instead
#             (try `ibv_devinfo -v`, `rdma link`, `ibv_rc_pingpong -d
#             vmw_pvrdma0 -g 1`; the peer side is 10.77.0.254; leave with
#             `poweroff -f`)
# QEMU: ≥ 10.1 is needed (vfio-user-pci): the host's qemu-system-x86_64
# when it is new enough, else 11.1 from the trixie-backports chroot that
# qemu-chroot.sh builds and caches; VUR_QEMU=/path/to/qemu-system-x86_64
# picks one.
# Needs root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHELL_MODE=0
[ "${1:-}" = --shell ] && SHELL_MODE=1
[ "$(id -u)" -eq 0 ] || { echo "pvrdma-guest: needs root (namespace, TAP)" >&2; exit 1; }

"$ROOT/tests/interop/build-guest.sh"
if [ -z "${VUR_QEMU:-}" ] && command -v qemu-system-x86_64 >/dev/null; then
  read -r qmaj qmin < <(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p') || true
  if [ "${qmaj:-0}" -gt 10 ] || { [ "${qmaj:-0}" -eq 10 ] && [ "${qmin:-0}" -ge 1 ]; }; then
    VUR_QEMU=$(command -v qemu-system-x86_64)
    echo "pvrdma-guest: using the host's QEMU $qmaj.$qmin ($VUR_QEMU)"
  fi
fi
if [ -z "${VUR_QEMU:-}" ]; then "$HERE/qemu-chroot.sh"; fi
QEMU=${VUR_QEMU:-$HERE/qemu11}
(cd "$ROOT" && cargo build --release --locked -q -p backend)
BIN=$ROOT/target/release/vhost-user-rdma
CACHE=${VUR_GUEST_CACHE:-/var/tmp/vhost-user-rdma/guest}
GUEST=$CACHE/$(cat "$CACHE/kernel-version")

NS=vur-pvdemo-$$
WORK=$(mktemp -d /tmp/vur-pvdemo.XXXXXX)
PIDS=()
# Only our own children still running (a PID reaped earlier may have
# been reused by some other process).
mine() { [ "$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')" = "$$" ]; }
cleanup() {
  for p in "${PIDS[@]}"; do mine "$p" && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up

# The daemon: --pvrdma, otherwise the embedded default. Its first stdout
# line is the QEMU options.
ip netns exec "$NS" "$BIN" --pvrdma --qemu "$QEMU" >"$WORK/qemu-options" 2>"$WORK/daemon.log" &
DPID=$!; PIDS+=("$DPID")
i=0; until [ -s "$WORK/qemu-options" ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
[ -s "$WORK/qemu-options" ] || { cat "$WORK/daemon.log" >&2; echo "pvrdma-guest: the daemon did not start" >&2; exit 1; }
OPTS=$(head -1 "$WORK/qemu-options")
TAP=$(grep -o 'link [^ ,]*' "$WORK/daemon.log" | head -1 | cut -d' ' -f2)
echo "daemon (PID $DPID): TAP $TAP"
echo "QEMU options it printed: $OPTS"
ip netns exec "$NS" ip addr add 10.77.0.254/24 dev "$TAP"
# The printed options carry one JSON -device argument; keep it one word.
read -r -a QOPTS <<<"$OPTS"

if [ "$SHELL_MODE" = 1 ]; then
  ip netns exec "$NS" "$QEMU" -accel tcg -smp 1 -nographic -no-reboot \
    -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 loglevel=4 vur.ip=10.77.0.1/24 vur.peer=10.77.0.254 vur.dev=pvrdma vur.shell=1" "${QOPTS[@]}"
  exit 0
fi

# The guest's part: three client steps against our peer.
mkdir -p "$WORK/initrd"
cat >"$WORK/initrd/suite.sh" <<'STEPS'
step 1 client 120 ibv_rc_pingpong -d $DEV -g 1 -n 100 -s 4096 -p 18601 10.77.0.254
step 2 client 150 ib_write_bw -d $DEV -x 1 -n 1000 -s 65536 -p 18602 10.77.0.254
step 3 client 150 ib_send_lat -d $DEV -x 1 -n 1000 -s 64 -p 18603 10.77.0.254
STEPS
(cd "$WORK/initrd" && echo suite.sh | cpio -o -H newc --quiet | gzip -1) >"$WORK/suite.cpio.gz"
cat "$GUEST/initramfs.cpio.gz" "$WORK/suite.cpio.gz" >"$WORK/initrd.img"
# The guest's whole life is bounded: a hung guest ends the run, not hangs it.
ip netns exec "$NS" timeout 600 "$QEMU" -accel tcg -smp 1 -display none -monitor none -no-reboot \
  -serial file:"$WORK/guest.log" -kernel "$GUEST/vmlinuz" -initrd "$WORK/initrd.img" \
  -append "console=ttyS0 panic=-1 loglevel=4 vur.ip=10.77.0.1/24 vur.peer=10.77.0.254 vur.dev=pvrdma" "${QOPTS[@]}" \
  >"$WORK/qemu.out" 2>&1 &
QPID=$!; PIDS+=("$QPID")

peer() { ip netns exec "$NS" timeout 200 "$BIN" peer --link udp --ip 10.77.0.254 --stall-timeout 60 "$@"; }
fail=0
peer ibv_rc_pingpong -g 0 -n 100 -s 4096 -p 18601 >/dev/null || fail=1
peer ib_write_bw -x 0 -n 1000 -s 65536 -p 18602 >/dev/null || fail=1
peer ib_send_lat -x 0 -n 1000 -s 64 -p 18603 >/dev/null || fail=1
wait "$QPID" || true
echo "--- guest (stock vmw_pvrdma + rdma-core)"
grep -aE 'VUR-PCI|vmw_pvrdma 0000|VUR-LINK|VUR-PING|VUR-STEP|usec/iter|^ *65536 |^ *64 ' "$WORK/guest.log" | sed 's/^VUR-DMESG //' || true
grep -aE 'VUR-DEVINFO.*(hca_id|vendor_id|max_qp:|max_mr_size|state|active_mtu)' "$WORK/guest.log" | sed 's/^VUR-DEVINFO //' || true
kill -TERM "$DPID"; wait "$DPID" || true
echo "--- daemon"
grep -E 'PVRDMA|QEMU|guest memory|counters|SIGTERM' "$WORK/daemon.log" | sed 's/^\[[^]]*\] //'
for n in 1 2 3; do grep -q "VUR-STEP $n rc=0" "$WORK/guest.log" || fail=1; done
grep -q "VUR-PING .* ok" "$WORK/guest.log" || fail=1
grep -aq "VUR-LINK link vmw_pvrdma0/1 state ACTIVE" "$WORK/guest.log" || fail=1
if [ "$fail" = 0 ]; then echo "pvrdma-guest: PASS"; else echo "pvrdma-guest: FAIL"; exit 1; fi
