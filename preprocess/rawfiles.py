"""What a data set's raw files hold, as its layout lists them: sources of records per split.

The layouts (`cifar10.BinaryLayout`, `mnist.IdxLayout`,
`imagefolder.FolderLayout`) each own their format end to end: `list_raw`
turns the files under RAW/<name>/ into a `RawDataset` (ordered `Source`s of
each split, with record counts, checked up front), and `read` yields the
records of one source range. pipeline/plan.py calls them on the driver and in
the workers; it hands them a `files` object for the storage (local folders
or a bucket, through Beam's FileSystems), so nothing here needs Beam:

  files.join(*parts)      -> path
  files.exists(path)      -> bool
  files.open(path)        -> binary file object (stored bytes, no gunzip)
  files.list(root)        -> (files: {rel: (path, size)}, others: {rel: why unreadable})
"""

import dataclasses

from preprocess.errors import DataFormatError


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


def list_required(files, root, what):
  """`files.list(root)`, or a DataFormatError if `root` is missing or holds nothing."""
  found, others = files.list(root) if files.exists(root) else ({}, {})
  if not found and not others:
    raise DataFormatError(root, f"no {what} found here (run with --download, or see README)")
  return found, others


def required_file(files, found, others, directory, name, what):
  """The (path, size) of a required source file, or a DataFormatError saying why not."""
  if name in found:
    return found[name]
  path = files.join(directory, name)
  if name in others:
    raise DataFormatError(path, others[name])
  raise DataFormatError(path, f"missing {what}")
