"""The TensorBoard tag and run names the trainers write and trainers/plots.py reads.

One home for the layout, as Keras's own TensorBoard callback writes it: one run
directory per data split under the model dir (`train/`, and `validation/` or
`test/` for the split an evaluation used), carrying the SAME scalar tags, so
TensorBoard draws the training and evaluation curves of a tag on one chart.
Tags are grouped by the prefix before their first `/`, which is how TensorBoard
groups its charts: `loss/`, `metrics/`, `lr`, `speed/`, and for histograms
`weights/`, `gradients/`, `activations/`.

This module imports nothing, so readers of event files can use it without
loading TensorFlow first.
"""

# Run directories under the model dir. Evaluations go to the run named after
# their split (`eval_run`); the HParams record goes to the model dir itself.
TRAIN = "train"
EVAL_RUNS = ("validation", "test")
# An evaluation of the training split (--mode eval --eval-split train): its own
# run, as Keras's callback keeps evaluations out of `train/`, so the batch
# accuracy of the loop and the full-split precision never share one curve.
EVAL_TRAIN = "eval_train"
RUNS = (TRAIN,) + EVAL_RUNS + (EVAL_TRAIN,)


def eval_run(split):
  """The run directory an evaluation of `split` writes to."""
  return EVAL_TRAIN if split == TRAIN else split


# Scalars in the train run AND the evaluation runs (one chart, two curves).
CROSS_ENTROPY = "loss/cross_entropy"
PRECISION_AT_1 = "metrics/precision_at_1"  # train: the batch accuracy, dropout on

# Scalars of the train run only.
TOTAL_LOSS = "loss/total"  # cross-entropy plus weight decay
CROSS_ENTROPY_AVG = "loss/cross_entropy_avg"  # moving averages, as the CIFAR-10 tutorial's
TOTAL_LOSS_AVG = "loss/total_avg"
LEARNING_RATE = "lr"
IMAGES_PER_SEC = "speed/images_per_sec"
IMAGES_PER_SEC_PER_WORKER = "speed/images_per_sec_per_worker"
STEP_TIME = "speed/step_time"
WORKERS = "speed/workers"
SPARSITY = "activations/sparsity/"  # + layer name: fraction of zeros of a ReLU's output

# Histograms (train run): + variable path or layer name.
WEIGHTS = "weights/"
GRADIENTS = "gradients/"
ACTIVATIONS = "activations/"

# Images and text (train run).
INPUT_IMAGES = "inputs/augmented"
CONFIG = "config"

# The model's layer graph (train run): Keras's conceptual graph, as its callback tags it.
KERAS_MODEL = "keras"
