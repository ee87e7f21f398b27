"""Model architectures: the last stop of the data flow before the training loop.

The trainers read TFRecords written by the Beam job, decode them into float
image batches of `input_shape`, and feed them to a model built here. Each
model is a plain Keras 3 functional model that maps images to LOGITS (no
softmax: the training loop applies the loss) and holds nothing but
architecture: no process, file or rank logic, and no seeds (the trainer calls
`keras.utils.set_random_seed` before building).

Every recipe has one `build_<name>(num_classes, input_shape)` function, listed
in the explicit `MODELS` dict; `build(name, ...)` looks a name up. Layer names
follow the recipes (conv1, pool1, norm1, ..., softmax_linear) so checkpoints
and TensorBoard summaries read like the original code.

Weight decay is a `kernel_regularizer`, so it shows up in `model.losses` and
the loop adds it with `sum(model.losses)`. The TF tutorial's decay term is
`wd * tf.nn.l2_loss(W)` = `wd * sum(W**2) / 2`, i.e. `keras.regularizers.L2(wd / 2)`.
"""

import keras
import tensorflow as tf

# Package under which custom layers register, so `keras.models.load_model`
# can rebuild them in safe mode (a `Lambda` layer would refuse to load).
_PACKAGE = "cnn_pipeline"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LocalResponseNormalization(keras.layers.Layer):
  """`tf.nn.local_response_normalization` over the channel axis, as a layer.

  Keras 3 has no LRN layer; a registered layer (unlike a `Lambda`) saves its
  parameters in the config and reloads in safe mode.

  Args:
    depth_radius: Half-width of the channel window.
    bias: Offset added inside the power (k in AlexNet).
    alpha: Scale of the sum of squares (not divided by the window size).
    beta: Exponent.
  """

  def __init__(self, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5, **kwargs):
    super().__init__(**kwargs)
    self.depth_radius = depth_radius
    self.bias = bias
    self.alpha = alpha
    self.beta = beta

  def call(self, inputs):
    return tf.nn.local_response_normalization(
        inputs, depth_radius=self.depth_radius, bias=self.bias,
        alpha=self.alpha, beta=self.beta)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(depth_radius=self.depth_radius, bias=self.bias,
                  alpha=self.alpha, beta=self.beta)
    return config


def _truncated_normal(stddev):
  # Same distribution as TF1's tf.truncated_normal_initializer: redraw beyond
  # two standard deviations.
  return keras.initializers.TruncatedNormal(mean=0.0, stddev=stddev)


def _weight_decay(wd):
  # tf.nn.l2_loss halves the sum of squares; keras L2 does not.
  return keras.regularizers.L2(wd / 2.0)


def build_cifar10_tutorial(num_classes=10, input_shape=(24, 24, 3)):
  """The TensorFlow CIFAR-10 tutorial model (cifar10.inference).

  1,068,298 parameters for 24x24x3 inputs and 10 classes.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the (cropped) images.

  Returns:
    An uncompiled `keras.Model` from images to logits.
  """
  lrn = dict(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
  inputs = keras.Input(shape=input_shape, name="images")
  x = keras.layers.Conv2D(
      64, 5, strides=1, padding="same", activation="relu",
      kernel_initializer=_truncated_normal(5e-2),
      bias_initializer=keras.initializers.Constant(0.0), name="conv1")(inputs)
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
  x = LocalResponseNormalization(**lrn, name="norm1")(x)
  x = keras.layers.Conv2D(
      64, 5, strides=1, padding="same", activation="relu",
      kernel_initializer=_truncated_normal(5e-2),
      bias_initializer=keras.initializers.Constant(0.1), name="conv2")(x)
  # The tutorial normalizes before pooling in the second stage.
  x = LocalResponseNormalization(**lrn, name="norm2")(x)
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(
      384, activation="relu", kernel_initializer=_truncated_normal(0.04),
      bias_initializer=keras.initializers.Constant(0.1),
      kernel_regularizer=_weight_decay(0.004), name="local3")(x)
  x = keras.layers.Dense(
      192, activation="relu", kernel_initializer=_truncated_normal(0.04),
      bias_initializer=keras.initializers.Constant(0.1),
      kernel_regularizer=_weight_decay(0.004), name="local4")(x)
  logits = keras.layers.Dense(
      num_classes, kernel_initializer=_truncated_normal(1.0 / 192.0),
      bias_initializer=keras.initializers.Constant(0.0),
      name="softmax_linear")(x)
  return keras.Model(inputs, logits, name="cifar10_tutorial")


def build_cifar10_cookbook(num_classes=10, input_shape=(24, 24, 3)):
  """The CIFAR-10 model of the TensorFlow Machine Learning Cookbook.

  Like the tutorial but pool-then-LRN in both stages, AlexNet's LRN constants,
  one weight stddev (0.05), zero biases and no weight decay.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the (cropped) images.

  Returns:
    An uncompiled `keras.Model` from images to logits.
  """
  lrn = dict(depth_radius=5, bias=2.0, alpha=1e-3, beta=0.75)
  init = dict(kernel_initializer=_truncated_normal(0.05),
              bias_initializer="zeros")
  inputs = keras.Input(shape=input_shape, name="images")
  x = inputs
  for stage in (1, 2):
    x = keras.layers.Conv2D(64, 5, strides=1, padding="same",
                            activation="relu", **init, name=f"conv{stage}")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                  name=f"pool{stage}")(x)
    x = LocalResponseNormalization(**lrn, name=f"norm{stage}")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(384, activation="relu", **init, name="full1")(x)
  x = keras.layers.Dense(192, activation="relu", **init, name="full2")(x)
  logits = keras.layers.Dense(num_classes, **init, name="final")(x)
  return keras.Model(inputs, logits, name="cifar10_cookbook")


def build_mnist_basic(num_classes=10, input_shape=(28, 28, 1)):
  """A small two-conv MNIST model; 55,338 parameters for 28x28x1 and 10 classes.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the images.

  Returns:
    An uncompiled `keras.Model` from images to logits.
  """
  inputs = keras.Input(shape=input_shape, name="images")
  x = keras.layers.Conv2D(16, 3, strides=1, padding="same", activation="relu",
                          name="conv1")(inputs)
  x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu",
                          name="conv2")(x)
  x = keras.layers.MaxPooling2D(2, strides=2, padding="valid", name="pool1")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(32, activation="relu", name="fc1")(x)
  logits = keras.layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, logits, name="mnist_basic")


def build_mnist_bn_dropout(num_classes=10, input_shape=(28, 28, 1)):
  """The MNIST model with batch normalization, SELU and dropout.

  The convs and dense layers that feed a BatchNormalization keep their bias
  (Keras' default): the recipe does not say to drop it. Each such bias is
  redundant with the BN offset (beta) but harmless; dropping it would change
  the parameter count and the checkpoint layout from the recipe's.
  The final BN normalizes the logits themselves, as the recipe does.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the images.

  Returns:
    An uncompiled `keras.Model` from images to logits.
  """
  # Keras momentum is TF1's `decay`: the weight kept by the moving averages.
  bn = dict(momentum=0.9)
  inputs = keras.Input(shape=input_shape, name="images")
  x = keras.layers.Conv2D(16, 3, strides=1, padding="same", name="conv1")(inputs)
  x = keras.layers.BatchNormalization(**bn, name="bn1")(x)
  x = keras.layers.Activation("selu", name="selu1")(x)
  x = keras.layers.Conv2D(32, 3, strides=1, padding="same", name="conv2")(x)
  x = keras.layers.BatchNormalization(**bn, name="bn2")(x)
  x = keras.layers.Activation("selu", name="selu2")(x)
  x = keras.layers.MaxPooling2D(2, strides=2, padding="valid", name="pool1")(x)
  x = keras.layers.Dropout(0.25, name="dropout1")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(32, name="fc1")(x)
  x = keras.layers.BatchNormalization(**bn, name="bn3")(x)
  x = keras.layers.Activation("selu", name="selu3")(x)
  x = keras.layers.Dropout(0.5, name="dropout2")(x)
  x = keras.layers.Dense(num_classes, name="fc2")(x)
  logits = keras.layers.BatchNormalization(**bn, name="logits_bn")(x)
  return keras.Model(inputs, logits, name="mnist_bn_dropout")


def _bottleneck(x, name, projection):
  """A ResNet bottleneck block: 1x1->64, 3x3->64, 1x1->256, plus shortcut.

  ReLU follows the first two convs and the sum, not the last conv, so the
  residual can be negative before the add. Only the convs have biases: the
  recipe's extra bias after the sum is what kept it at 11% accuracy, so the
  sum goes straight into the ReLU.
  """
  shortcut = x
  if projection:
    shortcut = keras.layers.Conv2D(256, 1, strides=1, padding="same",
                                   name=f"{name}_shortcut")(x)
  y = keras.layers.Conv2D(64, 1, padding="same", activation="relu",
                          name=f"{name}_conv1")(x)
  y = keras.layers.Conv2D(64, 3, padding="same", activation="relu",
                          name=f"{name}_conv2")(y)
  y = keras.layers.Conv2D(256, 1, padding="same", name=f"{name}_conv3")(y)
  y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
  return keras.layers.Activation("relu", name=f"{name}_relu")(y)


def build_mnist_resnet(num_classes=10, input_shape=(28, 28, 1)):
  """The small MNIST ResNet: one convolutional block and two identity blocks.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the images.

  Returns:
    An uncompiled `keras.Model` from images to logits.
  """
  inputs = keras.Input(shape=input_shape, name="images")
  x = keras.layers.Conv2D(64, 2, strides=2, padding="same", activation="relu",
                          name="conv1")(inputs)
  x = keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool1")(x)
  x = _bottleneck(x, "conv_block", projection=True)
  x = _bottleneck(x, "identity_block1", projection=False)
  x = _bottleneck(x, "identity_block2", projection=False)
  x = keras.layers.MaxPooling2D(2, strides=2, padding="valid", name="pool2")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(1024, activation="relu", name="fc1")(x)
  x = keras.layers.Dropout(0.5, name="dropout")(x)
  logits = keras.layers.Dense(num_classes, name="fc2")(x)
  return keras.Model(inputs, logits, name="mnist_resnet")


def build_catdog_lenet5(num_classes=2, input_shape=(150, 150, 3)):
  """LeNet-5 adapted to 150x150 cat/dog photos.

  The recipe states an initializer only for the output layer (truncated
  normal stddev 0.005, bias 0.1); the other layers keep Keras' defaults
  (Glorot-uniform kernels, zero biases) rather than guess. A stddev of 0.005
  on all five layers would also shrink the activations of the deep stack.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the images.

  Returns:
    An uncompiled `keras.Model` from images to logits.
  """
  inputs = keras.Input(shape=input_shape, name="images")
  x = keras.layers.Conv2D(6, 5, padding="same", activation="relu",
                          name="conv1")(inputs)
  x = keras.layers.AveragePooling2D(2, strides=2, padding="same",
                                    name="pool1")(x)
  x = keras.layers.Conv2D(16, 5, padding="same", activation="relu",
                          name="conv2")(x)
  x = keras.layers.AveragePooling2D(2, strides=2, padding="same",
                                    name="pool2")(x)
  x = keras.layers.Conv2D(120, 5, padding="same", activation="relu",
                          name="conv3")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(84, activation="relu", name="fc1")(x)
  logits = keras.layers.Dense(
      num_classes, kernel_initializer=_truncated_normal(0.005),
      bias_initializer=keras.initializers.Constant(0.1), name="fc2")(x)
  return keras.Model(inputs, logits, name="catdog_lenet5")


def build_tiny(num_classes=10, input_shape=(28, 28, 1)):
  """A few-hundred-parameter model for fast pipeline and distributed tests.

  Global average pooling makes it accept any image size; it has no dropout or
  batch norm, so a step is deterministic and ranks agree exactly.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the images.

  Returns:
    An uncompiled `keras.Model` from images to logits.
  """
  inputs = keras.Input(shape=input_shape, name="images")
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu",
                          name="conv1")(inputs)
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  logits = keras.layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, logits, name="tiny")


MODELS = {
    "cifar10_tutorial": build_cifar10_tutorial,
    "cifar10_cookbook": build_cifar10_cookbook,
    "mnist_basic": build_mnist_basic,
    "mnist_bn_dropout": build_mnist_bn_dropout,
    "mnist_resnet": build_mnist_resnet,
    "catdog_lenet5": build_catdog_lenet5,
    "tiny": build_tiny,
}


def build(name, num_classes, input_shape):
  """Builds the model registered as `name`.

  Args:
    name: A key of `MODELS`.
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the images.

  Returns:
    An uncompiled `keras.Model` from images to logits.

  Raises:
    ValueError: If `name` is not a key of `MODELS`.
  """
  if name not in MODELS:
    raise ValueError(
        f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
  return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape))
