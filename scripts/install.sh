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
# Python 3.11 on the development machines; the GPU image passes python3.13
# (Debian trixie's, the release that carries the CUDA toolkit).
PYTHON=${PYTHON:-python3.11}
# The compiler of the Horovod build. The GPU image sets g++-13: Horovod makes the
# C++ compiler nvcc's host compiler too, and nvcc 12.4 rejects GCC 14.
CXX=${CXX:-g++}
VENV=.venv
HOROVOD_VERSION=0.28.1
WHEELS=.cache/wheels

log() { printf '[install] %s\n' "$*" >&2; }

command -v "$PYTHON" >/dev/null || { log "error: $PYTHON not found; install Python 3.11 (3.13 for the GPU image) first"; exit 1; }
# Horovod's build needs a C++ compiler and make (cmake comes from pip, below).
# Missing ones are installed with apt-get where that is possible (as root on
# Debian/Ubuntu); otherwise the script names them and stops.
missing=()
for tool in "$CXX" make; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "${missing[*]} not found; installing with apt-get (needed to build Horovod)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "error: ${missing[*]} not found; install ${missing[*]} (Debian/Ubuntu: apt-get install ${missing[*]}), then re-run"
    exit 1
  fi
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
  # The cache (a cache mount in the images) can hold wheels of other Pythons.
  py_tag=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  wheel=$(ls "$wheel_dir"/horovod-"$HOROVOD_VERSION"-"$py_tag"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    build=$(mktemp -d)
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
    # GPU builds: NCCL is pip's (nvidia-nccl-cu12, which tensorflow[and-cuda]
    # installs and TensorFlow loads), linked as a shared library, so the image
    # carries one NCCL and Horovod is compiled against the version that runs.
    # The wheel ships only libnccl.so.2; the link step looks for libnccl.so.
    if [ "${HOROVOD_GPU_OPERATIONS:-}" = NCCL ]; then
      command -v patchelf >/dev/null || { log "error: patchelf not found (GPU build); apt-get install patchelf"; exit 1; }
      nccl=$("$PY" -c 'import importlib.util as u; print(u.find_spec("nvidia.nccl").submodule_search_locations[0])') \
        || { log "error: pip's nvidia-nccl-cu12 is not installed; is requirements.txt the GPU one (docker/gpu_requirements.sh)?"; exit 1; }
      mkdir -p "$build/nccl-lib"
      ln -s "$nccl/lib/libnccl.so.2" "$build/nccl-lib/libnccl.so"
      export HOROVOD_NCCL_INCLUDE="$nccl/include" HOROVOD_NCCL_LIB="$build/nccl-lib" HOROVOD_NCCL_LINK=SHARED
    fi
    # cmake is checked only now: it comes from pip (requirements.txt), into the venv.
    command -v cmake >/dev/null || { log "error: cmake not found in $VENV/bin or on PATH; is cmake in requirements.txt?"; exit 1; }
    log "building horovod against tensorflow $tf_version with Gloo${HOROVOD_GPU_OPERATIONS:+ and $HOROVOD_GPU_OPERATIONS} (3 to 8 minutes on 2 cores; longer with CUDA)"
    mkdir -p "$wheel_dir"
    # The log stays on failure: the first error of a CMake or compiler run is far
    # above the Python traceback at its end.
    # GCC 13 and later (the GPU image's g++-13) no longer pull <string>,
    # <stdexcept> and <cstdint> in through other standard headers, which some of
    # Horovod's files rely on (horovod/common/common.h, group_table.h): include
    # them first in every C++ file instead of patching each one. No effect on GCC 12.
    if ! CXX="$CXX" CXXFLAGS="${CXXFLAGS:-} -include string -include stdexcept -include cstdint" \
         HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
         HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
         "${PIP[@]}" wheel -v --no-deps --no-build-isolation -w "$wheel_dir" "$src" > "$build/build.log" 2>&1; then
      grep -n -m 20 -E 'error|Error|CMake Error|not found' "$build/build.log" >&2 || true
      tail -n 40 "$build/build.log" >&2
      log "error: horovod build failed; first errors and last lines above, whole log kept in $build/build.log"
      exit 1
    fi
    wheel=$(ls "$wheel_dir"/horovod-"$HOROVOD_VERSION"-"$py_tag"-*.whl | head -n 1)
    if [ "${HOROVOD_GPU_OPERATIONS:-}" = NCCL ]; then
      # Find libnccl.so.2 where pip puts it, next to horovod/ in site-packages,
      # instead of the build's temporary directory (CUDA's runtime is linked
      # statically, CMake's default for Horovod: nothing else to find).
      "$PY" -m wheel unpack -d "$build/unpacked" "$wheel" >/dev/null
      for lib in "$build"/unpacked/horovod-*/horovod/tensorflow/mpi_lib*.so; do
        patchelf --set-rpath '$ORIGIN/../../nvidia/nccl/lib' "$lib"
      done
      rm "$wheel"
      "$PY" -m wheel pack -d "$wheel_dir" "$build"/unpacked/horovod-* >/dev/null
      wheel=$(ls "$wheel_dir"/horovod-"$HOROVOD_VERSION"-"$py_tag"-*.whl | head -n 1)
    fi
    rm -rf "$build"
  fi
  log "installing $wheel"
  "${PIP[@]}" install -q --no-deps --force-reinstall "$wheel"
fi

# Verify: horovodrun must report TensorFlow and Gloo support.
check=$("$VENV/bin/horovodrun" --check-build 2>/dev/null)
for want in "TensorFlow" "Gloo" ${HOROVOD_GPU_OPERATIONS:+"$HOROVOD_GPU_OPERATIONS"}; do
  grep -q "\[X\] $want" <<<"$check" || { printf '%s\n' "$check" >&2; log "error: horovodrun --check-build does not list $want"; exit 1; }
done
log "ok: tensorflow $tf_version, horovod $HOROVOD_VERSION with TensorFlow and Gloo${HOROVOD_GPU_OPERATIONS:+ and $HOROVOD_GPU_OPERATIONS}"
