#!/usr/bin/env bash
# Bounded cargo-fuzz run over every target in fuzz/, for CI and by hand.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 20)
#
# Installs cargo-fuzz if it is missing, builds fresh seed corpora in
# fuzz/corpus/<target>/ from tests/data/*.pcap (whole captures for
# `decode`, single frames for `frame`, transport packets for `packet`,
# length-prefixed packet streams for `engine`; `neigh`, `daemon`, `pvrdma` and `oob` start
# empty),
# then runs each target for SECONDS_PER_TARGET seconds, one at a time,
# starting from those seeds plus fuzz/regressions/<target>/ (inputs that
# once crashed it, kept in git).
# Exits non-zero if any target crashes; the crashing input is left in
# fuzz/artifacts/<target>/.
#
# Toolchain: works with stable alone. cargo-fuzz's default AddressSanitizer
# needs `-Zsanitizer`, a nightly-only flag (and cargo-fuzz 0.13 drops
# RUSTC_BOOTSTRAP from the build's environment, so that does not help), so
# the targets are built with `--sanitizer none`: libFuzzer's coverage
# instrumentation uses only stable -C flags. Panics, and overflow checks
# from --debug-assertions, are still crashes; the crates fuzzed have no
# `unsafe`, so ASan would add little. Only if the stable build fails and a
# nightly toolchain is installed does the script fall back to
# `cargo +nightly fuzz` (with ASan). FUZZ_TOOLCHAIN=nightly forces that.
set -euo pipefail

SECONDS_PER_TARGET="${1:-20}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

run() {
    echo "+ $*" >&2
    "$@"
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    run cargo install cargo-fuzz --locked
fi
echo "cargo-fuzz: $(cargo fuzz --version)"

TARGETS=(frame decode packet engine neigh cm daemon pvrdma oob)

# --- seed corpora -----------------------------------------------------------
echo "+ generating seed corpora in fuzz/corpus/ from tests/data/*.pcap" >&2
python3 - "$ROOT/tests/data" "$ROOT/fuzz/corpus" <<'PY'
"""Extracts seeds from pcap and pcapng captures.

decode/ gets each capture whole. frame/ gets each frame's bytes (Ethernet
frames as they are; raw-IP frames too, since the target tries both
parsers). packet/ gets the UDP payload of each UDP frame (the transport
packet, BTH through ICRC). Seeds are named by their content hash, so
re-running is idempotent.
"""
import glob, hashlib, os, struct, sys

data_dir, corpus = sys.argv[1], sys.argv[2]
LINK_ETHERNET, LINK_RAW = 1, {101, 228, 229}


PCAP_LE = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")  # usec, nsec
PCAP_BE = (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
PCAP_MAGICS = PCAP_LE + PCAP_BE
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def pcap_frames(b):
    e = "<" if b[:4] in PCAP_LE else ">"
    if len(b) < 24:
        return
    link = struct.unpack(e + "I", b[20:24])[0] & 0x0FFFFFFF
    off = 24
    while off + 16 <= len(b):
        incl = struct.unpack(e + "I", b[off + 8:off + 12])[0]
        off += 16
        if off + incl > len(b):
            break
        yield link, b[off:off + incl]
        off += incl


def pcapng_frames(b):
    e, links, off = "<", [], 0
    while off + 12 <= len(b):
        if b[off:off + 4] == PCAPNG_MAGIC:  # section header
            e = "<" if b[off + 8:off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            links = []
        btype, blen = struct.unpack(e + "II", b[off:off + 8])
        if blen < 12 or off + blen > len(b):
            break
        body = b[off + 8:off + blen - 4]
        if btype == 1:  # interface description
            links.append(struct.unpack(e + "H", body[:2])[0])
        elif btype == 6 and len(body) >= 20:  # enhanced packet
            iface, _, _, cap = struct.unpack(e + "IIII", body[:16])
            if iface < len(links):
                yield links[iface], body[20:20 + cap]
        elif btype == 3 and len(body) >= 4 and links:  # simple packet
            orig = struct.unpack(e + "I", body[:4])[0]
            yield links[0], body[4:4 + orig]
        off += blen


def udp_payload(link, f):
    """The UDP payload of an Ethernet or raw-IP frame, or None."""
    if link == LINK_ETHERNET:
        if len(f) < 14:
            return None
        et, off = struct.unpack(">H", f[12:14])[0], 14
        if et in (0x8100, 0x88A8) and len(f) >= 18:
            et, off = struct.unpack(">H", f[16:18])[0], 18
        if et not in (0x0800, 0x86DD):
            return None
    elif link in LINK_RAW:
        off = 0
    else:
        return None
    if len(f) < off + 1:
        return None
    v = f[off] >> 4
    if v == 4:
        ihl = (f[off] & 0x0F) * 4
        if len(f) < off + ihl or f[off + 9] != 17:
            return None
        off += ihl
    elif v == 6:
        if len(f) < off + 40 or f[off + 6] != 17:
            return None
        off += 40
    else:
        return None
    if len(f) < off + 8:
        return None
    ulen = struct.unpack(">H", f[off + 4:off + 6])[0]
    if ulen < 8 or off + ulen > len(f):
        return None
    return f[off + 8:off + ulen]


def put(target, blob):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(blob).hexdigest()
    with open(os.path.join(d, name), "wb") as fh:
        fh.write(blob)


counts = {"decode": 0, "frame": 0, "packet": 0, "engine": 0, "cm": 0}
stream = b""
for path in sorted(glob.glob(os.path.join(data_dir, "*.pcap")) +
                   glob.glob(os.path.join(data_dir, "*.pcapng"))):
    with open(path, "rb") as fh:
        b = fh.read()
    put("decode", b)
    counts["decode"] += 1
    if b[:4] in PCAP_MAGICS:
        frames = pcap_frames(b)
    elif b[:4] == PCAPNG_MAGIC:
        frames = pcapng_frames(b)
    else:
        print(f"  {os.path.basename(path)}: not pcap/pcapng, whole file only", file=sys.stderr)
        continue
    for link, f in frames:
        put("frame", f)
        counts["frame"] += 1
        p = udp_payload(link, f)
        if p is not None:
            put("packet", p)
            # cm: the MAD of a UD SEND Only (opcode 0x64) to QP1, after
            # the 12-byte BTH and 8-byte DETH.
            if len(p) >= 20 + 256 and p[0] == 0x64 and p[5:8] == b"\x00\x00\x01":
                put("cm", p[20:20 + 256])
                counts["cm"] += 1
            counts["packet"] += 1
            # engine: chunks of (u16 LE length, QP selector, packet).
            chunk = struct.pack("<H", len(p)) + bytes([counts["engine"] % 3]) + p
            put("engine", chunk)
            counts["engine"] += 1
            if len(stream) < 16384:
                stream += chunk
if stream:
    put("engine", stream)
for t in counts:
    os.makedirs(os.path.join(corpus, t), exist_ok=True)
    n = len(os.listdir(os.path.join(corpus, t)))
    print(f"  {t}: {counts[t]} seeds extracted, {n} files in fuzz/corpus/{t}", file=sys.stderr)
PY

# --- choose how to build ----------------------------------------------------
# Flags shared by every build: release with debug assertions (overflow
# checks), so arithmetic bugs become crashes.
BUILD_FLAGS=(--release --debug-assertions)
FUZZ=()
build_with() {
    # $@: the cargo-fuzz command prefix to try. Builds every target.
    local start=$SECONDS
    if run "$@" build "${BUILD_FLAGS[@]}" "${EXTRA_FLAGS[@]}"; then
        echo "build ok in $((SECONDS - start)) s with: $*  ${EXTRA_FLAGS[*]}" >&2
        return 0
    fi
    echo "build failed with: $*  ${EXTRA_FLAGS[*]}" >&2
    return 1
}

cd fuzz
if [ "${FUZZ_TOOLCHAIN:-}" != nightly ]; then
    EXTRA_FLAGS=(--sanitizer none)
    build_with cargo fuzz && FUZZ=(cargo fuzz)
fi
if [ ${#FUZZ[@]} -eq 0 ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "trying the installed nightly toolchain (ASan)" >&2
    EXTRA_FLAGS=()
    build_with cargo +nightly fuzz && FUZZ=(cargo +nightly fuzz)
fi
if [ ${#FUZZ[@]} -eq 0 ]; then
    echo "error: could not build the fuzz targets with stable or nightly" >&2
    exit 1
fi

# --- run --------------------------------------------------------------------
failed=()
for t in "${TARGETS[@]}"; do
    log="target/fuzz-$t.log"
    # Targets without seeds (neigh, daemon, pvrdma, oob) start from an empty corpus, which
    # libFuzzer still wants to exist.
    mkdir -p target "corpus/$t"
    echo "=== $t: ${SECONDS_PER_TARGET}s ===" >&2
    set +e
    # Inputs that once crashed a target (fuzz/regressions/<target>/, in git)
    # are read as a second corpus, so every run replays them first.
    dirs=("corpus/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    run "${FUZZ[@]}" run "${BUILD_FLAGS[@]}" "${EXTRA_FLAGS[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    # Show the tail of the run: the last status line, final stats, any crash.
    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)|panicked|^==[0-9]+== ?ERROR|SUMMARY|Test unit written|^Failing input|^Output of|Base64:' "$log" | tail -n 30 || true
    if [ $rc -ne 0 ]; then
        echo "!!! $t: exit code $rc; full log in fuzz/$log" >&2
        grep -A3 'panicked at' "$log" | head -n 8 >&2 || true
        # The crashing input, as hex, so that it survives a CI log.
        sed -n 's/.*Test unit written to //p' "$log" | while read -r f; do
            [ -f "$f" ] && python3 -c 'import sys; print(sys.argv[1] + ":", open(sys.argv[1], "rb").read().hex())' "$f" >&2
        done
        failed+=("$t")
    else
        echo "--- $t: no crash" >&2
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "FAILED targets: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "all ${#TARGETS[@]} fuzz targets ran ${SECONDS_PER_TARGET}s each without a crash"
