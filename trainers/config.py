"""Typed run configuration of the trainers: recipes, flags, validation, JSON.

Each entry script (trainers/cifar10.py, mnist.py, catdog.py) names its data set;
`parse(dataset, argv)` starts from that data set's recipe for the chosen
`--model` (optimizer, learning-rate schedule, batch size, EMA, early stopping,
as the documented recipes have them), applies the flags, and rejects unknown or
inconsistent ones. The result is printed and saved as `config.json` in the
model dir at the start of a run.
"""

import dataclasses
from typing import Optional

from preprocess import cli

MODES = ("train", "eval", "train_and_eval")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What a documented recipe fixes besides the architecture.

  Attributes:
    model: Key in trainers.models.MODELS.
    optimizer: "sgd" or "adam".
    learning_rate: Base learning rate for one worker.
    batch_size: Examples per worker per step.
    lr_decay_rate: Exponential decay factor (1.0: constant).
    lr_decay_epochs: Decay period in epochs (staircase), or None.
    lr_decay_steps: Decay period in steps (staircase), or None.
    max_steps: Default training length.
    ema_decay: Moving-average decay of the weights used for evaluation, or None.
    early_stopping_patience: Steps without validation improvement before
      stopping (evaluating every `eval_every` steps), or None.
    eval_every: Default evaluation period in steps.
  """
  model: str
  optimizer: str
  learning_rate: float
  batch_size: int
  max_steps: int
  lr_decay_rate: float = 1.0
  lr_decay_epochs: Optional[float] = None
  lr_decay_steps: Optional[int] = None
  ema_decay: Optional[float] = None
  early_stopping_patience: Optional[int] = None
  eval_every: int = 1000


RECIPES = {
    "cifar10": {
        # TensorFlow CIFAR-10 tutorial: lr 0.1 decayed x0.1 every 350 epochs,
        # batch 128, EMA 0.9999 of the weights for evaluation, 1M steps.
        "tutorial": Recipe("cifar10_tutorial", "sgd", 0.1, 128, 1_000_000, lr_decay_rate=0.1,
                           lr_decay_epochs=350, ema_decay=0.9999),
        # The cookbook variant: lr 0.1 * 0.9^(step/250), staircase.
        "cookbook": Recipe("cifar10_cookbook", "sgd", 0.1, 128, 20_000, lr_decay_rate=0.9,
                           lr_decay_steps=250),
        "tiny": Recipe("tiny", "sgd", 0.05, 32, 100, eval_every=50),
    },
    "mnist": {
        "basic": Recipe("mnist_basic", "adam", 0.001, 100, 2_000),
        # Early stopping: validate every 10 steps, stop after 2,000 steps
        # without improvement, restore the best checkpoint, report test accuracy.
        "bn_dropout": Recipe("mnist_bn_dropout", "adam", 0.01, 100, 20_000,
                             early_stopping_patience=2_000, eval_every=10),
        "resnet": Recipe("mnist_resnet", "adam", 0.001, 100, 2_000),
        "tiny": Recipe("tiny", "sgd", 0.05, 32, 100, eval_every=50),
    },
    "catdog": {
        "lenet5": Recipe("catdog_lenet5", "adam", 0.001, 32, 2_000, eval_every=200),
        "tiny": Recipe("tiny", "sgd", 0.05, 16, 100, eval_every=50),
    },
}
DEFAULT_MODEL = {"cifar10": "tutorial", "mnist": "basic", "catdog": "lenet5"}


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one run depends on. See `parse` for the meaning of each flag."""
  dataset: str
  model: str
  recipe: Recipe
  data_dir: str
  model_dir: str
  mode: str
  batch_size: int
  max_steps: int
  epochs: Optional[float]
  learning_rate: float
  scale_lr: bool
  warmup_steps: int
  fp16_allreduce: bool
  eval_every: int
  early_stopping_patience: Optional[int]
  eval_split: str
  checkpoint_every: int
  keep_checkpoints: int
  log_every: int
  summary_every: int
  histogram_every: int
  seed: int
  overwrite: bool
  export: bool


def _parser(dataset):
  models = sorted(RECIPES[dataset])
  p = cli.ArgumentParser(
      prog=f"trainers/{dataset}.py",
      description=(f"Train or evaluate a {dataset} model on the TFRecords of `make preprocess`. "
                   f"One process per GPU: `horovodrun -np 4 trainers/{dataset}.py`; "
                   f"`python trainers/{dataset}.py` runs one process."))
  p.add_argument("--model", choices=models, default=DEFAULT_MODEL[dataset],
                 help="Recipe to train ('tiny' is a few-hundred-parameter model for tests).")
  p.add_argument("--data-dir", default=f"data/tfrecords/{dataset}",
                 help="Output of the Beam job for this data set (holds metadata.json).")
  p.add_argument("--model-dir", default=None,
                 help=f"Checkpoints, summaries, config.json, metrics.json, export "
                      f"(default: runs/{dataset}-<model>).")
  p.add_argument("--mode", choices=MODES, default="train_and_eval",
                 help="train; eval (latest checkpoint, or the best one if early stopping kept one); "
                      "or train then evaluate on the test split.")
  p.add_argument("--batch-size", type=int, default=None,
                 help="Examples PER WORKER per step (default: the recipe's); the global batch is "
                      "this times the number of workers.")
  steps = p.add_mutually_exclusive_group()
  steps.add_argument("--max-steps", type=int, default=None,
                     help="Global steps to train for, counted from step 0 (a resumed run stops there too).")
  steps.add_argument("--epochs", type=float, default=None,
                     help="Train for this many passes over the training split instead of --max-steps.")
  p.add_argument("--learning-rate", type=float, default=None,
                 help="Base learning rate for one worker (default: the recipe's).")
  p.add_argument("--no-scale-lr", dest="scale_lr", action="store_false",
                 help="Do not multiply the learning rate by the number of workers.")
  p.add_argument("--warmup-steps", type=int, default=0,
                 help="Ramp the learning rate up linearly over this many steps.")
  p.add_argument("--fp16-allreduce", action="store_true",
                 help="Send gradients as float16 in the allreduce (halves the traffic).")
  p.add_argument("--eval-every", type=int, default=None,
                 help="Evaluate on the validation split every N steps (0: never during training; "
                      "default: the recipe's when there is a validation split).")
  p.add_argument("--early-stopping-patience", type=int, default=None,
                 help="Stop after this many steps without a better validation precision, then "
                      "restore the best checkpoint (default: the recipe's; 0 disables).")
  p.add_argument("--checkpoint-every", type=int, default=1000, help="Save a checkpoint every N steps.")
  p.add_argument("--keep-checkpoints", type=int, default=5, help="Checkpoints to keep.")
  p.add_argument("--log-every", type=int, default=100, help="Log progress every N steps (rank 0).")
  p.add_argument("--summary-every", type=int, default=100,
                 help="Write scalar summaries every N steps (0: never).")
  p.add_argument("--histogram-every", type=int, default=1000,
                 help="Write histograms of weights, gradients and activations, and input images, "
                      "every N steps (0: never).")
  p.add_argument("--seed", type=int, default=0, help="Seed of initialization, shuffling and augmentation.")
  p.add_argument("--eval-split", default="test", help="Split that --mode eval and the final evaluation use.")
  p.add_argument("--overwrite", action="store_true",
                 help="Start from scratch, deleting checkpoints in --model-dir, instead of resuming.")
  p.add_argument("--no-export", dest="export", action="store_false",
                 help="Do not export the serving model at the end of training.")
  return p


def parse(dataset, argv):
  """Builds the Config of one run from `argv`.

  Unknown flags and inconsistent values exit with a usage error (argparse).
  """
  parser = _parser(dataset)
  a = parser.parse_args(argv)
  recipe = RECIPES[dataset][a.model]
  for name in ("batch_size", "max_steps", "checkpoint_every", "log_every", "keep_checkpoints"):
    value = getattr(a, name)
    if value is not None and value < 1:
      parser.error(f"--{name.replace('_', '-')} must be at least 1")
  for name in ("eval_every", "warmup_steps", "early_stopping_patience", "summary_every",
               "histogram_every"):
    if getattr(a, name) is not None and getattr(a, name) < 0:
      parser.error(f"--{name.replace('_', '-')} must not be negative")
  if a.epochs is not None and a.epochs <= 0:
    parser.error("--epochs must be positive")
  if a.learning_rate is not None and not a.learning_rate > 0:
    parser.error("--learning-rate must be positive")
  patience = recipe.early_stopping_patience if a.early_stopping_patience is None else a.early_stopping_patience
  if patience and a.eval_every == 0:
    parser.error("early stopping needs validation: --eval-every 0 would disable it "
                 "(add --early-stopping-patience 0 to train without it)")
  return Config(
      dataset=dataset, model=a.model, recipe=recipe, data_dir=a.data_dir,
      model_dir=a.model_dir or f"runs/{dataset}-{a.model}", mode=a.mode,
      batch_size=a.batch_size or recipe.batch_size,
      max_steps=a.max_steps or recipe.max_steps, epochs=a.epochs,
      learning_rate=a.learning_rate or recipe.learning_rate, scale_lr=a.scale_lr,
      warmup_steps=a.warmup_steps, fp16_allreduce=a.fp16_allreduce,
      eval_every=recipe.eval_every if a.eval_every is None else a.eval_every,
      early_stopping_patience=patience or None,
      eval_split=a.eval_split, checkpoint_every=a.checkpoint_every,
      keep_checkpoints=a.keep_checkpoints, log_every=a.log_every, summary_every=a.summary_every,
      histogram_every=a.histogram_every, seed=a.seed,
      overwrite=a.overwrite, export=a.export)
