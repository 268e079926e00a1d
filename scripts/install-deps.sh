#!/usr/bin/env bash
# Install what facteur needs from Debian's packages.
#   scripts/install-deps.sh          build, run and test (scripts/test.sh)
#   scripts/install-deps.sh --run    build and run only (scripts/run.sh)
#   add --list to print the packages instead of installing them
set -euo pipefail

# Building and running: the compiler, CMake and the libraries facteur links.
run_packages=(
	build-essential cmake pkg-config
	libevent-dev libssl-dev libc-ares-dev libcrypt-dev libhiredis-dev zlib1g-dev
	ca-certificates
)
# Testing on top: clang for the fuzzers, cmocka for the unit tests, the
# clients and servers the integration tests drive, dpkg tools for the
# package test. swaks needs Net::SSLeay for --tls (only a Recommends).
test_packages=(
	clang libcmocka-dev
	python3 python3-pytest python3-yaml swaks libnet-ssleay-perl dnsmasq-base curl
	openssl procps
	fetchmail adduser dpkg-dev
	haproxy
	redis-server python3-dkim opendkim opendkim-tools rspamd
	clamav-daemon clamav-milter opendmarc
	dovecot-imapd dovecot-lmtpd
	unbound ldnsutils
)

only_run=0
list=0
for arg in "$@"; do
	case $arg in
	--run) only_run=1 ;;
	--list) list=1 ;;
	*)
		echo "usage: $0 [--run] [--list]" >&2
		exit 64
		;;
	esac
done

packages=("${run_packages[@]}")
[ "$only_run" -eq 1 ] || packages+=("${test_packages[@]}")
if [ "$list" -eq 1 ]; then
	printf '%s\n' "${packages[@]}"
	exit 0
fi

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
