"""Writes small synthetic raw data sets in the official CIFAR-10, MNIST and cat/dog layouts.

This is the first step of the data flow when the real data cannot be downloaded
(CI, dev machines without internet): it writes the same files the real data sets
ship as (CIFAR-10 binary batches, gzipped MNIST IDX files, a cat/dog folder of
JPEG/PNG files), so the raw-data readers, the Beam job and the trainers run on
them unchanged. The images are drawn, not noise: every class has its own shapes,
strokes, colours or textures, varied at random, so a small CNN trained on them
scores far above chance and a full run proves the pipeline end to end. Output is
byte-identical for the same seed on the same numpy, Pillow and zlib versions.

Usage:
  python -m preprocess.sample_data --out-dir data/raw [--dataset all] [--full] [--seed 0]
"""

import colorsys
import gzip
import hashlib
import io
import math
import os
import pathlib
import re
import struct
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

from preprocess import cli

DATASETS = ("cifar10", "mnist", "catdog")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                   "horse", "ship", "truck")
CATDOG_CLASSES = ("cat", "dog")

# Images per class, (train, test). "full" matches the official split sizes
# (cat/dog: the usual 2,000/500 per class subset of the Kaggle set).
PER_CLASS = {
    "small": {"cifar10": (250, 50), "mnist": (300, 50), "catdog": (150, 30)},
    "full": {"cifar10": (5000, 1000), "mnist": (6000, 1000), "catdog": (2000, 500)},
}

CIFAR10_DIR = "cifar10/cifar-10-batches-bin"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
CIFAR10_META_FILE = "batches.meta.txt"
MNIST_DIR = "mnist"
MNIST_FILES = {  # split: (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CATDOG_DIR = "catdog"

# Encoder settings are pinned so that the bytes do not depend on library defaults.
_GZIP_LEVEL = 6
_JPEG_OPTIONS = {"quality": 90, "subsampling": 2, "optimize": False}  # 2 = 4:2:0
_PNG_OPTIONS = {"compress_level": 6}
# Share of cat/dog files written as PNG, and as grayscale JPEG (the real Kaggle
# folder has a few of each, and readers must cope with them).
_CATDOG_PNG_SHARE = 0.05
_CATDOG_GRAY_SHARE = 0.05

# Seeds are derived from (seed, data set, split) so that generating one data set
# or one split alone gives the same bytes as generating everything.
_DATASET_IDS = {"cifar10": 0, "mnist": 1, "catdog": 2}
_SPLIT_IDS = {"train": 0, "test": 1}


def generate(out_dir, datasets=DATASETS, full=False, seed=0):
  """Writes the raw files of `datasets` under `out_dir` in their official layouts.

  Args:
    out_dir: Root directory; each data set goes into its own subdirectory
      (`cifar10/cifar-10-batches-bin`, `mnist`, `catdog`).
    datasets: Names from `DATASETS`.
    full: Write the official split sizes instead of the small default.
    seed: Non-negative int; the same seed gives byte-identical files.

  Returns:
    {dataset: {"root": Path, "counts": {"train": int, "test": int},
               "files": [Path, ...]}} for the data sets written.

  Raises:
    ValueError: Unknown data set name or negative seed.
    FileExistsError: A cat/dog class folder holds image files this run would not
      write (left over from a bigger run), which would silently mix two sizes.
  """
  unknown = sorted(set(datasets) - set(DATASETS))
  if unknown:
    raise ValueError(f"unknown data sets {unknown}; choose from {list(DATASETS)}")
  if int(seed) < 0:
    raise ValueError(f"seed must be non-negative, got {seed}")
  out_dir = pathlib.Path(out_dir)
  size = "full" if full else "small"
  writers = {"cifar10": _write_cifar10, "mnist": _write_mnist, "catdog": _write_catdog}
  result = {}
  for name in DATASETS:  # Fixed order, whatever order the caller lists them in.
    if name in datasets:
      train, test = PER_CLASS[size][name]
      result[name] = writers[name](out_dir, train, test, int(seed))
  return result


def _rng(seed, dataset, split):
  return np.random.default_rng([seed, _DATASET_IDS[dataset], _SPLIT_IDS[split]])


def _balanced_labels(rng, num_classes, per_class):
  return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _write_bytes(path, data):
  """Writes via a temporary file so an interrupted run leaves no truncated file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)


def _unique(render, seen):
  """Calls `render()` until its pixels are new, so content hashes are unique.

  A repeat is astronomically unlikely with continuous random parameters and
  noise, but downstream dedup by content hash must never drop a sample image.
  """
  while True:
    image = render()
    digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()
    if digest not in seen:
      seen.add(digest)
      return image


# --- CIFAR-10 ---------------------------------------------------------------

# One shape per class, each with a class-typical hue (label / 10 on the hue
# circle). The trainer crops 24x24 at random, flips, jitters brightness and
# contrast and standardizes per image, so the class must live in the shape and
# its texture near the centre, not in the brightness or the borders.
# 0 disc, 1 square, 2 triangle, 3 ring, 4 cross, 5 horizontal bars,
# 6 vertical bars, 7 diagonal stripes, 8 checkerboard, 9 dot grid.
_CIFAR_SIZE = 32
_CIFAR_YY, _CIFAR_XX = np.mgrid[0:_CIFAR_SIZE, 0:_CIFAR_SIZE].astype(np.float32) + 0.5
# Max rotation in degrees. Orientation is the class for the bar classes, and a
# square or cross turned by 45 degrees stops looking like one.
_CIFAR_MAX_ROTATION = {1: 15, 4: 15, 5: 12, 6: 12, 7: 12, 8: 15, 9: 15}


def _hsv(h, s, v):
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def _stripes(coord, period):
  """Soft 0/1 stripes across `coord` (in pixels) with the given period."""
  return np.clip(0.5 + 1.5 * np.cos(2 * np.pi * coord / period), 0, 1)


def _cifar_image(rng, label):
  """Draws one 32x32x3 uint8 image of class `label`."""
  radius = rng.uniform(6.5, 10.0)
  cx, cy = 16 + rng.uniform(-3, 3, size=2)
  if label in _CIFAR_MAX_ROTATION:
    angle = math.radians(rng.uniform(-1, 1) * _CIFAR_MAX_ROTATION[label])
  else:
    angle = rng.uniform(0, 2 * math.pi)
  if label == 7:  # Both diagonals, so a left-right flip stays in the class.
    angle += math.radians(45 if rng.random() < 0.5 else -45)
  dx, dy = _CIFAR_XX - cx, _CIFAR_YY - cy
  cos, sin = math.cos(angle), math.sin(angle)
  u_px = cos * dx + sin * dy  # Rotated coordinates, in pixels ...
  v_px = -sin * dx + cos * dy
  u, v = u_px / radius, v_px / radius  # ... and in object radii.

  # Signed distance (in radii, negative inside) of the outline, then alpha with
  # a one-pixel soft edge.
  square = np.maximum(np.abs(u), np.abs(v)) - 0.85
  disc = np.hypot(u, v) - 1.0
  pattern = 1.0
  if label == 0:
    sdf = disc
  elif label == 1:
    sdf = square
  elif label == 2:
    sdf = np.maximum.reduce([v, -0.866 * u - 0.5 * v, 0.866 * u - 0.5 * v]) - 0.5
  elif label == 3:
    sdf = np.abs(np.hypot(u, v) - 0.72) - 0.26
  elif label == 4:
    sdf = np.minimum(np.maximum(np.abs(u) - 0.3, np.abs(v) - 1.0),
                     np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.3))
  elif label in (5, 6, 7):
    sdf = disc
    period = rng.uniform(3.6, 5.0)
    pattern = _stripes((v_px if label != 6 else u_px) + rng.uniform(0, period), period)
  elif label == 8:
    sdf = square
    period = rng.uniform(4.0, 5.5)
    phase = rng.uniform(0, period, size=2)
    pattern = np.clip(0.5 + 2.0 * np.cos(np.pi * (u_px + phase[0]) / period)
                      * np.cos(np.pi * (v_px + phase[1]) / period), 0, 1)
  else:
    sdf = square
    spacing = rng.uniform(3.8, 4.8)
    gu = (u_px + spacing / 2) % spacing - spacing / 2
    gv = (v_px + spacing / 2) % spacing - spacing / 2
    pattern = np.clip(1.3 - np.hypot(gu, gv), 0, 1)  # Dots of radius ~1.3 px.
  alpha = np.clip(0.5 - sdf * radius, 0, 1) * pattern

  # Object and background differ in value, so the shape survives grayscale-ish
  # colour jitter; the background hue is arbitrary and unsaturated.
  obj_value = rng.uniform(0.45, 1.0)
  if obj_value > 0.7:
    bg_value = rng.uniform(0.05, obj_value - 0.35)
  else:
    bg_value = rng.uniform(obj_value + 0.3, 1.0)
  fg = _hsv(label / 10 + rng.uniform(-0.05, 0.05), rng.uniform(0.55, 1.0), obj_value)
  bg_hue, bg_sat = rng.uniform(0, 1), rng.uniform(0, 0.35)
  bg0 = _hsv(bg_hue, bg_sat, bg_value)
  bg1 = _hsv(bg_hue + rng.uniform(-0.1, 0.1), bg_sat,
             np.clip(bg_value + rng.uniform(-0.15, 0.15), 0, 1))
  grad_angle = rng.uniform(0, 2 * math.pi)
  t = ((_CIFAR_XX - 16) * math.cos(grad_angle) + (_CIFAR_YY - 16) * math.sin(grad_angle)) / 45 + 0.5
  image = bg0 + (bg1 - bg0) * t[..., None]
  # Clutter: a few faint straight lines anywhere, so not every non-background
  # pixel belongs to the object.
  for _ in range(rng.integers(0, 3)):
    a = rng.uniform(0, math.pi)
    x0, y0 = rng.uniform(0, 32), rng.uniform(0, 32)
    dist = np.abs((_CIFAR_XX - x0) * math.sin(a) - (_CIFAR_YY - y0) * math.cos(a))
    line_alpha = np.clip(0.9 - dist, 0, 1)[..., None] * rng.uniform(0.2, 0.5)
    image = image * (1 - line_alpha) + rng.uniform(0, 255, size=3).astype(np.float32) * line_alpha
  image = image * (1 - alpha[..., None]) + fg * alpha[..., None]
  image += rng.normal(0, rng.uniform(2, 8), size=image.shape).astype(np.float32)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _cifar_records(rng, labels, seen):
  """The CIFAR-10 binary records: label byte, then the R, G and B planes."""
  out = bytearray()
  for label in labels:
    image = _unique(lambda: _cifar_image(rng, int(label)), seen)
    out.append(int(label))
    out += image.transpose(2, 0, 1).tobytes()
  return bytes(out)


def _write_cifar10(out_dir, train_per_class, test_per_class, seed):
  root = out_dir / CIFAR10_DIR
  seen = set()
  files = []
  rng = _rng(seed, "cifar10", "train")
  per_batch = train_per_class // len(CIFAR10_TRAIN_FILES)
  for name in CIFAR10_TRAIN_FILES:
    labels = _balanced_labels(rng, len(CIFAR10_CLASSES), per_batch)
    files.append(root / name)
    _write_bytes(files[-1], _cifar_records(rng, labels, seen))
  rng = _rng(seed, "cifar10", "test")
  files.append(root / CIFAR10_TEST_FILE)
  _write_bytes(files[-1], _cifar_records(rng, _balanced_labels(rng, 10, test_per_class), seen))
  # The official file ends with an empty line after the last class name.
  files.append(root / CIFAR10_META_FILE)
  _write_bytes(files[-1], ("\n".join(CIFAR10_CLASSES) + "\n\n").encode("ascii"))
  counts = {"train": per_batch * 10 * len(CIFAR10_TRAIN_FILES), "test": test_per_class * 10}
  return {"root": root, "counts": counts, "files": files}


# --- MNIST ------------------------------------------------------------------


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


def _gzip(data):
  buf = io.BytesIO()
  # mtime=0 and no file name in the header, so the bytes depend on data alone.
  with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=_GZIP_LEVEL, mtime=0) as f:
    f.write(data)
  return buf.getvalue()


def _write_mnist(out_dir, train_per_class, test_per_class, seed):
  root = out_dir / MNIST_DIR
  seen = set()
  files = []
  counts = {}
  for split, per_class in (("train", train_per_class), ("test", test_per_class)):
    rng = _rng(seed, "mnist", split)
    labels = _balanced_labels(rng, 10, per_class)
    images = np.stack([_unique(lambda: _mnist_image(rng, int(d)), seen) for d in labels])
    n = len(labels)
    image_name, label_name = MNIST_FILES[split]
    files += [root / image_name, root / label_name]
    image_header = struct.pack(">iiii", 2051, n, _MNIST_SIZE, _MNIST_SIZE)
    _write_bytes(files[-2], _gzip(image_header + images.tobytes()))
    label_header = struct.pack(">ii", 2049, n)
    _write_bytes(files[-1], _gzip(label_header + labels.astype(np.uint8).tobytes()))
    counts[split] = n
  return {"root": root, "counts": counts, "files": files}


# --- cat/dog ----------------------------------------------------------------

# Cats: warm orange/grey/cream fur, pointed triangular ears, stripes, whiskers.
# Dogs: brown/black/tan fur, round floppy ears hanging at the sides, spots, a big
# nose. The palettes overlap a little (grey cat vs black dog, cream cat vs tan
# dog) and the background clutter takes any colour, so colour alone is not the
# rule. Both animals are drawn left-right symmetric, so a flip keeps the class.
_CAT_FUR = ((225, 135, 55), (200, 110, 40), (150, 150, 155), (185, 185, 190), (235, 205, 160))
_DOG_FUR = ((125, 80, 45), (90, 55, 30), (40, 35, 35), (195, 155, 105), (160, 110, 70))
_CATDOG_MIN_SIDE, _CATDOG_MAX_SIDE = 60, 400
_CATDOG_NAME = re.compile(r"^(cat|dog)\.\d+\.(jpg|png)$")


def _jitter_colour(rng, rgb, amount=18):
  jittered = np.array(rgb) + rng.integers(-amount, amount + 1, size=3)
  return tuple(int(c) for c in np.clip(jittered, 0, 255))


def _scale_colour(rgb, factor):
  return tuple(int(min(255, c * factor)) for c in rgb[:3])


def _mirror_polygon(points):
  return [(1 - x, y) for x, y in points]


def _draw_cat(draw, rng, s):
  """Draws a cat into the unit square scaled by `s` pixels."""
  def box(cx, cy, rx, ry):
    return [(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s]

  def scaled(points):
    return [(x * s, y * s) for x, y in points]

  fur = _jitter_colour(rng, _CAT_FUR[rng.integers(len(_CAT_FUR))]) + (255,)
  stripe = _scale_colour(fur, rng.uniform(0.4, 0.6))
  width = max(1, int(0.028 * s))
  ear_tip = (0.24 + rng.uniform(-0.03, 0.03), 0.05 + rng.uniform(-0.03, 0.03))
  ear = [(0.2, 0.42), ear_tip, (0.47, 0.27)]
  draw.ellipse(box(0.5, 0.87, rng.uniform(0.27, 0.34), 0.2), fill=fur)
  draw.polygon(scaled(ear), fill=fur)
  draw.polygon(scaled(_mirror_polygon(ear)), fill=fur)
  draw.ellipse(box(0.5, 0.46, rng.uniform(0.26, 0.29), rng.uniform(0.22, 0.25)), fill=fur)
  inner = [(0.26, 0.36), (ear_tip[0] + 0.03, ear_tip[1] + 0.1), (0.4, 0.29)]
  draw.polygon(scaled(inner), fill=(230, 160, 170))
  draw.polygon(scaled(_mirror_polygon(inner)), fill=(230, 160, 170))
  for k in (-1, 0, 1):  # The forehead "M" and the cheek stripes.
    draw.line(scaled([(0.5 + 0.07 * k, 0.25), (0.5 + 0.05 * k, 0.36)]), fill=stripe, width=width)
  for y in (0.44, 0.5):
    draw.line(scaled([(0.23, y), (0.32, y + 0.02)]), fill=stripe, width=width)
    draw.line(scaled([(0.77, y), (0.68, y + 0.02)]), fill=stripe, width=width)
  for y in (0.76, 0.84, 0.92):  # Body stripes: arcs bowing upwards.
    draw.arc(box(0.5, y + 0.12, 0.22, 0.13), 205, 335, fill=stripe, width=width)
  eye = (120, 190, 80) if rng.random() < 0.5 else (220, 200, 60)
  for x in (0.39, 0.61):  # Almond eyes with slit pupils.
    draw.ellipse(box(x, 0.45, 0.055, 0.035), fill=eye)
    draw.ellipse(box(x, 0.45, 0.012, 0.033), fill=(10, 10, 10))
  draw.polygon(scaled([(0.46, 0.54), (0.54, 0.54), (0.5, 0.585)]), fill=(220, 120, 140))
  draw.line(scaled([(0.46, 0.62), (0.5, 0.585), (0.54, 0.62)]), fill=stripe, width=width)
  for y in (0.52, 0.58, 0.64):
    draw.line(scaled([(0.42, 0.58), (0.1, y)]), fill=(235, 235, 235), width=max(1, width // 2))
    draw.line(scaled([(0.58, 0.58), (0.9, y)]), fill=(235, 235, 235), width=max(1, width // 2))


def _draw_dog(draw, rng, s):
  """Draws a dog into the unit square scaled by `s` pixels."""
  def box(cx, cy, rx, ry):
    return [(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s]

  fur = _jitter_colour(rng, _DOG_FUR[rng.integers(len(_DOG_FUR))]) + (255,)
  ear = _scale_colour(fur, rng.uniform(0.45, 0.7)) if rng.random() < 0.7 else (30, 25, 25)
  spot = (_scale_colour(fur, 0.4) if rng.random() < 0.6 else (235, 230, 220))
  draw.ellipse(box(0.5, 0.88, rng.uniform(0.29, 0.35), 0.2), fill=fur)
  draw.ellipse(box(0.5, 0.45, rng.uniform(0.25, 0.28), rng.uniform(0.25, 0.28)), fill=fur)
  for _ in range(rng.integers(2, 7)):
    r = rng.uniform(0.03, 0.08)
    x, y = rng.uniform(0.28, 0.72), rng.uniform(0.3, 0.95)
    draw.ellipse(box(x, y, r, r * rng.uniform(0.8, 1.2)), fill=spot)
  muzzle = _scale_colour(fur, 1.35) if max(fur[:3]) < 170 else (240, 230, 215)
  draw.ellipse(box(0.5, 0.6, 0.15, 0.11), fill=muzzle)
  ear_len = rng.uniform(0.18, 0.24)
  for x in (0.22, 0.78):  # Floppy ears hanging down the sides of the head.
    draw.ellipse(box(x, 0.3 + ear_len, 0.095, ear_len), fill=ear)
  for x in (0.4, 0.6):  # Round eyes with a highlight.
    draw.ellipse(box(x, 0.42, 0.04, 0.04), fill=(20, 15, 10))
    draw.ellipse(box(x - 0.012, 0.408, 0.012, 0.012), fill=(240, 240, 240))
  draw.ellipse(box(0.5, 0.55, 0.07, 0.05), fill=(15, 10, 10))
  width = max(1, int(0.02 * s))
  draw.line([(0.5 * s, 0.6 * s), (0.5 * s, 0.65 * s)], fill=(15, 10, 10), width=width)
  draw.arc(box(0.45, 0.63, 0.05, 0.04), 20, 160, fill=(15, 10, 10), width=width)
  draw.arc(box(0.55, 0.63, 0.05, 0.04), 20, 160, fill=(15, 10, 10), width=width)
  if rng.random() < 0.4:
    draw.ellipse(box(0.5, 0.7, 0.035, 0.045), fill=(225, 100, 120))


def _catdog_image(rng, label):
  """Draws one RGB cat (0) or dog (1) picture of random size and aspect ratio."""
  width, height = (int(x) for x in rng.integers(_CATDOG_MIN_SIDE, _CATDOG_MAX_SIDE + 1, size=2))
  if width == height == 150:  # Never the trainer's input size: resizing is its job.
    width += 1
  hue, sat = rng.uniform(0, 1), rng.uniform(0.05, 0.6)
  c0 = _hsv(hue, sat, rng.uniform(0.3, 0.95))
  c1 = _hsv(hue + rng.uniform(-0.15, 0.15), sat, rng.uniform(0.3, 0.95))
  t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
  background = np.broadcast_to(c0 + (c1 - c0) * t, (height, width, 3))
  image = Image.fromarray(np.rint(background).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(3, 12)):  # Clutter: furniture, toys, whatever.
    x0, x1 = sorted(rng.uniform(0, width, size=2))
    y0, y1 = sorted(rng.uniform(0, height, size=2))
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    kind = rng.integers(3)
    if kind == 0:
      draw.rectangle([x0, y0, x1, y1], fill=colour)
    elif kind == 1:
      draw.ellipse([x0, y0, x1, y1], fill=colour)
    else:
      draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 6)))

  side = max(16, int(min(width, height) * rng.uniform(0.5, 0.9)))
  layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
  (_draw_cat if label == 0 else _draw_dog)(ImageDraw.Draw(layer), rng, side)
  layer = layer.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BICUBIC, expand=True)
  cx = rng.uniform(0.35, 0.65) * width
  cy = rng.uniform(0.35, 0.65) * height
  image.paste(layer, (int(cx - layer.width / 2), int(cy - layer.height / 2)), layer)

  pixels = np.array(image, np.float32)
  pixels += rng.uniform(2, 8) * rng.standard_normal(pixels.shape, dtype=np.float32)
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _encode_catdog(pixels, kind):
  buf = io.BytesIO()
  if kind == "png":
    Image.fromarray(pixels).save(buf, format="PNG", **_PNG_OPTIONS)
  elif kind == "gray":
    Image.fromarray(pixels).convert("L").save(buf, format="JPEG", **_JPEG_OPTIONS)
  else:
    Image.fromarray(pixels).save(buf, format="JPEG", **_JPEG_OPTIONS)
  return buf.getvalue()


def _check_no_stale_catdog(root, expected):
  """Fails if a class folder holds cat/dog images this run would not write.

  Left over from a bigger (--full) run, they would silently join the small
  data set. Deleting them could delete someone's real Kaggle files, so refuse.
  """
  for path in sorted(root.glob("*/*/*")):
    if _CATDOG_NAME.match(path.name) and path not in expected:
      raise FileExistsError(
          f"{path.parent} holds image files this run would not write (e.g. {path.name}); "
          f"delete {root} or choose another --out-dir")


def _write_catdog(out_dir, train_per_class, test_per_class, seed):
  root = out_dir / CATDOG_DIR
  # File names follow Kaggle's `cat.123.jpg`; test numbers continue after the
  # train numbers so names stay unique if the splits are ever pooled.
  plan = {}  # split: [(label, number), ...]
  splits = (("train", train_per_class, 0), ("test", test_per_class, train_per_class))
  for split, per_class, first in splits:
    plan[split] = [(label, first + i) for label in range(2) for i in range(per_class)]
  rng_by_split = {split: _rng(seed, "catdog", split) for split in plan}
  kinds_by_split = {}
  for split, items in plan.items():
    rng = rng_by_split[split]
    n = len(items)
    special = rng.permutation(n)
    n_png = max(1, round(n * _CATDOG_PNG_SHARE))
    n_gray = max(1, round(n * _CATDOG_GRAY_SHARE))
    kinds = ["jpeg"] * n
    for i in special[:n_png]:
      kinds[i] = "png"
    for i in special[n_png:n_png + n_gray]:
      kinds[i] = "gray"
    kinds_by_split[split] = kinds
  paths = {split: [root / split / CATDOG_CLASSES[label] /
                   f"{CATDOG_CLASSES[label]}.{number}.{'png' if kind == 'png' else 'jpg'}"
                   for (label, number), kind in zip(items, kinds_by_split[split])]
           for split, items in plan.items()}
  _check_no_stale_catdog(root, {p for ps in paths.values() for p in ps})

  seen = set()
  files = []
  for split, items in plan.items():
    rng = rng_by_split[split]
    for (label, _), kind, path in zip(items, kinds_by_split[split], paths[split]):
      pixels = _unique(lambda: _catdog_image(rng, label), seen)
      _write_bytes(path, _encode_catdog(pixels, kind))
      files.append(path)
  counts = {split: len(items) for split, items in plan.items()}
  return {"root": root, "counts": counts, "files": files}


# --- command line -----------------------------------------------------------


def _parse_args(argv):
  parser = cli.ArgumentParser(
      prog="python -m preprocess.sample_data",
      description=("Write small synthetic raw data sets in the official file layouts "
                   "(CIFAR-10 binary batches, gzipped MNIST IDX, cat/dog JPEG folders), "
                   "for machines that cannot download the real data. Images are drawn "
                   "per class (shapes, digits, cats and dogs), so models can learn them. "
                   "The same --seed gives byte-identical files."),
      epilog=("Sizes per split (train/test): default cifar10 2500/500, mnist 3000/500, "
              "catdog 300/60; --full cifar10 50000/10000, mnist 60000/10000, catdog 4000/1000."))
  parser.add_argument("--out-dir", required=True, type=pathlib.Path,
                      help="root directory; the data sets go to its subdirectories "
                           "cifar10/cifar-10-batches-bin, mnist and catdog")
  parser.add_argument("--dataset", choices=DATASETS + ("all",), default="all",
                      help="which data set to write (default: all)")
  parser.add_argument("--full", action="store_true",
                      help="write the official split sizes instead of the small default")
  parser.add_argument("--seed", type=int, default=0,
                      help="non-negative random seed (default: 0)")
  args = parser.parse_args(argv)
  if args.seed < 0:
    parser.error(f"--seed must be non-negative, got {args.seed}")
  return args


def main(argv=None):
  args = _parse_args(argv)
  datasets = DATASETS if args.dataset == "all" else (args.dataset,)
  start = time.perf_counter()
  try:
    result = generate(args.out_dir, datasets, full=args.full, seed=args.seed)
  except FileExistsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for name, info in result.items():
    print(f"{name}: {info['counts']['train']} train, {info['counts']['test']} test "
          f"-> {info['root']}")
  print(f"done in {time.perf_counter() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
