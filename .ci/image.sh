#!/usr/bin/env bash
# CI check of the enclave image (Dockerfile.enclave, built by
# scripts/build-enclave-image.sh from a binary built here):
#
# - installs podman (and runc, binutils) from Debian's packages if missing;
# - builds the static keybroker-enclave once, then the image twice, each time
#   into a new, empty podman storage (`--storage-driver vfs`, `--timestamp 0`),
#   and requires the same image id and digest;
# - checks the image: non-root user, entrypoint and command, exactly the
#   expected files (the binary and the socket directory, nothing else);
# - checks the binary taken out of the image: statically linked, runs
#   `--version`, has no mock NSM (no `keybroker_enclave::mock_nsm`/`rcgen`
#   symbols, none of the mock CA's names, `mock-nsm pcr0` refuses);
# - runs the image with podman (`--version` through the image's entrypoint, as
#   its user).
#
# `--reproducible-binary` (manual; two more release builds, several minutes):
# also builds the binary from two copies of the source at different paths and
# requires the same SHA-256 as the main build.
#
# Storage, contexts and copies live in a new directory under /var/tmp that is
# removed at exit, so no state from an earlier run can make a check pass.
set -euo pipefail
shopt -s inherit_errexit

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
reproducible_binary=false
for arg in "$@"; do
    case "${arg}" in
        --reproducible-binary) reproducible_binary=true ;;
        *)
            echo "usage: $0 [--reproducible-binary]" >&2
            exit 2
            ;;
    esac
done

t0=$(date +%s)
say() { echo "image: [$(($(date +%s) - t0))s] $*" >&2; }
fail() {
    echo "image: FAIL: $*" >&2
    exit 1
}

# --- tools -------------------------------------------------------------------
# runc, not Debian's default crun: crun refuses to start containers when the
# cgroup v2 hierarchy has controllers while v1 is mounted (hybrid mode, as on
# the CI machines); runc handles it.
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v readelf >/dev/null 2>&1 || need+=(binutils)
if [[ ${#need[@]} -gt 0 ]]; then
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
podman --version >&2

work="$(mktemp -d /var/tmp/keybroker-image-ci.XXXXXX)"
cleanup() {
    local d
    for d in "${work}"/podman-*; do
        [[ -d "${d}" ]] || continue
        podman --root "${d}/storage" --runroot "${d}/run" --tmpdir "${d}/tmp" \
            --storage-driver vfs image unmount --all >/dev/null 2>&1 || true
    done
    rm -rf "${work}"
}
trap cleanup EXIT

pm() {
    # pm NAME ARGS...: podman on the storage NAME under ${work}.
    local d="${work}/podman-$1"
    shift
    podman --root "${d}/storage" --runroot "${d}/run" --tmpdir "${d}/tmp" \
        --storage-driver vfs "$@"
}

version="$(cd "${root}" && cargo pkgid -p keybroker-enclave)"
version="${version##*[#@]}"
tag="localhost/keybroker-enclave:${version}"

# --- the binary, then the image twice ----------------------------------------
say "static release build of keybroker-enclave"
bin="$("${root}/scripts/build-enclave-image.sh" --binary-only)"
bin_sha="$(sha256sum "${bin}" | cut -d' ' -f1)"
say "binary ${bin} sha256 ${bin_sha}"

for n in one two; do
    say "image build ${n} (new storage ${work}/podman-${n})"
    "${root}/scripts/build-enclave-image.sh" --podman-root "${work}/podman-${n}" \
        --storage-driver vfs --tag "${tag}" --iidfile "${work}/${n}.iid" >"${work}/${n}.out"
    sed "s/^/    /" "${work}/${n}.out" >&2
done
id1="$(cat "${work}/one.iid")"
id2="$(cat "${work}/two.iid")"
dg1="$(pm one image inspect --format '{{.Digest}}' "${id1}")"
dg2="$(pm two image inspect --format '{{.Digest}}' "${id2}")"
echo "image id     ${id1} / ${id2}" >&2
echo "image digest ${dg1} / ${dg2}" >&2
[[ "${id1}" == "${id2}" ]] || fail "two builds of the same binary gave different image ids"
[[ "${dg1}" == "${dg2}" ]] || fail "two builds of the same binary gave different image digests"

# --- the image's configuration and files -------------------------------------
say "image configuration and contents"
user="$(pm one image inspect --format '{{.Config.User}}' "${id1}")"
[[ "${user}" == "65532:65532" ]] || fail "image user is '${user}', expected 65532:65532"
# What the enclave will run, by nitro-cli's rule (Cmd with Env when both are
# present, else Entrypoint alone; never joined): the whole command line.
pm one image inspect --format '{{json .Config}}' "${id1}" >"${work}/config.json"
argv="$(python3 "${root}/.ci/nitro-argv.py" argv-json <"${work}/config.json")" \
    || fail "nitro-cli's rule finds no command in the image configuration"
expected_argv='["/usr/bin/keybroker-enclave", "serve", "--mode", "broker", "--proxy", "vsock://3:5000", "--listen", "127.0.0.1:8000", "--unix", "/run/keybroker/kms.sock", "--user", "65532:65532"]'
[[ "${argv}" == "${expected_argv}" ]] \
    || fail "the enclave would run ${argv}, expected ${expected_argv}"
entrypoint="$(pm one image inspect --format '{{json .Config.Entrypoint}}' "${id1}")"
[[ "${entrypoint}" == "null" || "${entrypoint}" == "[]" ]] \
    || fail "image has an entrypoint ${entrypoint}: podman/docker would join it with CMD, nitro-cli would not"

mnt="$(pm one image mount "${id1}")"
[[ -d "${mnt}" ]] || fail "podman image mount gave no directory"
(cd "${mnt}" && find . -mindepth 1 -printf '%M %U:%G %P\n' | LC_ALL=C sort) >"${work}/files"
LC_ALL=C sort >"${work}/files.expected" <<'EOF'
drwxr-xr-x 0:0 dev
drwxr-xr-x 0:0 proc
drwxr-xr-x 0:0 run
drwxr-xr-x 0:0 sys
drwxrwxrwt 0:0 tmp
drwxr-xr-x 0:0 usr
drwxr-xr-x 0:0 usr/bin
-rwxr-xr-x 0:0 usr/bin/keybroker-enclave
EOF
if ! diff -u "${work}/files.expected" "${work}/files" >&2; then
    fail "the image's files differ from the expected list (above)"
fi
img_bin="${work}/keybroker-enclave"
cp "${mnt}/usr/bin/keybroker-enclave" "${img_bin}"
pm one image unmount "${id1}" >/dev/null
[[ "$(sha256sum "${img_bin}" | cut -d' ' -f1)" == "${bin_sha}" ]] \
    || fail "the binary in the image is not the one just built"

# --- the binary from the image -----------------------------------------------
say "binary checks (the copy taken out of the image)"
if readelf -lW "${img_bin}" | grep -q 'INTERP'; then
    fail "binary has a program interpreter (dynamically linked)"
fi
if readelf -dW "${img_bin}" | grep -q '(NEEDED)'; then
    fail "binary needs shared libraries: $(readelf -dW "${img_bin}" | grep '(NEEDED)')"
fi
ldd_out="$(ldd "${img_bin}" 2>&1 || true)"
case "${ldd_out}" in
    *"statically linked"* | *"not a dynamic executable"*) ;;
    *) fail "ldd does not call the binary static: ${ldd_out}" ;;
esac

out="$("${img_bin}" --version)" || fail "keybroker-enclave --version failed"
[[ "${out}" == "keybroker-enclave ${version}" ]] \
    || fail "--version printed '${out}', expected 'keybroker-enclave ${version}'"

# The mock NSM's certificate names, read from its source so that a rename
# cannot quietly turn this check into one that always passes.
mock_src="${root}/enclave/src/mock_nsm.rs"
mapfile -t mock_names < <(sed -n 's/^const \(ROOT_CN\|INTERMEDIATE_CN\|ORGANIZATION\): &str = "\(.*\)";$/\2/p' "${mock_src}")
[[ ${#mock_names[@]} -eq 3 ]] \
    || fail "expected ROOT_CN, INTERMEDIATE_CN and ORGANIZATION in ${mock_src}, found ${#mock_names[@]}"
for s in "${mock_names[@]}"; do
    if grep -a -q -F -- "${s}" "${img_bin}"; then
        fail "the production binary contains the mock NSM string '${s}'"
    fi
done
nm -C "${img_bin}" >"${work}/symbols"
grep -q 'keybroker_enclave::' "${work}/symbols" \
    || fail "no keybroker_enclave symbols at all: the symbol check below would prove nothing"
if grep -E 'keybroker_enclave::mock_nsm|[^a-z_]rcgen::' "${work}/symbols" | head -5 >&2; then
    fail "the production binary has mock NSM code (symbols above)"
fi
if mock_out="$("${img_bin}" mock-nsm pcr0 2>&1)"; then
    fail "'keybroker-enclave mock-nsm pcr0' succeeded: the mock NSM is built in"
fi
[[ "${mock_out}" == *"no mock NSM"* ]] \
    || fail "'mock-nsm pcr0' failed, but not with the no-mock-NSM error: ${mock_out}"

# No development CA for the KMS endpoint either (e2e mode): the production
# binary has no way to trust one. The flag does not exist there, and neither
# does the code that would add the CA.
if dev_ca_out="$("${img_bin}" generate-random --number-of-bytes 8 --mode e2e \
    --region us-east-1 --allow-key 'arn:aws:kms:us-east-1:111122223333:*' \
    --mock-kms-ca /dev/null 2>&1)"; then
    fail "the production binary accepted --mock-kms-ca"
fi
[[ "${dev_ca_out}" == *"unexpected argument '--mock-kms-ca'"* ]] \
    || fail "--mock-kms-ca failed, but not as an unknown flag: ${dev_ca_out}"
if grep -E 'mock_with_dev_ca|DirectLink' "${work}/symbols" | head -5 >&2; then
    fail "the production binary has the development-CA or direct-link code (symbols above)"
fi

# --- the image as a container ------------------------------------------------
# Lower limits than the host's: the sandbox may not raise rlimits (no
# CAP_SYS_RESOURCE), and podman's defaults are higher than the host's.
say "podman run (--version, as the image's user)"
run_out="$(pm one run --rm --runtime runc --network none \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "${id1}" \
    /usr/bin/keybroker-enclave --version 2>"${work}/run.err")" \
    || fail "podman run failed: $(cat "${work}/run.err")"
[[ "${run_out}" == "keybroker-enclave ${version}" ]] \
    || fail "podman run --version printed '${run_out}'"

# --- boot it as an enclave boots it -----------------------------------------
# .ci/enclave-boot.sh: nitro-cli's argv rule, the unpacked files, new mount,
# network and PID namespaces, the init's mounts, chroot, root, `lo` down.
unpack() {
    # unpack STORAGE IMAGE DIR: the image's files, as nitro-cli takes them.
    local m
    m="$(pm "$1" image mount "$2")"
    mkdir -p "$3"
    cp -a "${m}/." "$3/"
    pm "$1" image unmount "$2" >/dev/null
}
say "boot test: the production image must stop at the NSM"
unpack one "${id1}" "${work}/rootfs-production"
bash "${root}/.ci/enclave-boot.sh" --rootfs "${work}/rootfs-production" \
    --config "${work}/config.json" --expect nsm-failure

say "boot test: the dangerous-mock-nsm-test variant (same Dockerfile, mock NSM) must come up"
"${root}/scripts/build-enclave-image.sh" --dangerous-mock-nsm --podman-root "${work}/podman-one" \
    --storage-driver vfs --iidfile "${work}/mock.iid" >"${work}/mock.out"
sed "s/^/    /" "${work}/mock.out" >&2
mock_id="$(cat "${work}/mock.iid")"
[[ "${mock_id}" != "${id1}" ]] || fail "the mock-NSM variant is the production image"
pm one image inspect --format '{{json .Config}}' "${mock_id}" >"${work}/mock-config.json"
# The same command line; the environment adds only the mock NSM's CA dir.
mock_argv="$(python3 "${root}/.ci/nitro-argv.py" argv-json <"${work}/mock-config.json")"
[[ "${mock_argv}" == "${argv}" ]] || fail "the variant's command ${mock_argv} differs from production's"
mock_env="$(python3 "${root}/.ci/nitro-argv.py" env-json <"${work}/mock-config.json")"
prod_env="$(python3 "${root}/.ci/nitro-argv.py" env-json <"${work}/config.json")"
[[ "${prod_env}" == '["PATH=/sbin:/usr/sbin:/bin:/usr/bin"]' ]] \
    || fail "the production environment is ${prod_env}, expected the init's PATH only"
[[ "${mock_env}" == '["PATH=/sbin:/usr/sbin:/bin:/usr/bin", "KEYBROKER_MOCK_NSM_CA=/tmp/keybroker-mock-nsm"]' ]] \
    || fail "the variant's environment is ${mock_env}"
unpack one "${mock_id}" "${work}/rootfs-mock"
cmp -s "${work}/rootfs-mock/usr/bin/keybroker-enclave" "${img_bin}" \
    && fail "the variant has the production binary (no mock NSM in it)"
bash "${root}/.ci/enclave-boot.sh" --rootfs "${work}/rootfs-mock" \
    --config "${work}/mock-config.json" --expect ready

# --- optional: the binary does not depend on the source path -----------------
if ${reproducible_binary}; then
    for n in a long-source-path-b; do
        src="${work}/src-${n}"
        say "reproducible-binary: copy the source to ${src} and build"
        mkdir -p "${src}"
        tar -C "${root}" --exclude=./target --exclude=./fuzz/target --exclude=./fuzz/corpus \
            --exclude=./fuzz/artifacts --exclude=./.git -cf - . | tar -C "${src}" -xf -
        other="$("${src}/scripts/build-enclave-image.sh" --binary-only)"
        other_sha="$(sha256sum "${other}" | cut -d' ' -f1)"
        echo "binary sha256 ${other_sha} (${other})" >&2
        [[ "${other_sha}" == "${bin_sha}" ]] \
            || fail "the binary built in ${src} differs from the one built in ${root}"
    done
fi

say "image OK: ${tag} id ${id1} digest ${dg1} binary sha256 ${bin_sha}"
