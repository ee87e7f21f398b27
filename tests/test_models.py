"""Tests of the recipes' model builders (trainers/recipes/*.py, trainers/layers.py).

Every registered recipe is built and run (its inputs derived from the recipe and
its data set's spec), so a new recipe file is tested without a test edit.
Expected parameter counts are written out from the recipes' layer specs by
hand arithmetic (below), never read back from the code under test, so a wrong
kernel size, stride, padding or stray bias changes a count and fails; the table
checks the recipes it names.
"""

import functools

import keras
import numpy as np
import pytest

from preprocess import augment
from preprocess import datasets
from trainers import layers
from trainers import recipes


def conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def dense(nin, nout):
  return nin * nout + nout


def bn(c):
  return 4 * c  # gamma, beta, moving mean, moving variance.


def cifar10_count(classes):
  # 24 -> pool1 (3x3/2 SAME) 12 -> pool2 6; 6 * 6 * 64 = 2304 features.
  return (
    conv(5, 3, 64)
    + conv(5, 64, 64)
    + dense(6 * 6 * 64, 384)
    + dense(384, 192)
    + dense(192, classes)
  )


RESNET = (
  conv(2, 1, 64)
  + conv(1, 64, 64)
  + conv(3, 64, 64)
  + conv(1, 64, 256)
  + conv(1, 64, 256, bias=False)
  + 2 * (conv(1, 256, 64) + conv(3, 64, 64) + conv(1, 64, 256))
  + dense(7 * 7 * 256, 1024)
  + dense(1024, 10)
)

# Name -> (build kwargs, expected parameter count), for the recipes it names.
SPECS = {
  "cifar10_tutorial": (dict(num_classes=10, input_shape=(24, 24, 3)), cifar10_count(10)),
  "cifar10_cookbook": (dict(num_classes=10, input_shape=(24, 24, 3)), cifar10_count(10)),
  # 28 -> conv2 stride 2 -> 14 -> pool 2x2 VALID -> 7.
  "mnist_basic": (
    dict(num_classes=10, input_shape=(28, 28, 1)),
    conv(3, 1, 16) + conv(3, 16, 32) + dense(7 * 7 * 32, 32) + dense(32, 10),
  ),
  # Stride-1 convs keep 28; pool -> 14. Convs/dense keep their biases.
  "mnist_bn_dropout": (
    dict(num_classes=10, input_shape=(28, 28, 1)),
    conv(3, 1, 16)
    + bn(16)
    + conv(3, 16, 32)
    + bn(32)
    + dense(14 * 14 * 32, 32)
    + bn(32)
    + dense(32, 10)
    + bn(10),
  ),
  # conv1 stride 2: 28 -> 14; pool1 3x3/1 SAME keeps 14; pool2 -> 7.
  # Conv block: three main convs + projection (no bias); identity blocks:
  # three convs. No bias after any residual sum.
  "mnist_resnet": (dict(num_classes=10, input_shape=(28, 28, 1)), RESNET),
  # The recipe's failed first version: a 256-wide bias after each of 3 sums.
  "mnist_resnet_sum_bias": (dict(num_classes=10, input_shape=(28, 28, 1)), RESNET + 3 * 256),
  # 150 -> pool1 (2x2/2 SAME) 75 -> pool2 38; conv3 SAME keeps 38.
  "catdog_lenet5": (
    dict(num_classes=2, input_shape=(150, 150, 3)),
    conv(5, 3, 6) + conv(5, 6, 16) + conv(5, 16, 120) + dense(38 * 38 * 120, 84) + dense(84, 2),
  ),
  # Conv 3x3 -> 8, global average pool, dense.
  "tiny": (dict(num_classes=10, input_shape=(28, 28, 1)), conv(3, 1, 8) + dense(8, 10)),
}


# Stored image shape for a recipe that takes any (`image_shape` None).
ANY_SHAPE = (32, 32, 3)
# Every registered recipe, read from the registry: a new recipe file is tested too.
RECIPES = sorted(recipes.RECIPES)


def derived_kwargs(name):
  """Build kwargs from the recipe and its data set: the spec's classes, the eval policy's shape."""
  recipe = recipes.get(name)
  spec = datasets.get(recipe.dataset) if recipe.dataset else None
  shape = tuple(recipe.image_shape or ANY_SHAPE)
  policy = recipe.augmentation or (spec.policy() if spec else None)
  if policy and recipe.image_shape:
    shape = tuple(augment.output_shape(policy["eval"], shape))
  return dict(num_classes=len(spec.class_names) if spec else 10, input_shape=shape)


def build_kwargs(name):
  """The table's build kwargs for the recipes it names, else the derived ones."""
  return SPECS[name][0] if name in SPECS else derived_kwargs(name)


@functools.cache
def get(name):
  """Builds each model once per test session (the large ones take ~1 s)."""
  keras.utils.set_random_seed(0)
  return recipes.get(name).build_model(**build_kwargs(name))


def images(name, batch=2):
  shape = tuple(build_kwargs(name)["input_shape"])
  return np.random.default_rng(0).uniform(0, 1, (batch,) + shape).astype(np.float32)


def test_the_count_table_names_registered_recipes_and_every_seed_recipe():
  assert set(SPECS) <= set(recipes.RECIPES)
  seed = {
    "cifar10_tutorial",
    "cifar10_cookbook",
    "mnist_basic",
    "mnist_bn_dropout",
    "mnist_resnet",
    "mnist_resnet_sum_bias",
    "catdog_lenet5",
    "tiny",
  }
  assert seed <= set(SPECS)


@pytest.mark.parametrize("name", sorted(n for n in SPECS if recipes.get(n).image_shape))
def test_derived_inputs_are_the_tables(name):
  """The inputs a recipe outside the table is built with are derived as the table's would be."""
  assert derived_kwargs(name) == SPECS[name][0]


def test_tutorial_has_documented_parameter_count():
  assert get("cifar10_tutorial").count_params() == 1_068_298


def test_resnet_has_the_recipes_parameter_count():
  assert get("mnist_resnet").count_params() == 13_070_794
  assert get("mnist_resnet_sum_bias").count_params() == 13_070_794 + 768


@pytest.mark.parametrize("name", sorted(SPECS))
def test_parameter_count_matches_recipe(name):
  assert get(name).count_params() == SPECS[name][1]


@pytest.mark.parametrize("name", RECIPES)
def test_forward_pass_gives_float_logits(name):
  model = get(name)
  num_classes = build_kwargs(name)["num_classes"]
  logits = np.asarray(model(images(name), training=False))
  assert logits.shape == (2, num_classes)
  assert logits.dtype == np.float32
  assert np.all(np.isfinite(logits))
  # Logits, not probabilities: the loss applies the softmax.
  last = model.layers[-1]
  if isinstance(last, keras.layers.Dense):
    assert last.get_config()["activation"] == "linear"


def test_tiny_accepts_any_shape_and_is_tiny():
  model = recipes.get("tiny").build_model(3, (32, 20, 3))
  assert model.count_params() == conv(3, 3, 8) + dense(8, 3)
  assert model.count_params() < 1000
  assert model(np.zeros((4, 32, 20, 3), np.float32)).shape == (4, 3)
  kinds = {type(layer) for layer in model.layers}
  assert not kinds & {keras.layers.Dropout, keras.layers.BatchNormalization}


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="unknown recipe 'vgg16'") as err:
    recipes.get("vgg16")
  for name in recipes.RECIPES:
    assert name in str(err.value)


def test_build_passes_num_classes_and_shape():
  model = recipes.get("cifar10_cookbook").build_model(100, [32, 32, 3])
  assert model.input_shape == (None, 32, 32, 3)
  assert model.output_shape == (None, 100)


# --- layer configurations stated by the recipes ---


def cfg(model, layer_name):
  return model.get_layer(layer_name).get_config()


def weights(variable):
  return variable.numpy()


def assert_truncated_normal(layer, stddev):
  """Checks the initializer object and the weights it actually drew."""
  init = layer.kernel_initializer
  assert isinstance(init, keras.initializers.TruncatedNormal)
  assert init.get_config()["stddev"] == pytest.approx(stddev)
  kernel = weights(layer.kernel)
  # Truncated at 2 stddev; the truncated std is 0.88 stddev.
  assert np.abs(kernel).max() <= 2 * stddev * (1 + 1e-6)
  assert 0.8 * stddev < kernel.std() < 0.95 * stddev


def assert_bias(layer, value):
  np.testing.assert_array_equal(weights(layer.bias), np.float32(value))


def test_cifar10_tutorial_layers():
  model = get("cifar10_tutorial")
  names = [layer.name for layer in model.layers]
  assert names == [
    "images",
    "conv1",
    "pool1",
    "norm1",
    "conv2",
    "norm2",
    "pool2",
    "flatten",
    "local3",
    "local4",
    "softmax_linear",
  ]
  for name in ("conv1", "conv2"):
    c = cfg(model, name)
    assert (c["kernel_size"], c["strides"], c["padding"], c["activation"]) == (
      (5, 5),
      (1, 1),
      "same",
      "relu",
    )
  for name in ("pool1", "pool2"):
    c = cfg(model, name)
    assert (c["pool_size"], c["strides"], c["padding"]) == ((3, 3), (2, 2), "same")
  for name in ("norm1", "norm2"):
    c = cfg(model, name)
    assert (c["depth_radius"], c["bias"], c["beta"]) == (4, 1.0, 0.75)
    assert c["alpha"] == pytest.approx(0.001 / 9)
  for name, stddev, bias in [
    ("conv1", 5e-2, 0.0),
    ("conv2", 5e-2, 0.1),
    ("local3", 0.04, 0.1),
    ("local4", 0.04, 0.1),
    ("softmax_linear", 1 / 192, 0.0),
  ]:
    assert_truncated_normal(model.get_layer(name), stddev)
    assert_bias(model.get_layer(name), bias)
  assert cfg(model, "local3")["activation"] == "relu"
  assert cfg(model, "local4")["activation"] == "relu"
  assert model.get_layer("softmax_linear").kernel_regularizer is None


def test_cifar10_tutorial_weight_decay_is_half_l2_in_model_losses():
  model = get("cifar10_tutorial")
  model(images("cifar10_tutorial"))
  # The tutorial's term: wd * tf.nn.l2_loss(W) = wd * sum(W**2) / 2.
  expected = sorted(
    0.004 * np.sum(weights(model.get_layer(n).kernel).astype(np.float64) ** 2) / 2
    for n in ("local3", "local4")
  )
  actual = sorted(float(loss) for loss in model.losses)
  np.testing.assert_allclose(actual, expected, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(set(RECIPES) - {"cifar10_tutorial"}))
def test_other_models_have_no_weight_decay(name):
  if recipes.get(name).weight_decay is None:  # all the seed recipes but the tutorial
    assert not get(name).losses
  else:  # a recipe that decays its weights puts the terms in model.losses
    model = get(name)
    model(images(name))
    assert model.losses


def test_cifar10_cookbook_layers():
  model = get("cifar10_cookbook")
  names = [layer.name for layer in model.layers]
  assert names == [
    "images",
    "conv1",
    "pool1",
    "norm1",
    "conv2",
    "pool2",
    "norm2",
    "flatten",
    "full1",
    "full2",
    "final",
  ]
  for stage in ("1", "2"):
    c = cfg(model, "conv" + stage)
    assert (c["filters"], c["kernel_size"], c["padding"], c["activation"]) == (
      64,
      (5, 5),
      "same",
      "relu",
    )
    c = cfg(model, "pool" + stage)
    assert (c["pool_size"], c["strides"], c["padding"]) == ((3, 3), (2, 2), "same")
    c = cfg(model, "norm" + stage)
    assert (c["depth_radius"], c["bias"], c["alpha"], c["beta"]) == (5, 2.0, 1e-3, 0.75)
  for name in ("conv1", "conv2", "full1", "full2", "final"):
    assert_truncated_normal(model.get_layer(name), 0.05)
    assert_bias(model.get_layer(name), 0.0)


def test_lrn_matches_formula():
  # b = a / (bias + alpha * sum of a**2 over channels c-r..c+r) ** beta,
  # alpha not divided by the window size (TensorFlow's convention).
  layer = layers.LocalResponseNormalization(depth_radius=2, bias=2.0, alpha=1e-1, beta=0.75)
  x = np.random.default_rng(1).normal(size=(2, 3, 3, 7)).astype(np.float32)
  sq = x.astype(np.float64) ** 2
  window = np.stack([sq[..., max(0, c - 2) : c + 3].sum(-1) for c in range(7)], -1)
  expected = x / (2.0 + 1e-1 * window) ** 0.75
  np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5)


def test_mnist_basic_layers():
  model = get("mnist_basic")
  c1, c2 = cfg(model, "conv1"), cfg(model, "conv2")
  assert (c1["filters"], c1["kernel_size"], c1["strides"], c1["padding"]) == (
    16,
    (3, 3),
    (1, 1),
    "same",
  )
  assert (c2["filters"], c2["kernel_size"], c2["strides"], c2["padding"]) == (
    32,
    (3, 3),
    (2, 2),
    "same",
  )
  assert c1["activation"] == c2["activation"] == "relu"
  pool = cfg(model, "pool1")
  assert (pool["pool_size"], pool["padding"]) == ((2, 2), "valid")
  assert cfg(model, "fc1")["activation"] == "relu"


def test_mnist_bn_dropout_layers():
  model = get("mnist_bn_dropout")
  kinds = [type(layer).__name__ for layer in model.layers]
  assert kinds == [
    "InputLayer",
    "Conv2D",
    "BatchNormalization",
    "Activation",
    "Conv2D",
    "BatchNormalization",
    "Activation",
    "MaxPooling2D",
    "Dropout",
    "Flatten",
    "Dense",
    "BatchNormalization",
    "Activation",
    "Dropout",
    "Dense",
    "BatchNormalization",
  ]
  bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert [l.momentum for l in bns] == [0.9] * 4
  assert [cfg(model, n)["activation"] for n in ("selu1", "selu2", "selu3")] == (["selu"] * 3)
  assert cfg(model, "conv2")["strides"] == (1, 1)
  assert cfg(model, "pool1")["padding"] == "valid"
  assert [cfg(model, n)["rate"] for n in ("dropout1", "dropout2")] == [0.25, 0.5]
  # Kept biases (the documented reading); the count test checks them too.
  assert all(cfg(model, n)["use_bias"] for n in ("conv1", "conv2", "fc1", "fc2"))


def test_mnist_bn_dropout_is_stochastic_only_in_training():
  model = get("mnist_bn_dropout")
  x = images("mnist_bn_dropout")
  np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
  assert not np.allclose(model(x, training=True), model(x, training=True))


def test_mnist_resnet_layers():
  model = get("mnist_resnet")
  c = cfg(model, "conv1")
  assert (c["filters"], c["kernel_size"], c["strides"], c["padding"]) == (
    64,
    (2, 2),
    (2, 2),
    "same",
  )
  c = cfg(model, "pool1")
  assert (c["pool_size"], c["strides"], c["padding"]) == ((3, 3), (1, 1), "same")
  c = cfg(model, "pool2")
  assert (c["pool_size"], c["strides"]) == ((2, 2), (2, 2))
  c = cfg(model, "conv_block_shortcut")
  assert (c["filters"], c["kernel_size"], c["strides"], c["use_bias"]) == (
    256,
    (1, 1),
    (1, 1),
    False,
  )
  for block in ("conv_block", "identity_block1", "identity_block2"):
    shapes = [
      (
        cfg(model, f"{block}_conv{i}")["filters"],
        cfg(model, f"{block}_conv{i}")["kernel_size"],
        cfg(model, f"{block}_conv{i}")["activation"],
      )
      for i in (1, 2, 3)
    ]
    # The recipe's code keeps a ReLU after the third convolution.
    assert shapes == [(64, (1, 1), "relu"), (64, (3, 3), "relu"), (256, (1, 1), "relu")]
  assert cfg(model, "dropout")["rate"] == 0.5


@pytest.mark.parametrize("name", ["mnist_resnet", "mnist_resnet_sum_bias"])
def test_mnist_resnet_initializers_are_the_recipes(name):
  model = get(name)
  with_weights = [l for l in model.layers if l.weights]
  assert len(with_weights) == 1 + 4 + 3 + 3 + 2 + (3 if name.endswith("sum_bias") else 0)
  for layer in with_weights:
    if isinstance(layer, layers.BiasAdd):
      np.testing.assert_array_equal(layer.bias.numpy(), np.float32(0.1))
      continue
    # Every weight truncated normal stddev 0.1, every bias 0.1.
    assert_truncated_normal(layer, 0.1)
    if layer.name.endswith("_shortcut"):
      assert layer.bias is None
    else:
      assert_bias(layer, 0.1)


def test_mnist_resnet_sum_bias_adds_a_bias_after_each_sum():
  model = get("mnist_resnet_sum_bias")
  for block in ("conv_block", "identity_block1", "identity_block2"):
    add = model.get_layer(f"{block}_add")
    bias = model.get_layer(f"{block}_sum_bias")
    assert bias.input is add.output
    assert model.get_layer(f"{block}_relu").input is bias.output


def test_mnist_resnet_has_no_bias_after_residual_sum():
  model = get("mnist_resnet")
  adds = [l for l in model.layers if isinstance(l, keras.layers.Add)]
  assert [a.name for a in adds] == ["conv_block_add", "identity_block1_add", "identity_block2_add"]
  for add in adds:
    consumers = [l for l in model.layers if l.input is add.output]
    assert len(consumers) == 1
    relu = consumers[0]
    # The sum feeds a weightless ReLU directly: nothing can add a bias.
    assert isinstance(relu, keras.layers.Activation)
    assert relu.get_config()["activation"] == "relu"
    assert not relu.weights
  # Identity blocks add their input (the previous block's ReLU) unchanged.
  inputs = [t.name for t in model.get_layer("identity_block1_add").input]
  assert model.get_layer("conv_block_relu").output.name in inputs


def test_catdog_lenet5_layers():
  model = get("catdog_lenet5")
  for name, filters in [("conv1", 6), ("conv2", 16), ("conv3", 120)]:
    c = cfg(model, name)
    assert (c["filters"], c["kernel_size"], c["padding"], c["activation"]) == (
      filters,
      (5, 5),
      "same",
      "relu",
    )
  for name in ("pool1", "pool2"):
    assert isinstance(model.get_layer(name), keras.layers.AveragePooling2D)
    c = cfg(model, name)
    assert (c["pool_size"], c["strides"], c["padding"]) == ((2, 2), (2, 2), "same")
  assert cfg(model, "fc1")["activation"] == "relu"
  # The recipe states an initializer only for the output layer.
  assert_truncated_normal(model.get_layer("fc2"), 0.005)
  assert_bias(model.get_layer("fc2"), 0.1)


# Keras 3.15's own saving code calls np.array on TF variables, which NumPy 2
# flags; nothing in the models to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize(
  "name", ["cifar10_tutorial", "cifar10_cookbook", "mnist_resnet_sum_bias", "tiny"]
)
def test_save_and_reload_in_safe_mode(name, tmp_path):
  model = get(name)
  path = str(tmp_path / f"{name}.keras")
  model.save(path)
  restored = keras.models.load_model(path)  # safe_mode=True by default.
  assert [l.name for l in restored.layers] == [l.name for l in model.layers]
  x = images(name)
  np.testing.assert_array_equal(restored(x, training=False), model(x, training=False))
  if "cifar10" in name:
    norm = restored.get_layer("norm1")
    assert isinstance(norm, layers.LocalResponseNormalization)
    assert norm.get_config() == model.get_layer("norm1").get_config()
