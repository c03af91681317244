#!/usr/bin/env bash
# `make image`: the project's images, built here with podman, where no image can be pulled:
#   localhost/fleet-dispatch-base:bookworm-<key>  Debian bookworm (debootstrap, minbase) with Python 3.11, imported
#   localhost/fleet-dispatch:dev                  the Dockerfile, built FROM that base (BASE_IMAGE build argument),
#                                                 also tagged localhost/fleet-dispatch:<appVersion> and, as the
#                                                 Dockerfile's header builds it, ghcr.io/fleet-dispatch/fleet-dispatch:
#                                                 <appVersion> (the chart's and the operator's default image: never
#                                                 pulled here, it is this build)
#   localhost/fleet-dispatch-session:dev          the examples' session image: Debian's static busybox alone, also
#                                                 tagged docker.io/library/busybox:1.36 (what examples/ name)
#   localhost/fleet-dispatch-pause:dev            the pod sandbox (scripts/pause/, built with Go)
# and each saved as a docker-archive in .tools/images/<name>.tar, which `fleetdispatch dev --runtime containers`
# imports into containerd. Cached: each image is keyed by a hash of what goes into it (the base by its suite,
# packages and this script's base section; the project image by the Dockerfile, the build context and the
# base), so a second run with nothing changed builds nothing and saves nothing.
# Needs root, podman and debootstrap (`scripts/install-tools.sh containers` installs them), and the network to
# Debian's mirror (DEBIAN_MIRROR) and to PyPI (the Dockerfile's pip install).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGES="$ROOT/.tools/images"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
BASE_REPOSITORY=localhost/fleet-dispatch-base
PROJECT_IMAGE=localhost/fleet-dispatch:dev
APP_VERSION=$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/fleet-dispatch/Chart.yaml")
PROJECT_RELEASE_IMAGE="localhost/fleet-dispatch:$APP_VERSION"
PROJECT_PUBLISHED_IMAGE="ghcr.io/fleet-dispatch/fleet-dispatch:$APP_VERSION"
SESSION_IMAGE=localhost/fleet-dispatch-session:dev
SESSION_ALIAS=docker.io/library/busybox:1.36
PAUSE_IMAGE=localhost/fleet-dispatch-pause:dev
# podman refuses to start a container here with its default ulimits (the VM's hard limits are lower).
export CONTAINERS_CONF="$IMAGES/containers.conf"

die() { echo "images: error: $*" >&2; exit 1; }
say() { echo "images: $*" >&2; }
key() { sha256sum | cut -c1-16; }
image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

[[ $(id -u) == 0 ]] || die "run as root (podman and debootstrap build root filesystems)"
for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-tools.sh containers"
done
[[ -x /bin/busybox ]] && /bin/busybox --list | grep -qx sh ||
  die "/bin/busybox (Debian's busybox-static) is missing: run scripts/install-tools.sh containers"
mkdir -p "$IMAGES"
printf '[containers]\ndefault_ulimits = []\n' >"$IMAGES/containers.conf"

# save NAME IMAGE...: the images as one docker-archive $IMAGES/NAME.tar, unless it holds these image IDs already.
save() {
  local name=$1 ids
  shift
  ids=$(for image in "$@"; do echo "$image $(image_id "$image")"; done)
  if [[ -f "$IMAGES/$name.tar" && "$(cat "$IMAGES/$name.ids" 2>/dev/null)" == "$ids" ]]; then
    return 0
  fi
  rm -f "$IMAGES/$name.tar" "$IMAGES/$name.ids"
  podman save --quiet --multi-image-archive --format docker-archive -o "$IMAGES/.$name.tar.$$" "$@"
  mv "$IMAGES/.$name.tar.$$" "$IMAGES/$name.tar"
  echo "$ids" >"$IMAGES/$name.ids"
  say "saved $* to $IMAGES/$name.tar"
}

# import_rootfs DIR IMAGE CHANGE...: DIR as a one-layer image (owners kept numerically).
import_rootfs() {
  local dir=$1 image=$2 change=()
  shift 2
  for instruction in "$@"; do change+=(--change "$instruction"); done
  tar --numeric-owner -C "$dir" -c . | podman import --quiet "${change[@]}" - "$image" >/dev/null
}

trap 'rm -rf "$IMAGES"/.*.$$' EXIT
started=$SECONDS

# base:begin (this section is part of the base's key)
base_key=$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" "$(sed -n '/^# base:begin/,/^# base:end/p' "$0")" | key)
BASE_IMAGE="$BASE_REPOSITORY:$SUITE-$base_key"
if [[ -z "$(image_id "$BASE_IMAGE")" ]]; then
  say "debootstrapping Debian $SUITE with $BASE_PACKAGES from $MIRROR"
  rootfs="$IMAGES/.rootfs.$$"
  mkdir -p "$IMAGES/debootstrap-cache"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" --cache-dir="$IMAGES/debootstrap-cache" \
    "$SUITE" "$rootfs" "$MIRROR" >"$IMAGES/debootstrap.log" 2>&1 ||
    die "debootstrap failed: see $IMAGES/debootstrap.log"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log
  import_rootfs "$rootfs" "$BASE_IMAGE" \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'CMD ["python3"]'
  rm -rf "$rootfs"
  say "built $BASE_IMAGE"
fi
# base:end

# The project image: keyed by the Dockerfile, the build context (.dockerignore's allow-list) and the base.
context_key=$(
  cd "$ROOT"
  {
    cat Dockerfile .dockerignore
    image_id "$BASE_IMAGE"
    find pyproject.toml README.md operator crds -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
      ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum
  } | key
)
if [[ -z "$(image_id "$PROJECT_IMAGE")" ||
  "$(podman image inspect --format '{{index .Labels "dev.fleet-dispatch.context"}}' "$PROJECT_IMAGE")" != "$context_key" ]]; then
  say "building $PROJECT_IMAGE from the Dockerfile on $BASE_IMAGE"
  # The build reaches PyPI through this machine's route: the host's CA bundle and pip settings are mounted
  # for the RUN steps only (nothing of them is kept in the image).
  mounts=()
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] &&
    mounts+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  [[ -f /etc/pip.conf ]] && mounts+=(--volume /etc/pip.conf:/etc/pip.conf:ro)
  # --layers=false: every layer after COPY operator/ changes with the context anyway, and no intermediate
  # images pile up; the image it replaces is removed below.
  podman build --quiet --network host --layers=false "${mounts[@]}" --build-arg "BASE_IMAGE=$BASE_REPOSITORY" \
    --build-arg "BASE_TAG=${BASE_IMAGE#"$BASE_REPOSITORY":}" \
    --label "dev.fleet-dispatch.context=$context_key" -t "$PROJECT_IMAGE" -f "$ROOT/Dockerfile" "$ROOT" >/dev/null
  podman run --rm --network none "$PROJECT_IMAGE" --help >/dev/null || die "$PROJECT_IMAGE does not run 'fleetdispatch --help'"
  podman image prune --force --filter label=dev.fleet-dispatch.context >/dev/null
  say "built $PROJECT_IMAGE"
fi

# The session image: busybox's applets as links to the one static binary, a /tmp, nothing else.
session_key=$(
  {
    sha256sum /bin/busybox
    sed -n '/^# session:begin/,/^# session:end/p' "$0"
  } | key
)
# session:begin
if [[ "$(podman image inspect --format '{{index .Labels "dev.fleet-dispatch.context"}}' "$SESSION_IMAGE" 2>/dev/null)" != "$session_key" ]]; then
  rootfs="$IMAGES/.session.$$"
  mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] || ln -s busybox "$rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
  import_rootfs "$rootfs" "$SESSION_IMAGE" 'ENV PATH=/bin' 'CMD ["sh"]' \
    "LABEL dev.fleet-dispatch.context=$session_key"
  rm -rf "$rootfs"
  podman tag "$SESSION_IMAGE" "$SESSION_ALIAS"
  say "built $SESSION_IMAGE (also $SESSION_ALIAS): busybox $(/bin/busybox | sed -n '1s/^BusyBox v\([^ ]*\).*/\1/p')"
fi
# session:end

# The pause image: scripts/pause/ built statically.
pause_key=$(cat "$ROOT/scripts/pause/main.go" "$ROOT/scripts/pause/go.mod" | key)
if [[ "$(podman image inspect --format '{{index .Labels "dev.fleet-dispatch.context"}}' "$PAUSE_IMAGE" 2>/dev/null)" != "$pause_key" ]]; then
  command -v go >/dev/null || die "Go is needed to build the pause image (scripts/pause/)"
  rootfs="$IMAGES/.pause.$$"
  mkdir -p "$rootfs"
  (cd "$ROOT/scripts/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$rootfs/pause" .)
  import_rootfs "$rootfs" "$PAUSE_IMAGE" 'ENTRYPOINT ["/pause"]' "LABEL dev.fleet-dispatch.context=$pause_key"
  rm -rf "$rootfs"
  say "built $PAUSE_IMAGE"
fi

podman tag "$PROJECT_IMAGE" "$PROJECT_RELEASE_IMAGE" "$PROJECT_PUBLISHED_IMAGE"
save fleet-dispatch "$PROJECT_IMAGE" "$PROJECT_RELEASE_IMAGE" "$PROJECT_PUBLISHED_IMAGE"
save session "$SESSION_IMAGE" "$SESSION_ALIAS"
save pause "$PAUSE_IMAGE"
say "images ready in $((SECONDS - started)) s: $PROJECT_IMAGE ($PROJECT_RELEASE_IMAGE, $PROJECT_PUBLISHED_IMAGE), $SESSION_IMAGE ($SESSION_ALIAS), $PAUSE_IMAGE"
