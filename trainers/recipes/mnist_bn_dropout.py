"""The MNIST CNN with batch normalization, SELU, dropout and early stopping.

Where the numbers come from (the recipe as recorded in this project's earlier
trainers/config.py and models.py, and issue 8's line-by-line comparison):
  model        conv3x3/16, BN, SELU; conv3x3/32, BN, SELU; max-pool 2x2;
               dropout 0.25; dense 32, BN, SELU; dropout 0.5; dense 10; a final
               BN on the logits. BN decay (Keras momentum) 0.9.
  optimizer    Adam 0.01, constant.
  batch, steps batch 100; at most 20 epochs = 20 x 550 = 11,000 steps.
  early stop   validate every 10 steps on the 5,000 held-out images; stop after
               2,000 steps without a better validation precision, restore the
               best checkpoint, report test precision.
  precision    the recipe's `in_top_k(logits, y, 1)` takes the logits BEFORE the
               final batch norm (the output of fc2): `eval_output="fc2"` makes
               validation, early stopping, the test figure, training accuracy
               and the export use that tensor. The loss is computed on the
               logits AFTER the final batch norm (the model's output), as the
               recipe's cross entropy is.
  augmentation the data set's default (metadata.json): pixels scaled to [0, 1].
Text versus code: the convs and dense layers that feed a BN keep their bias
(Keras' default; the recipe does not drop it). Each is redundant with the BN
offset but harmless; kept so the parameter count and checkpoint layout match
the recipe's. The final BN normalizes the logits themselves, as the code does.
"""

import keras

from trainers import layers
from trainers.recipes import Recipe


def build(num_classes=10, input_shape=(28, 28, 1), weight_decay=None):
  """The BN/SELU/dropout MNIST CNN; outputs the post-BN logits.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the images.
    weight_decay: L2 factor on every kernel (the recipe has none).

  Returns:
    An uncompiled `keras.Model` from images to logits (the layer "fc2" holds
    the pre-BN logits that precision is computed on).
  """
  bn = dict(momentum=0.9)  # Keras momentum is TF1's `decay`.
  reg = dict(kernel_regularizer=layers.weight_decay(weight_decay))
  inputs = keras.Input(shape=input_shape, name="images")
  x = keras.layers.Conv2D(16, 3, strides=1, padding="same", **reg, name="conv1")(inputs)
  x = keras.layers.BatchNormalization(**bn, name="bn1")(x)
  x = keras.layers.Activation("selu", name="selu1")(x)
  x = keras.layers.Conv2D(32, 3, strides=1, padding="same", **reg, name="conv2")(x)
  x = keras.layers.BatchNormalization(**bn, name="bn2")(x)
  x = keras.layers.Activation("selu", name="selu2")(x)
  x = keras.layers.MaxPooling2D(2, strides=2, padding="valid", name="pool1")(x)
  x = keras.layers.Dropout(0.25, name="dropout1")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(32, **reg, name="fc1")(x)
  x = keras.layers.BatchNormalization(**bn, name="bn3")(x)
  x = keras.layers.Activation("selu", name="selu3")(x)
  x = keras.layers.Dropout(0.5, name="dropout2")(x)
  x = keras.layers.Dense(num_classes, **reg, name="fc2")(x)
  logits = keras.layers.BatchNormalization(**bn, name="logits_bn")(x)
  return keras.Model(inputs, logits, name="mnist_bn_dropout")


RECIPE = Recipe(
  name="mnist_bn_dropout",
  dataset="mnist",
  build=build,
  optimizer="adam",
  learning_rate=0.01,
  batch_size=100,
  max_steps=11_000,
  eval_on="validation",
  eval_every=10,
  eval_output="fc2",
  early_stopping_patience=2_000,
  validation_size=5_000,
  image_shape=(28, 28, 1),
)
