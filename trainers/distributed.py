"""The one module that imports Horovod.

Everything distributed in the trainers goes through here: process setup (one
process per GPU), gradient averaging, the start-up broadcast, cross-rank means,
and elastic runs (`ElasticState`, `run_elastic`: the state committed in memory
and the job re-formed when workers come and go). The rest of `trainers/`
receives a `Context` (rank and size passed in, never read from a global), so it
runs unchanged as a single process; an elastic job hands the loop a new one
after each re-form.

Keras 3 note: `hvd.DistributedGradientTape` and `hvd.broadcast_variables` fail
on Keras 3 variables (`'Variable' object has no attribute 'ref'`, Horovod issue
4290, not fixed upstream). Keras variables wrap a `tf.Variable` in `.value`, so
this module averages plain gradients with `hvd.grouped_allreduce` and broadcasts
the wrapped `tf.Variable`s.
"""

import dataclasses
import os
import time

from horovod.common.elastic import ObjectState
from horovod.common.elastic import run_fn
from horovod.common.exceptions import HorovodInternalError
from horovod.common.exceptions import HostsUpdatedInterrupt
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
  # Horovod: initialize; rank, size and local rank come from horovodrun.
  hvd.init()
  # A GPU is pinned once per process: after an elastic reset a process keeps
  # its GPU even if its local rank changes (TensorFlow cannot re-pin).
  gpus = tf.config.list_physical_devices("GPU")
  for gpu in gpus:
    # Without memory growth, the first process grabs every GPU's memory.
    tf.config.experimental.set_memory_growth(gpu, True)
  if gpus:
    # Horovod: pin this process to one GPU, its local rank's.
    tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")
  elif tf.test.is_built_with_cuda() and hvd.rank() == 0:
    # The GPU image on a node without a GPU (or without the driver mounted):
    # say so once, instead of leaving users to guess from the step times.
    print("no GPU found: training on the CPU", flush=True)
  return context()


def context():
  """This process's `Context` now (it changes when an elastic job re-forms)."""
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
  # Horovod: one fused allreduce of every gradient per step.
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
  # Horovod: every rank takes the root rank's values.
  hvd.broadcast_variables(_tf_variables(variables), root_rank=root_rank)


def broadcast_object(value, root_rank=0):
  """The root rank's `value` (any picklable object) on every rank, e.g. a start-up outcome."""
  if hvd.size() == 1:
    return value
  # Horovod: the root rank's object, pickled, to every rank.
  return hvd.broadcast_object(value, root_rank=root_rank)


def allreduce_mean(value, name=None):
  """Mean of a scalar or tensor over all ranks (for metrics shown to users)."""
  if hvd.size() == 1:
    return tf.convert_to_tensor(value)
  # Horovod: the mean over ranks.
  return hvd.allreduce(tf.convert_to_tensor(value), op=hvd.Average, name=name)


def allreduce_sum(value, name=None):
  """Sum of a tensor over all ranks (for counts: correct predictions, examples)."""
  if hvd.size() == 1:
    return tf.convert_to_tensor(value)
  # Horovod: the sum over ranks.
  return hvd.allreduce(tf.convert_to_tensor(value), op=hvd.Sum, name=name)


def average_variables(variables):
  """Replaces each variable by its mean over ranks, e.g. batch-norm moving statistics.

  Each rank updates those statistics from its own batches, so without this the
  ranks would evaluate, and rank 0 would checkpoint, different models.
  """
  if variables:
    # Horovod: one fused allreduce of the variables.
    means = hvd.grouped_allreduce(_tf_variables(variables), op=hvd.Average)
    for v, mean in zip(variables, means):
      v.assign(mean)


def barrier():
  """Returns once every rank has called it (e.g. so no rank exits before the chief's checkpoint)."""
  if hvd.size() > 1:
    # Horovod: an allreduce returns only once every rank has joined it.
    hvd.allreduce(tf.constant(0.0), op=hvd.Sum, name="barrier")


# --- elastic Horovod (horovodrun --min-np/--max-np --host-discovery-script) ---


def elastic():
  """Whether horovodrun started this process as part of an elastic job (it sets HOROVOD_ELASTIC)."""
  return os.environ.get("HOROVOD_ELASTIC") == "1"


class ElasticState(ObjectState):
  """The state an elastic job keeps in host memory at each commit, and sends to joining workers.

  Horovod's own `hvd.elastic.TensorFlowState` cannot be used: it broadcasts
  its variables when it is built, a collective that a joining worker would
  run while the others are in their sync (a deadlock), and in eager mode its
  `sync` broadcasts nothing; its Keras classes predate Keras 3 (issue 4290).
  This class goes through the `tf.Variable`s behind the Keras variables, the
  ones `broadcast_variables` sends at start-up: `commit` copies them to host
  memory (and raises `HostsUpdatedInterrupt` on every rank together when the
  discovery script's hosts changed), `restore` puts the copies back after a
  lost worker, `sync` sends rank 0's to every rank after a reset.

  Args:
    variables: Keras or TensorFlow variables (model, optimizer, EMA, ...).
    objects: Picklable values kept the same way (attributes of the state).
  """

  def __init__(self, variables, **objects):
    self._variables = _tf_variables(variables)
    self._keep_values()
    # When the last attempt was interrupted (time.time()), for the re-form line.
    self.interrupted = None
    # Horovod: elastic state, committed in host memory and synced from rank 0.
    super().__init__(bcast_object=broadcast_object, get_rank=hvd.rank, **objects)

  def _keep_values(self):
    self._values = [v.numpy() for v in self._variables]

  def save(self):
    self._keep_values()
    super().save()

  def restore(self):
    for v, value in zip(self._variables, self._values):
      v.assign(value)
    super().restore()

  def sync(self):
    broadcast_variables(self._variables, root_rank=0)
    self._keep_values()
    super().sync()


def _reset():
  """Leaves the old world and joins the new one (the driver's next rendezvous)."""
  # Horovod: elastic reset, leave the old world and join the new one.
  hvd.shutdown()
  hvd.init()


def run_elastic(fn, state):
  """Calls fn(state) until it returns, re-forming the job whenever a worker is lost or hosts change.

  Before each call every rank takes rank 0's state (`ElasticState.sync`); a
  lost worker fails a collective, and then every survivor restores its last
  commit; either way Horovod is restarted with the new world before fn is
  called again. Horovod's `hvd.elastic.run` only recognizes the failure of an
  op named HorovodAllreduce, HorovodAllgather or HorovodBroadcast; the
  grouped allreduce of the gradients inside a tf.function fails with other
  names, so here any TensorFlow error from a Horovod op counts.
  """

  def attempt(state):
    try:
      return fn(state)
    except HorovodInternalError:
      state.interrupted = time.time()
      raise
    except HostsUpdatedInterrupt:
      state.interrupted = time.time()
      # Every rank syncs after every reset: Horovod skips the sync when hosts were
      # only removed, but a worker that joins in the same reset does sync, and the
      # two deadlock (horovod issue 3494; seen in `make cluster-test`).
      raise HostsUpdatedInterrupt(skip_sync=False) from None
    except tf.errors.OpError as e:
      if "Horovod" in (e.message or ""):
        state.interrupted = time.time()
        raise HorovodInternalError(e) from e
      raise

  # Horovod: elastic, retry fn with the workers there are after each reset.
  return run_fn(attempt, _reset)(state)
