"""CIFAR-10, binary version: the data set spec and its file format.

Everything the project knows about CIFAR-10 by name: its raw layout and file
names, class names, the official archive and its checksums, the recipe's
validation size, the TensorFlow tutorial's augmentation, and the sample-data
generator. The registry (preprocess/datasets/__init__.py) finds this file; the
Beam job, the downloader and the sample-data writer read it from there.

The CIFAR binary format lives here too (TFDS keeps a data set's parsing in its
builder): `BinaryLayout` and the reader, the first stage of the data flow: raw
`.bin` batch files -> `Record`/`Reject` stream -> Beam encodes and shards them.
The driver (pipeline/plan.py) calls `read_class_names` and `count_records` (from
the file listing's sizes, no I/O) to plan shards as contiguous record ranges;
each worker then calls `read_records` for its range, which seeks straight to
the first record, so no worker reads bytes it does not convert. Another data
set in this format imports `BinaryLayout` and the reader from this module.

File format (https://www.cs.toronto.edu/~kriz/cifar.html): fixed 3073-byte
records, one label byte (0-9) then 1024 red, 1024 green and 1024 blue bytes,
each plane a row-major 32x32 image. `batches.meta.txt` lists the class names,
one a line.
"""

import dataclasses
import hashlib
import math
import pathlib

import numpy as np

from preprocess import atomic
from preprocess import download
from preprocess import extract
from preprocess import fileio
from preprocess import rawfiles
from preprocess import sample_data
from preprocess.datasets import DatasetSpec
from preprocess.datasets import Sample
from preprocess.errors import DataFormatError
from preprocess.errors import DownloadError
from preprocess.schema import Record
from preprocess.schema import Reject

# --- The CIFAR binary format ---

IMAGE_SHAPE = (32, 32, 3)
RECORD_BYTES = 1 + 32 * 32 * 3  # 3073

# Records per read() call: ~780 KB, few enough calls that a remote file system
# is not hit once per 3 KB record, small enough to keep worker memory flat.
_RECORDS_PER_READ = 256


@dataclasses.dataclass(frozen=True)
class BinaryLayout:
  """Where a data set in this format keeps its files, under RAW/<name>/.

  The file names themselves are the data set's (`LAYOUT` below).

  Attributes:
    batches_dir: Folder of the batch files, relative to the data set root.
    splits: Split name -> tuple of batch file names, in record order.
    meta_file: The class names file, in `batches_dir`.
    archive: The downloaded archive that holds `batches_dir`; the Beam job
      extracts it again when `batches_dir` is missing.
  """

  batches_dir: str
  splits: dict
  meta_file: str
  archive: str
  format = "cifar_binary"

  def file_names(self):
    """Every file of `batches_dir`: the batches in split order, then the meta file."""
    return tuple(n for names in self.splits.values() for n in names) + (self.meta_file,)

  def installed_paths(self, root, remote_files):
    """The paths whose presence means the data set is installed under `root`."""
    del remote_files  # The archive is kept, but the batches are what counts.
    return [root / self.batches_dir / n for n in self.file_names()]

  def partial_install(self, root):
    """A one-line problem if an incomplete install is in the way, else None."""
    batches = root / self.batches_dir
    if batches.exists():
      missing = [n for n in self.file_names() if not (batches / n).exists()]
      return batches, f"exists but lacks {', '.join(missing)}; delete it or run with --force"
    return None

  def install(self, local_files, root, log):
    """Extracts `batches_dir` from the downloaded archive into `root`."""
    archive = local_files[0]
    log(f"{archive}: extracting")
    with extract.extracted(archive, root) as tmp:
      batches = tmp / self.batches_dir
      missing = [n for n in self.file_names() if not (batches / n).is_file()]
      if missing:
        raise DownloadError(
          archive,
          f"no {self.batches_dir}/{missing[0]} in the "
          f"archive ({len(missing)} expected files missing)",
        )
      # download() has refused a partial install unless `force`: replacing is safe.
      extract.replace(batches, root / self.batches_dir)

  def list_raw(self, spec, root, files, options):
    """Lists and checks the batch files under `root` (RAW/<name>); returns a `RawDataset`.

    A missing batches folder is extracted again from the kept archive: checked
    first (the official checksum when it is the official file, the gzip CRC
    always), extracted into a hidden folder and renamed into place only when
    every batch file is there.
    """
    del options  # Stored as is, 32x32 PNG.
    batches = files.join(root, self.batches_dir)
    archive = files.join(root, self.archive)
    if not files.exists(batches) and files.exists(archive) and "://" not in archive:
      extract.verify_archive(archive, spec.sources)
      self.install([pathlib.Path(archive)], pathlib.Path(root), log=lambda line: None)
    what = f"{spec.name} binary batches ({self.batches_dir}/)"
    found, others = rawfiles.list_required(files, batches, what)
    meta_path, _ = rawfiles.required_file(
      files, found, others, batches, self.meta_file, "class names file"
    )
    class_names = read_class_names(meta_path, opener=files.open)
    splits = {}
    for split, names in self.splits.items():
      sources = []
      for name in names:
        path, size = rawfiles.required_file(
          files, found, others, batches, name, f"{spec.name} batch file"
        )
        count = count_records(path, size)
        sources.append(rawfiles.Source(self.format, (path,), f"{self.batches_dir}/{name}", count))
      splits[split] = sources
    used = {s.name: s.paths[0] for split in splits.values() for s in split}
    used[f"{self.batches_dir}/{self.meta_file}"] = meta_path
    return rawfiles.RawDataset(spec.name, class_names, IMAGE_SHAPE, "png", None, splits, [], used)

  @staticmethod
  def read(source, start, stop, image_size, opener):
    """Yields the `Record`s and `Reject`s of records [start, stop) of a batch file `Source`."""
    del image_size  # Stored as is, 32x32.
    return read_records(source.paths[0], source.name, start, stop, opener=opener)


def _plural(n, word):
  return f"{n} {word}" if n == 1 else f"{n} {word}s"


def read_class_names(path, opener=fileio.open_rb):
  """Reads `batches.meta.txt`: the ten class names, in label order.

  Args:
    path: Path of the meta file.
    opener: Callable path -> binary file object (e.g. Beam's FileSystems.open).

  Returns:
    The ten class names; `names[label]` names label `label`.

  Raises:
    DataFormatError: The file does not hold exactly ten distinct names.
  """
  with opener(path) as f:
    data = f.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataFormatError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
  names = [line.strip() for line in text.splitlines() if line.strip()]
  if len(names) != 10:
    raise DataFormatError(path, f"expected 10 class names, one a line, found {len(names)}")
  if len(set(names)) != 10:
    dupes = sorted({n for n in names if names.count(n) > 1})
    raise DataFormatError(path, f"class names are not distinct (repeated: {', '.join(dupes)})")
  return names


def count_records(path, size):
  """Number of records in a batch file, from its size alone (no I/O).

  Args:
    path: Path of the batch file; used only in error messages.
    size: The file's size in bytes, as reported by the file listing.

  Returns:
    The record count, `size // RECORD_BYTES`.

  Raises:
    DataFormatError: The file is empty or does not hold whole records.
  """
  if size == 0:
    raise DataFormatError(path, "file is empty (0 bytes)")
  whole, extra = divmod(size, RECORD_BYTES)
  if extra:
    raise DataFormatError(
      path,
      f"size {size} bytes is not a multiple of the {RECORD_BYTES}-byte CIFAR-10 "
      f"record ({_plural(whole, 'whole record')} + {_plural(extra, 'byte')})",
    )
  return whole


def _decode(raw, source_name, index):
  """One 3073-byte record -> Record, or Reject for a label outside 0-9."""
  label = raw[0]
  if label > 9:
    return Reject(
      file=source_name, index=index, reason=f"label byte {label} is not a CIFAR-10 class (0-9)"
    )
  planes = np.frombuffer(raw, dtype=np.uint8, offset=1).reshape(3, 32, 32)
  # Channel-planar on disk, channels-last everywhere downstream; the copy also
  # makes the array own its memory instead of pinning the read buffer.
  image = np.ascontiguousarray(planes.transpose(1, 2, 0))
  return Record(
    source_id=f"{source_name}:{index}",
    label=int(label),
    image=image,
    content_sha256=hashlib.sha256(raw).hexdigest(),
  )


def read_records(path, source_name, start=0, stop=None, opener=fileio.open_rb):
  """Yields the records [start, stop) of one CIFAR-10 batch file.

  Args:
    path: Path of the batch file.
    source_name: Name of the file relative to the data set root, used in
      `Record.source_id` (`f"{source_name}:{index}"`) and `Reject.file`.
    start: Index of the first record to read.
    stop: Index one past the last record to read; None reads to the end.
    opener: Callable path -> binary file object (e.g. Beam's FileSystems.open).

  Yields:
    A `Record` per valid record and a `Reject` per record whose label byte is
    not 0-9, in file order.

  Raises:
    DataFormatError: The file ends inside a record, or before `stop`.
    ValueError: `start`/`stop` do not describe a range.
  """
  if start < 0 or (stop is not None and stop < start):
    raise ValueError(f"bad record range [{start}, {stop})")
  with opener(path) as f:
    fileio.skip_to(f, start * RECORD_BYTES)
    index = start
    while stop is None or index < stop:
      want = _RECORDS_PER_READ if stop is None else min(_RECORDS_PER_READ, stop - index)
      chunk = fileio.read_up_to(f, want * RECORD_BYTES)
      whole, extra = divmod(len(chunk), RECORD_BYTES)
      if extra:
        raise DataFormatError(
          path,
          f"file ends inside record {index + whole} ({_plural(extra, 'byte')} of "
          f"{RECORD_BYTES}); size is not a multiple of the CIFAR-10 record",
        )
      if stop is not None and whole < want:
        raise DataFormatError(
          path,
          f"file ends before record {index + whole}, expected records up to "
          f"{stop - 1}; was it changed after the job was planned?",
        )
      for i in range(whole):
        yield _decode(chunk[i * RECORD_BYTES : (i + 1) * RECORD_BYTES], source_name, index + i)
      index += whole
      if whole < want:
        return


# --- The data set ---

CLASS_NAMES = (
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
)
LAYOUT = BinaryLayout(
  batches_dir="cifar-10-batches-bin",
  splits={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
  meta_file="batches.meta.txt",
  archive="cifar-10-binary.tar.gz",
)

# The tutorial's input crop (cifar10_input.py: IMAGE_SIZE = 24).
_CROP = 24

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


def _stripes(coord, period):
  """Soft 0/1 stripes across `coord` (in pixels) with the given period."""
  return np.clip(0.5 + 1.5 * np.cos(2 * np.pi * coord / period), 0, 1)


def _cifar_alpha(rng, label, u_px, v_px, radius):
  """Coverage (0..1) of the object of class `label`, from rotated pixel coordinates."""
  u, v = u_px / radius, v_px / radius  # In object radii.
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
    sdf = np.minimum(
      np.maximum(np.abs(u) - 0.3, np.abs(v) - 1.0), np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.3)
    )
  elif label in (5, 6, 7):
    sdf = disc
    period = rng.uniform(3.6, 5.0)
    pattern = _stripes((v_px if label != 6 else u_px) + rng.uniform(0, period), period)
  elif label == 8:
    sdf = square
    period = rng.uniform(4.0, 5.5)
    phase = rng.uniform(0, period, size=2)
    pattern = np.clip(
      0.5
      + 2.0
      * np.cos(np.pi * (u_px + phase[0]) / period)
      * np.cos(np.pi * (v_px + phase[1]) / period),
      0,
      1,
    )
  else:
    sdf = square
    spacing = rng.uniform(3.8, 4.8)
    gu = (u_px + spacing / 2) % spacing - spacing / 2
    gv = (v_px + spacing / 2) % spacing - spacing / 2
    pattern = np.clip(1.3 - np.hypot(gu, gv), 0, 1)  # Dots of radius ~1.3 px.
  return np.clip(0.5 - sdf * radius, 0, 1) * pattern


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
  u_px = cos * dx + sin * dy  # Rotated coordinates, in pixels.
  v_px = -sin * dx + cos * dy

  alpha = _cifar_alpha(rng, label, u_px, v_px, radius)

  # Object and background differ in value, so the shape survives grayscale-ish
  # colour jitter; the background hue is arbitrary and unsaturated.
  obj_value = rng.uniform(0.45, 1.0)
  if obj_value > 0.7:
    bg_value = rng.uniform(0.05, obj_value - 0.35)
  else:
    bg_value = rng.uniform(obj_value + 0.3, 1.0)
  fg = sample_data.hsv(label / 10 + rng.uniform(-0.05, 0.05), rng.uniform(0.55, 1.0), obj_value)
  bg_hue, bg_sat = rng.uniform(0, 1), rng.uniform(0, 0.35)
  bg0 = sample_data.hsv(bg_hue, bg_sat, bg_value)
  bg1 = sample_data.hsv(
    bg_hue + rng.uniform(-0.1, 0.1), bg_sat, np.clip(bg_value + rng.uniform(-0.15, 0.15), 0, 1)
  )
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
    image = sample_data.unique(lambda: _cifar_image(rng, int(label)), seen)
    out.append(int(label))
    out += image.transpose(2, 0, 1).tobytes()
  return bytes(out)


def _write_sample(root, train_per_class, test_per_class, rng_for_split):
  """Writes the five training batches, the test batch and the class names file."""
  root = root / LAYOUT.batches_dir
  seen = set()
  files = []
  rng = rng_for_split("train")
  per_batch = train_per_class // len(LAYOUT.splits["train"])
  for name in LAYOUT.splits["train"]:
    labels = sample_data.balanced_labels(rng, len(CLASS_NAMES), per_batch)
    files.append(root / name)
    atomic.write_bytes(files[-1], _cifar_records(rng, labels, seen))
  rng = rng_for_split("test")
  files.append(root / LAYOUT.splits["test"][0])
  atomic.write_bytes(
    files[-1], _cifar_records(rng, sample_data.balanced_labels(rng, 10, test_per_class), seen)
  )
  # The official file ends with an empty line after the last class name.
  files.append(root / LAYOUT.meta_file)
  atomic.write_bytes(files[-1], ("\n".join(CLASS_NAMES) + "\n\n").encode("ascii"))
  counts = {"train": per_batch * 10 * len(LAYOUT.splits["train"]), "test": test_per_class * 10}
  return {"root": root, "counts": counts, "files": files}


SPEC = DatasetSpec(
  name="cifar10",
  description="CIFAR-10, binary version: 50,000 train and 10,000 test 32x32 colour images",
  class_names=CLASS_NAMES,
  layout=LAYOUT,
  # Size and SHA-256 from the TensorFlow Datasets catalogue
  # (tensorflow_datasets/url_checksums/cifar10.txt); see preprocess/download.py.
  sources=(
    download.RemoteFile(
      LAYOUT.archive,
      ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
      sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
      # Published on https://www.cs.toronto.edu/~kriz/cifar.html itself.
      md5="c32a1d4ab5d03f1284b67883e8d87530",
      size=170052171,
    ),
  ),
  # The tutorial trains on all 50,000 training images and evaluates on test.
  validation_size=0,
  # The TensorFlow CIFAR-10 tutorial (cifar10_input.distorted_inputs / inputs).
  augmentation={
    "train": [
      {"op": "random_crop", "height": _CROP, "width": _CROP},
      {"op": "random_flip_left_right"},
      {"op": "random_brightness", "max_delta": 63.0},
      {"op": "random_contrast", "lower": 0.2, "upper": 1.8},
      {"op": "per_image_standardization"},
    ],
    "eval": [
      {"op": "central_crop", "height": _CROP, "width": _CROP},
      {"op": "per_image_standardization"},
    ],
  },
  sample=Sample(
    per_class={"small": (250, 50), "full": (5000, 1000)}, write=_write_sample, stream=0
  ),
)
