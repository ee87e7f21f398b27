"""Installs the pipeline's packages (preprocess, pipeline, trainers) in development mode.

Dependencies are pinned in requirements.txt and installed by `make install`,
which also builds Horovod from source against the installed TensorFlow; see
scripts/install.sh and the README for why that cannot be a plain pip dependency.
"""

import setuptools

setuptools.setup(
  name="cnn-pipeline",
  version="0.1.0",
  description=(
    "Beam-to-TFRecord preprocessing and Horovod/TensorFlow trainers "
    "for the classic CNN recipes (CIFAR-10, MNIST, ResNet, LeNet-5)."
  ),
  packages=setuptools.find_packages(include=["preprocess", "pipeline", "trainers"]),
  # 3.11 on the development machines (bookworm); 3.13 in the GPU image (Debian
  # trixie, the release that carries the CUDA toolkit: docker/Dockerfile).
  python_requires=">=3.11,<3.14",
)
