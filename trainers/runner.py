"""The entry of a training process: claim the model dir, run the mode, evaluate, export.

Sits at the top of the trainer: trainers/entry.py (behind the entry scripts
trainers/cifar10.py, mnist.py, catdog.py) parses a `config.Config` and calls
`main`, which starts Horovod and calls `run`. `run` holds the model dir
(trainers/run_dir.py), checks the data (trainers/input_pipeline.py), builds the
per-process `train.Run`, trains (`train.train`), evaluates the final weights
into metrics.json (`run_eval`) and exports the serving model (trainers/export.py).
"""

import contextlib
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
from trainers import tags
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
  run.broadcast()
  return path


def run_eval(run, split, trained_step=None, best=None):
  """Evaluates on `split`, prints precision@1 and writes metrics.json (chief)."""
  config, ctx = run.config, run.ctx
  if trained_step is None:
    _log(ctx, f"evaluating {_restore_trained(run)}")
  else:  # the final evaluation: a line before the wait, as --mode eval's
    _log(ctx, f"evaluating the weights of step {run.step} on the {split} split")
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
  ctx.chief(run_dir.write_json, os.path.join(config.model_dir, run_dir.METRICS), metrics)
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
    damaged = shards.find_damaged_shard(run.config.data_dir, run.metadata, splits)
    if damaged:
      raise shards.InputError(damaged) from None
    raise


@contextlib.contextmanager
def _claimed_model_dir(config, ctx, metadata, elastic=False):
  """Holds the model dir for the block (trainers/run_dir.py); yields the chief's outcome.

  Only the chief locks, and checks the run against its data (`run_dir.check_data`);
  every rank learns its outcome, so when the chief cannot claim the directory
  every rank stops at once instead of waiting in the first collective. The
  outcome is ("ok", the config.json held) or ("error", the line). An elastic
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
      run_dir.check_data(config, metadata, previous)
    except run_dir.RunError as e:
      lock.release()
      return None, ("error", str(e))
    return lock, ("ok", previous)

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


def _record_config(r):
  """Writes config.json (it describes the training run) and its summaries (called on the chief)."""
  saved = r.config_json()
  run_dir.write_json(run_dir.config_path(r.config.model_dir), saved)
  r.writer.config(saved, r.max_steps)
  r.writer.graph(r.model)


def run(config, ctx, overrides=None):
  """Runs `config.mode` in this process, holding the model dir; returns the final metrics (or None).

  Args:
    config: The run's `config.Config`.
    ctx: This process's `distributed.Context`.
    overrides: The line naming the flags that override the run's config.json, or None.
  """
  training = config.mode in run_dir.TRAIN_MODES
  # Elastic (horovodrun --min-np/--max-np): training re-forms the job when workers come and go.
  elastic = training and distributed.elastic()
  metadata = shards.load_metadata(config.data_dir)
  with _claimed_model_dir(config, ctx, metadata, elastic) as outcome:
    claimed = outcome is None or outcome[0] == "ok"  # None: not the chief of an elastic run
    previous = outcome[1] if outcome and claimed else None
    shards.check_first_records(config.data_dir, metadata)
    preemption.set_determinism(config.deterministic)
    r = Run(config, ctx, metadata)
    if claimed:
      _log_start(r, previous, overrides)
      if training:
        ctx.chief(_record_config, r)
    metrics = None
    export_dir = os.path.join(config.model_dir, run_dir.EXPORT)
    if training:
      kept = "the last checkpoint written stands: rerun to resume"
      with stops.phase("training", kept), _read_errors(r, ("train", config.recipe.eval_on)):
        step, best = train(r, outcome if elastic else None)
      done = f"trained to step {step}, its checkpoint written"
      if config.mode == "train_and_eval":
        rest = " and the export" if config.export else ""
        kept = (
          f"{done}; metrics.json{rest} not written: rerun to evaluate{rest.replace('the ', '')}"
        )
        with stops.phase("the final evaluation", kept), _read_errors(r, (config.eval_split,)):
          metrics = run_eval(r, config.eval_split, trained_step=step, best=best)
      if config.export:
        kept = f"{done}; {export_dir} is as it was: rerun with --mode export"
        with stops.phase("the export", kept):
          r.ctx.chief(_export, r)
    elif config.mode == "export":
      with stops.phase("the export", f"{export_dir} is as it was"):
        _log(ctx, f"exporting {_restore_trained(r)}")
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
    ctx = distributed.init()
  except stops.Stopped as e:
    print(e, flush=True)
    return stops.EXIT_STOPPED
  try:
    run(config, ctx, overrides)
  except stops.Stopped as e:
    # A stop signal outside the loop (trainers/stops.py): each process that got it says so.
    print(e, flush=True)
    return stops.EXIT_STOPPED
  except preemption.Preempted as e:
    ctx = distributed.context()  # an elastic job may have re-formed since init
    # The chief says so after writing; the others once it has (the barrier).
    ctx.log(e)
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
    # What is left is the environment's (a full disk, a read-only model dir):
    # TensorFlow's and the OS's messages name the file; one line of it is enough.
    print(f"error: {first_line(e)}", file=sys.stderr, flush=True)
    return 1
  return 0
