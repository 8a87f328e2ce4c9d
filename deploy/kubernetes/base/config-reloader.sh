#!/bin/sh
# The config-reloader sidecar of the keybroker Pod (deployment.yaml): when
# the mounted proxy.toml changes, sends the proxy SIGHUP, which re-reads it
# (allowed images, allowlists, tunnel targets, limits) without dropping a
# connection; a file that does not parse is logged by the proxy and the
# running configuration kept.
#
# The kubelet updates a ConfigMap volume in place (an atomic swap of the
# directory's ..data link) some time after the ConfigMap changes: up to its
# sync period plus its cache TTL, a minute or two by default. This loop
# compares the file's SHA-256 every KEYBROKER_RELOAD_INTERVAL seconds. The
# Pod shares one process namespace (shareProcessNamespace: true) and this
# container runs as the proxy's user, so it may signal it (no capability).
#
# Settings (environment):
#   KEYBROKER_RELOAD_CONFIG     the file to watch (default /etc/keybroker/proxy.toml)
#   KEYBROKER_RELOAD_PROCESS    the process to signal, by name (default keybroker-proxy)
#   KEYBROKER_RELOAD_INTERVAL   seconds between looks (default 10)
# parent-proxy/tests/kubernetes.rs runs this script against the real proxy.
set -u

config="${KEYBROKER_RELOAD_CONFIG:-/etc/keybroker/proxy.toml}"
process="${KEYBROKER_RELOAD_PROCESS:-keybroker-proxy}"
interval="${KEYBROKER_RELOAD_INTERVAL:-10}"

checksum() {
    sha256sum "${config}" 2>/dev/null | cut -d ' ' -f 1
}

trap 'exit 0' TERM INT

last="$(checksum)"
echo "config-reloader: watching ${config} (sha256 ${last:-none}), signalling ${process}"
while true; do
    # In the background, so that SIGTERM ends the wait at once.
    sleep "${interval}" &
    wait $!
    now="$(checksum)"
    # An unreadable file (mid-update, or gone) is looked at again next time.
    if [ -z "${now}" ] || [ "${now}" = "${last}" ]; then
        continue
    fi
    pids="$(pidof "${process}" || true)"
    if [ -z "${pids}" ]; then
        echo "config-reloader: ${config} changed but ${process} is not running; trying again" >&2
        continue
    fi
    # shellcheck disable=SC2086 # one argument per pid
    if kill -HUP ${pids}; then
        echo "config-reloader: ${config} changed (sha256 ${last:-none} -> ${now}): sent SIGHUP to ${process} (pid ${pids})"
        last="${now}"
    else
        echo "config-reloader: could not signal ${process} (pid ${pids}); trying again" >&2
    fi
done
