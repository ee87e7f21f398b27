"""What goes into which shard: list, check, split, shard.

Runs on the driver of the Beam job (pipeline/build_tfrecords.py), before any
pixels are read. First it lists a data set's raw files following its spec
(preprocess/datasets/): the source files of each split in a fixed order, with
their record counts, checked for structural problems up front so a bad file
stops the run before anything is written. Then it cuts the record counts into
splits and shards: each output shard becomes one `ShardTask`, a list of
contiguous record ranges of the sources. A worker converts a whole task with
`read_source` and writes its shard in one go (pipeline/convert.py), so no step
has to gather the data set in memory, and the same inputs always give the same
shards on any runner. All file access goes through Beam's `FileSystems`, so RAW
can be a local folder or a bucket.
"""

import dataclasses
import errno
import hashlib
import math
import os
import pathlib
import stat

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from preprocess import datasets
from preprocess import hashing
from preprocess import imagefolder
from preprocess.datasets import cifar10
from preprocess.datasets import mnist
from preprocess.errors import DataFormatError
from preprocess.schema import Reject

# --- List and check: the sources of each split ---


def open_raw(path):
  """Opens a file for reading as stored (no transparent gunzip), on any FileSystem."""
  return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


@dataclasses.dataclass(frozen=True)
class Source:
  """A run of records in the raw data: a record file, or one image file.

  Attributes:
    kind: The layout's format, "cifar_binary", "idx" or "image"; selects the reader.
    paths: What the reader opens (the MNIST images and labels files, or one file).
    name: The source's name relative to the data set root; record ids derive from it.
    count: Records in the source (1 for an image file).
    label: The class of an image file (from its folder or name), else None.
  """

  kind: str
  paths: tuple
  name: str
  count: int
  label: int | None = None


@dataclasses.dataclass
class RawDataset:
  """What the planner needs to know about one data set's raw files.

  Attributes:
    name: Data set name.
    class_names: Class names, index = label.
    image_shape: (height, width, channels) of every record after decoding.
    image_format: "png" or "jpeg": how records are encoded in the shards.
    image_size: The side images were resized to (image folders), else None.
    splits: Split name -> ordered list of `Source`s.
    rejects: Inputs rejected while listing (unknown class, non-image files).
    files: Name relative to the data set root -> path, for every source file.
    skipped: Files that are not data (hidden, OS metadata, notes) or lie outside
      the layout's splits, as `Reject`s: ledgered, never read, never counted
      against a split.
  """

  name: str
  class_names: list
  image_shape: tuple
  image_format: str
  image_size: int | None
  splits: dict
  rejects: list
  files: dict
  skipped: list = dataclasses.field(default_factory=list)


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


def _list_required(root, what):
  """`_list(root)`, or a DataFormatError if `root` is missing or holds nothing."""
  files, others = _list(root) if FileSystems.exists(root) else ({}, {})
  if not files and not others:
    raise DataFormatError(root, f"no {what} found here (run with --download, or see README)")
  return files, others


def _required_file(files, others, directory, name, what):
  """The (path, size) of a required source file, or a DataFormatError saying why not."""
  if name in files:
    return files[name]
  path = FileSystems.join(directory, name)
  if name in others:
    raise DataFormatError(path, others[name])
  raise DataFormatError(path, f"missing {what}")


def _list_cifar_binary(spec, root, options):
  layout = spec.layout
  batches = FileSystems.join(root, layout.batches_dir)
  archive = FileSystems.join(root, layout.archive)
  if not FileSystems.exists(batches) and FileSystems.exists(archive) and "://" not in archive:
    from preprocess import download

    # The layout's own install: verified archive (the official checksum when
    # it is the official file, the gzip CRC always), extracted into a hidden
    # folder, and renamed into place only when every batch file is there.
    download.verify_archive(archive, spec.sources)
    spec.layout.install([pathlib.Path(archive)], pathlib.Path(root), log=lambda line: None)
  files, others = _list_required(batches, f"{spec.name} binary batches ({layout.batches_dir}/)")
  meta_name = layout.meta_file
  meta_path, _ = _required_file(files, others, batches, meta_name, "class names file")
  class_names = cifar10.read_class_names(meta_path, opener=open_raw)
  splits = {}
  for split, names in layout.splits.items():
    sources = []
    for fname in names:
      path, size = _required_file(files, others, batches, fname, f"{spec.name} batch file")
      count = cifar10.count_records(path, size)
      sources.append(Source(layout.format, (path,), f"{layout.batches_dir}/{fname}", count))
    splits[split] = sources
  used = {s.name: s.paths[0] for split in splits.values() for s in split}
  used[f"{layout.batches_dir}/{meta_name}"] = files[meta_name][0]
  return RawDataset(spec.name, class_names, cifar10.IMAGE_SHAPE, "png", None, splits, [], used)


def _list_idx(spec, root, options):
  files, others = _list_required(root, f"{spec.name} IDX files")
  del others  # Only the files the spec names are read; mnist.find_split_files names a missing one.
  splits, used = {}, {}
  for split, bases in spec.layout.splits.items():
    images, labels = mnist.find_split_files(set(files), bases, directory=root)
    count = mnist.check_files(files[images][0], files[labels][0], opener=open_raw)
    splits[split] = [
      Source(spec.layout.format, (files[images][0], files[labels][0]), images, count)
    ]
    used[images], used[labels] = files[images][0], files[labels][0]
  return RawDataset(
    spec.name, list(spec.class_names), mnist.IMAGE_SHAPE, "png", None, splits, [], used
  )


def _list_image_folder(spec, root, options):
  folders = "/ and ".join(spec.layout.splits)
  files, others = _list_required(root, f"{spec.name} images ({folders}/ folders)")
  splits, rejects, used = {}, [], {}
  skipped = _outside_splits(spec.layout.splits, files, others)
  for split in spec.layout.splits:
    in_split = {rel[len(split) + 1 :]: rel for rel in files if rel.startswith(split + "/")}
    # Listed but unreadable (fifos, devices, dangling or looping symlinks, names
    # that are not UTF-8): ledgered rejects, never opened.
    unusable = sorted(rel for rel in others if rel.startswith(split + "/") or rel == split)
    candidates, split_rejects, split_skipped = imagefolder.list_split(
      sorted(in_split), spec.class_names
    )
    if not candidates and not split_rejects and not unusable:
      raise DataFormatError(FileSystems.join(root, split), "no images for this split")
    rejects += [Reject(file=rel, index=None, reason=others[rel]) for rel in unusable]
    rejects += [dataclasses.replace(r, file=f"{split}/{r.file}") for r in split_rejects]
    skipped += [dataclasses.replace(r, file=f"{split}/{r.file}") for r in split_skipped]
    # Sorted by path, all of one class would come before the next and every
    # shard (and the validation split) would hold one class; a hash order mixes them.
    candidates = sorted(candidates, key=lambda c: hashlib.sha256(c[0].encode()).digest())
    sources = []
    for rel, label in candidates:
      name = in_split[rel]
      sources.append(Source(spec.layout.format, (files[name][0],), name, 1, label))
      used[name] = files[name][0]
    splits[split] = sources
  size = options["image_size"]
  return RawDataset(
    spec.name,
    list(spec.class_names),
    (size, size, 3),
    options["image_format"],
    size,
    splits,
    rejects,
    used,
    sorted(skipped, key=lambda r: r.file),
  )


def _outside_splits(split_names, files, others):
  """Skipped entries for everything below the root that no split folder holds.

  Images there (`catdog/validation/cat/x.jpg`, `catdog/x.jpg`) are not
  converted, but ledgered with the reason, never silently dropped.
  """
  inside = tuple(s + "/" for s in split_names)
  skipped = []
  for rel in sorted(set(files) | set(others)):
    if rel.startswith(inside) or rel in split_names:
      continue
    why = imagefolder.skip_reason(rel) or (
      f"outside the split folders ({', '.join(inside)}); not converted"
    )
    skipped.append(Reject(file=rel, index=None, reason=why))
  return skipped


def load(dataset, raw_dir, image_size=150, image_format="jpeg"):
  """Lists and checks the raw files of `dataset` under `raw_dir`/`dataset`.

  Args:
    dataset: A registered data set name (preprocess/datasets/).
    raw_dir: The raw data root (holds one folder per data set).
    image_size: Output side length for image-folder data sets.
    image_format: Shard encoding for image-folder data sets ("jpeg" or "png").

  Returns:
    A `RawDataset`.

  Raises:
    DataFormatError: A file is missing or structurally broken.
  """
  spec = datasets.get(dataset)
  root = FileSystems.join(raw_dir, spec.name)
  lister = _FORMATS[spec.layout.format][0]
  return lister(spec, root, {"image_size": image_size, "image_format": image_format})


def _read_cifar_binary(source, start, stop, image_size):
  del image_size  # Stored as is, 32x32.
  return cifar10.read_records(source.paths[0], source.name, start, stop, opener=open_raw)


def _read_idx(source, start, stop, image_size):
  del image_size  # Stored as is, 28x28.
  return mnist.read_records(
    source.paths[0], source.paths[1], source.name, start, stop, opener=open_raw
  )


def _read_image(source, start, stop, image_size):
  del start, stop  # One image a source.
  path = source.paths[0]
  if "://" not in path:
    # Listed as a regular file, but it may have been swapped since: never open
    # a fifo (blocks forever) or a device.
    try:
      info = os.stat(path)
    except OSError as e:
      return [Reject(file=source.name, index=None, reason=f"cannot stat: {e.strerror or e}")]
    if not stat.S_ISREG(info.st_mode):
      return [Reject(file=source.name, index=None, reason="not a regular file; not opened")]
  try:
    return [imagefolder.load_image(path, source.name, source.label, image_size, opener=open_raw)]
  except OSError as e:
    # One unreadable photo among thousands is a reject, like an undecodable one.
    return [Reject(file=source.name, index=None, reason=f"cannot read: {e.strerror or e}")]


# Format (a layout's `format`, a Source's `kind`) -> (lister on the driver,
# reader of one record range on a worker). Formats, not data sets: every data
# set in a format shares them.
_FORMATS = {
  "cifar_binary": (_list_cifar_binary, _read_cifar_binary),
  "idx": (_list_idx, _read_idx),
  "image": (_list_image_folder, _read_image),
}


def read_source(source, start, stop, image_size):
  """Yields the `Record`s and `Reject`s of `source` records [start, stop)."""
  if source.kind not in _FORMATS:
    raise ValueError(f"unknown source kind {source.kind!r}")
  yield from _FORMATS[source.kind][1](source, start, stop, image_size)


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
