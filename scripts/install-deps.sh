#!/usr/bin/env bash
# Install what facteur needs to build, run and test, from Debian's packages.
set -euo pipefail
packages=(
	build-essential cmake pkg-config clang
	libevent-dev libssl-dev libc-ares-dev libcmocka-dev libcrypt-dev
	python3 python3-pytest swaks dnsmasq-base curl openssl procps fetchmail
	adduser dpkg-dev
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
