"""The shard format: what the readers yield, the Beam job writes and the trainers read.

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
`check_record` reads a first record back without TensorFlow, and
`verify_data` checks a whole output folder.

The format's two other parts have modules of their own: TFRecord framing, CRCs
and counting in preprocess/tfrecord.py, and metadata.json, typed, in
preprocess/metadata.py. Their names are importable from here too, for callers
that know the shard format as one module.
"""

import dataclasses
import hashlib
import io
import os

import numpy as np
from PIL import Image

from preprocess.metadata import HEAD_BYTES  # noqa: F401
from preprocess.metadata import IMAGE_FORMATS
from preprocess.metadata import METADATA_FILE
from preprocess.metadata import METADATA_FORMAT_VERSION  # noqa: F401
from preprocess.metadata import REJECTS_FILE  # noqa: F401
from preprocess.metadata import SKIPPED_FILE  # noqa: F401
from preprocess.metadata import Metadata  # noqa: F401
from preprocess.metadata import MetadataError  # noqa: F401
from preprocess.metadata import RecordCounts  # noqa: F401
from preprocess.metadata import ShardInfo  # noqa: F401
from preprocess.metadata import SplitInfo  # noqa: F401
from preprocess.metadata import read_metadata
from preprocess.metadata import verify_shard
from preprocess.tfrecord import Corruption  # noqa: F401
from preprocess.tfrecord import ShardError
from preprocess.tfrecord import TFRecordError  # noqa: F401
from preprocess.tfrecord import count_records  # noqa: F401
from preprocess.tfrecord import find_corruption  # noqa: F401
from preprocess.tfrecord import first_example
from preprocess.tfrecord import frame  # noqa: F401

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
