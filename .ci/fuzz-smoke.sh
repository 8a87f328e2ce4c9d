#!/usr/bin/env bash
# Fuzz smoke test: runs every cargo-fuzz target for a short while.
#
# Needs a nightly toolchain (libFuzzer + sanitizers); without one it prints a
# note and succeeds, so it can run anywhere. Seeds for the attestation and cms
# targets come from ../shared/fixtures (beside the checkout) when present and
# are copied into fuzz/corpus/<target>/ (gitignored) at run time.
#
# Env: FUZZ_SECONDS (default 20) per target; FUZZ_TARGETS (default: all
# targets listed by `cargo fuzz list`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fixtures="${root}/../shared/fixtures"
seconds="${FUZZ_SECONDS:-20}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz-smoke: no nightly toolchain (rustup toolchain install nightly); skipping." >&2
    exit 0
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz" >&2
    cargo +nightly install cargo-fuzz --locked
fi

cd "${root}/fuzz"

if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a targets <<<"${FUZZ_TARGETS}"
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

seed_fixtures() {
    # seed_fixtures TARGET DIR PATTERN...: copy matching fixture files into
    # the target's corpus (never into the repository proper).
    local target="$1" src="$2"
    shift 2
    mkdir -p "corpus/${target}"
    if [[ ! -d "${src}" ]]; then
        echo "fuzz-smoke: ${src} not found; ${target} starts without seeds." >&2
        return
    fi
    local pattern
    for pattern in "$@"; do
        find "${src}" -maxdepth 1 -type f -name "${pattern}" -exec cp -f {} "corpus/${target}/" \;
    done
}

seed_frames() {
    # A few valid frames (see common/src/protocol/mod.rs for the layout).
    local dir="corpus/frame"
    mkdir -p "${dir}"
    # Goodbye: [6, {}]
    printf '\x00\x00\x00\x03\x82\x06\xa0' >"${dir}/seed-goodbye"
    # Hello: [1, {"min": 1, "max": 1, "client": "e"}]
    printf '\x00\x00\x00\x16\x82\x01\xa3cmin\x01cmax\x01fclientae' >"${dir}/seed-hello"
    # Request: [3, {"id": 1, "request": {"GenerateRandom": {"NumberOfBytes": 32}}}]
    printf '\x00\x00\x00\x30\x82\x03\xa2bid\x01grequest\xa1nGenerateRandom\xa1mNumberOfBytes\x18\x20' \
        >"${dir}/seed-request"
    # Response: [4, {"id": 1, "result": {"Err": {"code": 5, "message": "m", "retryable": true}}}]
    printf '\x00\x00\x00\x2f\x82\x04\xa2bid\x01fresult\xa1cErr\xa3dcode\x05gmessageamiretryable\xf5' \
        >"${dir}/seed-response"
    # GetCredentials (v2): [7, {"id": 1}]
    printf '\x00\x00\x00\x07\x82\x07\xa1bid\x01' >"${dir}/seed-get-credentials"
    # OpenTunnel (v2): [9, {"host": "kms", "port": 443}]
    printf '\x00\x00\x00\x14\x82\x09\xa2dhostckmsdport\x19\x01\xbb' >"${dir}/seed-open-tunnel"
    # Metrics (v3): [11, {"report": {"enclave": "e"}}]
    printf '\x00\x00\x00\x15\x82\x0b\xa1freport\xa1genclaveae' >"${dir}/seed-metrics"
}

status=0
for t in "${targets[@]}"; do
    extra=()
    case "${t}" in
        attestation) seed_fixtures "${t}" "${fixtures}/attestation" '*.cbor' ;;
        cms) seed_fixtures "${t}" "${fixtures}/cms-kms" 'input_ber*.bin' '*.ber' ;;
        frame)
            seed_frames
            extra=(-dict=frame.dict)
            ;;
        *) mkdir -p "corpus/${t}" ;;
    esac
    echo "fuzz-smoke: ${t} for ${seconds}s" >&2
    if ! cargo +nightly fuzz run "${t}" "corpus/${t}" -- \
        -max_total_time="${seconds}" -rss_limit_mb=2048 "${extra[@]}"; then
        echo "fuzz-smoke: ${t} FAILED (crash inputs in fuzz/artifacts/${t}/)" >&2
        status=1
    fi
done
exit "${status}"
