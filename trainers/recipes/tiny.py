"""A few-hundred-parameter model for fast pipeline and distributed tests (not a documented recipe).

Every entry script accepts it. Global average pooling makes it accept any image
size; it has no dropout or batch norm, so a step is deterministic and ranks
agree exactly. It evaluates on the test split, which every data set has.
"""

import keras

from trainers import layers
from trainers.recipes import Recipe


def build(num_classes=10, input_shape=(28, 28, 1), weight_decay=None):
  """Conv 3x3/8 stride 2, global average pooling, dense logits.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the images.
    weight_decay: L2 factor on every kernel (none by default).

  Returns:
    An uncompiled `keras.Model` from images to logits.
  """
  reg = dict(kernel_regularizer=layers.weight_decay(weight_decay))
  inputs = keras.Input(shape=input_shape, name="images")
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", **reg, name="conv1")(
    inputs
  )
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  logits = keras.layers.Dense(num_classes, **reg, name="logits")(x)
  return keras.Model(inputs, logits, name="tiny")


RECIPE = Recipe(
  name="tiny",
  dataset=None,
  build=build,
  optimizer="sgd",
  learning_rate=0.05,
  batch_size=32,
  max_steps=100,
  eval_on="test",
  eval_every=50,
)
