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
"""

import dataclasses
import hashlib
import io
import struct
from typing import Optional

import numpy as np
from PIL import Image

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
  index: Optional[int]
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
  return serialize_example({
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
  })


def parse_example(serialized):
  """Parses serialized Examples (scalar or batch) into a dict of tensors.

  Reader-side twin of `make_example`; imports TensorFlow when called.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
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
      for key in sorted(features))
  return _field(0x0A, entries)


# --- TFRecord framing and counting ---

HEADER_BYTES = 8 + 4
FOOTER_BYTES = 4


class TFRecordError(ValueError):
  """A shard whose framing is broken; the message is one line naming the file."""


def _masked_crc(data):
  import google_crc32c  # pylint: disable=g-import-not-at-top  # Writers only.
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data):
  """One TFRecord: length, masked CRC32C of the length, data, masked CRC32C of the data."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


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
      raise TFRecordError(f"{path}: ends inside the header of record {count} "
                          f"(byte {offset} of {size}): the file is truncated")
    f.seek(offset)
    (length,) = struct.unpack("<Q", f.read(8))
    offset += HEADER_BYTES + length + FOOTER_BYTES
    if offset > size:
      raise TFRecordError(f"{path}: record {count} needs {offset - size} more bytes than the "
                          f"file has: the file is truncated")
    count += 1
  return count
