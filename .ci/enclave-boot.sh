#!/usr/bin/env bash
# Boots an unpacked enclave image the way a Nitro Enclave starts it, and
# checks how far it gets (DESIGN.md, "How an enclave starts"; the enclave's
# init is aws-nitro-enclaves-sdk-bootstrap's init.c):
#
# - the program and environment come from the image configuration by
#   nitro-cli's rule (.ci/nitro-argv.py: Cmd with Env, else Entrypoint alone);
# - it runs in new mount, network and PID namespaces (unshare): the network
#   namespace has only `lo`, and `lo` is down, as in an enclave;
# - like the init, it mounts a minimal /dev (null, zero, random, urandom;
#   no /dev/nsm), /proc, /sys and fresh tmpfs on /run and /tmp over the
#   image's directories (a mount point the image lacks is a failure, as it is
#   for the init), chroots, and runs the program as root with exactly the
#   image's environment.
#
# Usage: .ci/enclave-boot.sh --rootfs DIR --config CONFIG.json --expect WHAT
#   CONFIG.json  the image's Config (podman image inspect --format '{{json .Config}}')
#   WHAT         nsm-failure: the production image; it must stop at the NSM
#                  with exit code 4 and the NSM message, and get that far:
#                  the program ran from the image's command line;
#                ready: the dangerous-mock-nsm-test variant; it must come all
#                  the way up: the Unix socket owned by 65532, the process
#                  running as 65532, `lo` up, and a KMS request on
#                  127.0.0.1:8000 inside the namespace answered in the KMS
#                  error shape with DependencyTimeoutException (503), since
#                  no proxy is reachable there.
# Needs root (namespaces, mounts, chroot), util-linux (unshare, nsenter),
# iproute2 and python3.
set -euo pipefail
shopt -s inherit_errexit

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
rootfs="" config="" expect=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rootfs) rootfs="${2:?}"; shift 2 ;;
        --config) config="${2:?}"; shift 2 ;;
        --expect) expect="${2:?}"; shift 2 ;;
        *) echo "usage: $0 --rootfs DIR --config CONFIG.json --expect nsm-failure|ready" >&2; exit 2 ;;
    esac
done
[[ -d "${rootfs}" && -f "${config}" ]] || { echo "enclave-boot: --rootfs DIR and --config FILE are required" >&2; exit 2; }
case "${expect}" in nsm-failure | ready) ;; *) echo "enclave-boot: --expect nsm-failure|ready" >&2; exit 2 ;; esac
rootfs="$(cd "${rootfs}" && pwd -P)"

t0=$(date +%s)
say() { echo "enclave-boot: [$(($(date +%s) - t0))s] $*" >&2; }
fail() {
    echo "enclave-boot: FAIL (${expect}): $*" >&2
    if [[ -s "${work:-/nonexistent}/stderr" ]]; then
        echo "--- the program's stderr:" >&2
        tail -n 40 "${work}/stderr" >&2
    fi
    exit 1
}

need=()
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
if [[ ${#need[@]} -gt 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work="$(mktemp -d /var/tmp/keybroker-enclave-boot.XXXXXX)"
boot_pid=""
cleanup() {
    if [[ -n "${boot_pid}" ]] && kill -0 "${boot_pid}" 2>/dev/null; then
        kill -KILL "${boot_pid}" 2>/dev/null || true
        wait "${boot_pid}" 2>/dev/null || true
    fi
    rm -rf "${work}"
}
trap cleanup EXIT

python3 "${here}/nitro-argv.py" argv-json <"${config}" >"${work}/argv.json" \
    || fail "nitro-cli's rule gives no program for this image"
python3 "${here}/nitro-argv.py" env-json <"${config}" >"${work}/env.json"
mapfile -t argv < <(python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)))' <"${work}/argv.json")
mapfile -t envv < <(python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)))' <"${work}/env.json")
say "argv $(cat "${work}/argv.json") env $(cat "${work}/env.json")"
[[ "${argv[0]}" == /* ]] || fail "argv[0] '${argv[0]}' is not an absolute path"
[[ -x "${rootfs}${argv[0]}" ]] || fail "argv[0] ${argv[0]} is not an executable file in the image"

# The init's part, run as PID 1 of the new PID namespace. Its arguments: the
# rootfs, the number of environment entries, the entries, then argv.
cat >"${work}/init.sh" <<'EOF'
set -eu
r="$1"; n="$2"; shift 2
env=()
for _ in $(seq 1 "$n"); do env+=("$1"); shift; done
for d in dev proc sys run tmp; do
    [ -d "$r/$d" ] || { echo "init: mount point /$d is missing from the image" >&2; exit 90; }
done
# As in an enclave, lo is down when the program starts (a new network
# namespace's lo always is; this proves the test starts from there).
if ip -o link show lo | grep -q '<LOOPBACK,UP'; then
    echo "init: lo is already up in the new network namespace" >&2; exit 91
fi
mount --make-rprivate /
mount -t tmpfs -o nosuid,noexec,mode=0755 dev "$r/dev"
for node in null zero random urandom; do
    : >"$r/dev/$node"
    mount --bind "/dev/$node" "$r/dev/$node"
done
mount -t proc -o nodev,nosuid,noexec proc "$r/proc"
mount -t sysfs -o nodev,nosuid,noexec sysfs "$r/sys"
mount -t tmpfs -o nodev,nosuid,noexec,mode=0755 tmpfs "$r/run"
mount -t tmpfs -o nodev,nosuid,noexec tmpfs "$r/tmp"
# The program is the init's child, as in an enclave (not PID 1 itself).
env -i "${env[@]}" chroot "$r" "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
set +e
wait "$child"; rc=$?
# A trapped signal interrupts the first wait; wait again for the real status.
if kill -0 "$child" 2>/dev/null; then wait "$child"; rc=$?; fi
exit "$rc"
EOF

start_boot() {
    unshare --mount --net --pid --fork --kill-child \
        bash "${work}/init.sh" "${rootfs}" "${#envv[@]}" "${envv[@]}" "${argv[@]}" \
        >"${work}/stdout" 2>"${work}/stderr" </dev/null &
    boot_pid=$!
}

# The host PID of the program: unshare -> bash (PID 1 inside) -> program
# (matched by its command line: the init script has other, short-lived
# children, such as command substitutions).
program_pid() {
    local init_pid child
    init_pid="$(pgrep -P "${boot_pid}" | head -n1)" || return 1
    child="$(pgrep -P "${init_pid}" -f "${argv[0]}" | head -n1)" || return 1
    [[ -n "${child}" ]] && echo "${child}"
}

if [[ "${expect}" == nsm-failure ]]; then
    say "boot (production image: must stop at the NSM)"
    start_boot
    rc=0
    # Bounded: the program must fail at once, not hang waiting.
    for _ in $(seq 1 300); do kill -0 "${boot_pid}" 2>/dev/null || break; sleep 0.1; done
    kill -0 "${boot_pid}" 2>/dev/null && fail "still running after 30 s; it should have stopped at the NSM"
    wait "${boot_pid}" || rc=$?
    boot_pid=""
    [[ "${rc}" -ne 90 && "${rc}" -ne 91 ]] || fail "$(cat "${work}/stderr")"
    [[ "${rc}" -eq 4 ]] || fail "exit code ${rc}, expected 4 (NSM failure)"
    grep -q 'cannot open /dev/nsm' "${work}/stderr" || fail "no NSM message on stderr"
    say "OK: exit code 4: $(grep -m1 'cannot open /dev/nsm' "${work}/stderr")"
    exit 0
fi

say "boot (dangerous-mock-nsm-test variant: must come all the way up)"
start_boot
pid=""
sock="${rootfs}/run/keybroker/kms.sock"
for _ in $(seq 1 300); do
    kill -0 "${boot_pid}" 2>/dev/null || {
        rc=0; wait "${boot_pid}" || rc=$?; boot_pid=""
        fail "exited with code ${rc} before it was up$( [[ ${rc} -ne 91 ]] || echo ' (lo was up before it started)')"
    }
    if grep -q '^listening: unix://' "${work}/stdout" 2>/dev/null \
        && grep -q '^listening: http://' "${work}/stdout" 2>/dev/null; then
        pid="$(program_pid || true)"
        [[ -z "${pid}" ]] || break
    fi
    sleep 0.1
done
[[ -n "${pid}" ]] || fail "no program process found"
grep -q '^listening: unix://' "${work}/stdout" || fail "not listening after 30 s: $(cat "${work}/stdout")"
say "up: $(tr '\n' ' ' <"${work}/stdout")(host pid ${pid})"
ns() { nsenter --target "${pid}" --mount --net "$@"; }

# 1. the Unix socket, on the fresh /run, owned by the service user.
sock_stat="$(ns stat -c '%F %u:%g' "${sock}")" || fail "no socket at /run/keybroker/kms.sock"
[[ "${sock_stat}" == "socket 65532:65532" ]] || fail "socket is '${sock_stat}', expected 'socket 65532:65532'"
dir_stat="$(ns stat -c '%u:%g' "$(dirname "${sock}")")"
[[ "${dir_stat}" == "65532:65532" ]] || fail "socket directory owned by ${dir_stat}, expected 65532:65532"
say "socket: ${sock_stat} (directory ${dir_stat})"

# 2. the process runs as 65532 (real, effective, saved and fs ids), no groups.
uids="$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/${pid}/status")"
gids="$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/${pid}/status")"
groups="$(awk '/^Groups:/ {$1=""; print $0}' "/proc/${pid}/status" | xargs)"
[[ "${uids}" == "65532 65532 65532 65532" ]] || fail "Uid: ${uids}, expected 65532 everywhere"
[[ "${gids}" == "65532 65532 65532 65532" ]] || fail "Gid: ${gids}, expected 65532 everywhere"
[[ -z "${groups}" ]] || fail "supplementary groups left: ${groups}"
say "process: uid ${uids}, gid ${gids}, no supplementary groups"

# 3. lo is up (it was down when the namespace was made).
lo="$(ns ip -o link show lo)"
[[ "${lo}" == *"<LOOPBACK,UP"* ]] || fail "lo is not up: ${lo}"
say "lo: up"

# 4. a KMS request on 127.0.0.1:8000 inside the namespace.
answer="$(ns python3 - <<'EOF'
import http.client, json
c = http.client.HTTPConnection("127.0.0.1", 8000, timeout=60)
c.request("POST", "/", body=json.dumps({"KeyId": "alias/boot-test", "KeySpec": "AES_256"}),
          headers={"Content-Type": "application/x-amz-json-1.1",
                   "X-Amz-Target": "TrentService.GenerateDataKey"})
r = c.getresponse()
body = json.loads(r.read())
print(r.status, body.get("__type"), "|", body.get("message", ""))
EOF
)" || fail "the KMS request on 127.0.0.1:8000 failed"
say "KMS answer: ${answer}"
[[ "${answer}" == "503 DependencyTimeoutException |"* ]] \
    || fail "expected 503 DependencyTimeoutException, got: ${answer}"
grep -q 'not ready' "${work}/stderr" || fail "no 'not ready' log line while the proxy is unreachable"

# It stops cleanly on SIGTERM, as on `nitro-cli terminate-enclave`'s reboot.
kill -TERM "${pid}"
rc=0
for _ in $(seq 1 100); do kill -0 "${boot_pid}" 2>/dev/null || break; sleep 0.1; done
kill -0 "${boot_pid}" 2>/dev/null && fail "still running 10 s after SIGTERM"
wait "${boot_pid}" || rc=$?
boot_pid=""
[[ "${rc}" -eq 0 ]] || fail "exit code ${rc} after SIGTERM, expected 0"
say "OK: came all the way up in the namespaces, answered, stopped on SIGTERM"
