#!/bin/sh
# ulvs container entrypoint: the environment and a mounted configuration -> `ulvs run`.
#
# The configuration is checked first with `ulvs check-config`; if it would not run, its message
# goes to stderr and the container exits with check-config's status (3: unreadable, 4: errors).
#
#   ULVS_CONFIG          configuration file (default /etc/ulvs/ulvs.toml): native TOML,
#                        keepalived.conf, ipvsadm rules or lvs.cf
#   ULVS_CONFIG_FORMAT   toml | keepalived | ipvsadm | lvs.cf (default: told by name and content)
#   ULVS_INTERFACES      interfaces to attach to, separated by spaces (default: every UP one)
#   ULVS_BACKEND         afpacket | tap (tap needs --device /dev/net/tun)
#   ULVS_WORKERS  ULVS_CONN_LIMIT  ULVS_RX_RING  ULVS_TX_RING  ULVS_GRO (on | keep)
#   ULVS_CONTROL_SOCKET  (default /run/ulvs/ulvs.sock)   ULVS_CONTROL_GROUP
#   ULVS_METRICS_LISTEN  HOST:PORT or off (default: [metrics] listen, else 127.0.0.1:9595;
#                        in a container 0.0.0.0:9595 lets Prometheus on a private network in)
#   ULVS_VERBOSE=1       log every next-hop change
#   ULVS_BIN             the ulvs program (default: ulvs on PATH)
#
# Arguments: none starts the director; arguments beginning with "-" are added to `ulvs run`
# (after the ones above, so they win); anything else is run instead (`... IMAGE ulvsadm -L -n`).
set -eu

ulvs=${ULVS_BIN:-ulvs}
config=${ULVS_CONFIG:-/etc/ulvs/ulvs.toml}
format=${ULVS_CONFIG_FORMAT:-}

case "${1-}" in
    "" | -*) ;;
    *) exec "$@" ;;
esac

say() {
    printf 'ulvs-entrypoint: %s\n' "$*" >&2
}

case "$format" in
    "" | toml | keepalived | ipvsadm | lvs.cf) ;;
    *) say "ULVS_CONFIG_FORMAT=$format: use toml, keepalived, ipvsadm or lvs.cf"; exit 2 ;;
esac

# 1. The configuration must run, or the container stops here with the reason.
set +e
if [ -n "$format" ]; then
    checked=$("$ulvs" check-config --format "$format" "$config" 2>&1)
else
    checked=$("$ulvs" check-config "$config" 2>&1)
fi
status=$?
set -e
if [ "$status" -ne 0 ]; then
    if [ -n "$checked" ]; then printf "%s\n" "$checked" >&2; fi
    say "$config would not run (ulvs check-config exit $status): not starting"
    exit "$status"
fi

# 2. The command line: each option is put in front of the arguments given, so those win.
if [ -n "${ULVS_METRICS_LISTEN-}" ]; then set -- --metrics-listen "$ULVS_METRICS_LISTEN" "$@"; fi
if [ -n "${ULVS_CONTROL_GROUP-}" ]; then set -- --control-group "$ULVS_CONTROL_GROUP" "$@"; fi
if [ -n "${ULVS_CONTROL_SOCKET-}" ]; then set -- --control-socket "$ULVS_CONTROL_SOCKET" "$@"; fi
if [ -n "${ULVS_GRO-}" ]; then set -- --gro "$ULVS_GRO" "$@"; fi
if [ -n "${ULVS_TX_RING-}" ]; then set -- --tx-ring "$ULVS_TX_RING" "$@"; fi
if [ -n "${ULVS_RX_RING-}" ]; then set -- --rx-ring "$ULVS_RX_RING" "$@"; fi
if [ -n "${ULVS_CONN_LIMIT-}" ]; then set -- --conn-limit "$ULVS_CONN_LIMIT" "$@"; fi
if [ -n "${ULVS_WORKERS-}" ]; then set -- --workers "$ULVS_WORKERS" "$@"; fi
if [ -n "${ULVS_BACKEND-}" ]; then set -- --backend "$ULVS_BACKEND" "$@"; fi
if [ "${ULVS_VERBOSE-}" = 1 ]; then set -- --verbose "$@"; fi
interfaces=
for name in ${ULVS_INTERFACES-}; do
    interfaces="$name $interfaces"          # reversed, so the prepending below keeps the order
done
for name in $interfaces; do
    set -- --interface "$name" "$@"
done
if [ "$format" = keepalived ]; then
    set -- --keepalived-conf "$config" "$@"
else
    set -- --config "$config" "$@"
fi

say "exec $ulvs run $*"
exec "$ulvs" run "$@"
