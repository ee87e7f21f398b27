"""Reader for MNIST in its original IDX format, gzipped or not.

First stage of the data flow: an images/labels file pair -> `Record`/`Reject`
stream -> Beam encodes and shards them. The driver calls `find_split_files` on
the directory listing and `check_files` to validate both files end to end and
get the record count before planning shards; each worker then calls
`read_records` for its contiguous record range.

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
import struct
import zlib

import numpy as np

from preprocess import fileio
from preprocess.errors import DataFormatError
from preprocess.records import Record, Reject

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
      (the data set's own names, in preprocess/datasets/mnist.py).
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
    buf[:len(data)] = data
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
        path, f"bad IDX magic 0x{magic:08X} ({what}), expected {magic_expected} ({kind}){swapped}")
  head += read_idx(f, path, header_bytes - len(head))
  if len(head) < header_bytes:
    raise DataFormatError(
        path, f"file ends inside the IDX header ({len(head)} of {header_bytes} bytes)")
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
        path, f"truncated: {total} data bytes after the header, expected {expected} ({what})")
  if total > expected:
    raise DataFormatError(
        path, f"{total - expected} unexpected bytes after the data ({what}, {expected} bytes)")


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
          images_path, f"holds {n_images} images but {labels_path} holds {n_labels} labels")
    _check_data_length(images, images_path, n_images * rows * cols,
                       f"{n_images} images of {rows}x{cols}")
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
          images_path, f"holds {n_images} images but {labels_path} holds {n_labels} labels")
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
        raise DataFormatError(images_path, f"truncated: file ends inside image "
                              f"{index + len(pixels) // IMAGE_BYTES} of {n_images}")
      if len(label_bytes) < n:
        raise DataFormatError(labels_path, f"truncated: file ends before label "
                              f"{index + len(label_bytes)} of {n_labels}")
      for j in range(n):
        yield _decode(pixels[j * IMAGE_BYTES:(j + 1) * IMAGE_BYTES], label_bytes[j],
                      source_name, index + j)
      index += n


def _decode(pixels, label, source_name, index):
  """784 pixel bytes and a label byte -> Record, or Reject for a label outside 0-9."""
  if label > 9:
    return Reject(file=source_name, index=index,
                  reason=f"label byte {label} is not an MNIST class (0-9)")
  image = np.frombuffer(pixels, dtype=np.uint8).reshape(IMAGE_SHAPE).copy()
  return Record(source_id=f"{source_name}:{index}", label=int(label), image=image,
                content_sha256=hashlib.sha256(pixels + bytes([label])).hexdigest())
