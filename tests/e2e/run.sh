#!/usr/bin/env bash
# End to end with stock guests: two Debian guests (the interop image,
# tests/interop/build-guest.sh) on one bridge, running the stock rdma-core
# tools against each other. A guest "on our device" has QEMU's vmxnet3 at
# 05.0 on the daemon's -netdev stream port and the daemon's PVRDMA function
# at 05.1 over vfio-user; its unchanged vmw_pvrdma driver (built from
# Debian's linux-source) and rdma-core's vmw_pvrdma provider drive it. A
# guest "on kernel rxe" has a virtio-net NIC on a plain TAP and runs Linux
# rxe. All guests run QEMU 11.1 (qemu-configs/qemu11) under TCG.
#
#   guest A 10.77.0.1 -- [daemon A] -- TAP vure0 --+
#                                                  br0 10.77.0.254
#   guest B 10.77.0.2 -- [daemon B] -- TAP vure1 --+
#
# Scenarios (each boots its own pair, in a namespace this script creates):
#   mixed    A on our device, B on kernel rxe: the tool suite, each side as
#            server and as client, plus the two figures
#   device   A and B both on our device, each with its own daemon: the same
#   rxe      A and B both on kernel rxe over virtio-net on the same TAPs:
#            the two figures only (the baseline users run today)
#   faults   A on our device, B on kernel rxe: kill -9 of a process holding
#            QPs and MRs, rmmod vmw_pvrdma while a transfer runs and load it
#            again, each followed by a working pingpong and a check that no
#            verbs object is left behind (guest and daemon)
#   loss     A on our device, B on kernel rxe with netem loss 2% each way on
#            its eth0: ib_write_bw and ib_read_bw, A in both roles
#   engine   no guests: two `vhost-user-rdma peer` processes on the same
#            two TAPs run the two figures, engine to engine (what the
#            engine does without a guest driving it, measured in the same run)
#   restart  A on our device, B on kernel rxe: A's daemon is killed (-9)
#            and started again under the running guest. The NIC reconnects
#            and carries traffic again; QEMU 11.1's vfio-user client does
#            not reconnect, so the guest must be told: verbs fail at once
#            with an error (no hang, no oops)
# Default: all seven. The figures (ib_write_bw 64 KiB, ib_send_lat 64 B, A
# as client) are printed as "E2E-FIGURE" lines and in JSON at the end.
# Environment: VUR_KEEP=1 keeps the work directory (logs, captures).
# Needs root. Stops only what it started (by PID) and removes the namespace.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${VUR_GUEST_CACHE:-/var/tmp/vhost-user-rdma/guest}
SCEN=("$@")
[ ${#SCEN[@]} -gt 0 ] || SCEN=(mixed device rxe engine faults loss restart)
[ "$(id -u)" -eq 0 ] || { echo "e2e: needs root (namespaces, TAPs)" >&2; exit 1; }

"$ROOT/tests/interop/build-guest.sh"
"$ROOT/qemu-configs/qemu-chroot.sh"
QEMU=$ROOT/qemu-configs/qemu11
KV=$(cat "$CACHE/kernel-version")
GUEST=$CACHE/$KV
(cd "$ROOT" && cargo build --release --locked -q -p backend)
BIN=$ROOT/target/release/vhost-user-rdma

NS=vur-e2e-$$
WORK=$(mktemp -d /tmp/vur-e2e.XXXXXX)
PIDS=()
# Only our own children still running (a PID reaped earlier may have
# been reused by some other process).
mine() { [ "$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')" = "$$" ]; }
cleanup() {
  for p in "${PIDS[@]}"; do mine "$p" && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  if [ "${VUR_KEEP:-0}" = 1 ]; then echo "e2e: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ns() { ip netns exec "$NS" "$@"; }
FAILED=0 SKIPPED=0
pass() { echo "   PASS  $*"; }
fail() { echo "   FAIL  $*"; FAILED=$((FAILED + 1)); }
FIGS=()

IP=(10.77.0.1 10.77.0.2)
MAC=(52:54:00:77:00:01 52:54:00:77:00:02)
TAP=(vure0 vure1)

setup_net() {
  ip netns del "$NS" 2>/dev/null || true
  ip netns add "$NS"
  ns ip link set lo up
  ns ip link add br0 type bridge
  for t in "${TAP[@]}"; do
    ns ip tuntap add dev "$t" mode tap
    ns ip link set "$t" master br0 up
  done
  ns ip link set br0 up
  ns ip addr add 10.77.0.254/24 dev br0
}

# Steps: "A_ROLE|TOOL ARGS" (B takes the other role, the client names the
# server's address), or "sh|A_SHELL#B#B_SHELL" (free-form; A's rc counts).
suite_steps() {
  case "$1" in
    mixed | device)
      # The GID table follows the vmxnet3's addresses (A only).
      echo "sh|gids() { echo \$(cat /sys/class/infiniband/\$DEV/ports/1/gids/* | grep -v ^0000:0000:0000:0000:0000:0000:0000:0000); }; ip addr add 10.77.9.1/24 dev eth0; ip -6 addr add fd99::1/64 dev eth0 nodad; sleep 2; a=\$(gids); echo \"gids with: \$a\"; ip addr del 10.77.9.1/24 dev eth0; ip -6 addr del fd99::1/64 dev eth0; sleep 2; b=\$(gids); echo \"gids without: \$b\"; case \$a in *:ffff:0a4d:0901*) ;; *) exit 1;; esac; case \$a in *fd99:0000:0000:0000:0000:0000:0000:0001*) ;; *) exit 1;; esac; case \$b in *0a4d:0901*|*fd99:*) exit 1;; esac#B#true"
      # -c: both sides check every received buffer.
      for st in "ibv_rc_pingpong -g 1 -n 50 -s 4096 -c" "ibv_rc_pingpong -g 1 -n 100 -s 65536 -e -c" \
                "ibv_ud_pingpong -g 1 -n 20 -s 1000 -c" "ibv_srq_pingpong -g 1 -n 50 -s 4096 -c" \
                "ib_write_bw -x 1 -n 200 -s 65536" "ib_read_bw -x 1 -n 200 -s 65536" \
                "ib_send_bw -x 1 -n 200 -s 65536" "ib_atomic_bw -x 1 -n 200" \
                "ib_send_lat -x 1 -n 200" "ib_send_lat -x 1 -n 200 -c UD" "rping -C 3 -v -S 1000"; do
        echo "server|$st"; echo "client|$st"
      done
      figure_steps
      ;;
    rxe) figure_steps ;;
    faults)
      # kill -9 of a client holding QPs, MRs, CQs and a PD mid-run.
      echo "sh|objs before9; sleep 5; ibv_rc_pingpong -d \$DEV -g 1 -p 18700 -n 100000000 -s 4096 ${IP[1]} & p=\$!; sleep 8; objs during9; kill -9 \$p; wait \$p; sleep 1; objs after9; same_objs before9 after9 && grep -q \"ctx 1 \" /tmp/objs.during9#B#timeout 60 ibv_rc_pingpong -d \$DEV -g 1 -p 18700 -n 100000000 -s 4096; true"
      echo "server|ibv_rc_pingpong -g 1 -n 50 -s 4096"
      # rmmod: refused while a user process holds the device (the driver
      # has no disassociate, so uverbs pins the module) and the transfer
      # goes on unharmed; then, with only the kernel's own GSI QPs live,
      # accepted; the driver comes back on modprobe with the same objects.
      echo "sh|objs beforerm; sleep 5; ib_write_bw -d \$DEV -x 1 -p 18701 -D 12 -s 65536 ${IP[1]} & p=\$!; sleep 8; rmmod vmw_pvrdma; r1=\$?; wait \$p; w=\$?; timeout 60 rmmod vmw_pvrdma; r2=\$?; echo \"rmmod busy rc=\$r1 write_bw rc=\$w rmmod rc=\$r2\"; modprobe vmw_pvrdma; i=0; until grep -q ACTIVE /sys/class/infiniband/\$DEV/ports/1/state 2>/dev/null || [ \$i -ge 100 ]; do sleep 0.1; i=\$((i+1)); done; sleep 3; objs afterrm; [ \$r1 != 0 ] && [ \$w = 0 ] && [ \$r2 = 0 ] && same_objs beforerm afterrm#B#timeout 60 ib_write_bw -d \$DEV -x 1 -p 18701 -D 12 -s 65536; true"
      echo "client|ibv_rc_pingpong -g 1 -n 50 -s 4096"
      echo "server|ib_write_bw -x 1 -n 200 -s 65536"
      ;;
    restart)
      echo "client|ibv_rc_pingpong -g 1 -n 50 -s 4096"
      echo "sh|echo VUR-RESTART-NOW; sleep 25; n=0; ping -c 3 -W 2 ${IP[1]} >/dev/null && n=1; echo \"nic back=\$n\"; timeout 60 ibv_rc_pingpong -d \$DEV -g 1 -p 18702 -n 20 ${IP[1]}; r=\$?; echo \"verbs after restart rc=\$r\"; dmesg | grep vmw_pvrdma | tail -2; [ \$n = 1 ] && [ \$r != 0 ] && [ \$r != 124 ]#B#timeout 70 ibv_rc_pingpong -d \$DEV -g 1 -p 18702 -n 20; true"
      ;;
    loss)
      for st in "ib_write_bw -x 1 -n 2000 -s 65536" "ib_read_bw -x 1 -n 2000 -s 65536"; do
        echo "server|$st"; echo "client|$st"
      done
      ;;
  esac
}
figure_steps() {
  echo "client|ib_write_bw -x 1 -n 2000 -s 65536"
  echo "client|ib_send_lat -x 1 -n 1000 -s 64"
}

# One guest's /suite.sh: WHICH is 0 (A) or 1 (B).
guest_suite() { # WHICH STEP...
  local w=$1 i=0 o=$((1 - $1)); shift
  cat <<'EOF'
export DEV
cat >/tmp/objs.sh <<'OBJS'
objs() { # NAME: the verbs object counts of $DEV now, saved as /tmp/objs.NAME
  rdma resource show | grep " $DEV: " | cut -d: -f3- >/tmp/objs.$1
  echo "VUR-OBJS $1 $(cat /tmp/objs.$1)"
}
same_objs() { [ -s /tmp/objs.$1 ] && cmp -s /tmp/objs.$1 /tmp/objs.$2 && echo "VUR-OBJS-SAME $1 $2"; }
OBJS
EOF
  for st in "$@"; do
    i=$((i + 1))
    local port=$((18600 + i)) role=${st%%|*} rest=${st#*|}
    if [ "$role" = sh ]; then
      local a=${rest%%#B#*} b=${rest#*#B#}
      [ "$w" = 0 ] && echo "step $i shell 300 sh -c '. /tmp/objs.sh; $a'" || echo "step $i shell 300 sh -c '$b'"
      continue
    fi
    [ "$w" = 1 ] && { [ "$role" = server ] && role=client || role=server; }
    local tool=${rest%% *} args=${rest#* }
    if [ "$tool" = rping ]; then
      if [ "$role" = server ]; then echo "step $i server $TMO rping -s -a ${IP[$w]} -p $port $args"
      else echo "step $i client $TMO rping -c -a ${IP[$o]} -p $port -V $args"; fi
    elif [ "$role" = server ]; then
      echo "step $i server $TMO $tool -d \$DEV -p $port $args"
    else
      echo "step $i client $TMO $tool -d \$DEV -p $port $args ${IP[$o]}"
    fi
  done
}

start_daemon() { # WHICH DIR
  local w=$1 dir=$2
  ip netns exec "$NS" "$BIN" --tap "${TAP[$w]}" --stream-socket "$dir/net$w.sock" --pvrdma-socket "$dir/rdma$w.sock" \
    --mac "${MAC[$w]}" >"$dir/daemon$w.out" 2>"$dir/daemon$w.log" &
  DPID[$w]=$!; PIDS+=("${DPID[$w]}")
  local i=0
  until [ -S "$dir/rdma$w.sock" ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
  [ -S "$dir/rdma$w.sock" ] || { fail "daemon $w did not listen"; tail -5 "$dir/daemon$w.log"; }
}

boot() { # WHICH KIND(pvrdma|rxe) DIR LIFE EXTRA_APPEND
  local w=$1 kind=$2 dir=$3 life=$4 extra=$5 net
  if [ "$kind" = pvrdma ]; then
    net="-object memory-backend-memfd,id=mem0,size=1024M,share=on -numa node,memdev=mem0
      -netdev stream,id=n0,server=off,addr.type=unix,addr.path=$dir/net$w.sock,reconnect-ms=1000
      -device vmxnet3,netdev=n0,mac=${MAC[$w]},addr=5.0,multifunction=on
      -device {\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"$dir/rdma$w.sock\"},\"addr\":\"5.1\",\"x-no-posted-writes\":true}"
  else
    net="-netdev tap,id=n0,ifname=${TAP[$w]},script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=${MAC[$w]}"
  fi
  (cd "$dir/initrd$w" && find . | cpio -o -H newc --quiet | gzip -1) >"$dir/suite$w.cpio.gz"
  cat "$GUEST/initramfs.cpio.gz" "$dir/suite$w.cpio.gz" >"$dir/initrd$w.img"
  # shellcheck disable=SC2086
  ip netns exec "$NS" timeout "$life" "$QEMU" -accel tcg -m 1024 -smp 1 -display none -monitor none \
    -no-reboot -serial file:"$dir/guest$w.log" -kernel "$GUEST/vmlinuz" -initrd "$dir/initrd$w.img" \
    -append "console=ttyS0 panic=-1 loglevel=4 vur.ip=${IP[$w]}/24 vur.peer=10.77.0.254 vur.dev=$kind $extra" \
    $net >"$dir/qemu$w.out" 2>&1 &
  QPID[$w]=$!; PIDS+=("${QPID[$w]}")
}

# perftest's result row for step N in a guest log: the "#bytes" header's
# next line.
result_row() { # LOG N
  awk -v n="$2" '$0 ~ "VUR-RUN "n" " {p=1} p && h {print; exit} p && /^ #bytes/ {h=1} $0 ~ "VUR-STEP "n" " {p=0}' "$1"
}

run_scenario() { # NAME
  local name=$1 dir=$WORK/$1 kinds=(pvrdma rxe) extra=("" "")
  TMO=150
  case "$name" in
    device) kinds=(pvrdma pvrdma) ;;
    rxe) kinds=(rxe rxe) ;;
    loss) extra[1]="vur.loss=2%"; TMO=600 ;;
  esac
  mkdir -p "$dir/initrd0" "$dir/initrd1"
  mapfile -t STEPS < <(suite_steps "$name")
  setup_net
  DPID=("" "")
  for w in 0 1; do [ "${kinds[$w]}" = pvrdma ] && start_daemon "$w" "$dir"; done
  for w in 0 1; do guest_suite "$w" "${STEPS[@]}" >"$dir/initrd$w/suite.sh"; done
  ip netns exec "$NS" tcpdump -i br0 -s 0 -U -c 200000 -w "$dir/capture.pcap" 'udp port 4791' 2>"$dir/tcpdump.err" &
  local tpid=$!; PIDS+=("$tpid")
  sleep 0.5
  local t0=$SECONDS life=$(( ${#STEPS[@]} * TMO + 180 ))
  for w in 0 1; do boot "$w" "${kinds[$w]}" "$dir" "$life" "${extra[$w]}"; done
  if [ "$name" = restart ]; then
    # Under the running guest: kill -9 A's daemon, start it again.
    local n=0
    until grep -aq '^VUR-RESTART-NOW' "$dir/guest0.log" 2>/dev/null || [ $n -ge 1200 ]; do sleep 0.25; n=$((n + 1)); done
    kill -9 "${DPID[0]}"; wait "${DPID[0]}" 2>/dev/null || true
    mv "$dir/daemon0.log" "$dir/daemon0.killed.log"
    # The killed daemon's socket files stay; without them the wait below
    # would not wait for the new daemon.
    rm -f "$dir/net0.sock" "$dir/rdma0.sock" "$dir/net0-ctl.sock"
    start_daemon 0 "$dir"
    echo "   ----  killed A's daemon (-9) under the running guest, started a new one (PID ${DPID[0]})"
  fi
  for w in 0 1; do wait "${QPID[$w]}" || true; done
  local wall=$((SECONDS - t0))
  sleep 0.5; kill -INT "$tpid" 2>/dev/null || true; wait "$tpid" 2>/dev/null || true

  echo "== scenario $name: A on ${kinds[0]}, B on ${kinds[1]}${extra[1]:+ (B: ${extra[1]})}, kernel $KV, ${wall}s"
  local i=0
  for st in "${STEPS[@]}"; do
    i=$((i + 1))
    local g0 g1 role=${st%%|*}
    g0=$(sed -n "s/^VUR-STEP $i rc=\([0-9]*\).*/\1/p" "$dir/guest0.log" | tail -1)
    g1=$(sed -n "s/^VUR-STEP $i rc=\([0-9]*\).*/\1/p" "$dir/guest1.log" | tail -1)
    local desc=${st#*|}
    if [ "$role" = sh ]; then desc="A: ${desc%%#B#*}"; g1=0; fi
    local row; row=$(result_row "$dir/guest0.log" "$i" | awk '{print $1, $2, $3, $4, $5, $6}')
    local calib=""
    for w in 0 1; do
      awk -v n="$i" '$0 ~ "VUR-RUN "n" " {p=1} p {print} $0 ~ "VUR-STEP "n" " {p=0}' "$dir/guest$w.log" |
        grep -q "Can't produce a report" && calib="$calib $w"
    done
    if [ "${g0:-x}" = 0 ] && [ "${g1:-x}" = 0 ]; then
      printf '   PASS  A %-6s %-48.48s %s\n' "$role" "$desc" "$row"
    elif [ -n "$calib" ]; then
      # Stock perftest calibrates its CPU clock against gettimeofday
      # before it reports; under TCG on a busy host that can fail after
      # the traffic went through (r^2 < 0.9, "Can't produce a report"),
      # and the other side then fails its final sync. Such a step counts
      # as SKIP, with the reason, as in tests/interop/run.sh: not a pass.
      SKIPPED=$((SKIPPED + 1))
      printf '   SKIP  A %-6s %s: perftest on guest%s could not calibrate its clock under TCG ("Can'"'"'t produce a report")\n' \
        "$role" "$desc" "$calib"
    else
      fail "$(printf 'A %-6s %s  (A rc=%s, B rc=%s)' "$role" "$desc" "${g0:-none}" "${g1:-none}")"
      for w in 0 1; do
        awk -v n="$i" '$0 ~ "VUR-RUN "n" " {p=1} p {print} $0 ~ "VUR-STEP "n" " {p=0}' "$dir/guest$w.log" |
          tail -6 | sed "s/^/      guest $w: /"
      done
    fi
    case "$desc" in
      "ib_write_bw -x 1 -n 2000 -s 65536" | "ib_send_lat -x 1 -n 1000 -s 64")
        [ "$role" = client ] && [ "$name" != loss ] || continue
        local f
        if [[ $desc == ib_write_bw* ]]; then
          f=$(result_row "$dir/guest0.log" "$i" | awk '{printf "%.3f", $4 * 8 / 1000}')
          FIGS+=("{\"scenario\":\"$name\",\"figure\":\"ib_write_bw_64KiB\",\"gbit_s\":${f:-null}}")
          echo "   E2E-FIGURE $name ib_write_bw 64KiB average: ${f:-?} Gbit/s"
        else
          f=$(result_row "$dir/guest0.log" "$i" | awk '{print $5}')
          FIGS+=("{\"scenario\":\"$name\",\"figure\":\"ib_send_lat_64B_typical_us\",\"usec\":${f:-null}}")
          echo "   E2E-FIGURE $name ib_send_lat 64B typical: ${f:-?} usec"
        fi
        ;;
    esac
  done
  for w in 0 1; do
    grep -q VUR-DONE "$dir/guest$w.log" || fail "guest $w did not finish (log: $dir/guest$w.log)"
    # Kernel lines only ("[  12.345678] ..." on the console, or the
    # VUR-DMESG copies): tools print their own "WARNING:" lines.
    local kre='^(VUR-DMESG )?\[ *[0-9]+\.[0-9]+\] .*(BUG:|Oops|WARNING:|Call Trace|blocked for more than)'
    if grep -aqE "$kre" "$dir/guest$w.log"; then
      fail "guest $w kernel log has an oops/warning:"; grep -aE -A3 "$kre" "$dir/guest$w.log" | head -12 | sed 's/^/      /'
    fi
  done
  for w in 0 1; do
    [ "${kinds[$w]}" = pvrdma ] || continue
    grep -aq "VUR-LINK link vmw_pvrdma0/1 state ACTIVE .* netdev eth0" "$dir/guest$w.log" &&
      pass "guest $w: vmw_pvrdma0 ACTIVE, paired with eth0" || fail "guest $w: vmw_pvrdma0 not ACTIVE on eth0"
    # ibv_devinfo -v on stock rdma-core: sane caps.
    local di; di=$(grep -a '^VUR-DEVINFO' "$dir/guest$w.log" | sed 's/^VUR-DEVINFO//' | tr -s ' \t' ' ')
    if echo "$di" | grep -q 'vendor_id: 0x15ad' && echo "$di" | grep -q 'phys_port_cnt: 1' &&
       echo "$di" | grep -q 'state: PORT_ACTIVE' && echo "$di" | grep -q 'link_layer: Ethernet' &&
       echo "$di" | grep -Eq 'max_qp: [1-9]' && echo "$di" | grep -Eq 'max_cqe: [1-9]' &&
       echo "$di" | grep -Eq 'max_mr_size: 0x[1-9a-f]' && echo "$di" | grep -Eq 'max_qp_rd_atom: [1-9]'; then
      pass "guest $w: ibv_devinfo -v: $(echo "$di" | grep -Eo 'max_qp: [0-9]+|max_cqe: [0-9]+|max_mr_size: 0x[0-9a-f]+|max_sge: [0-9]+|max_srq: [0-9]+|active_mtu: [0-9]+' | tr '\n' ' ')"
    else
      fail "guest $w: ibv_devinfo -v is missing a sane cap"; echo "$di" | head -30 | sed 's/^/      /'
    fi
    kill -TERM "${DPID[$w]}"; local drc=0; wait "${DPID[$w]}" || drc=$?
    [ "$drc" = 0 ] && pass "daemon $w stopped cleanly; $(grep -o 'counters: .*' "$dir/daemon$w.log" | tail -1)" ||
      { fail "daemon $w exit rc=$drc"; tail -5 "$dir/daemon$w.log" | sed 's/^/      /'; }
  done
  if [ "$name" = faults ]; then
    grep -aq "VUR-OBJS-SAME before9 after9" "$dir/guest0.log" && pass "kill -9: no verbs object left in guest A (during:$(grep -a 'VUR-OBJS during9' "$dir/guest0.log" | cut -d' ' -f3-); after:$(grep -a 'VUR-OBJS after9' "$dir/guest0.log" | cut -d' ' -f3-))" ||
      { fail "kill -9 left objects behind"; grep -a VUR-OBJS "$dir/guest0.log" | sed 's/^/      /'; }
    grep -aq "VUR-OBJS-SAME beforerm afterrm" "$dir/guest0.log" && pass "rmmod refused while in use, transfer unharmed; rmmod with the GSI QPs live, then modprobe: device back with the same objects ($(grep -a '^rmmod busy' "$dir/guest0.log" | head -1))" ||
      { fail "rmmod/modprobe did not come back clean"; grep -aE 'VUR-OBJS|rmmod rc' "$dir/guest0.log" | sed 's/^/      /'; }
  fi
  if [ "$name" = mixed ]; then
    if grep -q 'PVRDMA GIDs now .*10.77.9.1' "$dir/daemon0.log" && grep -q 'PVRDMA GIDs now .*fd99::1' "$dir/daemon0.log"; then
      pass "the daemon followed A's GID table as addresses came and went: $(grep -o 'PVRDMA GIDs now .*fd99::1.*' "$dir/daemon0.log" | head -1), then back"
    else
      fail "the daemon did not see A's added addresses as GIDs"; grep 'PVRDMA GIDs' "$dir/daemon0.log" | sed 's/^/      /'
    fi
  fi
  if [ "$name" = restart ]; then
    if grep -aq '^nic back=1' "$dir/guest0.log" && grep -q 'QEMU connected to the stream port' "$dir/daemon0.log"; then
      pass "after the restart the vmxnet3 reconnected to the new daemon and pinged B"
    else
      fail "the NIC did not come back after the daemon restart"
    fi
    local why; why=$(grep -a -A1 '^nic back' "$dir/guest0.log" | tail -1)
    if grep -aq '^verbs after restart rc=[1-9]' "$dir/guest0.log" && ! grep -aq '^verbs after restart rc=124' "$dir/guest0.log"; then
      pass "the guest is told: verbs on the orphaned PVRDMA function fail at once (\"$why\"; QEMU's vfio-user client does not reconnect)"
    else
      fail "verbs after the restart did not fail cleanly ($(grep -a '^verbs after restart' "$dir/guest0.log"))"
    fi
  fi
  local dec
  if dec=$("$BIN" decode "$dir/capture.pcap" 2>&1); then
    pass "capture: $(echo "$dec" | grep -E 'frames:' | tail -1)"
  else
    fail "capture: $(echo "$dec" | tail -3 | tr '\n' ' ')"
  fi
  ip netns del "$NS"
}

# Engine to engine over the same bridge, no guests: the figures' baseline.
run_engine() {
  local dir=$WORK/engine; mkdir -p "$dir"
  setup_net
  echo "== scenario engine: two peers (our engine, no guest) on the same TAPs"
  local t
  for t in "ib_write_bw -x 1 -n 2000 -s 65536" "ib_send_lat -x 1 -n 1000 -s 64"; do
    local tag=${t%% *}
    # Both peers share the namespace: the TCP handshake goes over its
    # loopback, the RDMA traffic over the TAPs and the bridge.
    # shellcheck disable=SC2086
    ip netns exec "$NS" timeout 120 "$BIN" peer --link tap:${TAP[1]} --ip ${IP[1]}/24 --mac ${MAC[1]} \
      $t -p 18900 >"$dir/$tag-server.log" 2>&1 &
    local sp=$!; PIDS+=("$sp")
    local crc=0 src=0
    # shellcheck disable=SC2086
    ip netns exec "$NS" timeout 120 "$BIN" peer --link tap:${TAP[0]} --ip ${IP[0]}/24 --mac ${MAC[0]} \
      --connect-timeout 30 $t -p 18900 127.0.0.1 >"$dir/$tag-client.log" 2>&1 || crc=$?
    wait "$sp" || src=$?
    local row; row=$(grep -A1 '^ *#bytes' "$dir/$tag-client.log" | tail -1 || true)
    if [ "$crc" = 0 ] && [ "$src" = 0 ] && [ -n "$row" ]; then
      echo "   PASS  client $t: $(echo "$row" | awk '{print $1, $2, $3, $4, $5, $6}')"
    else
      fail "engine $t (client rc=$crc, server rc=$src)"; tail -3 "$dir/$tag-client.log" | sed 's/^/      /'
      continue
    fi
    local f
    if [ "$tag" = ib_write_bw ]; then
      f=$(echo "$row" | awk '{printf "%.3f", $4 * 8 / 1000}')
      FIGS+=("{\"scenario\":\"engine\",\"figure\":\"ib_write_bw_64KiB\",\"gbit_s\":${f:-null}}")
      echo "   E2E-FIGURE engine ib_write_bw 64KiB average: ${f:-?} Gbit/s"
    else
      f=$(echo "$row" | awk '{print $5}')
      FIGS+=("{\"scenario\":\"engine\",\"figure\":\"ib_send_lat_64B_typical_us\",\"usec\":${f:-null}}")
      echo "   E2E-FIGURE engine ib_send_lat 64B typical: ${f:-?} usec"
    fi
  done
  ip netns del "$NS"
}

for s in "${SCEN[@]}"; do
  if [ "$s" = engine ]; then run_engine; else run_scenario "$s"; fi
done
if [ ${#FIGS[@]} -gt 0 ]; then
  echo "E2E-FIGURES [$(IFS=,; echo "${FIGS[*]}")]"
fi
if [ "$FAILED" -ne 0 ]; then
  echo "e2e: $FAILED failure(s)"; VUR_KEEP=1; exit 1
fi
if [ "$SKIPPED" -ne 0 ]; then
  echo "e2e: all passed ($SKIPPED step(s) skipped: a guest's perftest could not calibrate its clock)"
else
  echo "e2e: all passed"
fi
