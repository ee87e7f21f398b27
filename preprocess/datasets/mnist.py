"""MNIST: the data set spec.

Everything the project knows about MNIST by name: its raw file names (read
by the IDX format in preprocess/mnist.py), class names, the official files and
their checksums, the recipe's validation size, its augmentation, and the
sample-data generator (hand-drawn jittered strokes, one template per digit).
The registry (preprocess/datasets/__init__.py) finds this file.
"""

import math
import struct

import numpy as np
from PIL import Image, ImageDraw

from preprocess import atomic
from preprocess import download
from preprocess import mnist
from preprocess import sample_data
from preprocess.datasets import DatasetSpec, Sample, register

CLASS_NAMES = tuple(str(d) for d in range(10))
LAYOUT = mnist.IdxLayout(splits={
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
})


def _arc(cx, cy, rx, ry, start, end, n=14):
  """Points on an elliptic arc; angles in degrees, clockwise on screen (y down)."""
  a = np.radians(np.linspace(start, end, n))
  return list(zip(cx + rx * np.cos(a), cy + ry * np.sin(a)))


# Hand-drawn stroke templates in a unit box (x right, y down), one list of
# polylines per digit. Strokes instead of a font: FreeType renders differ across
# builds (the bytes must not), and jittered strokes look handwritten like MNIST.
_DIGIT_STROKES = {
    0: [_arc(0.5, 0.5, 0.3, 0.45, 0, 360, 24)],
    1: [[(0.32, 0.22), (0.52, 0.04), (0.52, 0.96)]],
    2: [_arc(0.5, 0.3, 0.3, 0.25, 180, 390) + [(0.16, 0.95), (0.86, 0.95)]],
    3: [_arc(0.5, 0.27, 0.28, 0.22, 200, 450), _arc(0.5, 0.72, 0.32, 0.24, -90, 160)],
    4: [[(0.66, 0.96), (0.66, 0.04), (0.12, 0.68), (0.9, 0.68)]],
    5: [[(0.8, 0.05), (0.3, 0.05), (0.25, 0.45)] + _arc(0.5, 0.67, 0.3, 0.28, 220, 520)],
    6: [_arc(0.74, 0.62, 0.52, 0.57, 262, 180), _arc(0.5, 0.7, 0.28, 0.25, 0, 360, 20)],
    7: [[(0.14, 0.05), (0.86, 0.05), (0.42, 0.96)]],
    8: [_arc(0.5, 0.27, 0.24, 0.22, 0, 360, 20), _arc(0.5, 0.72, 0.3, 0.24, 0, 360, 20)],
    9: [_arc(0.5, 0.3, 0.28, 0.26, 0, 360, 20), [(0.78, 0.3), (0.76, 0.6), (0.68, 0.96)]],
}
_MNIST_SIZE = 28
_MNIST_SUPERSAMPLE = 4  # Drawn 4x larger and box-filtered, for MNIST's soft edges.


def _mnist_image(rng, digit):
  """Draws one 28x28 uint8 digit: white-ish strokes on a black (0) background."""
  size = _MNIST_SIZE * _MNIST_SUPERSAMPLE
  height = rng.uniform(15, 20) * _MNIST_SUPERSAMPLE  # MNIST digits fit a 20x20 box.
  width = height * rng.uniform(0.6, 0.85)
  angle = math.radians(rng.uniform(-15, 15))
  shear = rng.uniform(-0.3, 0.3)  # Handwriting slant.
  wobble_amp = rng.uniform(0, 0.04)
  wobble_freq = rng.uniform(0.5, 1.5)
  wobble_phase = rng.uniform(0, 2 * math.pi)
  polylines = []
  for stroke in _DIGIT_STROKES[digit]:
    pts = np.array(stroke, np.float64) - 0.5
    pts[:, 0] += wobble_amp * np.sin(2 * math.pi * wobble_freq * pts[:, 1] + wobble_phase)
    pts += rng.normal(0, 0.012, size=pts.shape)
    x, y = pts[:, 0] * width, pts[:, 1] * height
    x = x - shear * y
    polylines.append(np.stack([x * math.cos(angle) - y * math.sin(angle),
                               x * math.sin(angle) + y * math.cos(angle)], axis=1))
  # Centre the digit's bounding box, then shift a little, as MNIST's centring
  # by centre of mass leaves digits slightly off the box centre.
  allpts = np.concatenate(polylines)
  offset = (size / 2 - (allpts.min(0) + allpts.max(0)) / 2
            + rng.uniform(-1.5, 1.5, size=2) * _MNIST_SUPERSAMPLE)
  thickness = rng.uniform(1.6, 3.2) * _MNIST_SUPERSAMPLE
  canvas = Image.new("L", (size, size), 0)
  draw = ImageDraw.Draw(canvas)
  for line in polylines:
    pts = [tuple(p) for p in (line + offset)]
    draw.line(pts, fill=255, width=int(round(thickness)))
    # A round pen: a dot on every vertex rounds the joins and the ends (and is
    # several times faster than Pillow's joint="curve").
    r = thickness / 2
    for x, y in pts:
      draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
  image = np.asarray(canvas.resize((_MNIST_SIZE, _MNIST_SIZE), Image.Resampling.BOX), np.float32)
  ink = image > 0
  # Pen pressure and light noise on the strokes only: MNIST backgrounds are exact 0.
  image = image * rng.uniform(0.85, 1.1) + ink * rng.normal(0, 10, size=image.shape)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _write_sample(root, train_per_class, test_per_class, rng_for_split):
  """Writes the gzipped IDX images and labels files of both splits."""
  seen = set()
  files = []
  counts = {}
  for split, per_class in (("train", train_per_class), ("test", test_per_class)):
    rng = rng_for_split(split)
    labels = sample_data.balanced_labels(rng, 10, per_class)
    images = np.stack([sample_data.unique(lambda: _mnist_image(rng, int(d)), seen) for d in labels])
    n = len(labels)
    image_name, label_name = (f"{base}.gz" for base in LAYOUT.splits[split])
    files += [root / image_name, root / label_name]
    image_header = struct.pack(">iiii", mnist.IMAGES_MAGIC, n, _MNIST_SIZE, _MNIST_SIZE)
    atomic.write_bytes(files[-2], sample_data.gzip_bytes(image_header + images.tobytes()))
    label_header = struct.pack(">ii", mnist.LABELS_MAGIC, n)
    atomic.write_bytes(files[-1], sample_data.gzip_bytes(label_header + labels.astype(np.uint8).tobytes()))
    counts[split] = n
  return {"root": root, "counts": counts, "files": files}


# Sizes and SHA-256 digests from the TensorFlow Datasets catalogue
# (tensorflow_datasets/url_checksums/mnist.txt); see preprocess/download.py.
_MIRRORS = (
    # What the TFDS `mnist` catalogue downloads; yann.lecun.com often fails.
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    # torchvision's mirror, then the original site. Same bytes: the digests
    # decide, not the host.
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)
_DIGESTS = {
    "train-images-idx3-ubyte": (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte": (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte": (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte": (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}

SPEC = register(DatasetSpec(
    name="mnist",
    description="MNIST: 60,000 train and 10,000 test 28x28 grayscale digits (IDX files)",
    class_names=CLASS_NAMES,
    layout=LAYOUT,
    sources=tuple(download.mirrored(f"{base}.gz", _MIRRORS, size=_DIGESTS[base][0],
                                    sha256=_DIGESTS[base][1])
                  for split in ("train", "test") for base in LAYOUT.splits[split]),
    # The recipes hold out the first 5,000 training images for validation.
    validation_size=5000,
    augmentation={
        "train": [{"op": "scale", "factor": 1.0 / 255.0}],
        "eval": [{"op": "scale", "factor": 1.0 / 255.0}],
    },
    # The small sample keeps more than 5,000 training images, so the default
    # validation split leaves 1,000 to train on.
    sample=Sample(per_class={"small": (600, 50), "full": (6000, 1000)}, write=_write_sample,
                  stream=1),
))
