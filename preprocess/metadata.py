"""The contract between the Beam job and the trainers: `metadata.json`, typed.

The Beam job (pipeline/build_tfrecords.py) builds a `Metadata` after checking
that every record read was written or rejected, and writes `to_json()` last,
atomically, next to the shards. The trainers (trainers/input_pipeline.py)
read it back with `from_json`, which checks types, keys and that the counts
and the augmentation policies are consistent (`validate`), before they open
any shard. The file name and format version are defined here only; attribute
names are the JSON keys.
"""

import dataclasses
import json
from typing import Optional

from preprocess import augment

FILE = "metadata.json"
FORMAT_VERSION = 1


class MetadataError(ValueError):
  """A metadata.json that cannot be trusted; the message is one line naming the file."""


@dataclasses.dataclass
class ShardInfo:
  """One shard file of a split: its name (relative to the data dir) and record count."""
  file: str
  num_examples: int


@dataclasses.dataclass
class SplitInfo:
  """One split: its records, its shards in order, and records per label."""
  num_examples: int
  shards: list
  label_counts: Optional[list] = None


@dataclasses.dataclass
class RecordCounts:
  """records read == written + rejected, over the whole run."""
  read: int
  written: int
  rejected: int


@dataclasses.dataclass
class Metadata:
  """metadata.json. Attributes are its keys; see README's "metadata.json" section."""
  dataset: str
  class_names: list
  num_classes: int
  image_shape: list
  image_format: str
  feature_spec: dict
  splits: dict  # split name -> SplitInfo
  augmentation: dict  # {"train": [step, ...], "eval": [...]}
  records: Optional[RecordCounts] = None
  rejects: Optional[dict] = None
  sources: Optional[dict] = None
  options: Optional[dict] = None
  format_version: int = FORMAT_VERSION

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
  def from_json(cls, text, path=FILE):
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
    if version != FORMAT_VERSION:
      raise MetadataError(f"{path}: format_version {version!r}, but this reader knows "
                          f"{FORMAT_VERSION}: rerun make preprocess with this checkout")
    missing = [k for k in ("dataset", "splits", "image_shape", "image_format", "num_classes",
                           "class_names", "augmentation", "feature_spec") if k not in data]
    if missing:
      raise MetadataError(f"{path}: missing keys {', '.join(missing)}")
    _expect(path, "dataset", data["dataset"], str)
    _expect(path, "class_names", data["class_names"], list)
    _expect(path, "num_classes", data["num_classes"], int)
    _expect(path, "image_shape", data["image_shape"], list)
    _expect(path, "image_format", data["image_format"], str)
    _expect(path, "feature_spec", data["feature_spec"], dict)
    _expect(path, "splits", data["splits"], dict)
    _expect(path, "augmentation", data["augmentation"], dict)
    if len(data["image_shape"]) != 3 or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in data["image_shape"]):
      raise MetadataError(f"{path}: image_shape must be 3 positive ints, got {data['image_shape']!r}")
    splits = {}
    for name, entry in data["splits"].items():
      where = f"splits.{name}"
      _expect(path, where, entry, dict)
      for key, kind in (("num_examples", int), ("shards", list)):
        if key not in entry:
          raise MetadataError(f"{path}: missing key {where}.{key}")
        _expect(path, f"{where}.{key}", entry[key], kind)
      shards = []
      for i, shard in enumerate(entry["shards"]):
        _expect(path, f"{where}.shards[{i}]", shard, dict)
        for key, kind in (("file", str), ("num_examples", int)):
          if key not in shard:
            raise MetadataError(f"{path}: missing key {where}.shards[{i}].{key}")
          _expect(path, f"{where}.shards[{i}].{key}", shard[key], kind)
        shards.append(ShardInfo(shard["file"], shard["num_examples"]))
      counts = entry.get("label_counts")
      if counts is not None:
        _expect(path, f"{where}.label_counts", counts, list)
      splits[name] = SplitInfo(entry["num_examples"], shards, counts)
    records = data.get("records")
    if records is not None:
      _expect(path, "records", records, dict)
      try:
        records = RecordCounts(**records)
      except TypeError:
        raise MetadataError(f"{path}: records must hold read, written and rejected") from None
    metadata = cls(
        dataset=data["dataset"], class_names=data["class_names"],
        num_classes=data["num_classes"], image_shape=data["image_shape"],
        image_format=data["image_format"], feature_spec=data["feature_spec"], splits=splits,
        augmentation=data["augmentation"], records=records, rejects=data.get("rejects"),
        sources=data.get("sources"), options=data.get("options"), format_version=version)
    metadata.validate(path)
    return metadata

  def validate(self, path=FILE):
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
        raise MetadataError(f"{path}: splits.{name} must be a SplitInfo, got "
                            f"{type(split).__name__}")
      _expect(path, f"splits.{name}.num_examples", split.num_examples, int)
      for i, shard in enumerate(split.shards):
        if not isinstance(shard, ShardInfo):
          raise MetadataError(f"{path}: splits.{name}.shards[{i}] must be a ShardInfo")
        _expect(path, f"splits.{name}.shards[{i}].file", shard.file, str)
        _expect(path, f"splits.{name}.shards[{i}].num_examples", shard.num_examples, int)
    if len(self.class_names) != self.num_classes:
      raise MetadataError(f"{path}: num_classes is {self.num_classes} but class_names has "
                          f"{len(self.class_names)} names")
    for which in ("train", "eval"):
      try:
        steps = self.augmentation[which]
        if not isinstance(steps, list):
          raise ValueError(f"expected a list of steps, got {type(steps).__name__}")
        augment.output_shape(steps, self.image_shape)
      except (KeyError, ValueError) as e:
        raise MetadataError(f"{path}: bad {which} augmentation policy ({e})") from None
    for name, split in self.splits.items():
      listed = sum(s.num_examples for s in split.shards)
      if listed != split.num_examples:
        raise MetadataError(f"{path}: the shards of split {name!r} add up to {listed} records, "
                            f"but its num_examples is {split.num_examples}")
      labelled = sum(split.label_counts) if split.label_counts is not None else listed
      if labelled != listed:
        raise MetadataError(f"{path}: the label_counts of split {name!r} add up to {labelled}, "
                            f"but its num_examples is {split.num_examples}")


def _split_json(split):
  out = {"num_examples": split.num_examples,
         "shards": [{"file": s.file, "num_examples": s.num_examples} for s in split.shards]}
  if split.label_counts is not None:
    out["label_counts"] = list(split.label_counts)
  return out


def _expect(path, key, value, kind):
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise MetadataError(f"{path}: {key} must be {_TYPE_NAMES[kind]}, got {type(value).__name__}")


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}
_TYPES = {"dataset": str, "class_names": list, "num_classes": int, "image_shape": list,
          "image_format": str, "feature_spec": dict, "splits": dict, "augmentation": dict}
