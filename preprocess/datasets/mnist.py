"""MNIST: the data set spec and its file format (IDX).

Everything the project knows about MNIST by name: its raw file names, class
names, the official files and their checksums, the recipe's validation size,
its augmentation, and the sample-data generator (hand-drawn jittered strokes,
one template per digit). The registry (preprocess/datasets/__init__.py) finds
this file.

The IDX format lives here too (TFDS keeps a data set's parsing in its builder):
`IdxLayout` and the reader, gzipped or not, the first stage of the data flow:
an images/labels file pair -> `Record`/`Reject` stream -> Beam encodes and
shards them. The driver (pipeline/plan.py) calls `find_split_files` on the
directory listing and `check_files` to validate both files end to end and get
the record count before planning shards; each worker then calls `read_records`
for its contiguous record range. Another data set in this format (Fashion-MNIST)
imports `IdxLayout` and the reader from this module.

File format (http://yann.lecun.com/exdb/mnist/): a big-endian header (magic
2051 = unsigned bytes, 3 dimensions: count, rows, cols for images; magic 2049 =
unsigned bytes, 1 dimension: count for labels) followed by the raw bytes, one
row-major 28x28 image or one label byte per record. Files are distributed
gzipped; whether a file is compressed is decided by its first two bytes, not its
name, because some openers (Beam's FileSystems.open with its default
compression) already gunzip `.gz` files and some mirrors ship gzip data without
the extension.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import io
import math
import struct
import zlib

import numpy as np
from PIL import Image
from PIL import ImageDraw

from preprocess import atomic
from preprocess import download
from preprocess import fileio
from preprocess import rawfiles
from preprocess import sample_data
from preprocess.datasets import DatasetSpec
from preprocess.datasets import Sample
from preprocess.errors import DataFormatError
from preprocess.schema import Record
from preprocess.schema import Reject

# --- The IDX format ---

IMAGE_SHAPE = (28, 28, 1)
IMAGE_BYTES = 28 * 28

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
GZIP_MAGIC = b"\x1f\x8b"

# kind -> (magic, number of dimensions in the header)
_IDX_KINDS = {"images": (IMAGES_MAGIC, 3), "labels": (LABELS_MAGIC, 1)}
_KIND_OF_MAGIC = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}

# Records per read() call: ~800 KB of pixels; bounds memory, amortises calls.
_RECORDS_PER_READ = 1024
_SKIP_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class IdxLayout:
  """Where a data set in this format keeps its files: RAW/<name>/<file>[.gz].

  Attributes:
    splits: Split name -> (images file, labels file), names without `.gz`
      (the data set's own names, `LAYOUT` below).
  """

  splits: dict
  format = "idx"

  def installed_paths(self, root, remote_files):
    """The paths whose presence means the data set is installed: the downloaded files."""
    return [root / f.filename for f in remote_files]

  def partial_install(self, root):
    del root  # Each file is installed on its own, by rename.
    return None

  def install(self, local_files, root, log):
    del local_files, root, log  # The readers take the gzipped files as downloaded.

  def list_raw(self, spec, root, files, options):
    """Lists and checks the IDX files under `root` (RAW/<name>); returns a `RawDataset`."""
    del options  # Stored as is, 28x28 PNG.
    found, _ = rawfiles.list_required(files, root, f"{spec.name} IDX files")
    # Only the files the layout names are read; find_split_files names a missing one.
    splits, used = {}, {}
    for split, bases in self.splits.items():
      images, labels = find_split_files(set(found), bases, directory=root)
      paths = (found[images][0], found[labels][0])
      count = check_files(*paths, opener=files.open)
      splits[split] = [rawfiles.Source(self.format, paths, images, count)]
      used[images], used[labels] = paths
    return rawfiles.RawDataset(
      spec.name, list(spec.class_names), IMAGE_SHAPE, "png", None, splits, [], used
    )

  @staticmethod
  def read(source, start, stop, image_size, opener):
    """Yields the `Record`s and `Reject`s of records [start, stop) of an images+labels `Source`."""
    del image_size  # Stored as is, 28x28.
    return read_records(source.paths[0], source.paths[1], source.name, start, stop, opener=opener)


def find_split_files(names, split_files, directory=None):
  """Picks the images and labels file names of a split from a directory listing.

  Args:
    names: The file names (not paths) present in the MNIST directory.
    split_files: (images, labels) base names of the split, e.g. `IdxLayout.splits["train"]`.
    directory: The directory, used only to name a missing file in the error.

  Returns:
    (images_name, labels_name); the `.gz` variant of each when both exist.

  Raises:
    DataFormatError: A file is present in neither variant.
  """
  names = set(names)
  chosen = []
  for base in split_files:
    for candidate in (base + ".gz", base):
      if candidate in names:
        chosen.append(candidate)
        break
    else:
      path = f"{directory.rstrip('/')}/{base}" if directory else base
      raise DataFormatError(path, f"not found (looked for {base}.gz and {base})")
  return tuple(chosen)


class _Prepended(io.RawIOBase):
  """A non-seekable stream with bytes already read from it put back in front."""

  def __init__(self, prefix, raw):
    super().__init__()
    self._prefix = prefix
    self._raw = raw

  def readable(self):
    return True

  def readinto(self, buf):
    if self._prefix:
      n = min(len(buf), len(self._prefix))
      buf[:n] = self._prefix[:n]
      self._prefix = self._prefix[n:]
      return n
    data = self._raw.read(len(buf))
    buf[: len(data)] = data
    return len(data)


@contextlib.contextmanager
def open_idx(path, opener=fileio.open_rb):
  """Opens an IDX file for reading, gunzipping it if it starts with 1f 8b.

  Args:
    path: Path of the file.
    opener: Callable path -> binary file object (e.g. Beam's FileSystems.open).

  Yields:
    A binary stream of the uncompressed IDX bytes. Read it with `read_idx` so a
    corrupt gzip stream becomes a `DataFormatError`.
  """
  with opener(path) as raw:
    # An opener may already be decompressing (Beam's does for .gz), so even
    # these first bytes can hit a corrupt stream.
    head = read_idx(raw, path, 2)
    if fileio.seekable(raw):
      raw.seek(0)
      stream = raw
    else:
      stream = io.BufferedReader(_Prepended(head, raw))
    if head == GZIP_MAGIC:
      with gzip.GzipFile(fileobj=stream, mode="rb") as unzipped:
        yield unzipped
    else:
      yield stream


def read_idx(f, path, n):
  """Reads up to n bytes from an `open_idx` stream (fewer only at the end).

  Raises:
    DataFormatError: The gzip stream is corrupt or truncated. The gzip module
      reports these as EOFError, zlib.error or BadGzipFile, which would
      otherwise surface as a traceback that does not name the file.
  """
  try:
    return fileio.read_up_to(f, n)
  except EOFError as e:
    raise DataFormatError(path, f"truncated gzip stream ({str(e).lower().rstrip('.')})") from None
  except (zlib.error, gzip.BadGzipFile) as e:
    raise DataFormatError(path, f"corrupt gzip stream ({e})") from None


def _skip(f, path, n):
  """Advances past n bytes: seeks in plain files, decompresses and drops in gzip."""
  # Only io streams: other file objects (Beam's CompressedFile) may emulate a
  # seek by decompressing without our error translation.
  if isinstance(f, io.IOBase) and not isinstance(f, gzip.GzipFile) and fileio.seekable(f):
    f.seek(n, io.SEEK_CUR)
    return
  while n:
    got = len(read_idx(f, path, min(n, _SKIP_CHUNK)))
    if not got:
      return  # Short file; the next read reports it with the record index.
    n -= got


def _read_header(f, path, kind):
  """Reads and checks an IDX header; returns its dimensions."""
  magic_expected, ndim = _IDX_KINDS[kind]
  header_bytes = 4 + 4 * ndim
  head = read_idx(f, path, 4)
  magic = int.from_bytes(head, "big") if len(head) == 4 else None
  if magic is not None and magic != magic_expected:
    found = _KIND_OF_MAGIC.get(magic)
    what = f"{magic}, the magic of an MNIST {found} file" if found else str(magic)
    swapped = "; are the images and labels files swapped?" if found else ""
    raise DataFormatError(
      path, f"bad IDX magic 0x{magic:08X} ({what}), expected {magic_expected} ({kind}){swapped}"
    )
  head += read_idx(f, path, header_bytes - len(head))
  if len(head) < header_bytes:
    raise DataFormatError(
      path, f"file ends inside the IDX header ({len(head)} of {header_bytes} bytes)"
    )
  dims = struct.unpack(f">{ndim}I", head[4:])
  if kind == "images" and dims[1:] != IMAGE_SHAPE[:2]:
    raise DataFormatError(path, f"images are {dims[1]}x{dims[2]}, expected 28x28")
  return dims


def _check_data_length(f, path, expected, what):
  """Streams the rest of the file and checks it holds exactly `expected` bytes."""
  total = 0
  while True:
    got = len(read_idx(f, path, _SKIP_CHUNK))
    if not got:
      break
    total += got
  if total < expected:
    raise DataFormatError(
      path, f"truncated: {total} data bytes after the header, expected {expected} ({what})"
    )
  if total > expected:
    raise DataFormatError(
      path, f"{total - expected} unexpected bytes after the data ({what}, {expected} bytes)"
    )


def check_files(images_path, labels_path, opener=fileio.open_rb):
  """Validates an images/labels pair end to end and returns its record count.

  Reads both files once, in constant memory, so that a truncated download or a
  corrupt gzip stream fails the job on the driver rather than in one worker.

  Args:
    images_path: Path of the IDX images file (gzipped or not).
    labels_path: Path of the matching IDX labels file (gzipped or not).
    opener: Callable path -> binary file object (e.g. Beam's FileSystems.open).

  Returns:
    The number of records (images == labels).

  Raises:
    DataFormatError: Bad magic or dimensions, counts that disagree, data
      shorter or longer than the header says, or a corrupt/truncated gzip.
  """
  with open_idx(images_path, opener) as images, open_idx(labels_path, opener) as labels:
    n_images, rows, cols = _read_header(images, images_path, "images")
    (n_labels,) = _read_header(labels, labels_path, "labels")
    if n_images != n_labels:
      raise DataFormatError(
        images_path, f"holds {n_images} images but {labels_path} holds {n_labels} labels"
      )
    _check_data_length(
      images, images_path, n_images * rows * cols, f"{n_images} images of {rows}x{cols}"
    )
    _check_data_length(labels, labels_path, n_labels, f"{n_labels} labels")
  return n_images


def read_records(images_path, labels_path, source_name, start=0, stop=None, opener=fileio.open_rb):
  """Yields the records [start, stop) of an MNIST images/labels pair.

  Args:
    images_path: Path of the IDX images file (gzipped or not).
    labels_path: Path of the matching IDX labels file (gzipped or not).
    source_name: Name of the images file relative to the data set root, used in
      `Record.source_id` (`f"{source_name}:{index}"`) and `Reject.file`.
    start: Index of the first record to read.
    stop: Index one past the last record to read; None reads to the end.
    opener: Callable path -> binary file object (e.g. Beam's FileSystems.open).

  Yields:
    A `Record` (28x28x1 uint8 image) per valid record and a `Reject` per record
    whose label is not 0-9, in file order.

  Raises:
    DataFormatError: Bad header, counts that disagree, a file that ends before
      `stop`, or a corrupt gzip stream.
    ValueError: [start, stop) is not a range inside the files.
  """
  with open_idx(images_path, opener) as images, open_idx(labels_path, opener) as labels:
    n_images = _read_header(images, images_path, "images")[0]
    (n_labels,) = _read_header(labels, labels_path, "labels")
    if n_images != n_labels:
      raise DataFormatError(
        images_path, f"holds {n_images} images but {labels_path} holds {n_labels} labels"
      )
    stop = n_images if stop is None else stop
    if not 0 <= start <= stop <= n_images:
      raise ValueError(f"record range [{start}, {stop}) is outside the {n_images} records")
    _skip(images, images_path, start * IMAGE_BYTES)
    _skip(labels, labels_path, start)
    index = start
    while index < stop:
      n = min(_RECORDS_PER_READ, stop - index)
      pixels = read_idx(images, images_path, n * IMAGE_BYTES)
      label_bytes = read_idx(labels, labels_path, n)
      if len(pixels) < n * IMAGE_BYTES:
        raise DataFormatError(
          images_path,
          f"truncated: file ends inside image {index + len(pixels) // IMAGE_BYTES} of {n_images}",
        )
      if len(label_bytes) < n:
        raise DataFormatError(
          labels_path, f"truncated: file ends before label {index + len(label_bytes)} of {n_labels}"
        )
      for j in range(n):
        yield _decode(
          pixels[j * IMAGE_BYTES : (j + 1) * IMAGE_BYTES], label_bytes[j], source_name, index + j
        )
      index += n


def _decode(pixels, label, source_name, index):
  """784 pixel bytes and a label byte -> Record, or Reject for a label outside 0-9."""
  if label > 9:
    return Reject(
      file=source_name, index=index, reason=f"label byte {label} is not an MNIST class (0-9)"
    )
  image = np.frombuffer(pixels, dtype=np.uint8).reshape(IMAGE_SHAPE).copy()
  return Record(
    source_id=f"{source_name}:{index}",
    label=int(label),
    image=image,
    content_sha256=hashlib.sha256(pixels + bytes([label])).hexdigest(),
  )


# --- The data set ---

CLASS_NAMES = tuple(str(d) for d in range(10))
LAYOUT = IdxLayout(
  splits={
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
  }
)


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
    polylines.append(
      np.stack(
        [x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)],
        axis=1,
      )
    )
  # Centre the digit's bounding box, then shift a little, as MNIST's centring
  # by centre of mass leaves digits slightly off the box centre.
  allpts = np.concatenate(polylines)
  offset = (
    size / 2
    - (allpts.min(0) + allpts.max(0)) / 2
    + rng.uniform(-1.5, 1.5, size=2) * _MNIST_SUPERSAMPLE
  )
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
    image_header = struct.pack(">iiii", IMAGES_MAGIC, n, _MNIST_SIZE, _MNIST_SIZE)
    atomic.write_bytes(files[-2], sample_data.gzip_bytes(image_header + images.tobytes()))
    label_header = struct.pack(">ii", LABELS_MAGIC, n)
    atomic.write_bytes(
      files[-1], sample_data.gzip_bytes(label_header + labels.astype(np.uint8).tobytes())
    )
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
  "train-images-idx3-ubyte": (
    9912422,
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
  ),
  "train-labels-idx1-ubyte": (
    28881,
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
  ),
  "t10k-images-idx3-ubyte": (
    1648877,
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
  ),
  "t10k-labels-idx1-ubyte": (
    4542,
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
  ),
}

SPEC = DatasetSpec(
  name="mnist",
  description="MNIST: 60,000 train and 10,000 test 28x28 grayscale digits (IDX files)",
  class_names=CLASS_NAMES,
  layout=LAYOUT,
  sources=tuple(
    download.mirrored(f"{base}.gz", _MIRRORS, size=_DIGESTS[base][0], sha256=_DIGESTS[base][1])
    for split in ("train", "test")
    for base in LAYOUT.splits[split]
  ),
  # The recipes hold out the first 5,000 training images for validation.
  validation_size=5000,
  augmentation={
    "train": [{"op": "scale", "factor": 1.0 / 255.0}],
    "eval": [{"op": "scale", "factor": 1.0 / 255.0}],
  },
  # The small sample keeps more than 5,000 training images, so the default
  # validation split leaves 1,000 to train on.
  sample=Sample(
    per_class={"small": (600, 50), "full": (6000, 1000)}, write=_write_sample, stream=1
  ),
)
