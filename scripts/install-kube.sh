#!/usr/bin/env bash
# Builds the real Kubernetes pieces the tests run: kube-apiserver and kubectl
# from k8s.io/kubernetes, and etcd from go.etcd.io/etcd/server, each through a
# small wrapper module (k8s.io/kubernetes points its staging modules at local
# paths, so `go install` of it fails; the wrapper pins each to its release).
# Cached under $MOORAGE_TOOLS; a second run does nothing.
set -euo pipefail

TOOLS="${MOORAGE_TOOLS:-/var/cache/moorage-tools}"
KUBE_VERSION="v1.37.2"
STAGING_VERSION="v0.37.2"
ETCD_VERSION="v3.6.16"

export GOPATH="${GOPATH:-$TOOLS/gopath}"
export GOCACHE="${GOCACHE:-$TOOLS/gocache}"
export GOFLAGS="-mod=mod"
mkdir -p "$TOOLS/bin"

if [ ! -x "$TOOLS/bin/kube-apiserver-$KUBE_VERSION" ] || [ ! -x "$TOOLS/bin/kubectl-$KUBE_VERSION" ]; then
  echo "building kube-apiserver and kubectl $KUBE_VERSION (minutes on two cores, once)"
  work="$(mktemp -d)"
  (
    cd "$work"
    go mod init moorage.local/kube >/dev/null 2>&1
    gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
    # Every staging module k8s.io/kubernetes replaces with ./staging/... gets its release.
    grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$gomod" | awk '{print $1}' | sort -u |
      while read -r module; do
        go mod edit -replace "$module=$module@$STAGING_VERSION"
      done
    go mod edit -require "k8s.io/kubernetes@$KUBE_VERSION"
    go build -o "$TOOLS/bin/kube-apiserver-$KUBE_VERSION" k8s.io/kubernetes/cmd/kube-apiserver
    go build -o "$TOOLS/bin/kubectl-$KUBE_VERSION" k8s.io/kubernetes/cmd/kubectl
  )
  rm -rf "$work"
fi
ln -sf "kube-apiserver-$KUBE_VERSION" "$TOOLS/bin/kube-apiserver"
ln -sf "kubectl-$KUBE_VERSION" "$TOOLS/bin/kubectl"

if [ ! -x "$TOOLS/bin/etcd-$ETCD_VERSION" ]; then
  echo "building etcd $ETCD_VERSION"
  work="$(mktemp -d)"
  (
    cd "$work"
    go mod init moorage.local/etcd >/dev/null 2>&1
    cat > main.go <<'GO'
// The etcd server binary, built from the etcd server module's own entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    go mod tidy >/dev/null
    go build -o "$TOOLS/bin/etcd-$ETCD_VERSION" .
  )
  rm -rf "$work"
fi
ln -sf "etcd-$ETCD_VERSION" "$TOOLS/bin/etcd"
echo "kubernetes tools ready in $TOOLS/bin"
