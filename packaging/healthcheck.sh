#!/bin/bash
# Container health check. With a metrics listener (FACTEUR_METRICS_LISTEN,
# set in the image), ask it GET /readyz: 200 once the spool is recovered
# and the mail ports listen, 503 while starting or draining. Nothing is
# logged and no SMTP session is counted. Without one, fall back to the
# first SMTP listener of FACTEUR_LISTEN and expect facteur's 220 banner.
# Exit 0 when healthy. Bash only (/dev/tcp): no client in the image.
set -u

# "ADDR:PORT" -> "host port", a wildcard address through the loopback of
# its family.
target_of() {
	local entry=$1 host port
	port=${entry##*:}
	host=${entry%:*}
	host=${host#[}
	host=${host%]}
	case $host in
	'' | '*' | 0.0.0.0 | localhost) host=127.0.0.1 ;;
	::) host=::1 ;;
	esac
	printf '%s %s\n' "$host" "$port"
}

readyz() {
	local host port status
	read -r host port <<<"$(target_of "$1")"
	if ! exec 3<>"/dev/tcp/$host/$port"; then
		echo "cannot connect to the metrics listener $host port $port" >&2
		exit 1
	fi
	printf 'GET /readyz HTTP/1.0\r\nHost: %s\r\n\r\n' "$host" >&3
	if ! IFS= read -r -t 10 status <&3; then
		echo "no answer from the metrics listener $host port $port" >&2
		exit 1
	fi
	local body= line
	while IFS= read -r -t 10 line <&3; do
		body=$line
	done
	exec 3>&-
	case $status in
	'HTTP/1.'?' 200 '*) exit 0 ;;
	*)
		echo "not ready: ${status%$'\r'} ${body}" >&2
		exit 1
		;;
	esac
}

metrics=${FACTEUR_METRICS_LISTEN-}
metrics=${metrics//[[:space:]]/}
[ -z "$metrics" ] || readyz "$metrics"

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

read -r host port <<<"$(target_of "$target")"
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
