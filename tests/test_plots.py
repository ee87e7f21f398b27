"""Tests of trainers/plots.py on real event files written with tf.summary.

The runs are written the way trainers/summaries.py writes them (TF2 scalars
under <run>/train, <run>/validation and <run>/test, tags of trainers/tags.py), including a run resumed from a checkpoint
that repeats steps in a second event file; the command line is run as users
run it, in a subprocess.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from trainers import plots

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Matplotlib's default colours C0..C3: what plots.py draws train, total loss,
# validation and test in.
BLUE, ORANGE, GREEN, RED = (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)


def _write(directory, step_values):
  """Writes {tag: value} at each step into a new event file in `directory`."""
  writer = tf.summary.create_file_writer(str(directory))
  with writer.as_default():
    for step, values in step_values:
      for tag, value in values.items():
        tf.summary.scalar(tag, value, step=step)
  writer.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
  """runs/cifar10-tutorial (resumed, with eval), runs/demo/cifar10-tutorial (train only),
  runs/demo/broken (event files, no scalars)."""
  root = tmp_path_factory.mktemp("runs")
  run = root / "cifar10-tutorial"
  # First process: steps 10..40, then killed; the resumed one restarts from the
  # step-20 checkpoint and writes steps 30 and 40 again, with other values.
  _write(
    run / "train",
    [
      (
        s,
        {
          "loss/cross_entropy": 2.0 - s / 100,
          "loss/total": 2.5 - s / 100,
          "loss/cross_entropy_avg": 2.1 - s / 100,
          "metrics/precision_at_1": s / 100,
          "lr": 0.1,
        },
      )
      for s in (10, 20, 30, 40)
    ],
  )
  _write(
    run / "train",
    [
      (
        s,
        {
          "loss/cross_entropy": 1.5 - s / 100,
          "loss/total": 2.0 - s / 100,
          "loss/cross_entropy_avg": 1.6 - s / 100,
          "metrics/precision_at_1": s / 80,
          "lr": 0.1,
        },
      )
      for s in (30, 40, 50, 60)
    ],
  )
  with tf.summary.create_file_writer(str(run / "train")).as_default():
    tf.summary.histogram("weights/conv1", tf.range(10.0), step=60)  # not a scalar: ignored
  _write(
    run / "validation",
    [
      (20, {"metrics/precision_at_1": 0.3, "loss/cross_entropy": 1.8}),
      (40, {"metrics/precision_at_1": 0.5, "loss/cross_entropy": 1.4}),
    ],
  )
  _write(
    run / "validation",
    [
      (40, {"metrics/precision_at_1": 0.55, "loss/cross_entropy": 1.3}),
      (60, {"metrics/precision_at_1": 0.7, "loss/cross_entropy": 1.0}),
    ],
  )
  _write(run / "test", [(60, {"metrics/precision_at_1": 0.68, "loss/cross_entropy": 1.05})])

  # No weight decay: total_loss equals cross_entropy, so only one loss curve.
  _write(
    root / "demo" / "cifar10-tutorial" / "train",
    [
      (
        s,
        {
          "loss/cross_entropy": 3.0 / s,
          "loss/total": 3.0 / s,
          "metrics/precision_at_1": 1 - 1.0 / s,
        },
      )
      for s in range(1, 21)
    ],
  )

  with tf.summary.create_file_writer(str(root / "demo" / "broken" / "train")).as_default():
    tf.summary.histogram("weights/conv1", tf.range(10.0), step=1)
  return root


def _run_cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "trainers.plots"] + [str(a) for a in args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT)),
  )


def _pixels_near(image, colour, tolerance=10):
  """How many pixels are within `tolerance` of `colour` in every channel."""
  rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
  return int(np.all(np.abs(rgb - np.array(colour)) <= tolerance, axis=-1).sum())


def _check_png(path):
  """Opens `path` as a PNG of report size that is not blank; returns the image."""
  with Image.open(path) as image:
    assert image.format == "PNG"
    image.load()
  width, height = image.size
  assert 600 <= width <= 2000 and 250 <= height <= 1200, image.size
  colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
  assert len(colours) > 20, f"{path} looks blank: {len(colours)} colours"
  return image


def test_read_scalars_keeps_last_value_per_step(logdir):
  train = plots.read_scalars(logdir / "cifar10-tutorial" / "train")
  assert sorted(train) == [
    "loss/cross_entropy",
    "loss/cross_entropy_avg",
    "loss/total",
    "lr",
    "metrics/precision_at_1",
  ]  # the histogram is not a scalar
  ce = train["loss/cross_entropy"]
  assert ce.steps.tolist() == [10, 20, 30, 40, 50, 60]
  # 10 and 20 from the first process; 30 onwards from the resumed one.
  np.testing.assert_allclose(ce.values, [1.9, 1.8, 1.2, 1.1, 1.0, 0.9], rtol=1e-6)
  run = plots.read_run(logdir / "cifar10-tutorial")
  validation = run["validation"]["metrics/precision_at_1"]
  assert validation.steps.tolist() == [20, 40, 60]
  np.testing.assert_allclose(validation.values, [0.3, 0.55, 0.7], rtol=1e-6)
  assert run["test"]["metrics/precision_at_1"].steps.tolist() == [60]
  assert plots.read_scalars(logdir / "demo" / "cifar10-tutorial" / "validation") == {}
  assert plots.read_scalars(logdir / "demo" / "broken" / "train") == {}


def test_find_runs_searches_recursively(logdir):
  assert plots.find_runs(str(logdir)) == [
    ("cifar10-tutorial", str(logdir / "cifar10-tutorial")),
    (os.path.join("demo", "broken"), str(logdir / "demo" / "broken")),
    (os.path.join("demo", "cifar10-tutorial"), str(logdir / "demo" / "cifar10-tutorial")),
  ]
  # A run given directly is named after its directory.
  run = logdir / "cifar10-tutorial"
  assert plots.find_runs(str(run)) == [("cifar10-tutorial", str(run))]


def test_cli_writes_a_figure_per_run_and_a_comparison(logdir):
  result = _run_cli("--logdir", logdir)
  assert result.returncode == 0, result.stderr
  out = logdir / "plots"  # the default --out-dir
  written = [out / "cifar10-tutorial.png", out / "demo_cifar10-tutorial.png", out / "all_runs.png"]
  assert result.stdout.split() == [str(p) for p in written]
  assert "note: skipping demo/broken: no loss or accuracy scalars" in result.stderr
  assert sorted(os.listdir(out)) == sorted(p.name for p in written)

  resumed = _check_png(written[0])
  # train cross-entropy, total loss (it differs), validation and test.
  for colour in (BLUE, ORANGE, GREEN, RED):
    assert _pixels_near(resumed, colour) > 20, colour
  train_only = _check_png(written[1])
  assert _pixels_near(train_only, BLUE) > 20
  # total_loss equals cross_entropy and there is no eval: neither is drawn.
  for colour in (ORANGE, GREEN, RED):
    assert _pixels_near(train_only, colour) == 0, colour
  comparison = _check_png(written[2])
  # One colour per run: the first run's validation curve, the second's train accuracy.
  assert _pixels_near(comparison, BLUE) > 20 and _pixels_near(comparison, ORANGE) > 20


def test_output_is_deterministic(logdir, tmp_path, capsys):
  for out in ("a", "b"):
    assert plots.main(["--logdir", str(logdir), "--out-dir", str(tmp_path / out)]) == 0
  capsys.readouterr()
  names = sorted(os.listdir(tmp_path / "a"))
  assert names == ["all_runs.png", "cifar10-tutorial.png", "demo_cifar10-tutorial.png"]
  for name in names:
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_no_runs_is_a_one_line_error(tmp_path):
  (tmp_path / "empty" / "train").mkdir(parents=True)  # a train/ without event files is no run
  result = _run_cli("--logdir", tmp_path)
  assert result.returncode == 2
  assert result.stdout == ""
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: no runs under "), result.stderr
  assert not (tmp_path / "plots").exists()


def test_figure_names_that_clash_are_an_error(tmp_path, capsys):
  for run in ("a/b_c", "a_b/c"):
    _write(tmp_path / run / "train", [(1, {"loss/cross_entropy": 1.0})])
  assert plots.main(["--logdir", str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: several runs would be drawn to a_b_c.png"), err
  assert not (tmp_path / "plots").exists()
