"""TensorBoard summaries of a run, written by rank 0 only.

The training loop calls a `Writer` on every rank; on ranks other than 0 it does
nothing, so the loop has no rank checks and TensorBoard shows one run, not one
per worker. The layout is Keras's own TensorBoard callback's (trainers/tags.py
names every run and tag): `train/` and one run per evaluated split
(`validation/`, `test/`) under the model dir, carrying the same loss and
precision@1 tags so the curves overlay; the HParams record (the few settings
runs are compared by, and their final metrics) goes to the model dir itself.

What the loop writes (see trainers/train.py): scalars (losses and their moving
averages, learning rate, precision@1, images/sec, step time, number of
workers), histograms of every weight, gradient and layer activation with the
ReLU sparsity of each activation (as the CIFAR-10 tutorial's
`_activation_summary`), a few augmented input images, the model's layer graph,
the config as text, and HParams.
"""

import json
import os

from tensorboard.plugins.hparams import api as hp
import tensorflow as tf

from trainers import tags

# Histograms and images of a run shorter than 5x --histogram-every's default
# come 5 times (plus its first step), so a short run such as the demo's still
# shows how they change.
HISTOGRAM_EVERY = 1000
HISTOGRAMS_PER_SHORT_RUN = 5

# Scalars: by default about SUMMARY_POINTS points per run (a short run draws a
# curve, as Keras's callback does writing every epoch), at a round cadence
# from SUMMARY_CADENCES (at most every 100 steps, the old fixed default, so a
# long run's event files do not grow with its length faster than before).
SUMMARY_POINTS = 50
SUMMARY_CADENCES = (1, 2, 5, 10, 20, 50, 100)

# Metrics the HParams dashboard shows beside each run's settings: (tag, run).
HPARAM_METRICS = (
  (tags.PRECISION_AT_1, "validation"),
  (tags.PRECISION_AT_1, "test"),
  (tags.CROSS_ENTROPY, "validation"),
  (tags.CROSS_ENTROPY, "test"),
  (tags.CROSS_ENTROPY, tags.TRAIN),
)


def histogram_cadence(asked, max_steps):
  """--histogram-every as given, or by default 1000 steps, a fifth of a shorter run."""
  if asked is not None:
    return asked
  return max(1, min(HISTOGRAM_EVERY, max_steps // HISTOGRAMS_PER_SHORT_RUN))


def summary_cadence(asked, max_steps):
  """--summary-every as given, or by default the round cadence that gives a run ~50 points."""
  if asked is not None:
    return asked
  fitting = [c for c in SUMMARY_CADENCES if c * SUMMARY_POINTS <= max_steps]
  return fitting[-1] if fitting else SUMMARY_CADENCES[0]


def hparams(config_dict, steps, elastic=False):
  """The columns a user compares runs by, from a run's config.json dict.

  `workers` is the world size the run (or its latest session) started with;
  `elastic` tells a horovodrun --min-np/--max-np job from a fixed one of the
  same size.
  """
  recipe = config_dict["recipe"]
  return {
    "recipe": f"{config_dict['dataset']}/{recipe['name']}",
    "batch_size": recipe["batch_size"],
    "learning_rate": recipe["learning_rate"],
    "workers": config_dict["workers"],
    "elastic": bool(elastic),
    "precision": config_dict["precision"],
    "steps": steps,
  }


def _events(directory):
  """The event files directly in `directory` (local or gs://: listed, not globbed)."""
  if not tf.io.gfile.isdir(directory):
    return []
  names = [n for n in tf.io.gfile.listdir(directory) if n.startswith("events.out.tfevents.")]
  return sorted(os.path.join(directory, n) for n in names)


def steps_written(directory, tag):
  """The steps at which `directory`'s event files hold `tag` (empty if none)."""
  steps = set()
  for path in _events(directory):
    try:
      for record in tf.data.TFRecordDataset(path):
        event = tf.compat.v1.Event.FromString(record.numpy())
        if any(v.tag == tag for v in event.summary.value):
          steps.add(event.step)
    except tf.errors.DataLossError:  # a file cut short by a kill: what was read counts
      continue
  return steps


class Writer:
  """Chief-only summary writer: every method is a no-op on other ranks."""

  def __init__(self, model_dir, ctx):
    self._model_dir = model_dir
    # Horovod: rank 0 alone writes summaries.
    self._active = ctx.is_chief
    self._writers = {}
    self._evaluated = {}  # {eval run: steps it holds}, read from its files on first use

  @property
  def active(self):
    return self._active

  def _writer(self, run):
    if run not in self._writers:
      self._writers[run] = tf.summary.create_file_writer(os.path.join(self._model_dir, run))
    return self._writers[run]

  def scalars(self, run, step, values):
    """Writes {tag: number} under `run` ("train" or the evaluated split) at `step`."""
    if not self._active:
      return
    with self._writer(run).as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)

  def histograms(self, run, step, values):
    """Writes {tag: tensor} histograms under `run` at `step`."""
    if not self._active:
      return
    with self._writer(run).as_default(step=step):
      for name, value in values.items():
        tf.summary.histogram(name, value)

  def images(self, run, step, name, images, max_outputs=6):
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
    with self._writer(run).as_default(step=step):
      tf.summary.image(name, viewable, max_outputs=max_outputs)

  def text(self, run, step, name, markdown):
    if not self._active:
      return
    with self._writer(run).as_default(step=step):
      tf.summary.text(name, markdown)

  def config(self, config_dict, steps, elastic=False):
    """The full run config as a text summary; a few of its values as HParams.

    The HParams record is one session per run directory, rewritten by every
    training session: TensorBoard's readers keep the FIRST metadata they meet
    for a tag, so a second record beside the first would leave the HParams
    table showing the values of the session that started the run (its step
    budget before a resume, say). The new record is written, then the older
    ones are deleted (the model dir's own event files hold nothing else).

    Args:
      config_dict: The run's config.json.
      steps: The run's step budget (the recipe's, or --max-steps, or --epochs').
      elastic: Whether the run is an elastic horovodrun job.
    """
    if not self._active:
      return
    pretty = json.dumps(config_dict, indent=2, sort_keys=True)
    self.text(tags.TRAIN, 0, tags.CONFIG, "```\n" + pretty + "\n```")
    values = hparams(config_dict, steps, elastic)
    older = _events(self._model_dir)
    writer = tf.summary.create_file_writer(self._model_dir, filename_suffix=".hparams")
    with writer.as_default(step=0):
      hp.hparams_config(
        hparams=[hp.HParam(k) for k in values],
        metrics=[
          hp.Metric(tag, group=run, display_name=f"{run} {tag}") for tag, run in HPARAM_METRICS
        ],
      )
      hp.hparams(values)
    writer.close()
    for path in older:
      tf.io.gfile.remove(path)

  def evaluation(self, split, step, result, log):
    """Writes an evaluation's point under the split's run, once per step.

    Event files only grow, so a point cannot be replaced: when the run
    already holds one at `step` (the same checkpoint evaluated again), none
    is added and `log` says so, and each chart keeps one point per step.

    Returns:
      Whether the point was written (on other ranks: False).
    """
    if not self._active:
      return False
    run = tags.eval_run(split)
    if run not in self._evaluated:
      self._evaluated[run] = steps_written(os.path.join(self._model_dir, run), tags.PRECISION_AT_1)
    if step in self._evaluated[run]:
      log(f"{run}/ already has an evaluation at step {step}; not adding a second point")
      return False
    self._evaluated[run].add(step)
    self.scalars(
      run, step, {tags.PRECISION_AT_1: result["precision_at_1"], tags.CROSS_ENTROPY: result["loss"]}
    )
    return True

  def graph(self, model):
    """The model's layer graph for the Graphs tab, as Keras's TensorBoard callback writes it.

    Two views, both of the model alone (not of the training loop around it):
    Keras's conceptual graph (layers and their connections) and the op graph
    of one inference call, whose op names are scoped by layer.
    """
    if not self._active:
      return
    forward = tf.function(lambda images: model(images, training=False))
    spec = tf.TensorSpec((None,) + tuple(model.input_shape[1:]), model.input.dtype)
    # The summary Keras's `keras_model_summary` writes: the model's JSON under
    # the graph plugin's "graph_keras_model" (that function is not public API).
    metadata = tf.compat.v1.SummaryMetadata()
    metadata.plugin_data.plugin_name = "graph_keras_model"
    metadata.plugin_data.content = b"1"
    with self._writer(tags.TRAIN).as_default(step=0):
      tf.summary.write(tags.KERAS_MODEL, tf.constant(model.to_json()), metadata=metadata)
      tf.summary.graph(forward.get_concrete_function(spec).graph)

  def close(self):
    for w in self._writers.values():
      w.close()
