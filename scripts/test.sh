#!/usr/bin/env bash
# Every test: install, build with AddressSanitizer and UBSan, run the unit
# and integration tests (ctest), then each libFuzzer target for a short while.
# Warnings are errors here (FACTEUR_WERROR), as in CI; the tests are switched
# on explicitly, as scripts/run.sh may have left them off in the same build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${FACTEUR_TEST_BUILD:-build}
cmake -S . -B "$build" -DFACTEUR_SANITIZE=ON -DFACTEUR_TESTS=ON -DFACTEUR_WERROR=ON \
	-DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$build" -j"$(nproc)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Fuzz smoke run: every parser's target, FUZZ_SECONDS each (0 skips).
fuzz_seconds=${FUZZ_SECONDS:-8}
if [ "$fuzz_seconds" -gt 0 ]; then
	CC=clang cmake -S . -B "$build-fuzz" -DFACTEUR_FUZZ=ON -DFACTEUR_TESTS=OFF \
		-DFACTEUR_WERROR=ON >/dev/null
	cmake --build "$build-fuzz" -j"$(nproc)"
	fuzz_new=$(mktemp -d)
	for target in "$build-fuzz"/fuzz/fuzz_*; do
		name=$(basename "$target")
		# Inputs that once crashed a target stay fixed.
		if [ -d "tests/fuzz/regressions/$name" ]; then
			"$target" -print_final_stats=0 "tests/fuzz/regressions/$name"/* 2>&1 | tail -n 1
		fi
		# From the kept corpus; what this run finds goes to a temporary
		# folder, so a test run never changes the tree.
		echo "fuzz: $name for ${fuzz_seconds}s"
		mkdir -p "$fuzz_new/$name"
		corpus=("$fuzz_new/$name")
		[ -d "tests/fuzz/corpus/$name" ] && corpus+=("tests/fuzz/corpus/$name")
		"$target" -max_total_time="$fuzz_seconds" -print_final_stats=0 \
			"${corpus[@]}" 2>&1 | tail -n 2
	done
	rm -rf "$fuzz_new"
fi

ctest --test-dir "$build" --output-on-failure -j2
