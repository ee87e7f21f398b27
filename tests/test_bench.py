"""`make bench`'s command-line benchmark (bench/cli.py, issue 18) runs, end to end, on tiny runs.

Only that its pieces work and its report has the rows a reader looks for; the
figures themselves are measured by `make bench`, not asserted here.
"""

import math
import subprocess
import sys

from bench import cli
from tests.conftest import ROOT


def test_keras_fit_trains_and_validates_on_the_shards(tfrecords):
  cmd = cli.fit_cmd(tfrecords / "cifar10", "tiny", 8, 4, 2)
  out = subprocess.run(cmd, cwd=ROOT, env=cli.ENV, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "fit 4 steps" in out.stdout


def test_keras_fit_rejects_steps_that_are_not_a_multiple_of_eval_every(tfrecords):
  cmd = cli.fit_cmd(tfrecords / "cifar10", "tiny", 8, 5, 2)
  out = subprocess.run(cmd, cwd=ROOT, env=cli.ENV, capture_output=True, text=True, timeout=600)
  assert out.returncode == 2
  assert "--steps must be a multiple of --eval-every" in out.stderr


def test_cli_benchmark_times_both_commands_and_reports_each_figure(tfrecords, tmp_path):
  cases = (("tiny", 8, 2, 4, None),)
  rows = cli.run(tfrecords / "cifar10", tmp_path, repeats=1, cases=cases, scaling=None)
  row = rows["a/tiny"]
  # Differentials of two short runs: their sign is noise, not behaviour; the figures exist.
  assert all(math.isfinite(row[k]) for k in ("a", "b", "ratio", "cpu_ratio"))
  assert row["ratios"] == [row["ratio"]]
  text = cli.markdown(rows, "2026-01-01", "Machine: test.\n", row["load"], 1, cases=cases)
  assert "| (a) tiny, batch 8, steps 2->4" in text
  assert "Load average at start" in text
  # The trainer ran as users run it: its model dir holds the final checkpoint.
  assert list((tmp_path / "cli-tiny").glob("checkpoints/*.index"))


def test_bench_run_offers_the_cli_benchmark_alone():
  out = subprocess.run(
    [sys.executable, "-m", "bench.run", "--help"],
    cwd=ROOT,
    env=cli.ENV,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0
  assert "cli" in out.stdout and "--only" in out.stdout
