"""The entry of a training process: claim the model dir, run the mode, evaluate, export.

Sits at the top of the trainer: trainers/entry.py (behind the entry scripts
trainers/cifar10.py, mnist.py, catdog.py) parses a `config.Config` and calls
`main`, which starts Horovod and calls `run`. `run` holds the model dir
(trainers/run_dir.py), checks the data (trainers/input_pipeline.py), builds the
per-process `train.Run`, trains (`train.train`), evaluates the final weights
into metrics.json (`run_eval`) and exports the serving model (trainers/export.py).
"""

import contextlib
import json
import os
import sys

import numpy as np
import tensorflow as tf

from preprocess.errors import first_line
from trainers import distributed
from trainers import export
from trainers import preemption
from trainers import run_dir
from trainers import schedule
from trainers import shards
from trainers import state
from trainers import stops
from trainers.steps import TrainingError
from trainers.train import Run
from trainers.train import _log
from trainers.train import train


def _restore_trained(run):
  """Restores the checkpoint that eval and export use (the best one, if kept); returns its path."""
  which = "best" if run.checkpoints.path("best") else "latest"
  path = run.checkpoints.restore(which)
  if not path:
    raise TrainingError(f"no checkpoint in {run.config.model_dir}: train first")
  # Horovod: every rank evaluates and exports rank 0's restored weights.
  run.broadcast()
  return path


def _with_splits(path, metrics):
  """metrics.json's content: the latest evaluation, and under "splits" the latest of each split.

  The top level stays the last evaluation (the shape older readers know); the
  "splits" entry keeps one evaluation per split, so evaluating the training
  split does not lose the test figure. An older or unreadable file starts it
  afresh from what it holds.
  """
  splits = {}
  try:
    with tf.io.gfile.GFile(path) as f:
      previous = json.load(f)
    if isinstance(previous, dict):
      splits = previous.get("splits") or (
        {previous["split"]: previous} if isinstance(previous.get("split"), str) else {}
      )
  except (tf.errors.OpError, ValueError, OSError):
    pass  # none yet, or not JSON: this evaluation starts the record
  splits = {name: entry for name, entry in splits.items() if isinstance(entry, dict)}
  splits[metrics["split"]] = metrics
  return dict(metrics, splits=dict(sorted(splits.items())))


def _weights(run):
  return "EMA weights" if run.ema else "raw weights (no EMA)"


def run_eval(run, split, trained_step=None, best=None):
  """Evaluates on `split`, prints precision@1 and writes metrics.json (chief).

  TensorBoard gets the point under the split's run (`tags.eval_run`: the
  training split's is `eval_train/`), once per step of the evaluated weights.
  """
  config, ctx = run.config, run.ctx
  if trained_step is None:
    path = _restore_trained(run)
    splits = run.metadata.splits
    examples = f"{splits[split].num_examples:,} examples, " if split in splits else ""
    _log(
      ctx,
      f"evaluating {path} (step {run.step}) on the {split} split ({examples}"
      f"{_weights(run)}) on {ctx.size} worker(s)",
    )
  else:  # the final evaluation: a line before the wait, as --mode eval's
    _log(ctx, f"evaluating the weights of step {run.step} on the {split} split ({_weights(run)})")
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
  run.writer.evaluation(split, run.step, result, lambda line: _log(ctx, line))
  # Horovod: rank 0 alone writes metrics.json (every rank computed the same).
  path = os.path.join(config.model_dir, run_dir.METRICS)
  ctx.chief(lambda: run_dir.write_json(path, _with_splits(path, metrics)))
  return metrics


def _model_summary(model):
  """The model's layers, output shapes and parameters, as plain lines (Keras's table is
  drawn with box characters cut to the terminal's width)."""
  rows = [("layer (type)", "output shape", "parameters")]
  for layer in model.layers:
    shape = getattr(layer, "output", None)
    shape = str(tuple(shape.shape)) if shape is not None and hasattr(shape, "shape") else "?"
    rows.append((f"{layer.name} ({type(layer).__name__})", shape, f"{layer.count_params():,}"))
  name_width = max(len(r[0]) for r in rows) + 2
  shape_width = max(len(r[1]) for r in rows) + 2
  lines = [f"  {a:<{name_width}}{b:<{shape_width}}{c:>12}" for a, b, c in rows]
  return f"model {model.name}:\n" + "\n".join(lines)


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
  if not training:
    return  # eval and export say what they do once they hold the checkpoint (run_eval, run)
  _log(ctx, _model_summary(run.model))
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
    damaged = shards.find_damaged_shard(run.config.data_dir, run.metadata, splits)
    if damaged:
      raise shards.InputError(damaged) from None
    raise


@contextlib.contextmanager
def _claimed_model_dir(config, ctx, metadata, elastic=False, recorded=False):
  """Holds the model dir for the block (trainers/run_dir.py); yields the chief's outcome.

  Only the chief locks, and checks the run against its data (`run_dir.check_data`);
  every rank learns its outcome, so when the chief cannot claim the directory
  every rank stops at once instead of waiting in the first collective. The
  outcome is ("ok", the config.json held, a line about the data or None) or
  ("error", the line). An elastic
  run has no collective before its first state sync (a joining worker would
  run it while the others sync, a deadlock): there the chief's outcome travels
  in that sync (`train.train`), and other ranks get None here.
  """

  def claim():
    try:
      owner = f"trainers/{config.dataset}.py --mode {config.mode}"
      lock, previous = run_dir.claim(config, owner, log=lambda line: _log(ctx, line))
    except run_dir.RunError as e:
      return None, ("error", str(e))
    try:
      # Data that config.json records is the run's own: nothing to check it against.
      note = None if recorded else run_dir.check_data(config, metadata, previous)
    except run_dir.RunError as e:
      lock.release()
      return None, ("error", str(e))
    return lock, ("ok", previous, note)

  # Horovod: rank 0 alone locks and checks the model dir.
  lock, outcome = ctx.chief(claim) or (None, None)
  if not elastic:
    outcome = distributed.broadcast_object(outcome)  # Horovod: the chief's outcome
    if outcome[0] == "error":
      raise run_dir.RunError(outcome[1])
  try:
    yield outcome
  finally:
    if lock:
      lock.release()


def _export(r):
  """Writes the serving model of the weights the run evaluates (called on the chief)."""
  export_dir = os.path.join(r.config.model_dir, run_dir.EXPORT)
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


def _load_data(config):
  """(metadata, whether it is config.json's record): --mode export needs no data dir.

  An export takes the image shape, classes and augmentation from the run's
  config.json when it records them; every other mode reads and checks the data.
  """
  if config.mode == "export":
    try:
      saved = run_dir.read_config(config.model_dir, training=False)
    except run_dir.RunError:
      saved = None  # `claim` says what is wrong with it
    recorded = run_dir.metadata_from_config(saved, config.dataset)
    if recorded is not None:
      return recorded, True
    if saved is not None and not tf.io.gfile.exists(config.data_dir):
      raise shards.InputError(
        f"{run_dir.config_path(config.model_dir)} does not record the data's shape, classes and "
        f"augmentation (written by an earlier version), and --data-dir {config.data_dir} does "
        "not exist: pass the --data-dir the run was trained on"
      )
  return shards.load_metadata(config.data_dir, dataset=config.dataset), False


def _newest_mtime(gfile, directory):
  """The newest modification time (ns) of the files directly in `directory`, or 0."""
  if not gfile.isdir(directory):
    return 0
  return max(
    (gfile.stat(os.path.join(directory, n)).mtime_nsec for n in gfile.listdir(directory)), default=0
  )


def _already_done(r):
  """(evaluated, exported): whether metrics.json and export/ already hold the run's current step.

  For a run that had nothing to train: the final evaluation is done when
  metrics.json records the eval split at this step; the export, when it is
  newer than every checkpoint.
  """
  config, gfile = r.config, tf.io.gfile
  path = os.path.join(config.model_dir, run_dir.METRICS)
  entries = []
  if gfile.exists(path) and not gfile.isdir(path):
    with contextlib.suppress(ValueError, tf.errors.OpError):
      with gfile.GFile(path, "rb") as f:
        data = json.loads(f.read())
      entries = [data] + [v for v in data.values() if isinstance(v, dict)]
  evaluated = any(
    e.get("split") == config.eval_split and e.get("trained_steps", e.get("step")) == r.step
    for e in entries
  )
  model = os.path.join(config.model_dir, run_dir.EXPORT, "saved_model.pb")
  newest = max(
    _newest_mtime(gfile, os.path.join(config.model_dir, name)) for name in ("checkpoints", "best")
  )
  exported = gfile.exists(model) and gfile.stat(model).mtime_nsec >= newest
  return evaluated, exported


def _nothing_trained(r):
  """A run already at --max-steps: one line; evaluates and exports only what it lacks."""
  config = r.config
  # Horovod: the chief decides, so every rank evaluates (a collective) or none does.
  evaluated, exported = distributed.broadcast_object(r.ctx.chief(_already_done, r))
  todo = [
    what
    for what, wanted in (
      (f"evaluating it on {config.eval_split}", config.mode == "train_and_eval" and not evaluated),
      ("exporting it", config.export and not exported),
    )
    if wanted
  ]
  _log(
    r.ctx,
    f"nothing to train: {config.model_dir} is at step {r.step} and --max-steps is "
    f"{r.max_steps}; "
    + (
      " and ".join(todo) + ", which that step lacks"
      if todo
      else "nothing else to do (--mode eval or --mode export evaluates or exports it again)"
    ),
  )
  metrics, step = None, r.step
  if todo:
    _log(r.ctx, f"restored {_restore_trained(r)}")  # the best checkpoint, if one was kept
  if config.mode == "train_and_eval" and not evaluated:
    with _read_errors(r, (config.eval_split,)):
      metrics = run_eval(r, config.eval_split, trained_step=step)
  if config.export and not exported:
    r.ctx.chief(_export, r)
  return metrics


def _record_config(r):
  """Writes config.json (it describes the training run) and its summaries (called on the chief)."""
  saved = r.config_json()
  run_dir.write_json(run_dir.config_path(r.config.model_dir), saved)
  r.writer.config(saved, r.max_steps, elastic=distributed.elastic())
  r.writer.graph(r.model)


def run(config, ctx, overrides=None):
  """Runs `config.mode` in this process, holding the model dir; returns the final metrics (or None).

  Args:
    config: The run's `config.Config`.
    ctx: This process's `distributed.Context`.
    overrides: The line naming the flags that override the run's config.json, or None.
  """
  training = config.mode in run_dir.TRAIN_MODES
  # Horovod: elastic (horovodrun --min-np/--max-np) training re-forms the job as workers come and go.
  elastic = training and distributed.elastic()
  metadata, recorded = _load_data(config)
  with _claimed_model_dir(config, ctx, metadata, elastic, recorded) as outcome:
    claimed = outcome is None or outcome[0] == "ok"  # None: not the chief of an elastic run
    previous = outcome[1] if outcome and claimed else None
    if not recorded:
      shards.check_first_records(config.data_dir, metadata)
    preemption.set_determinism(config.deterministic)
    r = Run(config, ctx, metadata)
    if claimed:
      _log_start(r, previous, overrides)
      if outcome and outcome[2:] and outcome[2]:  # the data, against what the run was trained on
        _log(ctx, outcome[2])
      if training:
        # Horovod: rank 0 alone writes config.json.
        ctx.chief(_record_config, r)
    metrics = None
    export_dir = os.path.join(config.model_dir, run_dir.EXPORT)
    if training:
      kept = "the last checkpoint written stands: rerun to resume"
      with stops.phase("training", kept), _read_errors(r, ("train", config.recipe.eval_on)):
        step, best = train(r, outcome if elastic else None)
      done = f"trained to step {step}, its checkpoint written"
      if not r.trained_steps:
        kept = f"the run stands at step {step}: rerun to evaluate or export what it lacks"
        with stops.phase("the evaluation and export", kept):
          metrics = _nothing_trained(r)
      elif config.mode == "train_and_eval":
        rest = " and the export" if config.export else ""
        kept = (
          f"{done}; metrics.json{rest} not written: rerun to evaluate{rest.replace('the ', '')}"
        )
        with stops.phase("the final evaluation", kept), _read_errors(r, (config.eval_split,)):
          metrics = run_eval(r, config.eval_split, trained_step=step, best=best)
      if config.export and r.trained_steps:
        kept = f"{done}; {export_dir} is as it was: rerun with --mode export"
        with stops.phase("the export", kept):
          # Horovod: rank 0 alone exports.
          r.ctx.chief(_export, r)
    elif config.mode == "export":
      with stops.phase("the export", f"{export_dir} is as it was"):
        _log(ctx, f"exporting {_restore_trained(r)} (step {r.step}, {_weights(r)})")
        # Horovod: rank 0 alone exports.
        ctx.chief(_export, r)
    else:
      kept = f"{os.path.join(config.model_dir, run_dir.METRICS)} is as it was"
      with stops.phase("the evaluation", kept), _read_errors(r, (config.eval_split,)):
        metrics = run_eval(r, config.eval_split)
    r.writer.close()
  return metrics


def main(dataset, argv=None, config=None, overrides=None):
  """Runs trainers/<dataset>.py with `config` (or the flags in `argv`); returns the exit code.

  trainers/entry.py parses the flags before importing this module and passes
  `config` and `overrides` (the line naming the flags that override the run's config.json).
  """
  if config is None:
    from trainers import config as config_lib

    config, overrides = config_lib.resolve(dataset, sys.argv[1:] if argv is None else argv)
  try:
    # Horovod: initialize and pin this process to its GPU.
    ctx = distributed.init()
  except stops.Stopped as e:
    print(e, flush=True)
    return stops.EXIT_STOPPED
  try:
    return _run_and_report(config, ctx, overrides)
  except BaseException:
    # A stop signal outside the loop (trainers/stops.py): each process that got it says
    # so, whatever error the signal surfaced as (a collective a stopped peer broke).
    stopped = stops.pending()
    if stopped is None:
      raise
    print(stopped, flush=True)
    return stops.EXIT_STOPPED


def _run_and_report(config, ctx, overrides):
  """`run`, its errors turned into one line and an exit code (a stop signal's: `main`)."""
  try:
    run(config, ctx, overrides)
  except preemption.Preempted as e:
    ctx = distributed.context()  # an elastic job may have re-formed since init
    # The chief says so after writing; the others once it has (the barrier).
    ctx.log(e)
    # Horovod: no rank exits before the chief's checkpoint is written.
    distributed.barrier()
    if not ctx.is_chief:
      print(e, flush=True)
    return preemption.EXIT_PREEMPTED
  except run_dir.RunError as e:
    ctx.log(f"error: {e}", file=sys.stderr)  # every rank stops; one says why
    return 2
  except (TrainingError, shards.InputError, state.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  except (tf.errors.OpError, OSError) as e:
    if stops.pending():
      raise  # the stop signal is the cause: `main` says so
    # What is left is the environment's (a full disk, a read-only model dir):
    # TensorFlow's and the OS's messages name the file; one line of it is enough.
    print(f"error: {first_line(e)}", file=sys.stderr, flush=True)
    return 1
  return 0
