#!/usr/bin/env bash
# Installs every tool the test suite and the benchmark drive, idempotently.
# Debian packages come from apt; crane and the OCI conformance suite are built
# from the Go module proxy once and cached under $MOORAGE_TOOLS (outside the
# work tree, so a fresh clone on the same machine reuses them).
set -euo pipefail

TOOLS="${MOORAGE_TOOLS:-/var/cache/moorage-tools}"
CRANE_VERSION="v0.20.2"
COSIGN_VERSION="v2.6.5"
# distribution-spec v1.1.1 is tagged on the repository, not on the conformance
# module. The module proxy here refuses the pseudo-versions of the v1.1.1 commit
# (a139cc4) and of every commit whose conformance/ tree equals it; the newest
# pre-redesign version it serves is the v1.1.0 one below. See docs/conformance.md.
CONFORMANCE_VERSION="v0.0.0-20231101194043-f2182352d4cc"
# The newest version the proxy serves (its @latest; the proxy refuses the
# pseudo-versions of later main-branch commits): the post-v1.1.1 redesign, a
# program rather than a Ginkgo test, run beside the one above as conformance-latest.
CONFORMANCE_LATEST_VERSION="v0.0.0-20260831232431-97274622c111"
# SeaweedFS: the real S3 server the S3 driver's tests and benchmark run against
# (`weed mini`: master, volume, filer and S3 gateway in one process).
SEAWEEDFS_VERSION="v0.0.0-20261109003541-7506e5f91cd6"
SEAWEEDFS_TAG="${SEAWEEDFS_VERSION##*-}"
# CNCF Distribution v3, the current peer the S3 benchmark compares against.
DISTRIBUTION_VERSION="v3.1.2"
# PostgreSQL, HAProxy and Redis: the replica tests start their own, as an unprivileged
# user where needed (no service manager runs them).
DEBIAN_PACKAGES=(skopeo podman buildah docker-registry wrk apache2-utils nginx-light gnupg
  postgresql haproxy redis-server
  debootstrap rpm)

mkdir -p "$TOOLS/bin" "$TOOLS/build"

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export GOFLAGS="-mod=mod"
export GOPATH="${GOPATH:-$TOOLS/gopath}"
export GOCACHE="${GOCACHE:-$TOOLS/gocache}"

if [ ! -x "$TOOLS/bin/crane-$CRANE_VERSION" ]; then
  echo "building crane $CRANE_VERSION"
  GOBIN="$TOOLS/build" go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
  mv "$TOOLS/build/crane" "$TOOLS/bin/crane-$CRANE_VERSION"
fi
ln -sf "crane-$CRANE_VERSION" "$TOOLS/bin/crane"

if [ ! -x "$TOOLS/bin/cosign-$COSIGN_VERSION" ]; then
  echo "building cosign $COSIGN_VERSION (a few minutes, once)"
  GOBIN="$TOOLS/build" go install "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION"
  mv "$TOOLS/build/cosign" "$TOOLS/bin/cosign-$COSIGN_VERSION"
fi
ln -sf "cosign-$COSIGN_VERSION" "$TOOLS/bin/cosign"

if [ ! -x "$TOOLS/bin/conformance-$CONFORMANCE_VERSION.test" ]; then
  echo "building the OCI conformance suite at $CONFORMANCE_VERSION"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (
    cd "$work"
    go mod init moorage.local/conformance >/dev/null 2>&1
    go get "github.com/opencontainers/distribution-spec/conformance@$CONFORMANCE_VERSION" >/dev/null
    go test -c -o "$TOOLS/bin/conformance-$CONFORMANCE_VERSION.test" github.com/opencontainers/distribution-spec/conformance
  )
fi
ln -sf "conformance-$CONFORMANCE_VERSION.test" "$TOOLS/bin/conformance.test"

if [ ! -x "$TOOLS/bin/conformance-$CONFORMANCE_LATEST_VERSION" ]; then
  echo "building the newest OCI conformance suite at $CONFORMANCE_LATEST_VERSION"
  latest_work="$(mktemp -d)"
  (
    cd "$latest_work"
    go mod init moorage.local/conformance-latest >/dev/null 2>&1
    go get "github.com/opencontainers/distribution-spec/conformance@$CONFORMANCE_LATEST_VERSION" >/dev/null
    go build -o "$TOOLS/build/conformance-latest" github.com/opencontainers/distribution-spec/conformance
  )
  rm -rf "$latest_work"
  mv "$TOOLS/build/conformance-latest" "$TOOLS/bin/conformance-$CONFORMANCE_LATEST_VERSION"
fi
ln -sf "conformance-$CONFORMANCE_LATEST_VERSION" "$TOOLS/bin/conformance-latest"

if [ ! -x "$TOOLS/bin/weed-$SEAWEEDFS_TAG" ]; then
  echo "building SeaweedFS $SEAWEEDFS_VERSION (about five minutes, once)"
  weed_work="$(mktemp -d)"
  (
    cd "$weed_work"
    go mod init moorage.local/seaweedfs >/dev/null 2>&1
    go get "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" >/dev/null
    go build -o "$TOOLS/build/weed" github.com/seaweedfs/seaweedfs/weed
  )
  rm -rf "$weed_work"
  mv "$TOOLS/build/weed" "$TOOLS/bin/weed-$SEAWEEDFS_TAG"
fi
ln -sf "weed-$SEAWEEDFS_TAG" "$TOOLS/bin/weed"

if [ ! -x "$TOOLS/bin/distribution-$DISTRIBUTION_VERSION" ]; then
  echo "building CNCF Distribution $DISTRIBUTION_VERSION"
  GOBIN="$TOOLS/build" go install "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION"
  mv "$TOOLS/build/registry" "$TOOLS/bin/distribution-$DISTRIBUTION_VERSION"
fi

# va-sbom: the oras CLI reads the SBOM referrers back (`oras discover`, `oras pull`).
ORAS_VERSION="v1.3.6"
if [ ! -x "$TOOLS/bin/oras-$ORAS_VERSION" ]; then
  echo "building oras $ORAS_VERSION"
  GOBIN="$TOOLS/build" go install "oras.land/oras/cmd/oras@$ORAS_VERSION"
  mv "$TOOLS/build/oras" "$TOOLS/bin/oras-$ORAS_VERSION"
fi
ln -sf "oras-$ORAS_VERSION" "$TOOLS/bin/oras"
# --- va-os: a real Debian root file system for the Advisor's dpkg tests
# (tests/va_layers.py builds the same one, the same way, when it is missing).
DEBIAN_ROOT="$TOOLS/debootstrap-bookworm"
if [ ! -f "$DEBIAN_ROOT/var/lib/dpkg/status" ]; then
  echo "building a Debian bookworm root with debootstrap (a minute or more, once)"
  rm -rf "$DEBIAN_ROOT.tmp"
  debootstrap --variant=minbase bookworm "$DEBIAN_ROOT.tmp" >/dev/null
  mv "$DEBIAN_ROOT.tmp" "$DEBIAN_ROOT"
fi
# --- the Advisor's oracles (va-oracle) -------------------------------------
# osv-scanner scans the labelled images offline from the same advisory records
# Moorage imports (tests/test_va_oracle.py); syft writes the SBOMs Moorage's are
# compared with. osv-scanner v2.6.0 needs Go 1.27, which GOTOOLCHAIN fetches
# from the module proxy; syft's version is the newest the proxy serves.
OSV_SCANNER_VERSION="v2.6.0"
OSV_SCANNER_GO="go1.27.3"
SYFT_VERSION="v1.57.2"

if [ ! -x "$TOOLS/bin/osv-scanner-$OSV_SCANNER_VERSION" ]; then
  echo "building osv-scanner $OSV_SCANNER_VERSION (a few minutes, once)"
  GOTOOLCHAIN="$OSV_SCANNER_GO" GOBIN="$TOOLS/build" \
    go install "github.com/google/osv-scanner/v2/cmd/osv-scanner@$OSV_SCANNER_VERSION"
  mv "$TOOLS/build/osv-scanner" "$TOOLS/bin/osv-scanner-$OSV_SCANNER_VERSION"
fi
ln -sf "osv-scanner-$OSV_SCANNER_VERSION" "$TOOLS/bin/osv-scanner"

if [ ! -x "$TOOLS/bin/syft-$SYFT_VERSION" ]; then
  echo "building syft $SYFT_VERSION (a few minutes, once)"
  GOBIN="$TOOLS/build" go install "github.com/anchore/syft/cmd/syft@$SYFT_VERSION"
  mv "$TOOLS/build/syft" "$TOOLS/bin/syft-$SYFT_VERSION"
fi
ln -sf "syft-$SYFT_VERSION" "$TOOLS/bin/syft"

# va-lang: cargo auditable, to build the Rust binary whose embedded dependency
# list (.dep-v0) the Rust detector's tests read. Built from crates once.
CARGO_AUDITABLE_VERSION="0.7.7"
if ! cargo install --list --root "$TOOLS/cargo-auditable" 2>/dev/null \
  | grep -q "^cargo-auditable v$CARGO_AUDITABLE_VERSION:"; then
  echo "building cargo-auditable $CARGO_AUDITABLE_VERSION"
  cargo install --locked --root "$TOOLS/cargo-auditable" "cargo-auditable@$CARGO_AUDITABLE_VERSION"
fi
ln -sf "../cargo-auditable/bin/cargo-auditable" "$TOOLS/bin/cargo-auditable"

echo "test tools ready in $TOOLS/bin"
