"""TensorBoard output of the trainers, read back with TensorBoard's own APIs.

Event files are read with `EventAccumulator` (TF2 summaries are tensor events,
listed under Tags()['tensors'] with the plugin named in their metadata); a real
`tensorboard` process is asked over HTTP what it serves.
"""

import json
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import plugin_data_pb2
import tensorflow as tf

from tests.conftest import BIN
from tests.conftest import ROOT
from tests.conftest import run_trainer


def _accumulator(path):
  acc = ea.EventAccumulator(str(path), size_guidance={ea.TENSORS: 0})
  acc.Reload()
  return acc


def _plugin(acc, tag):
  return acc.SummaryMetadata(tag).plugin_data.plugin_name


@pytest.fixture(scope="module")
def run_dir(tfrecords, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("summaries")
  run_trainer(
    "cifar10",
    [
      "--recipe",
      "cifar10_tutorial",
      "--data-dir",
      tfrecords / "cifar10",
      "--model-dir",
      model_dir,
      "--max-steps",
      20,
      "--batch-size",
      16,
      "--summary-every",
      5,
      "--histogram-every",
      10,
      "--eval-every",
      10,
      "--no-export",
    ],
  )
  return model_dir


def test_train_scalars_cover_losses_rates_and_workers(run_dir):
  acc = _accumulator(run_dir / "train")
  expected = {
    "cross_entropy",
    "total_loss",
    "cross_entropy_avg",
    "total_loss_avg",
    "accuracy",
    "learning_rate",
    "images_per_sec",
    "images_per_sec_per_worker",
    "step_time",
    "workers",
  }
  tags = set(acc.Tags()["tensors"])
  assert expected <= tags
  for tag in expected:
    assert _plugin(acc, tag) == "scalars"
    events = acc.Tensors(tag)
    steps = [e.step for e in events]
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 20
    assert [e.step for e in events] == [1, 5, 10, 15, 20]
    for e in events:
      value = tf.make_ndarray(e.tensor_proto)
      assert value.shape == () and np.isfinite(value)
  workers = {float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("workers")}
  assert workers == {1.0}
  # The weight decay terms make the total loss larger than the cross-entropy.
  last = {
    t: float(tf.make_ndarray(acc.Tensors(t)[-1].tensor_proto))
    for t in ("cross_entropy", "total_loss")
  }
  assert last["total_loss"] > last["cross_entropy"]


def test_histograms_of_weights_gradients_activations_and_relu_sparsity(run_dir):
  acc = _accumulator(run_dir / "train")
  tags = set(acc.Tags()["tensors"])
  layers = ["conv1", "conv2", "local3", "local4", "softmax_linear"]
  for layer in layers:
    for kind in ("weights", "gradients"):
      for var in ("kernel", "bias"):
        assert _plugin(acc, f"{kind}/{layer}/{var}") == "histograms"
    assert _plugin(acc, f"activations/{layer}") == "histograms"
  for layer in ("norm1", "pool1", "norm2", "pool2"):
    assert f"activations/{layer}" in tags
  # Sparsity scalars for the ReLU layers only, each a fraction.
  sparsity = {t for t in tags if t.startswith("sparsity/")}
  assert sparsity == {f"sparsity/{l}" for l in ("conv1", "conv2", "local3", "local4")}
  for tag in sparsity:
    values = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
    assert [e.step for e in acc.Tensors(tag)] == [1, 10, 20]
    assert all(0.0 <= v <= 1.0 for v in values)
  histogram = tf.make_ndarray(acc.Tensors("weights/conv1/kernel")[-1].tensor_proto)
  assert histogram.ndim == 2 and histogram.shape[1] == 3  # (left edge, right edge, count) rows
  assert histogram[:, 2].sum() == 5 * 5 * 3 * 64


def test_augmented_inputs_graph_and_config_text(run_dir):
  acc = _accumulator(run_dir / "train")
  assert _plugin(acc, "augmented_inputs") == "images"
  image = tf.make_ndarray(acc.Tensors("augmented_inputs")[0].tensor_proto)
  width, height = int(image[0]), int(image[1])
  assert (width, height) == (24, 24) and len(image) == 2 + 6
  decoded = tf.io.decode_png(image[2]).numpy()
  assert decoded.shape == (24, 24, 3) and decoded.max() > decoded.min()
  assert _plugin(acc, "train_step") == "graph_run_metadata_graph"
  assert _plugin(acc, "config") == "text"
  text = tf.make_ndarray(acc.Tensors("config")[0].tensor_proto).item().decode()
  assert '"name": "cifar10_tutorial"' in text and '"workers": 1' in text


def test_eval_precision_curve_during_training_and_hparams(run_dir):
  acc = _accumulator(run_dir / "eval")
  for tag in ("test_precision_at_1", "test_loss", "train_batch_precision_at_1"):
    assert _plugin(acc, tag) == "scalars"
  # CIFAR-10 has no validation split by default: the tutorial's recipe
  # evaluates the test split during training (cifar10_eval), so the accuracy
  # curve exists: steps 10 and 20 of --eval-every 10, then the final evaluation.
  assert "validation_precision_at_1" not in acc.Tags()["tensors"]
  assert [e.step for e in acc.Tensors("test_precision_at_1")] == [10, 20, 20]
  assert [e.step for e in acc.Tensors("train_batch_precision_at_1")] == [10, 20]
  final = float(tf.make_ndarray(acc.Tensors("test_precision_at_1")[-1].tensor_proto))
  assert final == pytest.approx(
    json.loads((run_dir / "metrics.json").read_text())["precision_at_1"]
  )
  root = _accumulator(run_dir)
  assert {_plugin(root, t) for t in root.Tags()["tensors"]} == {"hparams"}
  start = plugin_data_pb2.HParamsPluginData.FromString(
    root.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
  ).session_start_info
  assert start.hparams["recipe.name"].string_value == "cifar10_tutorial"
  assert start.hparams["recipe.batch_size"].number_value == 16
  experiment = plugin_data_pb2.HParamsPluginData.FromString(
    root.SummaryMetadata("_hparams_/experiment").plugin_data.content
  ).experiment
  assert {m.name.tag for m in experiment.metric_infos} >= {"test_precision_at_1", "cross_entropy"}


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
  for sub in ("train", "eval", "."):
    files = list((tmp_path / sub).glob("events.out.tfevents.*"))
    assert len(files) == 1, (sub, files)
  acc = _accumulator(tmp_path / "train")
  workers = {float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("workers")}
  assert workers == {2.0}
  # One value per step: a second writer would show up as repeated steps.
  steps = [e.step for e in acc.Tensors("cross_entropy")]
  assert steps == [1, 2, 4, 6]


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
        if {"train", "eval"} <= set(runs):
          break
      except OSError:
        pass
      time.sleep(0.5)
    assert runs is not None and {"train", "eval"} <= set(runs), runs
    tags = _get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")
    assert {"cross_entropy", "learning_rate", "images_per_sec"} <= set(tags["train"])
    assert "test_precision_at_1" in tags["eval"]
    values = _get_json(
      f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=train&tag=cross_entropy"
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
