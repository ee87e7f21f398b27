"""TensorBoard output of the trainers, read back with TensorBoard's own readers.

Event files are read with the `EventMultiplexer` TensorBoard serves from (TF2
summaries are tensor events; each tag's plugin is named in its metadata), and a
real `tensorboard` process is asked over HTTP what it serves. The layout is
Keras's TensorBoard callback's (trainers/tags.py): `train/` and one run per
evaluated split, with the same tags, so the curves overlay.
"""

import json
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins.hparams import plugin_data_pb2
import tensorflow as tf

from tests.conftest import BIN
from tests.conftest import ROOT
from tests.conftest import hparams_session
from tests.conftest import run_trainer
from trainers import steps
from trainers import summaries
from trainers import train as train_lib

SCALAR_GROUPS = {"loss", "metrics", "lr", "speed", "activations"}
HISTOGRAM_GROUPS = {"weights", "gradients", "activations"}


def _multiplexer(path):
  mux = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={"scalars": 0})
  mux.AddRunsFromDirectory(str(path))
  mux.Reload()
  return mux


def _steps(mux, run, tag):
  return [e.step for e in mux.Tensors(run, tag)]


def _values(mux, run, tag):
  return [float(tf.make_ndarray(e.tensor_proto)) for e in mux.Tensors(run, tag)]


def _hparam_value(value):
  kind = value.WhichOneof("kind")
  return getattr(value, kind)


def _tags(mux, plugin, run):
  return set(mux.PluginRunToTagToContent(plugin).get(run, {}))


def _train(dataset, recipe, data_dir, model_dir, *flags):
  run_trainer(
    dataset,
    ["--recipe", recipe, "--data-dir", data_dir, "--model-dir", model_dir, "--no-export"]
    + list(flags),
  )
  return model_dir


@pytest.fixture(scope="module")
def run_dir(tfrecords, tmp_path_factory):
  """The CIFAR-10 tutorial: evaluates the test split during training, and at the end.

  No --histogram-every: the default for a 20-step run is a fifth of it.
  """
  return _train(
    "cifar10",
    "cifar10_tutorial",
    tfrecords / "cifar10",
    tmp_path_factory.mktemp("summaries"),
    "--max-steps",
    20,
    "--batch-size",
    16,
    "--summary-every",
    5,
    "--eval-every",
    10,
  )


@pytest.fixture(scope="module")
def validated_dir(tfrecords, tmp_path_factory):
  """mnist_basic: evaluates the validation split during training, the test split at the end."""
  return _train(
    "mnist",
    "mnist_basic",
    tfrecords / "mnist",
    tmp_path_factory.mktemp("validated"),
    "--max-steps",
    10,
    "--batch-size",
    16,
    "--summary-every",
    5,
    "--eval-every",
    5,
  )


def test_train_and_validation_runs_share_the_loss_and_precision_tags(validated_dir):
  mux = _multiplexer(validated_dir)
  assert {"train", "validation", "test", "."} == set(mux.Runs())
  scalars = {run: _tags(mux, "scalars", run) for run in ("train", "validation", "test")}
  for tag in ("loss/cross_entropy", "metrics/precision_at_1"):
    # One chart per tag, one curve per run: TensorBoard overlays them.
    assert all(tag in scalars[run] for run in scalars), (tag, scalars)
  assert (
    scalars["validation"] == scalars["test"] == {"loss/cross_entropy", "metrics/precision_at_1"}
  )
  assert _steps(mux, "validation", "metrics/precision_at_1") == [5, 10]
  assert _steps(mux, "train", "metrics/precision_at_1") == [1, 5, 10]
  assert _steps(mux, "test", "metrics/precision_at_1") == [10]
  final = _values(mux, "test", "metrics/precision_at_1")[-1]
  metrics = json.loads((validated_dir / "metrics.json").read_text())
  assert final == pytest.approx(metrics["precision_at_1"])
  assert _values(mux, "test", "loss/cross_entropy")[-1] == pytest.approx(metrics["loss"])


def test_hparams_are_the_few_columns_runs_are_compared_by(validated_dir):
  mux = _multiplexer(validated_dir)
  content = mux.PluginRunToTagToContent("hparams")["."]
  experiment = plugin_data_pb2.HParamsPluginData.FromString(
    content["_hparams_/experiment"]
  ).experiment
  columns = [h.name for h in experiment.hparam_infos]
  assert sorted(columns) == sorted(
    ["recipe", "batch_size", "learning_rate", "workers", "elastic", "precision", "steps"]
  )
  assert {(m.name.group, m.name.tag) for m in experiment.metric_infos} == {
    ("validation", "metrics/precision_at_1"),
    ("test", "metrics/precision_at_1"),
    ("validation", "loss/cross_entropy"),
    ("test", "loss/cross_entropy"),
    ("train", "loss/cross_entropy"),
  }
  start = plugin_data_pb2.HParamsPluginData.FromString(
    content["_hparams_/session_start_info"]
  ).session_start_info
  values = {k: _hparam_value(v) for k, v in start.hparams.items()}
  assert values == {
    "elastic": False,
    "recipe": "mnist/mnist_basic",
    "batch_size": 16,
    "learning_rate": pytest.approx(
      json.loads((validated_dir / "config.json").read_text())["recipe"]["learning_rate"]
    ),
    "workers": 1,
    "precision": "float32",
    "steps": 10,
  }


def test_scalars_fall_in_a_few_named_groups(run_dir):
  mux = _multiplexer(run_dir)
  assert {"train", "test", "."} == set(mux.Runs())
  train = _tags(mux, "scalars", "train")
  assert {
    "loss/cross_entropy",
    "loss/total",
    "loss/cross_entropy_avg",
    "loss/total_avg",
    "metrics/precision_at_1",
    "lr",
    "speed/images_per_sec",
    "speed/images_per_sec_per_worker",
    "speed/step_time",
    "speed/workers",
  } <= train
  groups = {tag.split("/")[0] for run in ("train", "test") for tag in _tags(mux, "scalars", run)}
  assert groups == SCALAR_GROUPS
  for tag in ("loss/cross_entropy", "lr", "speed/images_per_sec"):
    assert _steps(mux, "train", tag) == [1, 5, 10, 15, 20]
    assert all(np.isfinite(v) for v in _values(mux, "train", tag))
  assert set(_values(mux, "train", "speed/workers")) == {1.0}
  # The weight decay terms make the total loss larger than the cross-entropy.
  assert _values(mux, "train", "loss/total")[-1] > _values(mux, "train", "loss/cross_entropy")[-1]
  # The test split during training (--eval-every 10); at step 20 the final evaluation
  # (the whole split) writes the step's one point.
  assert _steps(mux, "test", "metrics/precision_at_1") == [10, 20]


def test_histograms_and_images_come_more_than_once_in_a_short_run(run_dir):
  mux = _multiplexer(run_dir)
  histograms = _tags(mux, "histograms", "train")
  assert {tag.split("/")[0] for tag in histograms} == HISTOGRAM_GROUPS
  for layer in ["conv1", "conv2", "local3", "local4", "softmax_linear"]:
    for kind in ("weights", "gradients"):
      for var in ("kernel", "bias"):
        assert f"{kind}/{layer}/{var}" in histograms
    assert f"activations/{layer}" in histograms
  for layer in ("norm1", "pool1", "norm2", "pool2"):
    assert f"activations/{layer}" in histograms
  # A fifth of the 20-step run, on the 5-step grid of calls, and the first step.
  assert _steps(mux, "train", "weights/conv1/kernel") == [1, 5, 10, 15, 20]
  assert _steps(mux, "train", "inputs/augmented") == [1, 5, 10, 15, 20]
  histogram = tf.make_ndarray(mux.Tensors("train", "weights/conv1/kernel")[-1].tensor_proto)
  assert histogram.ndim == 2 and histogram.shape[1] == 3  # (left edge, right edge, count) rows
  assert histogram[:, 2].sum() == 5 * 5 * 3 * 64
  # Sparsity scalars for the ReLU layers only, each a fraction.
  sparsity = {t for t in _tags(mux, "scalars", "train") if t.startswith("activations/")}
  assert sparsity == {f"activations/sparsity/{l}" for l in ("conv1", "conv2", "local3", "local4")}
  for tag in sparsity:
    assert all(0.0 <= v <= 1.0 for v in _values(mux, "train", tag))
  assert _tags(mux, "images", "train") == {"inputs/augmented"}
  image = tf.make_ndarray(mux.Tensors("train", "inputs/augmented")[0].tensor_proto)
  assert (int(image[0]), int(image[1])) == (24, 24) and len(image) == 2 + 6
  decoded = tf.io.decode_png(image[2]).numpy()
  assert decoded.shape == (24, 24, 3) and decoded.max() > decoded.min()


def test_the_demo_draws_curves_and_shows_histograms_more_than_once():
  """The demo's cadences (scripts/demo.sh: 300 steps, --log-every 50, --eval-every 100)."""

  class Demo:
    steps_per_call = None
    summary_every, histogram_every, checkpoint_every = None, None, 1000

    class recipe:  # noqa: N801 (the config's attribute)
      log_every, eval_every = 50, 100

  k = steps.steps_per_call(Demo, 300)
  scalars = summaries.summary_cadence(None, 300)
  assert (k, scalars) == (5, 5)  # 61 points of the training curve, not 4
  every = steps.round_cadence(summaries.histogram_cadence(None, 300), k)
  shown = [s for s in range(1, 301) if train_lib.due(s, every, first=1, last=300)]
  assert shown == [1, 60, 120, 180, 240, 300]
  assert summaries.histogram_cadence(None, 1_000_000) == 1000
  assert summaries.histogram_cadence(7, 300) == 7
  # About 50 points a run, at a round cadence, at most every 100 steps.
  points = {n: len(range(0, n, summaries.summary_cadence(None, n))) for n in (50, 300, 2000, 10**4)}
  assert points == {50: 50, 300: 60, 2000: 100, 10**4: 100}
  assert summaries.summary_cadence(None, 10**6) == 100 and summaries.summary_cadence(3, 50) == 3


def test_graph_is_the_models_layer_graph_and_config_text(run_dir):
  mux = _multiplexer(run_dir)
  assert mux.Runs()["train"]["graph"]
  graph = mux.Graph("train")
  ops = {node.op for node in graph.node}
  # The inference graph of the model, not the training loop around it.
  assert not ops & {"While", "StatelessWhile", "IteratorGetNext", "ResourceApplyGradientDescent"}
  assert {"Conv2D", "MaxPool", "LRN", "MatMul", "Relu"} <= ops
  scopes = {name for node in graph.node for name in node.name.split("/")}
  assert any(s.startswith("conv1") for s in scopes) and any(s.startswith("local4") for s in scopes)
  # Keras's conceptual graph: the layers and how they connect.
  assert _tags(mux, "graph_keras_model", "train") == {"keras"}
  model = json.loads(tf.make_ndarray(mux.Tensors("train", "keras")[0].tensor_proto).item().decode())
  layers = [l["config"]["name"] for l in model["config"]["layers"]]
  assert layers[-1] == "softmax_linear" and "conv1" in layers
  assert _tags(mux, "text", "train") == {"config"}
  text = tf.make_ndarray(mux.Tensors("train", "config")[0].tensor_proto).item().decode()
  assert '"name": "cifar10_tutorial"' in text and '"workers": 1' in text


@pytest.mark.slow
def test_only_rank_zero_writes_event_files(tfrecords, tmp_path):
  run_trainer(
    "mnist",
    [
      "--recipe",
      "mnist_basic",
      "--data-dir",
      tfrecords / "mnist",
      "--model-dir",
      tmp_path,
      "--max-steps",
      6,
      "--batch-size",
      8,
      "--summary-every",
      2,
      "--histogram-every",
      3,
      "--eval-every",
      3,
      "--no-export",
    ],
    np_=2,
  )
  for sub in ("train", "validation", "test", "."):
    files = list((tmp_path / sub).glob("events.out.tfevents.*"))
    assert len(files) == 1, (sub, files)
  mux = _multiplexer(tmp_path)
  assert set(_values(mux, "train", "speed/workers")) == {2.0}
  # One value per step: a second writer would show up as repeated steps.
  assert _steps(mux, "train", "loss/cross_entropy") == [1, 2, 4, 6]
  assert _steps(mux, "validation", "loss/cross_entropy") == [3, 6]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _get_json(url):
  with urllib.request.urlopen(url, timeout=5) as response:
    return json.loads(response.read())


def test_tensorboard_serves_the_run_and_its_scalars(run_dir):
  port = _free_port()
  proc = subprocess.Popen(
    [
      str(BIN / "tensorboard"),
      "--logdir",
      str(run_dir),
      "--host",
      "127.0.0.1",
      "--port",
      str(port),
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  try:
    deadline, runs = time.time() + 90, None
    while time.time() < deadline:
      try:
        runs = _get_json(f"http://127.0.0.1:{port}/data/runs")
        if {"train", "test"} <= set(runs):
          break
      except OSError:
        pass
      time.sleep(0.5)
    assert runs is not None and {"train", "test"} <= set(runs), runs
    tags = _get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")
    assert {"loss/cross_entropy", "lr", "speed/images_per_sec"} <= set(tags["train"])
    assert {"loss/cross_entropy", "metrics/precision_at_1"} <= set(tags["test"])
    values = _get_json(
      f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=train&tag=loss/cross_entropy"
    )
    assert [v[1] for v in values] == [1, 5, 10, 15, 20]
  finally:
    proc.terminate()
    proc.wait(timeout=30)
  assert proc.returncode is not None


def test_make_plots_writes_png_figures_of_the_run(run_dir, tmp_path):
  from PIL import Image

  logdir = tmp_path / "runs"
  shutil.copytree(run_dir, logdir / "cifar10-tutorial")
  subprocess.run(
    ["make", "plots", f"LOGDIR={logdir}"], cwd=ROOT, check=True, capture_output=True, timeout=300
  )
  for name in ("cifar10-tutorial.png", "all_runs.png"):
    with Image.open(logdir / "plots" / name) as image:
      assert image.format == "PNG"
      assert 600 <= image.width <= 2000 and 300 <= image.height <= 1200
      assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 10  # not blank


# --- a short run, resumed and evaluated again: what TensorBoard and the console show ---


@pytest.fixture(scope="module")
def short_run(tfrecords, tmp_path_factory):
  """tiny for 50 steps (shorter than every cadence but the scalars'), evaluated again on
  the test split, then on the training split. (A resumed run's HParams:
  tests/test_trainers.py's resume test.)

  Returns (model dir, {stage: stdout}).
  """
  model_dir = tmp_path_factory.mktemp("short")
  flags = ["--data-dir", tfrecords / "mnist", "--model-dir", model_dir, "--no-export"]
  out = {}
  out["train"] = run_trainer("mnist", flags + ["--recipe", "tiny", "--max-steps", 50]).stdout
  out["eval"] = run_trainer("mnist", ["--mode", "eval", "--model-dir", model_dir]).stdout
  out["eval_train"] = run_trainer(
    "mnist", ["--mode", "eval", "--model-dir", model_dir, "--eval-split", "train"]
  ).stdout
  return model_dir, out


def test_a_short_run_draws_its_whole_curve_and_its_last_step(short_run):
  model_dir, out = short_run
  mux = _multiplexer(model_dir)
  # ~50 points a run: every step of a 50-step run, the last one included.
  assert _steps(mux, "train", "loss/cross_entropy") == list(range(1, 51))
  # Histograms every fifth of the run, its first step and its last.
  assert _steps(mux, "train", "weights/conv1/kernel") == [1, 10, 20, 30, 40, 50]
  # The start-up line names only cadences the run reaches (tiny logs every 100 steps).
  line = next(l for l in out["train"].splitlines() if l.startswith("training steps 0->50"))
  assert "log at the first and last step only" in line and "scalars every 1" in line
  assert "histograms every 10" in line and "checkpoint at the last step only" in line
  assert "every 100" not in line and "every 1000" not in line


def test_hparams_are_one_session_per_run_dir(short_run):
  model_dir, _ = short_run
  assert len(list(model_dir.glob("events.out.tfevents.*"))) == 1
  values = hparams_session(model_dir)
  assert values["steps"] == 50 and values["workers"] == 1 and values["elastic"] is False


def test_evaluations_get_one_point_per_step_and_the_training_split_its_own_run(short_run):
  model_dir, out = short_run
  mux = _multiplexer(model_dir)
  assert {"train", "test", "eval_train", "."} == set(mux.Runs())
  # The final evaluation (the loop's at step 50 left it the point); --mode eval of the
  # same checkpoint added none.
  assert _steps(mux, "test", "metrics/precision_at_1") == [50]
  assert "test/ already has an evaluation at step 50; not adding a second point" in out["eval"]
  # --eval-split train: its own run; train/ keeps only the loop's batch accuracy.
  assert _steps(mux, "eval_train", "metrics/precision_at_1") == [50]
  assert _steps(mux, "train", "metrics/precision_at_1").count(50) == 1
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["split"] == "train" and set(metrics["splits"]) == {"train", "test"}
  assert metrics["splits"]["train"]["precision_at_1"] == metrics["precision_at_1"]
  test_value = _values(mux, "test", "metrics/precision_at_1")[-1]
  assert metrics["splits"]["test"]["precision_at_1"] == pytest.approx(test_value)
  assert _values(mux, "eval_train", "metrics/precision_at_1")[-1] == pytest.approx(
    metrics["precision_at_1"]
  )


def test_the_console_says_what_each_mode_does(short_run, tfrecords):
  model_dir, out = short_run
  train = out["train"].splitlines()
  # The model summary: layers, output shapes, parameters.
  table = train[train.index("model tiny:") + 1 :][:5]
  assert table[0].split() == ["layer", "(type)", "output", "shape", "parameters"]
  assert table[2].split()[:2] == ["conv1", "(Conv2D)"] and table[2].split()[-1] == "80"
  # A sign of life right after the first call, which traces: no rate, no ETA yet.
  first = next(l for l in train if l.startswith("step "))
  assert first.startswith("step 1/50 ") and "first call" in first and "eta" not in first
  assert any(l.startswith("step 50/50 ") and "eta 0:00:00" in l for l in train)
  # Eval: what it evaluates, not a training plan.
  meta = json.loads((tfrecords / "mnist" / "metadata.json").read_text())
  examples = meta["splits"]["train"]["num_examples"]
  line = next(l for l in out["eval_train"].splitlines() if l.startswith("evaluating "))
  assert f"ckpt-50 (step 50) on the train split ({examples:,} examples, raw weights" in line
  assert "steps/epoch" not in out["eval_train"] and "learning rate" not in out["eval_train"]
