"""Stopping a run at any step and resuming it exactly: input position, stop signals, determinism.

Sits beside the training loop (trainers/train.py). `InputPosition` is the one
number the checkpoint needs, besides the model and optimizer, for a resumed run
to see the batches an uninterrupted one would: the examples of the training
stream consumed so far (trainers/input_pipeline.py turns it into an epoch and
an offset). `StopSignal` turns SIGTERM and SIGINT (what Kubernetes and Ctrl-C
send) into a flag that the loop folds into the allreduce it already does once
per call, so every rank agrees to stop after the same step; the chief then
writes a checkpoint of that step and every process exits with `EXIT_PREEMPTED`,
which launchers and Kubernetes Jobs see as a failure to retry. Outside the
loop (start-up, the final evaluation, --mode eval and export) trainers/stops.py
handles the same signals, with the same status. With
`--deterministic` (TensorFlow's op determinism) a resumed run's final weights
equal an uninterrupted run's bitwise.

Horovod is not imported here (trainers/distributed.py owns it).
"""

import contextlib
import os
import signal

import numpy as np
import tensorflow as tf

# EX_TEMPFAIL of sysexits.h: a temporary failure, the run should be retried.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped on a signal at `step`, its checkpoint written (by the chief)."""

  def __init__(self, step):
    super().__init__(f"preempted at step {step}; checkpoint written")
    self.step = step


def set_determinism(enabled):
  """--deterministic: TensorFlow's op determinism (same inputs, same bits, on every op).

  Costs some speed on GPUs (slower deterministic kernels); on CPU little. The
  run seed is already set (train.Run), which op determinism requires.
  """
  if enabled:
    tf.config.experimental.enable_op_determinism()


class InputPosition:
  """Examples of the training stream consumed by all ranks together; saved in checkpoints.

  Global rather than per rank, so that it also means something when the
  number of workers changes: each of `size` ranks has consumed position //
  size examples of its own stream (exact while the number of workers stays).
  """

  def __init__(self):
    # -1 until `resolve`: a checkpoint written before this variable existed
    # leaves it there, and the position is then taken from the step.
    self.variable = tf.Variable(-1, dtype=tf.int64, trainable=False, name="input_position")

  def resolve(self, step, global_batch):
    """After a restore: a checkpoint without the position is at step x global batch."""
    if int(self.variable.numpy()) < 0:
      self.variable.assign(step * global_batch)

  def advance(self, examples):
    self.variable.assign_add(examples)

  def per_rank(self, size):
    """Examples of one rank's stream consumed so far (make_dataset's `position`)."""
    return int(self.variable.numpy()) // size


def _seed_states(model):
  return [v for v in model.variables if "seed_generator" in v.path]


def seed_states(model):
  """What checkpoints track of the model's random state (dropout's seed generators).

  Keras does not checkpoint a seed generator's state; without it a resumed
  run would draw the masks of step 0 again.
  """
  module = tf.Module(name="seed_states")
  # Keras 3 variables wrap the tf.Variable that checkpoints can track.
  module.states = [v.value for v in _seed_states(model)]
  return module


@contextlib.contextmanager
def rank_seeds_kept(model):
  """Within the block a checkpoint is restored; this rank keeps its own dropout seeds.

  A Keras seed generator's state is [seed, count]. Each rank draws its own
  dropout masks (seeded with seed + rank), but only the chief's state is in
  the checkpoint; so every rank takes the restored count (the same on all) and
  keeps its own seed, as an uninterrupted run would have.
  """
  generators = _seed_states(model)
  seeds = [v.numpy()[0] for v in generators]
  yield
  for v, seed in zip(generators, seeds):
    v.assign(np.array([seed, v.numpy()[1]], v.numpy().dtype))


class StopSignal:
  """SIGTERM and SIGINT set a flag instead of ending the process; a second signal ends it.

  The second signal goes to the handler that was there before: trainers/stops.py's
  in a trainer process (one line, status 75, without a checkpoint of this step;
  a third ends the process at once).

  The loop passes `flag()` into each call of its tf.function, which adds it
  to the per-call metric allreduce: a signal caught during a call stops the
  run at the end of the next one, on every rank at the same step. Signals
  reach Python only between calls (the interpreter runs handlers then), so
  the stop comes within two calls (2 x --steps-per-call steps) of the signal.
  """

  def __init__(self, signals=STOP_SIGNALS):
    self._signals = signals
    self._previous = {}
    self.received = None

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      # A second signal: the user insists; act as if we had not been here.
      self.uninstall()
      os.kill(os.getpid(), signum)
      return
    self.received = signum
    print(
      f"received {signal.Signals(signum).name}: stopping after the current steps",
      flush=True,
    )

  def flag(self):
    """1.0 once a signal has arrived on this process, else 0.0 (a float32 scalar tensor)."""
    return tf.constant(0.0 if self.received is None else 1.0, tf.float32)

  def install(self):
    for s in self._signals:
      self._previous[s] = signal.signal(s, self._handle)

  def uninstall(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  @contextlib.contextmanager
  def installed(self):
    """Within the block the signals set the flag (signal handlers need the main thread)."""
    self.install()
    try:
      yield self
    finally:
      self.uninstall()
