"""Augmentation policy of each data set, as data.

The Beam job writes the policy into `metadata.json`; the trainers read it from
there and apply it with tf.data ops (trainers/input_pipeline.py), so this file
is the single source of truth for what a model sees. Each step is a dict with
an "op" name and its parameters, applied in order to float32 pixels in
[0, 255] (the range the TensorFlow CIFAR-10 tutorial distorts in).
"""

import copy

_CIFAR10_CROP = 24

POLICIES = {
    # The TensorFlow CIFAR-10 tutorial (cifar10_input.distorted_inputs / inputs).
    "cifar10": {
        "train": [
            {"op": "random_crop", "height": _CIFAR10_CROP, "width": _CIFAR10_CROP},
            {"op": "random_flip_left_right"},
            {"op": "random_brightness", "max_delta": 63.0},
            {"op": "random_contrast", "lower": 0.2, "upper": 1.8},
            {"op": "per_image_standardization"},
        ],
        "eval": [
            {"op": "central_crop", "height": _CIFAR10_CROP, "width": _CIFAR10_CROP},
            {"op": "per_image_standardization"},
        ],
    },
    "mnist": {
        "train": [{"op": "scale", "factor": 1.0 / 255.0}],
        "eval": [{"op": "scale", "factor": 1.0 / 255.0}],
    },
    # Stored at the converted size (default 150x150), so no crop.
    "catdog": {
        "train": [{"op": "random_flip_left_right"}, {"op": "per_image_standardization"}],
        "eval": [{"op": "per_image_standardization"}],
    },
}

KNOWN_OPS = frozenset({
    "random_crop", "central_crop", "random_flip_left_right", "random_brightness",
    "random_contrast", "per_image_standardization", "scale",
})


def policy(dataset):
  """Returns a fresh copy of the augmentation policy of `dataset`."""
  return copy.deepcopy(POLICIES[dataset])


def output_shape(steps, input_shape):
  """The (height, width, channels) that `steps` turn `input_shape` into."""
  height, width, channels = input_shape
  for step in steps:
    if step["op"] not in KNOWN_OPS:
      raise ValueError(f"unknown augmentation op {step['op']!r}")
    if step["op"] in ("random_crop", "central_crop"):
      height, width = step["height"], step["width"]
  return (height, width, channels)
