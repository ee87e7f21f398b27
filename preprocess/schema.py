"""The shard format: what the readers yield, the Beam job writes and the trainers read.

Three parts, in data-flow order:

Records. Readers (preprocess/datasets/, preprocess/imagefolder.py) turn raw
files into a stream of `Record`s (one decoded image with its label) and
`Reject`s (one input that could not be used, and why). The Beam job encodes
records and writes rejects to the ledger, so `records read == records written +
records rejected` can be checked.

Examples. Every shard record is a `tf.train.Example` with the standard image
keys, so any TensorFlow image reader can consume the shards. `make_example`
(writer side) and `parse_example` (reader side) sit side by side and share
`FEATURE_SPEC`. The writer side serializes the protobuf by hand (about thirty
lines, below) so that Beam workers never import TensorFlow: importing it costs
seconds and hundreds of megabytes per worker process, more than encoding a
CIFAR-10 split. The bytes equal TensorFlow's own deterministic serialization
(map keys sorted); tests/test_schema.py checks that against `tf.train.Example`.

TFRecord framing and counting. The Beam job frames each serialized Example with
`frame` when it writes a shard (pipeline/convert.py), without importing
TensorFlow; the trainers count a shard's records with `count_records` before
training (trainers/input_pipeline.py), reading 8 bytes a record and seeking past
the rest, without decoding anything. A TFRecord is: uint64 length
(little-endian), uint32 masked CRC32C of the length bytes, `length` bytes of
data, uint32 masked CRC32C of the data.

metadata.json, typed. The Beam job (pipeline/build_tfrecords.py) builds a
`Metadata` after checking that every record read was written or rejected, and
writes `to_json()` last, atomically, next to the shards. The trainers
(trainers/input_pipeline.py) read it back with `from_json`, which checks types,
keys and that the counts and the augmentation policies are consistent
(`validate`), before they open any shard. The file name and format version are
defined here only; attribute names are the JSON keys.
"""

import dataclasses
import hashlib
import io
import json
import os
import re
import struct

import numpy as np
from PIL import Image

from preprocess import augment

# --- Records: what the readers yield ---


@dataclasses.dataclass(frozen=True)
class Record:
  """One decoded, labelled image.

  Attributes:
    source_id: Stable id of the source, unique within a data set:
      `<file relative to the data set root>:<record index>` for record files
      (CIFAR-10 `.bin`, MNIST IDX), the relative path for image files.
    label: 0-based class index.
    image: uint8 array of shape (height, width, channels).
    content_sha256: Hex sha256 of the source bytes of this record (the 3073-byte
      CIFAR record, the 784 MNIST pixels, or the whole image file).
  """

  source_id: str
  label: int
  image: np.ndarray
  content_sha256: str


@dataclasses.dataclass(frozen=True)
class Reject:
  """One input that was not converted.

  Attributes:
    file: The input file, relative to the data set root.
    index: Record index inside the file, or None for whole image files.
    reason: One line saying what is wrong.
  """

  file: str
  index: int | None
  reason: str

  def to_json_dict(self):
    return {"file": self.file, "index": self.index, "reason": self.reason}


# --- Examples: the keys, encoding and parsing of a shard record ---

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
CHANNELS = "image/channels"
LABEL = "image/class/label"
TEXT = "image/class/text"
SOURCE_ID = "image/source_id"
SHA256 = "image/key/sha256"
AUGMENT_SEED = "augment/seed"

# Key -> value type of a scalar feature. Stored in metadata.json as is.
FEATURE_SPEC = {
  ENCODED: "bytes",
  FORMAT: "bytes",
  HEIGHT: "int64",
  WIDTH: "int64",
  CHANNELS: "int64",
  LABEL: "int64",
  TEXT: "bytes",
  SOURCE_ID: "bytes",
  SHA256: "bytes",
  AUGMENT_SEED: "int64",
}

IMAGE_FORMATS = ("png", "jpeg")
JPEG_QUALITY = 95
# zlib level for PNG. Level 6 is what tf.io.encode_png and Pillow use by default.
PNG_COMPRESS_LEVEL = 6


def augment_seed(source_id):
  """Per-example augmentation seed: a non-negative int63 derived from the id."""
  digest = hashlib.sha256(source_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") >> 1


def encode_image(image, image_format):
  """Encodes a uint8 (height, width, channels) array as PNG or JPEG bytes.

  PNG is lossless, so decoded pixels equal `image` exactly. Both encoders are
  deterministic: the same pixels always give the same bytes.
  """
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
    raise ValueError(f"expected uint8 HxWx1 or HxWx3, got {image.dtype} {image.shape}")
  pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
  buf = io.BytesIO()
  if image_format == "png":
    pil.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
  elif image_format == "jpeg":
    pil.save(buf, format="JPEG", quality=JPEG_QUALITY)
  else:
    raise ValueError(f"unknown image format {image_format!r}; use one of {IMAGE_FORMATS}")
  return buf.getvalue()


def make_example(record, class_names, image_format):
  """Serializes a `Record` as a `tf.train.Example`.

  Args:
    record: The record to encode.
    class_names: List of class names; `class_names[record.label]` is the text.
    image_format: "png" or "jpeg".

  Returns:
    The serialized Example (bytes).
  """
  height, width, channels = record.image.shape
  return serialize_example(
    {
      ENCODED: encode_image(record.image, image_format),
      FORMAT: image_format.encode(),
      HEIGHT: height,
      WIDTH: width,
      CHANNELS: channels,
      LABEL: record.label,
      TEXT: class_names[record.label].encode("utf-8"),
      SOURCE_ID: record.source_id.encode("utf-8"),
      SHA256: record.content_sha256.encode("ascii"),
      AUGMENT_SEED: augment_seed(record.source_id),
    }
  )


def parse_example(serialized):
  """Parses serialized Examples (scalar or batch) into a dict of tensors.

  Reader-side twin of `make_example`; imports TensorFlow when called.
  """
  import tensorflow as tf

  dtypes = {"bytes": tf.string, "int64": tf.int64}
  spec = {k: tf.io.FixedLenFeature([], dtypes[t]) for k, t in FEATURE_SPEC.items()}
  return tf.io.parse_example(serialized, spec)


# --- protobuf wire format of tensorflow/core/example/{example,feature}.proto ---


def _varint(n):
  if n < 0:
    n += 1 << 64  # int64 is encoded as its two's complement, 10 bytes.
  out = bytearray()
  while True:
    bits = n & 0x7F
    n >>= 7
    if n:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(tag, payload):
  """A length-delimited field: tag byte, length, payload."""
  return bytes([tag]) + _varint(len(payload)) + payload


def _feature(value):
  if isinstance(value, bytes):
    return _field(0x0A, _field(0x0A, value))  # Feature.bytes_list{value}
  if isinstance(value, (int, np.integer)):
    return _field(0x1A, _field(0x0A, _varint(int(value))))  # Feature.int64_list, packed
  raise TypeError(f"unsupported feature value type {type(value).__name__}")


def serialize_example(features):
  """Serializes {key: bytes | int} as a tf.train.Example, keys sorted."""
  entries = b"".join(
    _field(0x0A, _field(0x0A, key.encode("utf-8")) + _field(0x12, _feature(features[key])))
    for key in sorted(features)
  )
  return _field(0x0A, entries)


# --- TFRecord framing and counting ---

HEADER_BYTES = 8 + 4
FOOTER_BYTES = 4


class TFRecordError(ValueError):
  """A shard whose framing is broken; the message is one line naming the file."""


def _masked_crc(data):
  import google_crc32c  # Writers only.

  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data):
  """One TFRecord: length, masked CRC32C of the length, data, masked CRC32C of the data."""
  length = struct.pack("<Q", len(data))
  return (
    length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))
  )


def count_records(f, size, path):
  """Counts the records of an open TFRecord file from its framing.

  Args:
    f: Seekable binary file object positioned anywhere.
    size: The file's size in bytes.
    path: The file's name, for error messages.

  Returns:
    The number of records.

  Raises:
    TFRecordError: The file ends inside a record (truncated write or copy).
  """
  count = offset = 0
  while offset < size:
    if size - offset < HEADER_BYTES + FOOTER_BYTES:
      raise TFRecordError(
        f"{path}: ends inside the header of record {count} "
        f"(byte {offset} of {size}): the file is truncated"
      )
    f.seek(offset)
    (length,) = struct.unpack("<Q", f.read(8))
    offset += HEADER_BYTES + length + FOOTER_BYTES
    if offset > size:
      raise TFRecordError(
        f"{path}: record {count} needs {offset - size} more bytes than the "
        f"file has: the file is truncated"
      )
    count += 1
  return count


# --- metadata.json: the typed contract between the Beam job and the trainers ---

METADATA_FILE = "metadata.json"
# The ledgers beside it: one JSON line per rejected record, per skipped file.
REJECTS_FILE = "rejects.jsonl"
SKIPPED_FILE = "skipped.jsonl"
# 2: every shard carries its sha256 and size.
METADATA_FORMAT_VERSION = 2


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
  """

  file: str
  num_examples: int
  sha256: str | None = None
  num_bytes: int | None = None


@dataclasses.dataclass
class SplitInfo:
  """One split: its records, its shards in order, and records per label."""

  num_examples: int
  shards: list
  label_counts: list | None = None


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
  """metadata.json. Attributes are its keys; see README's "metadata.json" section."""

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
    _expect(path, "dataset", data["dataset"], str)
    _expect(path, "class_names", data["class_names"], list)
    _expect(path, "num_classes", data["num_classes"], int)
    _expect(path, "image_shape", data["image_shape"], list)
    _expect(path, "image_format", data["image_format"], str)
    _expect(path, "feature_spec", data["feature_spec"], dict)
    _expect(path, "splits", data["splits"], dict)
    _expect(path, "augmentation", data["augmentation"], dict)
    if len(data["image_shape"]) != 3 or not all(
      isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in data["image_shape"]
    ):
      raise MetadataError(
        f"{path}: image_shape must be 3 positive ints, got {data['image_shape']!r}"
      )
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
        for key, kind in (
          ("file", str),
          ("num_examples", int),
          ("sha256", str),
          ("num_bytes", int),
        ):
          if key not in shard:
            raise MetadataError(f"{path}: missing key {where}.shards[{i}].{key}")
          _expect(path, f"{where}.shards[{i}].{key}", shard[key], kind)
        shards.append(
          ShardInfo(shard["file"], shard["num_examples"], shard["sha256"], shard["num_bytes"])
        )
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
        if shard.sha256 is not None and not _is_sha256(shard.sha256):
          raise MetadataError(
            f"{path}: {where}.sha256 must be 64 lowercase hex digits, got {shard.sha256!r}"
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


def _split_json(split):
  out = {
    "num_examples": split.num_examples,
    "shards": [
      {"file": s.file, "num_examples": s.num_examples, "sha256": s.sha256, "num_bytes": s.num_bytes}
      for s in split.shards
    ],
  }
  if split.label_counts is not None:
    out["label_counts"] = list(split.label_counts)
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


# --- Checking shards: CRCs, digests, and the first record against metadata.json ---


class ShardError(TFRecordError):
  """A shard that is damaged or is not the one metadata.json describes; one line naming it."""


@dataclasses.dataclass(frozen=True)
class Corruption:
  """Where a shard's framing or CRCs first go wrong.

  Attributes:
    record: Index of the first bad record (0-based).
    offset: Byte offset of that record's header in the file.
    problem: What is wrong, e.g. "data CRC mismatch".
  """

  record: int
  offset: int
  problem: str

  def describe(self, path):
    return f"{path}: corrupted record {self.record} at byte {self.offset} ({self.problem})"


def _iter_frames(f, path):
  """Yields (index, offset, data) of each record, or a `Corruption` and stops.

  Checks both CRCs of every record, as TensorFlow's reader does.
  """
  import google_crc32c

  del google_crc32c  # Imported here so a missing package fails before reading.
  index = offset = 0
  while True:
    header = f.read(HEADER_BYTES)
    if not header:
      return
    if len(header) < HEADER_BYTES:
      yield Corruption(index, offset, "file ends inside the record header: truncated")
      return
    length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
    if _masked_crc(length_bytes) != length_crc:
      yield Corruption(index, offset, "length CRC mismatch")
      return
    (length,) = struct.unpack("<Q", length_bytes)
    data = f.read(length)
    footer = f.read(FOOTER_BYTES)
    if len(data) < length or len(footer) < FOOTER_BYTES:
      yield Corruption(index, offset, "file ends inside the record: truncated")
      return
    if _masked_crc(data) != struct.unpack("<I", footer)[0]:
      yield Corruption(index, offset, "data CRC mismatch")
      return
    yield index, offset, data
    index += 1
    offset += HEADER_BYTES + length + FOOTER_BYTES


def find_corruption(path, opener=open):
  """Checks every record's framing and CRCs; returns the first `Corruption`, or None.

  Pure Python (google_crc32c, no TensorFlow), reads the file once. Trainers
  call it when TensorFlow reports a DataLossError, to name the shard and
  offset: `corruption.describe(path)` is that one line.

  Args:
    path: A TFRecord file.
    opener: Callable (path, mode) -> binary file object.
  """
  with opener(path, "rb") as f:
    for item in _iter_frames(f, path):
      if isinstance(item, Corruption):
        return item
  return None


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
      for item in _iter_frames(_HashingReader(f, hasher), path):
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


def verify_data(data_dir, opener=open, log=None):
  """Reads metadata.json and verifies every shard it lists (`verify_shard`).

  Args:
    data_dir: The Beam job's output for one data set.
    opener: Callable (path, mode) -> file object.
    log: Optional callable taking one progress line per split.

  Returns:
    The `Metadata`.

  Raises:
    MetadataError or ShardError: One line naming the file and the problem.
  """
  metadata = read_metadata(data_dir, opener)
  for name, split in metadata.splits.items():
    for shard in split.shards:
      path = os.path.join(str(data_dir), shard.file)
      verify_shard(path, shard, opener)
      check_record(path, first_example(path, opener), metadata)
    if log:
      log(
        f"{data_dir}: split {name}: {len(split.shards)} shards, {split.num_examples} records, "
        "sha256 and CRCs ok"
      )
  return metadata


# --- Reading an Example without TensorFlow (checks only; the trainers parse with TF) ---


def _read_varint(buf, pos):
  result = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError("truncated varint")
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return result, pos
    shift += 7


def _fields(buf):
  """Yields (field number, wire type, value) of a protobuf message."""
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire == 2:
      length, pos = _read_varint(buf, pos)
      value, pos = buf[pos : pos + length], pos + length
      if pos > len(buf):
        raise ValueError("truncated field")
    elif wire == 5:
      value, pos = buf[pos : pos + 4], pos + 4
    elif wire == 1:
      value, pos = buf[pos : pos + 8], pos + 8
    else:
      raise ValueError(f"unsupported wire type {wire}")
    yield number, wire, value


def decode_example(serialized):
  """A serialized tf.train.Example -> {key: first bytes or int64 value}, in pure Python."""
  out = {}
  for number, _, features in _fields(serialized):
    if number != 1:
      continue
    for entry_number, _, entry in _fields(features):
      if entry_number != 1:
        continue
      key, value = None, None
      for n, _, v in _fields(entry):
        if n == 1:
          key = v.decode("utf-8")
        elif n == 2:
          for kind, _wire, lst in _fields(v):
            for vn, vwire, item in _fields(lst):
              if vn != 1:
                continue
              if kind == 1:  # bytes_list
                value = bytes(item)
              elif kind == 3:  # int64_list, packed or not
                if vwire == 2:
                  item, _ = _read_varint(item, 0)
                value = item - (1 << 64) if item >= 1 << 63 else item
              break
      out[key] = value
  return out


def first_example(path, opener=open):
  """The first record of a shard, serialized, or None for an empty shard."""
  with opener(path, "rb") as f:
    for item in _iter_frames(f, path):
      if isinstance(item, Corruption):
        raise ShardError(item.describe(path))
      return item[2]
  return None


def check_record(path, serialized, metadata):
  """Checks one serialized Example against metadata.json: keys, shape, format and label.

  Trainers call it on the first record of each split at start-up
  (`check_record(path, first_example(path), metadata)`), so an edited image
  shape or class count fails before training, not at the first batch.

  Raises:
    ShardError: One line naming `path` and what disagrees.
  """
  if serialized is None:
    return
  try:
    features = decode_example(serialized)
  except (ValueError, UnicodeDecodeError) as e:
    raise ShardError(f"{path}: record 0 is not a tf.train.Example ({e})") from None
  missing = [k for k in (HEIGHT, WIDTH, CHANNELS, LABEL, FORMAT) if features.get(k) is None]
  if missing:
    raise ShardError(f"{path}: record 0 lacks {', '.join(missing)}: not a shard of this pipeline")
  shape = [features[HEIGHT], features[WIDTH], features[CHANNELS]]
  if shape != list(metadata.image_shape):
    raise ShardError(
      f"{path}: record 0 is {'x'.join(map(str, shape))} but {METADATA_FILE} "
      f"says image_shape {list(metadata.image_shape)}"
    )
  image_format = features[FORMAT].decode("utf-8", "replace")
  if image_format != metadata.image_format:
    raise ShardError(
      f"{path}: record 0 is {image_format} but {METADATA_FILE} says "
      f"image_format {metadata.image_format!r}"
    )
  if not 0 <= features[LABEL] < metadata.num_classes:
    raise ShardError(
      f"{path}: record 0 has label {features[LABEL]} but {METADATA_FILE} says "
      f"num_classes {metadata.num_classes}"
    )
