"""The augmentation ops: one table of op name -> implementation, output shape, randomness.

A policy is data: a list of {"op": name, **params} steps applied in order to
float32 pixels in [0, 255] (the range the TensorFlow CIFAR-10 tutorial distorts
in). Each data set's spec (preprocess/datasets/) holds its default policy; the
Beam job writes it into `metadata.json`; `preprocess.schema` checks it
against this table; the trainers apply it with `apply` (trainers/input_pipeline.py),
and the exported model runs the eval policy through the same ops. TensorFlow is
imported inside the op functions only, so Beam workers and the metadata checks
never import it.
"""

from collections.abc import Callable
import dataclasses


@dataclasses.dataclass(frozen=True)
class Op:
  """One augmentation op.

  Attributes:
    name: The "op" value in a policy step.
    params: Parameter names a step must give.
    random: Whether the op draws random numbers (then it needs a seed, and
      serving, which must be deterministic, refuses it).
    shape: fn(step, (height, width, channels)) -> the output shape.
    apply: fn(image, step, seed) -> image. Deterministic ops take one HWC image
      or an NHWC batch alike and ignore `seed`; random ops take one image and
      an int [2] stateless seed.
  """

  name: str
  params: tuple
  random: bool
  shape: Callable
  apply: Callable


def _same(step, shape):
  del step
  return shape


def _cropped(step, shape):
  return (step["height"], step["width"], shape[2])


def _random_crop(image, step, seed):
  import tensorflow as tf

  return tf.image.stateless_random_crop(
    image, [step["height"], step["width"], image.shape[-1]], seed=seed
  )


def _random_flip_left_right(image, step, seed):
  import tensorflow as tf

  del step
  return tf.image.stateless_random_flip_left_right(image, seed=seed)


def _random_brightness(image, step, seed):
  import tensorflow as tf

  return tf.image.stateless_random_brightness(image, step["max_delta"], seed=seed)


def _random_contrast(image, step, seed):
  import tensorflow as tf

  return tf.image.stateless_random_contrast(image, step["lower"], step["upper"], seed=seed)


def _central_crop(image, step, seed):
  import tensorflow as tf

  del seed
  # The tutorial's eval input: crop (or pad) around the centre.
  return tf.image.resize_with_crop_or_pad(image, step["height"], step["width"])


def _per_image_standardization(image, step, seed):
  import tensorflow as tf

  del step, seed
  return tf.image.per_image_standardization(image)


def _scale(image, step, seed):
  import tensorflow as tf

  del seed
  return image * tf.constant(step["factor"], image.dtype)


OPS = {
  op.name: op
  for op in (
    Op("random_crop", ("height", "width"), True, _cropped, _random_crop),
    Op("random_flip_left_right", (), True, _same, _random_flip_left_right),
    Op("random_brightness", ("max_delta",), True, _same, _random_brightness),
    Op("random_contrast", ("lower", "upper"), True, _same, _random_contrast),
    Op("central_crop", ("height", "width"), False, _cropped, _central_crop),
    Op("per_image_standardization", (), False, _same, _per_image_standardization),
    Op("scale", ("factor",), False, _same, _scale),
  )
}


def op_of(step):
  """The `Op` of a policy step.

  Raises:
    ValueError: Not a {"op": ...} dict, unknown op, or a missing parameter.
  """
  if not isinstance(step, dict) or "op" not in step:
    raise ValueError(f"a step must be a {{\"op\": name, ...}} object, got {step!r}")
  op = OPS.get(step["op"])
  if op is None:
    raise ValueError(f"unknown augmentation op {step['op']!r}; known: {', '.join(sorted(OPS))}")
  missing = [p for p in op.params if p not in step]
  if missing:
    raise ValueError(f"augmentation op {op.name!r} needs {', '.join(missing)}")
  return op


def is_random(steps):
  """Whether any step of a policy draws random numbers."""
  return any(op_of(step).random for step in steps)


def output_shape(steps, input_shape):
  """The (height, width, channels) that `steps` turn `input_shape` into.

  Raises:
    ValueError: An unknown op or a missing parameter.
  """
  shape = tuple(input_shape)
  for step in steps:
    shape = op_of(step).shape(step, shape)
  return shape
