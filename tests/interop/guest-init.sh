#!/bin/sh
# /init of the interop test guest (PID 1, straight from the initramfs).
# Brings up eth0 and an RDMA device on it (kernel rxe, or with
# vur.dev=pvrdma the stock vmw_pvrdma driver on the PVRDMA function beside
# the vmxnet3), prints its GID table, runs
# the steps in /suite.sh (appended to the initramfs by run.sh), prints one
# "VUR-STEP <n> rc=<rc>" line per step and powers off.
# Kernel parameters: vur.ip=ADDR/PREFIX vur.ip6=ADDR/PREFIX vur.mtu=N
#   vur.peer=ADDR (pinged before the suite) vur.shell=1 (shell, no power-off)
#   vur.loss=P% (netem loss on eth0 both ways: egress directly, ingress
#   through ifb0; the host kernel here has no netem) vur.pci=1 (list the
#   PCI functions as "VUR-PCI <addr> <vendor> <device> <class>")
#   vur.dev=rxe|pvrdma (default rxe); the suite's steps name the device $DEV
#   vur.netcheck=reset|abort: after a failed step, ping vur.peer; if the
#   NIC has stopped, "reset" rebinds virtio_net once (a device reset in
#   QEMU), brings eth0 and rxe0 back and runs the step again on port+1000
#   ("VUR-CHECK <n> reset ok"), while "abort" (and a reset that fails, or
#   a second one) prints "VUR-ABORT" and skips the remaining steps
#   vur.inject=N: before step N, drop all of eth0's egress (netem loss
#   100%), a stand-in for a stalled NIC to test vur.netcheck with
# The NIC is virtio-net or vmxnet3, whichever QEMU gives.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp

V_ip=10.77.0.1/24 V_ip6= V_mtu=1500 V_peer= V_shell=0 V_loss= V_pci=0 V_dev=rxe V_netcheck= V_inject=
for x in $(cat /proc/cmdline); do
  case "$x" in
    vur.*=*) k=${x%%=*}; k=${k#vur.}; v=${x#*=}; eval "V_$k=\$v" ;;
  esac
done
up() { cut -d' ' -f1 /proc/uptime; }
log() { echo "[guest $(up)] $*"; }

# vur.pci=1: list the PCI functions the guest sees.
if [ "$V_pci" = 1 ]; then
  for d in /sys/bus/pci/devices/*; do
    echo "VUR-PCI ${d##*/} $(cat "$d/vendor") $(cat "$d/device") $(cat "$d/class")"
  done
fi

modprobe virtio_pci
modprobe virtio_net
modprobe vmxnet3
eth_up() { # eth0's MTU and addresses (again after a NIC reset)
  i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  ip link set eth0 mtu "$V_mtu" up
  ip addr add "$V_ip" dev eth0
  [ -n "$V_ip6" ] && ip -6 addr add "$V_ip6" dev eth0 nodad
}
rxe_up() {
  rdma link add rxe0 type rxe netdev eth0
  ibv_devinfo -d rxe0 | grep -E 'state|active_mtu'
}
loss_up() {
  tc qdisc add dev eth0 root netem loss "$V_loss"
  tc qdisc add dev eth0 handle ffff: ingress
  tc filter add dev eth0 parent ffff: matchall action mirred egress redirect dev ifb0
}
ip link set lo up
eth_up
modprobe ib_uverbs
modprobe rdma_ucm
if [ "$V_dev" = pvrdma ]; then
  DEV=vmw_pvrdma0
  modprobe vmw_pvrdma
  i=0; while [ ! -e /sys/class/infiniband/$DEV ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  dmesg | grep -i pvrdma | sed 's/^/VUR-DMESG /'
  rdma link show | sed 's/^/VUR-LINK /'
  ibv_devinfo -v -d $DEV | sed 's/^/VUR-DEVINFO /'
else
  DEV=rxe0
  modprobe rdma_rxe
  rxe_up
fi
log "$DEV on eth0 $(cat /sys/class/net/eth0/address) mtu $V_mtu"
sleep 0.5
for i in 0 1 2 3 4 5 6 7; do
  g=$(cat /sys/class/infiniband/$DEV/ports/1/gids/$i 2>/dev/null)
  [ -z "$g" ] || [ "$g" = "0000:0000:0000:0000:0000:0000:0000:0000" ] && continue
  echo "GID[$i] $g $(cat /sys/class/infiniband/$DEV/ports/1/gid_attrs/types/$i 2>/dev/null)"
done
if [ -n "$V_peer" ]; then
  i=0; until ping -c1 -W1 "$V_peer" >/dev/null 2>&1 || [ $i -ge 20 ]; do i=$((i+1)); done
  if ping -c3 -i 0.2 -W1 "$V_peer" >/dev/null 2>&1; then echo "VUR-PING $V_peer ok"; else echo "VUR-PING $V_peer failed"; fi
fi
if [ -n "$V_loss" ]; then
  modprobe ifb numifbs=1
  ip link set ifb0 up
  loss_up
  tc qdisc add dev ifb0 root netem loss "$V_loss"
  log "netem loss $V_loss on eth0 egress and ingress (ifb0)"
  tc -s qdisc show dev eth0 | head -3
fi

# Does the network still carry anything? Any reply of three counts (the
# loss suite drops 2% each way).
net_ok() { ping -c 3 -i 0.5 -W 2 "$V_peer" >/dev/null 2>&1; }
# A device reset of the guest's virtio-net: rxe0 off, virtio_net unbound
# and bound again (QEMU resets the device and drops what its queues held),
# then eth0, rxe0 and netem as they were. Only for rxe on virtio-net.
nic_reset() {
  d=$(readlink -f /sys/class/net/eth0/device) || return 1
  [ "$(basename "$(readlink -f "$d/driver")")" = virtio_net ] && [ "$DEV" = rxe0 ] || return 1
  rdma link delete rxe0
  i=0; while [ -e /sys/class/infiniband/rxe0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  echo "${d##*/}" >/sys/bus/virtio/drivers/virtio_net/unbind || return 1
  echo "${d##*/}" >/sys/bus/virtio/drivers/virtio_net/bind || return 1
  eth_up && rxe_up || return 1
  [ -z "$V_loss" ] || loss_up
  i=0; until net_ok || [ $i -ge 5 ]; do i=$((i+1)); done
  net_ok
}
ABORT=0 RESETS=0
# step N server|client TIMEOUT CMD...: run one tool (see run_step); with
# vur.netcheck, a failed step is followed by a look at the network.
step() {
  if [ "$ABORT" = 1 ]; then echo "VUR-STEP $1 rc=255 wall=0 (not run: aborted)"; return; fi
  if [ "$1" = "$V_inject" ]; then
    tc qdisc replace dev eth0 root netem loss 100%
    log "VUR-INJECT $1: eth0 drops all egress"
  fi
  run_step "$@"
  [ "$rc" = 0 ] || [ -z "$V_netcheck" ] && return
  if net_ok; then echo "VUR-CHECK $1 net ok"; return; fi
  log "VUR-CHECK $1 no reply from $V_peer: the NIC has stopped"
  if [ "$V_netcheck" = reset ] && [ "$RESETS" = 0 ] && nic_reset; then
    RESETS=1
    echo "VUR-CHECK $1 reset ok"
    # Again, on port+1000 (as the host's peer does).
    n=$1 r=$2 t=$3; shift 3
    a=""; prev=""
    for x in "$@"; do
      [ "$prev" = -p ] && x=$((x + 1000))
      a="$a $x"; prev=$x
    done
    # shellcheck disable=SC2086
    run_step "$n" "$r" "$t" $a
  else
    ABORT=1
    echo "VUR-ABORT after step $1: the NIC has stopped (netcheck=$V_netcheck, resets so far $RESETS)"
  fi
}
# run_step N server|client TIMEOUT CMD...: a client retries while the
# server is not listening yet (the tools exit at once then), and only
# then: once it has reached its server (a remote address exchanged, rping
# data echoed, or perftest's report failing after the traffic), that
# server has moved on, and a retry would leave the two sides a step apart
# for the rest of the suite (seen in CI: a client whose perftest could
# not calibrate its clock under TCG retried for 32 s, and every later
# step of that run failed). A client's output is collected and then
# printed; a server's goes straight to the console.
run_step() {
  n=$1 role=$2 tmo=$3; shift 3
  log "VUR-RUN $n $role: $*"
  s=$(up); tries=0
  while :; do
    if [ "$role" = client ]; then
      timeout "$tmo" "$@" >/tmp/step.out 2>&1; rc=$?
      cat /tmp/step.out
    else
      timeout "$tmo" "$@"; rc=$?
    fi
    [ "$role" = client ] && [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $tries -lt 30 ] &&
      ! grep -qE "remote address|ping data|Can't produce a report" /tmp/step.out &&
      [ "$(echo "$(up) $s" | awk '{print ($1-$2 < 60)}')" = 1 ] || break
    tries=$((tries+1)); sleep 1
  done
  echo "VUR-STEP $n rc=$rc wall=$(echo "$(up) $s" | awk '{printf "%.2f", $1-$2}')"
}
if [ -f /suite.sh ]; then . /suite.sh; fi

if [ -n "$V_loss" ]; then
  echo "netem drops:"; tc -s qdisc show dev eth0 | grep -E 'netem|dropped'; tc -s qdisc show dev ifb0 | grep -E 'netem|dropped'
fi
echo "$DEV hw counters (non-zero):"
for c in /sys/class/infiniband/$DEV/ports/1/hw_counters/*; do
  v=$(cat "$c"); [ "$v" != 0 ] && echo "  ${c##*/}=$v"
done
log "VUR-DONE"
[ "$V_dev" = pvrdma ] && dmesg | grep -iE 'pvrdma|bug|oops|warn' | tail -20 | sed 's/^/VUR-DMESG /'
if [ "$V_shell" = 1 ]; then setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1'; fi
sync
echo o >/proc/sysrq-trigger
sleep 5
