"""TensorBoard summaries of a run, written by rank 0 only.

The training loop calls a `Writer` on every rank; on ranks other than 0 it does
nothing, so the loop has no rank checks and TensorBoard shows one curve per run.
Train and eval summaries go to `train/` and `eval/` under the model dir so their
curves overlay.
"""

import os

import tensorflow as tf


class Writer:
  """Chief-only summary writer (a no-op on other ranks)."""

  def __init__(self, model_dir, ctx):
    self._writers = {}
    self._model_dir = model_dir
    self._active = ctx.is_chief

  def _writer(self, kind):
    if kind not in self._writers:
      self._writers[kind] = tf.summary.create_file_writer(os.path.join(self._model_dir, kind))
    return self._writers[kind]

  def scalars(self, kind, step, values):
    """Writes {name: number} under `kind` ("train" or "eval") at `step`."""
    if not self._active:
      return
    with self._writer(kind).as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)

  def close(self):
    for w in self._writers.values():
      w.close()
