"""TensorBoard summaries of a run, written by rank 0 only.

The training loop calls a `Writer` on every rank; on ranks other than 0 it does
nothing, so the loop has no rank checks and TensorBoard shows one run, not one
per worker. Train and eval summaries go to `train/` and `eval/` under the model
dir so their curves overlay; the HParams record (the run's configuration and
which metrics to show beside it) goes to the model dir itself.

What the loop writes (see trainers/train.py): scalars (losses and their moving
averages, learning rate, accuracy, precision@1, images/sec, step time, number
of workers), histograms of every weight, gradient and layer activation with the
ReLU sparsity of each activation (as the CIFAR-10 tutorial's
`_activation_summary`), a few augmented input images, the graph of the training
step, the config as text, and HParams.
"""

import json
import os

from tensorboard.plugins.hparams import api as hp
import tensorflow as tf

# Metrics the HParams dashboard shows beside each run's configuration:
# (tag, subdirectory that holds it).
HPARAM_METRICS = (
  ("test_precision_at_1", "eval"),
  ("validation_precision_at_1", "eval"),
  ("cross_entropy", "train"),
  ("accuracy", "train"),
)


class Writer:
  """Chief-only summary writer: every method is a no-op on other ranks."""

  def __init__(self, model_dir, ctx):
    self._model_dir = model_dir
    self._active = ctx.is_chief
    self._writers = {}

  @property
  def active(self):
    return self._active

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

  def histograms(self, kind, step, values):
    """Writes {name: tensor} histograms under `kind` at `step`."""
    if not self._active:
      return
    with self._writer(kind).as_default(step=step):
      for name, value in values.items():
        tf.summary.histogram(name, value)

  def images(self, kind, step, name, images, max_outputs=6):
    """Writes a few images; each is rescaled to [0, 1] on its own for viewing.

    Training inputs are standardized (zero mean, unit variance per image), so
    they are stretched back to the displayable range here.
    """
    if not self._active:
      return
    images = tf.convert_to_tensor(images[:max_outputs], tf.float32)
    low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    viewable = (images - low) / tf.maximum(high - low, 1e-6)
    with self._writer(kind).as_default(step=step):
      tf.summary.image(name, viewable, max_outputs=max_outputs)

  def text(self, kind, step, name, markdown):
    if not self._active:
      return
    with self._writer(kind).as_default(step=step):
      tf.summary.text(name, markdown)

  def config(self, config_dict):
    """The full run config as a text summary, and its flat values as HParams."""
    if not self._active:
      return
    pretty = json.dumps(config_dict, indent=2, sort_keys=True)
    self.text("train", 0, "config", "```\n" + pretty + "\n```")
    flat = {}
    for key, value in config_dict.items():
      if isinstance(value, dict):
        flat.update({f"{key}.{k}": v for k, v in value.items()})
      else:
        flat[key] = value
    hparams = {k: v for k, v in flat.items() if isinstance(v, (bool, int, float, str))}
    with self._writer("").as_default(step=0):
      hp.hparams_config(
        hparams=[hp.HParam(k) for k in sorted(hparams)],
        metrics=[hp.Metric(tag, group=group) for tag, group in HPARAM_METRICS],
      )
      hp.hparams(hparams)

  def trace_on(self):
    """Starts recording the graph of the next tf.function call."""
    if self._active:
      tf.summary.trace_on(graph=True, profiler=False)

  def trace_export(self, kind, step, name):
    if self._active:
      with self._writer(kind).as_default(step=step):
        tf.summary.trace_export(name=name, step=step)

  def close(self):
    for w in self._writers.values():
      w.close()
