"""Tests for preprocess/tfrecord.py: framing equals TensorFlow's writer, counting reads it back."""

import io

import pytest
import tensorflow as tf

from preprocess import tfrecord

PAYLOADS = [b"", b"x", b"hello" * 1000, bytes(range(256))]


def test_frame_equals_tf_record_writer(tmp_path):
  path = tmp_path / "tf.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as writer:
    for p in PAYLOADS:
      writer.write(p)
  assert b"".join(tfrecord.frame(p) for p in PAYLOADS) == path.read_bytes()
  assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == PAYLOADS


def test_count_records_and_truncation():
  data = b"".join(tfrecord.frame(p) for p in PAYLOADS)
  assert tfrecord.count_records(io.BytesIO(data), len(data), "s") == len(PAYLOADS)
  assert tfrecord.count_records(io.BytesIO(b""), 0, "s") == 0
  cut = data[:-3]
  with pytest.raises(tfrecord.TFRecordError, match=r"^s: record 3 needs 3 more bytes"):
    tfrecord.count_records(io.BytesIO(cut), len(cut), "s")
  with pytest.raises(tfrecord.TFRecordError, match=r"^s: ends inside the header of record 4"):
    tfrecord.count_records(io.BytesIO(data + b"\0" * 5), len(data) + 5, "s")
