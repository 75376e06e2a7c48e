#!/usr/bin/env bash
# Builds the real Kubernetes control plane the cluster tests run, from the Go module proxy
# only: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (k8s.io/kubernetes
# with its staging modules at the matching v0.x.y), etcd (go.etcd.io/etcd/server/v3) and
# kwok (sigs.k8s.io/kwok, simulated nodes), and kubelet and kube-proxy for the real node. The versions are pinned by the builder modules
# under tests/k8s/ (go.mod + go.sum); binaries are cached under tests/.tools/k8s/<tool>-<version>/
# and linked into tests/.tools/bin, so a second run only checks that they are there.
#
# Cold, on 2 cores: about 15 minutes (downloads included); warm: under a second.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
TOOLS="$ROOT/tests/.tools"
BIN="$TOOLS/bin"

# The version each builder module's go.mod requires (the one place a version is set).
pinned() { awk -v m="$2" '$1 == "require" && $2 == m {print $3; exit} $1 == m {print $2; exit}' "$ROOT/tests/k8s/$1/go.mod"; }
K8S_VERSION="$(pinned kubernetes k8s.io/kubernetes)"
ETCD_VERSION="$(pinned etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(pinned kwok sigs.k8s.io/kwok)"

if ! command -v go >/dev/null 2>&1; then
    echo "install-deps: Go is required to build the test control plane (apt-get install golang-go, or Go >= 1.26)" >&2
    exit 1
fi

# build MODULE_DIR DEST_DIR LDFLAGS: `go build` of every tool of the builder module.
build() {
    local module="$1" dest="$2" ldflags="$3"
    mkdir -p "$dest.tmp"
    (cd "$ROOT/tests/k8s/$module" && go build -trimpath -ldflags="$ldflags" -o "$dest.tmp/" tool)
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
}

# need NAME VERSION_DIR BINARIES...: builds the module NAME into VERSION_DIR unless every
# binary is there, then links each into tests/.tools/bin.
need() {
    local module="$1" dir="$2"
    shift 2
    local missing=0
    for b in "$@"; do [ -e "$dir/$b" ] || missing=1; done
    if [ "$missing" = 1 ]; then
        local started=$SECONDS
        echo "install-deps: building $module ($(basename "$dir")) from the Go module proxy"
        case "$module" in
        kubernetes | node)
            local major minor flags=""
            major="${K8S_VERSION#v}"; major="${major%%.*}"
            minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
            for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
                flags="$flags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major"
                flags="$flags -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
                flags="$flags -X $pkg.buildDate=1970-01-01T00:00:00Z"
            done
            build "$module" "$dir" "-s -w$flags"
            ;;
        etcd) build etcd "$dir" "-s -w" ;;
        kwok)
            build kwok "$dir" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
            # kwok's own "fast" Stages (what `kwokctl` installs): nodes turn Ready and keep
            # a lease, pods turn Running and Ready, deleted pods go away.
            local src
            src="$(cd "$ROOT/tests/k8s/kwok" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
                | awk -F'"' '$2 == "Dir" {print $4}')"
            for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
                pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
                echo "---"
                cat "$src/kustomize/stage/$f"
            done > "$dir/stages.yaml"
            ;;
        esac
        # `go build` names the etcd binary after its package directory.
        [ "$module" != etcd ] || [ -x "$dir/etcd" ] || mv "$dir/server" "$dir/etcd"
        echo "install-deps: built $module in $((SECONDS - started)) s"
    fi
    mkdir -p "$BIN"
    for b in "$@"; do ln -sfn "$dir/$b" "$BIN/$b"; done
}

need kubernetes "$TOOLS/k8s/kubernetes-$K8S_VERSION" kube-apiserver kube-controller-manager kube-scheduler kubectl
need etcd "$TOOLS/k8s/etcd-$ETCD_VERSION" etcd
need kwok "$TOOLS/k8s/kwok-$KWOK_VERSION" kwok stages.yaml
# The real node (tests/kit/src/node.rs): kubelet and kube-proxy of the control plane's
# release, from their own builder module so the control plane's cache stays valid.
NODE_VERSION="$(pinned node k8s.io/kubernetes)"
[ "$NODE_VERSION" = "$K8S_VERSION" ] || { echo "install-deps: tests/k8s/node pins $NODE_VERSION, the control plane $K8S_VERSION" >&2; exit 1; }
need node "$TOOLS/k8s/node-$NODE_VERSION" kubelet kube-proxy
