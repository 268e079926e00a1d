#!/usr/bin/env bash
# Quick start: install what building and running need (no test tools),
# build, and run facteurd in the foreground on the embedded default
# configuration (127.0.0.1:2525, spool and mail in var/).
#
# The build is always an optimised one without sanitizers, even where
# scripts/test.sh left a sanitizer build in the same directory: the options
# are given every time, so CMake reconfigures and recompiles what they change.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --run
build=${FACTEUR_RUN_BUILD:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFACTEUR_SANITIZE=OFF \
	-DFACTEUR_FUZZ=OFF -DFACTEUR_TESTS=OFF -DFACTEUR_WERROR=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target facteurd facteurctl facteur-sendmail
exec "$build/facteurd" -c conf/facteur.conf
