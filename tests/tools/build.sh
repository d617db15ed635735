#!/usr/bin/env bash
# Builds the real peers the tests run (Kubernetes control plane, etcd, KWOK, Jaeger, Toxiproxy)
# from their Go modules into a git-ignored cache: ${STEPCHAIN_TOOLS_DIR:-.cache/tools}/bin.
#
#   bash tests/tools/build.sh [TOOL...]     # TOOL: kube kwok jaeger toxiproxy (default: all)
#
# Each tool is one folder here holding a pinned go.mod/go.sum (and a main.go where the program is
# ours). A tool is rebuilt only when its folder or this script changes (a stamp per tool holds the
# hash), so a second run builds nothing. Builds take a lock per tool, so two checkouts sharing one
# cache (STEPCHAIN_TOOLS_DIR) wait for each other instead of building twice.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TOOLS_DIR="${STEPCHAIN_TOOLS_DIR:-$REPO/.cache/tools}"
ALL_TOOLS=(kube kwok jaeger toxiproxy)
# Smaller, reproducible binaries without the local paths.
GOFLAGS_BUILD=(-trimpath)
LDFLAGS_COMMON="-s -w"

log() { printf '[tools] %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  log "go is not on PATH: the real Kubernetes control plane, Jaeger and Toxiproxy are built from"
  log "their Go modules (Go >= 1.26). Install Go, or point STEPCHAIN_TOOLS_DIR at a filled cache."
  exit 1
fi

# package (relative to the tool's module) -> binary name, per tool.
targets() {
  case "$1" in
    # The control plane: one multi-call binary for the Kubernetes components, and etcd.
    kube)
      echo ". kube"
      echo "./etcd etcd"
      ;;
    kwok) echo "sigs.k8s.io/kwok/cmd/kwok kwok" ;;
    jaeger) echo "github.com/jaegertracing/jaeger/cmd/jaeger jaeger" ;;
    toxiproxy)
      echo "github.com/Shopify/toxiproxy/v2/cmd/server toxiproxy-server"
      echo "github.com/Shopify/toxiproxy/v2/cmd/cli toxiproxy-cli"
      ;;
    *) log "unknown tool '$1' (known: ${ALL_TOOLS[*]})"; return 1 ;;
  esac
}

# Names that point at a multi-call binary (the Kubernetes components all live in `kube`).
links() {
  case "$1" in
    kube) echo "kube-apiserver kube-controller-manager kube-scheduler kubectl" ;;
  esac
}

# -X flags stamping the version the program reports (kubectl version shows the server's).
version_ldflags() {
  local tool="$1" dir="$2" v
  case "$tool" in
    kube)
      v="$(cd "$dir" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
      local major minor
      major="${v#v}"; major="${major%%.*}"
      minor="${v#v*.}"; minor="${minor%%.*}"
      local pkg flags=""
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
      done
      echo "$flags"
      ;;
    toxiproxy)
      v="$(cd "$dir" && go list -m -f '{{.Version}}' github.com/Shopify/toxiproxy/v2)"
      echo " -X github.com/Shopify/toxiproxy/v2.Version=$v"
      ;;
  esac
}

module_version() {
  local tool="$1" dir="$2"
  case "$tool" in
    kube) (cd "$dir" && go list -m -f 'k8s.io/kubernetes {{.Version}}' k8s.io/kubernetes \
             && go list -m -f 'etcd {{.Version}}' go.etcd.io/etcd/server/v3) | paste -sd' ' ;;
    kwok) (cd "$dir" && go list -m -f '{{.Version}}' sigs.k8s.io/kwok) ;;
    jaeger) (cd "$dir" && go list -m -f '{{.Version}}' github.com/jaegertracing/jaeger) ;;
    toxiproxy) (cd "$dir" && go list -m -f '{{.Version}}' github.com/Shopify/toxiproxy/v2) ;;
  esac
}

# Files a tool needs beside its binary.
extras() {
  local tool="$1" dir="$2" src
  case "$tool" in
    kwok)
      # KWOK's controller needs stages (how fake nodes and pods change state): the defaults
      # kwokctl uses, from the pinned module (nodes initialise and keep a lease; pods turn
      # Ready, complete, and go away when deleted).
      src="$(cd "$dir" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
      mkdir -p "$TOOLS_DIR/share/kwok"
      local f first=1
      { for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
                 pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
          [ $first = 1 ] || echo "---"; first=0
          cat "$src/$f"
        done; } > "$TOOLS_DIR/share/kwok/stages.yaml.tmp"
      mv -f "$TOOLS_DIR/share/kwok/stages.yaml.tmp" "$TOOLS_DIR/share/kwok/stages.yaml"
      ;;
  esac
}

# The stamp covers what decides the binaries: the Go toolchain, the module's files, the build
# flags and targets (not the rest of this script, so editing it rebuilds nothing).
stamp_of() {
  local tool="$1" dir="$HERE/$1"
  { go env GOVERSION GOOS GOARCH
    echo "${GOFLAGS_BUILD[*]} $LDFLAGS_COMMON$(version_ldflags "$tool" "$dir")"
    targets "$tool"; links "$tool"
    (cd "$dir" && find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) -print0 \
       | sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-16
}

build_tool() {
  local tool="$1" dir="$HERE/$1"
  [ -f "$dir/go.mod" ] || { log "$tool: no module at $dir"; return 1; }
  local stamp stampfile="$TOOLS_DIR/stamps/$tool" bin have
  stamp="$(stamp_of "$tool")"
  up_to_date() {
    [ -f "$stampfile" ] && [ "$(cat "$stampfile")" = "$stamp" ] || return 1
    while read -r _ bin; do [ -x "$TOOLS_DIR/bin/$bin" ] || return 1; done < <(targets "$tool")
    [ "$tool" != kwok ] || [ -f "$TOOLS_DIR/share/kwok/stages.yaml" ]
  }
  if up_to_date; then
    log "$tool: up to date ($TOOLS_DIR/bin)"
    return 0
  fi
  mkdir -p "$TOOLS_DIR/bin" "$TOOLS_DIR/stamps"
  exec {lockfd}>"$TOOLS_DIR/.lock-$tool"
  if ! flock -n "$lockfd"; then
    log "$tool: another build holds $TOOLS_DIR/.lock-$tool; waiting for it"
    flock "$lockfd"
    if up_to_date; then log "$tool: built by the other run"; exec {lockfd}>&-; return 0; fi
  fi
  local version ldflags tmp start total pkg
  version="$(module_version "$tool" "$dir")"
  ldflags="$LDFLAGS_COMMON$(version_ldflags "$tool" "$dir")"
  tmp="$(mktemp -d "$TOOLS_DIR/.build-$tool.XXXXXX")"
  start=$(date +%s)
  while read -r pkg bin; do
    total="$(cd "$dir" && go list -deps "$pkg" | wc -l)"
    log "$tool $version: building $bin ($total packages$( [ "$tool" = kube ] && echo "; cold, this"\
        "takes tens of minutes on 2 cores; later builds reuse the Go build cache"))"
    # go build -v names each package it compiles: print a count every 100 of them.
    if ! (cd "$dir" && go build "${GOFLAGS_BUILD[@]}" -ldflags "$ldflags" -v -o "$tmp/$bin" "$pkg" 2>&1) \
        | awk -v tool="$tool" -v bin="$bin" -v total="$total" -v logfile="$tmp/build.log" '
            { print > logfile; if ($0 ~ /^[a-zA-Z0-9._\/~-]+$/) n++; else print "[tools] " $0 > "/dev/stderr";
              if (n > 0 && n % 100 == 0 && n != last) { last = n;
                printf "[tools] %s: %d/%d packages compiled\n", bin, n, total > "/dev/stderr" } }
            END { printf "[tools] %s: %d packages compiled\n", bin, n > "/dev/stderr" }'; then
      log "$tool: go build of $pkg failed (log: $tmp/build.log)"
      exec {lockfd}>&-
      return 1
    fi
    [ -x "$tmp/$bin" ] || { log "$tool: go build of $pkg made no binary (log: $tmp/build.log)"; exec {lockfd}>&-; return 1; }
  done < <(targets "$tool")
  while read -r _ bin; do
    mv -f "$tmp/$bin" "$TOOLS_DIR/bin/$bin"
  done < <(targets "$tool")
  for bin in $(links "$tool"); do
    ln -sfn "kube" "$TOOLS_DIR/bin/$bin"
  done
  extras "$tool" "$dir"
  echo "$version" > "$TOOLS_DIR/stamps/$tool.version"
  echo "$stamp" > "$stampfile"
  rm -rf "$tmp"
  log "$tool $version: built in $(( $(date +%s) - start )) s -> $TOOLS_DIR/bin"
  exec {lockfd}>&-
}

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=("${ALL_TOOLS[@]}")
for t in "${tools[@]}"; do build_tool "$t"; done
