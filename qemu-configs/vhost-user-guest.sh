#!/usr/bin/env bash
# Boots the Debian test guest (tests/interop/build-guest.sh) under QEMU TCG
# with its NIC served by our daemon over vhost-user, and shows it working:
#
#   guest virtio_net (10.77.0.1) == vhost-user ==> vhost-user-rdma daemon
#        --> TAP (daemon-made, 10.77.0.254) --> vhost-user-rdma peer (UDP)
#
# The daemon runs with its embedded default (it makes its own TAP, picks a
# MAC and a socket, prints the QEMU options); QEMU is started
# with exactly the options it printed, plus the guest's kernel and initrd.
# The guest pings 10.77.0.254, then its kernel rxe runs ibv_rc_pingpong and
# ib_write_bw through the daemon against our peer on the host side.
# Everything runs in a network namespace this script creates and removes,
# and it stops only the processes it started.
#
# Usage: qemu-configs/vhost-user-guest.sh [--shell]
#   --shell   boot the guest with a root shell on this terminal instead
#             (the daemon and peer-side address stay up until you
#             power the guest off with `poweroff -f`)
# QEMU: 11.1 from the trixie-backports chroot that qemu-chroot.sh builds
# (Debian 12's QEMU 7.2 crashes starting vhost-user virtio-net with
# MSI-X; set VUR_QEMU=qemu-system-x86_64 to use a host QEMU >= 8.0).
# Needs root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHELL_MODE=0
[ "${1:-}" = --shell ] && SHELL_MODE=1
[ "$(id -u)" -eq 0 ] || { echo "vhost-user-guest: needs root (namespace, TAP)" >&2; exit 1; }

"$ROOT/tests/interop/build-guest.sh"
if [ -z "${VUR_QEMU:-}" ]; then "$HERE/qemu-chroot.sh"; fi
QEMU=${VUR_QEMU:-$HERE/qemu11}
(cd "$ROOT" && cargo build --release --locked -q -p backend)
BIN=$ROOT/target/release/vhost-user-rdma
CACHE=${VUR_GUEST_CACHE:-/var/tmp/vhost-user-rdma/guest}
GUEST=$CACHE/$(cat "$CACHE/kernel-version")

NS=vur-demo-$$
WORK=$(mktemp -d /tmp/vur-demo.XXXXXX)
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

# The daemon, embedded default (told only which QEMU's option syntax to
# print). Its first stdout line is the QEMU options.
ip netns exec "$NS" "$BIN" --qemu "$QEMU" >"$WORK/qemu-options" 2>"$WORK/daemon.log" &
DPID=$!; PIDS+=("$DPID")
i=0; until [ -s "$WORK/qemu-options" ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
[ -s "$WORK/qemu-options" ] || { cat "$WORK/daemon.log" >&2; echo "vhost-user-guest: the daemon did not start" >&2; exit 1; }
OPTS=$(head -1 "$WORK/qemu-options")
SOCK=$(echo "$OPTS" | sed -n 's/.*path=\([^,]*\),.*/\1/p')
TAP=$(basename "$SOCK" .sock)
echo "daemon (PID $DPID): TAP $TAP, socket $SOCK"
echo "QEMU options it printed: $OPTS"
ip netns exec "$NS" ip addr add 10.77.0.254/24 dev "$TAP"

if [ "$SHELL_MODE" = 1 ]; then
  # shellcheck disable=SC2086
  ip netns exec "$NS" "$QEMU" -accel tcg -smp 1 -nographic -no-reboot \
    -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 loglevel=4 vur.ip=10.77.0.1/24 vur.peer=10.77.0.254 vur.shell=1" $OPTS
  exit 0
fi

# The guest's part: two client steps against our peer.
mkdir -p "$WORK/initrd"
cat >"$WORK/initrd/suite.sh" <<'STEPS'
step 1 client 120 ibv_rc_pingpong -d rxe0 -g 1 -n 100 -s 4096 -p 18601 10.77.0.254
step 2 client 150 ib_write_bw -d rxe0 -x 1 -n 500 -s 65536 -p 18602 10.77.0.254
STEPS
(cd "$WORK/initrd" && echo suite.sh | cpio -o -H newc --quiet | gzip -1) >"$WORK/suite.cpio.gz"
cat "$GUEST/initramfs.cpio.gz" "$WORK/suite.cpio.gz" >"$WORK/initrd.img"
# shellcheck disable=SC2086
ip netns exec "$NS" "$QEMU" -accel tcg -smp 1 -display none -monitor none -no-reboot \
  -serial file:"$WORK/guest.log" -kernel "$GUEST/vmlinuz" -initrd "$WORK/initrd.img" \
  -append "console=ttyS0 panic=-1 loglevel=4 vur.ip=10.77.0.1/24 vur.peer=10.77.0.254" $OPTS \
  >"$WORK/qemu.out" 2>&1 &
QPID=$!; PIDS+=("$QPID")

peer() { ip netns exec "$NS" timeout 200 "$BIN" peer --link udp --ip 10.77.0.254 --stall-timeout 60 "$@"; }
fail=0
peer ibv_rc_pingpong -g 0 -n 100 -s 4096 -p 18601 || fail=1
peer ib_write_bw -x 0 -n 500 -s 65536 -p 18602 || fail=1
wait "$QPID" || true
echo "--- guest"
grep -aE 'VUR-PING|VUR-STEP|usec/iter|^ *65536 ' "$WORK/guest.log" || true
kill -TERM "$DPID"; wait "$DPID" || true
echo "--- daemon"
grep -E 'QEMU|counters|SIGTERM' "$WORK/daemon.log" | sed 's/^\[[^]]*\] //'
for n in 1 2; do grep -q "VUR-STEP $n rc=0" "$WORK/guest.log" || fail=1; done
grep -q "VUR-PING .* ok" "$WORK/guest.log" || fail=1
if [ "$fail" = 0 ]; then echo "vhost-user-guest: PASS"; else echo "vhost-user-guest: FAIL"; exit 1; fi
