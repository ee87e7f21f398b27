"""The one TFRecord schema: what the Beam job writes and the trainers read.

Every shard record is a `tf.train.Example` with the standard image keys, so any
TensorFlow image reader can consume the shards. `make_example` (writer side) and
`parse_example` (reader side) sit side by side and share `FEATURE_SPEC`.

The writer side serializes the protobuf by hand (about thirty lines, below) so
that Beam workers never import TensorFlow: importing it costs seconds and
hundreds of megabytes per worker process, more than encoding a CIFAR-10 split.
The bytes equal TensorFlow's own deterministic serialization (map keys sorted);
tests/test_schema.py checks that against `tf.train.Example`.
"""

import hashlib
import io

import numpy as np
from PIL import Image

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
  """Serializes a `preprocess.records.Record` as a `tf.train.Example`.

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
