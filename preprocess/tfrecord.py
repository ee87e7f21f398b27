"""TFRecord framing: writing, counting and checking the records of a shard, without TensorFlow.

A TFRecord is: uint64 length (little-endian), uint32 masked CRC32C of the
length bytes, `length` bytes of data, uint32 masked CRC32C of the data. The
Beam job frames each serialized Example with `frame` when it writes a shard
(pipeline/convert.py), without importing TensorFlow; the trainers count a
shard's records with `count_records` before training, reading 8 bytes a record
and seeking past the rest, and name a damaged shard's first bad record with
`find_corruption`. preprocess/metadata.py checks whole shards against
metadata.json with `iter_frames`.
"""

import dataclasses
import struct

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


def iter_frames(f, path):
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
    for item in iter_frames(f, path):
      if isinstance(item, Corruption):
        return item
  return None


def first_example(path, opener=open):
  """The first record of a shard, serialized, or None for an empty shard."""
  with opener(path, "rb") as f:
    for item in iter_frames(f, path):
      if isinstance(item, Corruption):
        raise ShardError(item.describe(path))
      return item[2]
  return None
