"""What the training loop shows: its start-up line of cadences, progress lines, summaries.

Sits beside the loop of trainers/train.py, which calls `cadences` once per
session, then `Progress.maybe_log` and `Summaries.write` after each call of
the compiled steps (trainers/steps.py). Progress lines go to the console
(rank 0); summaries go through trainers/summaries.py's `Writer` (rank 0),
under the tags of trainers/tags.py. The first and the last step of a session
always get a progress line and summaries, so every run draws its whole curve,
and the start-up line promises no cadence the run never reaches.
"""

import time

import tensorflow as tf

from trainers import summaries
from trainers import tags
from trainers.steps import due
from trainers.steps import make_activation_probe
from trainers.steps import round_cadence


def _log(ctx, message):
  ctx.log(message)


def format_seconds(seconds):
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _train_summaries(run, step, metrics, averages, steps_per_second):
  recipe = run.config.recipe
  run.writer.scalars(
    tags.TRAIN,
    step,
    {
      tags.CROSS_ENTROPY: metrics["cross_entropy"],
      tags.TOTAL_LOSS: metrics["total_loss"],
      tags.PRECISION_AT_1: metrics["accuracy"],
      tags.CROSS_ENTROPY_AVG: averages["cross_entropy"],
      tags.TOTAL_LOSS_AVG: averages["total_loss"],
      tags.LEARNING_RATE: float(run.schedule(step - 1)),
      tags.STEP_TIME: 1.0 / steps_per_second,
      tags.IMAGES_PER_SEC: steps_per_second * run.global_batch,
      tags.IMAGES_PER_SEC_PER_WORKER: steps_per_second * recipe.batch_size,
      tags.WORKERS: run.ctx.size,
    },
  )


def _histograms(run, step, images, grads, probe):
  activations, relu_layers = probe
  outputs = activations(images)
  variables = run.model.trainable_variables
  run.writer.histograms(
    tags.TRAIN,
    step,
    {
      **{tags.WEIGHTS + v.path: v.value for v in variables},
      **{tags.GRADIENTS + v.path: g for v, g in zip(variables, grads) if g is not None},
      **{tags.ACTIVATIONS + name: out for name, out in outputs.items()},
    },
  )
  run.writer.scalars(
    tags.TRAIN,
    step,
    {tags.SPARSITY + name: tf.math.zero_fraction(outputs[name]) for name in sorted(relu_layers)},
  )
  run.writer.images(tags.TRAIN, step, tags.INPUT_IMAGES, images)


# Periodic work whose period is longer than the run still happens where the
# loop forces it (`due`'s first and last steps); the start-up line says so
# rather than promise a cadence the run never reaches.
_UNREACHED = {
  "log": "at the first and last step only",
  "summary": "at the first and last step only",
  "histogram": "at the first and last step only",
  "checkpoint": "at the last step only",
  "eval": "never during training",
}
_NAMES = {"summary": "scalars", "histogram": "histograms"}


def _cadence_phrase(name, asked, every, start, end):
  """How periodic work `name` falls in steps start+1..end, e.g. 'scalars every 5'."""
  shown = _NAMES.get(name, name)
  if not every:
    return f"{shown} never"
  if end // every == start // every:  # no multiple of `every` in (start, end]
    return f"{shown} {_UNREACHED[name]}"
  return f"{shown} every {every}" + (f" (asked {asked})" if every != asked else "")


def cadences(run, k):
  """{periodic work: its period in steps}, on the grid of calls of k steps; logs the run's line.

  The default k (the gcd of the cadences) moves none; an explicit --steps-per-call
  rounds them up, and the line says which moved. The line names the summary
  cadences, and any other the run moves or never reaches.
  """
  config, recipe = run.config, run.config.recipe
  asked = {
    "log": recipe.log_every,
    "summary": summaries.summary_cadence(config.summary_every, run.max_steps),
    "histogram": summaries.histogram_cadence(config.histogram_every, run.max_steps),
    "checkpoint": config.checkpoint_every,
    "eval": recipe.eval_every,
  }
  every = {name: round_cadence(value, k) for name, value in asked.items()}
  moved = [f"{name} every {every[name]}" for name, value in asked.items() if every[name] != value]
  phrases = {
    name: _cadence_phrase(name, asked[name], every[name], run.step, run.max_steps) for name in asked
  }
  shown = [
    phrase
    for name, phrase in phrases.items()
    if name in _NAMES or (every[name] and "every" not in phrase)
  ]
  _log(
    run.ctx,
    f"training steps {run.step}->{run.max_steps}, augmentation from {run.augmentation_source}; "
    f"{k} steps per call, {config.precision}{', XLA' if config.xla else ''}"
    + (f" (cadences rounded to multiples of {k}: {', '.join(moved)})" if moved else "")
    + f"; {', '.join(shown)}",
  )
  return every


# A progress line at least this often (wall clock), whatever --log-every is.
PROGRESS_SECONDS = 10.0


class Progress:
  """The console's progress lines: every --log-every steps, the first and last step, and at
  least every PROGRESS_SECONDS.

  The first line comes right after the first call (one step, which traces the
  step function), as a sign of life; its speed is not a rate. Rates and the
  ETA count training calls only, from the end of that first call, so neither
  tracing nor evaluations, checkpoints and summaries skew them. Only rank 0
  prints; the decision to print is this process's own (no collective).
  """

  def __init__(self, run, start, every):
    self.run, self.start, self.every = run, start, every
    self.started = time.time()
    self.last = None  # (step, training seconds, wall time) of the last line
    self.steady = None  # (step, training seconds) after the first call: the ETA's origin

  def maybe_log(self, step, metrics, training):
    now = time.time()
    first = self.last is None
    late = not first and now - self.last[2] >= PROGRESS_SECONDS
    if not (first or late or due(step, self.every, last=self.run.max_steps)):
      return
    run = self.run
    loss, total = f"{metrics['cross_entropy']:.4f}", f"{metrics['total_loss']:.4f}"
    if first:
      speed = f"first call {training:.1f}s (tracing)"
      self.steady = (step, training)
    else:
      rate = (step - self.last[0]) / max(training - self.last[1], 1e-9) * run.global_batch
      per_step = (training - self.steady[1]) / max(step - self.steady[0], 1)
      eta = per_step * (run.max_steps - step)
      speed = (
        f"{rate:.0f} img/s ({rate / run.ctx.size:.0f}/worker) "
        f"elapsed {format_seconds(now - self.started)} eta {format_seconds(eta)}"
      )
    self.last = (step, training, now)
    _log(
      run.ctx,
      f"step {step}/{run.max_steps} loss {loss}{f' (total {total})' if total != loss else ''} "
      f"acc {metrics['accuracy']:.3f} lr {float(run.schedule(step - 1)):.4g} {speed}",
    )


class Summaries:
  """The loop's summaries: scalars every `every["summary"]` steps, histograms every
  `every["histogram"]`, both at the run's first step and at its last (the step
  it ends at: the budget, early stopping, or a preemption, scalars only)."""

  def __init__(self, run, start, every):
    self.run, self.start, self.every = run, start, every
    self.probe = make_activation_probe(run.model)
    self.averages = {}  # Moving averages of the losses, as the tutorial's loss summaries.
    self.last_scalars = (start, 0.0)  # (step, training seconds) of the last scalars
    self.last_histograms = None

  def write(self, step, metrics, training, images, grads, final=False, histograms=True):
    """Writes what is due at `step` (all of it when `final`; histograms only if `histograms`)."""
    run, first = self.run, self.start + 1
    if self.last_scalars[0] != step and (
      (final and self.every["summary"])
      or due(step, self.every["summary"], first=first, last=run.max_steps)
    ):
      steps_per_second = (step - self.last_scalars[0]) / max(training - self.last_scalars[1], 1e-9)
      self.last_scalars = (step, training)
      _train_summaries(run, step, metrics, self.averages, steps_per_second)
    due_histograms = (final and self.every["histogram"]) or due(
      step, self.every["histogram"], first=first, last=run.max_steps
    )
    if histograms and run.writer.active and self.last_histograms != step and due_histograms:
      self.last_histograms = step
      _histograms(run, step, images, grads, self.probe)
