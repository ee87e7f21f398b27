"""TFRecord framing and counting: the one definition of the shard file format.

The Beam job frames each serialized `tf.train.Example` with `frame` when it
writes a shard (pipeline/convert.py), without importing TensorFlow; the
trainers count a shard's records with `count_records` before training
(trainers/input_pipeline.py), reading 8 bytes a record and seeking past the
rest, without decoding anything.

A record is: uint64 length (little-endian), uint32 masked CRC32C of the length
bytes, `length` bytes of data, uint32 masked CRC32C of the data.
"""

import struct

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
