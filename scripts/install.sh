#!/usr/bin/env bash
# Creates .venv/ and installs everything the project needs, including Horovod
# 0.28.1 built from its PyPI source distribution against the installed
# TensorFlow, with Gloo (no MPI needed). Safe to re-run: each step checks
# whether its result is already in place.
#
# Why Horovod is built here and not listed in requirements.txt: as released,
# 0.28.1 does not compile against TensorFlow 2.21, because
# horovod/tensorflow/xla_mpi_ops.cc includes XLA headers that have moved. Those
# ops only matter for XLA on GPUs, so we delete the line that adds that file in
# horovod/tensorflow/CMakeLists.txt and build the rest. The wheel is kept in
# .cache/wheels/, keyed by the TensorFlow version, so reinstalls take seconds.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=.venv
HOROVOD_VERSION=0.28.1
WHEELS=.cache/wheels

log() { printf '[install] %s\n' "$*" >&2; }

command -v "$PYTHON" >/dev/null || { log "error: $PYTHON not found; install Python 3.11 first"; exit 1; }
if ! command -v g++ >/dev/null; then
  log "g++ not found; installing it with apt-get (needed to build Horovod)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi

[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
# cmake from pip lands in .venv/bin; Horovod's setup.py calls plain `cmake`.
export PATH="$PWD/$VENV/bin:$PATH"

log "installing pinned packages (requirements.txt, constraints.txt)"
"${PIP[@]}" install -q --upgrade "pip>=24" setuptools wheel
"${PIP[@]}" install -q -r requirements.txt -c constraints.txt
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .

tf_version=$("$PY" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)
horovod_ok() {
  "$PY" - <<PYEOF 2>/dev/null
import horovod, horovod.tensorflow
assert horovod.__version__ == "$HOROVOD_VERSION"
PYEOF
}

if horovod_ok; then
  log "horovod $HOROVOD_VERSION already installed"
else
  wheel_dir="$WHEELS/tf-$tf_version${HOROVOD_GPU_OPERATIONS:+-gpu}"  # GPU and CPU builds differ
  wheel=$(ls "$wheel_dir"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    log "fetching the horovod $HOROVOD_VERSION source distribution"
    "${PIP[@]}" download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$build"
    tar -xzf "$build/horovod-$HOROVOD_VERSION.tar.gz" -C "$build"
    src="$build/horovod-$HOROVOD_VERSION"
    cmakelists="$src/horovod/tensorflow/CMakeLists.txt"
    grep -q 'xla_mpi_ops.cc' "$cmakelists" || { log "error: expected xla_mpi_ops.cc in $cmakelists; the sdist changed"; exit 1; }
    sed -i '/xla_mpi_ops\.cc/d' "$cmakelists"
    # GPU builds only (HOROVOD_GPU_OPERATIONS=NCCL, docker/Dockerfile): the CUDA
    # code of the TensorFlow ops calls stream_executor::gpu::AsGpuStreamValue,
    # which TensorFlow 2.21 no longer exports, so importing the ops would fail
    # with an undefined symbol. Define it inline from Stream::platform_specific_handle().
    # CPU builds never compile that code.
    mpi_ops="$src/horovod/tensorflow/mpi_ops.cc"
    grep -q '^GpuStreamHandle AsGpuStreamValue(Stream\* stream);$' "$mpi_ops" \
      || { log "error: expected the AsGpuStreamValue declaration in $mpi_ops; the sdist changed"; exit 1; }
    sed -i -e '/^GpuStreamHandle AsGpuStreamValue(Stream\* stream);$/d' \
      -e '\|^#include "tensorflow/compiler/xla/stream_executor/stream.h"$|a\
namespace stream_executor { namespace gpu {\
inline GpuStreamHandle AsGpuStreamValue(Stream* stream) {\
  return static_cast<GpuStreamHandle>(stream->platform_specific_handle().stream);\
} } }' "$mpi_ops"
    log "building horovod against tensorflow $tf_version with Gloo (about 3 minutes on 2 cores)"
    mkdir -p "$wheel_dir"
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
      "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$wheel_dir" "$src" > "$build/build.log" 2>&1 \
      || { tail -n 40 "$build/build.log" >&2; log "error: horovod build failed (log above)"; exit 1; }
    wheel=$(ls "$wheel_dir"/horovod-"$HOROVOD_VERSION"-*.whl | head -n 1)
  fi
  log "installing $wheel"
  "${PIP[@]}" install -q --no-deps --force-reinstall "$wheel"
fi

# Verify: horovodrun must report TensorFlow and Gloo support.
check=$("$VENV/bin/horovodrun" --check-build 2>/dev/null)
for want in "TensorFlow" "Gloo"; do
  grep -q "\[X\] $want" <<<"$check" || { printf '%s\n' "$check" >&2; log "error: horovodrun --check-build does not list $want"; exit 1; }
done
log "ok: tensorflow $tf_version, horovod $HOROVOD_VERSION with TensorFlow and Gloo"
