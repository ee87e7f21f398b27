"""The serving export: the last stop of the data flow, after training.

Saves a SavedModel that takes raw uint8 images as stored in the shards and
applies the recipe's deterministic serving policy itself, so clients send
pixels, not preprocessed tensors. Next to it: `labels.txt` (class names, one a
line) and `augmentation.json` (the train and eval policies the model was
trained and evaluated with, and the serving policy the export applies), also
readable from the loaded model as `serving_policy` / `augmentation` strings.
"""

import json
import os

import tensorflow as tf

from trainers import input_pipeline
from trainers import run_dir
from trainers import stops

LABELS = "labels.txt"
AUGMENTATION = "augmentation.json"


def _check_image_shape(images, image_shape):
  """Fails with a clear message unless `images` is [batch, height, width, channels]."""
  height, width, channels = image_shape
  shape = tf.shape(images)
  ok = tf.cond(
    tf.equal(tf.size(shape), 4),
    lambda: tf.reduce_all(tf.equal(shape[1:], [height, width, channels])),
    lambda: tf.constant(False),
  )
  check = tf.debugging.Assert(
    ok,
    [
      f"images must be a batch of {height}x{width}x{channels} uint8 images, shape "
      f"[batch, {height}, {width}, {channels}], as stored in the training shards; got shape",
      shape,
    ],
    summarize=8,
  )
  with tf.control_dependencies([check]):
    return tf.ensure_shape(images, [None, height, width, channels])


def export_serving_model(
  eval_model, image_shape, class_names, augmentation, serving_policy, export_dir
):
  """Writes the SavedModel, labels.txt and augmentation.json to `export_dir`, replacing it whole.

  The new export is written beside the old one (`export_dir` + ".partial") and
  swapped in by renames, so until it is complete the old export stands; if the
  write fails or is stopped, the partial one is removed. A kill -9 at any
  point leaves names that the next run's start-up cleans
  (trainers/run_dir.py's `clean_interrupted`).

  Args:
    eval_model: Keras model images -> (logits, scores); the served logits are
      the scores, the tensor precision@1 is computed on.
    image_shape: (height, width, channels) of the stored images.
    class_names: Names of the classes, by label.
    augmentation: {"train": [...], "eval": [...]} policy applied in the run.
    serving_policy: Deterministic policy applied to served images.
  """
  height, width, channels = image_shape
  module = tf.Module()
  module.model = eval_model
  policies = dict(augmentation, serving=serving_policy)
  module.augmentation = tf.constant(json.dumps(policies, sort_keys=True))

  # Any shape is accepted at the signature and checked inside, so a client that
  # sends images of another size gets one line saying what the model takes,
  # instead of TensorFlow's signature-mismatch dump.
  @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
  def serve(images):
    images = _check_image_shape(images, (height, width, channels))

    def outputs(logits):
      return {
        "logits": logits,
        "probabilities": tf.nn.softmax(logits),
        "classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
      }

    def predict():
      _, logits = eval_model(
        input_pipeline.serving_preprocess(images, serving_policy), training=False
      )
      # Under a mixed-precision policy the model computes in 16 bits; clients get float32.
      return outputs(tf.cast(logits, tf.float32))

    # An empty batch gets empty outputs ([0, classes], [0]); some ops of the
    # policy and the model have no answer for zero images.
    empty = lambda: outputs(tf.zeros([0, len(class_names)], tf.float32))  # noqa: E731
    return tf.cond(tf.shape(images)[0] > 0, predict, empty)

  module.serve = serve
  partial = export_dir + run_dir.PARTIAL
  if tf.io.gfile.exists(partial):
    tf.io.gfile.rmtree(partial)
  try:
    tf.saved_model.save(module, partial, signatures={"serving_default": serve})
    with tf.io.gfile.GFile(os.path.join(partial, LABELS), "w") as f:
      f.write("\n".join(class_names) + "\n")
    with tf.io.gfile.GFile(os.path.join(partial, AUGMENTATION), "w") as f:
      f.write(json.dumps(policies, indent=2, sort_keys=True) + "\n")
  except BaseException:  # an error, or a stop signal (trainers/stops.py): no debris
    if tf.io.gfile.exists(partial):
      tf.io.gfile.rmtree(partial)
    raise
  _swap_in(partial, export_dir)


def _swap_in(new, export_dir):
  """Replaces `export_dir` by `new`: two renames, then the old one is deleted; signals wait."""
  old = export_dir + run_dir.SWAPPED
  with stops.deferred():
    if tf.io.gfile.exists(old):
      tf.io.gfile.rmtree(old)
    if tf.io.gfile.exists(export_dir):
      tf.io.gfile.rename(export_dir, old)
    tf.io.gfile.rename(new, export_dir)
    if tf.io.gfile.exists(old):
      tf.io.gfile.rmtree(old)
