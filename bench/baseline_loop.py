"""The script a user would otherwise write: one process, read .bin, PNG-encode, TFRecordWriter.

Reads the same CIFAR-10 `.bin` files as the Beam job, encodes each image with the
same PNG settings (`preprocess.schema.encode_image`), builds the same features
with `tf.train.Example`, and writes them with `tf.io.TFRecordWriter` into one
file per split. bench/run.py times it beside the Beam job.

    python -m bench.baseline_loop RAW_CIFAR_BATCHES_DIR OUT_DIR
"""

import hashlib
import os
import sys

import numpy as np
import tensorflow as tf

from preprocess import datasets
from preprocess import schema
from preprocess.datasets import cifar10

LAYOUT = datasets.get("cifar10").layout


def _bytes(v):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int(v):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))


def main(batches_dir, out_dir):
  names = cifar10.read_class_names(os.path.join(batches_dir, LAYOUT.meta_file))
  os.makedirs(out_dir, exist_ok=True)
  count = 0
  for split, files in LAYOUT.splits.items():
    with tf.io.TFRecordWriter(os.path.join(out_dir, f"{split}.tfrecord")) as writer:
      for fname in files:
        data = np.fromfile(os.path.join(batches_dir, fname), np.uint8).reshape(
          -1, cifar10.RECORD_BYTES
        )
        for i, row in enumerate(data):
          label = int(row[0])
          image = row[1:].reshape(3, 32, 32).transpose(1, 2, 0)
          source_id = f"{LAYOUT.batches_dir}/{fname}:{i}"
          example = tf.train.Example(
            features=tf.train.Features(
              feature={
                schema.ENCODED: _bytes(schema.encode_image(np.ascontiguousarray(image), "png")),
                schema.FORMAT: _bytes(b"png"),
                schema.HEIGHT: _int(32),
                schema.WIDTH: _int(32),
                schema.CHANNELS: _int(3),
                schema.LABEL: _int(label),
                schema.TEXT: _bytes(names[label].encode()),
                schema.SOURCE_ID: _bytes(source_id.encode()),
                schema.SHA256: _bytes(hashlib.sha256(row.tobytes()).hexdigest().encode()),
                schema.AUGMENT_SEED: _int(schema.augment_seed(source_id)),
              }
            )
          )
          writer.write(example.SerializeToString())
          count += 1
  print(f"wrote {count} records", file=sys.stderr)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
