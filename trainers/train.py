"""The Horovod training loop: train, evaluate, checkpoint, resume, export.

Sits between the TFRecords of the Beam job (read by trainers/input_pipeline.py)
and what users keep: checkpoints, metrics.json, TensorBoard summaries and an
exported SavedModel in the model dir. The entry scripts (trainers/cifar10.py,
mnist.py, catdog.py) call `main`, which parses a `config.Config` (a recipe of
trainers/recipes/ plus flags) and calls `run`.

Read top to bottom: the periodic-work helper, the model and its optimizer, the
train and eval steps, the per-process `Run`, the loop (`train`), the final
evaluation, the entry. Run state that outlives a step (EMA, checkpoints, early
stopping) is in trainers/state.py, the serving export in trainers/export.py,
the model dir (its config.json, its lock, the start-up checks against the
data) in trainers/run_dir.py.

Every rank builds the same model, restores the same checkpoint and then takes
rank 0's variables, so all ranks start bitwise identical; each step averages
gradients across ranks, so they stay identical. Every rank runs the same number
of steps (the training input repeats forever and the loop counts steps), and
every decision that ends the loop is taken on values averaged over ranks, so no
rank is left waiting in a collective. Chief-only work (checkpoints, metrics,
export, summaries) goes through objects that do nothing on other ranks.
"""

import contextlib
import dataclasses
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from preprocess import augment
from preprocess.errors import first_line
from trainers import distributed
from trainers import eval_input
from trainers import export
from trainers import input_pipeline
from trainers import preemption
from trainers import run_dir
from trainers import schedule
from trainers import state
from trainers import summaries
from trainers import tags


class TrainingError(Exception):
  """A run that cannot go on (non-finite loss, an incompatible model dir); one line."""


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


# --- what the run applies ----------------------------------------------------


def resolve_augmentation(recipe, metadata):
  """The policy a run applies: the recipe's own, or the data set's default.

  Returns:
    ({"train": [...], "eval": [...]}, serving policy, where it came from).
  """
  if recipe.augmentation is not None:
    policy, source = recipe.augmentation, f"recipe {recipe.name}"
  else:
    policy, source = metadata.augmentation, "metadata.json (the data set's default)"
  serving = (
    recipe.serving_augmentation if recipe.serving_augmentation is not None else policy["eval"]
  )
  return policy, serving, source


# --- model, optimizer, schedule ----------------------------------------------


def create_model(recipe, metadata, policy):
  """The recipe's architecture, sized by what the training policy outputs."""
  input_shape = augment.output_shape(policy["train"], metadata.image_shape)
  return recipe.build_model(metadata.num_classes, input_shape)


def make_eval_model(model, eval_output=None):
  """images -> (logits the loss uses, scores precision@1 is taken on); shares the weights.

  The scores are the model's logits, or the output of layer `eval_output`
  (the MNIST bn_dropout recipe's pre-batch-norm logits).
  """
  scores = model.get_layer(eval_output).output if eval_output else model.outputs[0]
  return keras.Model(model.inputs[0], [model.outputs[0], scores], name=f"{model.name}_eval")


# --- steps -------------------------------------------------------------------


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


def steps_per_call(config):
  """--steps-per-call, or the default: the gcd of the non-zero cadences, at most 100."""
  if config.steps_per_call:
    return config.steps_per_call
  cadences = [
    c
    for c in (
      config.recipe.log_every,
      config.summary_every,
      config.histogram_every,
      config.checkpoint_every,
      config.recipe.eval_every,
    )
    if c
  ]
  return min(100, math.gcd(*cadences)) if cadences else 100


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


# --- the run -----------------------------------------------------------------


def _log(ctx, message):
  if ctx.is_chief:
    print(message, flush=True)


def _format_seconds(seconds):
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Run:
  """Everything one process of a run holds: model, optimizer, input, run state."""

  def __init__(self, config, ctx, metadata=None):
    self.config = config
    self.ctx = ctx
    recipe = config.recipe
    self.metadata = metadata or input_pipeline.load_metadata(config.data_dir)
    self.augmentation, self.serving_policy, self.augmentation_source = resolve_augmentation(
      recipe, self.metadata
    )
    keras.utils.set_random_seed(
      config.seed + ctx.rank
    )  # per-rank dropout; weights come from rank 0
    # --precision: layers created from here on compute in it (variables stay float32).
    keras.mixed_precision.set_global_policy(config.precision)
    self.model = create_model(recipe, self.metadata, self.augmentation)
    self.eval_model = make_eval_model(self.model, recipe.eval_output)
    self.global_batch = recipe.batch_size * ctx.size
    self.steps_per_epoch = input_pipeline.steps_per_epoch(self.metadata, "train", self.global_batch)
    self.max_steps = (
      math.ceil(config.epochs * self.steps_per_epoch) if config.epochs else recipe.max_steps
    )
    self.schedule = schedule.create_learning_rate_fn(
      config, ctx.size, self.steps_per_epoch, self.max_steps
    )
    self.optimizer = schedule.create_optimizer(recipe, self.schedule)
    if config.precision == "mixed_float16":
      self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
    # Building the optimizer creates its slots now, so the start-up broadcast
    # covers them (Horovod's examples broadcast after the first step instead).
    self.optimizer.build(self.model.trainable_variables)
    self.ema = (
      state.ExponentialMovingAverage(self.model.trainable_variables, recipe.ema_decay)
      if recipe.ema_decay
      else None
    )
    # Kept even without patience, so checkpoints have one layout.
    self.early_stopping = state.EarlyStopping(recipe.early_stopping_patience)
    objects = {"model": self.model, "optimizer": self.optimizer, **self.early_stopping.variables}
    if self.ema:
      objects["ema"] = self.ema.checkpointable
    self.input_position = preemption.InputPosition()
    objects["input_position"] = self.input_position.variable
    objects["seed_states"] = preemption.seed_states(self.model)
    self.checkpoints = state.Checkpoints(config.model_dir, ctx, config.keep_checkpoints, **objects)
    self.eval_step = make_eval_step(self.eval_model)
    self.writer = summaries.Writer(config.model_dir, ctx)
    # Built once per run, kept in memory when small (trainers/eval_input.py).
    self.eval_inputs = eval_input.EvalInputs(
      lambda split: self.dataset(split, training=False), self.metadata, rank=ctx.rank, size=ctx.size
    )

  @property
  def step(self):
    return int(self.optimizer.iterations.numpy())

  def config_json(self):
    """config.json: the run config, with the augmentation actually applied."""
    recipe = dict(
      self.config.recipe.to_json(),
      augmentation=self.augmentation,
      serving_augmentation=self.serving_policy,
    )
    return dict(
      self.config.to_json(),
      recipe=recipe,
      augmentation_source=self.augmentation_source,
      workers=self.ctx.size,
      data=run_dir.data_signature(self.metadata),
    )

  def broadcast(self):
    """Horovod: every rank takes rank 0's model, optimizer, EMA and early-stopping state."""
    variables = [v for v in self.model.variables if "seed_generator" not in v.path]
    variables += list(self.optimizer.variables) + list(self.early_stopping.variables.values())
    variables.append(self.input_position.variable)
    if self.ema:
      variables += self.ema.shadows
    distributed.broadcast_variables(variables, root_rank=0)

  def dataset(self, split, training):
    # A resumed run starts where its input stopped, mid-epoch if need be.
    return input_pipeline.make_dataset(
      self.config.data_dir,
      dataclasses.replace(self.metadata, augmentation=self.augmentation),
      split,
      rank=self.ctx.rank,
      size=self.ctx.size,
      batch_size=self.config.recipe.batch_size,
      training=training,
      seed=self.config.seed,
      image_shape=self.model.input_shape[1:],
      position=self.input_position.per_rank(self.ctx.size) if training else None,
    )

  def evaluation_weights(self):
    """Context in which the model holds the weights the recipe evaluates and exports."""
    return self.ema.swapped_in() if self.ema else contextlib.nullcontext()

  def evaluate(self, split, max_batches=None):
    with self.evaluation_weights():
      return evaluate(self.eval_step, self.eval_inputs.get(split, max_batches))


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


def _evaluate_during_training(run, step, images, labels, elapsed):
  """Evaluates the recipe's split, logs the recipe's line; returns whether to stop."""
  recipe, ctx = run.config.recipe, run.ctx
  # Training accuracy as the recipes print it: this batch, dropout off, current weights.
  batch = evaluate(run.eval_step, [(images, labels)])
  result = run.evaluate(recipe.eval_on, recipe.eval_batches)
  split = recipe.eval_on
  # The split's run: its curves overlay the train run's under the same tags.
  run.writer.scalars(
    split,
    step,
    {tags.PRECISION_AT_1: result["precision_at_1"], tags.CROSS_ENTROPY: result["loss"]},
  )
  improved = stop = False
  if recipe.early_stopping_patience:
    improved, stop = run.early_stopping.update(step, result["precision_at_1"])
    if improved:
      run.checkpoints.save(step, "best")
  _log(
    ctx,
    f"step {step}: train accuracy {batch['precision_at_1']:.4f} (batch, dropout off), "
    f"{split} precision@1 {result['precision_at_1']:.4f} ({result['examples']} examples), "
    f"elapsed {_format_seconds(elapsed)}{' improved' if improved else ''}",
  )
  if stop:
    best = run.early_stopping.best()
    _log(
      ctx,
      f"early stopping at step {step}: {split} precision@1 {best['precision_at_1']:.4f} "
      f"at step {best['step']}, no better since",
    )
  return stop


def train(run):
  """Trains to run.max_steps, resuming from the latest checkpoint.

  Returns:
    (the final step, the best evaluation {"precision_at_1", "step"} when the
    recipe stops early, else None).
  """
  config, ctx, recipe = run.config, run.ctx, run.config.recipe
  with preemption.rank_seeds_kept(run.model):
    restored = None if config.overwrite else run.checkpoints.restore("latest")
  run.input_position.resolve(run.step, run.global_batch)
  run.broadcast()
  start = run.step
  if restored or start:
    _log(ctx, f"resumed from {restored} at step {start}")
  k = steps_per_call(config)
  # Cadences on the grid of calls (--steps-per-call); the default k moves none.
  asked = {
    "log": recipe.log_every,
    "summary": config.summary_every,
    "histogram": summaries.histogram_cadence(config.histogram_every, run.max_steps),
    "checkpoint": config.checkpoint_every,
    "eval": recipe.eval_every,
  }
  every = {name: round_cadence(value, k) for name, value in asked.items()}
  moved = [f"{name} every {every[name]}" for name, value in asked.items() if every[name] != value]
  train_steps = make_train_loop(
    run.model, run.optimizer, run.ema, ctx, config.fp16_allreduce, config.xla
  )
  _log(
    ctx,
    f"training steps {start}->{run.max_steps}, augmentation from {run.augmentation_source}; "
    f"{k} steps per call, {config.precision}{', XLA' if config.xla else ''}"
    + (f" (cadences rounded to multiples of {k}: {', '.join(moved)})" if moved else ""),
  )
  probe = make_activation_probe(run.model)
  averages = {}  # Moving averages of the losses, as the tutorial's loss summaries.
  started = time.time()
  # img/s counts the time of the training calls only (not evaluation, checkpoints, summaries).
  training = 0.0
  last_log, last_summary = (start, training), (start, training)
  step = start
  batches = iter(run.dataset("train", training=True))
  # SIGTERM/SIGINT: stop at a step every rank agrees on (trainers/preemption.py).
  stop, preempted = preemption.StopSignal(), False
  stop.install()
  while step < run.max_steps:
    n = call_length(step, start, run.max_steps, k)
    call_started = time.time()
    metrics, images, labels, grads = train_steps(batches, tf.constant(n, tf.int64), stop.flag())
    # The one device-to-host transfer of the call.
    metrics = {name: float(v) for name, v in metrics.items()}
    training += time.time() - call_started
    step += n
    run.input_position.advance(n * run.global_batch)
    # Finite check: every rank sees the same rank-averaged call means, so all stop here.
    if not math.isfinite(metrics["mean_total_loss"]):
      raise TrainingError(
        f"non-finite loss {metrics['mean_total_loss']} in steps "
        f"{step - n + 1}..{step}: lower --learning-rate or warm up longer "
        "(--warmup-epochs)"
      )
    if metrics["stop"] > 0:  # the same rank mean everywhere: every rank stops here
      preempted = True
      break
    # The tutorial's moving averages (decay 0.9 a step), over the call's mean.
    for name in ("cross_entropy", "total_loss"):
      decay = 0.9**n
      averages[name] = (
        decay * averages.get(name, metrics["mean_" + name]) + (1 - decay) * metrics["mean_" + name]
      )
    metrics = {name: metrics[name] for name in ("cross_entropy", "total_loss", "accuracy")}
    now = time.time()
    # Log.
    if due(step, every["log"], last=run.max_steps):
      rate = (step - last_log[0]) / max(training - last_log[1], 1e-9) * run.global_batch
      last_log = (step, training)
      eta = (now - started) / (step - start) * (run.max_steps - step)
      loss, total = f"{metrics['cross_entropy']:.4f}", f"{metrics['total_loss']:.4f}"
      _log(
        ctx,
        f"step {step}/{run.max_steps} loss {loss}{f' (total {total})' if total != loss else ''} "
        f"acc {metrics['accuracy']:.3f} "
        f"lr {float(run.schedule(step - 1)):.4g} {rate:.0f} img/s "
        f"({rate / ctx.size:.0f}/worker) elapsed {_format_seconds(now - started)} "
        f"eta {_format_seconds(eta)}",
      )
    # Summaries (rank 0 writes; the writer does nothing elsewhere).
    if due(step, every["summary"], first=start + 1):
      steps_per_second = (step - last_summary[0]) / max(training - last_summary[1], 1e-9)
      last_summary = (step, training)
      _train_summaries(run, step, metrics, averages, steps_per_second)
    if run.writer.active and due(step, every["histogram"], first=start + 1):
      _histograms(run, step, images, grads, probe)
    # Checkpoint.
    if due(step, every["checkpoint"]):
      run.checkpoints.save(step)
    # Evaluate (and stop early).
    if due(step, every["eval"]) and _evaluate_during_training(
      run, step, images, labels, time.time() - started
    ):
      break
  stop.uninstall()
  seconds = time.time() - started
  _log(
    ctx,
    f"trained {step - start} steps in {seconds:.2f}s ({training:.2f}s of training steps, "
    f"{(step - start) * run.global_batch / max(training, 1e-9):.0f} img/s)",
  )
  if preempted or not due(step, every["checkpoint"]):
    run.checkpoints.save(step)
  if preempted:
    run.writer.close()  # the summaries up to this step, before the process exits
    raise preemption.Preempted(step)
  best = run.early_stopping.best() if recipe.early_stopping_patience else None
  if best:
    run.checkpoints.restore("best")
    run.broadcast()
    _log(
      ctx,
      f"restored the best checkpoint (step {best['step']}, {recipe.eval_on} precision@1 "
      f"{best['precision_at_1']:.4f})",
    )
  return step, best


def _restore_trained(run):
  """Restores the checkpoint that eval and export use (the best one, if kept); returns its path."""
  which = "best" if run.checkpoints.path("best") else "latest"
  path = run.checkpoints.restore(which)
  if not path:
    raise TrainingError(f"no checkpoint in {run.config.model_dir}: train first")
  run.broadcast()
  return path


def run_eval(run, split, trained_step=None, best=None):
  """Evaluates on `split`, prints precision@1 and writes metrics.json (chief)."""
  config, ctx = run.config, run.ctx
  if trained_step is None:
    _log(ctx, f"evaluating {_restore_trained(run)}")
  result = run.evaluate(split)
  # `step` is the step of the evaluated weights: the best one after early stopping.
  metrics = dict(
    result,
    split=split,
    step=run.step,
    dataset=config.dataset,
    recipe=config.recipe.name,
    ema_weights=run.ema is not None,
    workers=ctx.size,
  )
  if trained_step is not None:
    metrics["trained_steps"] = trained_step
  if best:
    metrics["best_validation"] = best
  _log(
    ctx,
    f"{split} precision@1 = {result['precision_at_1']:.4f} "
    f"({result['examples']} examples, loss {result['loss']:.4f}, step {run.step}"
    f"{', EMA weights' if run.ema else ''})",
  )
  run.writer.scalars(
    split,
    run.step,
    {tags.PRECISION_AT_1: result["precision_at_1"], tags.CROSS_ENTROPY: result["loss"]},
  )
  if ctx.is_chief:
    run_dir.write_json(os.path.join(config.model_dir, run_dir.METRICS), metrics)
  return metrics


def _log_start(run, previous, overrides):
  """The start-up summary: the run, its data, workers, batch, steps, learning rate; a few lines."""
  config, ctx, recipe, meta = run.config, run.ctx, run.config.recipe, run.metadata
  scale = schedule.lr_scale(config, ctx.size)
  warmup = schedule.warmup_steps(config, ctx.size, run.steps_per_epoch, run.max_steps)
  params = sum(int(np.prod(v.shape)) for v in run.model.weights)
  training = config.mode in ("train", "train_and_eval")
  what = ("resuming the run in" if previous else "a new run in") if training else "the run in"
  _log(
    ctx,
    f"{config.dataset}/{recipe.name} ({params:,} parameters), {config.mode}, {what} "
    f"{config.model_dir}",
  )
  if overrides:
    _log(ctx, overrides)
  order = {"train": 0, "validation": 1, "test": 2}
  splits = sorted(meta.splits.items(), key=lambda item: (order.get(item[0], 3), item[0]))
  counts = ", ".join(f"{name} {split.num_examples:,}" for name, split in splits)
  shape = "x".join(str(n) for n in meta.image_shape)
  _log(
    ctx,
    f"data {config.data_dir}: {meta.dataset}, {shape} images, {meta.num_classes} classes; {counts}",
  )
  how = (
    f" ({recipe.learning_rate:g} x {scale:.4g} for {ctx.size} workers, "
    f"--lr-scaling {config.lr_scaling})"
    if scale != 1
    else ""
  )
  _log(
    ctx,
    f"on {ctx.size} worker(s), batch {recipe.batch_size}/worker ({run.global_batch} global), "
    f"{run.max_steps} steps ({run.steps_per_epoch} steps/epoch); learning rate "
    f"{recipe.learning_rate * scale:.4g}{how}"
    + (f", warmed up over {warmup} steps" if warmup else ""),
  )


@contextlib.contextmanager
def _read_errors(run, splits):
  """Turns a read error of the input (a damaged shard) into one line naming the shard and offset.

  Wraps whole calls (the loop, an evaluation) from outside: TensorFlow reports
  "corrupted record at N" without the file, so on any TensorFlow error the
  shards of `splits` are scanned (framing and CRCs) for the damaged one. Errors
  that are not the data's (a full disk, say) pass on unchanged.
  """
  try:
    yield
  except tf.errors.OpError:
    damaged = input_pipeline.find_damaged_shard(run.config.data_dir, run.metadata, splits)
    if damaged:
      raise input_pipeline.InputError(damaged) from None
    raise


@contextlib.contextmanager
def _claimed_model_dir(config, ctx):
  """Holds the model dir for the block (trainers/run_dir.py); yields the config.json it held.

  Only the chief locks; every rank learns its outcome, so when the chief
  cannot claim the directory every rank stops at once instead of waiting in
  the first collective.
  """
  lock, outcome = None, None
  if ctx.is_chief:
    try:
      owner = f"trainers/{config.dataset}.py --mode {config.mode}"
      lock, previous = run_dir.claim(config, owner, log=lambda line: _log(ctx, line))
      outcome = ("ok", previous)
    except run_dir.RunError as e:
      outcome = ("error", str(e))
  status, value = distributed.broadcast_object(outcome)  # Horovod: the chief's outcome
  if status == "error":
    raise run_dir.RunError(value)
  try:
    yield value
  finally:
    if lock:
      lock.release()


def _export(r):
  """Writes the serving model of the weights the run evaluates (chief)."""
  if not r.ctx.is_chief:
    return
  export_dir = os.path.join(r.config.model_dir, "export")
  with r.evaluation_weights():
    export.export_serving_model(
      r.eval_model,
      r.metadata.image_shape,
      r.metadata.class_names,
      r.augmentation,
      r.serving_policy,
      export_dir,
    )
  _log(
    r.ctx,
    f"exported the serving model to {export_dir} (serving policy: "
    f"{', '.join(s['op'] for s in r.serving_policy)}; deterministic)",
  )


def run(config, ctx, overrides=None):
  """Runs `config.mode` in this process, holding the model dir; returns the final metrics (or None).

  Args:
    config: The run's `config.Config`.
    ctx: This process's `distributed.Context`.
    overrides: The line naming the flags that override the run's config.json, or None.
  """
  with _claimed_model_dir(config, ctx) as previous:
    metadata = input_pipeline.load_metadata(config.data_dir)
    run_dir.check_data(config, metadata, previous)
    input_pipeline.check_first_records(config.data_dir, metadata)
    preemption.set_determinism(config.deterministic)
    r = Run(config, ctx, metadata)
    _log_start(r, previous, overrides)
    if ctx.is_chief and config.mode in ("train", "train_and_eval"):
      saved = r.config_json()  # config.json describes the training run
      run_dir.write_json(run_dir.config_path(config.model_dir), saved)
      r.writer.config(saved, r.max_steps)
      r.writer.graph(r.model)
    metrics = None
    if config.mode in ("train", "train_and_eval"):
      with _read_errors(r, ("train", config.recipe.eval_on)):
        step, best = train(r)
      if config.mode == "train_and_eval":
        with _read_errors(r, (config.eval_split,)):
          metrics = run_eval(r, config.eval_split, trained_step=step, best=best)
      if config.export:
        _export(r)
    elif config.mode == "export":
      _log(ctx, f"exporting {_restore_trained(r)}")
      _export(r)
    else:
      with _read_errors(r, (config.eval_split,)):
        metrics = run_eval(r, config.eval_split)
    r.writer.close()
  return metrics


def main(dataset, argv=None, config=None, overrides=None):
  """Runs trainers/<dataset>.py with `config` (or the flags in `argv`); returns the exit code.

  trainers/entry.py parses the flags before importing this module and passes
  `config` and `overrides` (the line naming the flags that override the run's config.json).
  """
  if config is None:
    from trainers import config as config_lib  # pylint: disable=g-import-not-at-top

    config, overrides = config_lib.resolve(dataset, sys.argv[1:] if argv is None else argv)
  ctx = distributed.init()
  try:
    run(config, ctx, overrides)
  except preemption.Preempted as e:
    # The chief says so after writing; the others once it has (the barrier).
    if ctx.is_chief:
      print(e, flush=True)
    distributed.barrier()
    if not ctx.is_chief:
      print(e, flush=True)
    return preemption.EXIT_PREEMPTED
  except run_dir.RunError as e:
    if ctx.is_chief:  # every rank stops; one says why
      print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  except (TrainingError, input_pipeline.InputError, state.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  except (tf.errors.OpError, OSError) as e:
    # What is left is the environment's (a full disk, a read-only model dir):
    # TensorFlow's and the OS's messages name the file; one line of it is enough.
    print(f"error: {first_line(e)}", file=sys.stderr, flush=True)
    return 1
  return 0
