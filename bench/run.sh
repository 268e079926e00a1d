#!/usr/bin/env bash
# The whole benchmark: install what it needs (Postfix, perf), build a release
# facteurd in build-bench, run every scenario against facteur and a private
# Postfix instance, and write bench/RESULTS.md. Takes some 20-30 minutes with
# the defaults (20,000 messages, 50 sessions, 3 runs, 10,000 idle sessions).
#
# Environment (all optional):
#   BENCH_SCENARIOS   scenarios to run (default "accept maildir relay idle bigmsg lag")
#   BENCH_MESSAGES BENCH_SESSIONS BENCH_SIZE BENCH_RUNS BENCH_IDLE_SESSIONS
#   BENCH_POSTFIX_IDLE_SESSIONS BENCH_BIG_MB BENCH_PROBE_MS   see the scenario scripts
#   BENCH_POSTFIX     auto (default: when installed), 0 (facteur only), 1 (required)
#   BENCH_SKIP_INSTALL=1   do not run install.sh (no apt-get)
#   FACTEURD          a facteurd to measure instead of building build-bench
#   BENCH_OUT         JSON results (default bench/out); BENCH_RESULTS the report
#   BENCH_WORK        scratch directory for spools and mailboxes (default /tmp/facteur-bench)
#   BENCH_LOAD_MAX BENCH_LOAD_WAIT   wait for the 1-minute load to fall under MAX
#   BENCH_PROFILE=1   also record perf profiles of facteurd under (a) and (b)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
py=/usr/bin/python3
[ -x "$py" ] || py=python3

if [ "${BENCH_SKIP_INSTALL:-0}" != 1 ]; then
	"$here/install.sh"
fi

if [ -z "${FACTEURD:-}" ]; then
	cmake -S "$root" -B "$root/build-bench" -DCMAKE_BUILD_TYPE=Release \
		-DFACTEUR_TESTS=OFF >/dev/null
	cmake --build "$root/build-bench" -j2 --target facteurd >/dev/null
	export FACTEURD="$root/build-bench/facteurd"
fi

# 10,000 idle sessions need as many descriptors, in the daemon and the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

masters() { ps -eo pid=,stat=,args= | awk '$2 !~ /Z/ && $3 ~ /postfix\/sbin\/master|^master$/ {print $1}' | sort; }
before=$(masters)
if [ -n "$before" ]; then
	echo "run.sh: note: Postfix master(s) already running before the benchmark: $before" >&2
fi

work=${BENCH_WORK:-/tmp/facteur-bench}
cleanup() {
	# A scenario killed halfway may leave its private Postfix up: stop them.
	for etc in "$work"/postfix-*/etc; do
		[ -f "$etc/main.cf" ] && postfix -c "$etc" stop >/dev/null 2>&1 || true
	done
	sleep 1
	after=$(masters)
	extra=$(comm -13 <(echo "$before") <(echo "$after") | tr '\n' ' ')
	if [ -n "${extra// /}" ]; then
		echo "run.sh: Postfix master(s) left running: $extra" >&2
	fi
}
trap cleanup EXIT

out=${BENCH_OUT:-$here/out}
mkdir -p "$out"
rm -f "$out"/*.json
export BENCH_OUT=$out

for s in ${BENCH_SCENARIOS:-accept maildir relay idle bigmsg lag}; do
	echo "run.sh: scenario $s" >&2
	"$py" "$here/$s.py"
done

if [ "${BENCH_PROFILE:-0}" = 1 ]; then
	"$py" "$here/profile.py"
fi

"$py" "$here/report.py" "${BENCH_RESULTS:-$here/RESULTS.md}"
