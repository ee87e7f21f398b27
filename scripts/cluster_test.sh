#!/usr/bin/env bash
# `make cluster-test`: installs what the rehearsal needs, then runs it
# (scripts/cluster_test.py: the image build and the rendered k8s/ commands in
# podman containers). `make gpu-image` runs scripts/gpu_image.py the same way
# (SCRIPT=scripts/gpu_image.py; it needs no kubectl). Debian/Ubuntu, as root: the containers use rootful
# podman, for static addresses on a private network.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SCRIPT=${SCRIPT:-scripts/cluster_test.py}

log() { printf '[cluster-test] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "error: run as root (rootful podman)"; exit 1; }
# podman and its helpers; runc because crun cannot set rlimits on these
# machines; mmdebstrap makes the base image when the registry cannot be reached.
packages=(podman buildah mmdebstrap uidmap fuse-overlayfs slirp4netns runc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ "$SCRIPT" != scripts/cluster_test.py ] || command -v kubectl >/dev/null || { log "error: kubectl (with kustomize) not found; install it from https://kubernetes.io/docs/tasks/tools/"; exit 1; }
exec "$PY" "$SCRIPT" "$@"
