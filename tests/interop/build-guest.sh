#!/usr/bin/env bash
# Builds (once) and caches the Debian test guest that tests/interop/run.sh
# boots: a stock Debian bookworm kernel with its rdma_rxe module (and the
# stock vmw_pvrdma driver built from the same kernel's source), and an
# initramfs holding a minimal bookworm root file system with rdma-core,
# ibverbs-utils, perftest and rdmacm-utils, whose /init is guest-init.sh.
#
# Cache: $VUR_GUEST_CACHE (default /var/tmp/vhost-user-rdma/guest).
#   rootfs/            debootstrap output (reused while it has .complete)
#   kernel-$KV/        the extracted linux-image-$KV package
#   pvrdma-$KV/        vmw_pvrdma.ko built from Debian's linux-source
#   $KV/vmlinuz, $KV/initramfs.cpio.gz   what QEMU boots
# Debian builds its kernels without CONFIG_INFINIBAND_VMWARE_PVRDMA, so the
# stock, unchanged vmw_pvrdma driver is compiled here out of tree from the
# linux-source package of the guest kernel's own version, against that
# kernel's headers (both installed on this host by apt).
# The initramfs is rebuilt when guest-init.sh changes. Remove the cache
# directory to start over. Installs its Debian packages itself; needs root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${VUR_GUEST_CACHE:-/var/tmp/vhost-user-rdma/guest}
SUITE=bookworm
MIRROR=${VUR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PKGS=rdma-core,ibverbs-providers,ibverbs-utils,perftest,rdmacm-utils,iproute2,kmod,iputils-ping,procps,iperf3
# Modules the guest loads, with their dependencies taken from the package.
MODS="rdma_rxe virtio_net virtio_pci vmxnet3 ib_uverbs rdma_ucm ib_umad crc32_generic sch_netem sch_ingress ifb act_mirred cls_matchall"

log() { printf 'build-guest: %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "build-guest: needs root (debootstrap, module tree)" >&2; exit 1; }

need=()
for p in qemu-system-x86 debootstrap cpio kmod gzip tcpdump iproute2; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$CACHE"
# The newest bookworm 6.1 kernel ABI that linux-image-amd64 points at.
KV=${VUR_GUEST_KERNEL:-$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}')}
[ -n "$KV" ] || { apt-get update -qq; KV=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}'); }
[ -n "$KV" ] || { echo "build-guest: cannot find the bookworm kernel package" >&2; exit 1; }
OUT=$CACHE/$KV
stamp=$(sha256sum "$HERE/guest-init.sh" "$0" | sha256sum | cut -c1-16)
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$stamp" ] && [ -f "$OUT/initramfs.cpio.gz" ]; then
  log "cached: $OUT (kernel $KV)"
  exit 0
fi

ROOT=$CACHE/rootfs
if [ ! -f "$ROOT/.complete" ]; then
  rm -rf "$ROOT"
  log "debootstrap $SUITE into $ROOT (about 30 s to a few minutes)"
  debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; echo "build-guest: debootstrap failed (log: $CACHE/debootstrap.log)" >&2; exit 1; }
  touch "$ROOT/.complete"
fi

KX=$CACHE/kernel-$KV
if [ ! -f "$KX/.complete" ]; then
  rm -rf "$KX"; mkdir -p "$KX"
  log "downloading linux-image-$KV"
  (cd "$CACHE" && apt-get download -qq "linux-image-$KV" >/dev/null)
  dpkg -x "$CACHE"/linux-image-"${KV}"_*.deb "$KX"
  rm -f "$CACHE"/linux-image-"${KV}"_*.deb
  depmod -b "$KX" "$KV"
  touch "$KX/.complete"
fi

# The stock vmw_pvrdma driver, unchanged, from the guest kernel's source.
PV=$CACHE/pvrdma-$KV
if [ ! -f "$PV/vmw_pvrdma.ko" ]; then
  KVER=$(apt-cache show "linux-image-$KV" | awk '/^Version:/{print $2; exit}')
  [ -n "$KVER" ] || { echo "build-guest: no package version for linux-image-$KV" >&2; exit 1; }
  if ! dpkg -s "linux-headers-$KV" >/dev/null 2>&1 || ! dpkg -s linux-source-6.1 >/dev/null 2>&1 ||
     [ "$(dpkg-query -W -f='${Version}' linux-source-6.1)" != "$KVER" ]; then
    log "installing linux-headers-$KV and linux-source-6.1 $KVER (to build vmw_pvrdma)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "linux-headers-$KV=$KVER" "linux-source-6.1=$KVER" make >/dev/null
  fi
  rm -rf "$PV"; mkdir -p "$PV/src"
  tar -xJf /usr/src/linux-source-6.1.tar.xz -C "$PV/src" --strip-components=5 \
    linux-source-6.1/drivers/infiniband/hw/vmw_pvrdma
  log "building vmw_pvrdma.ko (stock source of $KVER) against linux-headers-$KV"
  make -C "/usr/src/linux-headers-$KV" M="$PV/src" CONFIG_INFINIBAND_VMWARE_PVRDMA=m modules \
    >"$PV/build.log" 2>&1 || { tail -20 "$PV/build.log" >&2; echo "build-guest: vmw_pvrdma build failed" >&2; exit 1; }
  cp "$PV/src/vmw_pvrdma.ko" "$PV/vmw_pvrdma.ko"
fi

log "assembling the initramfs for $KV"
rm -rf "$OUT"; mkdir -p "$OUT"
R=$OUT/root
cp -a "$ROOT" "$R"
rm -rf "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/usr/share/locale/* \
  "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/usr/share/zoneinfo "$R"/usr/share/i18n
for m in $MODS; do
  modprobe -d "$KX" -S "$KV" --show-depends "$m"
done | awk '$1=="insmod"{print $2}' | sort -u | while read -r f; do
  rel=${f#"$KX"/}
  mkdir -p "$R/$(dirname "$rel")"
  cp "$f" "$R/$rel"
done
cp "$KX/lib/modules/$KV/modules.order" "$KX/lib/modules/$KV"/modules.builtin* "$R/lib/modules/$KV/"
mkdir -p "$R/lib/modules/$KV/updates"
cp "$PV/vmw_pvrdma.ko" "$R/lib/modules/$KV/updates/"
depmod -b "$R" "$KV"
install -m755 "$HERE/guest-init.sh" "$R/init"
(cd "$R" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$OUT/initramfs.cpio.gz"
cp "$KX/boot/vmlinuz-$KV" "$OUT/vmlinuz"
rm -rf "$R"
echo "$stamp" >"$OUT/stamp"
echo "$KV" >"$CACHE/kernel-version"
log "ready: $OUT ($(du -sh "$OUT" | cut -f1))"
