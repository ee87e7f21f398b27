"""The Horovod training loop: train, evaluate, checkpoint, resume, export.

Sits between the TFRecords of the Beam job (read by trainers/input_pipeline.py)
and what users keep: checkpoints, metrics.json and an exported SavedModel in
the model dir. The entry scripts (trainers/cifar10.py, mnist.py, catdog.py)
parse a `config.Config` and call `run`.

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
import json
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from preprocess import augment
from trainers import distributed
from trainers import input_pipeline
from trainers import models
from trainers import summaries


class TrainingError(Exception):
  """A run that cannot go on (non-finite loss, an incompatible model dir); one line."""


# --- model, optimizer, schedule ----------------------------------------------


def create_model(config, metadata):
  """The recipe's architecture, sized by what the data's augmentation policy outputs."""
  input_shape = augment.output_shape(metadata.augmentation["train"], metadata.image_shape)
  return models.build(config.recipe.model, metadata.num_classes, input_shape)


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Scales a schedule linearly from 1/warmup_steps up to 1 over the first steps.

  With many workers the scaled learning rate is large; ramping up avoids the
  early divergence that a large rate on random weights can cause.
  """

  def __init__(self, schedule, warmup_steps):
    super().__init__()
    self.schedule = schedule
    self.warmup_steps = warmup_steps

  def __call__(self, step):
    ramp = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / float(self.warmup_steps))
    return self.schedule(step) * ramp

  def get_config(self):
    return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
            "warmup_steps": self.warmup_steps}


def create_learning_rate_fn(config, num_workers, steps_per_epoch):
  """The recipe's schedule, scaled by the number of workers unless --no-scale-lr.

  Horovod's rule: with N workers the global batch is N times larger, so the
  learning rate is N times larger too.
  """
  recipe = config.recipe
  base = config.learning_rate * (num_workers if config.scale_lr else 1)
  decay_steps = recipe.lr_decay_steps
  if recipe.lr_decay_epochs:
    decay_steps = max(1, int(recipe.lr_decay_epochs * steps_per_epoch))
  if decay_steps:
    schedule = keras.optimizers.schedules.ExponentialDecay(
        base, decay_steps, recipe.lr_decay_rate, staircase=True)
  else:
    schedule = keras.optimizers.schedules.ExponentialDecay(base, 1, 1.0)  # constant
  if config.warmup_steps:
    schedule = WarmupSchedule(schedule, config.warmup_steps)
  return schedule


def create_optimizer(config, schedule):
  if config.recipe.optimizer == "sgd":
    return keras.optimizers.SGD(schedule)
  if config.recipe.optimizer == "adam":
    return keras.optimizers.Adam(schedule)
  raise ValueError(f"unknown optimizer {config.recipe.optimizer!r}")


class ExponentialMovingAverage:
  """Shadow copies of the trainable weights, as tf.train.ExponentialMovingAverage.

  The decay is min(decay, (1 + step) / (10 + step)) as in the CIFAR-10 tutorial
  (which passes the global step as num_updates), so early shadows follow the
  weights quickly. Evaluation and export swap the shadows in.
  """

  def __init__(self, variables, decay):
    self._decay = decay
    self._targets = list(variables)
    self.shadows = [tf.Variable(v.value, trainable=False, name=v.name + "_ema") for v in variables]
    # What checkpoints track: the shadows only (the weights are the model's).
    self.checkpointable = tf.Module(name="ema")
    self.checkpointable.shadows = self.shadows

  def update(self, step):
    step = tf.cast(step, tf.float32)
    decay = tf.minimum(self._decay, (1.0 + step) / (10.0 + step))
    for shadow, v in zip(self.shadows, self._targets):
      shadow.assign_sub((1.0 - decay) * (shadow - v.value))

  @contextlib.contextmanager
  def swapped_in(self):
    """Within the block the model holds the averaged weights."""
    backup = [v.numpy() for v in self._targets]
    for v, shadow in zip(self._targets, self.shadows):
      v.assign(shadow)
    try:
      yield
    finally:
      for v, value in zip(self._targets, backup):
        v.assign(value)


# --- steps -------------------------------------------------------------------


def _synced_statistics(model):
  """Float non-trainable variables (batch-norm moving statistics), averaged over ranks."""
  return [v for v in model.non_trainable_variables
          if v.dtype in ("float16", "float32", "float64") and "seed_generator" not in v.path]


def _correct(logits, labels):
  """1.0 where the top logit is the label, else 0.0 (precision@1 per example)."""
  predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
  return tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.float32)


def make_train_step(model, optimizer, ema, ctx, fp16_allreduce=False):
  """One synchronized step: local gradients, averaged over ranks, then applied.

  Returns:
    A tf.function (images, labels) -> (metrics, gradients): cross_entropy,
    total_loss and accuracy, each averaged over ranks (so every rank sees the
    same values), and the averaged gradients (for histograms).
  """
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  statistics = _synced_statistics(model)

  @tf.function
  def train_step(images, labels):
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      cross_entropy = loss_fn(labels, logits)
      # Weight decay: the recipes add L2 terms to the total loss (model.losses).
      total_loss = cross_entropy + tf.add_n(model.losses) if model.losses else cross_entropy
    grads = tape.gradient(total_loss, model.trainable_variables)
    # Horovod: average gradients over all ranks before applying them.
    grads = distributed.average_gradients(grads, compression=fp16_allreduce)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    if ctx.size > 1:
      distributed.average_variables(statistics)  # Horovod: one set of BN statistics.
    if ema is not None:
      ema.update(optimizer.iterations)
    accuracy = tf.reduce_mean(_correct(logits, labels))
    # Horovod: metrics shown to users, and the non-finite check, use rank means.
    means = distributed.allreduce_mean(tf.stack([cross_entropy, total_loss, accuracy]))
    return {"cross_entropy": means[0], "total_loss": means[1], "accuracy": means[2]}, grads

  return train_step


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


def make_eval_step(model):
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

  @tf.function(reduce_retracing=True)
  def eval_step(images, labels):
    logits = model(images, training=False)
    correct = tf.reduce_sum(tf.cast(_correct(logits, labels), tf.float64))
    return tf.stack([correct, tf.cast(loss_fn(labels, logits), tf.float64),
                     tf.cast(tf.shape(labels)[0], tf.float64)])

  return eval_step


def evaluate(eval_step, dataset):
  """Precision@1 and mean loss over a whole split, summed over ranks.

  Each rank walks its own part of the split batch by batch (never the whole
  split in one tensor); the single allreduce comes after the loop, so ranks with
  one batch more or less than others do not deadlock.
  """
  totals = np.zeros(3, np.float64)
  for images, labels in dataset:
    totals += eval_step(images, labels).numpy()
  correct, loss, count = distributed.allreduce_sum(totals).numpy()
  if count == 0:
    raise TrainingError("evaluation split is empty")
  return {"precision_at_1": correct / count, "loss": loss / count, "examples": int(count)}


# --- chief-only side effects ---------------------------------------------------


class Checkpoints:
  """Latest and best checkpoints in the model dir; only the chief writes.

  `latest/` keeps the last few checkpoints for resuming; `best/` keeps the one
  with the best validation precision when the recipe stops early.
  """

  def __init__(self, model_dir, ctx, keep, **objects):
    self._ckpt = tf.train.Checkpoint(**objects)
    self._dirs = {"latest": os.path.join(model_dir, "checkpoints"),
                  "best": os.path.join(model_dir, "best")}
    self._ctx = ctx
    self._managers = {}
    if ctx.is_chief:
      self._managers = {name: tf.train.CheckpointManager(self._ckpt, d, max_to_keep=keep if name == "latest" else 1)
                        for name, d in self._dirs.items()}

  def path(self, which):
    return tf.train.latest_checkpoint(self._dirs[which])

  def restore(self, which="latest"):
    """Restores `which` if it exists on this rank; returns its path or None."""
    path = self.path(which)
    if path:
      self._ckpt.restore(path).assert_existing_objects_matched()
    return path

  def save(self, step, which="latest"):
    if self._ctx.is_chief:
      self._managers[which].save(checkpoint_number=step)


def _write_json(path, data):
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
  tf.io.gfile.rename(tmp, path, overwrite=True)


def export_serving_model(model, metadata, export_dir):
  """Saves a SavedModel that takes raw uint8 images as stored in the shards.

  The eval augmentation policy (crop, standardization, scaling) is part of the
  serving function, so clients send pixels, not preprocessed tensors.
  """
  height, width, channels = metadata.image_shape
  eval_steps = metadata.augmentation["eval"]
  module = tf.Module()
  module.model = model

  @tf.function(input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="images")])
  def serve(images):
    logits = model(input_pipeline.serving_preprocess(images, eval_steps), training=False)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1, output_type=tf.int32)}

  module.serve = serve
  if tf.io.gfile.exists(export_dir):
    tf.io.gfile.rmtree(export_dir)
  tf.saved_model.save(module, export_dir, signatures={"serving_default": serve})
  with tf.io.gfile.GFile(os.path.join(export_dir, "labels.txt"), "w") as f:
    f.write("\n".join(metadata.class_names) + "\n")


# --- the run -----------------------------------------------------------------


class _Rate:
  """Steps per second since the last call."""

  def __init__(self, step, now):
    self._step, self._time = step, now

  def steps_per_second(self, step, now):
    rate = (step - self._step) / max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return rate


def _log(ctx, message):
  if ctx.is_chief:
    print(message, flush=True)


def _format_seconds(seconds):
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _prepare_model_dir(config, ctx):
  """Checks the model dir holds a compatible run (or clears it with --overwrite)."""
  saved = os.path.join(config.model_dir, "config.json")
  if config.overwrite:
    if ctx.is_chief and tf.io.gfile.exists(config.model_dir):
      hparams = tf.io.gfile.glob(os.path.join(config.model_dir, "events.out.tfevents.*"))
      for name in ("checkpoints", "best", "export", "train", "eval", "config.json",
                   "metrics.json") + tuple(os.path.basename(p) for p in hparams):
        path = os.path.join(config.model_dir, name)
        if tf.io.gfile.isdir(path):
          tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
          tf.io.gfile.remove(path)
    return
  if tf.io.gfile.exists(saved):
    with tf.io.gfile.GFile(saved) as f:
      previous = json.load(f)
    for key in ("dataset", "model"):
      if previous.get(key) != getattr(config, key):
        raise TrainingError(
            f"{config.model_dir} holds a {previous.get('dataset')}/{previous.get('model')} run, "
            f"not {config.dataset}/{config.model}: use another --model-dir or --overwrite")


class Run:
  """Everything one process of a run holds: model, optimizer, input, checkpoints."""

  def __init__(self, config, ctx):
    self.config = config
    self.ctx = ctx
    self.metadata = input_pipeline.load_metadata(config.data_dir)
    keras.utils.set_random_seed(config.seed + ctx.rank)  # per-rank dropout; weights come from rank 0
    self.model = create_model(config, self.metadata)
    global_batch = config.batch_size * ctx.size
    self.steps_per_epoch = input_pipeline.steps_per_epoch(self.metadata, "train", global_batch)
    self.max_steps = (math.ceil(config.epochs * self.steps_per_epoch) if config.epochs
                      else config.max_steps)
    self.schedule = create_learning_rate_fn(config, ctx.size, self.steps_per_epoch)
    self.optimizer = create_optimizer(config, self.schedule)
    # Building the optimizer creates its slots now, so the start-up broadcast
    # covers them (Horovod's examples broadcast after the first step instead).
    self.optimizer.build(self.model.trainable_variables)
    self.ema = (ExponentialMovingAverage(self.model.trainable_variables, config.recipe.ema_decay)
                if config.recipe.ema_decay else None)
    # Early-stopping state lives in the checkpoint, so a resumed run remembers
    # its best validation score.
    self.best_precision = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
    self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
    objects = {"model": self.model, "optimizer": self.optimizer,
               "best_precision": self.best_precision, "best_step": self.best_step}
    if self.ema:
      objects["ema"] = self.ema.checkpointable
    self.checkpoints = Checkpoints(config.model_dir, ctx, config.keep_checkpoints, **objects)
    self.eval_step = make_eval_step(self.model)
    self.writer = summaries.Writer(config.model_dir, ctx)

  @property
  def step(self):
    return int(self.optimizer.iterations.numpy())

  def broadcast(self):
    """Horovod: every rank takes rank 0's model, optimizer and EMA state."""
    variables = [v for v in self.model.variables if "seed_generator" not in v.path]
    variables += list(self.optimizer.variables) + [self.best_precision, self.best_step]
    if self.ema:
      variables += self.ema.shadows
    distributed.broadcast_variables(variables, root_rank=0)

  def dataset(self, split, training):
    # A resumed run starts at its epoch, not at epoch 0's order and augmentation.
    return input_pipeline.make_dataset(
        self.config.data_dir, self.metadata, split, rank=self.ctx.rank, size=self.ctx.size,
        batch_size=self.config.batch_size, training=training, seed=self.config.seed,
        image_shape=self.model.input_shape[1:], first_epoch=self.step // self.steps_per_epoch)

  def evaluation_weights(self):
    """Context in which the model holds the weights the recipe evaluates and exports."""
    return self.ema.swapped_in() if self.ema else contextlib.nullcontext()

  def evaluate(self, split):
    with self.evaluation_weights():
      return evaluate(self.eval_step, self.dataset(split, training=False))


def train(run):
  """Trains to run.max_steps, resuming from the latest checkpoint; returns the final step."""
  config, ctx = run.config, run.ctx
  restored = None if config.overwrite else run.checkpoints.restore("latest")
  run.broadcast()
  start = run.step
  if restored or start:
    _log(ctx, f"resumed from {restored} at step {start}")
  train_step = make_train_step(run.model, run.optimizer, run.ema, ctx, config.fp16_allreduce)
  has_validation = "validation" in run.metadata.splits
  patience = config.early_stopping_patience
  if patience and not has_validation:
    raise TrainingError(f"--model {config.model} stops early on the validation split, but "
                        f"{config.data_dir} has none: rerun the Beam job with --validation-size")
  global_batch = config.batch_size * ctx.size
  _log(ctx, f"training {config.dataset}/{config.model} on {ctx.size} worker(s): steps {start}->"
            f"{run.max_steps}, batch {config.batch_size}/worker ({global_batch} global), "
            f"{run.steps_per_epoch} steps/epoch")
  activations, relu_layers = make_activation_probe(run.model)
  averages = {}  # Moving averages of the losses, as the tutorial's loss summaries.
  started = time.time()
  log_timer, summary_timer = _Rate(start, started), _Rate(start, started)
  step = start
  batches = iter(run.dataset("train", training=True))
  while step < run.max_steps:
    images, labels = next(batches)
    if step == start:
      run.writer.trace_on()  # the graph of the first step, for TensorBoard's Graphs tab
    metrics, grads = train_step(images, labels)
    metrics = {k: float(v) for k, v in metrics.items()}
    if step == start:
      run.writer.trace_export("train", step + 1, "train_step")
    step += 1
    if not math.isfinite(metrics["total_loss"]):
      # Every rank sees the same averaged loss, so all stop at this step.
      raise TrainingError(f"non-finite loss {metrics['total_loss']} at step {step}: "
                          "lower --learning-rate or add --warmup-steps")
    for name in ("cross_entropy", "total_loss"):
      averages[name] = 0.9 * averages.get(name, metrics[name]) + 0.1 * metrics[name]
    if step % config.log_every == 0 or step == run.max_steps:
      now = time.time()
      rate = log_timer.steps_per_second(step, now) * global_batch
      eta = (now - started) / (step - start) * (run.max_steps - step)
      _log(ctx, f"step {step}/{run.max_steps} loss {metrics['cross_entropy']:.4f} "
                f"(total {metrics['total_loss']:.4f}) acc {metrics['accuracy']:.3f} "
                f"lr {float(run.schedule(step - 1)):.4g} {rate:.0f} img/s "
                f"({rate / ctx.size:.0f}/worker) elapsed {_format_seconds(now - started)} "
                f"eta {_format_seconds(eta)}")
    if config.summary_every and (step % config.summary_every == 0 or step == start + 1):
      steps_per_second = summary_timer.steps_per_second(step, time.time())
      run.writer.scalars("train", step, dict(
          metrics, cross_entropy_avg=averages["cross_entropy"], total_loss_avg=averages["total_loss"],
          learning_rate=float(run.schedule(step - 1)), step_time=1.0 / steps_per_second,
          images_per_sec=steps_per_second * global_batch,
          images_per_sec_per_worker=steps_per_second * config.batch_size, workers=ctx.size))
    if run.writer.active and config.histogram_every and (
        step % config.histogram_every == 0 or step == start + 1):
      outputs = activations(images)
      run.writer.histograms("train", step, {
          **{f"weights/{v.path}": v.value for v in run.model.trainable_variables},
          **{f"gradients/{v.path}": g for v, g in zip(run.model.trainable_variables, grads)
             if g is not None},
          **{f"activations/{name}": out for name, out in outputs.items()}})
      run.writer.scalars("train", step, {f"sparsity/{name}": tf.math.zero_fraction(outputs[name])
                                         for name in sorted(relu_layers)})
      run.writer.images("train", step, "augmented_inputs", images)
    if step % config.checkpoint_every == 0:
      run.checkpoints.save(step)
    if config.eval_every and has_validation and step % config.eval_every == 0:
      result = run.evaluate("validation")
      run.writer.scalars("eval", step, {"validation_precision_at_1": result["precision_at_1"],
                                        "validation_loss": result["loss"]})
      if patience:
        if result["precision_at_1"] > run.best_precision.numpy():
          run.best_precision.assign(result["precision_at_1"])
          run.best_step.assign(step)
          run.checkpoints.save(step, "best")
        elif step - int(run.best_step.numpy()) >= patience:
          _log(ctx, f"early stopping at step {step}: validation precision@1 "
                    f"{run.best_precision.numpy():.4f} at step {run.best_step.numpy()}, no better since")
          break
  seconds = time.time() - started
  _log(ctx, f"trained {step - start} steps in {seconds:.2f}s "
            f"({(step - start) * global_batch / max(seconds, 1e-9):.0f} img/s)")
  if step % config.checkpoint_every:
    run.checkpoints.save(step)
  best = None
  if patience and run.best_step.numpy() >= 0:
    best = {"precision_at_1": float(run.best_precision.numpy()), "step": int(run.best_step.numpy())}
    run.checkpoints.restore("best")
    run.broadcast()
    _log(ctx, f"restored the best checkpoint (step {best['step']}, validation precision@1 "
              f"{best['precision_at_1']:.4f})")
  return step, best


def run_eval(run, split, trained_step=None, best=None):
  """Evaluates on `split`, prints precision@1 and writes metrics.json (chief)."""
  config, ctx = run.config, run.ctx
  if trained_step is None:
    which = "best" if run.checkpoints.path("best") else "latest"
    path = run.checkpoints.restore(which)
    if not path:
      raise TrainingError(f"no checkpoint in {config.model_dir}: train first")
    run.broadcast()
    _log(ctx, f"evaluating {path}")
  result = run.evaluate(split)
  # `step` is the step of the evaluated weights: the best one after early stopping.
  metrics = dict(result, split=split, step=run.step, dataset=config.dataset, model=config.model,
                 ema_weights=run.ema is not None, workers=ctx.size)
  if trained_step is not None:
    metrics["trained_steps"] = trained_step
  if best:
    metrics["best_validation"] = best
  _log(ctx, f"{split} precision@1 = {result['precision_at_1']:.4f} "
            f"({result['examples']} examples, loss {result['loss']:.4f}, step {run.step}"
            f"{', EMA weights' if run.ema else ''})")
  run.writer.scalars("eval", run.step, {f"{split}_precision_at_1": result["precision_at_1"],
                                        f"{split}_loss": result["loss"]})
  if ctx.is_chief:
    _write_json(os.path.join(config.model_dir, "metrics.json"), metrics)
  return metrics


def run(config, ctx):
  """Runs `config.mode` in this process; returns the final metrics (or None)."""
  _prepare_model_dir(config, ctx)
  r = Run(config, ctx)
  config_dict = dataclasses.asdict(config)
  _log(ctx, "config: " + json.dumps(config_dict, sort_keys=True))
  if ctx.is_chief and config.mode != "eval":  # config.json describes the training run
    tf.io.gfile.makedirs(config.model_dir)
    saved = config_dict | {"workers": ctx.size}
    _write_json(os.path.join(config.model_dir, "config.json"), saved)
    r.writer.config(saved)
  metrics = None
  if config.mode in ("train", "train_and_eval"):
    step, best = train(r)
    if config.mode == "train_and_eval":
      metrics = run_eval(r, config.eval_split, trained_step=step, best=best)
    if config.export and ctx.is_chief:
      export_dir = os.path.join(config.model_dir, "export")
      with r.evaluation_weights():
        export_serving_model(r.model, r.metadata, export_dir)
      _log(ctx, f"exported the serving model to {export_dir}")
  else:
    metrics = run_eval(r, config.eval_split)
  r.writer.close()
  return metrics


def main(dataset, argv=None):
  """Entry point of trainers/<dataset>.py; returns the process exit code."""
  from trainers import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.parse(dataset, sys.argv[1:] if argv is None else argv)
  ctx = distributed.init()
  try:
    run(config, ctx)
  except (TrainingError, input_pipeline.InputError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  return 0
