#!/bin/sh
# Debian's chromium + chromium-driver (the console's browser test), tmux (the `stepchain top`
# terminal test), iproute2, nftables and socat (the network-fault tests: namespaces, drops,
# tbf, a relay into a namespace), installed when missing. Idempotent: does nothing when all are there. Never
# fails the build: without them those tests skip and say why.
set -u
need=""
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
command -v tmux >/dev/null 2>&1 || need="$need tmux"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v nft >/dev/null 2>&1 || need="$need nftables"
command -v socat >/dev/null 2>&1 || need="$need socat"
[ -z "$need" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-tools: no apt-get here; the tests needing$need will skip"
    exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo -n"
echo "install-test-tools: apt-get install$need"
if $sudo apt-get update -q >/dev/null 2>&1 \
        && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $need >/dev/null 2>&1; then
    exit 0
fi
echo "install-test-tools: could not install$need; the tests needing them will skip"
exit 0
