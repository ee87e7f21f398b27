"""Reader for the CIFAR-10 binary version (`cifar-10-batches-bin`).

First stage of the data flow: raw `.bin` batch files -> `Record`/`Reject` stream
-> Beam encodes and shards them. The driver calls `read_class_names` and
`count_records` (from the file listing's sizes, no I/O) to plan shards as
contiguous record ranges; each worker then calls `read_records` for its range,
which seeks straight to the first record, so no worker reads bytes it does not
convert.

File format (https://www.cs.toronto.edu/~kriz/cifar.html): fixed 3073-byte
records, one label byte (0-9) then 1024 red, 1024 green and 1024 blue bytes,
each plane a row-major 32x32 image. `batches.meta.txt` lists the class names,
one a line.
"""

import dataclasses
import hashlib

import numpy as np

from preprocess import fileio
from preprocess.errors import DataFormatError
from preprocess.records import Record, Reject

IMAGE_SHAPE = (32, 32, 3)
RECORD_BYTES = 1 + 32 * 32 * 3  # 3073

# Records per read() call: ~780 KB, few enough calls that a remote file system
# is not hit once per 3 KB record, small enough to keep worker memory flat.
_RECORDS_PER_READ = 256


@dataclasses.dataclass(frozen=True)
class BinaryLayout:
  """Where a data set in this format keeps its files, under RAW/<name>/.

  The file names themselves are the data set's (preprocess/datasets/cifar10.py).

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
    from preprocess import download  # pylint: disable=g-import-not-at-top
    archive = local_files[0]
    log(f"{archive}: extracting")
    with download.extracted(archive, root) as tmp:
      batches = tmp / self.batches_dir
      missing = [n for n in self.file_names() if not (batches / n).is_file()]
      if missing:
        raise download.DownloadError(archive, f"no {self.batches_dir}/{missing[0]} in the "
                                              f"archive ({len(missing)} expected files missing)")
      # download() has refused a partial install unless `force`: replacing is safe.
      download.replace(batches, root / self.batches_dir)


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
        path, f"size {size} bytes is not a multiple of the {RECORD_BYTES}-byte CIFAR-10 "
        f"record ({_plural(whole, 'whole record')} + {_plural(extra, 'byte')})")
  return whole


def _decode(raw, source_name, index):
  """One 3073-byte record -> Record, or Reject for a label outside 0-9."""
  label = raw[0]
  if label > 9:
    return Reject(file=source_name, index=index,
                  reason=f"label byte {label} is not a CIFAR-10 class (0-9)")
  planes = np.frombuffer(raw, dtype=np.uint8, offset=1).reshape(3, 32, 32)
  # Channel-planar on disk, channels-last everywhere downstream; the copy also
  # makes the array own its memory instead of pinning the read buffer.
  image = np.ascontiguousarray(planes.transpose(1, 2, 0))
  return Record(source_id=f"{source_name}:{index}", label=int(label), image=image,
                content_sha256=hashlib.sha256(raw).hexdigest())


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
            path, f"file ends inside record {index + whole} ({_plural(extra, 'byte')} of "
            f"{RECORD_BYTES}); size is not a multiple of the CIFAR-10 record")
      if stop is not None and whole < want:
        raise DataFormatError(
            path, f"file ends before record {index + whole}, expected records up to "
            f"{stop - 1}; was it changed after the job was planned?")
      for i in range(whole):
        yield _decode(chunk[i * RECORD_BYTES:(i + 1) * RECORD_BYTES], source_name, index + i)
      index += whole
      if whole < want:
        return
