"""metadata.json, typed: the contract between the Beam job and the trainers.

The Beam job (pipeline/build_tfrecords.py) builds a `Metadata` after checking
that every record read was written or rejected, and writes `to_json()` last,
atomically, next to the shards. The trainers (trainers/input_pipeline.py) read
it back with `read_metadata`, the one reader of the file, whose `from_json`
checks types, keys and that the counts and the augmentation policies are
consistent (`validate`), before they open any shard. `verify_shard` checks a
shard against its entry (size, sha256, framing, CRCs, record count). The file
name and format version are defined here only; attribute names are the JSON keys.
"""

import dataclasses
import hashlib
import json
import os
import re

from preprocess import augment
from preprocess.tfrecord import Corruption
from preprocess.tfrecord import ShardError
from preprocess.tfrecord import iter_frames

METADATA_FILE = "metadata.json"
# Encodings of the images in the shards (`image/format`).
IMAGE_FORMATS = ("png", "jpeg")
# The ledgers beside it: one JSON line per rejected record, per skipped file.
REJECTS_FILE = "rejects.jsonl"
SKIPPED_FILE = "skipped.jsonl"
# 2: every shard carries its sha256 and size. Keys added since are optional,
# so files of earlier version-2 jobs stay readable (their checks are skipped).
METADATA_FORMAT_VERSION = 2
# A shard's `head_sha256` digests this many bytes from its start (or the whole
# file, if smaller): what the trainers can afford to read of every shard at
# start-up, to tell a swapped shard from the one metadata.json lists.
HEAD_BYTES = 1 << 16


class MetadataError(ValueError):
  """A metadata.json that cannot be trusted; the message is one line naming the file."""


@dataclasses.dataclass
class ShardInfo:
  """One shard file of a split.

  Attributes:
    file: Its name, relative to the data dir.
    num_examples: Records in it.
    sha256: Hex sha256 of the whole file, as the Beam job wrote it; a flipped
      bit, or a foreign shard with the same record count, changes it
      (`verify_shard`). Required in metadata.json since format version 2.
    num_bytes: The file's size.
    head_sha256: Hex sha256 of the file's first `HEAD_BYTES` bytes (all of a
      smaller file), checked by the trainers at start-up; None in files
      written before it was recorded.
  """

  file: str
  num_examples: int
  sha256: str | None = None
  num_bytes: int | None = None
  head_sha256: str | None = None


@dataclasses.dataclass
class SplitInfo:
  """One split: its records, its shards in order, and records per label.

  `empty_classes` names the classes with no record in the split (label count
  0), which the Beam job also warns about; None in files written before it
  was recorded.
  """

  num_examples: int
  shards: list
  label_counts: list | None = None
  empty_classes: list | None = None


@dataclasses.dataclass
class RecordCounts:
  """records read == written + rejected, over the whole run.

  `skipped` counts files that were never read as records: files that are not
  data (hidden, OS metadata, notes) and images outside the layout's splits.
  They are listed in skipped.jsonl and are in none of the other three counts.
  """

  read: int
  written: int
  rejected: int
  skipped: int = 0


@dataclasses.dataclass
class Metadata:
  """metadata.json. Attributes are its keys; see docs/data.md."""

  dataset: str
  class_names: list
  num_classes: int
  image_shape: list
  image_format: str
  feature_spec: dict
  splits: dict  # split name -> SplitInfo
  augmentation: dict  # {"train": [step, ...], "eval": [...]}
  records: RecordCounts | None = None
  rejects: dict | None = None
  sources: dict | None = None
  options: dict | None = None
  format_version: int = METADATA_FORMAT_VERSION

  def to_json(self):
    """The JSON text, keys in a fixed order, as the Beam job writes it."""
    data = {
      "format_version": self.format_version,
      "dataset": self.dataset,
      "class_names": list(self.class_names),
      "num_classes": self.num_classes,
      "image_shape": list(self.image_shape),
      "image_format": self.image_format,
      "feature_spec": self.feature_spec,
      "splits": {name: _split_json(s) for name, s in self.splits.items()},
      "augmentation": self.augmentation,
      "records": None if self.records is None else dataclasses.asdict(self.records),
      "rejects": self.rejects,
      "sources": self.sources,
      "options": self.options,
    }
    return json.dumps(data, indent=2) + "\n"

  @classmethod
  def from_json(cls, text, path=METADATA_FILE):
    """Parses and validates metadata.json text.

    Args:
      text: The file's contents.
      path: The file's path, for error messages.

    Raises:
      MetadataError: Not JSON, wrong version, missing keys, wrong types or
        inconsistent counts; one line naming `path`.
    """
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise MetadataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
      raise MetadataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    version = data.get("format_version")
    if version != METADATA_FORMAT_VERSION:
      raise MetadataError(
        f"{path}: format_version {version!r}, but this reader knows "
        f"{METADATA_FORMAT_VERSION}: rerun make preprocess with this checkout"
      )
    missing = [
      k
      for k in (
        "dataset",
        "splits",
        "image_shape",
        "image_format",
        "num_classes",
        "class_names",
        "augmentation",
        "feature_spec",
      )
      if k not in data
    ]
    if missing:
      raise MetadataError(f"{path}: missing keys {', '.join(missing)}")
    for key, kind in _TYPES.items():
      _expect(path, key, data[key], kind)
    if len(data["image_shape"]) != 3 or not all(
      isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in data["image_shape"]
    ):
      raise MetadataError(
        f"{path}: image_shape must be 3 positive ints, got {data['image_shape']!r}"
      )
    splits = {name: _split_from_json(path, name, entry) for name, entry in data["splits"].items()}
    records = data.get("records")
    if records is not None:
      _expect(path, "records", records, dict)
      try:
        records = RecordCounts(**records)
      except TypeError:
        raise MetadataError(f"{path}: records must hold read, written and rejected") from None
    metadata = cls(
      dataset=data["dataset"],
      class_names=data["class_names"],
      num_classes=data["num_classes"],
      image_shape=data["image_shape"],
      image_format=data["image_format"],
      feature_spec=data["feature_spec"],
      splits=splits,
      augmentation=data["augmentation"],
      records=records,
      rejects=data.get("rejects"),
      sources=data.get("sources"),
      options=data.get("options"),
      format_version=version,
    )
    metadata.validate(path)
    return metadata

  def validate(self, path=METADATA_FILE):
    """Checks the types, and that the counts and policies agree with each other.

    `from_json` calls it; the Beam job calls it on what it built before writing.

    Raises:
      MetadataError: One line naming `path` and what is wrong.
    """
    for key, kind in _TYPES.items():
      _expect(path, key, getattr(self, key), kind)
    if not all(isinstance(n, str) for n in self.class_names):
      raise MetadataError(f"{path}: class_names must be strings")
    for name, split in self.splits.items():
      if not isinstance(split, SplitInfo):
        raise MetadataError(
          f"{path}: splits.{name} must be a SplitInfo, got {type(split).__name__}"
        )
      _expect(path, f"splits.{name}.num_examples", split.num_examples, int)
      for i, shard in enumerate(split.shards):
        if not isinstance(shard, ShardInfo):
          raise MetadataError(f"{path}: splits.{name}.shards[{i}] must be a ShardInfo")
        _expect(path, f"splits.{name}.shards[{i}].file", shard.file, str)
        _expect(path, f"splits.{name}.shards[{i}].num_examples", shard.num_examples, int)
        where = f"splits.{name}.shards[{i}]"
        if shard.num_examples < 0:
          raise MetadataError(f"{path}: {where}.num_examples must not be negative")
        for key in ("sha256", "head_sha256"):
          digest = getattr(shard, key)
          if digest is not None and not _is_sha256(digest):
            raise MetadataError(
              f"{path}: {where}.{key} must be 64 lowercase hex digits, got {digest!r}"
            )
        if shard.num_bytes is not None:
          _expect(path, f"{where}.num_bytes", shard.num_bytes, int)
        if os.path.basename(shard.file) != shard.file or shard.file in ("", ".", ".."):
          raise MetadataError(f"{path}: {where}.file must be a plain file name, got {shard.file!r}")
    if self.image_format not in IMAGE_FORMATS:
      raise MetadataError(
        f"{path}: image_format must be one of {', '.join(IMAGE_FORMATS)}, got {self.image_format!r}"
      )
    if len(self.class_names) != self.num_classes:
      raise MetadataError(
        f"{path}: num_classes is {self.num_classes} but class_names has "
        f"{len(self.class_names)} names"
      )
    for which in ("train", "eval"):
      try:
        steps = self.augmentation[which]
        if not isinstance(steps, list):
          raise ValueError(f"expected a list of steps, got {type(steps).__name__}")
        augment.output_shape(steps, self.image_shape)
      except (KeyError, ValueError) as e:
        raise MetadataError(f"{path}: bad {which} augmentation policy ({e})") from None
    for name, split in self.splits.items():
      if split.label_counts is not None and len(split.label_counts) != self.num_classes:
        raise MetadataError(
          f"{path}: splits.{name}.label_counts has {len(split.label_counts)} "
          f"entries but num_classes is {self.num_classes}"
        )
      unknown = [c for c in split.empty_classes or () if c not in self.class_names]
      if unknown:
        raise MetadataError(
          f"{path}: splits.{name}.empty_classes names {unknown[0]!r}, not one of class_names"
        )
      listed = sum(s.num_examples for s in split.shards)
      if listed != split.num_examples:
        raise MetadataError(
          f"{path}: the shards of split {name!r} add up to {listed} records, "
          f"but its num_examples is {split.num_examples}"
        )
      labelled = sum(split.label_counts) if split.label_counts is not None else listed
      if labelled != listed:
        raise MetadataError(
          f"{path}: the label_counts of split {name!r} add up to {labelled}, "
          f"but its num_examples is {split.num_examples}"
        )


def _split_from_json(path, name, entry):
  """The `SplitInfo` of `splits.<name>`, its keys and types checked."""
  where = f"splits.{name}"
  _expect(path, where, entry, dict)
  for key, kind in (("num_examples", int), ("shards", list)):
    if key not in entry:
      raise MetadataError(f"{path}: missing key {where}.{key}")
    _expect(path, f"{where}.{key}", entry[key], kind)
  shards = []
  for i, shard in enumerate(entry["shards"]):
    _expect(path, f"{where}.shards[{i}]", shard, dict)
    for key, kind in (("file", str), ("num_examples", int), ("sha256", str), ("num_bytes", int)):
      if key not in shard:
        raise MetadataError(f"{path}: missing key {where}.shards[{i}].{key}")
      _expect(path, f"{where}.shards[{i}].{key}", shard[key], kind)
    head = shard.get("head_sha256")  # optional: not in files of earlier jobs
    if head is not None:
      _expect(path, f"{where}.shards[{i}].head_sha256", head, str)
    shards.append(
      ShardInfo(shard["file"], shard["num_examples"], shard["sha256"], shard["num_bytes"], head)
    )
  optional = {}
  for key in ("label_counts", "empty_classes"):
    if entry.get(key) is not None:
      _expect(path, f"{where}.{key}", entry[key], list)
      optional[key] = entry[key]
  return SplitInfo(entry["num_examples"], shards, **optional)


def _split_json(split):
  out = {"num_examples": split.num_examples, "shards": [_shard_json(s) for s in split.shards]}
  if split.label_counts is not None:
    out["label_counts"] = list(split.label_counts)
  if split.empty_classes is not None:
    out["empty_classes"] = list(split.empty_classes)
  return out


def _shard_json(shard):
  out = {
    "file": shard.file,
    "num_examples": shard.num_examples,
    "sha256": shard.sha256,
    "num_bytes": shard.num_bytes,
  }
  if shard.head_sha256 is not None:
    out["head_sha256"] = shard.head_sha256
  return out


def _expect(path, key, value, kind):
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise MetadataError(f"{path}: {key} must be {_TYPE_NAMES[kind]}, got {type(value).__name__}")


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}
_TYPES = {
  "dataset": str,
  "class_names": list,
  "num_classes": int,
  "image_shape": list,
  "image_format": str,
  "feature_spec": dict,
  "splits": dict,
  "augmentation": dict,
}


def _is_sha256(text):
  return isinstance(text, str) and re.fullmatch("[0-9a-f]{64}", text) is not None


def read_metadata(data_dir, opener=open):
  """Reads and validates `<data_dir>/metadata.json`; every problem is one line naming the file.

  Args:
    data_dir: Output directory of the Beam job for one data set (local).
    opener: Callable (path, mode) -> file object, e.g. `tf.io.gfile.GFile` for gs://.

  Returns:
    The `Metadata`.

  Raises:
    MetadataError: Missing, a directory, unreadable, not UTF-8, or invalid.
  """
  path = os.path.join(str(data_dir), METADATA_FILE)
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise MetadataError(
      f"{path}: not found: run make preprocess (the Beam job writes it last; "
      "without it the shards are incomplete)"
    ) from None
  except IsADirectoryError:
    raise MetadataError(f"{path}: is a directory, not the Beam job's metadata file") from None
  except OSError as e:
    raise MetadataError(f"{path}: cannot read: {e.strerror or e}") from None
  if isinstance(raw, str):
    text = raw
  else:
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise MetadataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  return Metadata.from_json(text, path)


def verify_shard(path, expected, opener=open):
  """Checks one shard against its `ShardInfo`: size, sha256, framing, CRCs and record count.

  Args:
    path: The shard file.
    expected: Its `ShardInfo` from metadata.json.
    opener: Callable (path, mode) -> binary file object.

  Raises:
    ShardError: One line naming `path` and the first problem found.
  """
  hasher = hashlib.sha256()
  count = 0
  corruption = None
  try:
    with opener(path, "rb") as f:
      for item in iter_frames(_HashingReader(f, hasher), path):
        if isinstance(item, Corruption):
          corruption = item
          break
        count += 1
      for chunk in iter(lambda: f.read(1 << 20), b""):
        hasher.update(chunk)
  except FileNotFoundError:
    raise ShardError(f"{path}: listed in {METADATA_FILE} but missing") from None
  except IsADirectoryError:
    raise ShardError(f"{path}: is a directory, not a shard") from None
  except OSError as e:
    raise ShardError(f"{path}: cannot read: {e.strerror or e}") from None
  if corruption is not None:
    raise ShardError(corruption.describe(path))
  if count != expected.num_examples:
    raise ShardError(
      f"{path}: holds {count} records, but {METADATA_FILE} says {expected.num_examples}"
    )
  if expected.sha256 is not None and hasher.hexdigest() != expected.sha256:
    raise ShardError(
      f"{path}: sha256 {hasher.hexdigest()[:16]}... differs from the "
      f"{expected.sha256[:16]}... in {METADATA_FILE}: a foreign or modified shard "
      "(rerun make preprocess)"
    )


class _HashingReader:
  """Wraps a file so that everything read from it is hashed too."""

  def __init__(self, f, hasher):
    self._f, self._hasher = f, hasher

  def read(self, n):
    data = self._f.read(n)
    self._hasher.update(data)
    return data
