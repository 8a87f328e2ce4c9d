#!/usr/bin/env bash
# Builds the Keybroker enclave image (Dockerfile.enclave): the image that
# `nitro-cli build-enclave` turns into an EIF.
#
# By default it compiles keybroker-enclave on this machine (statically linked,
# --locked, without the mock-nsm feature, paths remapped; the flags are defined
# here and nowhere else) and builds the image's final stage from that binary
# with podman (docker if podman is absent). It prints the image id, digest and
# the binary's SHA-256.
#
# Usage: scripts/build-enclave-image.sh [OPTIONS]
#   --builder host|container  host (default): cargo on this machine.
#                             container: Dockerfile.enclave's builder stage
#                             (the official Rust 1.95 image; needs its
#                             registry and crates.io).
#   --tag NAME                image name (default
#                             localhost/keybroker-enclave:<version>; the
#                             localhost/ prefix is what podman gives a local
#                             image and keeps through `podman save | docker
#                             load`, so `nitro-cli build-enclave --docker-uri`
#                             finds it without trying a registry pull)
#   --engine podman|docker    default: podman if installed, else docker
#   --storage-driver DRIVER   podman's global --storage-driver (e.g. vfs where
#                             overlay is unavailable); env KEYBROKER_STORAGE_DRIVER
#   --podman-root DIR         separate podman storage under DIR (--root,
#                             --runroot, --tmpdir), as CI does
#   --rust-image REF          the builder stage's base image (container builder)
#   --iidfile FILE            also write the image id to FILE
#   --binary-only             build the static binary only; print its path
#   --dangerous-mock-nsm      the boot-test variant: the binary WITH the
#                             development mock NSM, and the image's
#                             `dangerous-mock-nsm-test` stage (tag default
#                             ...:<version>-dangerous-mock-nsm). Never deploy
#                             it: anyone can forge its attestation documents.
#   --stage DIR               build the binary and lay out DIR/rootfs and
#                             DIR/sockdir (the build context of the final
#                             stage); used by Dockerfile.enclave's builder
#   -h, --help
#   -- ARGS...                passed to `podman build`/`docker build` as they
#                             are (e.g. -- --runtime runc --network host)
# Env: CARGO_HOME, KEYBROKER_IMAGE_TARGET_DIR (default target/enclave-image:
# its own target dir, so these RUSTFLAGS do not invalidate target/),
# SOURCE_DATE_EPOCH (default 0).
set -euo pipefail
shopt -s inherit_errexit

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

builder=host
tag=""
engine="${KEYBROKER_IMAGE_ENGINE:-}"
storage_driver="${KEYBROKER_STORAGE_DRIVER:-}"
podman_root=""
rust_image=""
iidfile=""
mode=image
stage_dir=""
mock_nsm=false
extra_build_args=()

die() {
    echo "build-enclave-image: $*" >&2
    exit 2
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --builder) builder="${2:?--builder needs host or container}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a name}"; shift 2 ;;
        --engine) engine="${2:?--engine needs podman or docker}"; shift 2 ;;
        --storage-driver) storage_driver="${2:?--storage-driver needs a driver}"; shift 2 ;;
        --podman-root) podman_root="${2:?--podman-root needs a directory}"; shift 2 ;;
        --rust-image) rust_image="${2:?--rust-image needs an image reference}"; shift 2 ;;
        --iidfile) iidfile="${2:?--iidfile needs a file}"; shift 2 ;;
        --binary-only) mode=binary; shift ;;
        --dangerous-mock-nsm) mock_nsm=true; shift ;;
        --stage) mode=stage; stage_dir="${2:?--stage needs a directory}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; extra_build_args=("$@"); break ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
case "${builder}" in host | container) ;; *) die "--builder must be host or container" ;; esac

# ---------------------------------------------------------------------------
# The static, reproducible build of keybroker-enclave. Every flag that affects
# the binary is here; Dockerfile.enclave's builder stage and CI call this.
# ---------------------------------------------------------------------------
host_triple() {
    rustc -vV | sed -n 's/^host: //p'
}

# Prints the path of the built binary on stdout (cargo's output goes to stderr).
build_binary() {
    local triple cargo_home target_dir
    triple="$(host_triple)"
    [[ -n "${triple}" ]] || die "cannot tell the host target from rustc -vV"
    cargo_home="${CARGO_HOME:-${HOME}/.cargo}"
    mkdir -p "${cargo_home}"
    cargo_home="$(cd "${cargo_home}" && pwd -P)"
    target_dir="${KEYBROKER_IMAGE_TARGET_DIR:-${root}/target/enclave-image}"
    local features=() name=keybroker-enclave
    if ${mock_nsm}; then
        features=(--features dangerous-mock-nsm-cli)
        name=keybroker-enclave-dangerous-mock-nsm
    fi
    mkdir -p "${target_dir}"
    target_dir="$(cd "${target_dir}" && pwd -P)"

    local flags=(
        # A static executable: the image has no libc. glibc's static libc is
        # fine for what the enclave does (no NSS lookups: addresses are vsock
        # CIDs or numeric IPs). musl would also do, where installed.
        -Ctarget-feature=+crt-static
        # No build paths in the binary (panic locations, symbols): the
        # checkout and the cargo registry get fixed names, so the binary does
        # not depend on where it was built. aws-lc-sys maps its own C paths
        # (-ffile-prefix-map) in release builds.
        "--remap-path-prefix=${root}=/build"
        "--remap-path-prefix=${cargo_home}=/cargo"
        # Last, as the most specific (rustc applies the last matching prefix):
        # the target dir, which need not be under the checkout.
        "--remap-path-prefix=${target_dir}=/target"
    )
    local encoded
    encoded="$(IFS=$'\x1f'; printf '%s' "${flags[*]}")"

    # --target even though it is the host: then the RUSTFLAGS apply to the
    # enclave binary only, not to build scripts and proc macros (which cannot
    # be built with +crt-static).
    #
    # Profile overrides: no DWARF (smaller EIF, and nothing path-dependent
    # left); the symbol table stays, for backtraces and for the CI check that
    # no mock NSM code is in the binary. SOURCE_DATE_EPOCH pins __DATE__ and
    # friends in C code; CARGO_INCREMENTAL=0 as for any release build.
    (
        cd "${root}"
        env \
            CARGO_TARGET_DIR="${target_dir}" \
            CARGO_ENCODED_RUSTFLAGS="${encoded}" \
            CARGO_INCREMENTAL=0 \
            CARGO_PROFILE_RELEASE_DEBUG=false \
            CARGO_PROFILE_RELEASE_STRIP=debuginfo \
            SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}" \
            cargo build --release --locked -p keybroker-enclave --target "${triple}" \
            "${features[@]}" >&2
    )
    local built="${target_dir}/${triple}/release/keybroker-enclave"
    [[ -x "${built}" ]] || die "cargo did not produce ${built}"
    # Both variants share the target dir (and so the compiled dependencies)
    # but not the output path: cargo writes each to the same file.
    local bin="${target_dir}/${name}"
    cp "${built}" "${bin}.tmp" && mv "${bin}.tmp" "${bin}"
    printf '%s\n' "${bin}"
}

# stage BINARY DIR: the final stage's build context (see Dockerfile.enclave).
# Modes are set explicitly so that the caller's umask cannot change the image.
# The enclave's init mounts on /dev, /proc, /sys, /run and /tmp and does not
# create them; nothing else goes in (serve creates its socket directory on the
# tmpfs that /run becomes).
stage() {
    local bin="$1" dir="$2"
    rm -rf "${dir}/rootfs"
    install -d -m 0755 "${dir}/rootfs/usr/bin" "${dir}/rootfs/dev" "${dir}/rootfs/proc" \
        "${dir}/rootfs/sys" "${dir}/rootfs/run"
    install -d -m 1777 "${dir}/rootfs/tmp"
    install -m 0755 "${bin}" "${dir}/rootfs/usr/bin/keybroker-enclave"
}

case "${mode}" in
    binary)
        build_binary
        exit 0
        ;;
    stage)
        mkdir -p "${stage_dir}"
        bin="$(build_binary)"
        stage "${bin}" "${stage_dir}"
        exit 0
        ;;
esac

# ---------------------------------------------------------------------------
# The image.
# ---------------------------------------------------------------------------
if [[ -z "${engine}" ]]; then
    if command -v podman >/dev/null 2>&1; then
        engine=podman
    elif command -v docker >/dev/null 2>&1; then
        engine=docker
    else
        die "neither podman nor docker is installed"
    fi
fi
engine_cmd=("${engine}")
build_opts=()
case "${engine}" in
    podman)
        if [[ -n "${podman_root}" ]]; then
            mkdir -p "${podman_root}"
            podman_root="$(cd "${podman_root}" && pwd -P)"
            engine_cmd+=(--root "${podman_root}/storage" --runroot "${podman_root}/run"
                --tmpdir "${podman_root}/tmp")
        fi
        [[ -z "${storage_driver}" ]] || engine_cmd+=(--storage-driver "${storage_driver}")
        # File times and the created time fixed: same inputs, same image id.
        build_opts+=(--timestamp 0)
        ;;
    docker)
        [[ -z "${podman_root}" && -z "${storage_driver}" ]] \
            || die "--podman-root and --storage-driver are podman options"
        # The legacy builder (no buildx) builds every stage, so even the host
        # path would pull the Rust image and compile in it. BuildKit builds
        # only the stages the target needs.
        docker buildx version >/dev/null 2>&1 \
            || die "docker buildx is not installed (BuildKit is needed to skip unused stages): install the buildx plugin (docker-buildx-plugin from Docker's package repository, or a buildx release binary in ~/.docker/cli-plugins/docker-buildx), or use --engine podman"
        export DOCKER_BUILDKIT=1
        # BuildKit reads SOURCE_DATE_EPOCH for the created time; file times in
        # the layers are only rewritten by buildx's rewrite-timestamp output
        # option. Untested here (no Docker engine on the build machines).
        export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}"
        ;;
    *) die "--engine must be podman or docker" ;;
esac

if [[ -z "${tag}" ]]; then
    pkgid="$(cd "${root}" && cargo pkgid -p keybroker-enclave)"
    tag="localhost/keybroker-enclave:${pkgid##*[#@]}"
    ! ${mock_nsm} || tag="${tag}-dangerous-mock-nsm"
fi
if ${mock_nsm}; then
    build_opts+=(--target dangerous-mock-nsm-test)
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/keybroker-enclave-image.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
iid="${work}/iid"

if [[ "${builder}" == host ]]; then
    bin="$(build_binary)"
    stage "${bin}" "${work}/context"
    echo "build-enclave-image: ${engine} build from ${bin}" >&2
    "${engine_cmd[@]}" build "${build_opts[@]}" "${extra_build_args[@]}" \
        --build-arg BINARY_FROM=host \
        -f "${root}/Dockerfile.enclave" -t "${tag}" --iidfile "${iid}" \
        "${work}/context" >&2
else
    [[ -z "${rust_image}" ]] || build_opts+=(--build-arg "RUST_IMAGE=${rust_image}")
    echo "build-enclave-image: ${engine} build with the builder stage (context ${root})" >&2
    "${engine_cmd[@]}" build "${build_opts[@]}" "${extra_build_args[@]}" \
        --build-arg BINARY_FROM=builder \
        --build-arg "SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}" \
        --build-arg "DANGEROUS_MOCK_NSM=$(${mock_nsm} && echo 1 || true)" \
        -f "${root}/Dockerfile.enclave" -t "${tag}" --iidfile "${iid}" \
        "${root}" >&2
fi

id="$(cat "${iid}")"
[[ -z "${iidfile}" ]] || cp "${iid}" "${iidfile}"
digest="$("${engine_cmd[@]}" image inspect --format '{{.Digest}}' "${id}" 2>/dev/null || true)"
echo "image: ${tag}"
echo "id: ${id}"
[[ -z "${digest}" ]] || echo "digest: ${digest}"
if [[ "${builder}" == host ]]; then
    echo "binary-sha256: $(sha256sum "${bin}" | cut -d' ' -f1)"
fi
echo "next: nitro-cli build-enclave --docker-uri ${tag} --output-file keybroker.eif" >&2
if [[ "${engine}" == podman ]]; then
    echo "      (nitro-cli reads images from a Docker engine: podman save ${tag} | docker load)" >&2
fi
