"""Typed run configuration of the trainers: a recipe plus command-line overrides.

The generic entry (`python -m trainers --dataset NAME`) or an entry script
(trainers/cifar10.py, mnist.py, catdog.py) names the data set;
`parse(dataset, argv)` starts from the recipe chosen with `--recipe`
(trainers/recipes/<name>.py), replaces the recipe fields the flags override,
and rejects unknown or inconsistent flags. The result keeps each value once:
recipe values live in `Config.recipe`, the rest of the run (directories, mode,
checkpoint and summary cadence, seed) beside it. It is printed and saved as
`config.json` in the model dir at the start of a run.
"""

import dataclasses
import math

from preprocess import cli
from preprocess import datasets
from trainers import recipes

# The generic entry (trainers/__main__.py), for any data set.
GENERIC = "python -m trainers"

MODES = ("train", "eval", "train_and_eval")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

LR_SCALINGS = ("sqrt", "linear")

# Learning-rate warmup when the rate is scaled by the number of workers (see
# --warmup-epochs): Goyal et al.'s 5 epochs; on a short run at most a quarter
# of it, and on small data sets (few steps per epoch) at least enough steps
# for the weights to leave their random start at the one-worker rate.
DEFAULT_WARMUP_EPOCHS = 5.0
MIN_WARMUP_STEPS = 100

# --seed: the run seeds NumPy with seed + rank (keras.utils.set_random_seed),
# which takes [0, 2**32); this bound leaves room for 2**31 ranks.
MAX_SEED = 2**31 - 1

# Flags that override a recipe field of the same name.
RECIPE_FLAGS = (
  "batch_size",
  "max_steps",
  "learning_rate",
  "lr_decay_rate",
  "lr_decay_steps",
  "eval_every",
  "early_stopping_patience",
  "log_every",
)


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one run depends on. See `_parser` for the meaning of each flag.

  Attributes:
    dataset: The data set (--dataset, or the entry script's).
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
  summary_every: int
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

  def to_json(self):
    """JSON values of the config, the recipe as a nested dict."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["recipe"] = self.recipe.to_json()
    return d


def _parser(dataset, generic=False):
  # No abbreviations: the retired `--model NAME` would otherwise be taken as
  # `--model-dir NAME` and train into a directory named after the recipe.
  command = f"{GENERIC} --dataset {dataset or 'NAME'}" if generic else f"trainers/{dataset}.py"
  p = cli.ArgumentParser(
    prog=GENERIC if generic else command,
    allow_abbrev=False,
    description=(
      f"Train or evaluate a {dataset or 'DATASET'} model on the TFRecords of `make preprocess`. "
      f"One process per GPU: `horovodrun -np 4 {command}`; "
      f"`{command}` alone runs one process. Flags marked (recipe) "
      f"override the recipe's value (trainers/recipes/<name>.py)."
    ),
  )
  if generic:
    _dataset_flag(p).required = True
  default = recipes.default_for(dataset)
  p.add_argument(
    "--recipe",
    choices=recipes.for_dataset(dataset) if dataset else list(recipes.RECIPES),
    default=default,
    required=default is None,
    help="Recipe to train, a file of trainers/recipes/ ('tiny' is a few-hundred-"
    "parameter model for tests). Default: the data set's recipe marked default.",
  )
  p.add_argument(
    "--data-dir",
    default=f"data/tfrecords/{dataset}",
    help="Output of the Beam job for this data set (holds metadata.json).",
  )
  p.add_argument(
    "--model-dir",
    default=None,
    help="Checkpoints, summaries, config.json, metrics.json, export (default: runs/<recipe>).",
  )
  p.add_argument(
    "--mode",
    choices=MODES,
    default="train_and_eval",
    help="train; eval (latest checkpoint, or the best one if early stopping kept one); "
    "or train then evaluate on --eval-split.",
  )
  p.add_argument(
    "--batch-size",
    type=int,
    default=None,
    help="(recipe) Examples PER WORKER per step; the global batch is this times the "
    "number of workers.",
  )
  steps = p.add_mutually_exclusive_group()
  steps.add_argument(
    "--max-steps",
    type=int,
    default=None,
    help="(recipe) Global steps to train for, counted from step 0 (a resumed run stops there too).",
  )
  steps.add_argument(
    "--epochs",
    type=float,
    default=None,
    help="Train for this many passes over the training split instead of --max-steps.",
  )
  p.add_argument(
    "--learning-rate", type=float, default=None, help="(recipe) Base learning rate for one worker."
  )
  p.add_argument(
    "--lr-decay-rate",
    type=float,
    default=None,
    help="(recipe) Staircase decay factor of the learning rate (1: constant).",
  )
  p.add_argument(
    "--lr-decay-steps",
    type=int,
    default=None,
    help="(recipe) Decay the learning rate every N steps (replaces a decay period in epochs).",
  )
  p.add_argument(
    "--no-scale-lr",
    dest="scale_lr",
    action="store_false",
    help="Do not scale the learning rate with the number of workers.",
  )
  p.add_argument(
    "--lr-scaling",
    choices=LR_SCALINGS,
    default="sqrt",
    help="How the learning rate grows with N workers (N times the global batch): "
    "'sqrt' multiplies it by sqrt(N) (default: on the CIFAR-10 sample data the "
    "tutorial diverges at N x 0.1 for N = 2 even with warmup, and trains at "
    "sqrt(N) x 0.1); 'linear' by N (Horovod's and Goyal et al.'s rule).",
  )
  warmup = p.add_mutually_exclusive_group()
  warmup.add_argument(
    "--warmup-epochs",
    type=float,
    default=None,
    help=f"Ramp the learning rate up linearly over this many epochs (0: no "
    f"warmup). Default: when the rate is scaled for N > 1 workers, "
    f"{DEFAULT_WARMUP_EPOCHS:g} epochs (Goyal et al.; Horovod's examples), "
    f"at most a quarter of the run's steps and at least "
    f"{MIN_WARMUP_STEPS} steps, from the one-worker rate up to the scaled one; "
    f"one worker or --no-scale-lr: none.",
  )
  warmup.add_argument(
    "--warmup-steps",
    type=int,
    default=None,
    help="Ramp the learning rate up linearly over this many steps instead.",
  )
  p.add_argument(
    "--fp16-allreduce",
    action="store_true",
    help="Send gradients as float16 in the allreduce (halves the traffic).",
  )
  p.add_argument(
    "--eval-every",
    type=int,
    default=None,
    help="(recipe) Evaluate on the recipe's split (recipe.eval_on) every N steps "
    "during training (0: never).",
  )
  p.add_argument(
    "--early-stopping-patience",
    type=int,
    default=None,
    help="(recipe) Stop after this many steps without a better validation precision, "
    "then restore the best checkpoint (0 disables).",
  )
  p.add_argument("--log-every", type=int, default=None, help="(recipe) Log progress every N steps.")
  p.add_argument(
    "--checkpoint-every", type=int, default=1000, help="Save a checkpoint every N steps."
  )
  p.add_argument("--keep-checkpoints", type=int, default=5, help="Checkpoints to keep.")
  p.add_argument(
    "--summary-every",
    type=int,
    default=100,
    help="Write scalar summaries every N steps (0: never).",
  )
  p.add_argument(
    "--histogram-every",
    type=int,
    default=None,
    help="Write histograms of weights, gradients and activations, and input images, "
    "every N steps (0: never; default: 1000, or a fifth of a shorter run, so a short run "
    "shows them more than once).",
  )
  p.add_argument(
    "--seed",
    type=int,
    default=0,
    help=f"Seed of initialization, shuffling and augmentation, in [0, {MAX_SEED}].",
  )
  p.add_argument(
    "--eval-split", default="test", help="Split that --mode eval and the final evaluation use."
  )
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="Start from scratch, deleting checkpoints in --model-dir, instead of resuming.",
  )
  p.add_argument(
    "--no-export",
    dest="export",
    action="store_false",
    help="Do not export the serving model at the end of training.",
  )
  # --- speed: steps per call, precision, XLA (issue 11) ---
  p.add_argument(
    "--steps-per-call",
    type=int,
    default=None,
    help="Training steps per tf.function call, without a return to Python in between "
    "(as Keras's steps_per_execution); the non-finite check and the metric "
    "allreduce run once per call. Default: the greatest common divisor of the "
    "non-zero cadences (--log-every, --summary-every, --histogram-every, "
    "--checkpoint-every, --eval-every), at most 100, so no cadence moves. With "
    "an explicit value, each cadence is rounded UP to a multiple of it (the "
    "first step of a run and the last step stay exact).",
  )
  p.add_argument(
    "--precision",
    choices=PRECISIONS,
    default="float32",
    help="Keras mixed-precision policy. mixed_float16 adds dynamic loss scaling; "
    "variables and the gradient allreduce stay float32 (see --fp16-allreduce).",
  )
  p.add_argument(
    "--xla",
    action="store_true",
    help="Compile the forward and backward pass with XLA (jit_compile).",
  )
  p.add_argument(
    "--deterministic",
    action="store_true",
    help="TensorFlow op determinism: the same seed gives the same weights bitwise, and a run "
    "stopped and resumed at any step ends with the weights of an uninterrupted one "
    "(docs/preemption.md). Slower on GPUs.",
  )
  return p


def _flag(name):
  return "--" + name.replace("_", "-")


def _check_flags(parser, a):
  """Every numeric flag in its range, at parse time (a usage error, one line)."""
  for name in (
    "batch_size",
    "max_steps",
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
    "lr_decay_steps",
  ):
    value = getattr(a, name)
    if value is not None and value < 1:
      parser.error(f"{_flag(name)} must be at least 1")
  for name in (
    "eval_every",
    "warmup_steps",
    "early_stopping_patience",
    "summary_every",
    "histogram_every",
  ):
    if getattr(a, name) is not None and getattr(a, name) < 0:
      parser.error(f"{_flag(name)} must not be negative")
  # float flags: nan compares false to everything, so test finiteness first.
  for name in ("epochs", "learning_rate", "lr_decay_rate"):
    value = getattr(a, name)
    if value is not None and not (math.isfinite(value) and value > 0):
      parser.error(f"{_flag(name)} must be a positive finite number, got {value}")
  if a.warmup_epochs is not None and not (math.isfinite(a.warmup_epochs) and a.warmup_epochs >= 0):
    parser.error(f"--warmup-epochs must be a non-negative finite number, got {a.warmup_epochs}")
  if a.lr_decay_rate is not None and a.lr_decay_rate > 1:
    parser.error(f"--lr-decay-rate must be at most 1 (a decay), got {a.lr_decay_rate}")
  if not 0 <= a.seed <= MAX_SEED:
    parser.error(f"--seed must be between 0 and {MAX_SEED} (2**31 - 1), got {a.seed}")
  for name in ("data_dir", "model_dir", "eval_split"):
    value = getattr(a, name)
    if value is not None and not value.strip():
      parser.error(f"{_flag(name)} must not be empty")


def parse(dataset, argv):
  """Builds the Config of one run from `argv`.

  `dataset` is the entry script's data set, or None for the generic entry
  (`python -m trainers`), which takes it from --dataset. Unknown flags and
  inconsistent values exit with a usage error (argparse).
  """
  generic = dataset is None
  if generic:
    dataset = _dataset_of(argv)
  parser = _parser(dataset, generic)
  a = parser.parse_args(argv)
  _check_flags(parser, a)
  overrides = {name: getattr(a, name) for name in RECIPE_FLAGS if getattr(a, name) is not None}
  if "lr_decay_steps" in overrides:
    overrides["lr_decay_epochs"] = None  # one decay period, in steps
  if overrides.get("early_stopping_patience") == 0:
    overrides["early_stopping_patience"] = None
  recipe = dataclasses.replace(recipes.get(a.recipe), **overrides)
  if recipe.early_stopping_patience and recipe.eval_every == 0:
    parser.error(
      "early stopping needs evaluation: --eval-every 0 would disable it "
      "(add --early-stopping-patience 0 to train without it)"
    )
  return Config(
    dataset=dataset,
    recipe=recipe,
    data_dir=a.data_dir,
    model_dir=a.model_dir or f"runs/{recipe.name}",
    mode=a.mode,
    epochs=a.epochs,
    scale_lr=a.scale_lr,
    lr_scaling=a.lr_scaling,
    warmup_steps=a.warmup_steps,
    warmup_epochs=a.warmup_epochs,
    fp16_allreduce=a.fp16_allreduce,
    eval_split=a.eval_split,
    checkpoint_every=a.checkpoint_every,
    keep_checkpoints=a.keep_checkpoints,
    summary_every=a.summary_every,
    histogram_every=a.histogram_every,
    seed=a.seed,
    overwrite=a.overwrite,
    export=a.export,
    deterministic=a.deterministic,
    **_speed(parser, a),
  )


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


def _speed(parser, a):
  """The speed flags' Config fields (issue 11)."""
  if a.steps_per_call is not None and a.steps_per_call < 1:
    parser.error("--steps-per-call must be at least 1")
  return dict(steps_per_call=a.steps_per_call, precision=a.precision, xla=a.xla)
