#!/usr/bin/env bash
# Quick start: install, build, and run facteurd in the foreground on the
# embedded default configuration (127.0.0.1:2525, spool and mail in var/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target facteurd facteurctl facteur-sendmail
exec ./build/facteurd -c conf/facteur.conf
