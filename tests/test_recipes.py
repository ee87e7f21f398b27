"""The recipes as data: one file each, every field used, the documented numbers, overrides.

Numbers are written out here from the recipes' sources (each recipe file's
header), never read back from the code under test.
"""

import dataclasses
import importlib
import inspect
import pathlib
import re

import keras
import numpy as np
import pytest

from preprocess import datasets
from trainers import config as config_lib
from trainers import recipes
from trainers import schedule
from trainers import steps
from trainers import train

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECIPE_DIR = ROOT / "trainers" / "recipes"
FIELDS = [f.name for f in dataclasses.fields(recipes.Recipe)]


def test_the_registry_is_the_files_of_trainers_recipes():
  files = {p.stem for p in RECIPE_DIR.glob("*.py")} - {"__init__"}
  assert set(recipes.RECIPES) == files
  for name, recipe in recipes.RECIPES.items():
    assert recipe.name == name
    module = importlib.import_module(f"trainers.recipes.{name}")
    assert module.RECIPE is recipe
    # The builder lives in the recipe's own file (the sum-bias variant reuses
    # the ResNet's through a partial named after its file).
    assert recipe.to_json()["build"] == f"trainers.recipes.{name}.build"
    # A header saying where the numbers come from.
    assert len(module.__doc__.splitlines()) >= 5


def test_every_recipe_field_is_read_by_the_trainer():
  # Each field must be read as `recipe.<field>` (or `self.<field>` inside the
  # Recipe's own methods) somewhere in the trainer: no unused fields.
  sources = "".join(
    (ROOT / "trainers" / f).read_text()
    for f in (
      "train.py",
      "runner.py",
      "steps.py",
      "schedule.py",
      "config.py",
      "export.py",
      "state.py",
      "run_dir.py",
    )
  )
  own = inspect.getsource(recipes.Recipe.build_model)
  for field in FIELDS:
    if field in ("name", "dataset", "default"):
      continue  # read by the registry (recipes.for_dataset, default_for) and config.json
    used = re.search(rf"recipe\.{field}\b", sources) or re.search(rf"self\.{field}\b", own)
    assert used, f"Recipe.{field} is not read by the trainer"
  assert "r.dataset" in inspect.getsource(recipes.for_dataset)
  assert "r.default" in inspect.getsource(recipes.default_for)
  assert "recipe.name" in sources


def test_recipes_are_keyword_only_and_reject_unknown_fields():
  with pytest.raises(TypeError):
    recipes.Recipe("x", None, None, "sgd", 0.1, 1, 1)
  with pytest.raises(TypeError, match="bogus"):
    dataclasses.replace(recipes.get("tiny"), bogus=1)


def test_recipe_files_set_only_known_fields():
  # A recipe file is `Recipe(...)` with keyword fields; any other name would
  # fail at import, so the registry importing is the check. Here: the values.
  for recipe in recipes.RECIPES.values():
    assert recipe.optimizer in ("sgd", "adam")
    assert recipe.eval_on in ("validation", "test")
    if recipe.early_stopping_patience:
      assert recipe.eval_every > 0
    for policy in [recipe.serving_augmentation] if recipe.serving_augmentation else []:
      assert all(not s["op"].startswith("random") for s in policy)


@pytest.mark.parametrize(
  "name, expected",
  [
    (
      "cifar10_tutorial",
      dict(
        optimizer="sgd",
        learning_rate=0.1,
        lr_decay_rate=0.1,
        lr_decay_epochs=350,
        batch_size=128,
        max_steps=1_000_000,
        ema_decay=0.9999,
        weight_decay=0.004,
        eval_on="test",
      ),
    ),
    (
      "cifar10_cookbook",
      dict(
        optimizer="sgd",
        learning_rate=0.1,
        lr_decay_rate=1.0,
        lr_decay_steps=None,
        batch_size=128,
        max_steps=20_000,
        eval_on="test",
        eval_every=500,
        eval_batches=1,
        log_every=50,
      ),
    ),
    (
      "mnist_basic",
      dict(
        optimizer="adam",
        learning_rate=0.001,
        batch_size=100,
        max_steps=5_500,
        eval_on="validation",
        validation_size=5_000,
      ),
    ),
    (
      "mnist_bn_dropout",
      dict(
        optimizer="adam",
        learning_rate=0.01,
        batch_size=100,
        max_steps=11_000,
        eval_every=10,
        early_stopping_patience=2_000,
        eval_output="fc2",
        eval_on="validation",
      ),
    ),
    ("mnist_resnet", dict(optimizer="adam", learning_rate=0.001, batch_size=10, max_steps=3_001)),
    ("mnist_resnet_sum_bias", dict(batch_size=10, max_steps=3_001)),
    ("catdog_lenet5", dict(optimizer="adam", batch_size=32, eval_on="test")),
  ],
)
def test_recipe_numbers(name, expected):
  recipe = recipes.get(name)
  assert {k: getattr(recipe, k) for k in expected} == expected


def test_cookbook_crops_the_centre_and_distorts_test_images_too():
  recipe = recipes.get("cifar10_cookbook")
  train_ops = [s["op"] for s in recipe.augmentation["train"]]
  assert train_ops == [
    "central_crop",
    "random_flip_left_right",
    "random_brightness",
    "random_contrast",
    "per_image_standardization",
  ]
  assert recipe.augmentation["eval"] == recipe.augmentation["train"]
  # The export serves only the deterministic ops.
  assert [s["op"] for s in recipe.serving_augmentation] == [
    "central_crop",
    "per_image_standardization",
  ]


def test_cookbook_learning_rate_is_constant_and_the_texts_decay_is_a_flag():
  constant = config_lib.parse("cifar10", ["--recipe", "cifar10_cookbook", "--no-scale-lr"])
  rate = schedule.create_learning_rate_fn(constant, num_workers=1, steps_per_epoch=390)
  assert [float(rate(s)) for s in (0, 249, 250, 10_000, 19_999)] == pytest.approx([0.1] * 5)
  text = config_lib.parse(
    "cifar10",
    [
      "--recipe",
      "cifar10_cookbook",
      "--no-scale-lr",
      "--lr-decay-rate",
      "0.9",
      "--lr-decay-steps",
      "250",
    ],
  )
  rate = schedule.create_learning_rate_fn(text, num_workers=1, steps_per_epoch=390)
  # 0.1 * 0.9^(step // 250), staircase.
  for step in (0, 249, 250, 499, 500, 2_600):
    assert float(rate(step)) == pytest.approx(0.1 * 0.9 ** (step // 250), rel=1e-6)


def test_tutorial_decays_every_350_epochs():
  config = config_lib.parse("cifar10", ["--no-scale-lr"])
  assert config.recipe.name == "cifar10_tutorial"
  rate = schedule.create_learning_rate_fn(config, num_workers=1, steps_per_epoch=10)
  assert float(rate(3_499)) == pytest.approx(0.1)
  assert float(rate(3_500)) == pytest.approx(0.01)


# The seed data sets' recipes and defaults, checked for the data sets they name;
# a data set or recipe added as one file is checked by the registry-wide rules.
OFFERED = {
  "cifar10": ["cifar10_cookbook", "cifar10_tutorial", "tiny"],
  "mnist": ["mnist_basic", "mnist_bn_dropout", "mnist_resnet", "mnist_resnet_sum_bias", "tiny"],
  "catdog": ["catdog_lenet5", "tiny"],
}
DEFAULTS = {"cifar10": "cifar10_tutorial", "mnist": "mnist_basic", "catdog": "catdog_lenet5"}


def test_each_entry_script_offers_its_recipes_and_tiny():
  assert set(OFFERED) <= set(datasets.names())
  for name in datasets.names():
    own = [n for n, r in recipes.RECIPES.items() if r.dataset == name]
    assert recipes.for_dataset(name) == sorted(own + ["tiny"])
  for name, offered in OFFERED.items():
    assert recipes.for_dataset(name) == offered


def test_each_data_set_defaults_to_the_recipe_marked_default_in_its_file():
  # The documented defaults, now a field of the recipe files, not a table.
  defaults = {name: recipes.default_for(name) for name in datasets.names()}
  assert {name: defaults[name] for name in DEFAULTS} == DEFAULTS
  for name in datasets.names():
    if defaults[name] is None:  # a data set without a default needs --recipe
      with pytest.raises(SystemExit):
        config_lib.parse(name, [])
      continue
    assert config_lib.parse(name, []).recipe.name == defaults[name]
    assert config_lib.parse(None, ["--dataset", name]).recipe.name == defaults[name]
    assert defaults[name] in recipes.for_dataset(name) and "tiny" in recipes.for_dataset(name)
  # Every recipe trains a registered data set (or any, as tiny does).
  assert {r.dataset for r in recipes.RECIPES.values()} - {None} <= set(datasets.names())
  assert [n for n, r in recipes.RECIPES.items() if r.default and r.dataset is None] == []


def test_the_generic_entry_takes_the_data_set_as_a_flag():
  config = config_lib.parse(None, ["--dataset", "mnist", "--recipe", "mnist_resnet"])
  assert (config.dataset, config.recipe.name) == ("mnist", "mnist_resnet")
  assert config.data_dir == "data/tfrecords/mnist"
  assert config == config_lib.parse("mnist", ["--recipe", "mnist_resnet"])


def test_overrides_replace_recipe_fields_and_each_value_exists_once():
  config = config_lib.parse(
    "mnist",
    [
      "--recipe",
      "mnist_bn_dropout",
      "--batch-size",
      "16",
      "--max-steps",
      "7",
      "--early-stopping-patience",
      "0",
      "--log-every",
      "3",
    ],
  )
  assert config.recipe.batch_size == 16 and config.recipe.max_steps == 7
  assert config.recipe.early_stopping_patience is None and config.recipe.log_every == 3
  assert recipes.get("mnist_bn_dropout").batch_size == 100  # the registry is untouched
  saved = config.to_json()
  # No value is stored twice: run-level keys and recipe keys are disjoint
  # (`dataset` is the entry script's, and equals the recipe's or None for tiny).
  assert set(saved) & set(saved["recipe"]) == {"dataset"}
  assert saved["recipe"]["batch_size"] == 16 and "batch_size" not in saved
  assert config.model_dir == "runs/mnist_bn_dropout"


@pytest.mark.parametrize(
  "step, every, first, last, expected",
  [
    (10, 10, None, None, True),
    (11, 10, None, None, False),
    (0, 10, None, None, True),
    (5, 0, None, None, False),  # 0: never
    (5, None, None, None, False),  # None: never
    (1, 100, 1, None, True),  # first step of a run
    (37, 100, None, 37, True),  # last step
    (37, 0, None, 37, False),  # never stays never, even on the last step
  ],
)
def test_due(step, every, first, last, expected):
  assert train.due(step, every, first=first, last=last) is expected


def test_bn_dropout_precision_is_taken_before_the_final_batch_norm():
  keras.utils.set_random_seed(0)
  recipe = recipes.get("mnist_bn_dropout")
  model = recipe.build_model(10, (28, 28, 1))
  # A negative scale in the final BN reverses the order of the logits, so the
  # pre-BN and post-BN argmax disagree on every example.
  bn = model.get_layer("logits_bn")
  bn.gamma.assign(-np.ones(10, np.float32))
  images = np.random.default_rng(0).uniform(0, 1, (64, 28, 28, 1)).astype(np.float32)
  pre = keras.Model(model.inputs[0], model.get_layer("fc2").output)(images).numpy()
  post = model(images, training=False).numpy()
  labels = np.argmax(pre, axis=-1).astype(np.int32)
  assert not np.any(np.argmax(post, axis=-1) == labels)
  step = steps.make_eval_step(train.make_eval_model(model, recipe.eval_output))
  correct, loss, count = step(images, labels).numpy()
  assert (correct, count) == (64, 64)  # precision on the pre-BN logits
  # The loss stays on the post-BN logits (the model's output), as in training.
  expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")(
    labels, post
  )
  assert loss == pytest.approx(float(expected), rel=1e-5)
  # Without eval_output the same step would score the post-BN logits: 0 correct.
  plain = steps.make_eval_step(train.make_eval_model(model))
  assert plain(images, labels).numpy()[0] == 0
