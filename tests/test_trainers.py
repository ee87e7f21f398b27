"""The trainers as users run them: flags, every model, resume, EMA eval, early stopping, export.

All runs use the sample data converted by the real Beam job (conftest.tfrecords)
and the real entry scripts, as single processes; tests/test_distributed.py
covers `horovodrun -np 2`.
"""

import json
import signal
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import BIN
from tests.conftest import ROOT
from tests.conftest import hparams_session
from tests.conftest import run_trainer
from tests.conftest import wait_for_checkpoint
from trainers import recipes

# Every registered recipe of a data set, from the registry (tiny, for any data set, is
# trained by the other tests); conftest's `tfrecords` converts every registered data set.
MODELS = [(r.dataset, name) for name, r in recipes.RECIPES.items() if r.dataset]


def meta_policy(data_dir):
  return json.loads((data_dir / "metadata.json").read_text())["augmentation"]


def _metrics(model_dir):
  return json.loads((model_dir / "metrics.json").read_text())


def test_help_lists_the_shared_flags():
  out = run_trainer("cifar10", ["--help"]).stdout
  for flag in (
    "--data-dir",
    "--model-dir",
    "--recipe",
    "--batch-size",
    "--max-steps",
    "--epochs",
    "--learning-rate",
    "--eval-every",
    "--checkpoint-every",
    "--seed",
    "--mode",
    "--no-scale-lr",
    "--warmup-steps",
    "--fp16-allreduce",
  ):
    assert flag in out
  assert "PER WORKER" in out


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--max-steps", "5", "--epochs", "1"], "not allowed with argument"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--recipe", "mnist_resnet"], "invalid choice: 'mnist_resnet'"),
    (["--model", "tutorial"], "unrecognized arguments: --model"),
    (["--mode", "serve"], "invalid choice: 'serve'"),
  ],
)
def test_bad_flags_are_usage_errors(flags, message):
  result = run_trainer("cifar10", flags, check=False)
  assert result.returncode == 2 and message in result.stderr


def test_missing_data_is_one_clear_line(tmp_path):
  result = run_trainer(
    "mnist", ["--data-dir", tmp_path / "nope", "--model-dir", tmp_path / "m"], check=False
  )
  assert result.returncode != 0
  assert "metadata.json" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("dataset, model", MODELS, ids=[f"{d}-{m}" for d, m in MODELS])
def test_every_model_trains_evaluates_and_exports(tfrecords, tmp_path, dataset, model):
  model_dir = tmp_path / "run"
  result = run_trainer(
    dataset,
    [
      "--recipe",
      model,
      "--data-dir",
      tfrecords / dataset,
      "--model-dir",
      model_dir,
      "--max-steps",
      3,
      "--batch-size",
      8,
      "--log-every",
      1,
      "--eval-every",
      2,
      "--checkpoint-every",
      2,
    ],
  )
  assert "step 3/3" in result.stdout
  metrics = _metrics(model_dir)
  assert metrics["trained_steps"] == 3 and metrics["split"] == "test"
  # Early stopping (bn_dropout) evaluates the best checkpoint's weights.
  assert metrics["step"] == metrics.get("best_validation", {}).get("step", 3)
  assert (
    metrics["examples"]
    == json.loads((tfrecords / dataset / "metadata.json").read_text())["splits"]["test"][
      "num_examples"
    ]
  )
  assert 0.0 <= metrics["precision_at_1"] <= 1.0
  config = json.loads((model_dir / "config.json").read_text())
  assert config["recipe"]["name"] == model and config["recipe"]["batch_size"] == 8
  assert config["workers"] == 1 and "batch_size" not in config  # each value once
  # The policy the run applied, in config.json and in the export.
  applied = json.loads((model_dir / "export" / "augmentation.json").read_text())
  assert {"train": applied["train"], "eval": applied["eval"]} == config["recipe"]["augmentation"]
  recipe = recipes.get(model)
  if recipe.augmentation is not None:  # the cookbook
    assert config["augmentation_source"] == f"recipe {model}"
  else:
    assert config["recipe"]["augmentation"] == meta_policy(tfrecords / dataset)
  if recipe.serving_augmentation is None:
    assert applied["serving"] == applied["eval"]
  if model == "cifar10_cookbook":
    assert [s["op"] for s in applied["serving"]] == ["central_crop", "per_image_standardization"]
  assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("-3")
  # The export serves raw uint8 images as stored in the shards.
  meta = json.loads((tfrecords / dataset / "metadata.json").read_text())
  served = tf.saved_model.load(str(model_dir / "export")).signatures["serving_default"]
  out = served(images=tf.zeros([2] + meta["image_shape"], tf.uint8))
  assert out["probabilities"].shape == (2, meta["num_classes"])
  np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
  labels = (model_dir / "export" / "labels.txt").read_text().split()
  assert labels == meta["class_names"]


def test_resume_continues_from_the_saved_step(tfrecords, tmp_path):
  flags = [
    "--recipe",
    "tiny",
    "--data-dir",
    tfrecords / "cifar10",
    "--model-dir",
    tmp_path,
    "--checkpoint-every",
    10,
    "--log-every",
    5,
    "--no-export",
  ]
  run_trainer("cifar10", flags + ["--max-steps", 20])
  assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("-20")
  result = run_trainer("cifar10", flags + ["--max-steps", 30])
  assert "at step 20" in result.stdout and "step 25/30" in result.stdout
  assert "step 5/30" not in result.stdout
  assert _metrics(tmp_path)["step"] == 30
  # TensorBoard's HParams row: the resumed session's step budget, not the first one's.
  assert hparams_session(tmp_path)["steps"] == 30
  # --overwrite starts again from step 0.
  result = run_trainer("cifar10", flags + ["--max-steps", 10, "--overwrite"])
  assert "resumed" not in result.stdout and _metrics(tmp_path)["step"] == 10


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tfrecords, tmp_path):
  flags = [
    "--recipe",
    "tiny",
    "--data-dir",
    tfrecords / "cifar10",
    "--model-dir",
    tmp_path,
    "--checkpoint-every",
    5,
    "--log-every",
    1000,
    "--no-export",
  ]
  proc = subprocess.Popen(
    [str(ROOT / "trainers" / "cifar10.py")] + [str(f) for f in flags] + ["--max-steps", "1000000"],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    env={"PATH": f"{BIN}:/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"},
  )
  wait_for_checkpoint(tmp_path, 15)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = int(tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).rsplit("-", 1)[1])
  assert saved >= 15
  result = run_trainer("cifar10", flags + ["--max-steps", saved + 5])
  assert f"at step {saved}" in result.stdout
  assert _metrics(tmp_path)["step"] == saved + 5


def _evaluate_with(weights, tfrecords, dataset="cifar10", model="cifar10_tutorial"):
  """Test precision of `model` with the given trainable weights, computed here by hand."""
  from trainers import input_pipeline
  from trainers import recipes
  from trainers import shards

  meta = shards.load_metadata(str(tfrecords / dataset))
  net = recipes.get(model).build_model(meta.num_classes, (24, 24, 3))
  for v, w in zip(net.trainable_variables, weights):
    v.assign(w)
  correct = total = 0
  for images, labels in input_pipeline.make_dataset(
    str(tfrecords / dataset), meta, "test", rank=0, size=1, batch_size=64, training=False, seed=0
  ):
    predictions = np.argmax(net(images, training=False).numpy(), axis=-1)
    correct += int((predictions == labels.numpy()).sum())
    total += len(labels)
  return correct / total


def test_tutorial_eval_uses_the_moving_average_weights(tfrecords, tmp_path):
  run_trainer(
    "cifar10",
    [
      "--recipe",
      "cifar10_tutorial",
      "--data-dir",
      tfrecords / "cifar10",
      "--model-dir",
      tmp_path,
      "--max-steps",
      30,
      "--batch-size",
      16,
      "--mode",
      "train",
      "--no-export",
      "--eval-every",
      0,
    ],
  )
  result = run_trainer(
    "cifar10",
    [
      "--recipe",
      "cifar10_tutorial",
      "--data-dir",
      tfrecords / "cifar10",
      "--model-dir",
      tmp_path,
      "--mode",
      "eval",
    ],
  )
  assert "EMA weights" in result.stdout
  metrics = _metrics(tmp_path)
  assert metrics["ema_weights"] and metrics["step"] == 30
  reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
  names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("ema/shadows/"))
  shadows = [reader.get_tensor(n) for n in sorted(names, key=lambda n: int(n.split("/")[2]))]
  assert len(shadows) == 10  # 5 layers x (kernel, bias)
  assert metrics["precision_at_1"] == pytest.approx(_evaluate_with(shadows, tfrecords), abs=1e-9)


def test_early_stopping_keeps_and_restores_the_best_checkpoint(tfrecords, tmp_path):
  result = run_trainer(
    "mnist",
    [
      "--recipe",
      "mnist_bn_dropout",
      "--data-dir",
      tfrecords / "mnist",
      "--model-dir",
      tmp_path,
      "--max-steps",
      400,
      "--batch-size",
      32,
      "--eval-every",
      2,
      "--early-stopping-patience",
      6,
      "--learning-rate",
      0.5,
      "--log-every",
      50,
    ],
  )
  assert (
    "early stopping at step" in result.stdout and "restored the best checkpoint" in result.stdout
  )
  # The recipe's console line at each evaluation; "improved" when a new best is kept.
  assert "train accuracy" in result.stdout and "validation precision@1" in result.stdout
  assert "improved" in result.stdout and "elapsed" in result.stdout
  metrics = _metrics(tmp_path)
  best = metrics["best_validation"]
  stopped = int(result.stdout.split("early stopping at step ")[1].split(":")[0])
  assert stopped - best["step"] >= 6 and stopped < 400
  assert tf.train.latest_checkpoint(str(tmp_path / "best")).endswith(f"-{best['step']}")
  # --mode eval picks the best checkpoint and reproduces its validation score.
  run_trainer(
    "mnist",
    [
      "--recipe",
      "mnist_bn_dropout",
      "--data-dir",
      tfrecords / "mnist",
      "--model-dir",
      tmp_path,
      "--mode",
      "eval",
      "--eval-split",
      "validation",
    ],
  )
  again = _metrics(tmp_path)
  assert again["step"] == best["step"]
  assert again["precision_at_1"] == pytest.approx(best["precision_at_1"], abs=1e-9)


def test_non_finite_loss_stops_the_run_with_a_message(tfrecords, tmp_path):
  result = run_trainer(
    "mnist",
    [
      "--recipe",
      "mnist_basic",
      "--data-dir",
      tfrecords / "mnist",
      "--model-dir",
      tmp_path,
      "--max-steps",
      50,
      "--learning-rate",
      1e12,
      "--no-export",
    ],
    check=False,
  )
  assert result.returncode != 0
  assert "non-finite loss" in result.stderr and "Traceback" not in result.stderr


def test_a_model_dir_of_another_model_is_refused(tfrecords, tmp_path):
  run_trainer(
    "cifar10",
    [
      "--recipe",
      "tiny",
      "--data-dir",
      tfrecords / "cifar10",
      "--model-dir",
      tmp_path,
      "--max-steps",
      2,
      "--no-export",
    ],
  )
  result = run_trainer(
    "cifar10",
    [
      "--recipe",
      "cifar10_cookbook",
      "--data-dir",
      tfrecords / "cifar10",
      "--model-dir",
      tmp_path,
      "--max-steps",
      2,
    ],
    check=False,
  )
  assert result.returncode != 0 and "--overwrite" in result.stderr


def test_epochs_are_converted_to_steps_of_the_global_batch(tfrecords, tmp_path):
  meta = json.loads((tfrecords / "cifar10" / "metadata.json").read_text())
  n = meta["splits"]["train"]["num_examples"]
  result = run_trainer(
    "cifar10",
    [
      "--recipe",
      "tiny",
      "--data-dir",
      tfrecords / "cifar10",
      "--model-dir",
      tmp_path,
      "--epochs",
      0.5,
      "--batch-size",
      50,
      "--no-export",
      "--mode",
      "train",
    ],
  )
  steps = -(-(n // 50) // 2)  # ceil(0.5 * steps per epoch)
  assert f"->{steps}," in result.stdout


def test_cookbook_evaluates_one_test_batch_per_evaluation_and_logs_the_recipes_line(
  tfrecords, tmp_path
):
  result = run_trainer(
    "cifar10",
    [
      "--recipe",
      "cifar10_cookbook",
      "--data-dir",
      tfrecords / "cifar10",
      "--model-dir",
      tmp_path,
      "--max-steps",
      4,
      "--batch-size",
      8,
      "--eval-every",
      2,
      "--no-export",
    ],
  )
  lines = [l for l in result.stdout.splitlines() if "train accuracy" in l]
  assert [l.split(":")[0] for l in lines] == ["step 2", "step 4"]
  # One batch of the test split (the recipe's one test batch of batch_size).
  assert all("test precision@1" in l and "(8 examples)" in l for l in lines)
  assert "improved" not in result.stdout  # no early stopping in this recipe
  # The parameter count, in the start-up summary.
  assert "(1,068,298 parameters)" in result.stdout
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["recipe"]["lr_decay_rate"] == 1.0 and config["recipe"]["learning_rate"] == 0.1
