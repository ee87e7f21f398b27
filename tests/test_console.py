"""What the console says: progress lines on a wall-clock floor, the ETA, and --help.

The progress lines are checked by driving `reporting.Progress` with a clock
the test sets (a run slow enough to need the 10-second floor would cost the
suite minutes); the --help texts by running the commands users type.
"""

import os
import re
import subprocess
import sys

from tests.conftest import ROOT
from trainers import reporting


class _Ctx:
  size = 1

  def __init__(self):
    self.lines = []

  def log(self, message):
    self.lines.append(message)


class _Run:
  max_steps, global_batch = 1000, 32

  def __init__(self):
    self.ctx = _Ctx()

  @staticmethod
  def schedule(step):
    return 0.1


def test_progress_lines_come_after_the_first_call_and_every_ten_seconds(monkeypatch):
  now = [0.0]
  monkeypatch.setattr(reporting.time, "time", lambda: now[0])
  run = _Run()
  progress = reporting.Progress(run, start=0, every=100)  # --log-every 100
  metrics = {"cross_entropy": 2.0, "total_loss": 2.0, "accuracy": 0.1}
  # The first call: one step, 20 s, nearly all of it tracing the step function.
  now[0], training = 20.0, 20.0
  progress.maybe_log(1, metrics, training)
  # Then calls of 10 steps: 1 s of training each, 1.5 s of wall clock.
  for step in range(10, 101, 10):
    now[0] += 1.5
    training += 1.0
    progress.maybe_log(step, metrics, training)
  logged = [int(re.match(r"step (\d+)/1000 ", l)[1]) for l in run.ctx.lines]
  # The sign of life at step 1, the 10-second floor at step 70, --log-every at 100.
  assert logged == [1, 70, 100]
  assert "first call 20.0s (tracing)" in run.ctx.lines[0] and "eta" not in run.ctx.lines[0]
  # The ETA counts training calls after the first: 7 s for 69 steps, 930 steps to go
  # (the wall clock since the start, tracing included, would say 0:06:45).
  eta = reporting.format_seconds(7.0 / 69 * 930)
  assert run.ctx.lines[1].endswith(f"eta {eta}") and eta == "0:01:34"


def _help(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
    [sys.executable, *args, "--help"], cwd=ROOT, env=env, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_the_generic_entrys_help_without_a_data_set_lists_them_all():
  from preprocess import datasets
  from trainers import recipes

  out = _help("-m", "trainers")
  usage = out.split("\n\n", 1)[0]
  assert "[--recipe RECIPE]" in usage and "None" not in out
  assert "default: data/tfrecords/<the --dataset>" in " ".join(out.split())
  assert "--dataset picks the data set" in out
  for name in datasets.names():
    line = next(l for l in out.splitlines() if l.startswith(f"  {name}: "))
    assert set(line.split(": ", 1)[1].replace("*", "").split(", ")) == set(
      recipes.for_dataset(name)
    )
    assert f"{recipes.default_for(name)}*" in line


def test_the_beam_jobs_help_shows_its_defaults():
  out = " ".join(_help("-m", "pipeline.build_tfrecords").split())
  for flag, default in (
    ("--image-size", "default: 150"),
    ("--image-format", "default: jpeg"),
    ("--progress-seconds", "default: 10"),
  ):
    text = out.split(f"{flag} ", 2)[2].split(" --", 1)[0]  # usage, then its help entry
    assert default in text, (flag, text)
  assert "Data set to convert" in out.split("--dataset {", 2)[2]
