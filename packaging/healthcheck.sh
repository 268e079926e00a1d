#!/bin/bash
# Container health check: connect to the first SMTP listener of
# FACTEUR_LISTEN (smtp or submission mode: an smtps one only gets a TCP
# connect) and expect facteur's 220 banner. Exit 0 when healthy.
set -u

listen=${FACTEUR_LISTEN:-127.0.0.1:2525}
target=
tls=0
IFS=',' read -r -a entries <<<"$listen"
for entry in "${entries[@]}"; do
	entry=${entry//[[:space:]]/}
	[ -n "$entry" ] || continue
	mode=smtp
	case $entry in
	*/*) mode=${entry##*/}; entry=${entry%/*} ;;
	esac
	if [ "$mode" = smtps ]; then
		[ -n "$target" ] || { target=$entry; tls=1; }
		continue
	fi
	target=$entry
	tls=0
	break
done
[ -n "$target" ] || { echo "no SMTP listener in FACTEUR_LISTEN" >&2; exit 1; }

port=${target##*:}
host=${target%:*}
host=${host#[}
host=${host%]}
# A wildcard address is reached through the loopback of its family.
case $host in
'' | '*' | 0.0.0.0) host=127.0.0.1 ;;
::) host=::1 ;;
localhost) host=127.0.0.1 ;;
esac

if ! exec 3<>"/dev/tcp/$host/$port"; then
	echo "cannot connect to $host port $port" >&2
	exit 1
fi
if [ "$tls" = 1 ]; then
	exec 3>&-
	exit 0
fi
if ! IFS= read -r -t 10 banner <&3; then
	echo "no banner from $host port $port" >&2
	exit 1
fi
printf 'QUIT\r\n' >&3
exec 3>&-
case $banner in
220*) exit 0 ;;
*)
	echo "unexpected banner: $banner" >&2
	exit 1
	;;
esac
