"""The learning rate and the optimizer of a run: the recipe's schedule, scaled and warmed up.

Part of the training loop's setup (trainers/train.py builds its optimizer here,
once per run): the recipe's base rate and staircase decay
(trainers/recipes/<name>.py), scaled with the number of Horovod workers (the
global batch grows with them) unless --no-scale-lr, and ramped up from the
one-worker rate over the warmup steps that the flags or the default rule of
trainers/config.py give.
"""

import math

import keras
import tensorflow as tf

from trainers import config as config_lib


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Scales a schedule linearly from `start` (about 0 by default) up to 1 over the first steps.

  With many workers the scaled learning rate is large; ramping up avoids the
  early divergence that a large rate on random weights can cause. Goyal et
  al. start the ramp at the one-worker rate: `start` = 1 / workers.
  """

  def __init__(self, schedule, warmup_steps, start=0.0):
    super().__init__()
    self.schedule = schedule
    self.warmup_steps = warmup_steps
    self.start = start

  def __call__(self, step):
    ramp = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / float(self.warmup_steps))
    return self.schedule(step) * (self.start + (1.0 - self.start) * ramp)

  def get_config(self):
    return {
      "schedule": keras.optimizers.schedules.serialize(self.schedule),
      "warmup_steps": self.warmup_steps,
      "start": self.start,
    }


def warmup_steps(config, num_workers, steps_per_epoch, max_steps):
  """Steps of learning-rate warmup: the flags', else the default rule of --warmup-epochs' help.

  Default: none unless the rate is scaled by N > 1 workers; then 5 epochs,
  at least MIN_WARMUP_STEPS, and at most a quarter of the run.
  """
  if config.warmup_steps is not None:
    return config.warmup_steps
  if config.warmup_epochs is not None:
    return math.ceil(config.warmup_epochs * steps_per_epoch)
  # Horovod: a scaled learning rate is warmed up from the one-worker rate.
  if not (config.scale_lr and num_workers > 1):
    return 0
  steps = max(
    math.ceil(config_lib.DEFAULT_WARMUP_EPOCHS * steps_per_epoch), config_lib.MIN_WARMUP_STEPS
  )
  return max(1, min(steps, max_steps // 4))


def lr_scale(config, num_workers):
  """Factor of the recipe's learning rate with `num_workers` (N times the global batch).

  --lr-scaling linear is Horovod's rule (N); the default sqrt(N), because the
  linear rule diverges on small data (the CIFAR-10 tutorial on the sample data
  at 2 x 0.1, with or without warmup; see --lr-scaling's help).
  """
  if not config.scale_lr or num_workers == 1:
    return 1
  # Horovod: scale the learning rate by the number of workers.
  return num_workers if config.lr_scaling == "linear" else math.sqrt(num_workers)


def create_learning_rate_fn(config, num_workers, steps_per_epoch, max_steps=None):
  """The recipe's schedule, scaled with the number of workers unless --no-scale-lr, with warmup.

  With N workers the global batch is N times larger, so the learning rate
  grows (`lr_scale`); it is warmed up to that rate from the one-worker rate
  (see `warmup_steps`).
  """
  recipe = config.recipe
  scale = lr_scale(config, num_workers)
  base = recipe.learning_rate * scale
  decay_steps = recipe.lr_decay_steps
  if recipe.lr_decay_epochs:
    decay_steps = max(1, int(recipe.lr_decay_epochs * steps_per_epoch))
  if decay_steps and recipe.lr_decay_rate != 1.0:
    schedule = keras.optimizers.schedules.ExponentialDecay(
      base, decay_steps, recipe.lr_decay_rate, staircase=True
    )
  else:
    schedule = keras.optimizers.schedules.ExponentialDecay(base, 1, 1.0)  # constant
  warmup = warmup_steps(
    config, num_workers, steps_per_epoch, recipe.max_steps if max_steps is None else max_steps
  )
  if warmup:
    schedule = WarmupSchedule(schedule, warmup, start=1.0 / scale if scale > 1 else 0.0)
  return schedule


def create_optimizer(recipe, schedule):
  if recipe.optimizer == "sgd":
    return keras.optimizers.SGD(schedule)
  if recipe.optimizer == "adam":
    return keras.optimizers.Adam(schedule)
  raise ValueError(f"unknown optimizer {recipe.optimizer!r}")
