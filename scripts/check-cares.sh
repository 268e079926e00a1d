#!/usr/bin/env bash
# Build facteur against a c-ares other than the system's, warnings as
# errors, and run the unit tests with that library. The DNS module has two
# paths (c-ares before 1.28, and 1.28 on, which deprecated the calls of the
# first): this checks the one the given c-ares takes.
#
#   scripts/check-cares.sh PREFIX   a c-ares installed there (lib/pkgconfig)
#   scripts/check-cares.sh SOURCE   a c-ares source tree, built and
#                                   installed into the temporary directory
#
# Everything happens in a temporary directory, removed at the end unless
# KEEP=1. Nothing is downloaded. JOBS sets the parallel build (default 2);
# SANITIZE=OFF builds without ASan and UBSan (default ON).
set -euo pipefail

if [ $# -ne 1 ] || [ ! -d "$1" ]; then
	echo "usage: $0 C-ARES-PREFIX | C-ARES-SOURCE-DIR" >&2
	exit 2
fi
source_dir=$(cd "$(dirname "$0")/.." && pwd)
given=$(cd "$1" && pwd)
jobs=${JOBS:-2}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-cares.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then
	echo "check-cares: keeping $tmp"
else
	trap 'rm -rf "$tmp"' EXIT
fi

if [ -f "$given/include/ares.h" ] && [ -f "$given/CMakeLists.txt" ]; then
	echo "check-cares: building c-ares from $given"
	cmake -S "$given" -B "$tmp/cares-build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DCMAKE_INSTALL_PREFIX="$tmp/cares" -DCMAKE_INSTALL_LIBDIR=lib \
		-DCARES_SHARED=ON -DCARES_STATIC=OFF -DCARES_BUILD_TESTS=OFF \
		-DCARES_BUILD_TOOLS=OFF >"$tmp/cares-build.log" 2>&1 ||
		{ tail -n 30 "$tmp/cares-build.log"; exit 1; }
	cmake --build "$tmp/cares-build" -j"$jobs" >>"$tmp/cares-build.log" 2>&1 ||
		{ tail -n 30 "$tmp/cares-build.log"; exit 1; }
	cmake --install "$tmp/cares-build" >>"$tmp/cares-build.log" 2>&1
	prefix=$tmp/cares
else
	prefix=$given
fi

pc=$(find "$prefix" -path '*/pkgconfig/libcares.pc' -print -quit)
if [ -z "$pc" ]; then
	echo "check-cares: no pkgconfig/libcares.pc under $prefix" >&2
	exit 1
fi
PKG_CONFIG_PATH=$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export PKG_CONFIG_PATH
version=$(pkg-config --modversion libcares)
libdir=$(pkg-config --variable=libdir libcares)
echo "check-cares: c-ares $version from $libdir"

build=$tmp/build
cmake -S "$source_dir" -B "$build" -DCMAKE_BUILD_TYPE=Debug \
	-DFACTEUR_SANITIZE="${SANITIZE:-ON}" -DFACTEUR_TESTS=ON \
	-DFACTEUR_WERROR=ON >"$tmp/configure.log" 2>&1 ||
	{ cat "$tmp/configure.log"; exit 1; }
# The configure step must have found this c-ares, not the system's.
found=$(sed -n 's/^CARES_VERSION:INTERNAL=//p' "$build/CMakeCache.txt")
if [ "$found" != "$version" ]; then
	echo "check-cares: cmake found c-ares $found, not $version" >&2
	exit 1
fi
cmake --build "$build" -j"$jobs"

# Run with this library, and make sure it is the one loaded.
export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
loaded=$(ldd "$build/tests/test_dns" | awk '/libcares/ { print $3 }')
case "$loaded" in
"$libdir"/*) ;;
*)
	echo "check-cares: test_dns loads $loaded, not the one in $libdir" >&2
	exit 1
	;;
esac
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$build" -L unit --output-on-failure -j"$jobs"
echo "check-cares: c-ares $version: built with -Werror, unit tests passed"
