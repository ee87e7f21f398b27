"""Cats vs dogs (the Kaggle / Microsoft PetImages set): the data set spec.

Everything the project knows about cat/dog by name: its raw layout (image
folders, read by preprocess/imagefolder.py), the two classes, the official
archive and its checksum with the installer that splits it into train and
test, its augmentation, and the sample-data generator (drawn cats and dogs).
The registry (preprocess/datasets/__init__.py) finds this file.
"""

import hashlib
import io
import os
import re

import numpy as np
from PIL import Image
from PIL import ImageDraw

from preprocess import atomic
from preprocess import download
from preprocess import extract
from preprocess import imagefolder
from preprocess import sample_data
from preprocess.datasets import DatasetSpec
from preprocess.datasets import Sample
from preprocess.errors import DownloadError

CLASS_NAMES = ("cat", "dog")
LAYOUT = imagefolder.FolderLayout(splits=("train", "test"))
# The Kaggle archive has no test split. A file goes to test/ when a hash of its
# class and name falls in the first TEST_PERCENT of 100 buckets (`split_of`),
# so every run, machine and Python version makes the same split.
TEST_PERCENT = 10

# Share of sample files written as PNG, and as grayscale JPEG (the real Kaggle
# folder has a few of each, and readers must cope with them).
_CATDOG_PNG_SHARE = 0.05
_CATDOG_GRAY_SHARE = 0.05


def split_of(class_name, filename):
  """The split ("train" or "test") of one cat/dog image, from its class and name.

  The first 8 bytes of SHA-256("<class>/<filename>") as a big-endian integer,
  modulo 100, below TEST_PERCENT means test. Nothing else is involved, so
  the split never depends on listing order, the machine or the run.
  """
  digest = hashlib.sha256(f"{class_name}/{filename}".encode()).digest()
  bucket = int.from_bytes(digest[:8], "big") % 100
  return "test" if bucket < TEST_PERCENT else "train"


def _install(local_files, root, log):
  """Extracts the Kaggle zip and moves PetImages/{Cat,Dog} into {train,test}/{cat,dog}.

  Images are moved whatever their content: the archive holds some empty or
  non-JPEG files, and rejecting those into the run's ledger is the pipeline's
  job, not the downloader's.
  """
  archive = local_files[0]
  log(f"{archive}: extracting")
  with extract.extracted(archive, root) as tmp:
    counts = {split: 0 for split in LAYOUT.splits}
    for class_name in CLASS_NAMES:
      source = tmp / "PetImages" / class_name.capitalize()
      if not source.is_dir():
        raise DownloadError(archive, f"no PetImages/{source.name}/ folder in the archive")
      for split in LAYOUT.splits:
        (tmp / split / class_name).mkdir(parents=True)
      for path in sorted(source.iterdir()):
        # Files the image reader would take, whatever their content. The class
        # folders also hold a Windows thumbnail cache (Thumbs.db); it stays in
        # RAW/catdog/PetImages with the licence and readme, outside the splits.
        if path.is_file() and path.suffix.lower() in imagefolder.IMAGE_EXTENSIONS:
          split = split_of(class_name, path.name)
          os.replace(path, tmp / split / class_name / path.name)
          counts[split] += 1
    for split in LAYOUT.splits:  # Refused earlier unless `force`, as above.
      extract.replace(tmp / split, root / split)
    # What is left (Thumbs.db, licence, readme) is the archive's, kept beside
    # the splits rather than silently deleted; re-running replaces it.
    left = sorted(tmp.iterdir())
    for entry in left:
      extract.replace(entry, root / entry.name)
    log(
      f"catdog: {counts['train']} train and {counts['test']} test images "
      f"({TEST_PERCENT}% test by name hash); other archive files left in "
      f"{', '.join(str(root / e.name) for e in left) or 'none'}"
    )


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
  spot = _scale_colour(fur, 0.4) if rng.random() < 0.6 else (235, 230, 220)
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
  c0 = sample_data.hsv(hue, sat, rng.uniform(0.3, 0.95))
  c1 = sample_data.hsv(hue + rng.uniform(-0.15, 0.15), sat, rng.uniform(0.3, 0.95))
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
    Image.fromarray(pixels).save(buf, format="PNG", **sample_data.PNG_OPTIONS)
  elif kind == "gray":
    Image.fromarray(pixels).convert("L").save(buf, format="JPEG", **sample_data.JPEG_OPTIONS)
  else:
    Image.fromarray(pixels).save(buf, format="JPEG", **sample_data.JPEG_OPTIONS)
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
        f"delete {root} or choose another --out-dir"
      )


def _write_sample(root, train_per_class, test_per_class, rng_for_split):
  """Writes Kaggle-named JPEG (some PNG, some grayscale) files into {train,test}/{cat,dog}/."""
  # File names follow Kaggle's `cat.123.jpg`; test numbers continue after the
  # train numbers so names stay unique if the splits are ever pooled.
  plan = {}  # split: [(label, number), ...]
  splits = (("train", train_per_class, 0), ("test", test_per_class, train_per_class))
  for split, per_class, first in splits:
    plan[split] = [(label, first + i) for label in range(2) for i in range(per_class)]
  rng_by_split = {split: rng_for_split(split) for split in plan}
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
    for i in special[n_png : n_png + n_gray]:
      kinds[i] = "gray"
    kinds_by_split[split] = kinds
  paths = {
    split: [
      root
      / split
      / CLASS_NAMES[label]
      / f"{CLASS_NAMES[label]}.{number}.{'png' if kind == 'png' else 'jpg'}"
      for (label, number), kind in zip(items, kinds_by_split[split])
    ]
    for split, items in plan.items()
  }
  _check_no_stale_catdog(root, {p for ps in paths.values() for p in ps})

  seen = set()
  files = []
  for split, items in plan.items():
    rng = rng_by_split[split]
    for (label, _), kind, path in zip(items, kinds_by_split[split], paths[split]):
      pixels = sample_data.unique(lambda: _catdog_image(rng, label), seen)
      atomic.write_bytes(path, _encode_catdog(pixels, kind))
      files.append(path)
  counts = {split: len(items) for split, items in plan.items()}
  return {"root": root, "counts": counts, "files": files}


SPEC = DatasetSpec(
  name="catdog",
  description="Kaggle cats vs dogs: about 25,000 JPEG photos in two classes",
  class_names=CLASS_NAMES,
  layout=LAYOUT,
  sources=(
    # The archive the TFDS `cats_vs_dogs` builder reads (its `_URL`); SHA-256
    # from Hugging Face Datasets (datasets/cats_vs_dogs/dataset_infos.json).
    download.RemoteFile(
      "kagglecatsanddogs_5340.zip",
      (
        "https://download.microsoft.com/download/3/E/1/"
        "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip",
      ),
      sha256="b7974bd00a84a99921f36ee4403f089853777b5ae8d151c76a86e64900334af9",
      size=824887076,
    ),
  ),
  validation_size=0,
  # Stored at the converted size (default 150x150), so no crop.
  augmentation={
    "train": [{"op": "random_flip_left_right"}, {"op": "per_image_standardization"}],
    "eval": [{"op": "per_image_standardization"}],
  },
  # "full": the usual 2,000/500 per class subset of the Kaggle set.
  sample=Sample(per_class={"small": (150, 30), "full": (2000, 500)}, write=_write_sample, stream=2),
  install=_install,
)
