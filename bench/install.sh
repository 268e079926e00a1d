#!/usr/bin/env bash
# Installs what the benchmarks need from Debian: Postfix (the reference server,
# and its smtp-source/smtp-sink load tools), perf and valgrind for profiles.
# Postfix is installed with "No configuration" and is never left running as the
# system MTA: the benchmark starts its own instance with its own config directory.
#
# BENCH_NO_POSTFIX=1 installs nothing Postfix-related (the CI smoke test).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "install.sh: must run as root (apt-get)" >&2
	exit 1
fi

need=()
if [ "${BENCH_NO_POSTFIX:-0}" != 1 ] && ! [ -x /usr/sbin/smtp-source ]; then
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	need+=(postfix)
fi
command -v perf >/dev/null || need+=(linux-perf)
command -v valgrind >/dev/null || need+=(valgrind)
command -v python3 >/dev/null || need+=(python3)

if [ ${#need[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# policy-rc.d: keep the package scripts from starting a system Postfix.
	rcd=/usr/sbin/policy-rc.d
	made_rcd=0
	if [ ! -e "$rcd" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$rcd"
		chmod 755 "$rcd"
		made_rcd=1
	fi
	rc=0
	apt-get install -y -qq --no-install-recommends "${need[@]}" || rc=$?
	if [ "$made_rcd" = 1 ]; then
		rm -f "$rcd"
	fi
	[ "$rc" -eq 0 ] || exit "$rc"
fi

# Whatever the package did, no system Postfix may stay up.
if command -v postfix >/dev/null && ps -eo cmd | grep -q '^/usr/lib/postfix/sbin/[m]aster'; then
	if [ -d /etc/postfix ] && [ -f /etc/postfix/main.cf ]; then
		postfix stop 2>/dev/null || true
	fi
	service postfix stop 2>/dev/null || true
fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
	systemctl disable --now postfix 2>/dev/null || true
fi
echo "install.sh: ok"
