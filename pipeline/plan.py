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
import hashlib
import math
import os
from typing import Optional

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from preprocess import datasets
from preprocess import hashing
from preprocess import imagefolder
from preprocess.datasets import cifar10
from preprocess.datasets import mnist
from preprocess.errors import DataFormatError

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
  label: Optional[int] = None


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
  """
  name: str
  class_names: list
  image_shape: tuple
  image_format: str
  image_size: Optional[int]
  splits: dict
  rejects: list
  files: dict


def _list(root):
  """Name relative to `root` -> (path, size) of every file below it."""
  pattern = FileSystems.join(root, "**")
  found = {}
  for meta in FileSystems.match([pattern])[0].metadata_list:
    rel = os.path.relpath(meta.path, root) if "://" not in root else meta.path[len(root):].lstrip("/")
    found[rel.replace(os.sep, "/")] = (meta.path, meta.size_in_bytes)
  return found


def _list_required(root, what):
  """`_list(root)`, or a DataFormatError if `root` is missing or holds no files."""
  files = _list(root) if FileSystems.exists(root) else {}
  if not files:
    raise DataFormatError(root, f"no {what} found here (run with --download, or see README)")
  return files


def _list_cifar_binary(spec, root, options):
  layout = spec.layout
  batches = FileSystems.join(root, layout.batches_dir)
  archive = FileSystems.join(root, layout.archive)
  if not FileSystems.exists(batches) and FileSystems.exists(archive) and "://" not in archive:
    from preprocess import download  # pylint: disable=g-import-not-at-top
    download.extract_archive(archive, root)
  files = _list_required(batches, f"{spec.name} binary batches ({layout.batches_dir}/)")
  meta_name = layout.meta_file
  if meta_name not in files:
    raise DataFormatError(FileSystems.join(batches, meta_name), "missing class names file")
  class_names = cifar10.read_class_names(files[meta_name][0], opener=open_raw)
  splits = {}
  for split, names in layout.splits.items():
    sources = []
    for fname in names:
      if fname not in files:
        raise DataFormatError(FileSystems.join(batches, fname), f"missing {spec.name} batch file")
      path, size = files[fname]
      count = cifar10.count_records(path, size)
      sources.append(Source(layout.format, (path,), f"{layout.batches_dir}/{fname}", count))
    splits[split] = sources
  used = {s.name: s.paths[0] for split in splits.values() for s in split}
  used[f"{layout.batches_dir}/{meta_name}"] = files[meta_name][0]
  return RawDataset(spec.name, class_names, cifar10.IMAGE_SHAPE, "png", None, splits, [], used)


def _list_idx(spec, root, options):
  files = _list_required(root, f"{spec.name} IDX files")
  splits, used = {}, {}
  for split, bases in spec.layout.splits.items():
    images, labels = mnist.find_split_files(set(files), bases, directory=root)
    count = mnist.check_files(files[images][0], files[labels][0], opener=open_raw)
    splits[split] = [Source(spec.layout.format, (files[images][0], files[labels][0]), images, count)]
    used[images], used[labels] = files[images][0], files[labels][0]
  return RawDataset(spec.name, list(spec.class_names), mnist.IMAGE_SHAPE, "png", None, splits, [],
                    used)


def _list_image_folder(spec, root, options):
  folders = "/ and ".join(spec.layout.splits)
  files = _list_required(root, f"{spec.name} images ({folders}/ folders)")
  splits, rejects, used = {}, [], {}
  for split in spec.layout.splits:
    in_split = {rel[len(split) + 1:]: rel for rel in files if rel.startswith(split + "/")}
    if not in_split:
      raise DataFormatError(FileSystems.join(root, split), "no images for this split")
    candidates, split_rejects = imagefolder.list_split(sorted(in_split), spec.class_names)
    rejects += [dataclasses.replace(r, file=f"{split}/{r.file}") for r in split_rejects]
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
  return RawDataset(spec.name, list(spec.class_names), (size, size, 3), options["image_format"],
                    size, splits, rejects, used)


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
  return mnist.read_records(source.paths[0], source.paths[1], source.name, start, stop,
                            opener=open_raw)


def _read_image(source, start, stop, image_size):
  del start, stop  # One image a source.
  return [imagefolder.load_image(source.paths[0], source.name, source.label, image_size,
                                 opener=open_raw)]


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
      raise ValueError(f"--validation-size {validation_size} must be between 0 and the "
                       f"{count(train)} training records minus one")
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
