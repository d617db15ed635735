#!/usr/bin/env bash
# `make images`: the step and topology images, built rootful with podman on a Debian base made
# by debootstrap: no Docker engine, no registry. Then each is exported as an OCI archive under
# out/images/ (`kind load image-archive`, `ctr images import`, `skopeo copy` to a registry).
#
#   bash docker/images.sh           build what changed (the base once, cached layers), export
#   bash docker/images.sh names     print "<image> <name>" per image, building nothing
#   bash docker/images.sh check     exit 0 when out/images/ holds images built from this
#                                   checkout as it is now, else say what is stale (exit 1)
#
# Podman reads the project's configuration (docker/podman/), never the machine's /etc:
# runc, cgroupfs, events to a file, explicit ulimits, host networking, no pulls.
# Environment: REBUILD_BASE=1 remakes the base; DEBIAN_MIRROR (default deb.debian.org);
# IMAGE_SOURCE (the org.opencontainers.image.source label; default: the git remote's URL).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
IMAGES=(step topology)
SUITE=bookworm
BASE_IMAGE=localhost/stepchain-base:$SUITE
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
OUT=$ROOT/out/images
# The same limits as docker/podman/containers.conf's default_ulimits, passed explicitly too:
# podman 4.3's own defaults are refused by this machine's hard open-files limit (20000).
ULIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=4096:4096)
export CONTAINERS_CONF=$ROOT/docker/podman/containers.conf
export CONTAINERS_REGISTRIES_CONF=$ROOT/docker/podman/registries.conf

# The name `make images` gives each image: the chart's default repository and tag.
image_name() { echo "stepchain-$1:$VERSION"; }
archive_of() { echo "$OUT/stepchain-$1-$VERSION.tar"; }

START=$SECONDS
say() { printf '[images %4ds] %s\n' $((SECONDS - START)) "$*"; }
die() { say "error: $*" >&2; exit 1; }

# A digest of everything a build reads from the checkout (what the Dockerfiles copy, the
# Dockerfiles, this script and the podman configuration), so the tests can tell an image built
# from this checkout from one built before an edit (or by another checkout).
context_digest() {
    find pyproject.toml setup.py README.md .ci/constraints.txt .dockerignore docker/images.sh \
        docker/*.Dockerfile docker/*-requirements.txt docker/rootfs.sh docker/trim-venv.sh \
        docker/podman native protos stepsvc topology \
        -type f ! -name '*.pyc' ! -name '*.so' ! -path '*/__pycache__/*' \
        -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64
}

case "${1:-build}" in
    names)
        for image in "${IMAGES[@]}"; do echo "$image $(image_name "$image")"; done
        exit 0 ;;
    check)
        digest=$(context_digest)
        stale=0
        for image in "${IMAGES[@]}"; do
            stamp="$(archive_of "$image").id"
            if [ ! -f "$stamp" ]; then
                echo "$(image_name "$image"): not built (run make images)"; stale=1
            elif [ "$(sed -n 2p "$stamp")" != "$digest" ]; then
                echo "$(image_name "$image"): built from another state of the sources (run make images)"
                stale=1
            fi
        done
        exit $stale ;;
    build) ;;
    *) echo "usage: $0 [build|names|check]" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || die "rootful podman: run as root (sudo make images)"
for tool in podman skopeo debootstrap runc; do
    command -v "$tool" >/dev/null || die "$tool is missing: make image-tools installs it"
done
mkdir -p "$OUT"
rm -rf "$OUT"/.oci.*  # a layout left by an interrupted export

# --- the base: Debian minbase by debootstrap, slimmed like debian:bookworm-slim ---------------
make_base() {
    local rootfs
    rootfs=$(mktemp -d /var/tmp/stepchain-base.XXXXXX)
    # shellcheck disable=SC2064  # the path is fixed now
    trap "rm -rf '$rootfs'" EXIT
    say "base: debootstrap --variant=minbase $SUITE from $DEBIAN_MIRROR (log: out/images/base.log)"
    if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$OUT/base.log" 2>&1; then
        tail -n 20 "$OUT/base.log" >&2; die "debootstrap failed"
    fi
    # Security and point-release updates, as the public Debian images carry them.
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $SUITE main
deb $DEBIAN_MIRROR $SUITE-updates main
deb ${DEBIAN_MIRROR%/debian}/debian-security $SUITE-security main
EOF
    say "base: apt-get upgrade ($SUITE-updates, $SUITE-security)"
    if ! { chroot "$rootfs" apt-get update -q && DEBIAN_FRONTEND=noninteractive \
            chroot "$rootfs" apt-get upgrade -y -q; } >>"$OUT/base.log" 2>&1; then
        tail -n 20 "$OUT/base.log" >&2; die "apt-get upgrade in the base failed"
    fi
    # Slim: no documentation, manuals or translations, now or from later installs (licences
    # stay); no recommends; no package lists or caches left in a layer.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/stepchain-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/man/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/stepchain-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };
EOF
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
        "$rootfs"/usr/share/info/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* \
        "$rootfs"/usr/share/lintian/*
    find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    # The container engine provides these at run time.
    : >"$rootfs/etc/resolv.conf"
    rm -f "$rootfs/etc/hostname"
    say "base: podman import as $BASE_IMAGE ($(du -sh "$rootfs" | cut -f1))"
    tar --numeric-owner --xattrs -C "$rootfs" -c . | podman import --quiet \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL org.opencontainers.image.title=stepchain-base org.opencontainers.image.description=\"Debian $SUITE minbase (debootstrap) for make images\" org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        - "$BASE_IMAGE" >/dev/null
}

if [ "${REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$BASE_IMAGE"; then
    make_base
else
    say "base: reusing $BASE_IMAGE (REBUILD_BASE=1 remakes it)"
fi

# --- the images ---------------------------------------------------------------------------------
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE=${IMAGE_SOURCE:-$(git config --get remote.origin.url 2>/dev/null || true)}
SOURCE=${SOURCE:-unknown}
DIGEST=$(context_digest)
# A TLS-intercepting proxy's CA bundle for pip inside the build (a build secret: never stored
# in a layer); empty when this machine needs none.
CA_BUNDLE=$OUT/.pip-ca.pem
: >"$CA_BUNDLE"
for ca in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}"; do
    if [ -n "$ca" ] && [ -s "$ca" ]; then cp "$ca" "$CA_BUNDLE"; break; fi
done

BASE_ID=$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE")
for image in "${IMAGES[@]}"; do
    name=$(image_name "$image")
    log=$OUT/build-$image.log
    archive=$(archive_of "$image")
    stamp=$archive.id
    # Built from these very sources on this base, and exported: nothing to do but make sure the
    # name points at it (another checkout may have built the same name since).
    if [ -f "$archive" ] && [ -f "$stamp" ] && [ "$(sed -n 2p "$stamp")" = "$DIGEST" ] \
            && [ "$(sed -n 3p "$stamp")" = "$BASE_ID" ] \
            && podman image exists "$(sed -n 1p "$stamp")"; then
        id=$(sed -n 1p "$stamp")
        podman tag "$id" "$name"
        say "$image: $name = ${id:0:12} is up to date (built from these sources)"
        continue
    fi
    previous=$(sed -n 1p "$stamp" 2>/dev/null || true)
    say "$image: podman build -f docker/$image.Dockerfile -t $name (log: out/images/build-$image.log)"
    # Progress: podman's STEP lines and whether each step came from the layer cache.
    if ! podman build --pull=never --network=host "${ULIMITS[@]}" --layers --format oci \
            --secret id=pip-ca,src="$CA_BUNDLE" \
            --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VERSION="$VERSION" \
            --build-arg REVISION="$REVISION" --build-arg SOURCE="$SOURCE" \
            -f "docker/$image.Dockerfile" -t "$name" . 2>&1 \
            | tee "$log" \
            | sed -u -n -E '/^(\[[0-9]+\/[0-9]+\] )?(STEP [0-9]+\/[0-9]+: (FROM|RUN|COPY)|--> Using cache)/{s/^(.{0,110}).*/    \1/;p;}'; then
        tail -n 30 "$log" >&2; die "podman build of $name failed"
    fi
    id=$(podman image inspect --format '{{.Id}}' "$name")
    size=$(podman image inspect --format '{{.Size}}' "$name")
    say "$image: $name = ${id:0:12}, $((size / 1000000)) MB"

    if [ -f "$archive" ] && [ "$(sed -n 1p "$stamp" 2>/dev/null)" = "$id" ]; then
        say "$image: ${archive#"$ROOT"/} is up to date"
    else
        # Named as Kubernetes spells the chart's default (docker.io/library/<name>), in both the
        # OCI ref annotation (skopeo, podman load) and containerd's own (ctr import, kind load).
        ref=docker.io/library/$name
        layout=$(mktemp -d "$OUT/.oci.XXXXXX")
        if ! skopeo copy --quiet "containers-storage:$id" "oci:$layout:$ref" \
                >"$OUT/export-$image.log" 2>&1; then
            cat "$OUT/export-$image.log" >&2; die "skopeo copy of $name failed"
        fi
        python3 - "$layout/index.json" "$ref" <<'EOF'
import json, sys
path, ref = sys.argv[1], sys.argv[2]
index = json.load(open(path))
for manifest in index["manifests"]:
    manifest.setdefault("annotations", {})["io.containerd.image.name"] = ref
json.dump(index, open(path, "w"))
EOF
        tar --numeric-owner -C "$layout" -cf "$archive.tmp" oci-layout index.json blobs
        rm -rf "$layout"
        mv "$archive.tmp" "$archive"
        say "$image: exported ${archive#"$ROOT"/} ($(du -m "$archive" | cut -f1) MB) as $ref"
    fi
    # What this image was built from: the sources' digest and the base (`check` reads them).
    printf '%s\n%s\n%s\n' "$id" "$DIGEST" "$BASE_ID" >"$stamp"
    # The image this one replaces (built here before, now untagged) goes; the layer cache stays
    # (`podman image prune` reclaims that too, at the cost of a cold next build).
    if [ -n "$previous" ] && [ "$previous" != "$id" ]; then
        podman rmi "$previous" >/dev/null 2>&1 || true
    fi
done
rm -f "$CA_BUNDLE"
say "done: $(for i in "${IMAGES[@]}"; do printf '%s ' "$(image_name "$i")"; done)"
