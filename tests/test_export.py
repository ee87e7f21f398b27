"""The serving SavedModel of trainers/export.py, loaded back and called as a client calls it.

A small real Keras model (no training: the signature, not the weights, is under
test) is exported with a deterministic policy; the loaded `serving_default`
signature serves images of the stored size (an empty batch too) and refuses any other size or rank
with one message saying what it takes.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers import export
from trainers import train

SHAPE = (8, 6, 3)  # height, width, channels of the stored images


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  inputs = keras.Input((6, 4, 3))
  logits = keras.layers.Dense(4, name="logits")(keras.layers.Flatten()(inputs))
  model = keras.Model(inputs, logits)
  policy = [{"op": "central_crop", "height": 6, "width": 4}, {"op": "per_image_standardization"}]
  export_dir = str(tmp_path_factory.mktemp("export") / "export")
  export.export_serving_model(
    train.make_eval_model(model),
    SHAPE,
    ["a", "b", "c", "d"],
    {"train": policy, "eval": policy},
    policy,
    export_dir,
  )
  return tf.saved_model.load(export_dir).signatures["serving_default"]


def test_serves_images_of_the_stored_size(served):
  images = tf.constant(np.random.default_rng(0).integers(0, 256, (3,) + SHAPE), tf.uint8)
  out = served(images=images)
  assert out["probabilities"].shape == (3, 4) and out["classes"].shape == (3,)
  np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
  "shape",
  [(1, 28, 28, 3), (2, 8, 6, 1), (1, 6, 8, 3), (8, 6, 3), (1, 1, 8, 6, 3)],
  ids=["other-size", "other-channels", "transposed", "no-batch", "rank-5"],
)
def test_refuses_other_sizes_with_one_clear_message(served, shape):
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    served(images=tf.zeros(shape, tf.uint8))
  message = error.value.message
  assert "images must be a batch of 8x6x3 uint8 images, shape [batch, 8, 6, 3]" in message
  assert f"got shape] [{' '.join(str(d) for d in shape)}]" in message, message


def test_an_empty_batch_gets_empty_outputs(served, tmp_path):
  out = served(images=tf.zeros((0,) + SHAPE, tf.uint8))
  assert out["logits"].shape == (0, 4) and out["probabilities"].shape == (0, 4)
  assert out["classes"].shape == (0,) and out["classes"].dtype == tf.int32
  # The CIFAR-10 tutorial's model (its local response normalization has no answer
  # for zero images) with its policy, as a run exports it.
  from trainers.recipes import cifar10_tutorial

  policy = [{"op": "central_crop", "height": 24, "width": 24}, {"op": "per_image_standardization"}]
  model = train.make_eval_model(cifar10_tutorial.build(10, (24, 24, 3)))
  names = [str(i) for i in range(10)]
  export.export_serving_model(
    model, (32, 32, 3), names, {"train": policy, "eval": policy}, policy, str(tmp_path / "e")
  )
  tutorial = tf.saved_model.load(str(tmp_path / "e")).signatures["serving_default"]
  out = tutorial(images=tf.zeros((0, 32, 32, 3), tf.uint8))
  assert out["probabilities"].shape == (0, 10) and out["classes"].shape == (0,)
  # A batch after it still serves (the branch is taken per call).
  assert tutorial(images=tf.zeros((2, 32, 32, 3), tf.uint8))["classes"].shape == (2,)
