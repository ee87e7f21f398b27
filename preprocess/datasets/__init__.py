"""The data-set registry: one spec per data set, found by file.

Every module in this package (cifar10.py, mnist.py, catdog.py, ...) defines one
data set as `SPEC = DatasetSpec(name=<its file name>, ...)`: its raw layout and file names (a
layout of a format: CIFAR binary batches, defined in cifar10.py, IDX, defined
in mnist.py, or image folders, shared in preprocess/imagefolder.py), class
names, download sources with checksums, default validation size, default
augmentation policy and the sample-data generator. A data set in the format of
another one imports that spec module's layout and reader (a Fashion-MNIST spec
would use `mnist.IdxLayout`). The Beam job (pipeline/plan.py), the downloader
(preprocess/download.py) and the sample-data writer (preprocess/sample_data.py)
iterate over `names()` and read what they need from `get(name)`; nothing else
knows a data set by name. Adding a data set in an existing format is one new
module here. The trainers need nothing from the specs: what they use reaches
them through metadata.json (preprocess/schema.py).

`SPECS` lists this package's files and imports them on first use
(preprocess/registry.py, the mechanism the recipes' registry shares), not when
this package is imported, so importing it stays cheap, and the spec modules can
import the downloader and the sample-data writer, which import this package,
without a cycle.
"""

from collections.abc import Callable
import copy
import dataclasses

from preprocess import registry


@dataclasses.dataclass(frozen=True)
class Sample:
  """How to write a small synthetic copy of a data set in its raw layout.

  Attributes:
    per_class: {"small": (train, test), "full": (train, test)} images per class.
    write: fn(root, train_per_class, test_per_class, rng_for_split) -> list of the
      Paths written, under root = RAW/<name>. `rng_for_split(split)` gives the
      numpy Generator of a split, so one split or one data set alone gives the
      same bytes as all of them together.
    stream: Distinct small int mixed into the random seed of this data set.
  """

  per_class: dict
  write: Callable
  stream: int


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One data set, TFDS-builder-like.

  Attributes:
    name: Folder under the raw and output roots, and the --dataset value.
    description: One line for --help and logs.
    class_names: Class names, index = label (a layout may read them from the
      raw files instead, as CIFAR-10's batches.meta.txt; they must agree).
    layout: Where the raw files are and how to read them: a
      `cifar10.BinaryLayout`, `mnist.IdxLayout` (both in this package) or
      `imagefolder.FolderLayout`. A layout owns its format end to end:
      `list_raw` (files -> checked sources per split) and `read` (a source's
      records), as preprocess/rawfiles.py describes; pipeline/plan.py only
      hands them the storage.
    sources: `download.RemoteFile`s of the official files.
    sample: The `Sample` generator.
    validation_size: Training records moved to a validation split by default.
    augmentation: {"train": [step, ...], "eval": [...]}, steps as in
      preprocess/augment.py; written into metadata.json.
    install: fn(local_files, root, log) that turns downloaded files into the
      layout, or None for the layout's default.
  """

  name: str
  description: str
  class_names: tuple
  layout: object
  sources: tuple
  sample: Sample
  augmentation: dict
  validation_size: int = 0
  install: Callable | None = None

  def policy(self):
    """A fresh copy of the default augmentation policy."""
    return copy.deepcopy(self.augmentation)


def _check_stream(spec, others):
  clash = [s.name for s in others if s.sample.stream == spec.sample.stream]
  if clash:
    raise ValueError(
      f"data set {spec.name!r}: sample stream {spec.sample.stream} is already {clash[0]!r}'s"
    )


SPECS = registry.Registry(__name__, "SPEC", "data set", check=_check_stream)


def register(spec):
  """Adds a spec defined outside this package (a test's or a plugin's) and returns it.

  Raises:
    ValueError: Another spec has the same name or sample stream.
  """
  return SPECS.add(spec)


def unregister(name):
  """Removes a spec that `register` added."""
  SPECS.remove(name)


def names():
  """Names of all data sets, in sample-stream order (cifar10, mnist, catdog, ...)."""
  return tuple(sorted(SPECS, key=lambda n: (SPECS[n].sample.stream, n)))


def get(name):
  """The spec of data set `name`.

  Raises:
    ValueError: No such data set.
  """
  if name not in SPECS:
    raise ValueError(f"unknown data set {name!r}; choose from {', '.join(names())}")
  return SPECS[name]
