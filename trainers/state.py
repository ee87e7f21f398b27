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

from trainers import stops


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
  """A checkpoint that cannot be restored (cut short, damaged, another run's); the message is one line."""


class Checkpoints:
  """Latest and best checkpoints in the model dir; only the chief writes.

  `checkpoints/` keeps the last few checkpoints for resuming; `best/` keeps the
  one with the best evaluation precision when the recipe stops early. The
  checkpoints are found by listing each directory: a checkpoint is there when
  its `.index` and every data shard it names are. TensorFlow's `checkpoint`
  state file is still written (tf.train.latest_checkpoint and TensorBoard read
  it) but never read: a lost or stale state file hides nothing. (Besides,
  tf.train.CheckpointManager and latest_checkpoint glob the path, so a model
  dir named `runs/a[1]` would never find its own checkpoints.)

  Restoring takes the newest checkpoint that reads back whole; a damaged one is
  skipped, with one line, and its files are kept. A checkpoint that reads back
  but does not fit this run's variables (another recipe's shapes, a dtype) is
  no reason to go back further: that is an error naming the variable.

  Pruning (`keep`) deletes only checkpoints this process wrote, or older than
  the one it resumed from (the run's own history, as tf.train.CheckpointManager
  prunes the state file's list); a checkpoint newer than where it started that
  it did not write (one skipped as damaged) is never deleted, and is set aside
  (renamed `*.damaged`), not overwritten, when the run writes that step again.
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
    self._written = {"latest": set(), "best": set()}
    self._start = None  # the step of the checkpoint this process resumed from
    self.ctx = ctx  # the chief writes; an elastic job may change it

  def _files(self, which):
    """{step: [file names]} of the ckpt-<step>.* files in `which`'s directory, from its listing."""
    return _files(self._dirs[which])

  def _steps(self, which):
    """Steps of the complete checkpoints (index and every data shard) in `which`, oldest first."""
    return checkpoint_steps(self._dirs[which])

  def path(self, which):
    """The prefix of the newest complete checkpoint of `which` (by listing), or None."""
    steps = self._steps(which)
    return os.path.join(self._dirs[which], f"ckpt-{steps[-1]}") if steps else None

  def restore(self, which="latest"):
    """Restores the newest intact checkpoint of `which` on this rank; returns its path or None.

    A damaged checkpoint (it does not read back) is skipped for the one before
    it, and one line says so. Raises CheckpointError when the newest intact one
    does not fit this run, or when every one is damaged.
    """
    damaged = []
    files = self._files(which)
    for step in sorted(files, reverse=True):
      path = os.path.join(self._dirs[which], f"ckpt-{step}")
      readable = _readable(path)
      # A set without its index or a shard: a write cut short (kill -9), or files deleted.
      names = sorted(files[step])
      why = _damage(readable) if _complete(names) else f"incomplete: only {', '.join(names)}"
      if why:
        damaged.append((path, why))
        continue
      try:
        self._for(readable).read(readable).assert_existing_objects_matched()
      except Exception as e:  # ValueError, AssertionError, OpError: it reads, but does not fit
        raise CheckpointError(f"{path}: {self._mismatch(readable, e)}") from None
      if damaged:
        self.ctx.log(
          f"{damaged[0][0]} is damaged ({damaged[0][1]}): restored {path} instead, the newest "
          f"intact checkpoint{_others(damaged)} (the damaged files are kept)"
        )
      if which == "latest":
        self._start = step
      return path
    if damaged:
      raise CheckpointError(
        f"{damaged[0][0]} is damaged ({damaged[0][1]}){_others(damaged)} and "
        f"{self._dirs[which]} has no intact checkpoint: restore the files from a backup, or "
        "move them away to start from step 0"
      )
    return None

  def _for(self, path):
    """The checkpoint object to restore `path` with: without the optional objects it lacks."""
    keys = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
    missing = [k for k in self.OPTIONAL if k in self._objects and k not in keys]
    if not missing:
      return self._ckpt
    return tf.train.Checkpoint(**{k: v for k, v in self._objects.items() if k not in missing})

  def _mismatch(self, path, error):
    """What of checkpoint `path` does not fit this run's variables, in one line (no advice to delete)."""
    found = _variables(path)
    with tempfile.TemporaryDirectory(prefix="checkpoint-layout-") as tmp:
      expected = _variables(self._for(path).write(os.path.join(tmp, "ckpt")))
    differ = [
      f"{self._variable(k)} is {_describe(found[k])} in it, {_describe(expected[k])} in this run"
      for k in sorted(found.keys() & expected.keys())
      if found[k] != expected[k]
    ]
    only = sorted(k for k in found.keys() - expected.keys())
    lacks = sorted(k for k in expected.keys() - found.keys())
    if only:
      differ.append(f"{len(only)} variable(s) of it are not in this run (e.g. {_name(only[0])})")
    if lacks:
      differ.append(
        f"it lacks {len(lacks)} variable(s) of this run (e.g. {self._variable(lacks[0])})"
      )
    what = "; ".join(differ[:2]) + (f"; and {len(differ) - 2} more" if len(differ) > 2 else "")
    if not what:
      text = (getattr(error, "message", None) or str(error)).strip().splitlines()
      what = text[0] if text else type(error).__name__
    return (
      f"the checkpoint does not match this run's model ({what}): it was written with another "
      "recipe or config; use the config.json it was written with, or pass another --model-dir"
    )

  def _variable(self, key):
    """This run's variable of checkpoint key `key`, by its path (`conv1/kernel`), else the key."""
    obj = self._objects
    for part in _name(key).split("/"):
      if isinstance(obj, dict) and part in obj:
        obj = obj[part]
      elif isinstance(obj, (list, tuple)) and part.isdigit() and int(part) < len(obj):
        obj = obj[int(part)]
      elif not isinstance(obj, (dict, list, tuple)) and hasattr(obj, part):
        obj = getattr(obj, part)
      else:
        return _name(key)
    return getattr(obj, "path", None) or _name(key)

  def save(self, step, which="latest"):
    """Writes the checkpoint of `step`, then prunes to the newest few (chief only).

    A signal during the write waits for its end (trainers/stops.py).
    """
    # Horovod: rank 0 alone writes checkpoints.
    if not self.ctx.is_chief:
      return
    with stops.deferred():
      self._save(step, which)

  def _save(self, step, which):
    d = self._dirs[which]
    tf.io.gfile.makedirs(d)
    files = self._files(which)
    if step in files and step not in self._written[which]:
      # Another process's files of this step (a damaged checkpoint skipped at restore).
      for name in files.pop(step):
        tf.io.gfile.rename(os.path.join(d, name), os.path.join(d, name + ".damaged"), True)
      self.ctx.log(f"{d}/ckpt-{step}: set aside the damaged files as ckpt-{step}.*.damaged")
    self._ckpt.write(os.path.join(d, f"ckpt-{step}"))
    self._written[which].add(step)
    files[step] = []
    ours = [
      s
      for s in files
      if s in self._written[which] or (self._start is not None and s <= self._start)
    ]
    intact = [s for s in self._steps(which) if s in ours]
    kept = intact[-self._keep[which] :]
    # The state file first: a crash between the two leaves extra files, never a dangling state.
    state = "".join(f'all_model_checkpoint_paths: "ckpt-{s}"\n' for s in kept)
    tmp = os.path.join(d, "checkpoint.tmp")
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(f'model_checkpoint_path: "ckpt-{step}"\n' + state)
    tf.io.gfile.rename(tmp, os.path.join(d, "checkpoint"), overwrite=True)
    for s in ours:
      if s not in kept:
        for name in self._files(which).get(s, []):
          tf.io.gfile.remove(os.path.join(d, name))


# A checkpoint's files: ckpt-<step>.index and ckpt-<step>.data-<i>-of-<n>.
_CHECKPOINT = re.compile(r"ckpt-(\d+)\.(index|data-(\d+)-of-(\d+))")


def _files(directory):
  """{step: [file names]} of the ckpt-<step>.* files in `directory`, from its listing."""
  if not tf.io.gfile.isdir(directory):
    return {}
  files = {}
  for name in tf.io.gfile.listdir(directory):
    m = _CHECKPOINT.fullmatch(name)
    if m:
      files.setdefault(int(m.group(1)), []).append(name)
  return files


def checkpoint_steps(directory):
  """Steps of the complete checkpoints in `directory`, oldest first, by listing (not the state file)."""
  return sorted(step for step, names in _files(directory).items() if _complete(names))


def _complete(names):
  """Whether a checkpoint's file names hold its index and all the data shards they name."""
  found = [_CHECKPOINT.fullmatch(n) for n in names]
  shards = [m for m in found if m.group(2) != "index"]
  counts = {int(m.group(4)) for m in shards}
  if len(shards) == len(found) or len(counts) != 1:
    return False
  return {int(m.group(3)) for m in shards} == set(range(counts.pop()))


def _damage(path):
  """Why checkpoint `path` does not read back whole (every tensor, CRCs checked), or None."""
  try:
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except Exception as e:  # OpError (DataLoss, NotFound, ...), ValueError
    text = (getattr(e, "message", None) or str(e)).strip().splitlines()
    return text[0] if text else type(e).__name__
  return None


def _variables(path):
  """{key: (dtype name, shape)} of the variables in checkpoint `path` (not its bookkeeping)."""
  reader = tf.train.load_checkpoint(path)
  dtypes = reader.get_variable_to_dtype_map()
  return {
    name: (dtypes[name].name, tuple(shape))
    for name, shape in reader.get_variable_to_shape_map().items()
    if name != "_CHECKPOINTABLE_OBJECT_GRAPH" and not name.startswith("save_counter")
  }


def _name(key):
  return key.replace("/.ATTRIBUTES/VARIABLE_VALUE", "")


def _describe(variable):
  dtype, shape = variable
  return f"{dtype} {list(shape)}"


def _others(damaged):
  rest = [os.path.basename(p) for p, _ in damaged[1:]]
  return f" (so are {', '.join(rest)})" if rest else ""


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
