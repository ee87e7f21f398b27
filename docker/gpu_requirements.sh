#!/usr/bin/env bash
# Turns the image's copy of requirements.txt into the GPU one, for docker/Dockerfile:
# `tensorflow-cpu==X` becomes `tensorflow[and-cuda]==X` (the same TensorFlow
# release with its CUDA libraries from pip), and docker/constraints-gpu.txt pins
# those libraries. Every other pin stays as in requirements.txt/constraints.txt,
# so scripts/install.sh then installs the same set as `make install` does.
# Run from anywhere, after each COPY that brings requirements.txt back.
set -euo pipefail
cd "$(dirname "$0")/.."

if grep -q '^tensorflow\[and-cuda\]==' requirements.txt; then
  exit 0  # already rewritten
fi
grep -q '^tensorflow-cpu==' requirements.txt || {
  echo "docker/gpu_requirements.sh: no 'tensorflow-cpu==' line in requirements.txt to replace" >&2
  exit 1
}
sed -i 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' requirements.txt
printf '%s\n' '# Added by docker/gpu_requirements.sh (GPU image only).' \
  '-c docker/constraints-gpu.txt' >> requirements.txt
