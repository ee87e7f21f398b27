"""Tests for preprocess/schema.py, the shard format.

The hand-written Example serializer matches TensorFlow's and the reader side
parses it; TFRecord framing equals TensorFlow's writer and counting reads it back.
"""

import io

import numpy as np
import pytest
import tensorflow as tf

from preprocess import schema
from preprocess.schema import Record


def _record(shape=(5, 7, 3), seed=0):
  image = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
  return Record("cifar-10-batches-bin/data_batch_1.bin:17", 4, image, "ab" * 32)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**62, -1, -(2**63)])
def test_int64_values_serialize_like_tensorflow(value):
  ours = schema.serialize_example({"k": value, "b": b"x" * 200})
  theirs = tf.train.Example(
    features=tf.train.Features(
      feature={
        "k": tf.train.Feature(int64_list=tf.train.Int64List(value=[value])),
        "b": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x" * 200])),
      }
    )
  ).SerializeToString(deterministic=True)
  assert ours == theirs


def test_make_example_round_trips_through_tf_parsing():
  record = _record()
  names = [f"class{i}" for i in range(10)]
  serialized = schema.make_example(record, names, "png")
  # Byte-identical to TensorFlow's own deterministic serialization of the same message.
  assert tf.train.Example.FromString(serialized).SerializeToString(deterministic=True) == serialized
  parsed = schema.parse_example(tf.constant([serialized]))
  assert set(parsed) == set(schema.FEATURE_SPEC)
  decoded = tf.io.decode_image(parsed[schema.ENCODED][0]).numpy()
  np.testing.assert_array_equal(decoded, record.image)  # PNG is lossless
  assert parsed[schema.LABEL].numpy().tolist() == [4]
  assert parsed[schema.TEXT].numpy().tolist() == [b"class4"]
  assert [parsed[k].numpy()[0] for k in (schema.HEIGHT, schema.WIDTH, schema.CHANNELS)] == [5, 7, 3]
  assert parsed[schema.FORMAT].numpy()[0] == b"png"
  assert parsed[schema.SOURCE_ID].numpy()[0].decode() == record.source_id
  assert parsed[schema.SHA256].numpy()[0].decode() == record.content_sha256
  assert parsed[schema.AUGMENT_SEED].numpy()[0] == schema.augment_seed(record.source_id)


def test_encoding_is_deterministic_and_jpeg_decodes():
  record = _record(shape=(40, 30, 3), seed=1)
  assert schema.make_example(record, ["a"] * 10, "jpeg") == schema.make_example(
    record, ["a"] * 10, "jpeg"
  )
  jpeg = schema.encode_image(record.image, "jpeg")
  assert tf.io.decode_jpeg(jpeg).shape == (40, 30, 3)
  gray = schema.encode_image(record.image[:, :, :1], "png")
  np.testing.assert_array_equal(tf.io.decode_png(gray).numpy(), record.image[:, :, :1])


def test_augment_seed_is_stable_non_negative_and_distinct():
  seeds = {schema.augment_seed(f"f.bin:{i}") for i in range(1000)}
  assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
  assert schema.augment_seed("f.bin:3") == schema.augment_seed("f.bin:3")


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match="unknown image format"):
    schema.encode_image(np.zeros((2, 2, 3), np.uint8), "gif")
  with pytest.raises(ValueError, match="uint8"):
    schema.encode_image(np.zeros((2, 2, 3), np.float32), "png")


# --- TFRecord framing and counting ---

PAYLOADS = [b"", b"x", b"hello" * 1000, bytes(range(256))]


def test_frame_equals_tf_record_writer(tmp_path):
  path = tmp_path / "tf.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as writer:
    for p in PAYLOADS:
      writer.write(p)
  assert b"".join(schema.frame(p) for p in PAYLOADS) == path.read_bytes()
  assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == PAYLOADS


def test_count_records_and_truncation():
  data = b"".join(schema.frame(p) for p in PAYLOADS)
  assert schema.count_records(io.BytesIO(data), len(data), "s") == len(PAYLOADS)
  assert schema.count_records(io.BytesIO(b""), 0, "s") == 0
  cut = data[:-3]
  with pytest.raises(schema.TFRecordError, match=r"^s: record 3 needs 3 more bytes"):
    schema.count_records(io.BytesIO(cut), len(cut), "s")
  with pytest.raises(schema.TFRecordError, match=r"^s: ends inside the header of record 4"):
    schema.count_records(io.BytesIO(data + b"\0" * 5), len(data) + 5, "s")
