"""The one module that imports Horovod.

Everything distributed in the trainers goes through here: process setup (one
process per GPU), gradient averaging, the start-up broadcast and cross-rank
means. The rest of `trainers/` receives a `Context` (rank and size passed in,
never read from a global), so it runs unchanged as a single process.

Keras 3 note: `hvd.DistributedGradientTape` and `hvd.broadcast_variables` fail
on Keras 3 variables (`'Variable' object has no attribute 'ref'`, Horovod issue
4290, not fixed upstream). Keras variables wrap a `tf.Variable` in `.value`, so
this module averages plain gradients with `hvd.grouped_allreduce` and broadcasts
the wrapped `tf.Variable`s.
"""

import dataclasses

import horovod.tensorflow as hvd
import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Context:
  """Where this process sits in the job.

  Attributes:
    rank: Global rank, 0 .. size-1.
    size: Number of worker processes.
    local_rank: Rank on this host; selects the GPU.
  """

  rank: int
  size: int
  local_rank: int

  @property
  def is_chief(self):
    """Rank 0 does all chief-only work: summaries, checkpoints, exports."""
    return self.rank == 0

  def chief(self, fn, *args, **kwargs):
    """Calls fn(*args, **kwargs) on the chief and returns its result; None on other ranks.

    The one place a chief-only side effect is decided (the log, config.json,
    metrics.json, the export, the model dir's lock); the other chief-only
    writers, summaries.Writer and state.Checkpoints, do nothing elsewhere.
    """
    return fn(*args, **kwargs) if self.is_chief else None

  def log(self, message, file=None):
    """Prints a line of the run's log once, on the chief (every rank computes the same)."""
    self.chief(print, message, file=file, flush=True)


def init():
  """Starts Horovod and pins this process to its local-rank GPU.

  Returns:
    The `Context` of this process. Works the same without `horovodrun`
    (a single process of rank 0, size 1).
  """
  hvd.init()
  gpus = tf.config.list_physical_devices("GPU")
  for gpu in gpus:
    # Without memory growth, the first process grabs every GPU's memory.
    tf.config.experimental.set_memory_growth(gpu, True)
  if gpus:
    tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")
  return Context(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank())


def _tf_variables(variables):
  """The tf.Variables behind Keras 3 variables (see the module docstring).

  Plain tf.Variables pass through (their `.value` is a method, not a variable).
  """
  return [v.value if isinstance(v, keras.Variable) else v for v in variables]


def average_gradients(grads, compression=False):
  """Averages gradients over all ranks, one fused collective per step.

  Args:
    grads: List of gradient tensors (None entries are passed through).
    compression: If True, send float32 gradients as float16 and cast back.

  Returns:
    The averaged gradients, in the same order.
  """
  if hvd.size() == 1:
    # One process: the mean is the value; skipping Horovod's background
    # thread saves a round trip per step (what `model.fit` does not pay).
    return list(grads)
  present = [i for i, g in enumerate(grads) if g is not None]
  compressor = hvd.Compression.fp16 if compression else hvd.Compression.none
  compressed, contexts = (
    zip(*[compressor.compress(grads[i]) for i in present]) if present else ((), ())
  )
  reduced = hvd.grouped_allreduce(list(compressed), op=hvd.Average) if present else []
  out = list(grads)
  for i, r, ctx in zip(present, reduced, contexts):
    out[i] = compressor.decompress(r, ctx)
  return out


def broadcast_variables(variables, root_rank=0):
  """Overwrites `variables` on every rank with the root rank's values.

  The trainer calls it at start-up, after `optimizer.build(...)` has created
  the optimizer's slots (so they are broadcast too), and again after restoring
  the best checkpoint. Horovod's examples call it after the first step instead,
  because there the slots only exist once gradients have been applied.
  """
  hvd.broadcast_variables(_tf_variables(variables), root_rank=root_rank)


def broadcast_object(value, root_rank=0):
  """The root rank's `value` (any picklable object) on every rank, e.g. a start-up outcome."""
  if hvd.size() == 1:
    return value
  return hvd.broadcast_object(value, root_rank=root_rank)


def allreduce_mean(value, name=None):
  """Mean of a scalar or tensor over all ranks (for metrics shown to users)."""
  if hvd.size() == 1:
    return tf.convert_to_tensor(value)
  return hvd.allreduce(tf.convert_to_tensor(value), op=hvd.Average, name=name)


def allreduce_sum(value, name=None):
  """Sum of a tensor over all ranks (for counts: correct predictions, examples)."""
  if hvd.size() == 1:
    return tf.convert_to_tensor(value)
  return hvd.allreduce(tf.convert_to_tensor(value), op=hvd.Sum, name=name)


def average_variables(variables):
  """Replaces each variable by its mean over ranks, e.g. batch-norm moving statistics.

  Each rank updates those statistics from its own batches, so without this the
  ranks would evaluate, and rank 0 would checkpoint, different models.
  """
  if variables:
    means = hvd.grouped_allreduce(_tf_variables(variables), op=hvd.Average)
    for v, mean in zip(variables, means):
      v.assign(mean)


def barrier():
  """Returns once every rank has called it (e.g. so no rank exits before the chief's checkpoint)."""
  if hvd.size() > 1:
    hvd.allreduce(tf.constant(0.0), op=hvd.Sum, name="barrier")
