#!/bin/sh
# Debian's podman (4.3, with its build engine), runc, skopeo and debootstrap for `make images`,
# and containerd (ctr) and docker-registry, which the archive tests load the images into,
# installed when missing (their services are not started). Idempotent: does nothing when all are there. Fails with the reason
# when it cannot install them: `make test` runs the images, CI must not pass without them.
set -u
need=""
command -v podman >/dev/null 2>&1 || need="$need podman"
command -v runc >/dev/null 2>&1 || need="$need runc"
command -v skopeo >/dev/null 2>&1 || need="$need skopeo"
command -v debootstrap >/dev/null 2>&1 || need="$need debootstrap"
command -v ctr >/dev/null 2>&1 || need="$need containerd"
command -v docker-registry >/dev/null 2>&1 || need="$need docker-registry"
[ -z "$need" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-image-tools: no apt-get here; install$need yourself (make images needs them)" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo -n"
echo "install-image-tools: apt-get install$need"
# Another apt run (e.g. tests/install-test-tools.sh) may hold the lock: wait for it.
if $sudo apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null 2>&1 \
        && DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q \
            --no-install-recommends $need >/tmp/stepchain-install-image-tools.log 2>&1; then
    exit 0
fi
echo "install-image-tools: could not install$need (log: /tmp/stepchain-install-image-tools.log)" >&2
tail -n 5 /tmp/stepchain-install-image-tools.log >&2 2>/dev/null
exit 1
