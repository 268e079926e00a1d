#!/usr/bin/env bash
# A fuzzing campaign: every libFuzzer target (or those named) for SECONDS
# of wall time each, JOBS at once, at the lowest CPU priority. Each target
# starts from its kept corpus (tests/fuzz/corpus/TARGET); what it finds is
# merged back, minimised, and the CPU time it really got is appended to
# tests/fuzz/campaign.log. Crashes are kept under $FUZZ_WORK/TARGET/.
#
#   tests/fuzz/campaign.sh BUILD_DIR SECONDS [JOBS] [TARGET...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$1 seconds=$2 jobs=${3:-1}
shift $(($# < 3 ? $# : 3))
work=${FUZZ_WORK:-/var/tmp/facteur-fuzz}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=($(cd "$build/fuzz" && ls fuzz_*))

run_one() {
	local t=$1 dir="$work/$1" corpus="$here/corpus/$1" start end cpu
	mkdir -p "$dir/new" "$dir/crashes" "$corpus"
	start=$(date -u +%FT%TZ)
	# The CPU time of the fuzzer alone, whatever priority it ran at.
	/usr/bin/time -o "$dir/cpu" -f '%U %S' nice -n 19 "$build/fuzz/$t" \
		-max_total_time="$seconds" -print_final_stats=1 \
		-artifact_prefix="$dir/crashes/" "$dir/new" "$corpus" \
		>"$dir/run.log" 2>&1 || true
	cpu=$(tail -n 1 "$dir/cpu")
	end=$(date -u +%FT%TZ)
	local execs result=ok
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/run.log" | tail -n 1)
	# crash-, leak-, timeout- and oom- inputs are findings; a slow-unit
	# alone is not (a paused or starved run writes them too).
	if ls "$dir/crashes"/crash-* "$dir/crashes"/leak-* "$dir/crashes"/timeout-* \
		"$dir/crashes"/oom-* >/dev/null 2>&1; then
		result=crash
	elif ls "$dir/crashes"/slow-unit-* >/dev/null 2>&1; then
		result=slow-units
	fi
	# Keep what is new, minimised: merge into a fresh folder, replace.
	rm -rf "$dir/merged" && mkdir -p "$dir/merged"
	"$build/fuzz/$t" -merge=1 "$dir/merged" "$corpus" "$dir/new" \
		>"$dir/merge.log" 2>&1 || true
	if [ -n "$(ls -A "$dir/merged")" ]; then
		rm -rf "$corpus" && mv "$dir/merged" "$corpus"
	fi
	rm -rf "$dir/new"
	awk -v t="$t" -v s="$start" -v e="$end" -v c="$cpu" -v x="${execs:-0}" \
		-v r="$result" -v n="$(ls "$corpus" | wc -l)" \
		'BEGIN { split(c, p, " "); printf "%s %s %s cpu=%.0fs execs=%s corpus=%d %s\n", s, e, t, p[1] + p[2], x, n, r }' \
		>>"$here/campaign.log"
}

running=0
for t in "${targets[@]}"; do
	run_one "$t" &
	running=$((running + 1))
	if [ "$running" -ge "$jobs" ]; then
		wait -n
		running=$((running - 1))
	fi
done
wait
