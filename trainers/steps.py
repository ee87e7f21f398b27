"""The compiled step functions of the loop: train, evaluate, probe activations.

Sits between the model (built in trainers/train.py from a recipe of
trainers/recipes/) and the loop (`train.train`), which calls them on batches
from trainers/input_pipeline.py. `make_train_loop` runs n synchronized steps
per call (their gradients averaged over ranks by trainers/distributed.py),
`steps_per_call`, `round_cadence` and `call_length` size those calls (`due`
says which periodic work falls on a step),
`make_eval_step` and `evaluate` give precision@1 summed over ranks, and
`make_activation_probe` feeds the activation histograms of trainers/summaries.py.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from trainers import distributed
from trainers import summaries


class TrainingError(Exception):
  """A run that cannot go on (non-finite loss, an incompatible model dir); one line."""


def _synced_statistics(model):
  """Float non-trainable variables (batch-norm moving statistics), averaged over ranks."""
  return [
    v
    for v in model.non_trainable_variables
    if v.dtype in ("float16", "float32", "float64") and "seed_generator" not in v.path
  ]


def _correct(logits, labels):
  """1.0 where the top logit is the label, else 0.0 (precision@1 per example)."""
  predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
  return tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.float32)


def make_train_step(model, optimizer, ema, ctx, fp16_allreduce=False, xla=False):
  """One synchronized step: local gradients, averaged over ranks, then applied.

  The forward and backward pass (with --xla, compiled by XLA) is separate
  from the allreduce: Horovod's collectives are not XLA ops.

  Returns:
    A function (images, labels) -> (local [cross_entropy, total_loss,
    accuracy] of this rank's batch, float32, and the averaged gradients), to
    be called inside a tf.function (`make_train_loop`).
  """
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  statistics = _synced_statistics(model)
  # mixed_float16: the loss is scaled so small float16 gradients survive.
  scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

  @tf.function(jit_compile=xla)
  def forward_backward(images, labels):
    with tf.GradientTape() as tape:
      # Logits in float32 under a mixed policy: the loss and argmax stay exact.
      logits = tf.cast(model(images, training=True), tf.float32)
      cross_entropy = loss_fn(labels, logits)
      # Weight decay: the recipes add L2 terms to the total loss (model.losses).
      total_loss = (
        cross_entropy + tf.add_n([tf.cast(l, tf.float32) for l in model.losses])
        if model.losses
        else cross_entropy
      )
      loss = optimizer.scale_loss(total_loss) if scaled else total_loss
    grads = tape.gradient(loss, model.trainable_variables)
    accuracy = tf.reduce_mean(_correct(logits, labels))
    return tf.stack([cross_entropy, total_loss, accuracy]), grads

  def train_step(images, labels):
    local, grads = forward_backward(images, labels)
    # Horovod: average gradients over all ranks before applying them (float32:
    # the variables' dtype under every policy, unless --fp16-allreduce).
    grads = distributed.average_gradients(grads, compression=fp16_allreduce)
    before = tf.identity(optimizer.iterations) if scaled else None
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    if scaled:
      # A step the loss scaler skipped (non-finite scaled gradients, the same
      # on every rank after the allreduce) still counts, so step counts,
      # schedules and resume stay exact.
      skipped = tf.equal(tf.identity(optimizer.iterations), before)
      optimizer.iterations.assign_add(tf.cast(skipped, optimizer.iterations.dtype))
    if ctx.size > 1:
      distributed.average_variables(statistics)  # Horovod: one set of BN statistics.
    if ema is not None:
      ema.update(optimizer.iterations)
    return local, grads

  return train_step


def make_train_loop(model, optimizer, ema, ctx, fp16_allreduce=False, xla=False):
  """Runs n synchronized steps per call, with one host round trip per call.

  As Keras's steps_per_execution: the batches come from the iterator inside
  the tf.function, metrics are summed on the device, and the only extra
  collective is one allreduce of the call's metrics (the gradient allreduce of
  each step is in `make_train_step`).

  Returns:
    A tf.function (iterator, n, stop) -> (metrics, images, labels, grads):
    metrics are rank means of the last step's cross_entropy, total_loss,
    accuracy and of their means over the call ("mean_*"; non-finite if any
    step of any rank was), and "stop", the rank mean of the float32 `stop`
    flags (> 0: some rank was asked to stop; trainers/preemption.py); images,
    labels and averaged gradients are the last step's.
  """
  train_step = make_train_step(model, optimizer, ema, ctx, fp16_allreduce, xla)

  @tf.function
  def train_steps(iterator, n, stop=0.0):
    total = tf.zeros([3], tf.float32)
    for _ in tf.range(n - 1):
      images, labels = next(iterator)
      local, _ = train_step(images, labels)
      total += local
    # The last step outside the loop, so its batch and gradients need not be
    # carried through it (they feed histograms and the batch evaluation).
    images, labels = next(iterator)
    local, grads = train_step(images, labels)
    total += local
    # Horovod: metrics shown to users, and the non-finite check, use rank means.
    # The stop flag rides along, so agreeing on a preemption costs no collective.
    means = distributed.allreduce_mean(
      tf.concat([local, total / tf.cast(n, tf.float32), [stop]], 0)
    )
    names = ("cross_entropy", "total_loss", "accuracy")
    metrics = {
      **dict(zip(names, tf.unstack(means[:3]))),
      **{"mean_" + k: v for k, v in zip(names, tf.unstack(means[3:6]))},
      "stop": means[6],
    }
    return metrics, images, labels, grads

  return train_steps


def steps_per_call(config, max_steps):
  """--steps-per-call, or the default: the gcd of the non-zero cadences, at most 100.

  The scalar summaries' default cadence (trainers/summaries.py) depends on the
  run's length `max_steps`; the histograms' default is left out, and rounded.
  """
  if config.steps_per_call:
    return config.steps_per_call
  cadences = [
    c
    for c in (
      config.recipe.log_every,
      summaries.summary_cadence(config.summary_every, max_steps),
      config.histogram_every,
      config.checkpoint_every,
      config.recipe.eval_every,
    )
    if c
  ]
  return min(100, math.gcd(*cadences)) if cadences else 100


def due(step, every, first=None, last=None):
  """Whether periodic work with period `every` falls on `step`.

  Args:
    step: The step just completed (1-based: after the first update it is 1).
    every: Period in steps; 0 or None means never.
    first: Also due on this step (e.g. the first step of a run, for summaries).
    last: Also due on this step (e.g. the final step, for the progress line).

  Returns:
    True if `every` is set and `step` is a multiple of it, `first` or `last`.
  """
  return bool(every) and (step % every == 0 or step in (first, last))


def round_cadence(every, k):
  """A cadence rounded up to a multiple of k steps (0 or None stays off)."""
  return -(-every // k) * k if every else every


def call_length(step, start, max_steps, k):
  """Steps of the next call: 1 first (its summaries are written at step 1), then up
  to the next multiple of k, never past max_steps."""
  if step == start:
    return 1
  return min(k - step % k, max_steps - step)


def make_eval_step(eval_model):
  """A tf.function (images, labels) -> [correct, summed loss, count] (float64), dropout off."""
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

  @tf.function(reduce_retracing=True)
  def eval_step(images, labels):
    logits, scores = eval_model(images, training=False)
    logits, scores = tf.cast(logits, tf.float32), tf.cast(scores, tf.float32)  # mixed policies
    correct = tf.reduce_sum(tf.cast(_correct(scores, labels), tf.float64))
    return tf.stack(
      [
        correct,
        tf.cast(loss_fn(labels, logits), tf.float64),
        tf.cast(tf.shape(labels)[0], tf.float64),
      ]
    )

  return eval_step


def evaluate(eval_step, batches, max_batches=None):
  """Precision@1 and mean loss over `batches` (this rank's), summed over ranks.

  Each rank walks its own part batch by batch (never the whole split in one
  tensor); the single allreduce comes after the loop, so ranks with one batch
  more or less than others do not deadlock.

  Args:
    eval_step: From `make_eval_step`.
    batches: Iterable of (images, labels).
    max_batches: Stop after this many batches on each rank (None: all).
  """
  totals = np.zeros(3, np.float64)
  for i, (images, labels) in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    totals += eval_step(images, labels).numpy()
  # Horovod: sum the counts of every rank's part of the split.
  correct, loss, count = distributed.allreduce_sum(totals).numpy()
  if count == 0:
    raise TrainingError("evaluation split is empty")
  return {"precision_at_1": correct / count, "loss": loss / count, "examples": int(count)}


def _is_relu(layer):
  activation = getattr(layer, "activation", None)
  return isinstance(layer, keras.layers.ReLU) or activation is keras.activations.relu


def make_activation_probe(model):
  """A tf.function images -> {layer name: output} over every layer of the model.

  Used for activation histograms and the sparsity (fraction of zeros) of
  ReLU outputs, as the CIFAR-10 tutorial's `_activation_summary`.
  """
  layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
  probe = keras.Model(model.inputs, [l.output for l in layers])
  relu = {l.name for l in layers if _is_relu(l)}

  @tf.function(reduce_retracing=True)
  def activations(images):
    outputs = probe(images, training=False)
    return {l.name: out for l, out in zip(layers, outputs)}

  return activations, relu
