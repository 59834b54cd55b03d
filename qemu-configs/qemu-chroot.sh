#!/usr/bin/env bash
# Builds (once) and caches a Debian trixie chroot holding QEMU from
# trixie-backports (11.1 at the time of writing), for what Debian 12's own
# QEMU 7.2 cannot do:
#   - vhost-user virtio-net with our daemon: QEMU 7.2 sends
#     SET_VRING_ENABLE without ever acking VHOST_USER_F_PROTOCOL_FEATURES,
#     which rust-vmm's vhost-user backend refuses (later QEMUs ack it);
#   - vfio-user (QEMU >= 10.1), for the PVRDMA function.
# Run QEMU from it with qemu-configs/qemu11 (same arguments as
# qemu-system-x86_64).
#
# Cache: $VUR_QEMU_CHROOT (default /var/tmp/vhost-user-rdma/qemu11). The
# chroot never has anything mounted in it outside a running qemu11 (which
# mounts in a private mount namespace), so `rm -rf` of it is safe once no
# qemu11 runs. Installs debootstrap if missing; needs root.
set -euo pipefail
ROOT=${VUR_QEMU_CHROOT:-/var/tmp/vhost-user-rdma/qemu11}
MIRROR=${VUR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { printf 'qemu-chroot: %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "qemu-chroot: needs root (debootstrap, chroot)" >&2; exit 1; }

if [ -f "$ROOT/.complete" ]; then
  log "cached: $ROOT ($(cat "$ROOT/.complete"))"
  exit 0
fi
for p in debootstrap util-linux; do
  dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null; }
done
# Refuse to delete a tree that something is mounted in.
if [ -d "$ROOT" ] && grep -q " $ROOT/" /proc/self/mounts; then
  echo "qemu-chroot: $ROOT has mounts inside it; unmount them first:" >&2
  grep " $ROOT/" /proc/self/mounts >&2; exit 1
fi
rm -rf "$ROOT"; mkdir -p "$(dirname "$ROOT")"
log "debootstrap trixie into $ROOT (about 30 s)"
debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 ||
  { tail -20 "$ROOT.debootstrap.log" >&2; echo "qemu-chroot: debootstrap failed (log: $ROOT.debootstrap.log)" >&2; exit 1; }
echo "deb $MIRROR trixie-backports main" >"$ROOT/etc/apt/sources.list.d/backports.list"
log "installing qemu-system-x86 from trixie-backports"
# apt in the chroot needs /proc and /dev: mount them in a private mount
# namespace, so they vanish with this command.
unshare --mount --propagation private sh -ec '
  mount --bind /proc "$1/proc"; mount --rbind /dev "$1/dev"; mount --bind /sys "$1/sys"
  chroot "$1" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive chroot "$1" apt-get install -y -qq -t trixie-backports \
    --no-install-recommends qemu-system-x86 qemu-system-data seabios ipxe-qemu >/dev/null
' sh "$ROOT" >"$ROOT.apt.log" 2>&1 ||
  { tail -20 "$ROOT.apt.log" >&2; echo "qemu-chroot: apt failed (log: $ROOT.apt.log)" >&2; exit 1; }
v=$(unshare --mount --propagation private sh -c 'mount --rbind /dev "$1/dev"; mount --bind /proc "$1/proc"; chroot "$1" qemu-system-x86_64 --version' sh "$ROOT" | head -1)
echo "$v" >"$ROOT/.complete"
log "ready: $ROOT ($v)"
