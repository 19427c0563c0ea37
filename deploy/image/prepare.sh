#!/usr/bin/env bash
# Prepare this machine to build and run the pete-serve image without a docker daemon: podman,
# buildah, mmdebstrap and runc from Debian; a containers.conf for machines whose defaults fail; the
# base image (FROM python:3.11-slim) bootstrapped from Debian's packages and imported under that
# name. Idempotent: each step is skipped when already done. Needs root and apt-get.
#
#   deploy/image/prepare.sh           # exit 0: podman can build; exit 3: cannot here (reason on stderr)
set -euo pipefail

BASE_IMAGE="docker.io/library/python:3.11-slim"
SUITE="${PETE_IMAGE_DEBIAN_SUITE:-bookworm}"     # its python3 is 3.11, as the Dockerfile expects
CONF=/etc/containers/containers.conf
MARK="# pete-serve: deploy/image/prepare.sh"

cannot() { echo "deploy/image/prepare.sh: $*" >&2; exit 3; }

if ! command -v podman >/dev/null || ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null \
   || ! command -v runc >/dev/null; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || cannot "podman/buildah/mmdebstrap/runc missing and not root with apt-get"
  echo "installing podman, buildah, mmdebstrap, runc (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends podman buildah mmdebstrap runc \
      uidmap fuse-overlayfs slirp4netns netavark aardvark-dns >/dev/null; } || cannot "apt-get install failed"
fi

# Machine-specific: crun (podman's default runtime here) and the default ulimits failed on these
# machines, and the CNI plugins are not installed; runc, explicit ulimits and netavark work. Only
# written when no containers.conf exists or it is ours.
if [ ! -f "$CONF" ] || grep -qF "$MARK" "$CONF"; then
  mkdir -p "$(dirname "$CONF")"
  cat > "$CONF" <<CONF
$MARK
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
CONF
fi

if ! podman image exists "$BASE_IMAGE"; then
  echo "bootstrapping the base image $BASE_IMAGE from Debian $SUITE (python3, venv, pip, ca-certificates)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    --aptopt='Acquire::Retries "3"' --dpkgopt='path-exclude=/usr/share/{doc,man,locale}/*' \
    "$SUITE" "$tmp/rootfs.tar" || cannot "mmdebstrap failed"
  podman import --quiet --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$tmp/rootfs.tar" "$BASE_IMAGE" >/dev/null
fi
podman --version
