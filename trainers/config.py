"""Typed run configuration of the trainers: a recipe plus command-line overrides.

The generic entry (`python -m trainers --dataset NAME`) or an entry script
(trainers/cifar10.py, mnist.py, catdog.py) names the data set;
`parse(dataset, argv)` starts from the run the model dir already holds (its
`config.json`, read back by `Config.from_json`) or, for a new run, from the
recipe chosen with `--recipe` (trainers/recipes/<name>.py); then it applies the
flags the user actually gave (argparse records no defaults here, so a flag
given is told apart from one left out), and rejects unknown or inconsistent
flags. The result keeps each value once: recipe values live in
`Config.recipe`, the rest of the run (directories, mode, checkpoint and summary
cadence, seed) beside it. It is saved as `config.json` in the model dir at the
start of a training run; `--print-config` prints it and exits.
"""

import argparse
import collections
import dataclasses
import json
import sys
import textwrap

from preprocess import cli
from preprocess import datasets
from trainers import config_values
from trainers import help_text
from trainers import recipes
from trainers import run_dir

# The generic entry (trainers/__main__.py), for any data set.
GENERIC = help_text.GENERIC

MODES = ("train", "eval", "train_and_eval", "export")
# Modes that train: the only ones in which --overwrite (delete the run, train anew) makes sense.
TRAIN_MODES = ("train", "train_and_eval")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

LR_SCALINGS = ("sqrt", "linear")

# Learning-rate warmup when the rate is scaled by the number of workers (see
# --warmup-epochs): Goyal et al.'s 5 epochs; on a short run at most a quarter
# of it, and on small data sets (few steps per epoch) at least enough steps
# for the weights to leave their random start at the one-worker rate.
DEFAULT_WARMUP_EPOCHS = 5.0
MIN_WARMUP_STEPS = 100

MAX_SEED = config_values.MAX_SEED


# The flags after --recipe and --data-dir (whose values depend on the data set), in --help order.
# Fields left None are argparse's defaults; `recipe`: overrides the recipe field `name` ("(recipe)"
# in --help); flags of one `group` exclude each other.
Flag = collections.namedtuple(
  "Flag", "name help type default choices action recipe group", defaults=(None,) * 4 + (False, None)
)
_ON_OFF = argparse.BooleanOptionalAction
FLAGS = (
  Flag(
    "model_dir",
    "The run directory: checkpoints, summaries, config.json, metrics.json, export "
    "(default: runs/<recipe>).",
  ),
  Flag(
    "mode",
    "train (resuming from the latest checkpoint); eval (latest checkpoint, or the best one if "
    "early stopping kept one) on --eval-split; train_and_eval: train, then eval; export: write "
    "the serving model of that checkpoint to <model-dir>/export.",
    choices=MODES,
    default="train_and_eval",
  ),
  Flag(
    "batch_size",
    "Examples PER WORKER per step; the global batch is this times the number of workers.",
    int,
    recipe=True,
  ),
  Flag(
    "max_steps",
    "Global steps to train for, counted from step 0 (a resumed run stops there too).",
    int,
    recipe=True,
    group="steps",
  ),
  Flag(
    "epochs",
    "Train for this many passes over the training split instead of --max-steps (default: "
    "none, --max-steps decides).",
    float,
    group="steps",
  ),
  Flag("learning_rate", "Base learning rate for one worker.", float, recipe=True),
  Flag(
    "lr_decay_rate",
    "Staircase decay factor of the learning rate (1: constant).",
    float,
    recipe=True,
  ),
  Flag(
    "lr_decay_steps",
    "Decay the learning rate every N steps (replaces a decay period in epochs).",
    int,
    recipe=True,
  ),
  Flag(
    "scale_lr",
    "Scale the learning rate with the number of workers (see --lr-scaling).",
    action=_ON_OFF,
    default=True,
  ),
  Flag(
    "lr_scaling",
    "How the learning rate grows with N workers (N times the global batch): 'sqrt' "
    "multiplies it by sqrt(N) (on the CIFAR-10 sample data the tutorial diverges at N x 0.1 for N "
    "= 2 even with warmup, and trains at sqrt(N) x 0.1); 'linear' by N (Horovod's and Goyal et "
    "al.'s rule).",
    choices=LR_SCALINGS,
    default="sqrt",
  ),
  Flag(
    "warmup_epochs",
    "Ramp the learning rate up linearly over this many epochs (0: no warmup). "
    f"Default: when the rate is scaled for N > 1 workers, {DEFAULT_WARMUP_EPOCHS:g} epochs (Goyal "
    "et al.; Horovod's examples), at most a quarter of the run's steps and at least "
    f"{MIN_WARMUP_STEPS} steps, from the one-worker rate up to the scaled one; one worker or "
    "--no-scale-lr: none.",
    float,
    group="warmup",
  ),
  Flag(
    "warmup_steps",
    "Ramp the learning rate up linearly over this many steps instead (default: the "
    "rule of --warmup-epochs).",
    int,
    group="warmup",
  ),
  Flag(
    "fp16_allreduce",
    "Send gradients as float16 in the allreduce (halves the traffic).",
    action=_ON_OFF,
    default=False,
  ),
  Flag(
    "eval_every",
    "Evaluate on the recipe's split (recipe.eval_on) every N steps during training (0: never).",
    int,
    recipe=True,
  ),
  Flag(
    "early_stopping_patience",
    "Stop after this many steps without a better validation precision, "
    "then restore the best checkpoint (0 disables).",
    int,
    recipe=True,
  ),
  Flag("log_every", "Log progress every N steps.", int, recipe=True),
  Flag("checkpoint_every", "Save a checkpoint every N steps.", int, 1000),
  Flag("keep_checkpoints", "Checkpoints to keep.", int, 5),
  Flag(
    "summary_every",
    "Write scalar summaries every N steps, and at the first and last step (0: never; default: "
    "the round cadence, of 1, 2, 5, 10, 20, 50 or 100 steps, that gives a run about 50 points, "
    "so a short run draws a curve).",
    int,
  ),
  Flag(
    "histogram_every",
    "Write histograms of weights, gradients and activations, and input images, "
    "every N steps, and at the first and last step (0: never; default: 1000, or a fifth of a shorter run, so a short run shows "
    "them more than once).",
    int,
  ),
  Flag("seed", f"Seed of initialization, shuffling and augmentation, in [0, {MAX_SEED}].", int, 0),
  Flag("eval_split", "Split that --mode eval and the final evaluation use.", default="test"),
  Flag(
    "overwrite",
    "Delete the run in --model-dir (checkpoints, summaries, export) and train anew "
    "instead of resuming. Training modes only.",
    action="store_true",
  ),
  Flag("export", "Export the serving model at the end of training.", action=_ON_OFF, default=True),
  Flag(
    "accept_new_data",
    "Resume a run on data other than it was trained on (config.json's \"data\": another "
    "metadata.json, e.g. re-converted with other split sizes); without it such a resume is "
    "refused.",
    action="store_true",
  ),
  Flag(
    "print_config",
    "Print the resolved config (the run's config.json with the flags applied) as JSON and exit.",
    action="store_true",
  ),
  # --- speed: steps per call, precision, XLA (issue 11) ---
  Flag(
    "steps_per_call",
    "Training steps per tf.function call, without a return to Python in between (as "
    "Keras's steps_per_execution); the non-finite check and the metric allreduce run once per "
    "call. Default: the greatest common divisor of the non-zero cadences (--log-every, "
    "--summary-every, --histogram-every, --checkpoint-every, --eval-every), at most 100, so no "
    "cadence moves. With an explicit value, each cadence is rounded UP to a multiple of it (the "
    "first step of a run and the last step stay exact).",
    int,
  ),
  Flag(
    "precision",
    "Keras mixed-precision policy. mixed_float16 adds dynamic loss scaling; variables "
    "and the gradient allreduce stay float32 (see --fp16-allreduce).",
    choices=PRECISIONS,
    default="float32",
  ),
  Flag(
    "xla",
    "Compile the forward and backward pass with XLA (jit_compile).",
    action=_ON_OFF,
    default=False,
  ),
  Flag(
    "deterministic",
    "TensorFlow op determinism: the same seed gives the same weights bitwise, and a "
    "run stopped and resumed at any step ends with the weights of an uninterrupted one "
    "(docs/preemption.md). Slower on GPUs.",
    action=_ON_OFF,
    default=False,
  ),
)

# Flags that override a recipe field of the same name.
RECIPE_FLAGS = tuple(f.name for f in FLAGS if f.recipe)
# Recipe fields a run may hold changed (the flags above, and the decay period
# --lr-decay-steps replaces); config.json's other recipe keys are the recipe
# file's, or what the run applied (the augmentation), and are not read back.
RECIPE_OVERRIDES = RECIPE_FLAGS + ("lr_decay_epochs",)

# Config fields that say what to do now, not what the run is: taken from the
# command line (or its defaults), never from the run's config.json.
INVOCATION = ("mode", "overwrite", "model_dir", "accept_new_data")
# Keys config.json holds besides Config's fields: what the run found and
# applied (trainers/train.py `Run.config_json`); read back as records only.
RECORDS = ("augmentation_source", "workers", "data")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one run depends on. See `_parser` for the meaning of each flag.

  Attributes:
    dataset: The entry script's data set.
    recipe: The recipe with the command-line overrides applied.
    epochs: If set, train for this many epochs instead of recipe.max_steps.
    warmup_steps, warmup_epochs: The warmup asked for, or both None for the
      default (train.warmup_steps applies the rule).
    eval_split: The split of the final evaluation and of --mode eval.
    (the others are the flags of the same name)
  """

  dataset: str
  recipe: recipes.Recipe
  data_dir: str
  model_dir: str
  mode: str
  epochs: float | None
  scale_lr: bool
  lr_scaling: str
  warmup_steps: int | None
  warmup_epochs: float | None
  fp16_allreduce: bool
  eval_split: str
  checkpoint_every: int
  keep_checkpoints: int
  summary_every: int | None
  histogram_every: int | None
  seed: int
  overwrite: bool
  export: bool
  # Speed (issue 11): how the step runs; none of these changes what is learned
  # beyond float rounding.
  steps_per_call: int | None = None
  precision: str = "float32"
  xla: bool = False
  # Issue 17: op determinism, so a resumed run equals an uninterrupted one bitwise.
  deterministic: bool = False
  accept_new_data: bool = False

  def to_json(self):
    """JSON values of the config, the recipe as a nested dict."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["recipe"] = self.recipe.to_json()
    return d

  @classmethod
  def from_json(cls, data, path="config.json"):
    """The Config a run's config.json holds (its records, `RECORDS`, are skipped).

    Keys missing from an older config.json take the field's default.

    Raises:
      recipes.ConfigError: Not an object, an unknown key, a missing one without a
        default, or a value of the wrong type; one line naming `path`.
    """
    if not isinstance(data, dict):
      raise recipes.ConfigError(f"{path}: not a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields) - set(RECORDS))
    if unknown:
      raise recipes.ConfigError(f"{path}: unknown key {unknown[0]!r}")
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in data]
    if missing:
      raise recipes.ConfigError(f"{path}: no {missing[0]!r}")
    check_json_choices(data, path)
    values = {}
    for key, f in fields.items():
      if key == "recipe":
        values[key] = recipes.Recipe.from_json(data[key], path, RECIPE_OVERRIDES)
      elif key in data:
        values[key] = recipes.typed(path, key, data[key], f.type)
    return cls(**values)


def check_json_choices(data, path):
  """config.json's values that have choices hold one: those of the flags, data set and recipe.

  Raises:
    recipes.ConfigError: One line naming `path`, the key and the allowed values.
  """

  def error(message):
    raise recipes.ConfigError(f"{path}: {message}")

  flags = {f.name: f.choices for f in FLAGS if f.choices and f.name not in INVOCATION}
  config_values.check_choices(error, data, {"dataset": datasets.names(), **flags})
  if isinstance(data.get("recipe"), dict):
    names = recipes.for_dataset(data["dataset"])
    config_values.check_choices(lambda m: error("recipe." + m), data["recipe"], {"name": names})
  if data.get("warmup_steps") is not None and data.get("warmup_epochs") is not None:
    error("warmup_steps and warmup_epochs are both set (as the flags, one at most)")
  if data.get("data") is not None and not isinstance(data["data"], dict):
    error(f"data is {json.dumps(data['data'])[:40]}, not an object (what the run was trained on)")


def _parser(dataset, generic=False):
  # No abbreviations: the retired `--model NAME` would otherwise be taken as
  # `--model-dir NAME` and train into a directory named after the recipe.
  command = f"{GENERIC} --dataset {dataset or 'NAME'}" if generic else f"trainers/{dataset}.py"
  p = cli.ArgumentParser(
    prog=GENERIC if generic else command,
    allow_abbrev=False,
    formatter_class=help_text.HelpFormatter,
    description=textwrap.fill(
      f"Train, evaluate or export a {dataset or 'DATASET'} model on the TFRecords of "
      f"`make preprocess`. One process per GPU: `horovodrun -np 4 {command}`; "
      f"`{command}` alone runs one process. Flags marked (recipe) "
      f"override the recipe's value (trainers/recipes/<name>.py). A --model-dir "
      f"that holds a run is self-describing: every flag not given is taken from its "
      f"config.json (the defaults below are a new run's), a flag given overrides it "
      f"and the run says so; --mode and --overwrite are never taken from it. "
      f"See docs/run-lifecycle.md.",
      width=100,
    ),
    epilog=help_text.recipe_table(dataset),
  )
  if generic:
    _dataset_flag(p).required = True
  default = recipes.default_for(dataset) if dataset else None
  p.add_argument(
    "--recipe",
    choices=recipes.for_dataset(dataset) if dataset else list(recipes.RECIPES),
    # Without --dataset (which the parser then asks for) the list is every data set's.
    metavar=None if dataset else "RECIPE",
    default=default,
    required=bool(dataset) and default is None,
    help="Recipe to train, a file of trainers/recipes/ ('tiny' is a few-hundred-"
    "parameter model for tests). Default: the data set's recipe marked default"
    + ("" if dataset else " (listed below)")
    + ".",
  )
  p.add_argument(
    "--data-dir",
    default=f"data/tfrecords/{dataset}" if dataset else None,
    help="Output of the Beam job for this data set (holds metadata.json)"
    + ("." if dataset else "; default: data/tfrecords/<the --dataset>."),
  )
  names = dict.fromkeys(f.group for f in FLAGS if f.group)
  groups = {name: p.add_mutually_exclusive_group() for name in names}
  for f in FLAGS:
    group = groups[f.group] if f.group else p
    options = {"type": f.type, "choices": f.choices, "action": f.action, "default": f.default}
    group.add_argument(
      "--" + f.name.replace("_", "-"),
      help=("(recipe) " if f.recipe else "") + f.help,
      **{key: value for key, value in options.items() if value is not None},
    )
  return p


def _dataset_flag(parser):
  return parser.add_argument(
    "--dataset",
    choices=datasets.names(),
    help="Data set to train on, a file of preprocess/datasets/.",
  )


def _dataset_of(argv):
  """The generic entry's --dataset, or None when absent (the full parser then says so)."""
  p = cli.ArgumentParser(prog=GENERIC, add_help=False, allow_abbrev=False)
  _dataset_flag(p)
  return p.parse_known_args(argv)[0].dataset


_flag = config_values.flag


# A value no flag parses to: the namespace starts with it, so what is still
# UNSET after parsing was not given (argparse only fills in a default for a
# missing attribute, and --help still shows the real defaults).
UNSET = object()


def _given(parser, argv):
  """{dest: value} of the flags on the command line, and only those."""
  dests = _defaults(parser)
  namespace = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(dests, UNSET)))
  return {k: v for k, v in vars(namespace).items() if v is not UNSET}


def _defaults(parser):
  return {a.dest: a.default for a in parser._actions if a.dest != "help"}


check_values = config_values.check_values


def _apply_recipe_flags(recipe, given):
  overrides = {name: given[name] for name in RECIPE_FLAGS if name in given}
  if "lr_decay_steps" in overrides:
    overrides["lr_decay_epochs"] = None  # one decay period, in steps
  if overrides.get("early_stopping_patience") == 0:
    overrides["early_stopping_patience"] = None
  return dataclasses.replace(recipe, **overrides)


def _shown(name, value):
  """A flag as typed: `--data-dir X`, `--export` / `--no-export`."""
  if isinstance(value, bool):
    return _flag(name) if value else "--no-" + name.replace("_", "-")
  return f"{_flag(name)} {value}"


def _override_line(before, after, given):
  """'overriding config.json: --x NEW (was OLD), ...' for the given flags that change the run."""
  changes = []
  old, new = before.to_json(), after.to_json()
  for name in given:
    if name in INVOCATION + ("recipe", "print_config"):
      continue
    was, now = (old["recipe"], new["recipe"]) if name in RECIPE_FLAGS else (old, new)
    if name == "max_steps" and old["epochs"] is not None:
      changes.append(f"{_shown(name, now[name])} (was {_shown('epochs', old['epochs'])})")
    elif name == "warmup_steps" and old["warmup_epochs"] is not None:
      changes.append(
        f"{_shown(name, now[name])} (was {_shown('warmup_epochs', old['warmup_epochs'])})"
      )
    elif name == "warmup_epochs" and old["warmup_steps"] is not None:
      changes.append(
        f"{_shown(name, now[name])} (was {_shown('warmup_steps', old['warmup_steps'])})"
      )
    elif was.get(name) != now.get(name):
      old_value = was.get(name)
      changes.append(
        f"{_shown(name, given[name])} (was "
        f"{_shown(name, old_value) if isinstance(old_value, bool) else old_value})"
      )
  return "overriding config.json: " + ", ".join(changes) if changes else None


def _fail(message):
  """A run that cannot start, as the trainers report one: one line, exit 2."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def resolve(dataset, argv):
  """Builds the Config of one run from `argv` and the run its model dir holds.

  Unknown flags and inconsistent values exit with a usage error (argparse); a
  model dir whose config.json cannot be read back, or that holds a run of
  another data set or recipe, exits with one line.

  `dataset` is the entry script's data set, or None for the generic entry
  (`python -m trainers`), which takes it from --dataset.

  Returns:
    (the Config, the one line naming the flags that override the run's
    config.json, or None).
  """
  generic = dataset is None
  if generic:
    dataset = _dataset_of(argv)
  parser = _parser(dataset, generic)
  given = _given(parser, argv)
  check_values(parser.error, given)
  defaults = _defaults(parser)
  mode = given.get("mode", defaults["mode"])
  overwrite = given.get("overwrite", False)
  if overwrite and mode not in TRAIN_MODES:
    parser.error(f"--overwrite deletes the run in --model-dir; --mode {mode} never needs it")
  model_dir = given.get("model_dir") or f"runs/{given.get('recipe', defaults['recipe'])}"
  saved = None
  if not overwrite:
    try:
      saved = run_dir.read_config(model_dir, mode in TRAIN_MODES)
    except run_dir.RunError as e:
      _fail(str(e))
  if saved is None:
    values = {
      k: v for k, v in defaults.items() if k in {f.name for f in dataclasses.fields(Config)}
    }
    before = None
    recipe = recipes.get(given.get("recipe", defaults["recipe"]))
  else:
    try:
      before = Config.from_json(saved, run_dir.config_path(model_dir))
    except recipes.ConfigError as e:
      _fail(f"{e}: correct the file, or {run_dir.advice(mode)}")
    try:
      run_dir.check_holds(
        model_dir, before.dataset, before.recipe.name, dataset, given.get("recipe"), mode
      )
    except run_dir.RunError as e:
      _fail(str(e))
    bad = lambda m: _fail(f"{run_dir.config_path(model_dir)}: {m}")  # noqa: E731
    check_values(bad, before.to_json(), label=str)
    check_values(bad, before.recipe.to_json(), label=lambda name: "recipe." + name)
    values = before.to_json()
    recipe = before.recipe
  fields = {f.name for f in dataclasses.fields(Config)} - {"recipe"}
  values.update({k: v for k, v in given.items() if k in fields and k not in RECIPE_FLAGS})
  if "max_steps" in given:
    values["epochs"] = None
  if "warmup_steps" in given:
    values["warmup_epochs"] = None
  if "warmup_epochs" in given:
    values["warmup_steps"] = None
  recipe = _apply_recipe_flags(recipe, given)
  if recipe.early_stopping_patience and recipe.eval_every == 0:
    parser.error(
      "early stopping needs evaluation: --eval-every 0 would disable it "
      "(add --early-stopping-patience 0 to train without it)"
    )
  values.update(dataset=dataset, recipe=recipe, model_dir=model_dir, mode=mode, overwrite=overwrite)
  values["accept_new_data"] = given.get("accept_new_data", False)
  config = Config(**values)
  overrides = _override_line(before, config, given) if saved is not None else None
  if given.get("print_config"):
    print(json.dumps(config.to_json(), indent=2, sort_keys=True))
    sys.exit(0)
  return config, overrides


def parse(dataset, argv):
  """The Config of `resolve` (without its override line)."""
  return resolve(dataset, argv)[0]
