"""What goes into which shard: list, check, split, shard.

Runs on the driver of the Beam job (pipeline/build_tfrecords.py), before any
pixels are read. First the data set's layout (its spec in preprocess/datasets/)
lists its raw files: the source files of each split in a fixed order, with
their record counts, checked for structural problems up front so a bad file
stops the run before anything is written. Each layout owns its format end to
end, listing and reading (preprocess/rawfiles.py says how); this module only
hands it the storage. Then it cuts the record counts into splits and shards:
each output shard becomes one `ShardTask`, a list of contiguous record ranges
of the sources. A worker converts a whole task, reading its ranges with the
layout's own reader, and writes its shard in one go (pipeline/convert.py), so no step has to gather the data
set in memory, and the same inputs always give the same shards on any runner.
All file access goes through Beam's `FileSystems`, so RAW can be a local
folder or a bucket.
"""

import dataclasses
import errno
import math
import os
import stat

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from preprocess import datasets
from preprocess import hashing

# --- List and check: the sources of each split ---


def open_raw(path):
  """Opens a file for reading as stored (no transparent gunzip), on any FileSystem."""
  return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _list(root):
  """Lists every file below `root`.

  Returns:
    (files, others): files maps each regular file's name relative to `root`
    ('/'-separated) to (path, size); others maps every other entry that is not
    a folder (dangling or looping symlinks, fifos, devices, sockets, names that
    are not UTF-8) to why it cannot be read. Local folders follow directory
    symlinks, each real folder once.
  """
  if "://" not in root:
    return _walk_local(root)
  found = {}
  for meta in FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list:
    rel = meta.path[len(root) :].lstrip("/")
    found[rel] = (meta.path, meta.size_in_bytes)
  return found, {}


_KINDS = (
  (stat.S_ISFIFO, "a fifo"),
  (stat.S_ISCHR, "a character device"),
  (stat.S_ISBLK, "a block device"),
  (stat.S_ISSOCK, "a socket"),
)


def _walk_local(root):
  """`_list` for a local folder: stat before open, so a fifo is never opened (it would block)."""
  files, others = {}, {}

  def visit(directory, rel_dir, ancestors):
    try:
      entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as e:
      others[rel_dir or "."] = f"cannot list folder: {e.strerror or e}"
      return
    for entry in entries:
      rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
      try:
        rel.encode("utf-8")
      except UnicodeEncodeError:
        # os.scandir hands undecodable bytes back as surrogates, which no
        # UTF-8 writer (Example, JSON) accepts: reject this name, not the run.
        others[rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")] = (
          "file name is not valid UTF-8; rename it"
        )
        continue
      try:
        info = os.stat(entry.path)  # Follows symlinks.
      except OSError as e:
        if e.errno == errno.ELOOP:
          others[rel] = "symlink loop"
        elif entry.is_symlink():
          others[rel] = f"dangling symlink to {os.readlink(entry.path)!r}"
        else:
          others[rel] = f"cannot stat: {e.strerror or e}"
        continue
      if stat.S_ISDIR(info.st_mode):
        key = (info.st_dev, info.st_ino)
        if key in ancestors:
          others[rel] = "symlinked folder loops back to a folder above it; not followed"
        elif key in seen:
          others[rel] = f"folder already listed as {seen[key]!r}; not listed twice"
        else:
          seen[key] = rel
          visit(entry.path, rel, ancestors | {key})
      elif stat.S_ISREG(info.st_mode):
        files[rel] = (entry.path, info.st_size)
      else:
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        others[rel] = f"not a regular file ({kind}); not opened"

  top = os.stat(root)
  seen = {(top.st_dev, top.st_ino): "."}
  visit(root, "", frozenset(seen))
  return files, others


class _Files:
  """The storage a layout lists and reads through (preprocess/rawfiles.py): Beam's FileSystems."""

  join = staticmethod(FileSystems.join)
  exists = staticmethod(FileSystems.exists)
  open = staticmethod(open_raw)
  list = staticmethod(_list)


def load(dataset, raw_dir, image_size=150, image_format="jpeg"):
  """Lists and checks the raw files of `dataset` under `raw_dir`/`dataset`.

  Args:
    dataset: A registered data set name (preprocess/datasets/).
    raw_dir: The raw data root (holds one folder per data set).
    image_size: Output side length for image-folder data sets.
    image_format: Shard encoding for image-folder data sets ("jpeg" or "png").

  Returns:
    A `preprocess.rawfiles.RawDataset`.

  Raises:
    DataFormatError: A file is missing or structurally broken.
  """
  spec = datasets.get(dataset)
  root = FileSystems.join(raw_dir, spec.name)
  options = {"image_size": image_size, "image_format": image_format}
  return spec.layout.list_raw(spec, root, _Files, options)


def sha256_file(path):
  """Hex sha256 of a file's stored bytes, on any FileSystem."""
  return hashing.sha256_file(path, opener=open_raw)


# --- Split and shard: record ranges of each output file ---

MIN_SHARDS = 4
RECORDS_PER_SHARD = 4096


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """One output shard and the source record ranges that fill it.

  Attributes:
    split: "train", "validation" or "test".
    index: Shard number, 0-based.
    num_shards: Shards in this split.
    ranges: Tuple of (Source, start, stop) record ranges, in order.
  """

  split: str
  index: int
  num_shards: int
  ranges: tuple

  @property
  def count(self):
    return sum(stop - start for _, start, stop in self.ranges)

  @property
  def filename(self):
    return shard_name(self.split, self.index, self.num_shards)


def shard_name(split, index, num_shards):
  """`train-00003-of-00016.tfrecord`: the name says the count, so a missing shard shows."""
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def default_num_shards(num_records):
  """About 4,096 records a shard, rounded up to a power of two, at least 4.

  Powers of two divide evenly among 2, 4, 8 ... workers, and at least four
  shards let up to four trainers read whole files each; tiny splits get one
  shard per record at most.
  """
  wanted = max(MIN_SHARDS, 2 ** math.ceil(math.log2(max(1, num_records / RECORDS_PER_SHARD))))
  return max(1, min(wanted, num_records))


def ranges_of(sources):
  """Whole-source ranges: [(source, 0, source.count), ...]."""
  return [(s, 0, s.count) for s in sources if s.count]


def take(ranges, n):
  """Splits record ranges into the first `n` records and the rest."""
  head, tail = [], []
  for source, start, stop in ranges:
    k = min(max(n, 0), stop - start)
    if k:
      head.append((source, start, start + k))
    if start + k < stop:
      tail.append((source, start + k, stop))
    n -= k
  return head, tail


def count(ranges):
  return sum(stop - start for _, start, stop in ranges)


def make_splits(splits, validation_size):
  """Record ranges of each output split.

  The validation split is the first `validation_size` training records (the
  MNIST recipe's first 5,000; CIFAR-10 batches are already in random order and
  image folders are listed in hash order), and training keeps the rest.

  Args:
    splits: Split name -> ordered list of `Source`, with "train" and "test".
    validation_size: Records to move from train to a validation split (0: none).

  Returns:
    Split name -> list of (source, start, stop).

  Raises:
    ValueError: validation_size is negative or leaves no training records.
  """
  train = ranges_of(splits["train"])
  out = {}
  if validation_size:
    if validation_size < 0 or validation_size >= count(train):
      raise ValueError(
        f"--validation-size {validation_size} must be between 0 and the "
        f"{count(train)} training records minus one"
      )
    out["validation"], train = take(train, validation_size)
  out["train"] = train
  out["test"] = ranges_of(splits["test"])
  return out


def make_tasks(split_ranges, num_shards=None):
  """Cuts each split into near-equal contiguous shards.

  Args:
    split_ranges: Split name -> list of (source, start, stop), from `make_splits`.
    num_shards: Shards per split, or None for `default_num_shards` of each.

  Returns:
    List of `ShardTask`, ordered by split then index.

  Raises:
    ValueError: More shards were asked for than a split has records.
  """
  tasks = []
  for split, ranges in split_ranges.items():
    total = count(ranges)
    shards = num_shards or default_num_shards(total)
    if total == 0:
      raise ValueError(f"split {split!r} has no records")
    if shards > total:
      raise ValueError(f"--num-shards {shards} is more than the {total} records of split {split!r}")
    rest = ranges
    for i in range(shards):
      size = (i + 1) * total // shards - i * total // shards
      mine, rest = take(rest, size)
      tasks.append(ShardTask(split, i, shards, tuple(mine)))
  return tasks
