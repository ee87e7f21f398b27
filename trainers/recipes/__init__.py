"""The documented recipes, one file each, and their one registry.

A recipe (trainers/recipes/<name>.py) fixes everything a documented training
run depends on besides the data: the model builder, optimizer, learning-rate
schedule, batch size, steps, EMA, weight decay, what is evaluated during
training and how often, early stopping, the augmentation (None: the data set's
default from metadata.json) and the validation size it expects. Each file's
header says where each number comes from and where the recipe's text and code
disagree. trainers/config.py applies command-line overrides to a recipe; the
result is the run config, in which each value exists once.

Adding a recipe is one file: write trainers/recipes/<name>.py with a `build`
function and a `RECIPE = Recipe(name="<name>", dataset=..., ...)`; mark it
`default=True` to make it what its data set trains without --recipe.
`RECIPES` lists the package's files and imports them on first use, the one
registry mechanism (preprocess/registry.py) the data-set specs share.
"""

from collections.abc import Callable
import dataclasses
import json
import types
import typing

from preprocess import registry


class ConfigError(ValueError):
  """A config.json that cannot be read back; the message is one line naming the file."""


def _type_ok(value, tp):
  """Whether a JSON value has a dataclass field's declared type (int, float, str, bool, X | None)."""
  if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
    return any(_type_ok(value, t) for t in typing.get_args(tp))
  if tp is type(None):
    return value is None
  if tp is bool:
    return isinstance(value, bool)
  if tp is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if tp is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if tp is str:
    return isinstance(value, str)
  return True


def typed(path, key, value, tp):
  """`value` of config.json key `key` if it has type `tp` (ints read as floats where floats go).

  Raises:
    ConfigError: It has another type; one line naming `path` and `key`.
  """
  if not _type_ok(value, tp):
    raise ConfigError(f"{path}: {key} is {json.dumps(value)}, not of type {tp}")
  takes_int = tp is int or int in typing.get_args(tp)
  if isinstance(value, int) and not isinstance(value, bool) and not takes_int:
    return float(value)
  return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
  """What a documented recipe fixes. Keyword fields only, so a recipe reads as a table.

  Attributes:
    name: The file name under trainers/recipes/ and the value of --recipe.
    dataset: The data set it trains on (the entry script that offers it), or
      None for any (the test model).
    default: Whether the data set trains this recipe when --recipe is not
      given (one recipe per data set at most).
    build: fn(num_classes, input_shape, weight_decay) -> keras.Model mapping
      images to logits.
    optimizer: "sgd" or "adam".
    learning_rate: Base learning rate for one worker.
    lr_decay_rate: Staircase exponential decay factor (1.0: constant rate).
    lr_decay_epochs: Decay period in epochs, or None.
    lr_decay_steps: Decay period in steps, or None.
    batch_size: Examples per worker per step.
    max_steps: Training length in steps.
    ema_decay: Moving-average decay of the weights that evaluation and export
      use, or None (the raw weights).
    weight_decay: L2 factor of `wd * tf.nn.l2_loss(W)` on the layers the
      recipe decays, or None.
    eval_on: Split evaluated during training ("validation" or "test").
    eval_every: Steps between evaluations during training (0: never).
    eval_batches: Batches of `batch_size` evaluated each time, or None for
      the whole split.
    eval_output: Name of the layer whose output precision@1 is computed on,
      or None for the model's output (the logits the loss uses).
    early_stopping_patience: Steps without a better `eval_on` precision
      before stopping (then the best checkpoint is restored), or None.
    log_every: Steps between progress lines on the console.
    augmentation: {"train": [...], "eval": [...]} policy (preprocess/augment.py
      ops) the recipe trains and evaluates with, or None for the data set's
      default recorded in metadata.json.
    serving_augmentation: The deterministic policy of the exported model, or
      None for the eval policy (which must then be deterministic).
    validation_size: Training examples the recipe holds out for validation
      (the Beam job's --validation-size), 0 if it holds out none.
    image_shape: (height, width, channels) of the stored images (metadata.json
      `image_shape`) the recipe is written for, or None for any; data of
      another shape is refused at start-up.
  """

  name: str
  dataset: str | None
  build: Callable
  optimizer: str
  learning_rate: float
  batch_size: int
  max_steps: int
  lr_decay_rate: float = 1.0
  lr_decay_epochs: float | None = None
  lr_decay_steps: int | None = None
  ema_decay: float | None = None
  weight_decay: float | None = None
  eval_on: str = "validation"
  eval_every: int = 1000
  eval_batches: int | None = None
  eval_output: str | None = None
  early_stopping_patience: int | None = None
  log_every: int = 100
  augmentation: dict | None = None
  serving_augmentation: list | None = None
  validation_size: int = 0
  default: bool = False
  image_shape: tuple | None = None

  def build_model(self, num_classes, input_shape):
    """The recipe's model for `num_classes` logits and (h, w, c) inputs."""
    return self.build(
      num_classes=num_classes, input_shape=tuple(input_shape), weight_decay=self.weight_decay
    )

  def to_json(self):
    """The recipe as JSON values (the builder by its import path)."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["build"] = f"{self.build.__module__}.{self.build.__name__}"
    return d

  @classmethod
  def from_json(cls, data, path, changeable):
    """The recipe of a saved run: the recipe file's, with the `changeable` fields as saved.

    The other keys (the builder, the applied augmentation, ...) are the recipe
    file's to decide; they are checked to be known, not read back.

    Raises:
      ConfigError: Not an object, an unknown recipe or key, or a value of the wrong type.
    """
    if not isinstance(data, dict):
      raise ConfigError(f"{path}: recipe is not a JSON object")
    name = data.get("name")
    if not isinstance(name, str) or name not in RECIPES:
      raise ConfigError(f"{path}: recipe.name is {name!r}, not one of {', '.join(RECIPES)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
      raise ConfigError(f"{path}: unknown recipe key {unknown[0]!r}")
    values = {
      k: typed(path, f"recipe.{k}", data[k], fields[k].type) for k in changeable if k in data
    }
    return dataclasses.replace(RECIPES[data["name"]], **values)


# Modules the recipe files import that bring in TensorFlow, stood in for until a
# recipe first uses one (when it builds its model), so reading the registry --
# what `--help` and flag checking need -- costs no TensorFlow import.
RECIPES = registry.Registry(__name__, "RECIPE", "recipe", defer=("keras", "trainers.layers"))


def for_dataset(dataset):
  """Names of the recipes trainers/<dataset>.py accepts: its own, plus `tiny`."""
  return sorted(n for n, r in RECIPES.items() if r.dataset in (dataset, None))


def default_for(dataset):
  """The recipe a data set trains without --recipe (the one marked `default`), or None.

  Raises:
    ValueError: If more than one recipe of the data set is marked `default`.
  """
  marked = sorted(n for n, r in RECIPES.items() if r.default and r.dataset == dataset)
  if len(marked) > 1:
    raise ValueError(f"recipes {', '.join(marked)} are all marked default for {dataset}")
  return marked[0] if marked else None


def get(name):
  """The recipe called `name`.

  Raises:
    ValueError: If no recipe has that name (the message lists the valid ones).
  """
  return RECIPES.entry(name)
