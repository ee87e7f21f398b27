"""The run directory as users hold it: evaluate, export and resume it alone, literally named, one writer.

Every run is a real entry script (conftest.run_trainer, or horovodrun) on the
sample data converted by the real Beam job; locks are taken by real processes,
one of them SIGKILLed. See docs/run-lifecycle.md.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

from preprocess import dirlock
from tests.conftest import BIN
from tests.conftest import ROOT
from tests.conftest import run_horovod
from tests.conftest import run_trainer
from tests.conftest import wait_for_checkpoint

QUIET = ["--summary-every", 0, "--histogram-every", 0]
TINY = ["--recipe", "tiny", "--batch-size", 16, "--eval-every", 0, "--log-every", 10, "--no-export"]


def one_line_error(result, *needles, absent=()):
  """Failed with exactly one `error:` line holding each needle (and none of `absent`), no traceback."""
  out = result.stdout + result.stderr
  assert result.returncode != 0, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  errors = [l for l in result.stderr.splitlines() if "error:" in l]
  assert len(errors) == 1, result.stderr[-3000:]
  for needle in needles:
    assert str(needle) in errors[0], errors[0]
  for needle in absent:
    assert str(needle) not in errors[0], errors[0]
  return errors[0]


def _overrides(stdout):
  return [l for l in stdout.splitlines() if l.startswith("overriding config.json")]


def _trainer_in(cwd, dataset, flags, check=True):
  """trainers/<dataset>.py run from `cwd` (relative paths are the user's)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
  result = subprocess.run(
    [sys.executable, str(ROOT / "trainers" / f"{dataset}.py")] + [str(f) for f in flags],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  if check:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


# --- evaluate, export, resume from the run dir alone ------------------------


def test_eval_export_and_resume_take_the_run_from_its_config_json(tfrecords, tmp_path):
  run = tmp_path / "run"
  trained = run_trainer(
    "mnist",
    ["--recipe", "mnist_resnet", "--data-dir", tfrecords / "mnist", "--model-dir", run]
    + ["--max-steps", 2, "--batch-size", 8, "--eval-every", 0, "--no-export", "--mode", "train"]
    + QUIET,
  )
  assert "config: {" not in trained.stdout  # the start-up summary, not the JSON
  # Eval: the recipe (mnist_resnet, not mnist.py's default mnist_basic) and the data dir come
  # from config.json; nothing is overridden, so nothing is said.
  result = run_trainer("mnist", ["--mode", "eval", "--model-dir", run])
  assert "test precision@1" in result.stdout and not _overrides(result.stdout)
  # Its start-up says what it evaluates, with no training plan.
  assert "ckpt-2 (step 2) on the test split (" in result.stdout
  assert "steps/epoch" not in result.stdout and "worker(s), batch" not in result.stdout
  metrics = json.loads((run / "metrics.json").read_text())
  assert metrics["recipe"] == "mnist_resnet" and metrics["step"] == 2
  # A flag given overrides config.json, in one line.
  result = run_trainer(
    "mnist", ["--mode", "eval", "--model-dir", run, "--eval-split", "validation"]
  )
  assert _overrides(result.stdout) == ["overriding config.json: --eval-split validation (was test)"]
  metrics = json.loads((run / "metrics.json").read_text())
  assert metrics["split"] == "validation" and set(metrics["splits"]) == {"test", "validation"}
  # Export, from the run dir alone.
  result = run_trainer("mnist", ["--mode", "export", "--model-dir", run])
  assert "exporting " in result.stdout and "ckpt-2 (step 2, raw weights" in result.stdout
  assert "steps/epoch" not in result.stdout
  assert (run / "export" / "saved_model.pb").exists() and (run / "export" / "labels.txt").exists()
  # Resume: the run's flags, two of them overridden (named in one line).
  result = run_trainer("mnist", ["--model-dir", run, "--max-steps", 4, "--no-export"])
  assert "at step 2" in result.stdout and "step 4/4" in result.stdout
  assert _overrides(result.stdout) == ["overriding config.json: --max-steps 4 (was 2)"]
  saved = json.loads((run / "config.json").read_text())
  assert saved["recipe"]["name"] == "mnist_resnet" and saved["recipe"]["batch_size"] == 8
  # --print-config: the resolved config, as JSON, and nothing runs.
  printed = run_trainer("mnist", ["--model-dir", run, "--print-config", "--learning-rate", 0.5])
  config = json.loads(printed.stdout)
  assert config["recipe"]["name"] == "mnist_resnet" and config["recipe"]["learning_rate"] == 0.5
  assert config["data_dir"] == str(tfrecords / "mnist") and config["model_dir"] == str(run)


def test_another_recipe_or_data_set_on_a_run_is_one_line_that_never_advises_overwrite_to_eval(
  tfrecords, tmp_path
):
  run = tmp_path / "run"
  run_trainer(
    "mnist",
    ["--data-dir", tfrecords / "mnist", "--model-dir", run, "--max-steps", 2] + TINY + QUIET,
  )
  for mode in ("eval", "export"):
    result = run_trainer(
      "mnist", ["--mode", mode, "--model-dir", run, "--recipe", "mnist_basic"], check=False
    )
    one_line_error(result, run, "mnist/tiny", "leave out --recipe", absent=["--overwrite"])
    result = run_trainer("cifar10", ["--mode", mode, "--model-dir", run], check=False)
    one_line_error(result, run, "a mnist run", "trainers/mnist.py", absent=["--overwrite"])
  # Training anew in it is what --overwrite is for: only then is it offered.
  result = run_trainer("mnist", ["--model-dir", run, "--recipe", "mnist_basic"], check=False)
  one_line_error(result, "mnist/tiny", "--overwrite")
  result = run_trainer("mnist", ["--mode", "eval", "--model-dir", run, "--overwrite"], check=False)
  assert result.returncode == 2 and "--mode eval never needs it" in result.stderr
  # The run is untouched by all of that.
  assert json.loads((run / "config.json").read_text())["recipe"]["name"] == "tiny"


def test_a_config_json_that_does_not_read_back_is_one_line(tfrecords, tmp_path):
  run = tmp_path / "run"
  run_trainer(
    "mnist",
    ["--data-dir", tfrecords / "mnist", "--model-dir", run, "--max-steps", 2] + TINY + QUIET,
  )
  saved = json.loads((run / "config.json").read_text())
  for edit, needle in (
    (lambda c: c.update(bogus=1), "unknown key 'bogus'"),
    (lambda c: c.update(seed="0"), "seed is \"0\""),
    (lambda c: c["recipe"].update(batch_size=1.5), "recipe.batch_size is 1.5"),
    (lambda c: c["recipe"].update(name="nope"), "recipe.name is 'nope', not one of"),
    (lambda c: c.update(checkpoint_every=0), "checkpoint_every must be at least 1"),
  ):
    broken = json.loads(json.dumps(saved))
    edit(broken)
    (run / "config.json").write_text(json.dumps(broken))
    result = run_trainer("mnist", ["--mode", "eval", "--model-dir", run], check=False)
    one_line_error(result, run / "config.json", needle, absent=["--overwrite"])


def test_the_demo_run_evaluates_with_no_other_flag(tfrecords, tmp_path):
  """scripts/demo.sh's run dir and relative data dir, then the README's one eval command."""
  (tmp_path / "data" / "sample" / "tfrecords").mkdir(parents=True)
  os.symlink(tfrecords / "cifar10", tmp_path / "data" / "sample" / "tfrecords" / "cifar10")
  demo = ["--recipe", "cifar10_tutorial", "--data-dir", "data/sample/tfrecords/cifar10"]
  demo += ["--model-dir", "runs/demo/cifar10-tutorial", "--overwrite", "--max-steps", 4]
  demo += ["--batch-size", 16, "--warmup-steps", 2, "--log-every", 2, "--eval-every", 2]
  _trainer_in(tmp_path, "cifar10", demo + ["--mode", "train"] + QUIET)
  result = _trainer_in(
    tmp_path, "cifar10", ["--mode", "eval", "--model-dir", "runs/demo/cifar10-tutorial"]
  )
  assert "test precision@1" in result.stdout and not _overrides(result.stdout)
  assert "EMA weights" in result.stdout  # the tutorial recipe, from config.json


# --- mismatches, at start-up ------------------------------------------------


def _edit_metadata(src, dst, edit):
  shutil.copytree(src, dst)
  meta = json.loads((dst / "metadata.json").read_text())
  edit(meta)
  (dst / "metadata.json").write_text(json.dumps(meta, indent=2))
  return dst


def test_mismatches_with_the_data_are_one_line_before_training(tfrecords, tmp_path):
  def train(dataset, data_dir, *flags):
    flags = ["--data-dir", data_dir, "--model-dir", tmp_path / "m", "--max-steps", 2, *flags]
    return run_trainer(dataset, flags + QUIET, check=False)

  # An --eval-split the data lacks.
  result = train("mnist", tfrecords / "mnist", *TINY, "--eval-split", "nope")
  one_line_error(result, "--eval-split nope", "train, validation, test")
  assert "step 2/2" not in result.stdout
  # A trainer of one data set on another's shards (metadata.json says which).
  result = train("cifar10", tfrecords / "mnist", *TINY)
  one_line_error(result, "holds mnist data", "trainers/cifar10.py", "trainers/mnist.py")
  assert "step 2/2" not in result.stdout
  # A recipe written for another image shape than the data's.
  data = _edit_metadata(
    tfrecords / "catdog", tmp_path / "small", lambda m: m.update(image_shape=[64, 64, 3])
  )
  result = train("catdog", data, "--recipe", "catdog_lenet5")
  one_line_error(result, "catdog_lenet5", "150x150x3", "64x64x3")
  assert "step 2/2" not in result.stdout
  # The tiny recipe takes any shape, so it gets as far as the data's own checks.
  result = train("catdog", data, *TINY)
  assert "is written for" not in result.stderr


# --- a path is a path --------------------------------------------------------


def test_a_model_dir_with_brackets_resumes(tfrecords, tmp_path):
  run = tmp_path / "a[1]"
  flags = (
    ["--data-dir", tfrecords / "mnist", "--model-dir", run, "--checkpoint-every", 5] + TINY + QUIET
  )
  run_trainer("mnist", flags + ["--max-steps", 10])
  result = run_trainer("mnist", flags + ["--max-steps", 15])
  assert "at step 10" in result.stdout and "training steps 10->15" in result.stdout
  result = run_trainer("mnist", ["--mode", "eval", "--model-dir", run])
  assert json.loads((run / "metrics.json").read_text())["step"] == 15


def test_overwrite_and_checkpoint_sweeps_touch_no_other_folder(tfrecords, tmp_path):
  flags = ["--data-dir", tfrecords / "mnist", "--checkpoint-every", 1, "--keep-checkpoints", 1]
  flags += TINY + QUIET + ["--max-steps", 3]
  other = tmp_path / "xa"
  run_trainer("mnist", flags + ["--model-dir", other])
  before = sorted(str(p.relative_to(other)) for p in other.rglob("*"))
  assert "checkpoints/ckpt-3.index" in before
  # `x[ab]` as a glob pattern matches `xa`: its checkpoint sweeps and --overwrite must not.
  pattern = tmp_path / "x[ab]"
  run_trainer("mnist", flags + ["--model-dir", pattern])
  run_trainer("mnist", flags + ["--model-dir", pattern, "--overwrite"])
  assert sorted(str(p.relative_to(other)) for p in other.rglob("*")) == before
  assert sorted(p.name for p in (pattern / "checkpoints").iterdir()) == [
    "checkpoint",
    "ckpt-3.data-00000-of-00001",
    "ckpt-3.index",
  ]


def test_data_and_log_dirs_with_glob_characters_are_used_literally(tfrecords, tmp_path):
  data = tmp_path / "d[1]*"
  shutil.copytree(tfrecords / "mnist", data)
  logs = tmp_path / "logs?[x]"
  flags = ["--data-dir", data, "--model-dir", logs / "r[1]", "--max-steps", 4] + TINY
  run_trainer("mnist", flags + ["--summary-every", 1, "--histogram-every", 0])
  result = subprocess.run(
    [sys.executable, "-m", "trainers.plots", "--logdir", str(logs)],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  assert (logs / "plots" / "r[1].png").exists()


# --- one writer per model dir -------------------------------------------------


def test_a_second_trainer_is_refused_and_a_killed_ones_lock_is_taken_over(tfrecords, tmp_path):
  run = tmp_path / "m"
  flags = ["--data-dir", tfrecords / "mnist", "--model-dir", run, "--checkpoint-every", 5]
  flags = [str(f) for f in flags + TINY + QUIET]
  first = subprocess.Popen(
    [str(ROOT / "trainers" / "mnist.py")] + flags + ["--max-steps", "1000000"],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    env={"PATH": f"{BIN}:/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"},
  )
  try:
    wait_for_checkpoint(run, 5)
    second = run_trainer("mnist", flags + ["--max-steps", 10], check=False)
    one_line_error(second, run, "is in use by", f"pid {first.pid} on", "--mode train_and_eval")
    # Evaluation writes metrics.json: it takes the lock too.
    evaluation = run_trainer("mnist", ["--mode", "eval", "--model-dir", run], check=False)
    one_line_error(evaluation, "is in use by", f"pid {first.pid}")
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  saved = wait_for_checkpoint(run, 5)
  result = run_trainer("mnist", flags + ["--max-steps", saved + 5])
  assert (
    f"took over the lock of trainers/mnist.py --mode train_and_eval (pid {first.pid}"
    in result.stdout
  )
  assert f"at step {saved}" in result.stdout
  assert (run / ".lock").read_text() == ""  # released at the end


def test_under_horovodrun_every_rank_stops_when_the_chief_cannot_lock(tfrecords, tmp_path):
  run = tmp_path / "m"
  with dirlock.hold(str(run), "a test holding the directory"):
    result = run_horovod(
      2,
      [ROOT / "trainers" / "mnist.py", "--data-dir", tfrecords / "mnist", "--model-dir", run]
      + ["--max-steps", 2]
      + TINY
      + QUIET,
      timeout=300,
    )
  out = result.stdout + result.stderr
  assert result.returncode != 0, out[-3000:]
  errors = [l for l in out.splitlines() if "error:" in l and "in use by" in l]
  assert len(errors) == 1 and "a test holding the directory" in errors[0], out[-3000:]
  assert f"pid {os.getpid()} on" in errors[0]
  # (horovodrun prints its own launcher's traceback for any failed job; none of the trainers'.)
  assert "trainers/" not in "".join(l for l in out.splitlines() if l.strip().startswith("File "))
  assert "step 2/2" not in out


# --- the console ----------------------------------------------------------------


def test_help_shows_every_default_and_the_recipes_values():
  out = run_trainer("cifar10", ["--help"]).stdout
  options = re.split(r"\n  (?=-)", out.split("options:", 1)[1].split("values of the", 1)[0])
  for option in [o for o in options if o.startswith("--")]:  # all but -h, --help
    assert "default" in option.lower(), option
  assert "cifar10_tutorial: --batch-size 128 --max-steps 1000000" in out


def test_the_progress_line_counts_training_time_and_shows_total_loss_only_when_it_differs(
  tfrecords, tmp_path
):
  # tiny has no weight decay: loss and total loss are one number.
  result = run_trainer(
    "mnist",
    ["--data-dir", tfrecords / "mnist", "--model-dir", tmp_path / "t", "--max-steps", 20]
    + ["--recipe", "tiny", "--batch-size", 16, "--log-every", 10, "--eval-every", 10, "--no-export"]
    + QUIET,
  )
  steps = [l for l in result.stdout.splitlines() if l.startswith("step ") and "/20 loss" in l]
  # The first call's sign of life, then --log-every 10.
  assert [l.split()[1] for l in steps] == ["1/20", "10/20", "20/20"], steps
  assert all("(total" not in l for l in steps), steps
  trained = re.search(
    r"trained 20 steps in ([\d.]+)s \(([\d.]+)s of training steps, (\d+) img/s\)",
    result.stdout,
  )
  assert trained, result.stdout
  wall, training, rate = float(trained[1]), float(trained[2]), int(trained[3])
  assert training < wall  # evaluations ran in between and are not counted
  assert abs(rate - 20 * 16 / training) <= 0.01 * rate + 1
  # The tutorial decays weights: its total loss differs from the cross entropy.
  result = run_trainer(
    "cifar10",
    ["--data-dir", tfrecords / "cifar10", "--model-dir", tmp_path / "c", "--max-steps", 2]
    + ["--batch-size", 8, "--log-every", 1, "--eval-every", 0, "--no-export"]
    + QUIET,
  )
  assert "(total " in [l for l in result.stdout.splitlines() if l.startswith("step 2/2")][0]
  summary = result.stdout.split("training steps", 1)[0]
  for needle in (
    "cifar10/cifar10_tutorial",
    str(tmp_path / "c"),
    "1 worker(s)",
    "8 global",
    "2 steps",
  ):
    assert needle in summary, summary
