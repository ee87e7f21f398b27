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
import sys

import numpy as np
import pytest
import tensorflow as tf

from bench.elastic import HOSTS
from bench.elastic import ElasticJob
from bench.elastic import discovery
from bench.elastic import elastic_cmd
from bench.elastic import set_hosts
from tests.conftest import ROOT
from tests.conftest import hparams_session
from trainers import tags

QUIET = ["--eval-every", 0, "--histogram-every", 0, "--no-export", "--steps-per-call", 5]


def _job(tmp_path, flags):
  """An elastic horovodrun of trainers/cifar10.py (bench/elastic.py's `ElasticJob`), on HOSTS.

  Returns (the job, the file its discovery script prints: `set_hosts` edits it).
  """
  script, hosts_file = discovery(tmp_path, HOSTS)
  cmd = elastic_cmd(script) + [ROOT / "trainers" / "cifar10.py"] + flags
  return ElasticJob(cmd), hosts_file


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
  # HParams tell an elastic run from a fixed one of the same size (mnist-np2, mnist-elastic).
  assert hparams_session(model_dir)["elastic"] is True


def test_a_killed_worker_leaves_the_job_running_on_the_rest(tfrecords, tmp_path):
  """kill -9 of rank 1 mid-run: rank 0 re-forms alone at its last commit and finishes."""
  model_dir, max_steps = tmp_path / "run", 3000
  flags = _flags(tfrecords, model_dir, "--recipe", "tiny", "--max-steps", max_steps)
  job, _ = _job(tmp_path, flags + ["--log-every", 100, "--summary-every", 50])
  with job:
    job.wait_for(r"step 300/")
    pid, _ = job.workers()[1]
    os.kill(pid, signal.SIGKILL)
    _, shrunk = job.wait_for(
      r"world size 2 -> 1 at step (\d+): batch 32 global, learning rate 0.05"
    )
    code = job.finish()
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
  job, hosts = _job(tmp_path, flags + [max_steps, "--log-every", 20, "--summary-every", 20])
  with job:
    job.wait_for(r"step 40/")
    _, chief_host = job.workers()[0]
    set_hosts(hosts, [h for h in HOSTS if h != chief_host])  # the chief's worker must go
    _, shrunk = job.wait_for(r"world size 2 -> 1 at step (\d+)")
    set_hosts(hosts, HOSTS)
    _, grown = job.wait_for(r"world size 1 -> 2 at step (\d+): batch 64 global")
    code = job.finish()
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
  job, _ = _job(tmp_path, _flags(tfrecords, model_dir, "--recipe", "tiny", "--max-steps", 50))
  try:
    with job:
      code = job.finish(timeout=300)
  finally:
    lock.release()
  log = job.log()
  assert code != 0
  errors = [line for line in log.splitlines() if "error: " in line]
  assert len(errors) == 1 and f"{model_dir} is in use by another trainer" in errors[0], log
  assert "Process 0 exit with status code 2" in log and "Process 1 exit with status code 2" in log
  assert not (model_dir / "checkpoints").exists()


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-v"]))
