#!/usr/bin/env bash
# Before/after for a change on a hot path: two facteurd builds, facteur
# alone (no Postfix), the scenarios run round by round with the builds
# alternating (A B A B ...), so that a busy neighbour weighs on both alike.
# Prints each run and the median of each scenario for A and B.
#
#   bench/ab.sh FACTEURD_A FACTEURD_B [ROUNDS]
#   BENCH_AB_SCENARIOS="accept maildir" (default) picks the scripts; the
#   other BENCH_* variables apply as in run.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
a=$1 b=$2 rounds=${3:-3}
py=/usr/bin/python3
[ -x "$py" ] || py=python3
out=${BENCH_AB_OUT:-$(mktemp -d /tmp/facteur-ab.XXXXXX)}
export BENCH_POSTFIX=0 BENCH_RUNS=1 BENCH_MAILDIR_SYNCFS=${BENCH_MAILDIR_SYNCFS:-0}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

for round in $(seq 1 "$rounds"); do
	for side in A B; do
		bin=$a
		[ "$side" = B ] && bin=$b
		for s in ${BENCH_AB_SCENARIOS:-accept maildir}; do
			dir="$out/$side/$round"
			mkdir -p "$dir"
			FACTEURD=$bin BENCH_OUT=$dir "$py" "$here/$s.py" >/dev/null
		done
	done
done

"$py" - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for f in sorted(out.glob("*/*/*.json")):
    side = f.parts[-3]
    data = json.loads(f.read_text())
    runs = data.get("runs", {})
    if isinstance(runs, list):
        runs = {"": {"facteur": [r for r in runs if r.get("server") == "facteur"]}}
    for case, servers in runs.items():
        for r in servers.get("facteur", []):
            key = (f.stem, r.get("mode", case))
            rows.setdefault(key, {}).setdefault(side, []).append(r.get("msgs_per_s"))
print("%-10s %-10s %-28s %-28s %s" % ("scenario", "mode", "A msgs/s (runs)", "B msgs/s (runs)", "B/A"))
for (scen, mode), sides in sorted(rows.items()):
    a = [x for x in sides.get("A", []) if x]
    b = [x for x in sides.get("B", []) if x]
    ma = statistics.median(a) if a else 0
    mb = statistics.median(b) if b else 0
    print("%-10s %-10s %-28s %-28s %.3f" % (scen, mode or "-",
          "%.0f %s" % (ma, [round(x) for x in a]), "%.0f %s" % (mb, [round(x) for x in b]),
          mb / ma if ma else 0))
print("results in", out)
PY
