"""Elastic Horovod (issue 17): the job goes on when a worker is lost, and follows its hosts.

Real elastic jobs of trainers/cifar10.py on one machine: `horovodrun -np 2
--min-np 1 --max-np 2 --host-discovery-script S`, where S prints a host list
the test edits. `localhost` and `127.0.0.1` are two hosts to horovodrun (both
local, so no ssh), one slot each. Shown here: a worker process killed mid-run
(the other goes on alone and finishes the step budget and its evaluation); the
host of rank 0 dropped from the list and later listed again (the job shrinks,
the survivor becomes the chief, then the job grows back); in both, the log line
`world size A -> B at step N`, and the learning rate and the workers in the
event files following the world size.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import tensorflow as tf

from bench.elastic import trainer_processes
from tests.conftest import BIN
from tests.conftest import ROOT
from trainers import tags

HOSTS = ("localhost", "127.0.0.1")
QUIET = ["--eval-every", 0, "--histogram-every", 0, "--no-export", "--steps-per-call", 5]


class ElasticJob:
  """One elastic horovodrun of trainers/cifar10.py, its host list in a file the test edits."""

  def __init__(self, tmp_path, flags, hosts=HOSTS):
    self.hosts_file = tmp_path / "hosts"
    self.set_hosts(hosts)
    discover = tmp_path / "discover.sh"
    discover.write_text(f"#!/bin/sh\ncat '{self.hosts_file}'\n")
    discover.chmod(0o755)
    self.log_path = tmp_path / "job.log"
    cmd = [BIN / "horovodrun", "-np", 2, "--min-np", 1, "--max-np", 2]
    cmd += ["--host-discovery-script", discover, ROOT / "trainers" / "cifar10.py"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PATH=f"{BIN}:{os.environ['PATH']}")
    self._out = open(self.log_path, "w")
    self.proc = subprocess.Popen(
      [str(a) for a in cmd + flags], cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT
    )

  def set_hosts(self, hosts):
    self.hosts_file.write_text("".join(f"{h}:1\n" for h in hosts))

  def log(self):
    return self.log_path.read_text()

  def wait_for(self, pattern, timeout=300):
    """Waits for a log line matching `pattern`; returns the match."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      match = re.search(pattern, self.log())
      if match:
        return match
      if self.proc.poll() is not None:
        break
      time.sleep(0.2)
    self.stop()
    pytest.fail(f"no line matching {pattern!r} in the job's log:\n{self.log()[-5000:]}")

  def workers(self):
    """{initial rank: (pid, host)} of the trainer processes horovodrun started."""
    return trainer_processes(self.proc.pid)

  def finish(self, timeout=600):
    try:
      code = self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.stop()
      pytest.fail(f"the elastic job did not end in {timeout} s:\n{self.log()[-5000:]}")
    self._out.close()
    return code

  def stop(self):
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGKILL)
      for p in psutil.Process().children(recursive=True):
        p.kill()
      self.proc.wait()


def _flags(tfrecords, model_dir, *extra):
  return [
    "--data-dir",
    tfrecords / "cifar10",
    "--model-dir",
    model_dir,
    "--mode",
    "train_and_eval",
    *QUIET,
    *extra,
  ]


def _train_scalars(model_dir, tag):
  """[(step, value)] of a scalar of the train run, from every event file (chiefs change)."""
  values = []
  for f in sorted((model_dir / tags.TRAIN).glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(f)):
      for v in event.summary.value:
        if v.tag == tag:
          values.append((event.step, float(tf.make_ndarray(v.tensor))))
  return sorted(values)


def _sizes_in_order(values):
  """The distinct successive values of a step-ordered scalar, e.g. [2, 1, 2]."""
  out = []
  for _, v in values:
    if not out or out[-1] != v:
      out.append(v)
  return out


def _finished(model_dir, max_steps, workers):
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["step"] == max_steps and metrics["trained_steps"] == max_steps
  assert metrics["workers"] == workers and metrics["split"] == "test"
  assert 0.0 <= metrics["precision_at_1"] <= 1.0 and metrics["examples"] == 500
  state = (model_dir / "checkpoints" / "checkpoint").read_text()
  assert f'model_checkpoint_path: "ckpt-{max_steps}"' in state


def test_a_killed_worker_leaves_the_job_running_on_the_rest(tfrecords, tmp_path):
  """kill -9 of rank 1 mid-run: rank 0 re-forms alone at its last commit and finishes."""
  model_dir, max_steps = tmp_path / "run", 3000
  flags = _flags(tfrecords, model_dir, "--recipe", "tiny", "--max-steps", max_steps)
  job = ElasticJob(tmp_path, flags + ["--log-every", 100, "--summary-every", 50])
  try:
    job.wait_for(r"step 300/")
    pid, _ = job.workers()[1]
    os.kill(pid, signal.SIGKILL)
    shrunk = job.wait_for(r"world size 2 -> 1 at step (\d+): batch 32 global, learning rate 0.05")
    code = job.finish()
  finally:
    job.stop()
  log = job.log()
  assert code == 0, log[-5000:]
  # Nothing trained twice or lost: the re-formed job starts at its last commit.
  at = int(shrunk.group(1))
  assert 300 <= at < max_steps and f"training steps {at}->{max_steps}" in log
  assert re.search(r"test precision@1 = [01]\.\d+ \(500 examples", log)
  _finished(model_dir, max_steps, workers=1)
  workers = _train_scalars(model_dir, tags.WORKERS)
  assert _sizes_in_order(workers) == [2, 1]
  assert all(v == 2 for s, v in workers if s <= 300) and all(v == 1 for s, v in workers if s > at)
  # The learning rate follows the size: sqrt(2) x 0.05 after warmup with 2, 0.05 alone.
  rates = dict(_train_scalars(model_dir, tags.LEARNING_RATE))
  assert np.isclose(rates[300], 0.05 * np.sqrt(2), rtol=1e-5)
  assert all(np.isclose(v, 0.05, rtol=1e-5) for s, v in rates.items() if s > at)


def test_the_job_follows_its_host_list_down_and_up(tfrecords, tmp_path):
  """The chief's host dropped from the discovery list, then listed again: 2 -> 1 -> 2 workers."""
  model_dir, max_steps = tmp_path / "run", 1000
  flags = _flags(
    tfrecords, model_dir, "--recipe", "cifar10_tutorial", "--batch-size", 32, "--max-steps"
  )
  job = ElasticJob(tmp_path, flags + [max_steps, "--log-every", 20, "--summary-every", 20])
  try:
    job.wait_for(r"step 40/")
    _, chief_host = job.workers()[0]
    job.set_hosts([h for h in HOSTS if h != chief_host])  # the chief's worker must go
    shrunk = job.wait_for(r"world size 2 -> 1 at step (\d+)")
    job.set_hosts(HOSTS)
    grown = job.wait_for(r"world size 1 -> 2 at step (\d+): batch 64 global")
    code = job.finish()
  finally:
    job.stop()
  log = job.log()
  assert code == 0, log[-5000:]
  assert f"{chief_host}[0] has been removed from elastic job" in log
  assert 40 <= int(shrunk.group(1)) <= int(grown.group(1)) < max_steps
  assert re.search(r"test precision@1 = [01]\.\d+ \(500 examples", log)
  _finished(model_dir, max_steps, workers=2)
  # Summaries come from the old chief, then the new one: one curve of 2, 1, then 2 workers.
  assert _sizes_in_order(_train_scalars(model_dir, tags.WORKERS)) == [2, 1, 2]
  assert len(list((model_dir / tags.TRAIN).glob("events.out.tfevents.*"))) >= 2


def test_an_elastic_run_refused_its_model_dir_stops_every_rank_with_one_line(tfrecords, tmp_path):
  """The chief's claim travels in the first state sync: no rank waits in a collective."""
  from preprocess import dirlock

  model_dir = tmp_path / "run"
  model_dir.mkdir()
  lock = dirlock.acquire(str(model_dir), "another trainer", log=print)
  job = ElasticJob(tmp_path, _flags(tfrecords, model_dir, "--recipe", "tiny", "--max-steps", 50))
  try:
    code = job.finish(timeout=300)
  finally:
    lock.release()
    job.stop()
  log = job.log()
  assert code != 0
  errors = [line for line in log.splitlines() if "error: " in line]
  assert len(errors) == 1 and f"{model_dir} is in use by another trainer" in errors[0], log
  assert "Process 0 exit with status code 2" in log and "Process 1 exit with status code 2" in log
  assert not (model_dir / "checkpoints").exists()


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-v"]))
