#!/usr/bin/env bash
# A/B benchmark of two vhost-user-rdma binaries on the in-memory link
# (one core, both engines; every packet framed and ICRC-checked):
# alternating runs pinned to CPU 1, then the median, the mean of the best
# quarter and the best run of each, and B's difference from A. Used to
# measure the cost of the engine counters (A: a build from before them).
#
# Usage: scripts/ab-bench.sh A_BINARY B_BINARY [ROUNDS]
# Example:
#   git worktree add /var/tmp/old a9ec568~1
#   (cd /var/tmp/old && cargo build --release -p backend --target-dir /var/tmp/old-target)
#   scripts/ab-bench.sh /var/tmp/old-target/release/vhost-user-rdma target/release/vhost-user-rdma
set -euo pipefail
A=$1 B=$2 N=${3:-30}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq 1 "$N"); do
  for who in A B; do
    bin=$A; [ "$who" = B ] && bin=$B
    taskset -c 1 "$bin" perf --link memory --test rate,write --min-size 65536 --max-size 65536 \
      --seconds 0.3 2>/dev/null | sed "s/^/$who /"
  done
done >"$out"
python3 - "$out" <<'PY'
import json, statistics as st, sys
d = {}
for line in open(sys.argv[1]):
    who, js = line.split(' ', 1)
    j = json.loads(js)
    v = j['msgs_per_s'] if j['test'] == 'rc_send_rate' else j['gbit_per_s']
    d.setdefault((j['test'], who), []).append(v)
for t in ['rc_write_bw', 'rc_send_rate']:
    a, b = sorted(d[(t, 'A')]), sorted(d[(t, 'B')])
    q = max(1, len(a) // 4)
    ma, mb, qa, qb = st.median(a), st.median(b), st.mean(a[-q:]), st.mean(b[-q:])
    print(json.dumps({"test": t, "runs": len(a), "a_median": ma, "b_median": mb,
                      "median_diff_pct": round(100 * (mb - ma) / ma, 2),
                      "a_best_quarter": qa, "b_best_quarter": qb,
                      "best_quarter_diff_pct": round(100 * (qb - qa) / qa, 2),
                      "max_diff_pct": round(100 * (b[-1] - a[-1]) / a[-1], 2)}))
PY
