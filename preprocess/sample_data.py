"""Writes small synthetic raw data sets in each registered data set's official layout.

This is the first step of the data flow when the real data cannot be downloaded
(CI, dev machines without internet): each data set's spec (preprocess/datasets/)
writes the same files the real data set ships as (CIFAR-10 binary batches,
gzipped MNIST IDX files, a cat/dog folder of JPEG/PNG files), so the raw-data
readers, the Beam job and the trainers run on them unchanged. The images are
drawn, not noise: every class has its own shapes, strokes, colours or
textures, varied at random, so a small CNN trained on them scores far above
chance and a full run proves the pipeline end to end. Output is byte-identical
for the same seed on the same numpy, Pillow and zlib versions.

This module holds what the generators share (seeding, balanced labels, unique
images, pinned encoder settings) and the command line.

Usage:
  python -m preprocess.sample_data --out-dir data/raw [--dataset all] [--full] [--seed 0]
"""

import colorsys
import gzip
import hashlib
import io
import pathlib
import sys
import time

import numpy as np

from preprocess import cli
from preprocess import datasets

# Encoder settings are pinned so that the bytes do not depend on library defaults.
GZIP_LEVEL = 6
JPEG_OPTIONS = {"quality": 90, "subsampling": 2, "optimize": False}  # 2 = 4:2:0
PNG_OPTIONS = {"compress_level": 6}

# Seeds are derived from (seed, data set stream, split) so that generating one
# data set or one split alone gives the same bytes as generating everything.
_SPLIT_IDS = {"train": 0, "test": 1}


def generate(out_dir, names=None, full=False, seed=0):
  """Writes the raw files of data sets `names` under `out_dir` in their official layouts.

  Args:
    out_dir: Root directory; each data set goes into its own subdirectory
      (`cifar10/cifar-10-batches-bin`, `mnist`, `catdog`, ...).
    names: Registered data set names (default: all of them).
    full: Write the official split sizes instead of the small default.
    seed: Non-negative int; the same seed gives byte-identical files.

  Returns:
    {dataset: {"root": Path, "counts": {"train": int, "test": int},
               "files": [Path, ...]}} for the data sets written.

  Raises:
    ValueError: Unknown data set name or negative seed.
    FileExistsError: A generator found files it would not write (left over from
      a bigger run), which would silently mix two sizes.
  """
  known = datasets.names()
  names = known if names is None else names
  unknown = sorted(set(names) - set(known))
  if unknown:
    raise ValueError(f"unknown data sets {unknown}; choose from {list(known)}")
  if int(seed) < 0:
    raise ValueError(f"seed must be non-negative, got {seed}")
  out_dir = pathlib.Path(out_dir)
  result = {}
  for name in known:  # Fixed order, whatever order the caller lists them in.
    if name in names:
      spec = datasets.get(name)
      train, test = spec.sample.per_class["full" if full else "small"]
      result[name] = spec.sample.write(
        out_dir / name, train, test, _rng_for_split(int(seed), spec.sample.stream)
      )
  return result


def _rng_for_split(seed, stream):
  return lambda split: np.random.default_rng([seed, stream, _SPLIT_IDS[split]])


def balanced_labels(rng, num_classes, per_class):
  """`per_class` of each label, in random order."""
  return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def unique(render, seen):
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


def hsv(h, s, v):
  """An HSV colour as float32 RGB in [0, 255]."""
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def gzip_bytes(data):
  """Gzip with mtime=0 and no file name in the header, so the bytes depend on data alone."""
  buf = io.BytesIO()
  with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=GZIP_LEVEL, mtime=0) as f:
    f.write(data)
  return buf.getvalue()


# --- command line -----------------------------------------------------------


def _sizes(size):
  return ", ".join(
    f"{name} {tr * len(spec.class_names)}/{te * len(spec.class_names)}"
    for name in datasets.names()
    for spec in [datasets.get(name)]
    for tr, te in [spec.sample.per_class[size]]
  )


def _parse_args(argv):
  names = datasets.names()
  parser = cli.ArgumentParser(
    prog="python -m preprocess.sample_data",
    description=(
      "Write small synthetic raw data sets in the official file layouts "
      f"({', '.join(names)}), for machines that cannot download the real data. "
      "Images are drawn per class (shapes, digits, cats and dogs), so models can "
      "learn them. The same --seed gives byte-identical files."
    ),
    epilog=(f"Sizes per split (train/test): default {_sizes('small')}; --full {_sizes('full')}."),
  )
  parser.add_argument(
    "--out-dir",
    required=True,
    type=pathlib.Path,
    help="root directory; each data set goes to <out-dir>/<dataset>/",
  )
  parser.add_argument(
    "--dataset",
    choices=names + ("all",),
    default="all",
    help="which data set to write (default: all)",
  )
  parser.add_argument(
    "--full",
    action="store_true",
    help="write the official split sizes instead of the small default",
  )
  parser.add_argument("--seed", type=int, default=0, help="non-negative random seed (default: 0)")
  args = parser.parse_args(argv)
  if args.seed < 0:
    parser.error(f"--seed must be non-negative, got {args.seed}")
  if args.seed >= 2**63:
    parser.error(f"--seed must be below 2**63, got {args.seed}")
  # The nearest existing ancestor must be a folder: a file in the way would
  # otherwise fail half-way through the first data set.
  existing = next(p for p in (args.out_dir, *args.out_dir.parents) if p.exists() or p == p.parent)
  if existing.exists() and not existing.is_dir():
    parser.error(f"--out-dir {args.out_dir}: {existing} is a file, not a folder")
  return args


def main(argv=None):
  args = _parse_args(argv)
  names = datasets.names() if args.dataset == "all" else (args.dataset,)
  start = time.perf_counter()
  try:
    result = generate(args.out_dir, names, full=args.full, seed=args.seed)
  except FileExistsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except OSError as e:  # Disk full, read-only folder: one line naming the file.
    print(f"error: {e.filename or args.out_dir}: {e.strerror or e}", file=sys.stderr)
    return 1
  for name, info in result.items():
    print(
      f"{name}: {info['counts']['train']} train, {info['counts']['test']} test -> {info['root']}"
    )
  print(f"done in {time.perf_counter() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
