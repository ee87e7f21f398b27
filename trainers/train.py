"""The Horovod training loop: the per-process `Run` and `train`, which trains and checkpoints.

Sits between the TFRecords of the Beam job (read by trainers/input_pipeline.py)
and what users keep: checkpoints and TensorBoard summaries in the model dir.
trainers/runner.py (called by the entry scripts through trainers/entry.py)
builds a `Run` from a `config.Config` and calls `train`, then evaluates and
exports.

Read top to bottom: the model, the per-process `Run`, the evaluation of the
loop, the loop (`train`). The compiled step functions and the periodic-work
helper `due` are in trainers/steps.py; what the loop shows (its cadence line,
progress lines and summaries) in trainers/reporting.py; run state that outlives a
step (EMA, checkpoints, early stopping) in trainers/state.py, the model dir
(its config.json, its lock, the start-up checks against the data) in
trainers/run_dir.py.

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
import time

import keras
import tensorflow as tf

from preprocess import augment
from trainers import distributed
from trainers import eval_input
from trainers import input_pipeline
from trainers import preemption
from trainers import reporting
from trainers import run_dir
from trainers import schedule
from trainers import shards
from trainers import state
from trainers import summaries
from trainers.steps import TrainingError
from trainers.steps import call_length
from trainers.steps import due
from trainers.steps import evaluate
from trainers.steps import make_eval_step
from trainers.steps import make_train_loop
from trainers.steps import steps_per_call

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


# --- the run -----------------------------------------------------------------


def _log(ctx, message):
  ctx.log(message)


class Run:
  """Everything one process of a run holds: model, optimizer, input, run state."""

  def __init__(self, config, ctx, metadata=None):
    self.config = config
    self.ctx = ctx
    recipe = config.recipe
    self.metadata = metadata or shards.load_metadata(config.data_dir)
    self.augmentation, self.serving_policy, self.augmentation_source = resolve_augmentation(
      recipe, self.metadata
    )
    # Horovod: a seed per rank, so each draws its own dropout masks.
    keras.utils.set_random_seed(
      config.seed + ctx.rank
    )  # per-rank dropout; weights come from rank 0
    # --precision: layers created from here on compute in it (variables stay float32).
    keras.mixed_precision.set_global_policy(config.precision)
    self.model = create_model(recipe, self.metadata, self.augmentation)
    self.eval_model = make_eval_model(self.model, recipe.eval_output)
    epoch = input_pipeline.steps_per_epoch(self.metadata, "train", recipe.batch_size * ctx.size)
    # The step budget is fixed at start, also when an elastic job changes size.
    self.max_steps = math.ceil(config.epochs * epoch) if config.epochs else recipe.max_steps
    self._resized(ctx)
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
    self.trained_steps = 0  # by this process's `train`; 0: the run was at max_steps already
    self.input_position = preemption.InputPosition()
    objects["input_position"] = self.input_position.variable
    objects["seed_states"] = preemption.seed_states(self.model)
    self.checkpoints = state.Checkpoints(config.model_dir, ctx, config.keep_checkpoints, **objects)
    self.eval_step = make_eval_step(self.eval_model)
    self.writer = summaries.Writer(config.model_dir, ctx)
    self._sharded(ctx)

  def _resized(self, ctx):
    """What follows the number of workers: global batch, epoch length, learning rate."""
    self.ctx = ctx
    # Horovod: the global batch is one per-worker batch per rank.
    self.global_batch = self.config.recipe.batch_size * ctx.size
    self.steps_per_epoch = input_pipeline.steps_per_epoch(self.metadata, "train", self.global_batch)
    self.schedule = schedule.create_learning_rate_fn(
      self.config, ctx.size, self.steps_per_epoch, self.max_steps
    )

  def _sharded(self, ctx):
    # Built once per world, kept in memory when small (trainers/eval_input.py).
    # Horovod: each rank evaluates its own part of a split.
    self.eval_inputs = eval_input.EvalInputs(
      lambda split: self.dataset(split, training=False), self.metadata, rank=ctx.rank, size=ctx.size
    )

  def reform(self, ctx):
    """An elastic job re-formed: takes this process's new rank and world size.

    The learning rate, the global batch and the per-worker sharding of the
    input follow the new size; the chief-only writers follow rank 0.
    """
    self._resized(ctx)
    self.optimizer.learning_rate = self.schedule  # a schedule replaces a schedule
    self._sharded(ctx)
    self.checkpoints.ctx = ctx
    # Horovod: the summary writer follows rank 0 after a re-form.
    if self.writer.active != ctx.is_chief:
      self.writer.close()
      self.writer = summaries.Writer(self.config.model_dir, ctx)

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
      data=run_dir.data_signature(self.metadata, self.config.data_dir),
    )

  def shared_variables(self):
    """The state every rank holds alike: model, optimizer, EMA, early stopping, input position.

    Not the dropout seed generators: each rank draws its own masks.
    """
    variables = [v for v in self.model.variables if "seed_generator" not in v.path]
    variables += list(self.optimizer.variables) + list(self.early_stopping.variables.values())
    variables.append(self.input_position.variable)
    if self.ema:
      variables += self.ema.shadows
    return variables

  def broadcast(self):
    """Horovod: every rank takes rank 0's `shared_variables`."""
    distributed.broadcast_variables(self.shared_variables(), root_rank=0)

  def dataset(self, split, training):
    # A resumed run starts where its input stopped, mid-epoch if need be.
    # Horovod: each rank reads its own part of the split (rank, size).
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


def _evaluate_during_training(run, step, images, labels, elapsed):
  """Evaluates the recipe's split, logs the recipe's line; returns whether to stop."""
  recipe, ctx = run.config.recipe, run.ctx
  # Training accuracy as the recipes print it: this batch, dropout off, current weights.
  batch = evaluate(run.eval_step, [(images, labels)])
  result = run.evaluate(recipe.eval_on, recipe.eval_batches)
  split = recipe.eval_on
  # The split's run: its curves overlay the train run's under the same tags.
  # At the last step the final evaluation of the same split (whole split, the
  # weights the run keeps) writes the point, so the chart has one per step.
  config = run.config
  final_follows = (
    step == run.max_steps
    and config.mode == "train_and_eval"
    and config.eval_split == split
    and not recipe.early_stopping_patience
  )
  if not final_follows:
    run.writer.evaluation(split, step, result, lambda line: _log(ctx, line))
  improved = stop = False
  if recipe.early_stopping_patience:
    improved, stop = run.early_stopping.update(step, result["precision_at_1"])
    if improved:
      run.checkpoints.save(step, "best")
  _log(
    ctx,
    f"step {step}: train accuracy {batch['precision_at_1']:.4f} (batch, dropout off), "
    f"{split} precision@1 {result['precision_at_1']:.4f} ({result['examples']} examples), "
    f"elapsed {reporting.format_seconds(elapsed)}{' improved' if improved else ''}",
  )
  if stop:
    best = run.early_stopping.best()
    _log(
      ctx,
      f"early stopping at step {step}: {split} precision@1 {best['precision_at_1']:.4f} "
      f"at step {best['step']}, no better since",
    )
  return stop


def _restore(run):
  """Restores the latest checkpoint on this rank (unless --overwrite); returns its path or None."""
  with preemption.rank_seeds_kept(run.model):
    restored = None if run.config.overwrite else run.checkpoints.restore("latest")
  run.input_position.resolve(run.step, run.global_batch)
  return restored


def _log_resumed(run, restored):
  if restored or run.step:
    _log(run.ctx, f"resumed from {restored} at step {run.step}")


def _resume(run):
  """Restores the latest checkpoint and takes rank 0's state; returns the step."""
  restored = _restore(run)
  # Horovod: every rank takes rank 0's state (the optimizer's slots exist: built at start-up).
  run.broadcast()
  _log_resumed(run, restored)
  return run.step


def _check_finite(metrics, step, n):
  """Every rank sees the same rank-averaged call means, so all stop here together."""
  if not math.isfinite(metrics["mean_total_loss"]):
    raise TrainingError(
      f"non-finite loss {metrics['mean_total_loss']} in steps "
      f"{step - n + 1}..{step}: lower --learning-rate or warm up longer "
      "(--warmup-epochs)"
    )


def _update_averages(averages, metrics, n):
  """The tutorial's moving averages of the losses (decay 0.9 a step), over the call's mean."""
  for name in ("cross_entropy", "total_loss"):
    decay = 0.9**n
    averages[name] = (
      decay * averages.get(name, metrics["mean_" + name]) + (1 - decay) * metrics["mean_" + name]
    )


def _finish(run, step, preempted, checkpointed):
  """The last checkpoint; then stops a preempted run, or restores the best weights.

  Returns:
    The best evaluation {"precision_at_1", "step"} when the recipe stops early, else None.
  """
  recipe = run.config.recipe
  if preempted or not checkpointed:
    run.checkpoints.save(step)
  if preempted:
    run.writer.close()  # the summaries up to this step, before the process exits
    raise preemption.Preempted(step)
  best = run.early_stopping.best() if recipe.early_stopping_patience else None
  if best and not run.checkpoints.restore("best"):
    # best/ was moved away or emptied: say so, rather than claim its weights.
    _log(run.ctx, f"no best checkpoint in {run.config.model_dir}: using the weights of step {step}")
    return None
  if best:
    # Horovod: every rank takes rank 0's copy of the best checkpoint's weights.
    run.broadcast()
    _log(
      run.ctx,
      f"restored the best checkpoint (step {best['step']}, {recipe.eval_on} precision@1 "
      f"{best['precision_at_1']:.4f})",
    )
  return best


def train(run, outcome=None):
  """Trains to run.max_steps, resuming from the latest checkpoint.

  Under an elastic horovodrun (trainers/distributed.py's `elastic`), the loop
  commits the run's state at the end of each call and goes on with the
  workers there are, whenever one is lost or the discovered hosts change.

  Args:
    run: This process's `Run`.
    outcome: Elastic runs only: the chief's claim on the model dir (None on
      other ranks), which the first state sync brings to every rank.

  Returns:
    (the final step, the best evaluation {"precision_at_1", "step"} when the
    recipe stops early, else None).
  """
  # Horovod: elastic runs commit their state and re-form (trainers/distributed.py).
  if not distributed.elastic():
    return _train(run, _resume(run))
  restored = _restore(run)  # rank 0's state reaches the others in the sync
  # Horovod: the elastic state: every shared variable, and the chief's claim.
  state_ = distributed.ElasticState(run.shared_variables(), outcome=outcome)
  first = True

  def attempt(synced):
    nonlocal first
    if first:
      first = False
      if synced.outcome[0] == "error":
        raise run_dir.RunError(synced.outcome[1])
      _log(run.ctx, f"elastic: state committed every call; world size {run.ctx.size}")
      _log_resumed(run, restored)
    else:
      _reformed(run, distributed.context(), time.time() - synced.interrupted)
    return _train(run, run.step, commit=synced.commit)

  # Horovod: elastic, run attempts until one returns.
  return distributed.run_elastic(attempt, state_)


def _reformed(run, ctx, seconds):
  """After a reset of an elastic job: the new world, and the line that says so.

  `seconds`: from the interruption (a failed collective, or the commit that
  saw the hosts change) to the state synced in the new world.
  """
  before = run.ctx.size
  run.reform(ctx)
  rate = float(run.schedule(run.step))
  _log(
    ctx,
    f"world size {before} -> {ctx.size} at step {run.step}: batch {run.global_batch} global, "
    f"learning rate {rate:.4g}, each worker reads 1/{ctx.size} of the shards; "
    f"re-formed in {seconds:.1f}s",
  )


def _train(run, start, commit=None):
  """The loop from `start`; `commit` (elastic runs) is called after each call."""
  if start >= run.max_steps:
    return start, None  # nothing to train: trainers/runner.py says so, and does no needless work
  k = steps_per_call(run.config, run.max_steps)
  every = reporting.cadences(run, k)
  train_steps = make_train_loop(
    run.model, run.optimizer, run.ema, run.ctx, run.config.fp16_allreduce, run.config.xla
  )
  progress = reporting.Progress(run, start, every["log"])
  written = reporting.Summaries(run, start, every)
  started = time.time()
  # img/s counts the time of the training calls only (not evaluation, checkpoints, summaries).
  training = 0.0
  step = start
  batches = iter(run.dataset("train", training=True))
  # SIGTERM/SIGINT: stop at a step every rank agrees on (trainers/preemption.py).
  stop, preempted = preemption.StopSignal(), False
  with stop.installed():
    while step < run.max_steps:
      n = call_length(step, start, run.max_steps, k)
      call_started = time.time()
      metrics, images, labels, grads = train_steps(batches, tf.constant(n, tf.int64), stop.flag())
      # The one device-to-host transfer of the call.
      metrics = {name: float(v) for name, v in metrics.items()}
      training += time.time() - call_started
      step += n
      run.input_position.advance(n * run.global_batch)
      _check_finite(metrics, step, n)
      _update_averages(written.averages, metrics, n)
      preempted = metrics["stop"] > 0  # the same rank mean everywhere: every rank stops here
      metrics = {name: metrics[name] for name in ("cross_entropy", "total_loss", "accuracy")}
      # Log; summaries (rank 0 writes; the writer does nothing elsewhere). A
      # preempted run's last scalars are written: the step it stopped at.
      progress.maybe_log(step, metrics, training)
      written.write(step, metrics, training, images, grads, preempted, histograms=not preempted)
      if preempted:
        break
      # Checkpoint.
      if due(step, every["checkpoint"]):
        run.checkpoints.save(step)
      # Evaluate (and stop early: this step's histograms too, the run's last).
      if due(step, every["eval"]) and _evaluate_during_training(
        run, step, images, labels, time.time() - started
      ):
        written.write(step, metrics, training, images, grads, final=True)
        break
      # Horovod: elastic commit, keep this step's state; re-form here if hosts were added or removed.
      if commit and step < run.max_steps:
        commit()
  seconds = time.time() - started
  run.trained_steps = step - start
  _log(
    run.ctx,
    f"trained {step - start} steps in {seconds:.2f}s ({training:.2f}s of training steps, "
    f"{(step - start) * run.global_batch / max(training, 1e-9):.0f} img/s)",
  )
  return step, _finish(run, step, preempted, due(step, every["checkpoint"]))
