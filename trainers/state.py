"""Run state that outlives a step: weight averages, checkpoints, early stopping.

Used by the training loop (trainers/train.py) between the model and the model
dir. Each class owns its variables; the checkpoint tracks them, so a resumed
run remembers its averages and its best validation score. Only the chief
writes checkpoints: the same calls do nothing on other ranks.
"""

import atexit
import contextlib
import os
import re
import shutil
import tempfile

import tensorflow as tf


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


class EarlyStopping:
  """Keeps the best evaluation precision and says when to stop.

  Args:
    patience: Steps without a better precision before stopping.
  """

  def __init__(self, patience):
    self.patience = patience
    # Variables, not Python numbers: they go into the checkpoint and the
    # start-up broadcast.
    self.best_precision = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
    self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False)

  @property
  def variables(self):
    """{checkpoint key: variable}; the keys predate this class, so old checkpoints load."""
    return {"best_precision": self.best_precision, "best_step": self.best_step}

  def update(self, step, precision):
    """Records an evaluation; returns (improved, stop)."""
    if precision > self.best_precision.numpy():
      self.best_precision.assign(precision)
      self.best_step.assign(step)
      return True, False
    return False, step - int(self.best_step.numpy()) >= self.patience

  def best(self):
    """{"precision_at_1", "step"} of the best evaluation, or None before the first."""
    if self.best_step.numpy() < 0:
      return None
    return {
      "precision_at_1": float(self.best_precision.numpy()),
      "step": int(self.best_step.numpy()),
    }


class CheckpointError(Exception):
  """A checkpoint that cannot be restored (cut short, damaged); the message is one line."""


class Checkpoints:
  """Latest and best checkpoints in the model dir; only the chief writes.

  `checkpoints/` keeps the last few checkpoints for resuming; `best/` keeps the
  one with the best evaluation precision when the recipe stops early. Each
  directory has TensorFlow's `checkpoint` state file (so tf.train.latest_checkpoint
  reads it), but this class finds, keeps and deletes checkpoints by listing the
  directory: tf.train.CheckpointManager and latest_checkpoint glob the path, so
  a model dir named `runs/a[1]` would never find its own checkpoints and
  `x[ab]` would delete those of `xa`.
  """

  # Objects that checkpoints written before them lack; restoring such a
  # checkpoint leaves them as they are (trainers/preemption.py's input position
  # and dropout seed states).
  OPTIONAL = ("input_position", "seed_states")

  def __init__(self, model_dir, ctx, keep, **objects):
    self._objects = objects
    self._ckpt = tf.train.Checkpoint(**objects)
    self._dirs = {
      "latest": os.path.join(model_dir, "checkpoints"),
      "best": os.path.join(model_dir, "best"),
    }
    self._keep = {"latest": keep, "best": 1}
    self.ctx = ctx  # the chief writes; an elastic job may change it

  def _steps(self, which):
    """Steps of the checkpoints in `which`'s directory, from its listing, oldest first."""
    d = self._dirs[which]
    if not tf.io.gfile.isdir(d):
      return []
    found = (_CHECKPOINT.fullmatch(name) for name in tf.io.gfile.listdir(d))
    return sorted({int(m.group(1)) for m in found if m and m.group(2) == "index"})

  def path(self, which):
    """The prefix of the newest checkpoint of `which` (its state file says which), or None."""
    state = tf.train.get_checkpoint_state(self._dirs[which])  # reads the file; no glob
    return state.model_checkpoint_path if state and state.model_checkpoint_path else None

  def restore(self, which="latest"):
    """Restores `which` if it exists on this rank; returns its path or None."""
    path = None
    try:
      path = self.path(which)
      if path:
        readable = _readable(path)
        self._for(readable).read(readable).assert_existing_objects_matched()
    except Exception as e:  # OpError, IndexError, ValueError, ...: a damaged file
      text = (getattr(e, "message", None) or str(e)).strip().splitlines()
      raise CheckpointError(
        f"{path or self._dirs[which]}: the checkpoint cannot be restored ({text[0] if text else e}): "
        "it is damaged or cut short; delete its files to use an earlier one"
      ) from None
    return path

  def _for(self, path):
    """The checkpoint object to restore `path` with: without the optional objects it lacks."""
    keys = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
    missing = [k for k in self.OPTIONAL if k in self._objects and k not in keys]
    if not missing:
      return self._ckpt
    return tf.train.Checkpoint(**{k: v for k, v in self._objects.items() if k not in missing})

  def save(self, step, which="latest"):
    """Writes the checkpoint of `step`, then keeps only the newest few (chief only)."""
    # Horovod: rank 0 alone writes checkpoints.
    if not self.ctx.is_chief:
      return
    d = self._dirs[which]
    tf.io.gfile.makedirs(d)
    self._ckpt.write(os.path.join(d, f"ckpt-{step}"))
    kept = [s for s in self._steps(which) if s <= step][-self._keep[which] :]
    # The state file first: a crash between the two leaves extra files, never a dangling state.
    state = "".join(f'all_model_checkpoint_paths: "ckpt-{s}"\n' for s in kept)
    tmp = os.path.join(d, "checkpoint.tmp")
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(f'model_checkpoint_path: "ckpt-{step}"\n' + state)
    tf.io.gfile.rename(tmp, os.path.join(d, "checkpoint"), overwrite=True)
    for name in tf.io.gfile.listdir(d):
      m = _CHECKPOINT.fullmatch(name)
      if m and int(m.group(1)) not in kept:
        tf.io.gfile.remove(os.path.join(d, name))


# A checkpoint's files: ckpt-<step>.index and ckpt-<step>.data-<i>-of-<n>.
_CHECKPOINT = re.compile(r"ckpt-(\d+)\.(index|data-\d+-of-\d+)")
_aliases = []


def _readable(prefix):
  """`prefix` as TensorFlow's checkpoint reader takes it literally.

  The reader treats its argument as a glob pattern, so a directory name with
  `[`, `*` or `?` would not match itself. Such a prefix is read through a
  symbolic link of a plain name to its directory (removed at exit).
  """
  if not any(c in prefix for c in "*?[]\\") or "://" in prefix:
    return prefix
  if not _aliases:
    _aliases.append(tempfile.mkdtemp(prefix="checkpoint-alias-"))
    atexit.register(shutil.rmtree, _aliases[0], True)
  alias = os.path.join(_aliases[0], str(len(os.listdir(_aliases[0]))))
  os.symlink(os.path.abspath(os.path.dirname(prefix)), alias)
  return os.path.join(alias, os.path.basename(prefix))
