"""Driver-side view of each raw data set: its files, splits, classes and shape.

Before any pixels are read, the Beam job (pipeline/build_tfrecords.py) asks this
module what a data set holds: the source files of each split in a fixed order,
with their record counts, checked for structural problems up front so a bad
file stops the run before anything is written. All file access goes through
Beam's `FileSystems`, so RAW can be a local folder or a bucket.
"""

import dataclasses
import hashlib
import os
from typing import Optional

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from preprocess import cifar10
from preprocess import imagefolder
from preprocess import mnist
from preprocess.errors import DataFormatError

DATASETS = ("cifar10", "mnist", "catdog")
CATDOG_CLASSES = ("cat", "dog")


def open_raw(path):
  """Opens a file for reading as stored (no transparent gunzip), on any FileSystem."""
  return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


@dataclasses.dataclass(frozen=True)
class Source:
  """A run of records in the raw data: a record file, or one image file.

  Attributes:
    kind: "cifar10", "mnist" or "image"; selects the reader.
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
    splits: Split name -> ordered list of `Source`s.
    rejects: Inputs rejected while listing (unknown class, non-image files).
    files: Name relative to the data set root -> path, for every source file.
  """
  name: str
  class_names: list
  image_shape: tuple
  image_format: str
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


def _cifar10(raw_dir, options):
  root = FileSystems.join(raw_dir, "cifar10")
  batches = FileSystems.join(root, cifar10.BATCHES_DIR)
  archive = FileSystems.join(root, "cifar-10-binary.tar.gz")
  if not FileSystems.exists(batches) and FileSystems.exists(archive) and "://" not in archive:
    from preprocess import download  # pylint: disable=g-import-not-at-top
    download.extract_archive(archive, root)
  files = _list_required(batches, "CIFAR-10 binary batches (cifar-10-batches-bin/)")
  meta_name = cifar10.META_FILE
  if meta_name not in files:
    raise DataFormatError(FileSystems.join(batches, meta_name), "missing class names file")
  class_names = cifar10.read_class_names(files[meta_name][0], opener=open_raw)
  splits = {}
  for split, names in (("train", cifar10.TRAIN_FILES), ("test", cifar10.TEST_FILES)):
    sources = []
    for fname in names:
      if fname not in files:
        raise DataFormatError(FileSystems.join(batches, fname), "missing CIFAR-10 batch file")
      path, size = files[fname]
      count = cifar10.count_records(path, size)
      sources.append(Source("cifar10", (path,), f"{cifar10.BATCHES_DIR}/{fname}", count))
    splits[split] = sources
  used = {s.name: s.paths[0] for split in splits.values() for s in split}
  used[f"{cifar10.BATCHES_DIR}/{meta_name}"] = files[meta_name][0]
  return RawDataset("cifar10", class_names, cifar10.IMAGE_SHAPE, "png", splits, [], used)


def _mnist(raw_dir, options):
  root = FileSystems.join(raw_dir, "mnist")
  files = _list_required(root, "MNIST IDX files")
  splits, used = {}, {}
  for split in ("train", "test"):
    images, labels = mnist.find_split_files(set(files), split, directory=root)
    count = mnist.check_files(files[images][0], files[labels][0], opener=open_raw)
    splits[split] = [Source("mnist", (files[images][0], files[labels][0]), images, count)]
    used[images], used[labels] = files[images][0], files[labels][0]
  return RawDataset("mnist", list(mnist.CLASS_NAMES), mnist.IMAGE_SHAPE, "png", splits, [], used)


def _catdog(raw_dir, options):
  root = FileSystems.join(raw_dir, "catdog")
  files = _list_required(root, "cat/dog images (train/ and test/ folders)")
  splits, rejects, used = {}, [], {}
  for split in ("train", "test"):
    in_split = {rel[len(split) + 1:]: rel for rel in files if rel.startswith(split + "/")}
    if not in_split:
      raise DataFormatError(FileSystems.join(root, split), "no images for this split")
    candidates, split_rejects = imagefolder.list_split(sorted(in_split), CATDOG_CLASSES)
    rejects += [dataclasses.replace(r, file=f"{split}/{r.file}") for r in split_rejects]
    # Sorted by path, all cats would come before all dogs and every shard (and
    # the validation split) would hold one class; a hash order mixes them.
    candidates = sorted(candidates, key=lambda c: hashlib.sha256(c[0].encode()).digest())
    sources = []
    for rel, label in candidates:
      name = in_split[rel]
      sources.append(Source("image", (files[name][0],), name, 1, label))
      used[name] = files[name][0]
    splits[split] = sources
  size = options["image_size"]
  return RawDataset("catdog", list(CATDOG_CLASSES), (size, size, 3), options["image_format"],
                    splits, rejects, used)


_LOADERS = {"cifar10": _cifar10, "mnist": _mnist, "catdog": _catdog}


def load(dataset, raw_dir, image_size=150, image_format="jpeg"):
  """Lists and checks the raw files of `dataset` under `raw_dir`.

  Args:
    dataset: One of DATASETS.
    raw_dir: The raw data root (holds cifar10/, mnist/, catdog/).
    image_size: Output side length for image-folder data sets.
    image_format: Shard encoding for image-folder data sets ("jpeg" or "png").

  Returns:
    A `RawDataset`.

  Raises:
    DataFormatError: A file is missing or structurally broken.
  """
  return _LOADERS[dataset](raw_dir, {"image_size": image_size, "image_format": image_format})


def read_source(source, start, stop, image_size):
  """Yields the `Record`s and `Reject`s of `source` records [start, stop)."""
  if source.kind == "cifar10":
    yield from cifar10.read_records(source.paths[0], source.name, start, stop, opener=open_raw)
  elif source.kind == "mnist":
    yield from mnist.read_records(source.paths[0], source.paths[1], source.name, start, stop,
                                  opener=open_raw)
  elif source.kind == "image":
    yield imagefolder.load_image(source.paths[0], source.name, source.label, image_size,
                                 opener=open_raw)
  else:
    raise ValueError(f"unknown source kind {source.kind!r}")


def sha256_file(path, chunk=1 << 20):
  """Hex sha256 of a file's stored bytes."""
  digest = hashlib.sha256()
  with open_raw(path) as f:
    for block in iter(lambda: f.read(chunk), b""):
      digest.update(block)
  return digest.hexdigest()
