"""Tests for preprocess/augment.py: the one op table says each op's shape and randomness truly."""

import numpy as np
import pytest
import tensorflow as tf

from preprocess import augment
from preprocess import datasets

EXAMPLES = {
  "random_crop": {"height": 5, "width": 7},
  "random_flip_left_right": {},
  "random_brightness": {"max_delta": 63.0},
  "random_contrast": {"lower": 0.2, "upper": 1.8},
  "central_crop": {"height": 6, "width": 4},
  "per_image_standardization": {},
  "scale": {"factor": 0.5},
}


def test_every_op_has_an_example_and_every_policy_uses_known_ops():
  assert set(EXAMPLES) == set(augment.OPS)
  for name in datasets.names():
    for steps in datasets.get(name).augmentation.values():
      assert all(step["op"] in augment.OPS for step in steps)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_shape_and_randomness_match_what_the_op_does(name):
  op = augment.OPS[name]
  step = dict(EXAMPLES[name], op=name)
  image = tf.constant(np.random.default_rng(0).uniform(0, 255, (10, 12, 3)), tf.float32)
  outputs = [op.apply(image, step, tf.constant([s, 7], tf.int64)).numpy() for s in range(8)]
  assert all(o.shape == augment.output_shape([step], (10, 12, 3)) for o in outputs)
  differ = any(not np.array_equal(outputs[0], o) for o in outputs[1:])
  assert differ == op.random == augment.is_random([step])


def test_bad_steps_are_one_line_errors():
  with pytest.raises(ValueError, match="unknown augmentation op 'blur'"):
    augment.output_shape([{"op": "blur"}], (4, 4, 1))
  with pytest.raises(ValueError, match="'scale' needs factor"):
    augment.output_shape([{"op": "scale"}], (4, 4, 1))
  with pytest.raises(ValueError, match="must be a"):
    augment.output_shape(["scale"], (4, 4, 1))
